"""The ``hybrid`` partition (SPEC C6): only the linear layers run under FHE.

In the ``full`` partition (``cerberus.lower``) the miner computes whole transformer blocks,
so LayerNorm and softmax become chains of ≤ 8-bit lookups and every rounding costs
fidelity. In the ``hybrid`` partition — concrete-ml's HybridFHEModel split — the miner
computes each linear of the kept heads and the MLP on an encrypted, quantized input with
its own clear integer weights; the client decrypts the accumulator, rescales it and
computes LayerNorm, attention, softmax, GELU and the residual adds in the clear, then
encrypts the next linear's input. The miner never sees plaintext activations; hybrid
trades round trips (one per linear) for fidelity and much smaller circuits.

The split of each linear is the split of the artefact (SPEC C8):

* the miner's half is an ``IntGraph`` ``input → linear``: the integer weights, one row
  ``[1, in]`` per program call, so a prefill sends its rows in one round trip and every
  generated token one row;
* the client's half is a ``LinearSpec``: the input's scale and width, the per-channel
  weight scales and the bias — what turns ``x`` into the integers it encrypts and the
  decrypted accumulator back into ``x @ W.T + b``. No weight matrix.

``q``, ``k`` and ``v`` read the same input, so they are one program (``blocks.i.qkv``, their
weights side by side): one round trip instead of three.

Two choices of the client's encoding, both invisible to the miner's integers:

* ``per_token``: each row's scale is its own max |x| (the client knows its data), not one
  scale calibrated for all; the circuit's input range is the same;
* ``smooth`` (SmoothQuant, Xiao et al. 2023): a few input channels of a LayerNorm's output
  are far larger than the rest; the client divides channel j by s_j and the miner's
  weights were multiplied by s_j before quantization, s_j = max|x_j|^α / max|W_·j|^(1−α).
  all-MiniLM-L6-v2 at 8 bits: min cosine 0.94 with one calibrated scale per tensor (issue
  #13's measurement) → the benchmark's figure with both (benchmarks/RESULTS.md#light_client).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from cerberus.errors import CompileError
from cerberus.frontends.canonical import CanonicalTransformer
from cerberus.ir import IntGraph, Node
from cerberus.passes.observers import collect_activation_scales, collect_channel_absmax
from cerberus.passes.quantize import qmax, qrange, quantize, quantize_weight_per_channel

# A miner: ``(program, xs) -> ys`` where ``xs[i]`` is one call's integer input (``[1, in]``
# for a hybrid linear) and ``ys[i]`` its integer output. The simulator evaluates the
# program's IntGraph; the runtime encrypts each ``xs[i]`` and sends them in one round trip.
Miner = Callable[[str, np.ndarray], np.ndarray]

QKV = ("q", "k", "v")


def program_groups(block: nn.Module) -> list[tuple[str, tuple[str, ...]]]:
    """A block's miner programs and the linears each computes: ``qkv`` (q, k, v side by
    side) and ``o`` while the block keeps a head, then ``fc1`` and ``fc2``. The one
    definition the lowering, the client's state and the client's model all read."""
    attn = [("qkv", QKV), ("o", ("o",))] if block.n_kept else []
    return attn + [("fc1", ("fc1",)), ("fc2", ("fc2",))]


@dataclass
class LinearSpec:
    """The client's side of one FHE-side linear: scales and bias, no weights."""

    name: str
    act_scale: float  # calibrated input scale (unused when per_token)
    act_bits: int
    weight_scale: np.ndarray  # float64 [out]: per output channel
    bias: np.ndarray | None  # float64 [out], added by the client in the clear
    smooth: np.ndarray | None = None  # float64 [in]: the client divides its input by it
    per_token: bool = False  # each row quantized with its own max |x|

    @property
    def out_features(self) -> int:
        return int(self.weight_scale.shape[0])

    def encode(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Float input ``[..., in]`` → (the integers the miner receives, encrypted; the
        scale of each row ``[..., 1]``, which the client keeps to decode)."""
        v = x.detach().double().numpy()
        if self.smooth is not None:
            v = v / self.smooth
        if self.per_token:
            scale = np.abs(v).max(axis=-1, keepdims=True) / qmax(self.act_bits)
            scale[scale == 0] = 1.0  # an all-zero row: any scale encodes it exactly
        else:
            scale = np.full((*v.shape[:-1], 1), self.act_scale)
        return quantize(v, scale, self.act_bits), scale

    def decode(self, acc: np.ndarray, scale: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        """The decrypted accumulator ``[..., out]`` → ``x @ W.T + b`` in float."""
        y = acc * (scale * self.weight_scale)
        if self.bias is not None:
            y = y + self.bias
        return torch.tensor(y, dtype=dtype)


def linear_program(name: str, w: np.ndarray, act_scale: float, bits: int) -> IntGraph:
    """The miner's half: ``x [1, in] @ w [in, out]`` with its declared integer ranges."""
    lo, hi = qrange(bits)
    bound = int(np.abs(w).sum(axis=0).max()) * max(-lo, hi)
    nodes = [
        Node("input", "input", [], lo, hi, act_scale),
        Node("linear", "linear", ["input"], -bound, bound,
             attrs={"weight": w, "mult": None, "bias": None}),
    ]
    meta = {"input_scale": act_scale, "input_bits": bits, "d_model": int(w.shape[0]),
            "seq_len": 1, "linear": name}
    return IntGraph(nodes, "input", "linear", meta)


def extreme_rows(graph: IntGraph) -> np.ndarray:
    """Inputs ``[2, 1, in]`` at the edges of the declared range that drive the widest output
    column to its largest and its smallest value: added to every program's inputset so the
    circuit's widths cover the extremes, not only the calibration text."""
    w = graph["linear"].attrs["weight"]
    lo, hi = graph["input"].lo, graph["input"].hi
    col = w[:, int(np.abs(w).sum(axis=0).argmax())]
    top = np.where(col > 0, hi, lo)
    return np.stack([top, np.where(col > 0, lo, hi)])[:, None, :].astype(np.int64)


def smoothing(x_absmax: np.ndarray, w: np.ndarray, alpha: float) -> np.ndarray:
    """SmoothQuant's per-input-channel factors s_j = max|x_j|^α / max|W_·j|^(1−α) for a
    ``[out, in]`` weight (1 where either side is 0: nothing to balance)."""
    w_max = np.abs(w).max(axis=0)
    s = np.ones_like(x_absmax)
    live = (x_absmax > 0) & (w_max > 0)
    s[live] = x_absmax[live] ** alpha / w_max[live] ** (1 - alpha)
    return s


def lower_hybrid(
    model: CanonicalTransformer, batches: list[torch.Tensor], bits: int, weight_bits: int,
    *, per_token: bool = False, smooth_alpha: float | None = None,
) -> tuple[dict[str, LinearSpec], dict[str, IntGraph]]:
    """Calibrate every block linear's input and build, per miner program (``blocks.i.qkv``,
    ``blocks.i.o``, ``…fc1``, ``…fc2``), the client's spec and the miner's integer graph."""
    if smooth_alpha is not None and not per_token:
        raise CompileError("smoothing needs per-token scales (the calibrated scales are of "
                           "the unsmoothed input)")
    scales = collect_activation_scales(model, batches, bits)
    absmax = collect_channel_absmax(model, batches) if smooth_alpha is not None else {}
    specs: dict[str, LinearSpec] = {}
    graphs: dict[str, IntGraph] = {}
    for i, block in enumerate(model.blocks):
        for prog, members in program_groups(block):
            name, first = f"blocks.{i}.{prog}", f"blocks.{i}.{members[0]}"
            act = {scales[f"blocks.{i}.{m}"] for m in members}
            if len(act) != 1:  # they observe one tensor: a difference is a bug upstream
                raise CompileError(f"{name}: its projections were calibrated to different "
                                   f"input scales {sorted(act)}")
            mods = [getattr(block, m) for m in members]
            w = torch.cat([m.weight.detach() for m in mods]).double().numpy()  # [out, in]
            bias = None
            if any(m.bias is not None for m in mods):
                bias = torch.cat([m.bias.detach() if m.bias is not None
                                  else torch.zeros(m.out_features) for m in mods]).double().numpy()
            smooth = None
            if smooth_alpha is not None:
                smooth = smoothing(absmax[first], w, smooth_alpha)
                w = w * smooth
            q = quantize_weight_per_channel(w, weight_bits)
            specs[name] = LinearSpec(name, float(act.pop()), bits,
                                     q.scale.astype(np.float64), bias, smooth, per_token)
            graphs[name] = linear_program(name, q.values.T.copy(), specs[name].act_scale, bits)
    return specs, graphs


class EncryptedLinear(nn.Module):
    """A linear the client does not hold: quantize, ask the miner, rescale.

    ``split`` cuts the output into the fused projections' parts (``q, k, v``)."""

    def __init__(self, spec: LinearSpec, miner: Miner, split: list[int] | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.miner = miner
        self.split = split

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        rows, scale = self.spec.encode(x)
        acc = self.miner(self.spec.name, rows.reshape(-1, 1, rows.shape[-1]))
        y = self.spec.decode(acc.reshape(*rows.shape[:-1], -1), scale, x.dtype)
        return y if self.split is None else tuple(y.split(self.split, dim=-1))
