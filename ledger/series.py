"""The chain's own per-block time series, the training data of the TFT Enforcer (SPEC L9).

Kept apart from ``ledger.tft`` so that producing the data never imports torch. Every series
here is a function of public blocks only (headers and txs), so every node that holds the
blocks computes the same numbers: that is what lets any node reproduce a ``tft_report``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ledger.block import Block
from ledger.chain import Chain
from ledger.units import block_reward

SERIES_COLUMNS = ("txs", "block_interval_s", "block_bytes", "active_addresses", "emission")
# Per miner and block, from the validators' set_weights txs (their verification outcomes):
MINER_COLUMNS = (
    "weight_txs",  # set_weights txs in this block giving the miner weight > 0
    "blocks_since_weight",  # blocks since the last such tx inside the series (0 at its start)
    "weight_received",  # the weight (u16 / 65535) those txs give it, summed
    "validators_weighting",  # validators whose latest row in the series gives it weight > 0
    "weight_in_force",  # those latest rows' weights for it (u16 / 65535), summed
)
U16_MAX = 65_535


def series_of_blocks(blocks: Sequence[Block], prev_time: int) -> np.ndarray:
    """Rows per block, columns ``SERIES_COLUMNS``, float64; ``prev_time`` is the time of
    the block before the first (the genesis time before block 1).

    ``active_addresses`` counts distinct tx senders in the block; ``emission`` is the
    block reward in base units.
    """
    rows = []
    for block in blocks:
        rows.append((len(block.txs), block.header.time - prev_time, len(block.to_bytes()),
                     len({t.sender for t in block.txs}), block_reward(block.header.height)))
        prev_time = block.header.time
    return np.asarray(rows, dtype=np.float64).reshape(-1, len(SERIES_COLUMNS))


def block_series(chain: Chain, start: int = 1, end: int | None = None) -> np.ndarray:
    """:func:`series_of_blocks` for the stored blocks ``start..end`` (inclusive)."""
    end = chain.height if end is None else end
    prev_time = chain.genesis.time
    if start > 1:
        prev = chain.block(start - 1)
        assert prev is not None
        prev_time = prev.header.time
    blocks = []
    for h in range(start, end + 1):
        block = chain.block(h)
        if block is None:
            raise KeyError(f"block {h} is not stored")
        blocks.append(block)
    return series_of_blocks(blocks, prev_time)


def miner_series(blocks: Sequence[Block], brain: int, uids: Sequence[int]) -> np.ndarray:
    """(len(uids), len(blocks), len(MINER_COLUMNS)) float64: each miner slot's series.

    Built only from the ``set_weights`` txs of Brain ``brain`` in ``blocks``: a validator
    sets weight 0 for a miner that failed its check, so these are the verification outcomes
    the chain records. Validators' rows from before the first block are not known here and
    count as absent, so the series depends on nothing but ``blocks``. Cost: one pass over
    the txs plus O(blocks × validators × miners) for the rows in force.
    """
    col = {u: k for k, u in enumerate(uids)}
    out = np.zeros((len(uids), len(blocks), len(MINER_COLUMNS)), dtype=np.float64)
    latest: dict[str, np.ndarray] = {}  # validator → its latest row over ``uids``
    since = np.zeros(len(uids))
    for t, block in enumerate(blocks):
        got = np.zeros(len(uids))
        received = np.zeros(len(uids))
        for tx in block.txs:
            if tx.kind != "set_weights" or tx.payload["brain"] != brain:
                continue
            row = np.zeros(len(uids))
            for u, w in zip(tx.payload["uids"], tx.payload["weights"], strict=True):
                if u in col:
                    row[col[u]] = w / U16_MAX
            latest[tx.sender] = row
            got += row > 0
            received += row
        since = np.where(got > 0, 0.0, since + (t > 0))
        in_force = np.stack(list(latest.values())) if latest else np.zeros((1, len(uids)))
        out[:, t, 0] = got
        out[:, t, 1] = since
        out[:, t, 2] = received
        out[:, t, 3] = (in_force > 0).sum(axis=0)
        out[:, t, 4] = in_force.sum(axis=0)
    return out
