"""ONNX export of the quantized plaintext integer graph (SPEC C8).

The artefact carries an ONNX model of the ``IntGraph`` so that anyone can run the miner's
computation in the clear with a stock runtime (onnxruntime), without Cerberus: auditors,
validators on other stacks, or a user checking what their encrypted query went through.
It must therefore compute *exactly* what ``cerberus.ir.evaluate`` computes — same int64
bits, not an approximation — so every op is lowered to integer ONNX ops only:

- ``linear``  → ``MatMul`` (+ ``Mul`` by the per-channel multipliers, + ``Add`` bias), all
  int64. onnxruntime's CPU provider implements int64 ``MatMul`` (verified in the tests),
  so no float detour and no 2**53 exactness argument is needed.
- ``lut``     → the rounding ``(x + 2**(lsbs-1)) >> lsbs`` then ``Sub offset`` then
  ``Gather`` from the int64 table. ONNX ``BitShift`` is defined only on unsigned types and
  integer ``Div`` truncates toward zero, while NumPy's ``>>`` on int64 is an arithmetic
  shift, i.e. *floor* division by ``2**lsbs``. We compute
  ``floor(y / p) = (y - Mod(y, p)) / p`` with ``Mod(fmod=0)``, whose result takes the sign
  of the divisor (Python semantics): ``y - Mod(y, p)`` is an exact multiple of ``p``, so
  the truncating ``Div`` that follows is exact for negative ``y`` as well.
- ``mul_const``/``add_const`` → ``Mul``/``Add`` with an int64 constant (NumPy broadcasting
  equals ONNX multidirectional broadcasting); ``add``/``sub``/``mul``/``matmul`` → the same
  binary ops; ``sum`` → ``ReduceSum(axes=[-1], keepdims=1)``; ``slice`` → ``Slice`` on
  axis −1; ``concat`` → ``Concat(axis=-1)``; ``transpose`` → ``Transpose`` swapping the
  last two axes (the permutation needs the rank, which we propagate from the input).

One difference is deliberate and documented: ``evaluate`` raises ``RangeOverflow`` when a
value leaves its compiled range, while the ONNX model has no such checks (an out-of-table
index makes ``Gather`` fail, or wrap if negative). Inside the compiled ranges the two agree
bit for bit; outside them the FHE circuit itself would be wrong, so the simulator is the
place to diagnose that.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from cerberus.errors import CompileError
from cerberus.ir import IntGraph, Node

OPSET = 18
INPUT_NAME = "x"
OUTPUT_NAME = "output"
SUPPORTED_OPS = (
    "input", "linear", "lut", "mul_const", "add_const", "add", "sub", "mul", "matmul",
    "sum", "slice", "concat", "transpose",
)


class _Emitter:
    """Collects ONNX nodes and initializers with collision-free names.

    Node values live under ``v/``, constants under ``c/`` and temporaries under ``t/`` so
    that an IntGraph node called e.g. ``l0.q.weight`` can never clash with a constant.
    """

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._const_names: set[str] = set()

    def const(self, name: str, value: np.ndarray) -> str:
        full = f"c/{name}"
        if full not in self._const_names:
            self._const_names.add(full)
            self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.int64), full))
        return full

    def op(self, op_type: str, inputs: list[str], output: str, name: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=name, **attrs))
        return output


def _value(name: str) -> str:
    return f"v/{name}"


def _emit_node(em: _Emitter, n: Node, ins: list[str], rank: int) -> str:
    """Lower one IntGraph node; returns the ONNX tensor holding its value."""
    a = n.attrs
    out = _value(n.name)
    tmp = f"t/{n.name}"
    if n.op == "linear":
        y = em.op("MatMul", [ins[0], em.const(f"{n.name}/weight", a["weight"])],
                  f"{tmp}/matmul", f"{n.name}/matmul")
        if a.get("mult") is not None:
            y = em.op("Mul", [y, em.const(f"{n.name}/mult", a["mult"])], f"{tmp}/mult",
                      f"{n.name}/mult")
        if a.get("bias") is not None:
            y = em.op("Add", [y, em.const(f"{n.name}/bias", a["bias"])], f"{tmp}/bias",
                      f"{n.name}/bias")
        return em.op("Identity", [y], out, n.name)
    if n.op == "lut":
        lsbs = int(a["lsbs"])
        y = ins[0]
        if lsbs > 0:
            p = em.const(f"{n.name}/pow2", np.array(1 << lsbs))
            half = em.const(f"{n.name}/half", np.array(1 << (lsbs - 1)))
            y = em.op("Add", [y, half], f"{tmp}/tie_up", f"{n.name}/tie_up")
            r = em.op("Mod", [y, p], f"{tmp}/mod", f"{n.name}/mod", fmod=0)
            y = em.op("Sub", [y, r], f"{tmp}/floor_mult", f"{n.name}/floor_mult")
            y = em.op("Div", [y, p], f"{tmp}/shift", f"{n.name}/shift")  # exact division
        idx = em.op("Sub", [y, em.const(f"{n.name}/offset", np.array(int(a["offset"])))],
                    f"{tmp}/index", f"{n.name}/index")
        return em.op("Gather", [em.const(f"{n.name}/table", a["table"]), idx], out, n.name,
                     axis=0)
    if n.op == "mul_const":
        return em.op("Mul", [ins[0], em.const(f"{n.name}/const", a["const"])], out, n.name)
    if n.op == "add_const":
        return em.op("Add", [ins[0], em.const(f"{n.name}/const", a["const"])], out, n.name)
    if n.op in ("add", "sub", "mul", "matmul"):
        op_type = {"add": "Add", "sub": "Sub", "mul": "Mul", "matmul": "MatMul"}[n.op]
        return em.op(op_type, ins[:2], out, n.name)
    if n.op == "sum":
        return em.op("ReduceSum", [ins[0], em.const("axes_last", np.array([-1]))], out, n.name,
                     keepdims=1)
    if n.op == "slice":
        starts = em.const(f"{n.name}/start", np.array([int(a["start"])]))
        ends = em.const(f"{n.name}/stop", np.array([int(a["stop"])]))
        return em.op("Slice", [ins[0], starts, ends, em.const("axes_last", np.array([-1]))],
                     out, n.name)
    if n.op == "concat":
        return em.op("Concat", ins, out, n.name, axis=-1)
    if n.op == "transpose":
        if rank < 2:
            raise CompileError(f"node {n.name}: transpose of a rank-{rank} value")
        perm = list(range(rank - 2)) + [rank - 1, rank - 2]
        return em.op("Transpose", ins, out, n.name, perm=perm)
    raise CompileError(
        f"ONNX export: unsupported op {n.op!r} at node {n.name} "
        f"(supported: {', '.join(SUPPORTED_OPS)})"
    )


def _out_rank(n: Node, in_ranks: list[int]) -> int:
    """Rank of a node's output under NumPy broadcasting (constants may add axes)."""
    rank = max(in_ranks) if in_ranks else 0
    if n.op in ("mul_const", "add_const"):
        rank = max(rank, np.ndim(n.attrs["const"]))
    return rank


def to_onnx_model(graph: IntGraph, *, seq_len: int | None = None) -> onnx.ModelProto:
    """Build (without writing) the ONNX model of ``graph``; see ``export_onnx``."""
    meta_t = graph.meta.get("seq_len")
    if seq_len is not None and meta_t is not None and int(seq_len) != int(meta_t):
        # The causal/attention masks are clear constants of shape [T, T]: another T would
        # not broadcast, so refuse now rather than fail inside onnxruntime.
        raise CompileError(f"graph was lowered for seq_len {meta_t}, not {seq_len}")
    t = seq_len if seq_len is not None else meta_t
    d = graph.meta.get("d_model")
    if t is None or d is None:
        raise CompileError("graph.meta lacks seq_len/d_model; pass seq_len= and lower with meta")
    em = _Emitter()
    ranks: dict[str, int] = {}
    for n in graph.nodes:
        if n.op == "input":
            if n.name != graph.input:
                raise CompileError(f"node {n.name}: a second input (only {graph.input} is one)")
            em.op("Identity", [INPUT_NAME], _value(n.name), n.name)
            ranks[n.name] = 3
            continue
        missing = [i for i in n.inputs if i not in ranks]
        if missing:
            raise CompileError(f"node {n.name} ({n.op}): inputs {missing} not defined before it")
        rank = _out_rank(n, [ranks[i] for i in n.inputs])
        _emit_node(em, n, [_value(i) for i in n.inputs], rank)
        ranks[n.name] = rank
    if graph.output not in ranks:
        raise CompileError(f"graph output {graph.output!r} is not a node of the graph")
    em.op("Identity", [_value(graph.output)], OUTPUT_NAME, "output")
    x_info = helper.make_tensor_value_info(INPUT_NAME, TensorProto.INT64, ["batch", int(t), int(d)])
    out_rank = ranks[graph.output]
    y_info = helper.make_tensor_value_info(
        OUTPUT_NAME, TensorProto.INT64, ["batch"] + [f"out_{i}" for i in range(1, out_rank)])
    g = helper.make_graph(em.nodes, "cerberus_int_graph", [x_info], [y_info], em.inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="cerberus")
    # ONNX IR v10 is what onnxruntime 1.18+ (our floor in pyproject) can load.
    model.ir_version = min(model.ir_version, 10)
    props = {f"cerberus.{k}": json.dumps(v) for k, v in sorted(graph.meta.items())}
    props["cerberus.meta"] = json.dumps(graph.meta, sort_keys=True)
    try:
        props["cerberus.graph_digest"] = graph.digest()
    except (TypeError, ValueError):  # an attr the IR cannot hash: export without the digest
        pass
    props["cerberus.input"] = INPUT_NAME
    helper.set_model_props(model, props)
    return model


def export_onnx(graph: IntGraph, path: Path, *, seq_len: int | None = None) -> Path:
    """Write an ONNX model computing ``evaluate(graph, x)["output"]`` bit for bit.

    Input ``x``: int64 ``[batch, T, d]`` (dynamic batch; ``T`` = ``seq_len`` or
    ``graph.meta["seq_len"]``, ``d`` = ``graph.meta["d_model"]``); output ``output``:
    int64. ``graph.meta`` (scales, bit widths) is stored in ``metadata_props`` as JSON,
    each key as ``cerberus.KEY`` plus the whole dict as ``cerberus.meta``, with the
    graph's content digest, so the file alone says how to quantize and dequantize.
    Raises ``CompileError`` for an op it cannot express (naming op and node).
    """
    model = to_onnx_model(graph, seq_len=seq_len)
    onnx.checker.check_model(model, full_check=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    onnx.save_model(model, tmp)
    tmp.replace(path)  # never leave a half-written file in an artefact
    return path


def read_meta(path: Path) -> dict:
    """The ``graph.meta`` stored by ``export_onnx`` (scales, bit widths, seq_len …)."""
    model = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    if "cerberus.meta" not in props:
        raise CompileError(f"{path}: not an ONNX integer graph exported by Cerberus")
    return json.loads(props["cerberus.meta"])


def run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    """Run an exported integer graph on int64 ``x`` [batch, T, d] with onnxruntime (CPU)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run([OUTPUT_NAME], {INPUT_NAME: np.asarray(x, dtype=np.int64)})[0]
