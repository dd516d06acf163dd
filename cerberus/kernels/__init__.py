"""Accelerator kernels of the bit-exact simulator (SPEC C7): see :mod:`.triton_ops`.

Importing this package imports Triton; ``cerberus.ir`` only does so when asked for the
``triton`` backend, so the NumPy reference path never needs it.
"""

from cerberus.kernels.triton_ops import (
    Int32FallbackWarning,
    Int32Overflow,
    apply_op_triton,
    fused_lookup,
    int32_bound,
    int32_fallbacks,
    int_matmul,
    int_mul,
)

__all__ = [
    "Int32FallbackWarning",
    "Int32Overflow",
    "apply_op_triton",
    "fused_lookup",
    "int32_bound",
    "int32_fallbacks",
    "int_matmul",
    "int_mul",
]
