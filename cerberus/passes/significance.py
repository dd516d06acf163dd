"""Head significance S(h) (SPEC C2; Michel, Levy & Neubig 2019, "Are Sixteen Heads Really
Better than One?").

Every kept head h has a gate ξ_h (``Block.gates``) multiplying its context vectors; at
ξ = 1 the model is unchanged. The first-order estimate of the loss change when a head is
masked (ξ_h: 1 → 0) is dL/dξ_h, so

* ``gradient``: S(h) = E_x |dL(x)/dξ_h|            (Michel et al., eq. 3)
* ``fisher``:   S(h) = E_x (dL(x)/dξ_h)²           (diagonal Fisher of the gates)
* ``ablation``: S(h) = E_x [L(x; ξ_h = 0) − L(x; ξ = 1)]  (exact leave-one-out change)

Why ``ablation`` exists beside SPEC C2's two, and is the compiler's default: |·| discards
the sign. On the shipped tiny GPT-2 the absolute-value estimators rank first in layer 1 the
one head whose removal *lowers* the loss, and second one whose removal barely changes it
(the manifest's ``significance`` after ``cerberus compile models/tiny-gpt --significance
…``). At 4 of 8 heads they keep L0:1,2 L1:1,3 where ``ablation`` keeps L0:1,2,3 L1:0;
gradient and Fisher still beat random selection at an equal cost budget in all 8 settings
measured, but by 1.4–1.5 standard deviations of random's spread against ablation's 2.0–2.1
(benchmarks/RESULTS.md#squeeze_fidelity, section 2 and its verdicts). The signed
first-order estimate −E[dL/dξ_h] is negative for every head there (so no θ means anything).
Masking each head in turn and measuring the loss is exact, costs one extra forward pass per
head and batch (no backward), gives θ a unit (the loss), and θ = 0 drops heads whose removal
helps. For the distortion loss it is the exact distortion E||f(ξ_h = 0) − f(1)||² / numel.

Scores are reported both raw and normalised by their layer's L2 norm (Michel et al. §4.2
found the normalisation necessary to compare heads across layers for global pruning).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from cerberus.errors import CompileError
from cerberus.frontends.canonical import CanonicalTransformer

Method = Literal["gradient", "fisher", "ablation"]
METHODS = ("gradient", "fisher", "ablation")


@dataclass
class SignificanceReport:
    """Per-layer head scores, indexed by ORIGINAL head id (``None`` for heads already gone)."""

    method: str
    loss: str  # "lm" or "distortion"
    scores: list[list[float | None]]
    normalized: list[list[float | None]]
    heads_kept: list[list[int]]
    n_batches: int
    n_examples: int
    seed: int
    extra: dict = field(default_factory=dict)

    def kept_scores(self, layer: int, *, normalized: bool = True) -> dict[int, float]:
        """{original head id: score} for the heads present in ``layer``."""
        table = self.normalized if normalized else self.scores
        return {h: float(table[layer][h]) for h in self.heads_kept[layer]}

    def ranking(self, *, normalized: bool = True) -> list[tuple[int, int]]:
        """All present heads as (layer, head), most significant first (ties: lower id)."""
        items = [
            (s, layer, h)
            for layer in range(len(self.heads_kept))
            for h, s in self.kept_scores(layer, normalized=normalized).items()
        ]
        items.sort(key=lambda t: (-t[0], t[1], t[2]))
        return [(layer, h) for _, layer, h in items]

    def to_dict(self) -> dict:
        """JSON-ready form for the artefact manifest (SPEC C8)."""
        return asdict(self)


def _lm_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)
    )


def _normalize(scores: list[list[float | None]]) -> list[list[float | None]]:
    out: list[list[float | None]] = []
    for row in scores:
        norm = math.sqrt(sum(s * s for s in row if s is not None))
        out.append([None if s is None else (s / norm if norm > 0 else 0.0) for s in row])
    return out


def significance(
    model: CanonicalTransformer,
    batches: Sequence[torch.Tensor],
    *,
    method: Method = "gradient",
    seed: int = 0,
) -> tuple[CanonicalTransformer, SignificanceReport]:
    """The pass form of ``head_significance`` (``cerberus.passes.Pass``).

    Significance is an analysis: the model comes back unchanged (the same object) and the
    scores are the report, which the squeezing pass reads next.
    """
    return model, head_significance(model, batches, method=method, seed=seed)


def head_significance(
    model: CanonicalTransformer,
    batches: Sequence[torch.Tensor],
    *,
    method: Method = "gradient",
    seed: int = 0,
) -> SignificanceReport:
    """Score every kept head of ``model`` on ``batches`` (int64 ``[B, T]`` token windows).

    The model is not modified: its training flag and every parameter's ``requires_grad``
    are restored, and gradients are taken with ``torch.autograd.grad`` so no ``.grad`` is
    left behind. Deterministic for a given model, batches and ``seed`` (the seed only
    matters for the distortion loss's random projections).
    """
    if method not in METHODS:
        raise CompileError(f"unknown significance method {method!r} {METHODS}")
    if not batches:
        raise CompileError("significance needs at least one calibration batch")
    cfg = model.cfg
    for b in batches:
        if b.dim() != 2 or b.shape[1] > cfg.n_positions:
            raise CompileError(
                f"calibration batch of shape {tuple(b.shape)} does not fit the model "
                f"(need [B, T] with T ≤ {cfg.n_positions})"
            )
    use_lm = model.lm_head is not None
    gated = [i for i, blk in enumerate(model.blocks) if blk.n_kept > 0]
    gates = [model.blocks[i].gates for i in gated]

    if method == "ablation":
        return _ablation(model, batches, use_lm, gated, seed)
    was_training = model.training
    saved = {id(p): p.requires_grad for p in model.parameters()}
    sums = [torch.zeros(g.shape[0], dtype=torch.float64) for g in gates]
    n_examples = 0
    gen = torch.Generator().manual_seed(seed)
    try:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        for g in gates:
            g.requires_grad_(True)
        for batch in batches:
            for row in batch:
                ids = row.unsqueeze(0).long()
                out = model(ids)
                if use_lm:
                    loss = _lm_loss(out, ids)
                else:
                    r = torch.randn(out.shape, generator=gen, dtype=out.dtype)
                    loss = (r * out).sum() / math.sqrt(out.numel())
                if not gates:
                    n_examples += 1
                    continue
                grads = torch.autograd.grad(loss, gates)
                for acc, gr in zip(sums, grads, strict=True):
                    gr = gr.detach().double()
                    acc += gr.abs() if method == "gradient" else gr.square()
                n_examples += 1
    finally:
        for p in model.parameters():
            p.requires_grad_(saved[id(p)])
        model.train(was_training)

    return _report(model, method, use_lm, gated, sums, len(batches), n_examples, seed)


def _report(
    model: CanonicalTransformer,
    method: str,
    use_lm: bool,
    gated: list[int],
    sums: list[torch.Tensor],
    n_batches: int,
    n_examples: int,
    seed: int,
) -> SignificanceReport:
    cfg = model.cfg
    scores: list[list[float | None]] = [[None] * cfg.n_head for _ in range(cfg.n_layer)]
    for layer, acc in zip(gated, sums, strict=True):
        for pos, head in enumerate(cfg.heads_kept[layer]):
            scores[layer][head] = float(acc[pos] / max(1, n_examples))
    return SignificanceReport(
        method=method,
        loss="lm" if use_lm else "distortion",
        scores=scores,
        normalized=_normalize(scores),
        heads_kept=[list(h) for h in cfg.heads_kept],
        n_batches=n_batches,
        n_examples=n_examples,
        seed=seed,
    )


def _ablation(
    model: CanonicalTransformer,
    batches: Sequence[torch.Tensor],
    use_lm: bool,
    gated: list[int],
    seed: int,
) -> SignificanceReport:
    """Leave-one-out: the loss (or distortion) change when each head alone is masked.

    Gates are set to 0 one at a time and put back in ``finally``; no gradients are taken.
    The per-batch loss is a mean over the batch's tokens, weighted by the batch size.
    """
    sums = [torch.zeros(model.blocks[i].n_kept, dtype=torch.float64) for i in gated]
    n_examples = 0
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            for batch in batches:
                ids = batch.long()
                ref = model(ids)
                base = _lm_loss(ref, ids) if use_lm else None
                for acc, layer in zip(sums, gated, strict=True):
                    gates = model.blocks[layer].gates
                    for pos in range(gates.shape[0]):
                        old = gates[pos].item()
                        gates[pos] = 0.0
                        try:
                            out = model(ids)
                        finally:
                            gates[pos] = old
                        if use_lm:
                            delta = _lm_loss(out, ids) - base
                        else:
                            delta = (out - ref).double().square().mean()
                        acc[pos] += float(delta) * ids.shape[0]
                n_examples += ids.shape[0]
    finally:
        model.train(was_training)
    return _report(model, "ablation", use_lm, gated, sums, len(batches), n_examples, seed)
