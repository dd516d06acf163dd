"""The op table (``cerberus.ops``, issue #12; SPEC C6, C7): every op is complete, its shape
rule agrees with its NumPy evaluation, and ``cerberus.ir`` documents exactly the table."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from cerberus import ir
from cerberus.errors import CompileError
from cerberus.ir import IntGraph, Node, apply_op, evaluate, round_lsbs
from cerberus.ops import OPS, OpDef, UnknownOp, Work, op_def

ROOT = Path(__file__).resolve().parents[2]
Case = tuple[Node, list[np.ndarray]]


# -- random nodes of every op -------------------------------------------------------------------
def _x(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(-50, 51, shape)


def _dims(rng: np.random.Generator) -> tuple[int, ...]:
    return tuple(int(v) for v in rng.integers(1, 5, 3))


def _broadcastable(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[int, ...]:
    """A shape NumPy broadcasts against ``shape``: some axes 1, maybe fewer leading axes."""
    out = tuple(1 if rng.random() < 0.4 else s for s in shape)
    return out[int(rng.integers(0, len(out))):]


def _node(op: str, n_inputs: int, **attrs) -> Node:
    return Node("n", op, [f"in{i}" for i in range(n_inputs)], 0, 0, attrs=attrs)


def _input(rng):
    return _node("input", 0), [_x(rng, _dims(rng))]


def _linear(rng):
    b, t, d = _dims(rng)
    n = int(rng.integers(1, 6))
    mult = rng.integers(1, 4, n) if rng.random() < 0.5 else None
    bias = rng.integers(-9, 10, n) if rng.random() < 0.5 else None
    node = _node("linear", 1, weight=rng.integers(-5, 6, (d, n)), mult=mult, bias=bias)
    return node, [_x(rng, (b, t, d))]


def _with_const(op: str) -> Callable[[np.random.Generator], Case]:
    def case(rng):
        shape = _dims(rng)
        return _node(op, 1, const=_x(rng, _broadcastable(rng, shape))), [_x(rng, shape)]
    return case


def _binary(op: str) -> Callable[[np.random.Generator], Case]:
    def case(rng):
        shape = _dims(rng)
        other = _x(rng, _broadcastable(rng, shape))
        args = [_x(rng, shape), other] if rng.random() < 0.5 else [other, _x(rng, shape)]
        return _node(op, 2), args
    return case


def _sum(rng):
    return _node("sum", 1), [_x(rng, _dims(rng))]


def _slice(rng):
    b, t, d = _dims(rng)
    start = int(rng.integers(0, d))
    return _node("slice", 1, start=start, stop=int(rng.integers(start + 1, d + 1))), \
        [_x(rng, (b, t, d))]


def _concat(rng):
    b, t, _ = _dims(rng)
    k = int(rng.integers(1, 4))
    return _node("concat", k), [_x(rng, (b, t, int(rng.integers(1, 5)))) for _ in range(k)]


def _transpose(rng):
    shape = _dims(rng) + ((int(rng.integers(1, 4)),) if rng.random() < 0.5 else ())
    return _node("transpose", 1), [_x(rng, shape)]


def _lut(rng):
    x = _x(rng, _dims(rng))
    lsbs = int(rng.integers(0, 4))
    offset = int(round_lsbs(x.min(), lsbs)) - int(rng.integers(0, 3))
    size = int(round_lsbs(x.max(), lsbs)) - offset + 1 + int(rng.integers(0, 3))
    return _node("lut", 1, table=_x(rng, (size,)), lsbs=lsbs, offset=offset), [x]


def _matmul(rng):
    b, m, k = _dims(rng)
    n = int(rng.integers(1, 5))
    lead = (b, int(rng.integers(1, 3)))
    return _node("matmul", 2), [_x(rng, _broadcastable(rng, lead) + (m, k)),
                                _x(rng, _broadcastable(rng, lead) + (k, n))]


CASES: dict[str, Callable[[np.random.Generator], Case]] = {
    "input": _input, "linear": _linear, "mul_const": _with_const("mul_const"),
    "add_const": _with_const("add_const"), "add": _binary("add"), "sub": _binary("sub"),
    "sum": _sum, "slice": _slice, "concat": _concat, "transpose": _transpose, "lut": _lut,
    "mul": _binary("mul"), "matmul": _matmul,
}


def _cases(op: str, n: int = 25) -> list[Case]:
    rng = np.random.default_rng(sorted(OPS).index(op))
    return [CASES[op](rng) for _ in range(n)]


# -- the table is complete ----------------------------------------------------------------------
OPTIONAL = {"pbs", "pbs_bits", "triton", "int32_bound"}  # None: no PBS / no kernel (NumPy)


def test_every_op_has_random_cases_here() -> None:
    """A new op needs its generator above, so the checks below cover it too."""
    assert set(CASES) == set(OPS)


@pytest.mark.parametrize("name", list(OPS))
def test_every_op_defines_every_hook(name: str) -> None:
    d = OPS[name]
    assert isinstance(d, OpDef) and d.name == name and op_def(name) is d
    for f in dataclasses.fields(OpDef):
        value = getattr(d, f.name)
        if f.type in ("str", "bool"):
            continue
        if value is None:
            assert f.name in OPTIONAL, f"{name} lacks its {f.name} hook"
        else:
            assert callable(value), f"{name}.{f.name} is not a hook"
    assert d.meaning and d.fhe_cost and "\n" not in d.meaning + d.fhe_cost
    assert (d.pbs is None) == (d.pbs_bits is None)  # every PBS counted is priced
    assert d.bootstraps == (d.lookup or d.product)
    assert d.int32_bound is None or d.triton is not None


def test_unknown_op_is_a_clear_error_everywhere(tmp_path: Path) -> None:
    from cerberus.cost import graph_cost
    from cerberus.fhe.concrete_backend import check_widths
    from cerberus.kernels import apply_op_triton
    from cerberus.onnx_export import export_onnx

    nodes = [Node("input", "input", [], -8, 7), Node("odd.node", "frob", ["input"], 0, 1)]
    g = IntGraph(nodes, "input", "odd.node", {"seq_len": 1, "d_model": 2})
    x = np.zeros((1, 1, 2), dtype=np.int64)
    with pytest.raises(UnknownOp, match=r"unsupported op 'frob' at node odd\.node"):
        op_def("frob", "odd.node")
    for run in (g.shapes, g.pbs_by_node, lambda: evaluate(g, x), lambda: graph_cost(g),
                lambda: apply_op_triton(nodes[1], [x])):
        with pytest.raises(UnknownOp, match=r"'frob' at node odd\.node"):
            run()
    with pytest.raises(CompileError, match=r"ONNX export: unsupported op 'frob'"):
        export_onnx(g, tmp_path / "odd.onnx")
    with pytest.raises(CompileError, match=r"FHE lowering: unsupported op 'frob'"):
        check_widths(g, 8)


# -- each op agrees with itself -----------------------------------------------------------------
@pytest.mark.parametrize("name", list(OPS))
def test_shape_rule_agrees_with_numpy_evaluation(name: str) -> None:
    d = OPS[name]
    for node, args in _cases(name):
        shapes = [a.shape for a in args]
        got = d.shape(node, shapes)
        assert all(type(v) is int for v in got), got
        y = apply_op(node, args)
        assert got == y.shape, (node.attrs, shapes)
        work = d.work(node, shapes, got)
        assert isinstance(work, Work) and min(work) >= 0


@pytest.mark.parametrize("name", [n for n, d in OPS.items() if d.triton is not None])
def test_triton_hook_is_bit_exact_on_random_cases(name: str) -> None:
    from cerberus.kernels import apply_op_triton

    for node, args in _cases(name, 6):
        want = apply_op(node, args)
        got = apply_op_triton(node, args)
        assert got.dtype == np.int64 and np.array_equal(got, want), node.attrs


def test_graph_shapes_and_pbs_follow_the_table() -> None:
    """One graph through every op: ``IntGraph.shapes`` equals what ``evaluate`` computes, and
    the PBS count follows each op's rule (lut 1 + lsbs per element, products 2 per term)."""
    rng = np.random.default_rng(7)
    t, d = 3, 4
    table = np.arange(-8, 9)
    big = 2**40
    nodes = [
        Node("input", "input", [], -64, 63),
        Node("lin", "linear", ["input"], -big, big,
             attrs={"weight": rng.integers(-3, 4, (d, 5)), "mult": None, "bias": None}),
        Node("mc", "mul_const", ["lin"], -big, big, attrs={"const": np.int64(2)}),
        Node("ac", "add_const", ["mc"], -big, big, attrs={"const": rng.integers(-3, 4, 5)}),
        Node("sl", "slice", ["ac"], -big, big, attrs={"start": 1, "stop": 5}),
        Node("lut", "lut", ["input"], -8, 8, attrs={"table": table, "lsbs": 3, "offset": -8}),
        Node("ad", "add", ["sl", "lut"], -big, big),
        Node("sb", "sub", ["ad", "input"], -big, big),
        Node("mu", "mul", ["lut", "lut"], -big, big),
        Node("tr", "transpose", ["mu"], -big, big),
        Node("mm", "matmul", ["mu", "tr"], -big, big),
        Node("su", "sum", ["mm"], -big, big),
        Node("out", "concat", ["sb", "su", "mm"], -big, big),
    ]
    assert {n.op for n in nodes} == set(OPS)
    g = IntGraph(nodes, "input", "out", {"seq_len": t, "d_model": d})
    x = rng.integers(-64, 64, (2, t, d))
    values = evaluate(g, x, keep=[n.name for n in nodes])
    assert g.shapes(batch=2) == {n.name: values[n.name].shape for n in nodes}
    assert g.pbs_by_node() == {"lut": (1 + 3) * t * d, "mu": 2 * t * d, "mm": 2 * t * t * d}


# -- cerberus.ir documents the table ------------------------------------------------------------
def test_ir_docstring_lists_exactly_the_table() -> None:
    rows = re.findall(r"^\| (\w+) +\| (.+?) +\| (.+?) +\|$", ir.__doc__ or "", re.M)
    rows = [r for r in rows if r[0] != "op"]  # the header
    assert [name for name, _, _ in rows] == list(OPS)
    for name, meaning, cost in rows:
        assert (meaning, cost) == (OPS[name].meaning, OPS[name].fhe_cost), name


# -- imports: the table is light and nothing cycles through it ---------------------------------
def _imported_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint(' '.join(sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, check=True)
    return set(done.stdout.split())


def test_the_table_and_the_ir_import_no_backend() -> None:
    loaded = _imported_after("import cerberus.ir")
    assert "cerberus.ops" in loaded
    assert not loaded & {"concrete", "onnx", "triton", "torch", "cerberus.kernels"}


def test_the_kernels_do_not_import_the_ir() -> None:
    loaded = _imported_after("import cerberus.kernels")
    assert "triton" in loaded and "cerberus.ops" in loaded
    assert "cerberus.ir" not in loaded
