"""The on-chain rule for a ``tft_report`` (SPEC L7, L9): Accuracy(TFT) bounded by verified work.

Why this shape. The TFT Enforcer (``ledger.tft``, torch) runs off-chain: block application
must not need torch, and float training is only bit-reproducible on one kind of machine. So
a report carries, per occupied miner slot of a Brain:

* ``skill_bps`` — the Enforcer's forecast skill for the miner (its interval coverage,
  :func:`ledger.tft.enforcer_skill`), the float part, rounded to basis points;
* ``accuracy_bps`` — what enters the epoch (``ledger.epoch.tft_accuracy``);
* ``checkpoint`` — the sha256 of the retrained model, and ``data_height``, the last block
  of public data it was trained and scored on (:class:`Recipe` fixes everything else),

and every node, while applying the block, recomputes in exact integers::

    accuracy_bps[j] == skill_bps[j] × verified_bps[j] // 10000

where ``verified_bps[j]`` is the stake-weighted share (of the Brain's *active* validators,
SPEC L7's 70th-percentile rule) whose ``set_weights`` row currently gives miner j a non-zero
weight — validators give 0 to a miner that failed their check (``network.validator``) — and
0 unless that share reaches consensus's majority κ = 32767/65535. A report whose numbers
differ, that leaves out an occupied slot, or that is not signed by Brain #2's owner is
rejected by every node. Hence a miner that fails verification gets Accuracy(TFT) = 0
whatever its series looks like, and a report can never pay a miner the validators do not
vouch for.

What the ledger cannot check without running the network: that ``skill_bps`` and
``checkpoint`` are what :class:`Recipe` gives on the public blocks up to ``data_height``.
Any node reproduces them off the block-apply path (``network.enforcer.reproduce``); on one
machine the result is bit-identical (fixed seed, one thread). Across CPU types float32
kernels may round differently, so a reproduction there can differ in the last step of
``skill_bps`` — that is why the skill is not enforced at block application.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ledger.consensus import active_stake_threshold
from ledger.state import State
from ledger.units import BPS

TFT_BRAIN = 2  # whitepaper 2.4.5: Brain #2 houses the TFT Enforcer model
KAPPA_NUM, KAPPA_DEN = 32_767, 65_535  # consensus's majority κ (ledger.consensus.KAPPA)


@dataclass(frozen=True)
class Recipe:
    """Everything besides the chain's blocks that fixes a report's skill and checkpoint.

    All nodes must use the same values (they are part of the protocol, like the genesis):
    the report names only ``data_height``. Small on purpose: the Enforcer retrains each
    epoch on one thread, on the last ``blocks`` blocks.
    """

    blocks: int = 96  # public blocks (data_height − blocks + 1 .. data_height) used
    window: int = 8  # TFT input window (blocks)
    hidden: int = 8
    heads: int = 2
    steps: int = 40  # Adam steps per retraining
    batch_size: int = 32
    seed: int = 0
    max_windows: int = 32  # per-miner windows scored

    @property
    def min_height(self) -> int:
        """The first data height with enough blocks for one training window per miner."""
        return self.window + 2


RECIPE = Recipe()


def verified_bps(s: State, brain_id: int) -> dict[int, int]:
    """Per occupied miner slot: the share (bps, floored) of active validator stake whose
    current weight row gives it weight > 0; 0 below the κ majority.

    A row set before the miner's slot was (re)filled does not count (as in
    ``ledger.epoch.consensus_inputs``): a newcomer inherits no one's verification.
    """
    b = s.brain(brain_id)
    if b is None:
        return {}
    vals = [(slot, a) for slot, a in enumerate(b.validators) if a is not None]
    stakes = [s.delegate_stake.get((brain_id, a), 0) for _, a in vals]
    threshold = active_stake_threshold(stakes)
    active = [(slot, st) for (slot, _), st in zip(vals, stakes, strict=True)
              if st > 0 and st >= threshold]
    total = sum(st for _, st in active)
    rows = [(s.get("wrow", (brain_id, slot)), st) for slot, st in active]
    out: dict[int, int] = {}
    for j, addr in enumerate(b.miners):
        if addr is None:
            continue
        ok = sum(st for entry, st in rows if entry is not None and entry[0] >= b.m_reg_at[j]
                 and j < len(entry[1]) and int(entry[1][j]) > 0)
        majority = total > 0 and ok * KAPPA_DEN >= KAPPA_NUM * total
        out[j] = ok * BPS // total if majority else 0
    return out


def bounded_accuracy(skill_bps: int, verified: int) -> int:
    """Accuracy(TFT) in bps: forecast skill × verified share, exact integers, floored."""
    return skill_bps * verified // BPS


def report_problem(s: State, sender: str, payload: dict[str, Any], height: int) -> str | None:
    """Why a ``tft_report`` in a block at ``height`` must be rejected, or None.

    ``payload`` has passed the tx schema (``ledger.tx.PAYLOAD_SCHEMAS``): every field is
    present with its type. Bounded: one pass over the Brain's validators × miners.
    """
    tft_brain = s.brain(TFT_BRAIN)
    if tft_brain is None or tft_brain.owner != sender:
        return "only the owner of Brain #2 (TFT Enforcer) reports Accuracy(TFT)"
    brain_id = payload["brain"]
    b = s.brain(brain_id)
    if b is None:
        return f"no Brain #{brain_id}"
    uids, acc, skill = payload["uids"], payload["accuracy_bps"], payload["skill_bps"]
    occupied = [j for j, a in enumerate(b.miners) if a is not None]
    if uids != occupied:
        return f"uids must be Brain #{brain_id}'s occupied miner slots in order: {occupied}"
    if not len(acc) == len(skill) == len(uids):
        return "uids, accuracy_bps and skill_bps differ in length"
    if any(v > BPS for v in skill):
        return "skill_bps must be <= 10000"
    if not RECIPE.min_height <= payload["data_height"] < height:
        return (f"data_height must be in [{RECIPE.min_height}, {height - 1}] "
                "(public blocks before this one)")
    verified = verified_bps(s, brain_id)
    for u, a, k in zip(uids, acc, skill, strict=True):
        want = bounded_accuracy(k, verified[u])
        if a != want:
            return (f"accuracy_bps of uid {u} is {a}; the rule gives {want} "
                    f"(skill {k} bps × verified {verified[u]} bps)")
    return None
