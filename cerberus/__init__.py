"""Cerberus: compile transformers into ZK-LLMs that compute on TFHE-encrypted queries.

Data flows one way: model → compiler (``cerberus``) → artefact → miner runtime
(``runtime``) → network (``network``); the ledger (``ledger``) knows nothing about torch.
"""

import os

__version__ = "0.1.0"

# Cerberus never downloads: models come from local folders or the offline cache only.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
