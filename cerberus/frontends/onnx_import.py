"""ONNX frontend (SPEC C1): an ``.onnx`` file becomes a torch.fx graph.

Two levels, because they answer different questions:

- ``import_onnx(path)`` turns *any* float ONNX graph made of the supported ops into a
  runnable ``torch.fx.GraphModule``: initializers become buffers read by ``get_attr``
  nodes, each ONNX node one ``call_function`` node. This is graph capture in the sense of
  SPEC C1 — the passes can walk it — and it lets us check that we read a file the way
  onnxruntime does.
- ``canonical_from_onnx(path)`` recovers the ``CanonicalTransformer`` that the compiler
  needs (explicit heads, gates, kept-head lists). Pattern-matching attention out of an
  arbitrary exporter's graph is brittle (every exporter and opset spells it differently),
  so we only compile ONNX files that Cerberus itself exported with
  ``export_canonical_onnx``: they carry the ``TransformerConfig`` as JSON in
  ``metadata_props`` and the weights as initializers named like the model's
  ``state_dict``. Anything else is a clear ``CompileError``; ``import_onnx`` still works.

ONNX semantics that differ from torch (Reshape's ``0``, Gather's negative indices, integer
``Div`` truncating, opset-dependent attribute-vs-input forms …) live in small ``_op_*``
functions that the fx nodes call, so the generated code stays one call per ONNX node.
"""

from __future__ import annotations

import json
import math
import operator
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import fx, nn

from cerberus.errors import CompileError
from cerberus.frontends.canonical import CanonicalTransformer, TransformerConfig

META_FORMAT = "cerberus.format"
META_CONFIG = "cerberus.transformer_config"
META_HEAD = "cerberus.has_lm_head"
META_SEQ = "cerberus.seq_len"
FORMAT = "canonical-transformer/1"
EXPORT_OPSET = 18

_ONNX_TO_TORCH_DTYPE: dict[int, torch.dtype] = {
    onnx.TensorProto.FLOAT: torch.float32,
    onnx.TensorProto.DOUBLE: torch.float64,
    onnx.TensorProto.FLOAT16: torch.float16,
    onnx.TensorProto.BFLOAT16: torch.bfloat16,
    onnx.TensorProto.INT64: torch.int64,
    onnx.TensorProto.INT32: torch.int32,
    onnx.TensorProto.INT16: torch.int16,
    onnx.TensorProto.INT8: torch.int8,
    onnx.TensorProto.UINT8: torch.uint8,
    onnx.TensorProto.BOOL: torch.bool,
}


# --------------------------------------------------------------------------------------
# ONNX op semantics as torch functions (the targets of the fx call_function nodes)
# --------------------------------------------------------------------------------------
def _ints(t: torch.Tensor | None) -> list[int] | None:
    return None if t is None else [int(v) for v in torch.as_tensor(t).reshape(-1).tolist()]


def _op_div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """ONNX Div: integer division truncates toward zero (C semantics), floats divide."""
    if not a.is_floating_point() and not b.is_floating_point():
        return torch.div(a, b, rounding_mode="trunc")
    return a / b


def _op_pow(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """ONNX Pow keeps the base's type whatever the exponent's type."""
    return torch.pow(a, b.to(a.dtype) if a.is_floating_point() else b).to(a.dtype)


def _op_gemm(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None, alpha: float,
             beta: float, trans_a: int, trans_b: int) -> torch.Tensor:
    a = a.T if trans_a else a
    b = b.T if trans_b else b
    y = alpha * (a @ b)
    return y if c is None else y + beta * c


def _op_reshape(x: torch.Tensor, shape: torch.Tensor, allowzero: int) -> torch.Tensor:
    dims = _ints(shape)
    if not allowzero:  # 0 copies the input's dimension at that position
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


def _op_transpose(x: torch.Tensor, perm: list[int] | None) -> torch.Tensor:
    return x.permute(perm if perm is not None else list(range(x.dim()))[::-1])


def _op_unsqueeze(x: torch.Tensor, axes: list[int] | torch.Tensor) -> torch.Tensor:
    axes = _ints(axes) if isinstance(axes, torch.Tensor) else axes
    rank = x.dim() + len(axes)
    for a in sorted(a % rank for a in axes):
        x = x.unsqueeze(a)
    return x


def _op_squeeze(x: torch.Tensor, axes: list[int] | torch.Tensor | None) -> torch.Tensor:
    axes = _ints(axes) if isinstance(axes, torch.Tensor) else axes
    if axes is None:
        return x.squeeze()
    for a in sorted((a % x.dim() for a in axes), reverse=True):
        x = x.squeeze(a)
    return x


def _op_gather(x: torch.Tensor, idx: torch.Tensor, axis: int) -> torch.Tensor:
    axis %= x.dim()
    idx = torch.where(idx < 0, idx + x.shape[axis], idx).long()
    out = x.index_select(axis, idx.reshape(-1))
    return out.reshape(tuple(x.shape[:axis]) + tuple(idx.shape) + tuple(x.shape[axis + 1 :]))


def _op_gather_elements(x: torch.Tensor, idx: torch.Tensor, axis: int) -> torch.Tensor:
    idx = torch.where(idx < 0, idx + x.shape[axis], idx).long()
    return torch.gather(x, axis, idx)


def _op_concat(axis: int, *xs: torch.Tensor) -> torch.Tensor:
    return torch.cat(xs, dim=axis)


def _op_slice(x: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor,
              axes: torch.Tensor | None, steps: torch.Tensor | None) -> torch.Tensor:
    starts_l, ends_l = _ints(starts), _ints(ends)
    axes_l = _ints(axes) if axes is not None else list(range(len(starts_l)))
    steps_l = _ints(steps) if steps is not None else [1] * len(starts_l)
    for s, e, a, st in zip(starts_l, ends_l, axes_l, steps_l, strict=True):
        a %= x.dim()
        n = x.shape[a]
        if st > 0:
            s = max(0, min(n, s + n if s < 0 else s))
            e = max(0, min(n, e + n if e < 0 else e))
            x = x.narrow(a, s, max(0, e - s))[(slice(None),) * a + (slice(None, None, st),)]
        else:  # negative step: walk backwards, as ONNX clamps to [-1, n-1]
            s = max(-1, min(n - 1, s + n if s < 0 else s))
            e = max(-1, min(n - 1, e + n if e < 0 else e))
            idx = torch.arange(s, e, st, device=x.device)
            x = x.index_select(a, idx)
    return x


def _op_split(x: torch.Tensor, split: torch.Tensor | list[int] | None, axis: int,
              n_out: int) -> tuple[torch.Tensor, ...]:
    if split is None:
        size = math.ceil(x.shape[axis] / n_out)
        return tuple(torch.split(x, size, dim=axis))
    sizes = _ints(split) if isinstance(split, torch.Tensor) else list(split)
    return tuple(torch.split(x, sizes, dim=axis))


def _op_shape(x: torch.Tensor, start: int, end: int | None) -> torch.Tensor:
    return torch.tensor(list(x.shape)[start:end], dtype=torch.int64)


def _op_size(x: torch.Tensor) -> torch.Tensor:
    return torch.tensor(x.numel(), dtype=torch.int64)


def _op_cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x.to(dtype)


def _op_cast_like(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return x.to(like.dtype)


def _op_constant_of_shape(shape: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    return torch.full(_ints(shape), value.reshape(-1)[0].item(), dtype=value.dtype)


def _op_expand(x: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    """ONNX Expand broadcasts both ways (a 1 in ``shape`` keeps x's dimension)."""
    return x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(_ints(shape))))


def _op_range(start: torch.Tensor, limit: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    return torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype)


def _op_trilu(x: torch.Tensor, k: torch.Tensor | None, upper: int) -> torch.Tensor:
    diag = 0 if k is None else int(k.reshape(-1)[0].item())
    return torch.triu(x, diag) if upper else torch.tril(x, diag)


def _op_layer_norm(x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, axis: int,
                   eps: float) -> torch.Tensor:
    axis %= x.dim()
    return F.layer_norm(x, tuple(x.shape[axis:]), scale, bias, eps)


def _op_softmax(x: torch.Tensor, axis: int, opset: int, log: bool = False) -> torch.Tensor:
    fn = torch.log_softmax if log else torch.softmax
    if opset >= 13:
        return fn(x, dim=axis)
    axis %= x.dim()  # opset < 13: coerce to 2-D at ``axis`` and normalise the rows
    flat = x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1)
    return fn(flat, dim=1).reshape(x.shape)


def _op_reduce(x: torch.Tensor, axes: list[int] | torch.Tensor | None, keepdims: int,
               noop_with_empty_axes: int, kind: str) -> torch.Tensor:
    axes = _ints(axes) if isinstance(axes, torch.Tensor) else axes
    if not axes:
        if noop_with_empty_axes:
            return x
        axes = list(range(x.dim()))
    dims = tuple(a % x.dim() for a in axes)
    keep = bool(keepdims)
    if kind == "mean":
        return x.mean(dim=dims, keepdim=keep)
    if kind == "sum":
        return x.sum(dim=dims, keepdim=keep)
    if kind == "max":
        return x.amax(dim=dims, keepdim=keep)
    if kind == "min":
        return x.amin(dim=dims, keepdim=keep)
    if kind == "prod":
        y = x
        for d in sorted(dims, reverse=True):
            y = y.prod(dim=d, keepdim=keep)
        return y
    raise ValueError(kind)


def _op_clip(x: torch.Tensor, lo: torch.Tensor | None, hi: torch.Tensor | None) -> torch.Tensor:
    return torch.clamp(x, min=lo, max=hi)


def _op_flatten(x: torch.Tensor, axis: int) -> torch.Tensor:
    axis = axis + x.dim() if axis < 0 else axis
    lead = int(np.prod(x.shape[:axis], dtype=np.int64))
    return x.reshape(lead, -1)


def _op_cumsum(x: torch.Tensor, axis: torch.Tensor, exclusive: int, reverse: int) -> torch.Tensor:
    a = int(axis.reshape(-1)[0].item())
    y = x.flip(a) if reverse else x
    out = torch.cumsum(y, dim=a).to(x.dtype)
    if exclusive:
        out = out - y
    return out.flip(a) if reverse else out


def _op_gelu(x: torch.Tensor, approximate: str) -> torch.Tensor:
    return F.gelu(x, approximate=approximate)


def _op_variadic(fn: Callable, *xs: torch.Tensor) -> torch.Tensor:
    out = xs[0]
    for x in xs[1:]:
        out = fn(out, x)
    return out


def _op_identity(x: Any) -> Any:
    return x


# --------------------------------------------------------------------------------------
# the importer
# --------------------------------------------------------------------------------------
_SIMPLE: dict[str, Callable] = {
    "Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "MatMul": torch.matmul,
    "Sqrt": torch.sqrt, "Erf": torch.erf, "Tanh": torch.tanh, "Relu": torch.relu,
    "Neg": torch.neg, "Exp": torch.exp, "Log": torch.log, "Abs": torch.abs,
    "Sigmoid": torch.sigmoid, "Reciprocal": torch.reciprocal, "Floor": torch.floor,
    "Ceil": torch.ceil, "Sin": torch.sin, "Cos": torch.cos, "Sign": torch.sign,
    "Equal": torch.eq, "Less": torch.lt, "LessOrEqual": torch.le, "Greater": torch.gt,
    "GreaterOrEqual": torch.ge, "Not": torch.logical_not, "And": torch.logical_and,
    "Or": torch.logical_or, "Xor": torch.logical_xor, "Where": torch.where,
    "IsNaN": torch.isnan, "IsInf": torch.isinf, "Div": _op_div, "Pow": _op_pow,
    "Identity": _op_identity, "Size": _op_size, "CastLike": _op_cast_like,
}
_REDUCE = {"ReduceMean": "mean", "ReduceSum": "sum", "ReduceMax": "max", "ReduceMin": "min",
           "ReduceProd": "prod"}
# ops whose ``axes`` moved from attribute to input at this opset
_AXES_AS_INPUT_SINCE = {"ReduceSum": 13, "Unsqueeze": 13, "Squeeze": 13, "ReduceMean": 18,
                        "ReduceMax": 18, "ReduceMin": 18, "ReduceProd": 18}
SUPPORTED_OPS = tuple(sorted(set(_SIMPLE) | set(_REDUCE) | {
    "Constant", "Gemm", "Reshape", "Transpose", "Unsqueeze", "Squeeze", "Gather",
    "GatherElements", "Concat", "Slice", "Split", "Shape", "Cast", "ConstantOfShape",
    "Expand", "Range", "Trilu", "LayerNormalization", "Softmax", "LogSoftmax", "Dropout",
    "Clip", "Flatten", "CumSum", "Max", "Min", "Sum", "Gelu",
}))


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _tensor(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(arr, copy=True))


def _constant_value(node: onnx.NodeProto) -> torch.Tensor:
    a = _attrs(node)
    if "value" in a:
        return _tensor(numpy_helper.to_array(a["value"]))
    if "value_float" in a:
        return torch.tensor(a["value_float"], dtype=torch.float32)
    if "value_floats" in a:
        return torch.tensor(list(a["value_floats"]), dtype=torch.float32)
    if "value_int" in a:
        return torch.tensor(a["value_int"], dtype=torch.int64)
    if "value_ints" in a:
        return torch.tensor(list(a["value_ints"]), dtype=torch.int64)
    raise CompileError(f"unsupported op Constant at node {_label(node)} (attributes {list(a)})")


def _label(node: onnx.NodeProto) -> str:
    return node.name or f"<unnamed, output {node.output[0] if node.output else '?'}>"


class _Importer:
    """Builds an fx graph from an ONNX graph, node by node in topological order."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                          1)
        self.graph = fx.Graph()
        self.root = nn.Module()
        self.env: dict[str, fx.Node] = {}
        self._attr_names: set[str] = set()
        self.initializer_names: dict[str, str] = {}  # ONNX name → buffer name
        self.consumed: set[str] = set()  # tensor names some node or the graph output reads

    def _buffer(self, onnx_name: str, value: torch.Tensor) -> fx.Node:
        base = re.sub(r"\W", "_", onnx_name).strip("_") or "const"
        if base[0].isdigit():
            base = "c_" + base
        name, i = base, 1
        while name in self._attr_names or hasattr(self.root, name):
            i += 1
            name = f"{base}_{i}"
        self._attr_names.add(name)
        self.root.register_buffer(name, value)
        self.initializer_names[onnx_name] = name
        return self.graph.get_attr(name)

    def _call(self, fn: Callable, args: tuple, name: str) -> fx.Node:
        # fx de-duplicates the name itself; keeping the ONNX name makes errors traceable
        label = re.sub(r"\W", "_", name).strip("_") if name else None
        return self.graph.create_node("call_function", fn, args, {}, name=label or None)

    def run(self) -> fx.GraphModule:
        g = self.model.graph
        self.consumed = {i for n in g.node for i in n.input} | {o.name for o in g.output}
        for init in g.initializer:
            self.env[init.name] = self._buffer(init.name, _tensor(numpy_helper.to_array(init)))
        for inp in g.input:
            if inp.name not in self.env:
                self.env[inp.name] = self.graph.placeholder(re.sub(r"\W", "_", inp.name))
        for node in g.node:
            self._node(node)
        outs = []
        for o in g.output:
            if o.name not in self.env:
                raise CompileError(f"graph output {o.name!r} is produced by no node")
            outs.append(self.env[o.name])
        self.graph.output(outs[0] if len(outs) == 1 else tuple(outs))
        gm = fx.GraphModule(self.root, self.graph, class_name="ImportedOnnx")
        gm.onnx_initializer_names = dict(self.initializer_names)
        return gm

    def _in(self, node: onnx.NodeProto, i: int) -> fx.Node | None:
        """The fx value of input ``i`` (None when absent or left empty: optional input)."""
        if i >= len(node.input) or not node.input[i]:
            return None
        name = node.input[i]
        if name not in self.env:
            raise CompileError(f"node {_label(node)}: input {name!r} is not defined before it")
        return self.env[name]

    def _node(self, node: onnx.NodeProto) -> None:
        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            raise CompileError(f"unsupported op {node.domain}::{op} at node {_label(node)}")
        if op not in SUPPORTED_OPS:
            raise CompileError(f"unsupported op {op} at node {_label(node)}")
        a = _attrs(node)
        ins = [self._in(node, i) for i in range(len(node.input))]
        name = node.name
        n_out = len(node.output)
        extra = [o for o in node.output[1:] if o and o in self.consumed]
        if op == "Constant":
            self.env[node.output[0]] = self._buffer(node.output[0], _constant_value(node))
            return
        if op == "Split":
            split = ins[1] if len(ins) > 1 and ins[1] is not None else a.get("split")
            axis = a.get("axis", 0)
            parts = self._call(_op_split, (ins[0], split, axis, n_out), name)
            for i, out in enumerate(node.output):
                if out:
                    self.env[out] = self.graph.call_function(operator.getitem, (parts, i))
            return
        if extra:  # e.g. LayerNormalization's Mean/InvStdDev, Dropout's mask
            raise CompileError(
                f"unsupported op {op} at node {_label(node)}: only its first output is "
                f"supported, but {extra} are used")
        self.env[node.output[0]] = self._single(op, node, ins, a, name)

    def _single(self, op: str, node: onnx.NodeProto, ins: list, a: dict, name: str) -> fx.Node:
        c = self._call
        if op in _SIMPLE:
            return c(_SIMPLE[op], tuple(ins), name)
        if op in ("Max", "Min", "Sum"):
            fn = {"Max": torch.maximum, "Min": torch.minimum, "Sum": torch.add}[op]
            return c(_op_variadic, (fn, *ins), name)
        if op == "Gemm":
            return c(_op_gemm, (ins[0], ins[1], ins[2] if len(ins) > 2 else None,
                                float(a.get("alpha", 1.0)), float(a.get("beta", 1.0)),
                                int(a.get("transA", 0)), int(a.get("transB", 0))), name)
        if op == "Reshape":
            return c(_op_reshape, (ins[0], ins[1], int(a.get("allowzero", 0))), name)
        if op == "Transpose":
            perm = list(a["perm"]) if "perm" in a else None
            return c(_op_transpose, (ins[0], perm), name)
        if op in ("Unsqueeze", "Squeeze"):
            fn = _op_unsqueeze if op == "Unsqueeze" else _op_squeeze
            if self.opset >= _AXES_AS_INPUT_SINCE[op]:
                axes = ins[1] if len(ins) > 1 else None
            else:
                axes = list(a["axes"]) if "axes" in a else None
            return c(fn, (ins[0], axes), name)
        if op in _REDUCE:
            if self.opset >= _AXES_AS_INPUT_SINCE[op]:
                axes = ins[1] if len(ins) > 1 else None
            else:
                axes = list(a["axes"]) if "axes" in a else None
            return c(_op_reduce, (ins[0], axes, int(a.get("keepdims", 1)),
                                  int(a.get("noop_with_empty_axes", 0)), _REDUCE[op]), name)
        if op == "Gather":
            return c(_op_gather, (ins[0], ins[1], int(a.get("axis", 0))), name)
        if op == "GatherElements":
            return c(_op_gather_elements, (ins[0], ins[1], int(a.get("axis", 0))), name)
        if op == "Concat":
            return c(_op_concat, (int(a["axis"]), *ins), name)
        if op == "Slice":
            if self.opset < 10:
                starts = self._buffer(f"{name}_starts", torch.tensor(list(a["starts"])))
                ends = self._buffer(f"{name}_ends", torch.tensor(list(a["ends"])))
                axes = (self._buffer(f"{name}_axes", torch.tensor(list(a["axes"])))
                        if "axes" in a else None)
                return c(_op_slice, (ins[0], starts, ends, axes, None), name)
            pad = ins + [None] * (5 - len(ins))
            return c(_op_slice, tuple(pad[:5]), name)
        if op == "Shape":
            return c(_op_shape, (ins[0], int(a.get("start", 0)), a.get("end")), name)
        if op == "Cast":
            to = int(a["to"])
            if to not in _ONNX_TO_TORCH_DTYPE:
                raise CompileError(f"unsupported op Cast at node {_label(node)}: to type {to}")
            return c(_op_cast, (ins[0], _ONNX_TO_TORCH_DTYPE[to]), name)
        if op == "ConstantOfShape":
            value = (_tensor(numpy_helper.to_array(a["value"])) if "value" in a
                     else torch.zeros(1, dtype=torch.float32))
            return c(_op_constant_of_shape, (ins[0], self._buffer(f"{name}_value", value)), name)
        if op == "Expand":
            return c(_op_expand, (ins[0], ins[1]), name)
        if op == "Range":
            return c(_op_range, (ins[0], ins[1], ins[2]), name)
        if op == "Trilu":
            return c(_op_trilu, (ins[0], ins[1] if len(ins) > 1 else None,
                                 int(a.get("upper", 1))), name)
        if op == "LayerNormalization":
            return c(_op_layer_norm, (ins[0], ins[1], ins[2] if len(ins) > 2 else None,
                                      int(a.get("axis", -1)), float(a.get("epsilon", 1e-5))),
                     name)
        if op in ("Softmax", "LogSoftmax"):
            axis = int(a.get("axis", -1 if self.opset >= 13 else 1))
            return c(_op_softmax, (ins[0], axis, self.opset, op == "LogSoftmax"), name)
        if op == "Dropout":  # inference: identity
            return c(_op_identity, (ins[0],), name)
        if op == "Clip":
            if self.opset < 11:
                lo = a.get("min")
                hi = a.get("max")
                return c(torch.clamp, (ins[0], lo, hi), name)
            return c(_op_clip, (ins[0], ins[1] if len(ins) > 1 else None,
                                ins[2] if len(ins) > 2 else None), name)
        if op == "Flatten":
            return c(_op_flatten, (ins[0], int(a.get("axis", 1))), name)
        if op == "CumSum":
            return c(_op_cumsum, (ins[0], ins[1], int(a.get("exclusive", 0)),
                                  int(a.get("reverse", 0))), name)
        if op == "Gelu":
            return c(_op_gelu, (ins[0], str(a.get("approximate", "none"))), name)
        raise CompileError(f"unsupported op {op} at node {_label(node)}")  # pragma: no cover


def _load(path: Path | str) -> onnx.ModelProto:
    path = Path(path)
    if not path.is_file():
        raise CompileError(f"ONNX file {str(path)!r} does not exist")
    try:
        return onnx.load(str(path))
    except Exception as e:  # protobuf raises several unrelated types for garbage
        raise CompileError(f"{path}: not a readable ONNX model ({e})") from e


def import_onnx(path: Path | str) -> fx.GraphModule:
    """Import a float ONNX graph as a ``torch.fx.GraphModule`` (SPEC C1).

    Inputs become placeholders (in graph order), initializers and ``Constant`` nodes
    ``get_attr`` buffers (``gm.onnx_initializer_names`` maps ONNX name → buffer name),
    every other node one ``call_function``. Call it like the ONNX model:
    ``gm(*inputs)``; several outputs come back as a tuple. An op outside
    ``SUPPORTED_OPS`` raises ``CompileError("unsupported op OP at node NAME")``.
    """
    model = _load(path)
    gm = _Importer(model).run()
    gm.eval()
    return gm


# --------------------------------------------------------------------------------------
# canonical transformers through ONNX
# --------------------------------------------------------------------------------------
def export_canonical_onnx(model: CanonicalTransformer, path: Path | str, seq_len: int) -> Path:
    """Export a ``CanonicalTransformer`` to ONNX in the form ``canonical_from_onnx`` reads.

    The graph takes ``input_ids`` int64 [batch, seq] (both dynamic; the example has
    ``seq_len`` tokens) and returns the model's forward output. Constant folding is off so
    every parameter stays an initializer named by its ``state_dict`` key (folding would
    transpose and rename the linear weights); the ``TransformerConfig`` goes into
    ``metadata_props`` as JSON.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not 1 <= seq_len <= model.cfg.n_positions:
        raise CompileError(f"seq_len {seq_len} outside 1..{model.cfg.n_positions}")
    empty = [i for i, blk in enumerate(model.blocks) if blk.n_kept == 0]
    if empty:
        # Zero-width projections crash the TorchScript exporter (SIGFPE in the tracer),
        # which would take the whole process down: refuse with a message instead.
        raise CompileError(f"cannot export to ONNX: layers {empty} keep no attention heads")
    was_training = model.training
    model.eval()
    ids = torch.zeros(1, seq_len, dtype=torch.long)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript exporter deprecation chatter
            # dynamo=False: the dynamo exporter needs onnxscript, which we do not ship
            torch.onnx.export(
                model, (ids,), str(tmp), dynamo=False, opset_version=EXPORT_OPSET,
                do_constant_folding=False, input_names=["input_ids"], output_names=["output"],
                dynamic_axes={"input_ids": {0: "batch", 1: "seq"}},
            )
        onnx_model = onnx.load(str(tmp))
        onnx.helper.set_model_props(onnx_model, {
            META_FORMAT: FORMAT,
            META_CONFIG: json.dumps(model.cfg.to_dict(), sort_keys=True),
            META_HEAD: json.dumps(model.lm_head is not None),
            META_SEQ: json.dumps(int(seq_len)),
        })
        onnx.save_model(onnx_model, str(tmp))
        tmp.replace(path)  # never leave a half-written file behind
    except Exception as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, CompileError):
            raise
        raise CompileError(f"ONNX export of the canonical model failed: {e}") from e
    finally:
        model.train(was_training)
    return path


def _named_constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers by name, plus names the exporter aliased with ``Identity``.

    The TorchScript exporter deduplicates initializers with equal values (tied embeddings,
    all-ones head gates) and re-creates the dropped names as ``Identity`` outputs.
    """
    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    changed = True
    while changed:
        changed = False
        for n in model.graph.node:
            if (n.op_type == "Identity" and n.input and n.input[0] in values
                    and n.output[0] not in values):
                values[n.output[0]] = values[n.input[0]]
                changed = True
    return values


def canonical_from_onnx(path: Path | str, *, verify: bool = True) -> CanonicalTransformer:
    """Rebuild the ``CanonicalTransformer`` from an ONNX file written by
    ``export_canonical_onnx``.

    With ``verify`` the imported fx graph and the rebuilt model are run on one probe input
    and must agree, so a file whose graph was edited after export (the metadata no longer
    describing what the graph computes) is refused instead of compiled wrongly.
    """
    model = _load(path)
    props = {p.key: p.value for p in model.metadata_props}
    if props.get(META_FORMAT) != FORMAT or META_CONFIG not in props:
        raise CompileError(
            f"{path}: only Cerberus-exported transformer ONNX files can be compiled (this "
            f"one has no {META_CONFIG!r} metadata; export it with export_canonical_onnx, or "
            "compile the source model instead). import_onnx() still gives a runnable fx graph."
        )
    try:
        cfg = TransformerConfig(**json.loads(props[META_CONFIG]))
    except (TypeError, ValueError) as e:
        raise CompileError(f"{path}: bad transformer config in metadata ({e})") from e
    out = CanonicalTransformer(cfg)
    if not json.loads(props.get(META_HEAD, "true")):
        out.lm_head = None
    consts = _named_constants(model)
    state = out.state_dict()
    missing = [k for k in state if k not in consts]
    if missing:
        raise CompileError(f"{path}: weights {missing[:5]} missing from the ONNX initializers")
    loaded = {}
    for k, ref in state.items():
        arr = consts[k]
        if tuple(arr.shape) != tuple(ref.shape):
            raise CompileError(f"{path}: weight {k} has shape {tuple(arr.shape)}, the config "
                               f"implies {tuple(ref.shape)}")
        loaded[k] = torch.from_numpy(np.array(arr, copy=True)).to(ref.dtype)
    out.load_state_dict(loaded)
    out.eval()
    if verify:
        _verify(out, import_onnx(path), int(json.loads(props.get(META_SEQ, "8"))), path)
    return out


def _verify(model: CanonicalTransformer, gm: fx.GraphModule, seq_len: int, path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    t = max(1, min(seq_len, model.cfg.n_positions))
    ids = torch.randint(0, model.cfg.vocab_size, (2, t), generator=gen)
    with torch.no_grad():
        want = model(ids)
        got = gm(ids)
    if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-4, atol=1e-4):
        raise CompileError(f"{path}: the ONNX graph does not compute what its Cerberus metadata "
                           "and weights describe (edited after export?)")
