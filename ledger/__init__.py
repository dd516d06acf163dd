"""Cerberus ledger: chain state machine, economics, consensus and the TFT Enforcer (SPEC L1-L10)."""
