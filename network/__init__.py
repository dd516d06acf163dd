"""Network: P2P node, gossip, sync, block production, validator/miner loops (SPEC N1–N4)."""
