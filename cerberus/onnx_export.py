"""ONNX export of the quantized plaintext integer graph (SPEC C8).

The artefact carries an ONNX model of the ``IntGraph`` so that anyone can run the miner's
computation in the clear with a stock runtime (onnxruntime), without Cerberus: auditors,
validators on other stacks, or a user checking what their encrypted query went through.
It must therefore compute *exactly* what ``cerberus.ir.evaluate`` computes — same int64
bits, not an approximation — so every op is lowered to integer ONNX ops only, by its
``onnx`` hook in ``cerberus.ops`` (e.g. ``linear`` → int64 ``MatMul``/``Mul``/``Add``;
``lut`` → a flooring shift built from ``Mod``/``Sub``/``Div``, then ``Gather``). This module
names the tensors — node values under ``v/``, constants under ``c/``, temporaries under
``t/``, so an IntGraph node called e.g. ``l0.q.weight`` can never clash with a constant —
and propagates the ranks the hooks need (from each op's shape rule).

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
from cerberus.ir import IntGraph
from cerberus.ops import UnknownOp, op_def

OPSET = 18
INPUT_NAME = "x"
OUTPUT_NAME = "output"


class _Emitter:
    """Collects ONNX nodes and initializers of the whole model."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def op(self, op_type: str, inputs: list[str], output: str, name: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=name, **attrs))
        return output


class _NodeEmitter:
    """The emitter one op's ``onnx`` hook writes through (``cerberus.ops.OnnxNode``): every
    name it makes is scoped by the IR node's, so no two nodes' tensors collide."""

    def __init__(self, em: _Emitter, node: str) -> None:
        self.em, self.node = em, node

    def const(self, key: str, value) -> str:
        name = f"c/{self.node}/{key}"
        self.em.inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.int64), name))
        return name

    def step(self, op_type: str, inputs: list[str], key: str, **attrs) -> str:
        return self.em.op(op_type, inputs, f"t/{self.node}/{key}", f"{self.node}/{key}",
                          **attrs)

    def result(self, op_type: str, inputs: list[str], **attrs) -> str:
        return self.em.op(op_type, inputs, _value(self.node), self.node, **attrs)


def _value(name: str) -> str:
    return f"v/{name}"


def to_onnx_model(graph: IntGraph, *, seq_len: int | None = None) -> onnx.ModelProto:
    """Build (without writing) the ONNX model of ``graph``; see ``export_onnx``."""
    meta_t = graph.meta.get("seq_len")
    if seq_len is not None and meta_t is not None and int(seq_len) != int(meta_t):
        # The causal/attention masks are clear constants of shape [T, T]: another T would
        # not broadcast, so refuse now rather than fail inside onnxruntime.
        raise CompileError(f"graph was lowered for seq_len {meta_t}, not {seq_len}")
    t = seq_len if seq_len is not None else meta_t
    d_model = graph.meta.get("d_model")
    if t is None or d_model is None:
        raise CompileError("graph.meta lacks seq_len/d_model; pass seq_len= and lower with meta")
    em = _Emitter()
    shapes: dict[str, tuple[int, ...]] = {}  # batch 1: the hooks need only the ranks
    values: dict[str, str] = {}  # IR node → the ONNX tensor holding its value
    for n in graph.nodes:
        try:
            d = op_def(n.op, n.name)
        except UnknownOp as e:
            raise CompileError(f"ONNX export: {e}") from None
        if d.source and n.name != graph.input:
            raise CompileError(f"node {n.name}: a second input (only {graph.input} is one)")
        missing = [i for i in n.inputs if i not in shapes]
        if missing:
            raise CompileError(f"node {n.name} ({n.op}): inputs {missing} not defined before it")
        try:
            shapes[n.name] = d.shape(n, graph.operands(n, shapes, (1, int(t), int(d_model))))
        except ValueError as e:  # operands that do not broadcast, a transposed vector …
            raise CompileError(f"node {n.name} ({n.op}): {e}") from None
        values[n.name] = d.onnx(_NodeEmitter(em, n.name), n,
                                graph.operands(n, values, INPUT_NAME), len(shapes[n.name]))
    if graph.output not in values:
        raise CompileError(f"graph output {graph.output!r} is not a node of the graph")
    em.op("Identity", [values[graph.output]], OUTPUT_NAME, "output")
    x_info = helper.make_tensor_value_info(INPUT_NAME, TensorProto.INT64,
                                           ["batch", int(t), int(d_model)])
    out_rank = len(shapes[graph.output])
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
