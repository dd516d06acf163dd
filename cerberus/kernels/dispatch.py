"""The Triton backend of the simulator, op by op (SPEC C7): each op's ``triton`` hook in
``cerberus.ops`` says which kernel computes it; this module runs it, and falls back to the
NumPy int64 reference where int32 could wrap or where an op has no kernel.

Nodes are read only through ``cerberus.ops`` (never ``cerberus.ir``, which imports this
package lazily for ``evaluate(..., backend="triton")``), so no import cycle forms.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

import cerberus.kernels.triton_ops as triton_ops
from cerberus.kernels.triton_ops import INT32_MAX, Int32FallbackWarning, Int32Overflow
from cerberus.ops import NodeLike, op_def


def apply_op_triton(
    node: NodeLike, args: list[np.ndarray], inputs: Sequence[NodeLike | None] = ()
) -> np.ndarray:
    """``cerberus.ir.apply_op`` with every op that has a kernel on that kernel.

    ``inputs`` are the producer nodes of ``args``: their compiled ranges join the data's
    magnitudes in the int32 proof, so whether a node may use int32 is a property of the
    compiled graph, not of one input. A node that cannot is evaluated by the NumPy int64
    path and reported with an :class:`Int32FallbackWarning` (see :func:`int32_fallbacks`).
    """
    d = op_def(node.op, node.name)
    if d.triton is None:
        return d.numpy(node, args)
    producers = list(inputs) + [None] * (len(args) - len(inputs))
    try:
        return d.triton(triton_ops, node, args, producers)
    except Int32Overflow as e:
        warnings.warn(Int32FallbackWarning(f"node {node.name} ({node.op}) uses int64: {e}"),
                      stacklevel=2)
        return d.numpy(node, args)


def int32_fallbacks(graph: Any) -> dict[str, int]:
    """Nodes whose int32 accumulators could overflow within their compiled input ranges.

    Static (no data): maps each such node (of an op with an ``int32_bound``) to its
    worst-case bound. These are the nodes the ``triton`` backend evaluates with the NumPy
    int64 path. ``graph`` is a ``cerberus.ir.IntGraph``.
    """
    shapes = graph.shapes()
    bad: dict[str, int] = {}
    for n in graph.nodes:
        rule = op_def(n.op, n.name).int32_bound
        if rule is None:
            continue
        bound = rule(triton_ops, n, [graph[i] for i in n.inputs], [shapes[i] for i in n.inputs])
        if bound > INT32_MAX:
            bad[n.name] = bound
    return bad
