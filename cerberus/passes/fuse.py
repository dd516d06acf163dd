"""Fusion (SPEC C5, paper §4.2 "11 steps → 5"): fewer, narrower FHE operations.

Two levels, each a pass (``cerberus.passes.Pass``: graph → (graph, ``FuseReport``)):

- ``fold_affine`` on the canonical model (exact in float): LayerNorm's γ and β move into
  the linear layers that read the normalised value (pre-LN blocks: q/k/v, fc1, LM head),
  and the attention scale 1/√d_head moves into the query projection. Each fold removes
  elementwise operations — a clear multiply, a clear add and a requantizing lookup per
  LayerNorm, one lookup per attention score — from the circuit.
- ``compose_luts`` on the integer graph (exact in integers): a lookup that feeds only
  another lookup merges with it (dequant → GELU → requant, requant → scale → exp, …),
  because ``T2[round(T1[i])]`` is itself a table on the first lookup's index.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch

from cerberus.frontends.canonical import CanonicalTransformer
from cerberus.ir import IntGraph, round_lsbs
from cerberus.ops import op_def


@dataclass
class FuseReport:
    """What the fusion passes changed; ``to_dict`` goes into the artefact manifest.

    ``fold_affine`` fills ``folded``; ``compose_luts`` fills ``composed`` and the
    ``graph_stats`` of its graph ``before`` and ``after``. The manifest's record joins the
    two and takes ``before`` from the naive lowering, which neither pass sees.
    """

    folded: list[str] = field(default_factory=list)
    composed: list[list[str]] = field(default_factory=list)
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"folded": self.folded, "composed": self.composed, "before": self.before,
                "after": self.after}


def _fold_ln_into(ln: torch.nn.LayerNorm, linears: list[torch.nn.Linear]) -> None:
    """W·(γ⊙n + β) + b = (W·diag γ)·n + (W·β + b); then LN keeps only the normalisation."""
    gamma, beta = ln.weight.data.clone(), ln.bias.data.clone()
    for lin in linears:
        if lin.bias is None:
            lin.bias = torch.nn.Parameter(torch.zeros(lin.out_features))
        lin.bias.data += lin.weight.data @ beta
        lin.weight.data *= gamma
    ln.weight.data.fill_(1.0)
    ln.bias.data.zero_()


def fold_affine(model: CanonicalTransformer) -> tuple[CanonicalTransformer, FuseReport]:
    """Fold LayerNorm affines and the attention scale into linears (a new model)."""
    out = copy.deepcopy(model)  # deepcopy keeps the config shared by the model and its blocks
    report = FuseReport()
    with torch.no_grad():
        if out.cfg.pre_ln:
            for i, blk in enumerate(out.blocks):
                if blk.n_kept:
                    _fold_ln_into(blk.ln1, [blk.q, blk.k, blk.v])
                    report.folded.append(f"blocks.{i}.ln1 → q, k, v")
                _fold_ln_into(blk.ln2, [blk.fc1])
                report.folded.append(f"blocks.{i}.ln2 → fc1")
            if out.lm_head is not None and out.ln_f is not None:
                _fold_ln_into(out.ln_f, [out.lm_head])
                out.cfg.lm_head_bias = True
                report.folded.append("ln_f → lm_head")
        if not out.cfg.attn_scale_folded:
            scale = 1.0 / math.sqrt(out.cfg.head_dim)
            for i, blk in enumerate(out.blocks):
                blk.q.weight.data *= scale
                blk.q.bias.data *= scale
                report.folded.append(f"blocks.{i}: 1/sqrt(head_dim) → q")
            out.cfg.attn_scale_folded = True
    return out.eval(), report


def compose_luts(graph: IntGraph) -> tuple[IntGraph, FuseReport]:
    """Merge every lookup whose only reader is another lookup into that reader.

    The report lists the merged chains (first lookup first) and ``graph_stats`` of the
    graph before and after.
    """
    nodes = {n.name: copy.copy(n) for n in graph.nodes}
    order = [n.name for n in graph.nodes]
    readers: dict[str, list[str]] = {name: [] for name in order}
    for n in graph.nodes:
        for i in n.inputs:
            readers[i].append(n.name)
    merged: list[list[str]] = []
    removed: set[str] = set()
    for name in order:
        second = nodes[name]
        if not op_def(second.op, name).lookup:
            continue
        first = nodes[second.inputs[0]]
        if (not op_def(first.op, first.name).lookup or readers[first.name] != [name]
                or first.name == graph.output):
            continue
        a1, a2 = first.attrs, second.attrs
        index = round_lsbs(a1["table"], int(a2["lsbs"])) - int(a2["offset"])
        second.attrs = {"table": a2["table"][index], "lsbs": a1["lsbs"], "offset": a1["offset"]}
        second.inputs = list(first.inputs)
        removed.add(first.name)
        chain = next((c for c in merged if c[-1] == first.name), None)
        if chain is not None:
            chain.append(name)
        else:
            merged.append([first.name, name])
    kept = [nodes[n] for n in order if n not in removed]
    fused = IntGraph(kept, graph.input, graph.output, dict(graph.meta))
    return fused, FuseReport(composed=merged, before=graph_stats(graph), after=graph_stats(fused))


def graph_stats(graph: IntGraph) -> dict:
    """FHE-relevant counts: ops by kind, bootstraps for one sequence, lookup widths."""
    widths = graph.lookup_widths()
    hist: dict[int, int] = {}
    for w in widths.values():
        hist[w] = hist.get(w, 0) + 1
    return {
        "ops": graph.op_counts(),
        "fhe_ops": sum(1 for n in graph.nodes if op_def(n.op, n.name).bootstraps),
        "pbs": graph.pbs_count(),
        "lookups": len(widths),
        "max_lookup_bits": max(widths.values(), default=0),
        "lookup_width_histogram": {str(k): v for k, v in sorted(hist.items())},
        "max_value_bits": max(n.bits for n in graph.nodes),
    }


__all__ = ["FuseReport", "compose_luts", "fold_affine", "graph_stats"]
