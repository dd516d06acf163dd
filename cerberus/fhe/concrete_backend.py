"""Lower an ``IntGraph`` to a concrete-python function, op by op (SPEC C6).

Every IR op has a direct concrete-python counterpart, so the circuit computes exactly the
integers of ``cerberus.ir.evaluate``: a ``lut`` is ``round_bit_pattern`` followed by a
univariate table; clear-weight linears, clear constants, sums and slices are leveled
operations; encrypted×encrypted products use concrete's own multiplication. concrete
sizes every value from the input set, as the lowering did from calibration data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
from concrete import fhe

from cerberus.errors import CompileError
from cerberus.ir import IntGraph, Node, evaluate, round_lsbs, width


def _lookup(node: Node, protect: bool = True) -> Callable:
    """``table[round(x, lsbs) - offset]``; ``protect`` is concrete's ``overflow_protection``
    for the rounding, to be off where rounding narrows the input (see ``narrowing_roundings``).
    """
    table = np.asarray(node.attrs["table"], dtype=np.int64)
    lsbs, offset = int(node.attrs["lsbs"]), int(node.attrs["offset"])
    last = len(table) - 1

    def apply(x):
        if lsbs:
            x = fhe.round_bit_pattern(x, lsbs_to_remove=lsbs, overflow_protection=protect)
        # concrete evaluates the function on every value the input's width can hold;
        # indices beyond the compiled range are clipped there (the simulator refuses them)
        return fhe.univariate(lambda v: table[np.clip((v >> lsbs) - offset, 0, last)])(x)

    return apply


def _product(op: str, a, b, lo_a: int, lo_b: int, hi_a: int | None = None,
             hi_b: int | None = None):
    """``a * b`` or ``a @ b`` of two encrypted values, never of mixed signs.

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
    signed_a, signed_b = lo_a < 0, lo_b < 0
    if signed_a == signed_b:
        return a * b if op == "mul" else a @ b
    hi_u = hi_b if signed_a else hi_a
    if hi_u is not None:
        c = (int(hi_u) + 1) // 2
        if signed_a:  # b unsigned
            y = a * (b - c) if op == "mul" else a @ (b - c)
            rest = a if op == "mul" else np.sum(a, axis=len(a.shape) - 1, keepdims=True)
        else:  # a unsigned
            y = (a - c) * b if op == "mul" else (a - c) @ b
            rest = b if op == "mul" else np.sum(b, axis=len(b.shape) - 2, keepdims=True)
        return y + c * rest
    la, lb = min(lo_a, 0), min(lo_b, 0)
    a2 = a - la if la else a
    b2 = b - lb if lb else b
    if op == "mul":
        y = a2 * b2
        cross_a, cross_b, inner = a2, b2, 1
    else:
        y = a2 @ b2
        cross_a = np.sum(a2, axis=len(a.shape) - 1, keepdims=True)
        cross_b = np.sum(b2, axis=len(b.shape) - 2, keepdims=True)
        inner = a.shape[-1]
    if lb:
        y = y + lb * cross_a
    if la:
        y = y + la * cross_b
    if la and lb:
        y = y + la * lb * inner
    return y


def narrowing_roundings(graph: IntGraph, inputset: list[np.ndarray]) -> set[str]:
    """The rounded lookups whose rounding makes their input's range narrower on ``inputset``.

    concrete-python 2.11 sizes a value by the input set and flags an "overflow" whenever
    ``round_bit_pattern``'s result needs a different width than its input, assuming it can
    only be wider (a maximum rounded up past a power of two). It can also be narrower: a
    signed minimum just below −2**k rounds to −2**k (−67 → −64 at 4 bits: 8 → 7 bits). With
    ``overflow_protection`` on, concrete then removes one bit fewer and reads the next table
    at the wrong step, in simulation and under encryption alike (issue #5: the BERT block's
    row-max lookup, ``table[(x + 4) >> 3]`` where ``table[(x + 8) >> 4]`` was meant).
    Rounding that narrows cannot overflow, so protection is dropped exactly there.
    """
    luts = [n for n in graph.nodes if n.op == "lut" and int(n.attrs["lsbs"])]
    if not luts or not inputset:
        return set()
    xs = np.stack([np.asarray(x, dtype=np.int64) for x in inputset])
    values = evaluate(graph, xs, check_ranges=False, keep={n.inputs[0] for n in luts})
    out = set()
    for n in luts:
        v, lsbs = values[n.inputs[0]], int(n.attrs["lsbs"])
        lo, hi = int(v.min()), int(v.max())
        r_lo, r_hi = (int(round_lsbs(np.int64(e), lsbs)) << lsbs for e in (lo, hi))
        if width(r_lo, r_hi) < width(lo, hi):
            out.add(n.name)
    return out


def to_function(graph: IntGraph, unprotected: Iterable[str] = ()) -> Callable:
    """A Python function of one encrypted input that concrete-python can trace.

    ``unprotected``: lookups whose rounding runs without concrete's overflow protection
    (``narrowing_roundings`` of the input set the circuit is compiled with).
    """
    unprotected = set(unprotected)

    def circuit(x):
        values = {}
        for n in graph.nodes:
            with fhe.tag(node_tag(n.name)):
                values[n.name] = _lower_node(graph, n, [values[i] for i in n.inputs], x,
                                             protect=n.name not in unprotected)
        return values[graph.output]

    return circuit


def node_tag(name: str) -> str:
    """The concrete tag of a node's ops: its name with dots replaced (concrete nests tags
    on dots), so ``circuit.statistics["programmable_bootstrap_count_per_tag"]`` can be read
    per IR node."""
    return name.replace(".", "_")


def _lower_node(graph: IntGraph, n: Node, args: list, x, protect: bool = True):
    """The concrete-python expression of one IR node on its traced arguments."""
    a = n.attrs
    if n.op == "input":
        return x
    if n.op == "linear":
        y = args[0] @ a["weight"]
        if a.get("mult") is not None:
            y = y * a["mult"]
        if a.get("bias") is not None:
            y = y + a["bias"]
    elif n.op == "lut":
        y = _lookup(n, protect)(args[0])
    elif n.op == "mul_const":
        y = args[0] * a["const"]
    elif n.op == "add_const":
        y = args[0] + a["const"]
    elif n.op in ("add", "sub"):
        y = args[0] + args[1] if n.op == "add" else args[0] - args[1]
    elif n.op in ("mul", "matmul"):
        x0, x1 = graph[n.inputs[0]], graph[n.inputs[1]]
        y = _product(n.op, args[0], args[1], x0.lo, x1.lo, x0.hi, x1.hi)
    elif n.op == "sum":
        y = np.sum(args[0], axis=-1, keepdims=True)
    elif n.op == "slice":  # concrete indexes no Ellipsis: spell out the axes
        lead = (slice(None),) * (len(args[0].shape) - 1)
        y = args[0][(*lead, slice(int(a["start"]), int(a["stop"])))]
    elif n.op == "concat":
        y = np.concatenate(tuple(args), axis=len(args[0].shape) - 1)
    elif n.op == "transpose":
        axes = list(range(len(args[0].shape)))
        axes[-1], axes[-2] = axes[-2], axes[-1]
        y = np.transpose(args[0], axes)
    else:
        raise CompileError(f"FHE lowering: unsupported op {n.op!r} at node {n.name}")
    return y


def check_widths(graph: IntGraph, max_lookup_bits: int) -> None:
    """Refuse a graph whose encrypted products need lookups wider than allowed.

    concrete multiplies two encrypted values with table lookups on their sum and
    difference, one bit wider than the wider operand; every ``lut`` already rounds its
    input to ``max_lookup_bits``, so products are the only place a width can be exceeded.
    """
    for n in graph.nodes:
        if n.op not in ("mul", "matmul"):
            continue
        need = max(graph[i].bits for i in n.inputs) + 1
        if need > max_lookup_bits:
            raise CompileError(
                f"node {n.name} ({n.op}) needs {need}-bit lookups for its encrypted product "
                f"(operands of {graph[n.inputs[0]].bits} and {graph[n.inputs[1]].bits} bits), "
                f"over --max-lookup-bits {max_lookup_bits}: use --bits {max_lookup_bits - 1} "
                "or fewer, or the hybrid partition"
            )


def compile_circuit(
    graph: IntGraph,
    inputset: Iterable[np.ndarray],
    configuration: fhe.Configuration | None = None,
) -> fhe.Circuit:
    """Compile the graph for one sequence ``[T, d]``; ``inputset`` gives concrete its ranges."""
    inputset = list(inputset)
    function = to_function(graph, narrowing_roundings(graph, inputset))
    compiler = fhe.Compiler(function, {"x": "encrypted"})
    config = configuration or fhe.Configuration(show_progress=False)
    return compiler.compile(inputset, config)
