"""Cerberus: compile transformers into ZK-LLMs that compute on TFHE-encrypted queries.

Data flows one way: model → compiler (``cerberus``) → artefact → miner runtime
(``runtime``) → network (``network``); the ledger (``ledger``) knows nothing about torch.

Hub ids resolve as ``from_pretrained`` resolves them (``cerberus.frontends.hub``): this
package sets no ``HF_HUB_OFFLINE`` default, so users get downloads; the test suite and
``make`` set ``HF_HUB_OFFLINE=1`` themselves.
"""

__version__ = "0.1.0"
