"""Miner runtime: gRPC service, client SDK and protos (SPEC R1–R4)."""
