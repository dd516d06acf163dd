"""The miner service's protobuf messages and gRPC stubs (generated; see miner.proto)."""
