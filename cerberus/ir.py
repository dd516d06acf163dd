"""The integer graph: what the FHE circuit computes, and its bit-exact clear evaluator.

Every value is an integer tensor; every op maps one-to-one onto a concrete-python op:

| op        | meaning                                       | FHE cost                 |
|-----------|-----------------------------------------------|--------------------------|
| input     | encrypted input from the client               | –                        |
| linear    | ``(x @ W) * mult + bias``, W/mult/bias clear  | leveled (no PBS)         |
| mul_const | ``x * C``, C clear                            | leveled                  |
| add_const | ``x + C``, C clear                            | leveled                  |
| add       | ``a + b`` (both encrypted, broadcasting)      | leveled                  |
| sub       | ``a - b`` (both encrypted, broadcasting)      | leveled                  |
| sum       | sum over the last axis (keepdims)             | leveled                  |
| slice     | columns ``start:stop`` of the last axis       | free                     |
| concat    | join along the last axis                      | free                     |
| transpose | swap the last two axes                        | free                     |
| lut       | ``table[round(x, lsbs) - offset]``            | 1 + lsbs PBS per element |
| mul       | ``a * b`` elementwise (both encrypted)        | 2 PBS per element        |
| matmul    | ``a @ b`` (both encrypted)                    | 2 PBS per scalar product |

Each op is defined once, in ``cerberus.ops.OPS`` (shape, NumPy meaning, PBS rule and its
lowerings); this table is that table's summary (tests/cerberus/test_ops.py keeps them equal).

A ``lut`` first rounds its input to a multiple of ``2**lsbs`` (``round_bit_pattern``,
ties up: ``(x + 2**(lsbs-1)) >> lsbs``) so that the table index never needs more than
the configured lookup width. Each node records the value range it was built for; the
evaluator checks it, because an FHE circuit whose values leave that range silently
computes garbage — the simulator must fail loudly instead.

The FHE-cost column is the rule of thumb; ``IntGraph.pbs_by_node`` gives the exact count
concrete-python runs (shared roundings, fused lookup chains and constant tables included).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from cerberus.ops import (
    NodeLike,
    PbsContext,
    RangeOverflow,
    lookup_index_bits,
    op_def,
    round_lsbs,
    width,
)

__all__ = ["IntGraph", "Node", "RangeOverflow", "apply_op", "evaluate", "round_lsbs", "width"]

T = TypeVar("T")


@dataclass
class Node:
    """One op. ``lo``/``hi`` is the integer range of its output; ``scale`` its real unit."""

    name: str
    op: str
    inputs: list[str]
    lo: int
    hi: int
    scale: float = 1.0
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def bits(self) -> int:
        return width(self.lo, self.hi)

    @property
    def lookup_bits(self) -> int:
        """Width of the table index (the PBS input width) for a lookup."""
        return lookup_index_bits(self)


@dataclass
class IntGraph:
    """Nodes in topological order, one input and one output."""

    nodes: list[Node]
    input: str
    output: str
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._index = {n.name: n for n in self.nodes}

    def __getitem__(self, name: str) -> Node:
        return self._index[name]

    def consumers(self, name: str) -> list[Node]:
        return [n for n in self.nodes if name in n.inputs]

    def operands(self, node: Node, values: Mapping[str, T], source: T) -> list[T]:
        """What ``node`` reads: its inputs' entries of ``values`` or, for the op that is the
        graph's input, ``source`` (the input array, its tracer, its shape, its ONNX name)."""
        if op_def(node.op, node.name).source:
            return [source]
        return [values[i] for i in node.inputs]

    # -- statistics -----------------------------------------------------------------
    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for n in self.nodes:
            counts[n.op] = counts.get(n.op, 0) + 1
        return counts

    def pbs_count(self) -> int:
        """Programmable bootstraps of one evaluation of one sequence, as concrete runs them.

        Equals concrete-python 2.11's ``circuit.statistics["programmable_bootstrap_count"]``
        for the circuit of ``cerberus.fhe.concrete_backend`` (tests/fhe/test_pbs_count.py);
        the rules are those of :meth:`pbs_by_node`.
        """
        return sum(self.pbs_by_node().values())

    def pbs_by_node(self) -> dict[str, int]:
        """PBS per node, attributed as concrete's per-tag statistics attribute them.

        Why not simply "1 per lookup element, 2 per product": concrete-python 2.11, measured
        op by op on small circuits (tests/fhe/test_pbs_count.py), differs in four ways:

        * an exact ``round_bit_pattern`` removing ``lsbs`` bits costs ``lsbs`` PBS per
          element (one per extracted bit) before the lookup's own PBS;
        * the same rounding of the same value is computed once (common-subexpression
          elimination): a second ``lut`` with the same input and ``lsbs`` pays only its
          table (e.g. LayerNorm's square and centre lookups);
        * a ``lut`` that feeds only a ``lut`` with ``lsbs == 0`` is fused into it: the
          two tables become one PBS (the first keeps its rounding);
        * a ``lut`` whose table holds a single value is a constant: concrete folds it and
          drops every node that only fed it (dead code costs nothing).

        ``mul`` costs 2 PBS per output element and ``matmul`` 2 per scalar product, whatever
        the operands' signs (the backend's unsigned shift adds only leveled terms), also
        for ``a * a``. Rounding PBS are attributed to the first lookup that needs them, a
        fused table to the last lookup of its chain, as concrete's tags do. Each op's rule
        is its ``pbs`` in ``cerberus.ops``; this method finds what is live and folded.
        """
        shapes = self.shapes()
        constant = {n.name for n in self.nodes if op_def(n.op, n.name).folds_to_constant(n)}
        live: set[str] = set()
        stack = [self.output]
        while stack:  # what the output needs, through no constant
            name = stack.pop()
            if name in live:
                continue
            live.add(name)
            if name not in constant:
                stack.extend(self[name].inputs)
        readers: dict[str, list[NodeLike]] = {n.name: [] for n in self.nodes}
        for n in self.nodes:
            if n.name in live and n.name not in constant:
                for i in n.inputs:
                    readers[i].append(n)
        ctx = PbsContext(shapes, readers, self.output)
        out: dict[str, int] = {}
        for n in self.nodes:
            rule = op_def(n.op, n.name).pbs
            if n.name in live and n.name not in constant and rule is not None:
                out[n.name] = rule(n, ctx)
        return out

    def shapes(self, batch: int = 1) -> dict[str, tuple[int, ...]]:
        """Every node's output shape for one input of ``[batch, seq_len, d_model]``."""
        out: dict[str, tuple[int, ...]] = {}
        source = (batch, int(self.meta["seq_len"]), int(self.meta["d_model"]))
        for n in self.nodes:
            out[n.name] = op_def(n.op, n.name).shape(n, self.operands(n, out, source))
        return out

    def lookup_widths(self) -> dict[str, int]:
        return {n.name: n.lookup_bits for n in self.nodes if op_def(n.op, n.name).lookup}

    # -- serialisation --------------------------------------------------------------
    def save(self, path: Path) -> None:
        """``graph.json`` (structure) + ``graph.npz`` (integer arrays) in ``path``."""
        path.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {}
        nodes = []
        for n in self.nodes:
            attrs = {}
            for k, v in n.attrs.items():
                if isinstance(v, np.ndarray):
                    key = f"{n.name}.{k}"
                    arrays[key] = v
                    attrs[k] = {"array": key}
                else:
                    attrs[k] = v
            nodes.append({"name": n.name, "op": n.op, "inputs": n.inputs, "lo": int(n.lo),
                          "hi": int(n.hi), "scale": float(n.scale), "attrs": attrs})
        doc = {"input": self.input, "output": self.output, "meta": self.meta, "nodes": nodes}
        (path / "graph.json").write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        np.savez(path / "graph.npz", **arrays)

    @classmethod
    def load(cls, path: Path) -> IntGraph:
        doc = json.loads((path / "graph.json").read_text())
        with np.load(path / "graph.npz") as arrays:
            nodes = []
            for d in doc["nodes"]:
                attrs = {
                    k: arrays[v["array"]] if isinstance(v, dict) and "array" in v else v
                    for k, v in d["attrs"].items()
                }
                nodes.append(Node(d["name"], d["op"], d["inputs"], d["lo"], d["hi"],
                                  d["scale"], attrs))
        return cls(nodes, doc["input"], doc["output"], doc["meta"])

    def digest(self) -> str:
        """Content hash of the graph (structure and every integer)."""
        h = hashlib.sha256()
        for n in self.nodes:
            h.update(json.dumps([n.name, n.op, n.inputs, n.lo, n.hi, repr(n.scale)]).encode())
            for k in sorted(n.attrs):
                v = n.attrs[k]
                h.update(k.encode())
                h.update(np.ascontiguousarray(v).tobytes() if isinstance(v, np.ndarray)
                         else json.dumps(v, sort_keys=True).encode())
        return h.hexdigest()


def apply_op(node: Node, args: list[np.ndarray]) -> np.ndarray:
    """Compute one node on int64 arrays (NumPy reference semantics, ``cerberus.ops``)."""
    return op_def(node.op, node.name).numpy(node, args)


def evaluate(
    graph: IntGraph,
    x: np.ndarray,
    *,
    check_ranges: bool = True,
    keep: Iterable[str] | None = None,
    backend: str = "numpy",
) -> dict[str, np.ndarray]:
    """Run the graph in the clear on int64 ``x`` (leading batch axes allowed).

    Returns the output under ``"output"`` plus any node named in ``keep``. With
    ``check_ranges`` every value must lie in its node's compiled range. ``backend="triton"``
    runs every op that has a ``triton`` hook in ``cerberus.ops`` (today ``linear``, ``lut``,
    ``matmul``, ``mul``) on its Triton kernel (SPEC C7, same bits; the NumPy path stays the
    reference); Triton is imported only then.
    """
    if backend not in ("numpy", "triton"):
        raise ValueError(f"unknown backend {backend!r} (expected 'numpy' or 'triton')")
    if backend == "triton":
        from cerberus.kernels import apply_op_triton
    values: dict[str, np.ndarray] = {}
    keep = set(keep or ())
    remaining = {n.name: 0 for n in graph.nodes}
    for n in graph.nodes:
        for i in n.inputs:
            remaining[i] += 1
    for n in graph.nodes:
        args = graph.operands(n, values, x)
        if backend == "triton":
            y = apply_op_triton(n, args, [graph[i] for i in n.inputs])
        else:
            y = apply_op(n, args)
        if check_ranges and y.size and (y.min() < n.lo or y.max() > n.hi):
            raise RangeOverflow(
                f"node {n.name} ({n.op}): value range {int(y.min())}..{int(y.max())} leaves "
                f"its compiled range {n.lo}..{n.hi}"
            )
        values[n.name] = y
        for i in n.inputs:  # free what no later node reads (long graphs, big batches)
            remaining[i] -= 1
            if remaining[i] == 0 and i not in keep and i != graph.output:
                del values[i]
    out = {"output": values[graph.output]}
    out.update({k: values[k] for k in keep})
    return out
