"""The chain's own per-block time series, the training data of the TFT Enforcer (SPEC L9).

Kept apart from ``ledger.tft`` so that producing the data never imports torch.
"""

from __future__ import annotations

import numpy as np

from ledger.chain import Chain
from ledger.units import block_reward

SERIES_COLUMNS = ("txs", "block_interval_s", "block_bytes", "active_addresses", "emission")


def block_series(chain: Chain, start: int = 1, end: int | None = None) -> np.ndarray:
    """Rows per block ``start..end`` (inclusive), columns ``SERIES_COLUMNS``, float64.

    ``active_addresses`` counts distinct tx senders in the block; ``emission`` is the
    block reward in base units; the interval of block 1 is measured from genesis time.
    """
    end = chain.height if end is None else end
    rows = []
    prev_time = chain.genesis.time
    if start > 1:
        prev = chain.block(start - 1)
        assert prev is not None
        prev_time = prev.header.time
    for h in range(start, end + 1):
        block = chain.block(h)
        if block is None:
            raise KeyError(f"block {h} is not stored")
        rows.append((len(block.txs), block.header.time - prev_time, len(block.to_bytes()),
                     len({t.sender for t in block.txs}), block_reward(h)))
        prev_time = block.header.time
    return np.asarray(rows, dtype=np.float64).reshape(-1, len(SERIES_COLUMNS))
