"""The integer graph: what the FHE circuit computes, and its bit-exact clear evaluator.

Every value is an integer tensor; every op maps one-to-one onto a concrete-python op:

| op        | meaning                                   | FHE cost                 |
|-----------|-------------------------------------------|--------------------------|
| input     | encrypted input from the client           | –                        |
| linear    | ``(x @ W) * mult + bias``, W/mult/bias clear | leveled (no PBS)      |
| mul_const | ``x * C``, C clear                        | leveled                  |
| add_const | ``x + C``, C clear                        | leveled                  |
| add / sub | ``a ± b`` (both encrypted, broadcasting)  | leveled                  |
| sum       | sum over the last axis (keepdims)         | leveled                  |
| slice     | columns ``start:stop`` of the last axis   | free                     |
| concat    | join along the last axis                  | free                     |
| transpose | swap the last two axes                    | free                     |
| lut       | ``table[round(x, lsbs) - offset]``        | 1 + lsbs PBS per element |
| mul       | ``a * b`` elementwise (both encrypted)    | 2 PBS per element        |
| matmul    | ``a @ b`` (both encrypted)                | 2 PBS per scalar product |

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
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

PBS_OPS = ("lut", "mul", "matmul")


class RangeOverflow(ValueError):
    """A value left the range its node was compiled for (the FHE result would be wrong)."""


def _constant_table(node: Node) -> bool:
    """A lookup whose every entry is equal: concrete folds it to a constant (no PBS)."""
    table = np.asarray(node.attrs["table"])
    return bool(table.size) and bool(np.all(table == table.flat[0]))


def width(lo: int, hi: int) -> int:
    """Bits needed to hold every integer in [lo, hi] (two's complement if lo < 0)."""
    if lo >= 0:
        return max(1, int(hi).bit_length())
    return max(int(-lo - 1).bit_length(), int(hi).bit_length()) + 1


def round_lsbs(x: np.ndarray, lsbs: int) -> np.ndarray:
    """``round_bit_pattern`` then shift: the table index of a rounded lookup input."""
    if lsbs == 0:
        return x
    return (x + (1 << (lsbs - 1))) >> lsbs


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
        """Width of the table index (the PBS input width) for a ``lut``."""
        table = self.attrs["table"]
        return width(int(self.attrs["offset"]), int(self.attrs["offset"]) + len(table) - 1)


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
        fused table to the last lookup of its chain, as concrete's tags do.
        """
        shapes = self.shapes()
        constant = {n.name for n in self.nodes if n.op == "lut" and _constant_table(n)}
        live: set[str] = set()
        stack = [self.output]
        while stack:  # what the output needs, through no constant
            name = stack.pop()
            if name in live:
                continue
            live.add(name)
            if name not in constant:
                stack.extend(self[name].inputs)
        users: dict[str, list[str]] = {n.name: [] for n in self.nodes}
        for n in self.nodes:
            if n.name in live and n.name not in constant:
                for i in n.inputs:
                    users[i].append(n.name)
        rounded: set[tuple[str, int]] = set()
        out: dict[str, int] = {}
        for n in self.nodes:
            if n.name not in live or n.name in constant or n.op not in PBS_OPS:
                continue
            size = int(np.prod(shapes[n.name]))
            if n.op == "lut":
                lsbs = int(n.attrs["lsbs"])
                pbs = 0
                if lsbs and (n.inputs[0], lsbs) not in rounded:
                    rounded.add((n.inputs[0], lsbs))
                    pbs += lsbs * size
                nxt = users[n.name]
                fused = (n.name != self.output and len(nxt) == 1
                         and self[nxt[0]].op == "lut" and int(self[nxt[0]].attrs["lsbs"]) == 0)
                pbs += 0 if fused else size
            elif n.op == "mul":
                pbs = 2 * size
            else:  # matmul
                pbs = 2 * size * shapes[n.inputs[0]][-1]
            out[n.name] = pbs
        return out

    def shapes(self, batch: int = 1) -> dict[str, tuple[int, ...]]:
        """Every node's output shape for one input of ``[batch, seq_len, d_model]``."""
        out: dict[str, tuple[int, ...]] = {}
        for n in self.nodes:
            ins = [out[i] for i in n.inputs]
            if n.op == "input":
                shape = (batch, int(self.meta["seq_len"]), int(self.meta["d_model"]))
            elif n.op == "linear":
                shape = ins[0][:-1] + (n.attrs["weight"].shape[1],)
            elif n.op in ("mul_const", "add_const"):
                shape = np.broadcast_shapes(ins[0], np.shape(n.attrs["const"]))
            elif n.op in ("add", "sub", "mul"):
                shape = np.broadcast_shapes(ins[0], ins[1])
            elif n.op == "matmul":
                shape = ins[0][:-1] + ins[1][-1:]
            elif n.op == "sum":
                shape = ins[0][:-1] + (1,)
            elif n.op == "slice":
                shape = ins[0][:-1] + (int(n.attrs["stop"]) - int(n.attrs["start"]),)
            elif n.op == "concat":
                shape = ins[0][:-1] + (sum(i[-1] for i in ins),)
            elif n.op == "transpose":
                shape = ins[0][:-2] + (ins[0][-1], ins[0][-2])
            else:  # lut and other elementwise ops
                shape = ins[0]
            out[n.name] = tuple(int(v) for v in shape)
        return out

    def lookup_widths(self) -> dict[str, int]:
        return {n.name: n.lookup_bits for n in self.nodes if n.op == "lut"}

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
    """Compute one node on int64 arrays (NumPy reference semantics)."""
    a = node.attrs
    op = node.op
    if op == "linear":
        y = args[0] @ a["weight"]
        if a.get("mult") is not None:
            y = y * a["mult"]
        if a.get("bias") is not None:
            y = y + a["bias"]
        return y
    if op == "lut":
        idx = round_lsbs(args[0], int(a["lsbs"])) - int(a["offset"])
        table = a["table"]
        if idx.size and (idx.min() < 0 or idx.max() >= len(table)):
            raise RangeOverflow(
                f"node {node.name}: lookup index {int(idx.min())}..{int(idx.max())} outside "
                f"its table of {len(table)} entries"
            )
        return table[idx]
    if op == "mul_const":
        return args[0] * a["const"]
    if op == "add_const":
        return args[0] + a["const"]
    if op == "mul":
        return args[0] * args[1]
    if op == "add":
        return args[0] + args[1]
    if op == "sub":
        return args[0] - args[1]
    if op == "matmul":
        return args[0] @ args[1]
    if op == "sum":
        return args[0].sum(axis=-1, keepdims=True)
    if op == "slice":
        return args[0][..., int(a["start"]) : int(a["stop"])]
    if op == "concat":
        return np.concatenate(args, axis=-1)
    if op == "transpose":
        return np.swapaxes(args[0], -1, -2)
    raise ValueError(f"node {node.name}: unknown op {op!r}")


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
    routes ``linear``/``lut``/``matmul``/``mul`` to the Triton kernels (SPEC C7, same bits;
    the NumPy path stays the reference); Triton is imported only then.
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
        if n.op == "input":
            y = np.asarray(x, dtype=np.int64)
        elif backend == "triton":
            y = apply_op_triton(n, [values[i] for i in n.inputs], [graph[i] for i in n.inputs])
        else:
            y = apply_op(n, [values[i] for i in n.inputs])
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
