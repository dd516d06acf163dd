"""Accelerator kernels of the bit-exact simulator (SPEC C7): see :mod:`.triton_ops` (the
kernels, on arrays) and :mod:`.dispatch` (which op runs on which kernel, from the op table).

Importing this package imports Triton; ``cerberus.ir`` only does so when asked for the
``triton`` backend, so the NumPy reference path never needs it.
"""

from cerberus.kernels.dispatch import apply_op_triton, int32_fallbacks
from cerberus.kernels.triton_ops import (
    Int32FallbackWarning,
    Int32Overflow,
    fused_lookup,
    int32_bound,
    int_matmul,
    int_mul,
    mul_bound,
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
    "mul_bound",
]
