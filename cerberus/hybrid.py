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
from cerberus.passes.observers import collect_activation_scales
from cerberus.passes.quantize import LinearQuant, qrange, quantize, quantize_linears

# A miner: ``(program, xs) -> ys`` where ``xs[i]`` is one call's integer input (``[1, in]``
# for a hybrid linear) and ``ys[i]`` its integer output. The simulator evaluates the
# program's IntGraph; the runtime encrypts each ``xs[i]`` and sends them in one round trip.
Miner = Callable[[str, np.ndarray], np.ndarray]

QKV = ("q", "k", "v")


@dataclass
class LinearSpec:
    """The client's side of one FHE-side linear: scales and bias, no weights."""

    name: str
    act_scale: float
    act_bits: int
    weight_scale: np.ndarray  # float64 [out]: per output channel
    bias: np.ndarray | None  # float64 [out], added by the client in the clear

    @property
    def out_features(self) -> int:
        return int(self.weight_scale.shape[0])

    def encode(self, x: torch.Tensor) -> np.ndarray:
        """Float input ``[..., in]`` → the integers the miner receives (encrypted)."""
        return quantize(x.detach().double(), self.act_scale, self.act_bits)

    def decode(self, acc: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        """The decrypted accumulator ``[..., out]`` → ``x @ W.T + b`` in float."""
        y = acc * (self.act_scale * self.weight_scale)
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


def _merge(parts: list[LinearQuant], name: str) -> tuple[np.ndarray, LinearSpec]:
    """Linears that read one input side by side: one weight matrix, one client spec."""
    scales = {p.act_scale for p in parts}
    if len(scales) != 1 or None in scales:
        raise CompileError(f"{name}: its projections were calibrated to different input "
                           f"scales {sorted(map(str, scales))}")
    w = np.concatenate([p.weight.values.T for p in parts], axis=1)  # [in, Σ out]
    biases = [p.bias if p.bias is not None else np.zeros(p.weight.values.shape[0])
              for p in parts]
    has_bias = any(p.bias is not None for p in parts)
    spec = LinearSpec(name, float(parts[0].act_scale), parts[0].act_bits,
                      np.concatenate([p.weight.scale for p in parts]).astype(np.float64),
                      np.concatenate(biases).astype(np.float64) if has_bias else None)
    return w.copy(), spec


def lower_hybrid(
    model: CanonicalTransformer, batches: list[torch.Tensor], bits: int, weight_bits: int
) -> tuple[dict[str, LinearSpec], dict[str, IntGraph]]:
    """Calibrate every block linear's input (percentile); return the client's specs and the
    miner's programs, by program name (``blocks.i.qkv``, ``blocks.i.o``, ``…fc1``, ``…fc2``)."""
    scales = collect_activation_scales(model, batches, bits)
    quant = quantize_linears(model, weight_bits, scales, act_bits=bits)
    specs: dict[str, LinearSpec] = {}
    graphs: dict[str, IntGraph] = {}
    for i, block in enumerate(model.blocks):
        groups = [("qkv", QKV), ("o", ("o",))] if block.n_kept else []
        for prog, members in groups + [("fc1", ("fc1",)), ("fc2", ("fc2",))]:
            name = f"blocks.{i}.{prog}"
            w, spec = _merge([quant[f"blocks.{i}.{m}"] for m in members], name)
            specs[name] = spec
            graphs[name] = linear_program(name, w, spec.act_scale, bits)
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
        rows = self.spec.encode(x)
        acc = self.miner(self.spec.name, rows.reshape(-1, 1, rows.shape[-1]))
        y = self.spec.decode(acc.reshape(*rows.shape[:-1], -1), x.dtype)
        return y if self.split is None else tuple(y.split(self.split, dim=-1))
