"""Cerberus: compile transformers into ZK-LLMs that compute on TFHE-encrypted queries.

Data flows one way: model → compiler (``cerberus``) → artefact → miner runtime
(``runtime``) → network (``network``); the ledger (``ledger``) knows nothing about torch.
"""

__version__ = "0.1.0"
