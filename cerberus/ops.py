"""The integer graph's ops, each defined once (SPEC C6, C7; issue #12).

An op of ``cerberus.ir`` is one :class:`OpDef` in :data:`OPS`: its output shape, its NumPy
meaning (the bit-exact reference), its PBS count as concrete-python runs it, what the cost
model charges besides PBS, and its lowerings to concrete-python (the FHE circuit), to ONNX
(the artefact's plaintext export) and to the Triton kernels of the simulator. Every
interpreter of the graph reads this table and none asks an op's name, so adding an op is
one entry here plus its tests (tests/cerberus/test_ops.py checks that every entry is
complete and that its shape rule agrees with its NumPy evaluation).

Why the hooks are handed what they need instead of importing it: this module imports only
NumPy, so ``import cerberus.ir`` stays light and no import cycle can form. concrete-python is
imported inside the one hook that needs it (only a compilation calls it); the ONNX hooks
write through the emitter ``cerberus.onnx_export`` passes in; the Triton hooks are given the
kernel module (``cerberus.kernels.triton_ops``) by ``cerberus.kernels``.

Each section below is one op (or a family sharing its rules), read top to bottom.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, NamedTuple, Protocol

import numpy as np

Shape = tuple[int, ...]


class RangeOverflow(ValueError):
    """A value left the range its node was compiled for (the FHE result would be wrong)."""


class UnknownOp(ValueError):
    """A node names an op that is not in :data:`OPS`."""


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


# -- what the hooks read ---------------------------------------------------------------------
class NodeLike(Protocol):
    """What a hook reads of a ``cerberus.ir.Node`` (this module imports no Cerberus module)."""

    name: str
    op: str
    inputs: list[str]
    lo: int
    hi: int
    attrs: dict[str, Any]


class GraphLike(Protocol):
    """What a cost hook reads of a ``cerberus.ir.IntGraph``."""

    output: str

    def __getitem__(self, name: str) -> NodeLike: ...

    def consumers(self, name: str) -> list[NodeLike]: ...


class OnnxNode(Protocol):
    """The ONNX emitter of one IR node (``cerberus.onnx_export``): it names every tensor, so
    a hook only says which ONNX ops compute the node's value."""

    def const(self, key: str, value: Any) -> str:
        """An int64 initializer private to this node."""

    def step(self, op_type: str, inputs: list[str], key: str, **attrs: Any) -> str:
        """An intermediate ONNX node; returns its output tensor."""

    def result(self, op_type: str, inputs: list[str], **attrs: Any) -> str:
        """The ONNX node whose output is this IR node's value."""


@dataclass
class PbsContext:
    """What a PBS rule reads: every shape, each node's live readers, the graph's output, and
    the roundings already paid (concrete computes the same rounding of a value once)."""

    shapes: dict[str, Shape]
    readers: dict[str, list[NodeLike]]
    output: str
    rounded: set[tuple[str, int]] = field(default_factory=set)


class Work(NamedTuple):
    """What the cost model charges besides PBS: clear multiply-adds and encrypted additions."""

    clear_macs: int = 0
    adds: int = 0


Producers = Sequence[NodeLike | None]


@dataclass(frozen=True)
class OpDef:
    """One op: its meaning and every rule and lowering the interpreters of the graph need.

    ``triton`` is ``None`` where no kernel exists: the simulator's Triton backend then runs
    ``numpy`` (the same bits). ``pbs``/``pbs_bits`` are ``None`` for leveled ops (no PBS).
    """

    name: str
    meaning: str  # one line, as in the table of ``cerberus.ir``'s docstring
    fhe_cost: str  # the rule of thumb of that table; ``pbs`` is the exact count
    shape: Callable[[NodeLike, list[Shape]], Shape]
    numpy: Callable[[NodeLike, list[np.ndarray]], np.ndarray]
    # (node, traced arguments, producer nodes, overflow protection of a rounding) → traced
    concrete: Callable[[NodeLike, list[Any], Producers, bool], Any]
    onnx: Callable[[OnnxNode, NodeLike, list[str], int], str]  # (…, output rank)
    work: Callable[[NodeLike, list[Shape], Shape], Work]
    pbs: Callable[[NodeLike, PbsContext], int] | None = None
    # (node, graph, extra bits of a product) → the input width its PBS are priced at
    pbs_bits: Callable[[NodeLike, GraphLike, int], int] | None = None
    # (kernel module, node, arguments, producer nodes) → the node's value
    triton: Callable[[ModuleType, NodeLike, list[np.ndarray], Producers], np.ndarray] | None = None
    # (kernel module, node, producer nodes, their shapes) → worst int32 intermediate
    int32_bound: Callable[[ModuleType, NodeLike, Producers, list[Shape]], int] | None = None
    # concrete folds the node into a constant (no PBS; what only feeds it is dead code)
    folds_to_constant: Callable[[NodeLike], bool] = lambda node: False
    source: bool = False  # its value is the graph's input, not computed from other nodes
    lookup: bool = False  # a table lookup: attrs table, lsbs, offset
    product: bool = False  # an encrypted × encrypted product

    @property
    def bootstraps(self) -> bool:
        """Whether the op can cost programmable bootstraps under FHE."""
        return self.pbs is not None


# -- shared rules ----------------------------------------------------------------------------
def _size(shape: Shape) -> int:
    return int(np.prod(shape))


def _absmax(node: NodeLike | None) -> int | None:
    """The magnitude bound of a node's compiled range (the Triton int32 proofs use it)."""
    return None if node is None else max(abs(int(node.lo)), abs(int(node.hi)))


def _traced(fn: Callable[[NodeLike, list[Any]], Any]) -> Callable[..., Any]:
    """The concrete lowering of an op whose NumPy expression concrete traces as it is."""
    return lambda node, args, producers, protect: fn(node, args)


def _onnx_op(op_type: str) -> Callable[[OnnxNode, NodeLike, list[str], int], str]:
    """The ONNX lowering of an op that is one ONNX op of the same operands."""
    return lambda e, node, ins, rank: e.result(op_type, ins)


def _same_shape(node: NodeLike, ins: list[Shape]) -> Shape:
    return ins[0]


def _broadcast(node: NodeLike, ins: list[Shape]) -> Shape:
    return tuple(np.broadcast_shapes(*ins))


def _no_work(node: NodeLike, ins: list[Shape], out: Shape) -> Work:
    return Work()


def _adds(node: NodeLike, ins: list[Shape], out: Shape) -> Work:
    return Work(adds=_size(out))


# -- input -----------------------------------------------------------------------------------
INPUT = OpDef(
    "input", "encrypted input from the client", "–",
    shape=_same_shape,
    numpy=lambda node, args: np.asarray(args[0], dtype=np.int64),
    concrete=lambda node, args, producers, protect: args[0],
    onnx=lambda e, node, ins, rank: e.result("Identity", ins),
    work=_no_work,
    source=True,
)


# -- linear: clear weights -------------------------------------------------------------------
def _linear(node: NodeLike, args: list[Any]) -> Any:
    a = node.attrs
    y = args[0] @ a["weight"]
    if a.get("mult") is not None:
        y = y * a["mult"]
    if a.get("bias") is not None:
        y = y + a["bias"]
    return y


def _linear_onnx(e: OnnxNode, node: NodeLike, ins: list[str], rank: int) -> str:
    """int64 ``MatMul`` (+ ``Mul`` by the per-channel multipliers, + ``Add`` bias):
    onnxruntime's CPU provider has int64 ``MatMul``, so no float detour is needed."""
    a = node.attrs
    y = e.step("MatMul", [ins[0], e.const("weight", a["weight"])], "matmul")
    if a.get("mult") is not None:
        y = e.step("Mul", [y, e.const("mult", a["mult"])], "mult")
    if a.get("bias") is not None:
        y = e.step("Add", [y, e.const("bias", a["bias"])], "bias")
    return e.result("Identity", [y])


def _linear_triton(k: ModuleType, node: NodeLike, args: list[np.ndarray],
                   producers: Producers) -> np.ndarray:
    a = node.attrs
    return k.int_matmul(args[0], a["weight"], a.get("mult"), a.get("bias"),
                        a_absmax=_absmax(producers[0]))


def _linear_bound(k: ModuleType, node: NodeLike, producers: Producers,
                  shapes: list[Shape]) -> int:
    a = node.attrs
    return k.int32_bound(_absmax(producers[0]) or 0, a["weight"], a.get("mult"), a.get("bias"))


LINEAR = OpDef(
    "linear", "``(x @ W) * mult + bias``, W/mult/bias clear", "leveled (no PBS)",
    shape=lambda node, ins: ins[0][:-1] + (int(node.attrs["weight"].shape[1]),),
    numpy=_linear,
    concrete=_traced(_linear),
    onnx=_linear_onnx,
    work=lambda node, ins, out: Work(clear_macs=_size(out) * int(node.attrs["weight"].shape[0])),
    triton=_linear_triton,
    int32_bound=_linear_bound,
)


# -- mul_const / add_const: clear constants, NumPy broadcasting (= ONNX's) -------------------
def _const_shape(node: NodeLike, ins: list[Shape]) -> Shape:
    return tuple(np.broadcast_shapes(ins[0], np.shape(node.attrs["const"])))


def _mul_const(node: NodeLike, args: list[Any]) -> Any:
    return args[0] * node.attrs["const"]


def _add_const(node: NodeLike, args: list[Any]) -> Any:
    return args[0] + node.attrs["const"]


MUL_CONST = OpDef(
    "mul_const", "``x * C``, C clear", "leveled",
    shape=_const_shape, numpy=_mul_const, concrete=_traced(_mul_const),
    onnx=lambda e, node, ins, rank: e.result("Mul", [ins[0], e.const("const",
                                                                     node.attrs["const"])]),
    work=_no_work,
)

ADD_CONST = OpDef(
    "add_const", "``x + C``, C clear", "leveled",
    shape=_const_shape, numpy=_add_const, concrete=_traced(_add_const),
    onnx=lambda e, node, ins, rank: e.result("Add", [ins[0], e.const("const",
                                                                     node.attrs["const"])]),
    work=_no_work,
)


# -- add / sub: both encrypted ---------------------------------------------------------------
def _add(node: NodeLike, args: list[Any]) -> Any:
    return args[0] + args[1]


def _sub(node: NodeLike, args: list[Any]) -> Any:
    return args[0] - args[1]


ADD = OpDef(
    "add", "``a + b`` (both encrypted, broadcasting)", "leveled",
    shape=_broadcast, numpy=_add, concrete=_traced(_add), onnx=_onnx_op("Add"), work=_adds,
)

SUB = OpDef(
    "sub", "``a - b`` (both encrypted, broadcasting)", "leveled",
    shape=_broadcast, numpy=_sub, concrete=_traced(_sub), onnx=_onnx_op("Sub"), work=_adds,
)


# -- sum, slice, concat, transpose: reshaping the last axes ----------------------------------
def _sum(node: NodeLike, args: list[Any]) -> Any:
    return np.sum(args[0], axis=-1, keepdims=True)


def _slice(node: NodeLike, args: list[Any]) -> Any:
    # concrete indexes no Ellipsis: spell out the leading axes
    lead = (slice(None),) * (len(args[0].shape) - 1)
    return args[0][(*lead, slice(int(node.attrs["start"]), int(node.attrs["stop"])))]


def _concat(node: NodeLike, args: list[Any]) -> Any:
    return np.concatenate(tuple(args), axis=len(args[0].shape) - 1)


def _transpose(node: NodeLike, args: list[Any]) -> Any:
    axes = list(range(len(args[0].shape)))
    axes[-1], axes[-2] = axes[-2], axes[-1]
    return np.transpose(args[0], axes)


def _transpose_shape(node: NodeLike, ins: list[Shape]) -> Shape:
    if len(ins[0]) < 2:
        raise ValueError(f"node {node.name}: transpose of a rank-{len(ins[0])} value")
    return ins[0][:-2] + (ins[0][-1], ins[0][-2])


def _slice_onnx(e: OnnxNode, node: NodeLike, ins: list[str], rank: int) -> str:
    a = node.attrs
    return e.result("Slice", [ins[0], e.const("start", np.array([int(a["start"])])),
                              e.const("stop", np.array([int(a["stop"])])),
                              e.const("axes", np.array([-1]))])


def _transpose_onnx(e: OnnxNode, node: NodeLike, ins: list[str], rank: int) -> str:
    # the permutation needs the rank, which the exporter propagates from the input
    return e.result("Transpose", ins, perm=list(range(rank - 2)) + [rank - 1, rank - 2])


SUM = OpDef(
    "sum", "sum over the last axis (keepdims)", "leveled",
    shape=lambda node, ins: ins[0][:-1] + (1,),
    numpy=_sum, concrete=_traced(_sum),
    onnx=lambda e, node, ins, rank: e.result(
        "ReduceSum", [ins[0], e.const("axes", np.array([-1]))], keepdims=1),
    work=lambda node, ins, out: Work(adds=_size(ins[0])),
)

SLICE = OpDef(
    "slice", "columns ``start:stop`` of the last axis", "free",
    shape=lambda node, ins: ins[0][:-1] + (int(node.attrs["stop"]) - int(node.attrs["start"]),),
    numpy=_slice, concrete=_traced(_slice), onnx=_slice_onnx, work=_no_work,
)

CONCAT = OpDef(
    "concat", "join along the last axis", "free",
    shape=lambda node, ins: ins[0][:-1] + (sum(s[-1] for s in ins),),
    numpy=_concat, concrete=_traced(_concat),
    onnx=lambda e, node, ins, rank: e.result("Concat", ins, axis=-1),
    work=_no_work,
)

TRANSPOSE = OpDef(
    "transpose", "swap the last two axes", "free",
    shape=_transpose_shape, numpy=_transpose, concrete=_traced(_transpose),
    onnx=_transpose_onnx, work=_no_work,
)


# -- lut: rounded table lookup ---------------------------------------------------------------
def lookup_index_bits(node: NodeLike) -> int:
    """Width of a lookup's table index (the input width of its PBS)."""
    offset = int(node.attrs["offset"])
    return width(offset, offset + len(node.attrs["table"]) - 1)


def _fused_into_reader(node: NodeLike, readers: Sequence[NodeLike], output: str) -> bool:
    """concrete fuses a lookup into its reader when that is its only reader and a lookup
    without rounding: the two tables become one PBS (the first keeps its rounding)."""
    if node.name == output or len(readers) != 1:
        return False
    reader = readers[0]
    return op_def(reader.op, reader.name).lookup and int(reader.attrs["lsbs"]) == 0


def _lut(node: NodeLike, args: list[np.ndarray]) -> np.ndarray:
    a = node.attrs
    idx = round_lsbs(args[0], int(a["lsbs"])) - int(a["offset"])
    table = a["table"]
    if idx.size and (idx.min() < 0 or idx.max() >= len(table)):
        raise RangeOverflow(
            f"node {node.name}: lookup index {int(idx.min())}..{int(idx.max())} outside "
            f"its table of {len(table)} entries"
        )
    return table[idx]


def _lut_concrete(node: NodeLike, args: list[Any], producers: Producers, protect: bool) -> Any:
    """``round_bit_pattern`` then a univariate table; ``protect`` is concrete's
    ``overflow_protection`` for the rounding, off where rounding narrows the input
    (``cerberus.fhe.concrete_backend.narrowing_roundings``)."""
    from concrete import fhe

    table = np.asarray(node.attrs["table"], dtype=np.int64)
    lsbs, offset = int(node.attrs["lsbs"]), int(node.attrs["offset"])
    last = len(table) - 1
    x = args[0]
    if lsbs:
        x = fhe.round_bit_pattern(x, lsbs_to_remove=lsbs, overflow_protection=protect)
    # concrete evaluates the function on every value the input's width can hold; indices
    # beyond the compiled range are clipped there (the simulator refuses them)
    return fhe.univariate(lambda v: table[np.clip((v >> lsbs) - offset, 0, last)])(x)


def _lut_onnx(e: OnnxNode, node: NodeLike, ins: list[str], rank: int) -> str:
    """``(x + 2**(lsbs-1)) >> lsbs``, ``Sub offset``, ``Gather`` from the int64 table.

    ONNX ``BitShift`` is defined only on unsigned types and integer ``Div`` truncates toward
    zero, while NumPy's ``>>`` on int64 floors. So ``floor(y / p) = (y - Mod(y, p)) / p``
    with ``Mod(fmod=0)``, whose result takes the divisor's sign: ``y - Mod(y, p)`` is an
    exact multiple of ``p``, and the truncating ``Div`` is exact for negative ``y`` too.
    """
    a = node.attrs
    lsbs = int(a["lsbs"])
    y = ins[0]
    if lsbs > 0:
        p = e.const("pow2", np.array(1 << lsbs))
        y = e.step("Add", [y, e.const("half", np.array(1 << (lsbs - 1)))], "tie_up")
        r = e.step("Mod", [y, p], "mod", fmod=0)
        y = e.step("Sub", [y, r], "floor_mult")
        y = e.step("Div", [y, p], "shift")  # exact division
    idx = e.step("Sub", [y, e.const("offset", np.array(int(a["offset"])))], "index")
    return e.result("Gather", [e.const("table", a["table"]), idx], axis=0)


def _lut_pbs(node: NodeLike, ctx: PbsContext) -> int:
    """``lsbs`` PBS per element for an exact rounding (once per value and ``lsbs``), then
    one per element for the table unless it is fused into its reader's."""
    size = _size(ctx.shapes[node.name])
    lsbs = int(node.attrs["lsbs"])
    pbs = 0
    if lsbs and (node.inputs[0], lsbs) not in ctx.rounded:
        ctx.rounded.add((node.inputs[0], lsbs))
        pbs += lsbs * size
    fused = _fused_into_reader(node, ctx.readers[node.name], ctx.output)
    return pbs + (0 if fused else size)


def _lut_pbs_bits(node: NodeLike, graph: GraphLike, product_extra_bits: int) -> int:
    """The table-index width; for a lookup fused with the one before it (that one read by it
    alone), the single PBS reads that lookup's index, so walk back the chain."""
    src = graph[node.inputs[0]]
    if (op_def(src.op, src.name).lookup
            and _fused_into_reader(src, graph.consumers(src.name), graph.output)):
        return _lut_pbs_bits(src, graph, product_extra_bits)
    return lookup_index_bits(node)


def _constant_table(node: NodeLike) -> bool:
    """A lookup whose every entry is equal: concrete folds it to a constant (no PBS)."""
    table = np.asarray(node.attrs["table"])
    return bool(table.size) and bool(np.all(table == table.flat[0]))


def _lut_triton(k: ModuleType, node: NodeLike, args: list[np.ndarray],
                producers: Producers) -> np.ndarray:
    a = node.attrs
    return k.fused_lookup(args[0], a["lsbs"], a["offset"], a["table"], name=node.name)


LUT = OpDef(
    "lut", "``table[round(x, lsbs) - offset]``", "1 + lsbs PBS per element",
    shape=_same_shape, numpy=_lut, concrete=_lut_concrete, onnx=_lut_onnx, work=_no_work,
    pbs=_lut_pbs, pbs_bits=_lut_pbs_bits, triton=_lut_triton,
    folds_to_constant=_constant_table, lookup=True,
)


# -- mul / matmul: encrypted × encrypted -----------------------------------------------------
def _product(op: str, a: Any, b: Any, lo_a: int, lo_b: int, hi_a: int | None = None,
             hi_b: int | None = None) -> Any:
    """concrete's ``a * b`` (``op`` "mul") or ``a @ b`` ("matmul") of two encrypted values,
    never of mixed signs.

    concrete-python 2.11 multiplies an unsigned by a signed encrypted value wrongly (seen
    in simulation: tests/fhe). Two signed or two unsigned operands multiply correctly as
    they are, and must: concrete's products bootstrap at about their output width, so a
    product of wider operands finds no TFHE parameters sooner (QKᵀ of 4-bit values over
    16 dims: NoParametersFound when both were shifted to unsigned, under a second as is).

    For mixed signs, given the unsigned operand's upper bound, that operand is centred
    by a clear c = ⌈hi/2⌉ so both are signed and the product stays as narrow as it can:
    a·b = (a − c)·b + c·b, for matrices (a − c)@b + c·(column sums of b). Without the
    bound, the signed operand is shifted by its lower bound l instead (both unsigned,
    about two bits wider): (a'+la)(b'+lb) = a'b' + lb·a' + la·b' + la·lb, with row and
    column sums for matrices. Every correction term is leveled.
    """
    matrix = op == MATMUL.name

    def times(x: Any, y: Any) -> Any:
        return x @ y if matrix else x * y

    signed_a, signed_b = lo_a < 0, lo_b < 0
    if signed_a == signed_b:
        return times(a, b)
    hi_u = hi_b if signed_a else hi_a
    if hi_u is not None:
        c = (int(hi_u) + 1) // 2
        if signed_a:  # b unsigned
            y = times(a, b - c)
            rest = np.sum(a, axis=len(a.shape) - 1, keepdims=True) if matrix else a
        else:  # a unsigned
            y = times(a - c, b)
            rest = np.sum(b, axis=len(b.shape) - 2, keepdims=True) if matrix else b
        return y + c * rest
    la, lb = min(lo_a, 0), min(lo_b, 0)
    a2 = a - la if la else a
    b2 = b - lb if lb else b
    y = times(a2, b2)
    if matrix:
        cross_a = np.sum(a2, axis=len(a.shape) - 1, keepdims=True)
        cross_b = np.sum(b2, axis=len(b.shape) - 2, keepdims=True)
        inner = a.shape[-1]
    else:
        cross_a, cross_b, inner = a2, b2, 1
    if lb:
        y = y + lb * cross_a
    if la:
        y = y + la * cross_b
    if la and lb:
        y = y + la * lb * inner
    return y


def _product_concrete(node: NodeLike, args: list[Any], producers: Producers,
                      protect: bool) -> Any:
    pa, pb = producers[0], producers[1]
    assert pa is not None and pb is not None  # the backend passes every producer
    return _product(node.op, args[0], args[1], pa.lo, pb.lo, pa.hi, pb.hi)


def _product_pbs_bits(node: NodeLike, graph: GraphLike, product_extra_bits: int) -> int:
    """concrete multiplies with lookups on the sum and difference of the operands: one
    (``product_extra_bits``) wider than the wider operand."""
    return max(width(graph[i].lo, graph[i].hi) for i in node.inputs) + product_extra_bits


def _mul(node: NodeLike, args: list[np.ndarray]) -> np.ndarray:
    return args[0] * args[1]


def _mul_triton(k: ModuleType, node: NodeLike, args: list[np.ndarray],
                producers: Producers) -> np.ndarray:
    return k.int_mul(args[0], args[1], a_absmax=_absmax(producers[0]),
                     b_absmax=_absmax(producers[1]))


def _mul_bound(k: ModuleType, node: NodeLike, producers: Producers, shapes: list[Shape]) -> int:
    return k.mul_bound(_absmax(producers[0]) or 0, _absmax(producers[1]) or 0)


def _matmul(node: NodeLike, args: list[np.ndarray]) -> np.ndarray:
    return args[0] @ args[1]


def _matmul_triton(k: ModuleType, node: NodeLike, args: list[np.ndarray],
                   producers: Producers) -> np.ndarray:
    return k.int_matmul(args[0], args[1], a_absmax=_absmax(producers[0]),
                        b_absmax=_absmax(producers[1]))


def _matmul_bound(k: ModuleType, node: NodeLike, producers: Producers,
                  shapes: list[Shape]) -> int:
    return k.mul_bound(_absmax(producers[0]) or 0, _absmax(producers[1]) or 0, shapes[0][-1])


MUL = OpDef(
    "mul", "``a * b`` elementwise (both encrypted)", "2 PBS per element",
    shape=_broadcast, numpy=_mul, concrete=_product_concrete, onnx=_onnx_op("Mul"),
    work=_no_work,
    pbs=lambda node, ctx: 2 * _size(ctx.shapes[node.name]),
    pbs_bits=_product_pbs_bits, triton=_mul_triton, int32_bound=_mul_bound, product=True,
)

def _matmul_shape(node: NodeLike, ins: list[Shape]) -> Shape:
    """NumPy's ``@``: leading axes broadcast, then ``[M, K] @ [K, N] → [M, N]``."""
    return tuple(np.broadcast_shapes(ins[0][:-2], ins[1][:-2])) + (ins[0][-2], ins[1][-1])


MATMUL = OpDef(
    "matmul", "``a @ b`` (both encrypted)", "2 PBS per scalar product",
    shape=_matmul_shape,
    numpy=_matmul, concrete=_product_concrete, onnx=_onnx_op("MatMul"),
    work=lambda node, ins, out: Work(adds=_size(out) * ins[0][-1]),
    pbs=lambda node, ctx: 2 * _size(ctx.shapes[node.name]) * ctx.shapes[node.inputs[0]][-1],
    pbs_bits=_product_pbs_bits, triton=_matmul_triton, int32_bound=_matmul_bound, product=True,
)


# -- the table -------------------------------------------------------------------------------
OPS: dict[str, OpDef] = {d.name: d for d in (
    INPUT, LINEAR, MUL_CONST, ADD_CONST, ADD, SUB, SUM, SLICE, CONCAT, TRANSPOSE, LUT, MUL,
    MATMUL,
)}


def op_def(op: str, node: str = "?") -> OpDef:
    """The definition of ``op``; an unknown op is a clear error naming it and its node."""
    try:
        return OPS[op]
    except KeyError:
        raise UnknownOp(f"unsupported op {op!r} at node {node} "
                        f"(supported: {', '.join(OPS)})") from None
