"""Head significance S(h) (SPEC C2; Michel, Levy & Neubig 2019, "Are Sixteen Heads Really
Better than One?").

Every kept head h has a gate ξ_h (``Block.gates``) multiplying its context vectors; at
ξ = 1 the model is unchanged. The first-order estimate of the loss change when a head is
masked (ξ_h: 1 → 0) is dL/dξ_h, so

* ``gradient``: S(h) = E_x |dL(x)/dξ_h|            (Michel et al., eq. 3)
* ``fisher``:   S(h) = E_x (dL(x)/dξ_h)²           (diagonal Fisher of the gates)

**Expectation is per example**: each calibration window is its own backward pass, so the
absolute value is taken before averaging (the average of a per-batch gradient would let
opposite-signed examples cancel, which Michel's estimator does not).

**Loss.** Where the model has an LM head, L is next-token cross-entropy (mean over the
window). Encoders and bare LMs have no task head, and the natural loss, the output
distortion D(ξ) = ||f(ξ) − f(1)||², has zero gradient at ξ = 1. We therefore use the
random-projection estimator L = ⟨r, f(ξ)⟩ with r ~ N(0, I) drawn per example from the
seeded generator. Then dL/dξ_h = ⟨r, ∂f/∂ξ_h⟩ and E_r[(dL/dξ_h)²] = ||∂f/∂ξ_h||², which is
exactly the second-order distortion when head h is masked (½ of D's Hessian diagonal; the
Gaussian-output Fisher). The ``gradient`` method then estimates E|·| = √(2/π)·||∂f/∂ξ_h||,
the same ranking. Scores are divided by the output size so they do not grow with T·d.

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

Method = Literal["gradient", "fisher"]


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
    if method not in ("gradient", "fisher"):
        raise CompileError(f"unknown significance method {method!r} (gradient or fisher)")
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

    scores: list[list[float | None]] = [[None] * cfg.n_head for _ in range(cfg.n_layer)]
    for layer, acc in zip(gated, sums, strict=True):
        for pos, head in enumerate(cfg.heads_kept[layer]):
            scores[layer][head] = float(acc[pos] / n_examples)
    return SignificanceReport(
        method=method,
        loss="lm" if use_lm else "distortion",
        scores=scores,
        normalized=_normalize(scores),
        heads_kept=[list(h) for h in cfg.heads_kept],
        n_batches=len(batches),
        n_examples=n_examples,
        seed=seed,
    )
