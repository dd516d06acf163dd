"""Lower an ``IntGraph`` to a concrete-python function, op by op (SPEC C6).

Every IR op has a direct concrete-python counterpart, its ``concrete`` hook in
``cerberus.ops``, so the circuit computes exactly the integers of ``cerberus.ir.evaluate``:
a ``lut`` is ``round_bit_pattern`` followed by a univariate table; clear-weight linears,
clear constants, sums and slices are leveled operations; encrypted×encrypted products use
concrete's own multiplication, never of mixed signs. concrete sizes every value from the
input set, as the lowering did from calibration data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
from concrete import fhe

from cerberus.errors import CompileError
from cerberus.ir import IntGraph, evaluate
from cerberus.ops import OpDef, UnknownOp, op_def, round_lsbs, width


def _op_defs(graph: IntGraph) -> list[OpDef]:
    """Every node's op definition; an op the table lacks is a ``CompileError``."""
    try:
        return [op_def(n.op, n.name) for n in graph.nodes]
    except UnknownOp as e:
        raise CompileError(f"FHE lowering: {e}") from None


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
    luts = [n for n, d in zip(graph.nodes, _op_defs(graph), strict=True)
            if d.lookup and int(n.attrs["lsbs"])]
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
    defs = _op_defs(graph)

    def circuit(x):
        values = {}
        for n, d in zip(graph.nodes, defs, strict=True):
            with fhe.tag(node_tag(n.name)):
                values[n.name] = d.concrete(n, graph.operands(n, values, x),
                                            [graph[i] for i in n.inputs],
                                            n.name not in unprotected)
        return values[graph.output]

    return circuit


def node_tag(name: str) -> str:
    """The concrete tag of a node's ops: its name with dots replaced (concrete nests tags
    on dots), so ``circuit.statistics["programmable_bootstrap_count_per_tag"]`` can be read
    per IR node."""
    return name.replace(".", "_")


def check_widths(graph: IntGraph, max_lookup_bits: int) -> None:
    """Refuse a graph whose encrypted products need lookups wider than allowed.

    concrete multiplies two encrypted values with table lookups on their sum and
    difference, one bit wider than the wider operand; every ``lut`` already rounds its
    input to ``max_lookup_bits``, so products are the only place a width can be exceeded.
    """
    for n, d in zip(graph.nodes, _op_defs(graph), strict=True):
        if not d.product:
            continue
        need = max(graph[i].bits for i in n.inputs) + 1
        if need > max_lookup_bits:
            raise CompileError(
                f"node {n.name} ({n.op}) needs {need}-bit lookups for its encrypted product "
                f"(operands of {graph[n.inputs[0]].bits} and {graph[n.inputs[1]].bits} bits), "
                f"over --max-lookup-bits {max_lookup_bits}: use --bits {max_lookup_bits - 1} "
                "or fewer, or the hybrid partition"
            )


# Widest value a lookup's output may flow into (through leveled ops) for concrete-python
# 2.11 to find parameters: a lookup feeding an 18-bit clear-linear accumulator compiles
# (13.7 GB of keys), 19 bits and up give NoParametersFound, while an encrypted *input*
# feeding a 27-bit accumulator compiles (benchmarks/full_tiny_gpt.py, probe table).
LOOKUP_OUTPUT_LIMIT_BITS = 18


def lookup_output_widths(graph: IntGraph) -> dict[str, tuple[int, str]]:
    """Per node that concrete computes with PBS (lookups, encrypted products): the widest
    value its output flows into through leveled ops before a PBS reads it, and that value's
    node.

    Why: concrete encodes a value once, at the width of the widest leveled value computed
    from it (a clear linear's input gets its accumulator's width, an addition's operands
    its sum's), so the PBS producing it must output ciphertexts of that width. This, not
    the width of any table index, is what made the full partition's programs fail with
    NoParametersFound (tiny-gpt: ``l0.ln1.out`` feeding the 27-bit ``l0.attn.q.lin``).
    """
    defs = dict(zip((n.name for n in graph.nodes), _op_defs(graph), strict=True))
    readers: dict[str, list[str]] = {n.name: [] for n in graph.nodes}
    for n in graph.nodes:
        for i in n.inputs:
            readers[i].append(n.name)
    out = {}
    for n in graph.nodes:
        if defs[n.name].pbs is None:
            continue
        best, where, todo, seen = n.bits, n.name, list(readers[n.name]), set()
        while todo:  # bounded: each node is visited once per source
            r = todo.pop()
            if r in seen or defs[r].pbs is not None:
                continue
            seen.add(r)
            if graph[r].bits > best:
                best, where = graph[r].bits, r
            todo.extend(readers[r])
        out[n.name] = (best, where)
    return out


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
