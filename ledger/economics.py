"""Integer emission maths (SPEC L1, L6).

Every split here is exact: ``apportion`` hands out all ``total`` units, never more, never
fewer, so the supply equals the schedule to the last base unit.

Choices (documented in ledger/README.md):
- Remainder rule: largest remainder (Hamilton). Each share gets ``floor(total·w/Σw)``; the
  units left over go one each to the largest fractional parts, ties to the lower index.
- Brain score = counted stake × performance, where counted stake = min(stake, 0.5% of the
  network's total stake) and performance is in basis points from the Brain's last epoch.
- Top-30% bonus: the ceil(30%) best-performing Brains (among those with a positive score;
  ties by lower Brain id) have their score multiplied by 1.5 (a +50% bonus).
- If no Brain has a positive score, the whole block reward goes to Brain #0, whose role in
  the whitepaper is to distribute $BASED rewards; its owner is paid at its epoch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ledger.units import BPS

BONUS_NUM, BONUS_DEN = 3, 2  # top-30% Brains: score × 1.5
TOP_FRACTION_NUM, TOP_FRACTION_DEN = 3, 10
STAKE_CAP_NUM, STAKE_CAP_DEN = 5, 1000  # 0.5% of total network stake
FALLBACK_BRAIN = 0
WEIGHT_SCALE = 1 << 32  # float shares (incentive, dividends) are quantised to this before use
SLASH_DOUBLE_SIGN_BPS = 500  # a double-signer loses 5% of each stake delegated to it (N1)


def apportion(total: int, weights: Sequence[int]) -> list[int]:
    """Split ``total`` units in proportion to non-negative int ``weights``, exactly.

    Returns all zeros when every weight is zero (the caller decides where ``total`` goes).
    """
    if total < 0:
        raise ValueError("total must be >= 0")
    w = [int(x) for x in weights]
    if any(x < 0 for x in w):
        raise ValueError("weights must be >= 0")
    s = sum(w)
    if s == 0 or total == 0:
        return [0] * len(w)
    shares = []
    rems = []
    for i, x in enumerate(w):
        q, r = divmod(total * x, s)
        shares.append(q)
        rems.append((-r, i))
    left = total - sum(shares)
    for _, i in sorted(rems)[:left]:
        shares[i] += 1
    return shares


def quantise(shares: np.ndarray) -> list[int]:
    """Float shares (from consensus) → int weights for ``apportion``; negatives/NaN → 0."""
    a = np.nan_to_num(np.asarray(shares, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    a = np.clip(a, 0.0, None)
    return [int(x) for x in np.rint(a * WEIGHT_SCALE).astype(np.int64)]


def slash_amount(stake: int) -> int:
    """What double signing takes from one stake entry (bonded or unbonding): the one
    fraction ``SLASH_DOUBLE_SIGN_BPS``, floored, so a slash never exceeds it."""
    return stake * SLASH_DOUBLE_SIGN_BPS // BPS


def stake_cap(total_stake: int) -> int:
    """The most stake a Brain can have counted for emission: 0.5% of total stake, floored."""
    return total_stake * STAKE_CAP_NUM // STAKE_CAP_DEN


def is_gigabrain(brain_stake: int, total_stake: int) -> bool:
    """A Brain with at least 0.5% of total stake is a GigaBrain (L8); exact integer test."""
    return total_stake > 0 and brain_stake * STAKE_CAP_DEN >= total_stake * STAKE_CAP_NUM


def brain_scores(
    stakes: dict[int, int], performance: dict[int, int], total_stake: int
) -> dict[int, int]:
    """Integer score per Brain: capped stake × performance (bps), ×1.5 for the top 30%.

    Scores are doubled for everyone and tripled for the bonus Brains so they stay integers.
    """
    cap = stake_cap(total_stake)
    base = {b: min(stakes.get(b, 0), cap) * performance.get(b, 0) for b in stakes}
    eligible = sorted((b for b, s in base.items() if s > 0), key=lambda b: (-performance[b], b))
    n_top = -(-len(eligible) * TOP_FRACTION_NUM // TOP_FRACTION_DEN)  # ceil
    top = set(eligible[:n_top])
    return {b: s * (BONUS_NUM if b in top else BONUS_DEN) for b, s in base.items() if s > 0}


def split_block_reward(reward: int, scores: dict[int, int]) -> dict[int, int]:
    """The block reward per Brain id; all of it to Brain #0 when no Brain scores."""
    ids = sorted(scores)
    parts = apportion(reward, [scores[b] for b in ids])
    if sum(parts) != reward:  # every score zero
        return {FALLBACK_BRAIN: reward} if reward else {}
    return {b: p for b, p in zip(ids, parts, strict=True) if p}


def split_brain_emission(amount: int, owner_bps: int, miner_bps: int) -> tuple[int, int, int]:
    """(owner, miners, validators) parts of a Brain's epoch emission; they sum to ``amount``.

    Rounding: the owner and miner parts are floored, the validators take what is left.
    """
    owner = amount * owner_bps // BPS
    nodes = amount - owner
    miners = nodes * miner_bps // BPS
    return owner, miners, nodes - miners
