"""Budgeted squeezing (SPEC C3; paper §7.1.2–7.1.3 "Cerberus Squeezing").

Keep the heads with S(h) > θ, then choose among them the set that maximises the retained
significance Σ S(h) subject to the FHE cost model C(heads, bits) ≤ C_max. With per-head
costs c_h that is a 0/1 knapsack, solved exactly here (branch and bound on the LP
relaxation); real-valued costs make a plain DP inexact, so the DP on a fine cost grid,
with costs rounded *up* (always feasible), is only the fallback when branch and bound
exceeds its node limit on very large instances. The report says which solver ran.

Cost of a selection = the model's non-head cost (MLP, LayerNorms, attention glue, as if
every layer kept its attention) + Σ c_h over kept heads. Dropping the last head of a layer
also drops that layer's glue, so the true cost (``model_cost`` of the pruned model, which
is what the report shows) is ≤ the knapsack's: the budget always holds.

The ablation baselines run at the same budget: ``random`` fills the budget with heads in a
seeded random order; ``magnitude`` runs the same knapsack on the weight norm of each head
(q/k/v rows and o columns). θ filters on significance, so it only applies to
``significance``; the baselines must not see the scores.

Passes return a new model and never modify their input.
"""

from __future__ import annotations

import bisect
import copy
import math
import random
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from cerberus.cost import DEFAULT_CONSTANTS, DEFAULT_ROUND_BITS, CostConstants, model_cost
from cerberus.errors import CompileError
from cerberus.frontends.canonical import CanonicalTransformer
from cerberus.passes.significance import SignificanceReport

Strategy = Literal["significance", "random", "magnitude"]
STRATEGIES = ("significance", "random", "magnitude")
Table = Sequence[Sequence[float | None]]


# --------------------------------------------------------------------------- pruning


def _linear_from(weight: torch.Tensor, bias: torch.Tensor | None, like: nn.Linear) -> nn.Linear:
    """A Linear holding copies of ``weight``/``bias`` (zero-sized ones allowed)."""
    with warnings.catch_warnings():  # torch warns when initialising zero-element tensors
        warnings.simplefilter("ignore")
        lin = nn.Linear(
            weight.shape[1], weight.shape[0], bias=bias is not None,
            device=weight.device, dtype=weight.dtype,
        )
    lin.weight = nn.Parameter(weight.detach().clone(), requires_grad=like.weight.requires_grad)
    if bias is not None:
        lin.bias = nn.Parameter(bias.detach().clone(), requires_grad=like.bias.requires_grad)
    return lin


def _check_heads_kept(model: CanonicalTransformer, heads_kept: Sequence[Sequence[int]]) -> None:
    cfg = model.cfg
    if len(heads_kept) != cfg.n_layer:
        raise CompileError(f"heads_kept has {len(heads_kept)} layers, model has {cfg.n_layer}")
    for layer, (want, have) in enumerate(zip(heads_kept, cfg.heads_kept, strict=True)):
        if len(set(want)) != len(want):
            raise CompileError(f"layer {layer}: duplicate heads in {list(want)}")
        missing = sorted(set(want) - set(have))
        if missing:
            raise CompileError(
                f"layer {layer}: heads {missing} are not in the model (present: {have})"
            )


def prune_heads(
    model: CanonicalTransformer, heads_kept: Sequence[Sequence[int]]
) -> CanonicalTransformer:
    """A new model keeping only ``heads_kept`` (ORIGINAL head ids per layer).

    q/k/v output rows and o input columns of the removed heads are sliced away, so the
    pruned block really is smaller (and cheaper under FHE); gates are sliced alongside.
    A layer may keep no head: its attention then adds only the o-projection bias, exactly
    what the unpruned model computes with all that layer's gates at 0.
    """
    _check_heads_kept(model, heads_kept)
    out = copy.deepcopy(model)
    cfg = out.cfg
    hd = cfg.head_dim
    new_kept = [sorted(int(h) for h in layer) for layer in heads_kept]
    with torch.no_grad():
        for layer, blk in enumerate(out.blocks):
            have = cfg.heads_kept[layer]
            pos = [have.index(h) for h in new_kept[layer]]
            rows = torch.tensor(
                [p * hd + i for p in pos for i in range(hd)], dtype=torch.long
            )
            for name in ("q", "k", "v"):
                old = getattr(blk, name)
                bias = None if old.bias is None else old.bias[rows]
                setattr(blk, name, _linear_from(old.weight[rows], bias, old))
            blk.o = _linear_from(blk.o.weight[:, rows], blk.o.bias, blk.o)
            blk.gates = nn.Parameter(
                blk.gates.detach()[torch.tensor(pos, dtype=torch.long)].clone(),
                requires_grad=blk.gates.requires_grad,
            )
    cfg.heads_kept = new_kept
    for blk in out.blocks:
        blk.cfg = cfg
    return out


def head_magnitudes(model: CanonicalTransformer) -> list[list[float | None]]:
    """‖(W_q,h; W_k,h; W_v,h; W_o[:, h])‖_F per head, by original id; the magnitude baseline."""
    cfg = model.cfg
    hd = cfg.head_dim
    out: list[list[float | None]] = [[None] * cfg.n_head for _ in range(cfg.n_layer)]
    with torch.no_grad():
        for layer, blk in enumerate(model.blocks):
            for p, h in enumerate(cfg.heads_kept[layer]):
                sl = slice(p * hd, (p + 1) * hd)
                sq = sum(
                    float(w.double().square().sum())
                    for w in (blk.q.weight[sl], blk.k.weight[sl], blk.v.weight[sl],
                              blk.o.weight[:, sl])
                )
                out[layer][h] = math.sqrt(sq)
    return out


# --------------------------------------------------------------------------- knapsack


class _TooManyNodes(Exception):
    pass


def _knapsack_bb(
    values: Sequence[float], costs: Sequence[float], capacity: float, node_limit: int
) -> list[int]:
    """Exact 0/1 knapsack by depth-first branch and bound (Horowitz–Sahni).

    Items are ordered by value density; the bound at a node is the LP relaxation (greedy
    plus a fractional item), found with a bisection over prefix sums.
    """
    order = sorted(
        (i for i in range(len(values)) if values[i] > 0 and costs[i] <= capacity),
        key=lambda i: (-values[i] / costs[i], -values[i], i),
    )
    v = [values[i] for i in order]
    c = [costs[i] for i in order]
    pc = [0.0]
    pv = [0.0]
    for vi, ci in zip(v, c, strict=True):
        pc.append(pc[-1] + ci)
        pv.append(pv[-1] + vi)
    n = len(order)
    best_val = 0.0
    best: list[int] = []
    chosen: list[int] = []
    nodes = 0
    eps = 1e-12

    def bound(i: int, room: float, val: float) -> float:
        j = bisect.bisect_right(pc, pc[i] + room) - 1  # items i..j-1 fit entirely
        j = max(j, i)
        b = val + pv[j] - pv[i]
        if j < n:
            b += v[j] * (room - (pc[j] - pc[i])) / c[j]
        return b

    def dfs(i: int, room: float, val: float) -> None:
        nonlocal best_val, best, nodes
        nodes += 1
        if nodes > node_limit:
            raise _TooManyNodes
        if val > best_val + eps:
            best_val, best = val, list(chosen)
        if i == n or bound(i, room, val) <= best_val + eps:
            return
        if c[i] <= room:
            chosen.append(i)
            dfs(i + 1, room - c[i], val + v[i])
            chosen.pop()
        dfs(i + 1, room, val)

    dfs(0, capacity, 0.0)
    return sorted(order[k] for k in best)


def _knapsack_grid(
    values: Sequence[float], costs: Sequence[float], capacity: float, resolution: int
) -> list[int]:
    """0/1 knapsack DP on a grid of ``resolution`` cost units, costs rounded up (feasible)."""
    unit = capacity / resolution
    w = [math.ceil(ci / unit - 1e-9) for ci in costs]
    dp = np.zeros(resolution + 1)
    keep = np.zeros((len(values), resolution + 1), dtype=bool)
    for i, (vi, wi) in enumerate(zip(values, w, strict=True)):
        if vi <= 0 or wi > resolution:
            continue
        cand = dp.copy()
        if wi == 0:
            cand += vi
        else:
            cand[wi:] = dp[:-wi] + vi
        better = cand > dp
        keep[i] = better
        dp = np.where(better, cand, dp)
    room = resolution
    picked = []
    for i in range(len(values) - 1, -1, -1):
        if keep[i, room]:
            picked.append(i)
            room -= w[i]
    return sorted(picked)


def knapsack(
    values: Sequence[float],
    costs: Sequence[float],
    capacity: float,
    *,
    node_limit: int = 200_000,
    resolution: int = 20_000,
) -> tuple[list[int], str]:
    """Indices maximising Σ values with Σ costs ≤ capacity, and the solver that found them.

    Items with non-positive value are never needed for the optimum and are left out.
    Solver ``"branch-and-bound"`` is exact; ``"dp-grid"`` (fallback) is optimal for costs
    rounded up to ``capacity / resolution`` and always feasible.
    """
    if any(ci <= 0 for ci in costs):
        raise CompileError("knapsack: every head must have a positive cost")
    if capacity < 0:
        return [], "branch-and-bound"
    if len(values) <= 400:  # recursion depth ≈ number of items
        try:
            return _knapsack_bb(values, costs, capacity, node_limit), "branch-and-bound"
        except _TooManyNodes:
            pass
    return _knapsack_grid(values, costs, capacity, resolution), "dp-grid"


# --------------------------------------------------------------------------- selection


def _present(scores: Table) -> list[tuple[int, int]]:
    return [
        (layer, h) for layer, row in enumerate(scores) for h, s in enumerate(row) if s is not None
    ]


def _select(
    scores: Table,
    costs: Table,
    *,
    theta: float,
    budget: float | None,
    strategy: str,
    seed: int,
    magnitudes: Table | None,
) -> tuple[list[list[int]], str]:
    if strategy not in STRATEGIES:
        raise CompileError(f"unknown head-selection strategy {strategy!r} {STRATEGIES}")
    present = _present(scores)
    for layer, h in present:
        if costs[layer][h] is None:
            raise CompileError(f"no cost for head {h} of layer {layer}")
    cost = {(layer, h): float(costs[layer][h]) for layer, h in present}
    if strategy == "significance":
        pool = [(layer, h) for layer, h in present if scores[layer][h] > theta]
        if not pool:
            top = max((scores[layer][h] for layer, h in present), default=float("nan"))
            raise CompileError(f"θ={theta:g} removes every head (highest significance {top:.4g})")
        value = {lh: float(scores[lh[0]][lh[1]]) for lh in pool}
    elif strategy == "magnitude":
        if magnitudes is None:
            raise CompileError("the magnitude strategy needs head magnitudes")
        pool = list(present)
        value = {lh: float(magnitudes[lh[0]][lh[1]]) for lh in pool}
    else:
        pool = list(present)
        value = {}

    solver = "none"
    if budget is None:
        chosen = list(pool)
    elif strategy == "random":
        order = list(pool)
        random.Random(seed).shuffle(order)
        chosen, room = [], budget
        for lh in order:
            if cost[lh] <= room:
                chosen.append(lh)
                room -= cost[lh]
        solver = "random-fill"
    else:
        idx, solver = knapsack([value[lh] for lh in pool], [cost[lh] for lh in pool], budget)
        chosen = [pool[i] for i in idx]
        # The optimum leaves room only for zero-value heads; keep those that still fit.
        room = budget - sum(cost[lh] for lh in chosen)
        for lh in sorted(set(pool) - set(chosen), key=lambda lh: (-value[lh], cost[lh], lh)):
            if cost[lh] <= room:
                chosen.append(lh)
                room -= cost[lh]
    kept: list[list[int]] = [[] for _ in scores]
    for layer, h in chosen:
        kept[layer].append(h)
    return [sorted(row) for row in kept], solver


def select_heads(
    scores: Table,
    costs: Table,
    *,
    theta: float,
    budget: float | None,
    strategy: Strategy = "significance",
    seed: int = 0,
    magnitudes: Table | None = None,
) -> list[list[int]]:
    """Heads to keep per layer (original ids), from per-layer tables indexed by head id.

    ``scores[l][h]`` is None for heads already absent. ``budget`` bounds Σ costs of the kept
    heads (None: no bound). ``significance`` keeps S(h) > θ and solves the knapsack on S;
    ``magnitude`` solves it on ``magnitudes``; ``random`` fills the budget in a seeded random
    order. May return no heads at all when the budget is below every head's cost.
    """
    return _select(
        scores, costs, theta=theta, budget=budget, strategy=strategy, seed=seed,
        magnitudes=magnitudes,
    )[0]


# --------------------------------------------------------------------------- the pass


@dataclass
class SqueezeReport:
    """What squeezing kept and what it bought, for the artefact manifest (SPEC C8)."""

    strategy: str
    theta: float
    budget: float | None
    normalized_scores: bool
    seq_len: int
    bits: int | list[int]
    seed: int
    solver: str
    heads_kept: list[list[int]]
    heads_removed: list[list[int]]
    retained_significance: float
    cost_before_s: float
    cost_after_s: float
    cost_before: dict
    cost_after: dict

    def to_dict(self) -> dict:
        return asdict(self)


def squeeze(
    model: CanonicalTransformer,
    significance: SignificanceReport,
    *,
    theta: float = 0.0,
    budget: float | None = None,
    seq_len: int,
    bits: int | Sequence[int],
    strategy: Strategy = "significance",
    seed: int = 0,
    normalized: bool | None = None,
    round_bits: int = DEFAULT_ROUND_BITS,
    constants: CostConstants = DEFAULT_CONSTANTS,
) -> tuple[CanonicalTransformer, SqueezeReport]:
    """Prune ``model`` to the heads that maximise significance within ``budget`` seconds.

    ``budget`` (C_max) is for the whole model as priced by :mod:`cerberus.cost`, the same
    number the report's ``cost_after_s`` shows. ``normalized`` picks Michel's per-layer
    normalised scores or the raw ones; θ applies to the chosen kind. Default (None): the
    normalised ones for the gradient estimators, whose scale differs by layer, and the raw
    ones for ``ablation``, which are already loss changes in one unit across layers.
    Errors: stale scores (computed on other heads), a budget below the non-head cost plus
    the cheapest head, or a θ that leaves no head.
    """
    cfg = model.cfg
    if [list(h) for h in significance.heads_kept] != [list(h) for h in cfg.heads_kept]:
        raise CompileError(
            "significance scores were computed for other heads "
            f"({significance.heads_kept}) than the model has ({cfg.heads_kept})"
        )
    if normalized is None:
        normalized = significance.method != "ablation"
    scores = significance.normalized if normalized else significance.scores
    before = model_cost(cfg, seq_len, bits, round_bits=round_bits, constants=constants)
    per_head = before.per_head()
    costs: list[list[float | None]] = [[None] * cfg.n_head for _ in range(cfg.n_layer)]
    for (layer, h), sec in per_head.items():
        costs[layer][h] = sec
    head_budget = None
    if budget is not None:
        fixed = before.total - sum(per_head.values())
        cheapest = min(per_head.values(), default=math.inf)
        if budget - fixed < cheapest:
            raise CompileError(
                f"budget C_max={budget:.6g} s is too small to keep one head: the cheapest head "
                f"costs {cheapest:.6g} s on top of {fixed:.6g} s for the rest of the model"
            )
        # a relative 1e-12 of slack: a budget computed as "total − k heads" must admit
        # those heads despite float rounding in the sums
        head_budget = (budget - fixed) * (1 + 1e-12)
    mags = head_magnitudes(model) if strategy == "magnitude" else None
    kept, solver = _select(
        scores, costs, theta=theta, budget=head_budget, strategy=strategy, seed=seed,
        magnitudes=mags,
    )
    pruned = prune_heads(model, kept)
    after = model_cost(pruned.cfg, seq_len, bits, round_bits=round_bits, constants=constants)
    if budget is not None and after.total > budget * (1 + 1e-9):
        raise CompileError(  # cannot happen if the cost model is monotone; guard anyway
            f"internal: squeezed cost {after.total:.6g} s exceeds budget {budget:.6g} s"
        )
    total_s = sum(float(scores[layer][h]) for layer, h in _present(scores))
    kept_s = sum(float(scores[layer][h]) for layer, row in enumerate(kept) for h in row)
    removed = [
        sorted(set(have) - set(k)) for have, k in zip(cfg.heads_kept, kept, strict=True)
    ]
    report = SqueezeReport(
        strategy=strategy,
        theta=theta,
        budget=budget,
        normalized_scores=normalized,
        seq_len=seq_len,
        bits=bits if isinstance(bits, int) else list(bits),
        seed=seed,
        solver=solver,
        heads_kept=kept,
        heads_removed=removed,
        retained_significance=kept_s / total_s if total_s > 0 else 1.0,
        cost_before_s=before.total,
        cost_after_s=after.total,
        cost_before=before.to_dict(),
        cost_after=after.to_dict(),
    )
    return pruned, report
