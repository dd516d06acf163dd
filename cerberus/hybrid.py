"""The ``hybrid`` partition (SPEC C6): only the linear layers run under FHE.

In the ``full`` partition (``cerberus.lower``) the miner computes whole transformer blocks,
so LayerNorm and softmax become chains of ≤ 8-bit lookups and every rounding costs
fidelity. In the ``hybrid`` partition — concrete-ml's HybridFHEModel split — the miner
computes each linear of the kept heads and the MLP on an encrypted, quantized input with
clear integer weights; the client decrypts the accumulator, rescales it and computes
LayerNorm, softmax, GELU and the residual adds in the clear, then encrypts the next
linear's input. The miner never sees plaintext activations in either partition; hybrid
trades round trips (one per linear) for fidelity and much smaller circuits.

Each linear is its own ``IntGraph`` (``input → linear``), so the simulator, the ONNX export
and the FHE lowering are the same as for the full partition.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cerberus.frontends.canonical import CanonicalTransformer
from cerberus.ir import IntGraph, Node, evaluate
from cerberus.passes.observers import collect_activation_scales
from cerberus.passes.quantize import qrange, quantize, quantize_linears

Miner = Callable[[str, np.ndarray], np.ndarray]


@dataclass
class HybridLinear:
    """One FHE-side linear: its integer graph and the client's scales around it."""

    name: str
    graph: IntGraph
    act_scale: float
    act_bits: int
    weight_scale: np.ndarray  # [out]
    bias: np.ndarray | None  # [out], added by the client in the clear

    def save(self, folder: Path) -> None:
        self.graph.save(folder)
        np.savez(folder / "client.npz", weight_scale=self.weight_scale,
                 bias=self.bias if self.bias is not None else np.zeros(0))

    @classmethod
    def load(cls, name: str, folder: Path) -> HybridLinear:
        graph = IntGraph.load(folder)
        with np.load(folder / "client.npz") as z:
            bias = z["bias"] if z["bias"].size else None
            return cls(name, graph, float(graph.meta["input_scale"]),
                       int(graph.meta["input_bits"]), z["weight_scale"], bias)


def lower_hybrid(
    model: CanonicalTransformer, batches: list[torch.Tensor], bits: int, weight_bits: int
) -> dict[str, HybridLinear]:
    """Calibrate every block linear's input (percentile) and build its integer graph."""
    scales = collect_activation_scales(model, batches, bits)
    out = {}
    lo, hi = qrange(bits)
    for name, q in quantize_linears(model, weight_bits, scales, act_bits=bits).items():
        w = q.weight.values.T.copy()  # [in, out]: x @ w
        bound = int(np.abs(w).sum(axis=0).max()) * max(-lo, hi)
        nodes = [
            Node("input", "input", [], lo, hi, q.act_scale),
            Node("linear", "linear", ["input"], -bound, bound,
                 attrs={"weight": w, "mult": None, "bias": None}),
        ]
        meta = {"input_scale": q.act_scale, "input_bits": bits, "d_model": w.shape[0],
                "seq_len": 1, "linear": name}
        out[name] = HybridLinear(name, IntGraph(nodes, "input", "linear", meta), q.act_scale,
                                 bits, q.weight.scale.astype(np.float64), q.bias)
    return out


class _EncryptedLinear(nn.Module):
    """Client (quantize) → miner (integer graph, simulated) → client (rescale, bias)."""

    def __init__(self, part: HybridLinear, record: list[np.ndarray] | None = None,
                 miner: Miner | None = None) -> None:
        super().__init__()
        self.part = part
        self.record = record
        self.miner = miner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.part
        x_int = quantize(x.detach().double(), p.act_scale, p.act_bits)
        if self.record is not None:  # what the miner would receive (encrypted), per sequence
            self.record.extend(x_int.reshape(-1, *x_int.shape[-2:]))
        if self.miner is None:
            acc = evaluate(p.graph, x_int)["output"]
        else:  # one call per sequence: the circuit is compiled for one [T, in] input
            flat = x_int.reshape(-1, *x_int.shape[-2:])
            acc = np.stack([self.miner(p.name, s) for s in flat]).reshape(
                *x_int.shape[:-1], -1)
        y = acc * (p.act_scale * p.weight_scale)
        if p.bias is not None:
            y = y + p.bias
        return torch.tensor(y, dtype=x.dtype)


def hybrid_model(model: CanonicalTransformer, parts: dict[str, HybridLinear],
                 preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 record: dict[str, list[np.ndarray]] | None = None,
                 miner: Miner | None = None) -> nn.Module:
    """A copy of ``model`` whose block linears run through their integer graphs.

    ``preprocess`` (the client's adaptive input quantization, if any) is applied to the
    embedding output before the first block. With ``record``, every linear appends the
    integer inputs it receives (the FHE compiler's input set). ``miner`` computes a linear
    ``(name, x_int [T, in]) -> acc``; by default the simulator does, ``cerberus.fhe`` runs
    it under encryption.
    """
    out = copy.deepcopy(model).eval()
    for name, part in parts.items():
        _, i, sub = name.split(".")
        rec = None if record is None else record.setdefault(name, [])
        setattr(out.blocks[int(i)], sub, _EncryptedLinear(part, rec, miner))
    if preprocess is not None:
        embed = out.embed
        out.embed = lambda ids: preprocess(embed(ids))  # type: ignore[method-assign]
    return out
