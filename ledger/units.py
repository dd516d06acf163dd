"""Money units and the block-reward schedule (SPEC L1, L2).

Every amount of $BASED on the ledger is an ``int`` of base units: floats would make the
state root depend on rounding modes, and two nodes must agree to the last unit.
"""

from __future__ import annotations

BASED: int = 10**9
"""Base units per $BASED (L1)."""

BLOCK_REWARD: int = 10 * BASED
"""Reward of a block in the first era (L2)."""

BLOCKS_PER_YEAR: int = 3_155_760
"""One year of 10 s blocks; also the halving interval and the β(t) time unit (L2, L7)."""

HALVING_INTERVAL: int = BLOCKS_PER_YEAR

PEPECOIN_BURN_BASE: int = 1_000
PEPECOIN_BURN_STEP: int = 200
PEPECOIN_STAKE_AMOUNT: int = 100_000
"""Whole Pepecoin amounts for Brain acquisition (L3); Pepecoin never enters $BASED maths."""

MAX_BRAINS: int = 1024
RESERVED_BRAINS: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 47)
MAX_VALIDATORS: int = 256
MAX_MINERS: int = 1792
DEFAULT_REGISTRATION_FEE: int = 100 * BASED
BPS: int = 10_000
"""Basis points: every share on chain is an integer out of 10,000."""


def era(height: int) -> int:
    """Halving era of block ``height``: blocks 1..3,155,760 are era 0, the next year era 1.

    Genesis (height 0) issues nothing, so the first era has exactly one interval of blocks.
    """
    if height < 1:
        raise ValueError("only blocks at height >= 1 carry a reward")
    return (height - 1) // HALVING_INTERVAL


def block_reward(height: int) -> int:
    """Base units issued by block ``height`` (0 for genesis; halves each era, integer shift)."""
    if height == 0:
        return 0
    e = era(height)
    return BLOCK_REWARD >> e if e < 64 else 0


def cumulative_issuance(height: int) -> int:
    """Sum of ``block_reward(h)`` for h in 1..height, in closed form (used to audit supply)."""
    total = 0
    remaining = height
    e = 0
    while remaining > 0 and e < 64:
        n = min(remaining, HALVING_INTERVAL)
        total += n * (BLOCK_REWARD >> e)
        remaining -= n
        e += 1
    return total


def brain_burn_price(burned_so_far: int) -> int:
    """Pepecoin to burn for the next Brain: 1,000 + 200 × Brains burned so far (L3)."""
    if burned_so_far < 0:
        raise ValueError("burned_so_far must be >= 0")
    return PEPECOIN_BURN_BASE + PEPECOIN_BURN_STEP * burned_so_far
