"""The IR's PBS count equals concrete-python's own statistics, node by node (SPEC C3, C6).

Every case compiles a real circuit (no simulation of the count): the IR's
``pbs_by_node`` must equal concrete's ``programmable_bootstrap_count_per_tag`` (the
backend tags every op with its node) and ``pbs_count`` the circuit's total. The cases
cover each op kind that bootstraps and each rule of ``IntGraph.pbs_by_node``: rounding
(1 PBS per removed bit), shared rounding, fused lookup chains, constant tables, products
of every sign, and whole lowered blocks.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from cerberus.cost import graph_cost
from cerberus.fhe.concrete_backend import compile_circuit, node_tag
from cerberus.ir import IntGraph, Node, evaluate, round_lsbs
from tests.fhe.test_concrete_backend import tiny_graph

T, D = 2, 4


def _lut(name: str, src: str, lo: int, hi: int, lsbs: int,
         fn: Callable[[int], int] = lambda v: v // 2) -> Node:
    """A lookup of ``fn`` over the rounded indices of an input in [lo, hi]."""
    off, top = (int(round_lsbs(np.int64(v), lsbs)) for v in (lo, hi))
    table = np.array([fn(v) for v in range(off, top + 1)], dtype=np.int64)
    return Node(name, "lut", [src], int(table.min()), int(table.max()),
                attrs={"table": table, "lsbs": lsbs, "offset": off})


def _node(name: str, op: str, inputs: list[str], **attrs) -> Node:
    """A node whose range is filled in from the data by :func:`_graph`."""
    return Node(name, op, inputs, 0, 0, attrs=attrs)


def _graph(nodes: list[Node], lo: int, hi: int) -> tuple[IntGraph, list[np.ndarray]]:
    """The graph on inputs in [lo, hi], every range set to what the inputs reach."""
    rng = np.random.default_rng(0)
    xs = [rng.integers(lo, hi + 1, (T, D)) for _ in range(30)]
    xs += [np.full((T, D), lo), np.full((T, D), hi)]
    nodes = [Node("input", "input", [], lo, hi), *nodes]
    graph = IntGraph(nodes, "input", nodes[-1].name, {"seq_len": T, "d_model": D})
    names = [n.name for n in nodes]
    seen = [evaluate(graph, x[None], check_ranges=False, keep=names) for x in xs]
    for n in nodes:
        if n.op not in ("input", "lut"):
            n.lo = min(int(s[n.name].min()) for s in seen)
            n.hi = max(int(s[n.name].max()) for s in seen)
    return graph, xs


def _cases() -> dict[str, tuple[list[Node], int, int]]:
    sq: Callable[[int], int] = lambda v: v * v // 16  # noqa: E731
    w = 127
    return {
        "lut, no rounding": ([_lut("a", "input", -8, 7, 0)], -8, 7),
        "lut, 1 lsb rounded": ([_lut("a", "input", -w - 1, w, 1)], -w - 1, w),
        "lut, 4 lsbs rounded": ([_lut("a", "input", -w - 1, w, 4)], -w - 1, w),
        "lut, unsigned input, 2 lsbs": ([_lut("a", "input", 0, w, 2)], 0, w),
        "two lookups share one rounding": (
            [_lut("a", "input", -w - 1, w, 3), _lut("b", "input", -w - 1, w, 3, sq),
             _node("s", "add", ["a", "b"])], -w - 1, w),
        "two roundings of one value": (
            [_lut("a", "input", -w - 1, w, 3), _lut("b", "input", -w - 1, w, 2, sq),
             _node("s", "add", ["a", "b"])], -w - 1, w),
        "lut into lut, fused": (
            [_lut("a", "input", -8, 7, 0, lambda v: v + 8), _lut("b", "a", 0, 15, 0, sq),
             _lut("c", "b", 0, 14, 0, lambda v: v + 1)], -8, 7),
        "rounded lut into lut, fused table": (
            [_lut("a", "input", -64, 63, 2, lambda v: v + 16), _lut("b", "a", 0, 32, 0, sq)],
            -64, 63),
        "lut into rounded lut, not fused": (
            [_lut("a", "input", -64, 63, 0, lambda v: v + 64), _lut("b", "a", 0, 127, 2)],
            -64, 63),
        "lut read twice, not fused": (
            [_lut("a", "input", -8, 7, 0, lambda v: v + 8), _lut("b", "a", 0, 15, 0, sq),
             _node("s", "add", ["a", "b"])], -8, 7),
        "lut, add_const, lut: not fused": (
            [_lut("a", "input", -8, 7, 0, lambda v: v + 8),
             _node("c", "add_const", ["a"], const=np.int64(3)), _lut("b", "c", 3, 18, 0, sq)],
            -8, 7),
        "constant table folds what feeds it": (
            [_lut("z", "input", -8, 7, 0, lambda v: v + 8), _lut("a", "z", 0, 15, 0, lambda v: 0),
             _node("s", "add", ["input", "a"])], -8, 7),
        "mul signed × signed": (
            [_lut("a", "input", -8, 7, 0, lambda v: v),
             _lut("b", "input", -8, 7, 0, lambda v: -v // 2), _node("m", "mul", ["a", "b"])],
            -8, 7),
        "mul unsigned × signed": (
            [_lut("a", "input", -8, 7, 0, lambda v: v + 8), _node("m", "mul", ["a", "input"])],
            -8, 7),
        "mul a × a": ([_node("m", "mul", ["input", "input"])], -8, 7),
        "matmul enc × enc": (
            [_node("t", "transpose", ["input"]), _lut("a", "input", -8, 7, 0),
             _node("m", "matmul", ["a", "t"])], -8, 7),
        "leveled ops only": (
            [_node("l", "linear", ["input"], weight=np.arange(D * 3).reshape(D, 3) - 5,
                   mult=None, bias=None), _node("s", "sum", ["l"])], -8, 7),
    }


@pytest.mark.parametrize("case", list(_cases()))
def test_ir_pbs_equals_concrete_per_node(case: str) -> None:
    nodes, lo, hi = _cases()[case]
    graph, xs = _graph(nodes, lo, hi)
    stats = compile_circuit(graph, xs).statistics
    ours = {node_tag(k): v for k, v in graph.pbs_by_node().items() if v}
    assert ours == dict(stats["programmable_bootstrap_count_per_tag"])
    assert graph.pbs_count() == stats["programmable_bootstrap_count"]
    assert graph_cost(graph).pbs == stats["programmable_bootstrap_count"]  # cost.py agrees


def test_rounding_is_priced_one_pbs_per_removed_bit() -> None:
    """The measured law itself (benchmarks/RESULTS.md, calibrate_cost): 1 + lsbs per element."""
    for lsbs in (0, 3, 5):
        graph, _ = _graph([_lut("a", "input", -512, 511, lsbs)], -512, 511)
        assert graph.pbs_count() == (1 + lsbs) * T * D


@pytest.mark.parametrize("kind", ["bert", pytest.param("gpt", marks=pytest.mark.slow)])
def test_ir_pbs_equals_concrete_on_a_lowered_block(kind: str) -> None:
    """A whole lowered block, attention and MLP live (BERT ~30 s to compile, GPT ~20 s:
    slow)."""
    graph, xs = tiny_graph(kind)
    stats = compile_circuit(graph, list(xs)).statistics
    assert graph.pbs_count() == stats["programmable_bootstrap_count"] > 0
    assert graph_cost(graph).pbs == graph.pbs_count()
    ours = {node_tag(k): v for k, v in graph.pbs_by_node().items() if v}
    assert ours == dict(stats["programmable_bootstrap_count_per_tag"])
