"""Quantization-aware training (SPEC C4, paper §7.2.2).

The paper's quantizer is ``Q(x) = round((x − μ)/σ)·q_scale + q_zero`` and the training
forward is ``F_QAT(x) = Q⁻¹(Q(x))`` with a straight-through estimator. ``PaperQuantizer``
implements exactly that, with ``Q⁻¹(y) = ((y − q_zero)/q_scale)·σ + μ`` and the code
``round((x − μ)/σ)`` clipped to the n-bit range.

How the four parameters are chosen, and why that is our symmetric scheme:
* σ is the quantization *step* (the paper calls it the spread of the input distribution;
  a step is that spread divided by the number of codes): for a tensor calibrated to
  max-abs A at n bits, σ = A/(2^(n−1)−1) — the ``scale`` of ``cerberus.passes.quantize``.
* μ = 0: a non-zero centre would need zero-point corrections in every encrypted matmul.
* q_scale = 1 and q_zero = 0: the code is then the integer the FHE circuit holds.
With these, ``Q(x)`` is ``quantize(x, σ, n)`` and ``Q⁻¹(Q(x))`` is ``fake_quant(x, σ, n)``
(tested). ``PaperQuantizer.from_stats`` shows the general form (μ, σ from data) for
reference; it is not what the compiler trains with.

``qat_finetune`` fine-tunes a copy of the model with every FHE-side Linear's weight
(per output channel, max-abs recomputed each step) and input (per tensor, calibrated
scales) fake-quantised, and returns a plain float ``CanonicalTransformer`` whose weights,
quantized again by ``fake_quantize_model``/the integer lowering, give the trained model.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from cerberus.errors import CompileError
from cerberus.frontends.canonical import CanonicalTransformer
from cerberus.passes.fake_quant import FakeQuantModel, fake_quantize_model
from cerberus.passes.observers import as_batch_list, collect_activation_scales
from cerberus.passes.quantize import check_bits, check_canonical, qrange


@dataclass(frozen=True)
class PaperQuantizer:
    """The paper's Q and Q⁻¹ with explicit μ, σ, q_scale, q_zero and an n-bit code range."""

    mu: float
    sigma: float
    q_scale: float
    q_zero: float
    bits: int

    def __post_init__(self) -> None:
        check_bits(self.bits)
        if not self.sigma > 0 or not self.q_scale > 0:
            raise CompileError("QAT quantizer needs sigma > 0 and q_scale > 0")

    @classmethod
    def from_symmetric(cls, scale: float, bits: int) -> PaperQuantizer:
        """Our scheme: μ = 0, σ = step, q_scale = 1, q_zero = 0."""
        return cls(mu=0.0, sigma=float(scale), q_scale=1.0, q_zero=0.0, bits=bits)

    @classmethod
    def from_stats(cls, x: torch.Tensor, bits: int, n_std: float = 3.0) -> PaperQuantizer:
        """General form: μ = mean, σ = n_std·std / 2^(n−1) (± n_std std covers the codes)."""
        mu = float(x.detach().mean())
        std = float(x.detach().std(unbiased=False))
        step = n_std * std / 2 ** (bits - 1) if std > 0 else 1.0
        return cls(mu=mu, sigma=step, q_scale=1.0, q_zero=0.0, bits=bits)

    def code(self, x: torch.Tensor) -> torch.Tensor:
        """round((x − μ)/σ), half to even, clipped to the n-bit signed range."""
        lo, hi = qrange(self.bits)
        return torch.clamp(torch.round((x - self.mu) / self.sigma), lo, hi)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Q(x) = code(x)·q_scale + q_zero."""
        return self.code(x) * self.q_scale + self.q_zero

    def dequantize(self, y: torch.Tensor) -> torch.Tensor:
        """Q⁻¹(y) = ((y − q_zero)/q_scale)·σ + μ."""
        return (y - self.q_zero) / self.q_scale * self.sigma + self.mu

    def fake(self, x: torch.Tensor) -> torch.Tensor:
        """F_QAT(x) = Q⁻¹(Q(x)) forward, identity gradient (straight-through estimator)."""
        return x + (self.dequantize(self.quantize(x)) - x).detach()


@dataclass
class QATReport:
    """What QAT did; losses are the fake-quant objective averaged over all batches."""

    bits: int
    steps: int
    lr: float
    seed: int
    objective: str  # "lm" (next-token cross-entropy) or "distortion" (MSE vs float model)
    loss_float: float  # the float model on the same objective (a floor, for reference)
    loss_before: float  # fake-quant model before fine-tuning
    loss_after: float  # fake-quant model after fine-tuning
    act_scales: dict[str, float] = field(default_factory=dict)
    history: list[float] = field(default_factory=list)  # training loss per step

    def to_dict(self) -> dict:
        """JSON-friendly form for the artefact manifest."""
        return dict(self.__dict__)


def _objective(
    model: nn.Module, batch: torch.Tensor, lm: bool, target: torch.Tensor | None
) -> torch.Tensor:
    out = model(batch)
    if lm:
        return F.cross_entropy(out[:, :-1].reshape(-1, out.shape[-1]), batch[:, 1:].reshape(-1))
    return F.mse_loss(out, target)


def _mean_loss(
    model: nn.Module, batches: list[torch.Tensor], lm: bool, targets: list[torch.Tensor | None]
) -> float:
    model.eval()
    with torch.no_grad():
        vals = [float(_objective(model, b, lm, t)) for b, t in zip(batches, targets, strict=True)]
    return sum(vals) / len(vals)


def qat_finetune(
    model: CanonicalTransformer,
    batches: torch.Tensor | Iterable[torch.Tensor],
    *,
    bits: int,
    steps: int = 100,
    lr: float = 1e-4,
    seed: int = 0,
    act_scales: dict[str, float] | None = None,
    act_method: str = "percentile",
) -> tuple[CanonicalTransformer, QATReport]:
    """Fine-tune a copy of ``model`` through fake-quant weights and activations (STE).

    The objective is the LM loss when the model has an LM head, else the MSE of the
    fake-quant outputs against the (fixed) float model's outputs. Adam, one batch per step,
    cycling through ``batches``. Head gates ξ stay frozen. Deterministic for a given seed:
    the seed is set and torch runs single-threaded inside (both restored afterwards).
    ``act_scales`` default to ones calibrated on ``batches`` with ``act_method``; they stay
    fixed during training and are returned in the report. ``model`` is not modified.
    """
    check_canonical(model)
    if isinstance(model, FakeQuantModel):
        raise CompileError("QAT takes the float model; it builds its own fake-quant copy")
    bits = check_bits(bits)
    if steps < 0:
        raise CompileError(f"QAT steps must be >= 0, got {steps}")
    if not lr > 0:
        raise CompileError(f"QAT learning rate must be > 0, got {lr}")
    data = as_batch_list(batches)
    lm = model.lm_head is not None
    if act_scales is None:
        act_scales = collect_activation_scales(model, data, bits, act_method)
    targets: list[torch.Tensor | None] = [None] * len(data)
    prev_threads = torch.get_num_threads()
    rng_state = torch.get_rng_state()
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    try:
        float_model = copy.deepcopy(model).eval()
        if not lm:
            with torch.no_grad():
                targets = [float_model(b) for b in data]
        loss_float = _mean_loss(float_model, data, lm, targets)
        fq = fake_quantize_model(model, bits, act_scales, dynamic_weight_scales=True)
        for blk in fq.blocks:
            blk.gates.requires_grad_(False)
        loss_before = _mean_loss(fq, data, lm, targets)
        params = [p for p in fq.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=lr)
        history: list[float] = []
        fq.train()
        order = itertools.cycle(range(len(data)))
        for _ in range(steps):
            i = next(order)
            opt.zero_grad(set_to_none=True)
            loss = _objective(fq, data[i], lm, targets[i])
            loss.backward()
            opt.step()
            history.append(float(loss.detach()))
        loss_after = _mean_loss(fq, data, lm, targets)
        out = copy.deepcopy(model)
        out.load_state_dict(fq.state_dict())
        out.eval()
    finally:
        torch.set_num_threads(prev_threads)
        torch.set_rng_state(rng_state)
    report = QATReport(
        bits=bits, steps=steps, lr=lr, seed=seed, objective="lm" if lm else "distortion",
        loss_float=loss_float, loss_before=loss_before, loss_after=loss_after,
        act_scales=dict(act_scales), history=history,
    )
    return out, report
