"""A Brain's epoch through the chain (SPEC L6, L7): build the matrices from state, call
``consensus.yuma_epoch``, store bonds as u16, and pay the Brain's accumulated emission.

Payout of an epoch's emission E (all integer, ``economics.apportion`` everywhere):
- owner part = E × owner_bps (floored) → the Brain's reward address; a stake-method Brain
  inside its 90-day lock has no owner part (it goes to the nodes instead);
- miners part = rest × miner_bps (floored), by consensus incentive;
- validators part = the remainder: the share of it equal to the Brain-level (undelegated)
  stake's share of the Brain's stake goes pro rata to Brain-level stakers; the rest by
  dividends to validators, each validator's amount pro rata to the stake delegated to it
  (its own stake included), or to the validator itself if nobody stakes on it;
- any part with nobody to receive it (no miners, no incentive, no dividends) → owner.
"""

from __future__ import annotations

import numpy as np

from ledger import economics as econ
from ledger.consensus import beta_schedule, yuma_epoch
from ledger.genesis import Genesis
from ledger.state import State
from ledger.units import BPS

U16 = 65_535


def _pay_pool(s: State, amount: int, pool: dict[str, int]) -> int:
    """Pay ``amount`` pro rata to ``pool`` (address → stake). Returns what was paid."""
    names = sorted(a for a, v in pool.items() if v > 0)
    parts = econ.apportion(amount, [pool[a] for a in names])
    for a, p in zip(names, parts, strict=True):
        s.credit(a, p)
    return sum(parts)


def _grow(a: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
    out = np.zeros(shape, dtype=np.uint16)
    if a is not None:
        r, c = min(a.shape[0], shape[0]), min(a.shape[1], shape[1])
        out[:r, :c] = a[:r, :c]
    return out


def consensus_inputs(s: State, brain_id: int) -> tuple[list[int], list[int], np.ndarray,
                                                       np.ndarray, np.ndarray]:
    """(validator slots, miner slots, W, S, B_prev) for the occupied slots of a Brain.

    A weight set before a miner slot was (re)filled is dropped, and bonds of slots filled
    since the last epoch start at zero: a newcomer inherits nothing from the previous holder.
    """
    b = s.brain(brain_id)
    assert b is not None
    vs = [i for i, a in enumerate(b.validators) if a is not None]
    ms = [j for j, a in enumerate(b.miners) if a is not None]
    m_reg = np.asarray(b.m_reg_at, dtype=np.int64)[ms] if ms else np.zeros(0, np.int64)
    W = np.zeros((len(vs), len(ms)), dtype=np.float64)
    ms_arr = np.asarray(ms, dtype=np.int64)
    for r, slot in enumerate(vs):
        entry = s.get("wrow", (brain_id, slot))
        if entry is None:
            continue
        set_at, row = entry
        inside = ms_arr < len(row)
        vals = np.zeros(len(ms), dtype=np.float64)
        vals[inside] = row[ms_arr[inside]]
        vals[m_reg > set_at] = 0.0
        W[r] = vals
    S = np.asarray([s.delegate_stake.get((brain_id, b.validators[i]), 0) for i in vs],
                   dtype=np.int64)
    full = _grow(s.get("bond", brain_id), (len(b.validators), len(b.miners)))
    fresh_v = np.asarray(b.v_reg_at, dtype=np.int64) > b.last_epoch
    fresh_m = np.asarray(b.m_reg_at, dtype=np.int64) > b.last_epoch
    full[fresh_v, :] = 0
    full[:, fresh_m] = 0
    B = full[np.ix_(vs, ms)].astype(np.float64) / U16
    return vs, ms, W, S, B


def tft_accuracy(s: State, brain_id: int, ms: list[int]) -> np.ndarray | None:
    """Accuracy(TFT) in [0, 1] for the occupied miner slots, from the last ``tft_report``;
    a slot filled after the report gets 0. None when no report exists (β(t)·A term off)."""
    entry = s.get("tft", brain_id)
    if entry is None:
        return None
    set_at, row = entry
    b = s.brain(brain_id)
    assert b is not None
    acc = np.zeros(len(ms), dtype=np.float64)
    for j, slot in enumerate(ms):
        if slot < len(row) and b.m_reg_at[slot] <= set_at:
            acc[j] = row[slot] / BPS
    return acc


def run_epoch(s: State, g: Genesis, brain_id: int, height: int, matured: bool = True) -> None:
    """Run consensus for one Brain and pay out the emission it accumulated since its last
    epoch. Mutates ``s`` through journaled puts only."""
    b = s.brain(brain_id)
    assert b is not None
    amount = s.get("pend", brain_id, 0)
    s.delete("pend", brain_id)
    owner_part, miner_part, val_part = econ.split_brain_emission(
        amount, b.owner_bps if matured else 0, min(b.miner_bps, BPS))
    to_owner = owner_part

    # Brain-level stakers' share of the validators' part.
    total = s.brain_stake.get(brain_id, 0)
    brain_level = s.delegate_stake.get((brain_id, ""), 0)
    level_part = val_part * brain_level // total if total else 0
    paid = _pay_pool(s, level_part, s.stakers.get((brain_id, ""), {}))
    to_owner += level_part - paid
    val_part -= level_part

    vs, ms, W, S, B = consensus_inputs(s, brain_id)
    perf = 0
    if vs and ms:
        beta = beta_schedule(height, g.blocks_per_year, s.param("beta_start"))  # live (L8)
        res = yuma_epoch(W, S, B, beta=beta, tft_accuracy=tft_accuracy(s, brain_id, ms))
        new_bonds = np.zeros((len(b.validators), len(b.miners)), dtype=np.uint16)
        new_bonds[np.ix_(vs, ms)] = np.clip(np.rint(res.bonds * U16), 0, U16).astype(np.uint16)
        new_bonds.setflags(write=False)
        s.put("bond", brain_id, new_bonds)

        credits = list(s.get("cred", brain_id, ()))
        credits += [0] * (len(b.miners) - len(credits))
        for j, slot in enumerate(ms):
            base = 0 if b.m_reg_at[slot] > b.last_epoch else credits[slot]
            credits[slot] = base + int(round(float(res.credits[j])))
        s.put("cred", brain_id, tuple(credits))

        # miners by incentive
        parts = econ.apportion(miner_part, econ.quantise(res.incentive))
        for j, p in enumerate(parts):
            s.credit(b.miners[ms[j]], p)
        to_owner += miner_part - sum(parts)

        # validators by dividends, then pro rata to their delegators
        parts = econ.apportion(val_part, econ.quantise(res.dividends))
        for r, p in enumerate(parts):
            if p == 0:
                continue
            vaddr = b.validators[vs[r]]
            assert vaddr is not None
            pool = s.stakers.get((brain_id, vaddr), {})
            if _pay_pool(s, p, pool) == 0:
                s.credit(vaddr, p)
        to_owner += val_part - sum(parts)

        active = res.active.astype(bool)
        w_stake = S.astype(np.float64) * active
        if w_stake.sum() > 0 and float(res.incentive.sum()) > 0:
            perf = int(round(BPS * float((w_stake * res.validator_trust).sum() / w_stake.sum())))
    else:
        to_owner += miner_part + val_part
    s.credit(b.reward_address, to_owner)
    s.put("perf", brain_id, min(max(perf, 0), BPS))
    s.put("brain", brain_id, _with_last_epoch(b, height))


def _with_last_epoch(b, height: int):  # noqa: ANN001, ANN202
    from dataclasses import replace

    return replace(b, last_epoch=height)
