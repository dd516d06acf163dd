"""The node service's protobuf messages and gRPC stubs (generated; see node.proto)."""
