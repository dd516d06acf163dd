"""Integer quantizers and the quantization of the FHE-side linears (SPEC C4).

Why symmetric (zero-point 0) integer quantization: a TFHE circuit multiplies encrypted
integers by clear integer weights. With a zero point, every matmul needs correction terms
(Σx·z_w, Σw·z_x) that cost extra encrypted additions and widen accumulators; with symmetric
quantization an n-bit activation times an n-bit weight is just ``x_int @ w_int`` and the
scale ``s_x·s_w`` is folded into the next lookup.

Rounding rule (one rule everywhere, so the float simulation and the integer graph agree
bit-for-bit): **round half to even** (banker's rounding), i.e. ``torch.round`` /
``numpy.rint``, then clip to the signed range ``[-2^(b-1), 2^(b-1)-1]``. Scales are chosen
from ``hi = qmax(b) = 2^(b-1)-1`` so the most negative code is only reached by clipping.

What lives here (the rest of C4 has one module per idea: ``observers`` calibrates
activation scales, ``fake_quant`` simulates the integer graph in float, ``adaptive`` is the
paper's §5 client-side quantizer, ``qat`` trains through the simulation):

* ``qmax``/``qrange``/``check_bits``/``quantize``/``dequantize``: the integer primitives.
  ``qmax`` is the one place that knows the largest code of a width; the integer lowering
  (``cerberus.lower``) uses it too, for its wider accumulator and lookup widths.
* ``quantize_weight_per_channel``/``quantize_weight_per_tensor``: symmetric weights
  (max-abs, or an MSE-optimal clipping search over a few fixed ratios).
* ``quantize_linears``: integer weights and scales of every FHE-side linear, the
  quantization the hybrid lowering (``cerberus.hybrid``) builds its graphs from. It maps a
  model to integer parameters, not a graph to a graph, so it is a primitive of that
  lowering rather than a pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from cerberus.errors import CompileError
from cerberus.frontends.canonical import CanonicalTransformer

MIN_BITS = 2
MAX_BITS = 8
#: Fixed clipping ratios tried by the MSE searches (weights here, activations in
#: ``observers``); fixed so the searches are deterministic.
CLIP_RATIOS: tuple[float, ...] = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.6, 0.5)


# ---------------------------------------------------------------------------------------
# integer primitives
# ---------------------------------------------------------------------------------------


def is_int(x: object) -> bool:
    """A real integer (Python or NumPy), not a bool: ``True`` is an ``int`` to Python but
    never a meaningful bit-width or level count."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def check_bits(bits: int) -> int:
    """Reject bit-widths the FHE lowering cannot use (lookups are at most 8 bits wide)."""
    if not is_int(bits):
        raise CompileError(f"bits must be in {MIN_BITS}..{MAX_BITS}, got {bits!r}")
    if not MIN_BITS <= int(bits) <= MAX_BITS:
        raise CompileError(f"bits must be in {MIN_BITS}..{MAX_BITS}, got {bits}")
    return int(bits)


def qmax(bits: int, signed: bool = True) -> int:
    """Largest code of an n-bit integer: ``2^(n-1)-1`` signed, ``2^n-1`` unsigned.

    Unchecked on purpose: besides the ≤ 8-bit quantized values it sizes the lowering's
    wider accumulators and lookup domains. Symmetric scales map max-abs onto it.
    """
    return 2 ** (bits - 1) - 1 if signed else 2**bits - 1


def qrange(bits: int, signed: bool = True) -> tuple[int, int]:
    """Integer range of an n-bit code (n checked): ``[-2^(n-1), 2^(n-1)-1]`` or ``[0, 2^n-1]``."""
    bits = check_bits(bits)
    return (-qmax(bits) - 1, qmax(bits)) if signed else (0, qmax(bits, signed=False))


def as_numpy(x: torch.Tensor | np.ndarray | float | Sequence[float]) -> np.ndarray:
    """float64 NumPy view of a tensor, array or number: every quantizer computes in it."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().to(torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def quantize(
    x: torch.Tensor | np.ndarray, scale: float | np.ndarray, bits: int
) -> np.ndarray:
    """``clip(round_half_even(x / scale), lo, hi)`` as int64.

    ``scale`` is a scalar (per tensor) or an array broadcastable against ``x`` (per
    channel, e.g. ``scale[:, None]`` for ``[out, in]`` weights).
    """
    lo, hi = qrange(bits)
    s = np.asarray(scale, dtype=np.float64)
    if np.any(s <= 0) or not np.all(np.isfinite(s)):
        raise CompileError("quantization scale must be positive and finite")
    return np.clip(np.rint(as_numpy(x) / s), lo, hi).astype(np.int64)


def dequantize(q: np.ndarray, scale: float | np.ndarray) -> np.ndarray:
    """``q · scale`` in float64 (the value the integer code stands for)."""
    return np.asarray(q, dtype=np.float64) * np.asarray(scale, dtype=np.float64)


@dataclass(frozen=True)
class QuantizedTensor:
    """Integer codes plus the scale(s) that turn them back into reals (zero point 0)."""

    values: np.ndarray  # int64, same shape as the float tensor
    scale: np.ndarray  # float64, [out] for per-channel weights
    bits: int

    def dequantize(self) -> np.ndarray:
        """Reconstruct the float tensor (per-channel scales broadcast over rows)."""
        s = self.scale
        if s.ndim:
            s = s.reshape(-1, *([1] * (self.values.ndim - 1)))
        return dequantize(self.values, s)


def _row_scales_maxabs(w: np.ndarray, bits: int) -> np.ndarray:
    amax = np.abs(w).max(axis=1)
    scale = amax / qmax(bits)
    # an all-zero row (or one so tiny that amax/qmax underflows to 0): any scale is exact
    # to within the row's magnitude; 1 avoids dividing by 0
    scale[scale <= 0] = 1.0
    return scale


def quantize_weight_per_channel(
    w: torch.Tensor | np.ndarray, bits: int, *, method: str = "maxabs"
) -> QuantizedTensor:
    """Symmetric per-output-channel quantization of a ``[out, in]`` weight.

    Why per channel: rows of a projection can differ in norm by orders of magnitude; one
    scale per tensor would spend all codes on the largest row. ``method="mse"`` tries the
    fixed ``CLIP_RATIOS`` of each row's max-abs and keeps, per row, the ratio with the least
    squared reconstruction error (ties → the larger ratio, so the search is deterministic).
    """
    bits = check_bits(bits)
    if method not in ("maxabs", "mse"):
        raise CompileError(f"unknown weight quantization method {method!r} (maxabs|mse)")
    wn = as_numpy(w)
    if wn.ndim != 2:
        raise CompileError(f"per-channel weight quantization needs a 2-D [out, in] weight, "
                           f"got shape {tuple(wn.shape)}")
    base = _row_scales_maxabs(wn, bits)
    if method == "maxabs":
        return QuantizedTensor(quantize(wn, base[:, None], bits), base, bits)
    best_scale = base.copy()
    best_err = np.full(wn.shape[0], np.inf)
    zero_rows = np.abs(wn).max(axis=1) == 0
    for ratio in CLIP_RATIOS:
        s = np.where(zero_rows, 1.0, base * ratio)
        err = ((dequantize(quantize(wn, s[:, None], bits), s[:, None]) - wn) ** 2).sum(axis=1)
        better = np.isinf(best_err) | (err < best_err * (1 - 1e-12))
        best_scale = np.where(better, s, best_scale)
        best_err = np.where(better, err, best_err)
    return QuantizedTensor(quantize(wn, best_scale[:, None], bits), best_scale, bits)


def quantize_weight_per_tensor(w: torch.Tensor | np.ndarray, bits: int) -> QuantizedTensor:
    """One max-abs scale for the whole tensor (the baseline per-channel is compared with)."""
    wn = as_numpy(w)
    amax = float(np.abs(wn).max()) if wn.size else 0.0
    scale = (amax / qmax(bits)) or 1.0  # 0 for an all-zero or underflowing tensor
    return QuantizedTensor(quantize(wn, scale, bits), np.asarray(scale, dtype=np.float64), bits)


# ---------------------------------------------------------------------------------------
# the FHE-side linears
# ---------------------------------------------------------------------------------------


def check_canonical(model: nn.Module) -> None:
    """Quantization is defined on the canonical structure (named blocks and linears)."""
    if not isinstance(model, CanonicalTransformer):
        raise CompileError(
            f"quantization needs a CanonicalTransformer, got {type(model).__name__}")


@dataclass(frozen=True)
class LinearQuant:
    """Integer parameters of one FHE-side Linear, exactly as ``FakeQuantLinear`` simulates.

    The integer graph computes ``acc = x_int @ weight.values.T`` (exact integers) and the
    real output ``acc · act_scale · weight.scale[None, :] + bias``; ``act_scale`` is None when
    the input was not calibrated (then the input is not quantized in the simulation either).
    """

    weight: QuantizedTensor
    act_scale: float | None
    act_bits: int
    bias: np.ndarray | None  # float64 [out]


def quantize_linears(
    model: CanonicalTransformer,
    bits: int,
    act_scales: dict[str, float] | None = None,
    *,
    act_bits: int | None = None,
    weight_method: str = "maxabs",
) -> dict[str, LinearQuant]:
    """Integer weights and scales of every Linear in ``blocks``, keyed ``"blocks.0.q"``.

    The same choices as ``fake_quantize_model`` with the same arguments, so the integer
    lowering and the float simulation agree. Pure: reads ``model``, returns NumPy.
    """
    check_canonical(model)
    bits = check_bits(bits)
    act_bits = check_bits(act_bits if act_bits is not None else bits)
    act_scales = act_scales or {}
    out: dict[str, LinearQuant] = {}
    for i, blk in enumerate(model.blocks):
        for sub, mod in blk.named_children():
            if not isinstance(mod, nn.Linear):
                continue
            name = f"blocks.{i}.{sub}"
            bias = None if mod.bias is None else as_numpy(mod.bias)
            out[name] = LinearQuant(
                weight=quantize_weight_per_channel(mod.weight, bits, method=weight_method),
                act_scale=act_scales.get(name), act_bits=act_bits, bias=bias,
            )
    return out
