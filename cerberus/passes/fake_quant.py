"""The fake-quantised model: the integer graph simulated in float (SPEC C4).

``fake_quant`` is ``dequantize(quantize(x))`` in torch with a straight-through gradient;
``fake_quantize_model`` copies a ``CanonicalTransformer`` and routes every FHE-side linear's
weight and input through it, with the same scales the integer lowering uses. Why a float
simulation beside the integer graph: it measures what quantization alone costs (the
ablations), QAT trains through it (``qat``), and the integer graph must agree with it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from cerberus.errors import CompileError
from cerberus.frontends.canonical import Block, CanonicalTransformer
from cerberus.passes.adaptive import AdaptiveQuantizer
from cerberus.passes.quantize import (
    check_bits,
    check_canonical,
    qmax,
    qrange,
    quantize_weight_per_channel,
)


def fake_quant(x: torch.Tensor, scale: float | torch.Tensor, bits: int) -> torch.Tensor:
    """``dequantize(quantize(x))`` in torch, with a straight-through gradient.

    Forward: ``clip(round_half_even(x/s), lo, hi)·s``, the same numbers ``quantize`` gives.
    Backward: identity (``x + (q − x).detach()``), so QAT can train through the rounding;
    the gradient is passed even where the value is clipped (plain STE, as in the paper).
    """
    lo, hi = qrange(bits)
    s = torch.as_tensor(scale, dtype=x.dtype, device=x.device)
    q = torch.clamp(torch.round(x / s), lo, hi) * s
    return x + (q - x).detach()


def _per_channel_scale_torch(w: torch.Tensor, bits: int) -> torch.Tensor:
    amax = w.detach().abs().amax(dim=1)
    return torch.where(amax > 0, amax / qmax(bits), torch.ones_like(amax))


class FakeQuantLinear(nn.Linear):
    """An ``nn.Linear`` whose input and weight pass through ``fake_quant`` in forward.

    Same parameters and ``state_dict`` keys as the Linear it replaces (the weight scale is a
    non-persistent buffer), so a trained fake-quant model's weights load into the plain
    model. ``w_scale=None`` means "recompute max-abs per channel every call" (QAT, where the
    weights move); a tensor means the frozen calibrated scales. Biases stay float: the
    integer graph adds them at the accumulator scale s_x·s_w, where 32 bits make the error
    negligible.
    """

    w_bits: int
    act_bits: int
    act_scale: float | None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_scale is not None:
            x = fake_quant(x, self.act_scale, self.act_bits)
        s = self.w_scale if self.w_scale is not None else _per_channel_scale_torch(
            self.weight, self.w_bits)
        w = fake_quant(self.weight, s.to(self.weight.dtype)[:, None], self.w_bits)
        return nn.functional.linear(x, w, self.bias)


class FakeQuantBlock(Block):
    """A ``Block`` whose input (the encrypted residual stream) is fake-quantised first."""

    in_scale: float | None
    act_bits: int

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.in_scale is not None:
            x = fake_quant(x, self.in_scale, self.act_bits)
        return super().forward(x, mask)


class FakeQuantModel(CanonicalTransformer):
    """A ``CanonicalTransformer`` with optional adaptive quantization of the embedding output.

    Built only by ``fake_quantize_model``; still an instance of ``CanonicalTransformer`` so
    every pass (significance, squeezing, perplexity) works on it unchanged.
    """

    adaptive: AdaptiveQuantizer | None

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = super().embed(input_ids)
        return self.adaptive(x) if self.adaptive is not None else x


@dataclass
class FakeQuantSpec:
    """What ``fake_quantize_model`` did, in JSON-friendly form (for the manifest)."""

    bits: int
    act_bits: int
    weight_method: str
    act_scales: dict[str, float]
    adaptive: dict[str, float] | None = None
    quantized_linears: list[str] = field(default_factory=list)


def fake_quantize_model(
    model: CanonicalTransformer,
    bits: int,
    act_scales: dict[str, float] | None = None,
    *,
    act_bits: int | None = None,
    weight_method: str = "maxabs",
    dynamic_weight_scales: bool = False,
    quantize_block_inputs: bool = False,
    adaptive: bool = False,
    adaptive_kwargs: dict | None = None,
) -> FakeQuantModel:
    """A NEW model simulating the integer graph in float; ``model`` is left untouched.

    Scope is the FHE part (SPEC C6): every ``nn.Linear`` inside ``blocks`` gets per-channel
    ``bits``-bit weights and, where ``act_scales`` names it (``"blocks.0.q"``), a per-tensor
    ``act_bits``-bit input. Block inputs (``"blocks.0"``, the residual stream) are quantized
    only when ``quantize_block_inputs``: off by default because in TFHE the residual adds are
    lookup-free and can stay at accumulator width, and on tiny-gpt an 8-bit per-tensor
    residual alone costs ~2 points of top-1 agreement (small-norm tokens, re-amplified by
    LayerNorm). Embeddings, final norm and LM head run on the client in the
    clear and stay float. ``adaptive=True`` adds the paper's §5 quantizer on the embedding
    output (client-side preprocessing). The spec is stored as ``model.quant_spec``.
    """
    check_canonical(model)
    bits = check_bits(bits)
    act_bits = check_bits(act_bits if act_bits is not None else bits)
    act_scales = dict(act_scales or {})
    for name, s in act_scales.items():
        if not (s > 0 and np.isfinite(s)):
            raise CompileError(f"activation scale of {name!r} must be positive, got {s}")
    new = copy.deepcopy(model)
    new.__class__ = FakeQuantModel  # same layout; only embed() is overridden
    ak = dict(adaptive_kwargs or {})
    new.adaptive = AdaptiveQuantizer(**ak) if adaptive else None
    done: list[str] = []
    for i, blk in enumerate(new.blocks):
        blk.__class__ = FakeQuantBlock
        blk.act_bits = act_bits
        blk.in_scale = act_scales.get(f"blocks.{i}") if quantize_block_inputs else None
        for sub, mod in blk.named_children():
            if not isinstance(mod, nn.Linear):
                continue
            name = f"blocks.{i}.{sub}"
            mod.__class__ = FakeQuantLinear
            mod.w_bits, mod.act_bits = bits, act_bits
            mod.act_scale = act_scales.get(name)
            if dynamic_weight_scales:
                mod.register_buffer("w_scale", None, persistent=False)
            else:
                qt = quantize_weight_per_channel(mod.weight, bits, method=weight_method)
                mod.register_buffer(
                    "w_scale", torch.as_tensor(qt.scale, dtype=torch.float64), persistent=False)
            done.append(name)
    new.quant_spec = FakeQuantSpec(
        bits=bits, act_bits=act_bits, weight_method=weight_method, act_scales=act_scales,
        adaptive=({"levels": new.adaptive.levels, "threshold": new.adaptive.threshold,
                   "alpha": new.adaptive.alpha} if adaptive else None),
        quantized_linears=done,
    )
    return new
