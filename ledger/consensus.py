"""Yuma-style consensus epoch for one Brain (SPEC L7).

The reference is Bittensor subtensor's original (pre-Yuma3) ``epoch``: the whole incentive
computation is one function of a validator × miner weight matrix ``W`` and a validator stake
vector ``S``. It is written here as plain NumPy so a reader can check it line by line against
the subtensor code and against the whitepaper (§3.2.3, §3.4).

Steps of :func:`yuma_epoch`, in order:

1. **Active validators** (whitepaper Figure 4): a validator is active when its stake is at
   least the 70th percentile of the Brain's validator stakes (``numpy.percentile(...,
   method="lower")``). Inactive validators' weight rows are ignored, their stake is zeroed for
   consensus, and their bonds are cleared (subtensor clears the bonds of a uid that loses its
   validator permit), so they earn no dividends.
2. **Stake** ``S`` = active stake normalised to sum 1.
3. **Weights** ``W`` = raw weights row-normalised (each validator spends one unit of vote).
4. **Pre-ranks** ``P = Sᵀ·W``: what each miner would get without clipping.
5. **Consensus** ``C_j`` = stake-weighted median of column j with majority κ: the largest
   weight value that validators holding at least κ of the stake assign to miner j (subtensor's
   ``weighted_median_col``). κ = 32767/65535 ≈ 0.5 (just below one half, so that exactly half
   the stake suffices).
6. **Clipping** ``W̄ = min(W, C)`` column-wise: weight above consensus is not counted, which
   is what makes an outlier validator's self-serving weights worthless.
7. **Ranks** ``R = Sᵀ·W̄``; **trust** ``T = R / P`` (share of a miner's support that survived
   clipping); **validator trust** = row sums of ``W̄``; ranks are then normalised.
8. **Incentive** — the whitepaper writes ``I = R·C + β(t)·Accuracy(TFT)``. We read ``R·C``
   as "ranks computed from weights clipped at consensus C", which is exactly how Yuma combines
   R and C (multiplying the normalised ranks by ``C_j`` once more would double-count
   consensus and make β = 0 deviate from the reference). ``Accuracy(TFT)`` is a per-miner
   vector ``acc_j ∈ [0, 1]`` (see :func:`ledger.tft.miner_accuracy`), turned into a
   distribution ``A = acc / Σ acc`` so that the two terms are on the same scale. Then::

       I = normalise(R + β·A)      (R and A each sum to 1, or are all zero)

   so β = 0 gives the pure Yuma incentive ``I = R``, β = 1 (after year 4) gives the TFT half
   of the emission to miners, and β = 0.9 gives it 0.9/1.9 ≈ 47 %. ``I`` sums to 1, or is all
   zero when there is neither weight nor accuracy.
9. **Bonds**: ``ΔB = W̄ ⊙ S`` (row i scaled by ``S_i``), column-normalised; exponential moving
   average ``B = α·ΔB + (1−α)·B_prev`` with α = 0.1 over the column-normalised previous bonds,
   column-normalised again. Bonds are validators' stake-weighted shares of each miner, in [0, 1].
   ΔB uses the *clipped* weights (subtensor's ``bonds_penalty = 1``), so weight a validator put
   above consensus buys it no bonds and hence no dividends.
10. **Dividends** ``D_i = Σ_j B_ij·I_j``, normalised to sum 1 (or all zero).
11. **Credits** (whitepaper §3.4.3, ``ΔCredits = W·S``): ``ΔCredits_j = Σ_i W_ij·stake_i``
    with the row-normalised weights of active validators and their raw stake, so the credit a
    miner accrues in an epoch is measured in stake base units.

Everything is vectorised: the weighted median sorts each column once, so a full Brain
(256 validators × 1792 miners) takes a few tens of milliseconds. Products are written as
elementwise products reduced along an axis rather than BLAS matmuls, so that the summation
order, and hence every bit of the result, does not depend on the machine (see
:func:`_stake_dot`). This module must not import
torch; the TFT Enforcer lives in :mod:`ledger.tft`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BLOCKS_PER_YEAR = 3_155_760
KAPPA = 32767 / 65535
BOND_ALPHA = 0.1
ACTIVE_PERCENTILE = 70


def beta_schedule(height: int, blocks_per_year: int = BLOCKS_PER_YEAR,
                  start: int | None = None) -> float:
    """Weight β(t) of the TFT Enforcer's accuracy in the incentive (whitepaper §3.4.2).

    ``t = height / blocks_per_year``. β = 0 for t ≤ 2 (the TFT has no say while it learns),
    rises linearly from 0 to 0.9 over 2 < t ≤ 4, and is 1 after year 4. The jump from 0.9 to 1
    at t = 4 is in the paper; we keep it rather than smoothing it.

    ``start``: the height where the ramp begins, default two years; governance may move it
    (chain parameter ``beta_start``, issue #16). The ramp always lasts two years.
    """
    if height < 0:
        raise ValueError("height must be non-negative")
    if blocks_per_year <= 0:
        raise ValueError("blocks_per_year must be positive")
    if start is None:
        start = 2 * blocks_per_year
    if start < 0:
        raise ValueError("start must be non-negative")
    ramp = 2 * blocks_per_year
    # Compare in integers so that the year boundaries are exact.
    if height <= start:
        return 0.0
    if height <= start + ramp:
        return 0.9 * (height - start) / ramp
    return 1.0


def active_validator_mask(stake: np.ndarray) -> np.ndarray:
    """Validators whose stake is in the top 70th percentile of their Brain (SPEC L7).

    "Top 70th percentile" is decided as ``stake >= numpy.percentile(stake, 70,
    method="lower")``; with the paper's Figure 4 stakes 40, 50, 60, 80, 85, 90 the threshold is
    80 and the validators at 80, 85, 90 are active. ``method="lower"`` picks an actual stake
    value, so integer stakes are compared exactly.
    """
    stake = np.asarray(stake)
    if stake.ndim != 1:
        raise ValueError("stake must be a vector")
    if stake.size == 0:
        return np.zeros(0, dtype=bool)
    threshold = np.percentile(stake, ACTIVE_PERCENTILE, method="lower")
    return stake >= threshold


def active_stake_threshold(stakes: list[int]) -> int:
    """The least stake an active validator of a Brain holds (SPEC L7), in exact integers.

    The same rule as ``active_validator_mask``: the stake at the index numpy's
    ``percentile(..., 70, method="lower")`` picks (that index is taken from numpy itself,
    on the positions 0..n-1, so float rounding of the index is numpy's own), compared as
    ints — stakes up to 2^63 would not survive a float. Empty → 0.
    """
    if not stakes:
        return 0
    idx = int(np.percentile(np.arange(len(stakes)), ACTIVE_PERCENTILE, method="lower"))
    return sorted(stakes)[idx]


@dataclass(frozen=True)
class EpochResult:
    """Outputs of one consensus epoch; vectors are per miner unless marked per validator."""

    active: np.ndarray  # per validator, bool
    consensus: np.ndarray  # C_j: stake-weighted κ-median weight
    ranks: np.ndarray  # R_j normalised to sum 1 (or all 0)
    trust: np.ndarray  # R_j / P_j before normalisation, in [0, 1]
    incentive: np.ndarray  # I_j, sums to 1 (or all 0)
    dividends: np.ndarray  # per validator, sums to 1 (or all 0)
    bonds: np.ndarray  # validators × miners, each column sums to 1 (or 0)
    validator_trust: np.ndarray  # per validator: weight kept after clipping, in [0, 1]
    credits: np.ndarray  # ΔCredits_j = Σ_i W_ij·stake_i, in stake base units


def _normalise(x: np.ndarray) -> np.ndarray:
    """Scale a non-negative vector to sum 1; an all-zero vector stays zero (never NaN)."""
    total = x.sum()
    return x / total if total > 0 else np.zeros_like(x)


def _row_normalise(m: np.ndarray) -> np.ndarray:
    sums = m.sum(axis=1, keepdims=True)
    return np.divide(m, sums, out=np.zeros_like(m), where=sums > 0)


def _col_normalise(m: np.ndarray) -> np.ndarray:
    sums = m.sum(axis=0, keepdims=True)
    return np.divide(m, sums, out=np.zeros_like(m), where=sums > 0)


def _stake_dot(stake: np.ndarray, m: np.ndarray) -> np.ndarray:
    """``stakeᵀ·m`` summed row by row in a fixed order.

    Every node must compute bit-identical epochs (the results are paid out and stored in the
    state root); a BLAS matrix product may change its summation order with the CPU or thread
    count, while an elementwise product reduced over axis 0 adds the rows in index order.
    """
    return (stake[:, None] * m).sum(axis=0)


def weighted_median_col(stake: np.ndarray, weights: np.ndarray, kappa: float) -> np.ndarray:
    """Per column j, the largest value c with Σ_{i: W_ij ≥ c} S_i ≥ κ (subtensor semantics).

    Equivalently (subtensor's quickselect): sort the column ascending, accumulate stake, and
    take the first value at which the accumulated stake exceeds the minority ``1 − κ``.
    ``stake`` must be normalised to sum 1; zero-stake rows never move the cumulative sum, so
    they can never be picked. All-zero stake gives consensus 0.
    """
    n_val, n_min = weights.shape
    if n_val == 0 or n_min == 0 or stake.sum() <= 0:
        return np.zeros(n_min)
    minority = stake.sum() - kappa
    order = np.argsort(weights, axis=0, kind="stable")
    sorted_w = np.take_along_axis(weights, order, axis=0)
    cum_stake = np.cumsum(stake[order], axis=0)
    # First row (per column) whose cumulative stake passes the minority; it always exists
    # because the last cumulative value is 1 > 1 − κ. The tiny tolerance makes a cumulative
    # stake that equals the minority up to rounding (e.g. κ = 0.5 with two equal validators)
    # count as "not past it", as exact arithmetic would.
    pick = np.argmax(cum_stake > minority + 1e-12, axis=0)
    return sorted_w[pick, np.arange(n_min)]


def yuma_epoch(
    weights: np.ndarray,
    stake: np.ndarray,
    bonds_prev: np.ndarray,
    *,
    kappa: float = KAPPA,
    bond_alpha: float = BOND_ALPHA,
    beta: float = 0.0,
    tft_accuracy: np.ndarray | None = None,
) -> EpochResult:
    """Run one Yuma consensus epoch for a Brain; see the module docstring for the maths.

    ``weights``: (n_validators, n_miners) non-negative raw weights. ``stake``: (n_validators,)
    stake in base units. ``bonds_prev``: bonds returned by the previous epoch (zeros at the
    first). ``beta``: β(t) from :func:`beta_schedule`. ``tft_accuracy``: per-miner
    Accuracy(TFT) in [0, 1]; ignored when None or when β = 0.
    """
    W_raw = np.asarray(weights, dtype=np.float64)
    stake_raw = np.asarray(stake)
    B_prev = np.asarray(bonds_prev, dtype=np.float64)
    if W_raw.ndim != 2:
        raise ValueError("weights must be a (validators, miners) matrix")
    n_val, n_min = W_raw.shape
    if stake_raw.shape != (n_val,):
        raise ValueError("stake must have one entry per validator (weights row)")
    if B_prev.shape != W_raw.shape:
        raise ValueError("bonds_prev must have the shape of weights")
    if not np.all(np.isfinite(W_raw)) or np.any(W_raw < 0):
        raise ValueError("weights must be finite and non-negative")
    if np.any(stake_raw < 0):
        raise ValueError("stake must be non-negative")
    if not np.all(np.isfinite(B_prev)) or np.any(B_prev < 0):
        raise ValueError("bonds_prev must be finite and non-negative")
    if not 0.0 <= kappa <= 1.0 or not 0.0 <= bond_alpha <= 1.0 or beta < 0:
        raise ValueError("kappa and bond_alpha must lie in [0, 1], beta must be >= 0")

    # 1. Active validators; the rest keep no vote, no stake and no bonds.
    active = active_validator_mask(stake_raw)
    stake_active = np.where(active, stake_raw.astype(np.float64), 0.0)

    # 2-3. Normalised stake and row-normalised weights of active validators.
    S = _normalise(stake_active)
    W = _row_normalise(np.where(active[:, None], W_raw, 0.0))

    # 4. Pre-ranks: support before clipping.
    preranks = _stake_dot(S, W)

    # 5-6. Consensus and clipping to it.
    C = weighted_median_col(S, W, kappa)
    W_clipped = np.minimum(W, C[None, :])
    validator_trust = W_clipped.sum(axis=1)

    # 7. Ranks and trust.
    ranks_raw = _stake_dot(S, W_clipped)
    trust = np.divide(ranks_raw, preranks, out=np.zeros(n_min), where=preranks > 0)
    R = _normalise(ranks_raw)

    # 8. Incentive: I = normalise(R + β·A), A = accuracy as a distribution over miners.
    if tft_accuracy is not None and beta > 0:
        acc = np.asarray(tft_accuracy, dtype=np.float64)
        if acc.shape != (n_min,):
            raise ValueError("tft_accuracy must have one entry per miner")
        if not np.all(np.isfinite(acc)) or np.any(acc < 0) or np.any(acc > 1):
            raise ValueError("tft_accuracy must lie in [0, 1]")
        incentive = _normalise(R + beta * _normalise(acc))
    else:
        incentive = R

    # 9. Bonds: EMA of the stake-weighted clipped weights, column-normalised.
    B_prev = _col_normalise(np.where(active[:, None], B_prev, 0.0))
    bonds_delta = _col_normalise(W_clipped * S[:, None])
    bonds = _col_normalise(bond_alpha * bonds_delta + (1.0 - bond_alpha) * B_prev)

    # 10. Dividends: validators are paid for the incentive of the miners they hold bonds in.
    dividends = _normalise((bonds * incentive[None, :]).sum(axis=1))

    # 11. Credits: ΔCredits = W·S in stake base units.
    credits = _stake_dot(stake_active, W)

    return EpochResult(
        active=active,
        consensus=C,
        ranks=R,
        trust=trust,
        incentive=incentive,
        dividends=dividends,
        bonds=bonds,
        validator_trust=validator_trust,
        credits=credits,
    )
