"""Triton kernels of the bit-exact clear-text simulator (SPEC C7, issue #5).

The simulator evaluates the integer graph (``cerberus.ir``) in the clear; validators and
tests run it many times, so its two hot ops get kernels:

* :func:`int_matmul` — integer matmul with **int32** accumulation and an optional fused
  per-column ``mult``/``bias`` epilogue: the IR's ``linear`` (clear weights) and, with a
  batched right operand, the enc×enc ``matmul`` of attention.
* :func:`int_mul` — the enc×enc elementwise ``mul`` (int32, same overflow proof).
* :func:`fused_lookup` — the IR's ``lut`` in one pass: ``round_bit_pattern`` → subtract
  the offset → bounds-checked gather from the table.

Bit-exactness with the NumPy reference (``cerberus.ir.apply_op``, int64) is the contract.
Integer arithmetic is exact as long as nothing wraps, so before any int32 launch the
operands' magnitude bounds are checked to prove that every partial sum fits; when they do
not, :class:`Int32Overflow` (an ``OverflowError``) is raised instead of computing garbage,
and the dispatcher (``cerberus.kernels.dispatch``) evaluates that node with the NumPy int64
path. The kernels take arrays and attributes, never IR nodes: which op maps onto which
kernel is each op's ``triton`` hook in ``cerberus.ops``.

Without a GPU the kernels run under ``TRITON_INTERPRET=1`` (Triton's NumPy emulator): the
same program, same bits, but slow — it is a correctness vehicle, not a speed claim.
"""

from __future__ import annotations

import os

import numpy as np
import torch

# Triton decides at decoration time whether a kernel is compiled or emulated. Without a GPU
# the compiled form cannot launch at all, so default to the emulator (same program, same
# bits) instead of failing on the first evaluation; an explicit setting is respected.
if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from cerberus.ops import RangeOverflow  # noqa: E402

INT32_MAX = 2**31 - 1
I32 = np.iinfo(np.int32)


class Int32Overflow(OverflowError):
    """The int32 kernel cannot prove its accumulators stay in range (use the int64 path)."""


class Int32FallbackWarning(UserWarning):
    """A node was evaluated with the NumPy int64 path because int32 could overflow."""


def interpreted() -> bool:
    """True when the kernels run on Triton's CPU emulator (block sizes then favour few
    programs, and launches take CPU tensors). Fixed when this module was imported."""
    return _INTERPRETED


# -- kernels -------------------------------------------------------------------------------
@triton.jit
def _int_matmul_kernel(
    a_ptr, b_ptr, c_ptr, mult_ptr, bias_ptr,
    M, N, K,
    stride_ab, stride_am, stride_ak,
    stride_bb, stride_bk, stride_bn,
    stride_cb, stride_cm, stride_cn,
    HAS_MULT: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """C[b] = (A[b] @ B[b]) * mult + bias, int32 operands and accumulator.

    ``tl.dot`` has no int32×int32 form on GPUs (only int8 tensor cores), so the product is
    a broadcast multiply + reduction over a K block: exact for any int32 values whose
    partial sums fit, which the host proves before launching.
    """
    pid_b = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_n = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    a_base = a_ptr + pid_b * stride_ab
    b_base = b_ptr + pid_b * stride_bb
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + offs_k
        a = tl.load(a_base + offs_m[:, None] * stride_am + ks[None, :] * stride_ak,
                    mask=(offs_m[:, None] < M) & (ks[None, :] < K), other=0)
        b = tl.load(b_base + ks[:, None] * stride_bk + offs_n[None, :] * stride_bn,
                    mask=(ks[:, None] < K) & (offs_n[None, :] < N), other=0)
        acc += tl.sum(a[:, :, None] * b[None, :, :], axis=1)
    if HAS_MULT:
        mult = tl.load(mult_ptr + offs_n, mask=offs_n < N, other=0)
        acc = acc * mult[None, :]
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0)
        acc = acc + bias[None, :]
    c = c_ptr + pid_b * stride_cb + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c, acc, mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


@triton.jit
def _fused_lookup_kernel(
    x_ptr, table_ptr, out_ptr, bad_ptr, n_elements, n_table, offset,
    LSBS: tl.constexpr, BLOCK: tl.constexpr,
):
    """out = table[((x + 2**(LSBS-1)) >> LSBS) - offset]; out-of-range indices are counted.

    ``>>`` on a signed integer is an arithmetic shift (floor), which is what
    ``round_bit_pattern`` means for negative inputs (ties go up). An out-of-range index is
    never dereferenced: its load is masked and ``bad`` counts it so the host can fail.
    """
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    live = offs < n_elements
    x = tl.load(x_ptr + offs, mask=live, other=0)
    if LSBS > 0:
        x = (x + (1 << (LSBS - 1))) >> LSBS
    idx = x - offset
    ok = (idx >= 0) & (idx < n_table)
    val = tl.load(table_ptr + idx, mask=live & ok, other=0)
    tl.store(out_ptr + offs, val, mask=live)
    tl.atomic_add(bad_ptr, tl.sum((live & ~ok).to(tl.int32), axis=0))


_INTERPRETED = bool(triton.knobs.runtime.interpret)  # what the decorators above saw


@triton.jit
def _int_mul_kernel(a_ptr, b_ptr, out_ptr, n_elements, BLOCK: tl.constexpr):
    """out = a * b elementwise on int32 (the host has broadcast and proven no wrap)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = offs < n_elements
    a = tl.load(a_ptr + offs, mask=live, other=0)
    b = tl.load(b_ptr + offs, mask=live, other=0)
    tl.store(out_ptr + offs, a * b, mask=live)


# -- host wrappers ---------------------------------------------------------------------------
def _absmax(v: np.ndarray | None) -> int:
    return int(np.abs(v).max()) if v is not None and np.size(v) else 0


def _column(v: np.ndarray | int | None, n: int, what: str) -> np.ndarray | None:
    """A per-column epilogue vector of length ``n`` (scalars broadcast), or None."""
    if v is None:
        return None
    v = np.asarray(v, dtype=np.int64)
    if v.size == 1:
        return np.full(n, int(v.reshape(())), dtype=np.int64)
    if v.shape != (n,):
        raise ValueError(f"int_matmul: {what} has shape {v.shape}, expected ({n},) or scalar")
    return v


def int32_bound(
    a_absmax: int, b: np.ndarray, mult: np.ndarray | int | None, bias: np.ndarray | int | None,
    b_absmax: int | None = None,
) -> int:
    """Largest magnitude any int32 intermediate of ``(a @ b) * mult + bias`` can reach.

    A partial sum of column n is bounded by ``|a|max · Σ_k |b[k, n]|`` (tighter than, and
    implied by, ``|a|max·|b|max·K``); the epilogue multiplies that by ``|mult_n|`` and adds
    ``|bias_n|``. Each column's own bound is used, so one large column does not condemn
    the whole layer. ``b_absmax`` overrides the data of ``b`` (a compiled range) with
    ``|b|max·K``. ``mult``/``bias`` are per column or scalars, as :func:`int_matmul` takes.
    """
    k = b.shape[-2]
    mult = _column(mult, b.shape[-1], "mult")
    bias = _column(bias, b.shape[-1], "bias")
    if b_absmax is not None:
        col = np.full(b.shape[-1], b_absmax * k, dtype=object)
    else:
        l1 = np.abs(b.astype(np.int64)).sum(axis=-2)
        col = (l1.reshape(-1, b.shape[-1]).max(axis=0) if l1.ndim > 1 else l1).astype(object)
    acc = col * a_absmax
    worst = int(acc.max()) if acc.size else 0
    if mult is not None:
        acc = acc * np.abs(mult).astype(object)
        worst = max(worst, int(acc.max()))
    if bias is not None:
        worst = max(worst, int((acc + np.abs(bias).astype(object)).max()))
    return max(worst, a_absmax, _absmax(b), _absmax(mult), _absmax(bias))


def mul_bound(a_absmax: int, b_absmax: int, terms: int = 1) -> int:
    """Largest magnitude of a sum of ``terms`` products of operands bounded by ``a_absmax``
    and ``b_absmax`` (one for an elementwise product, K for a matmul's dot products)."""
    return max(a_absmax * b_absmax * terms, a_absmax, b_absmax)


def _matmul_blocks(m: int, n: int, k: int) -> tuple[int, int, int]:
    """Block sizes: the emulator pays per program, a GPU per register."""
    def p2(v: int, cap: int) -> int:
        return max(16, min(cap, triton.next_power_of_2(max(v, 1))))
    if interpreted():
        return p2(m, 64), p2(n, 64), p2(k, 64)
    return p2(m, 32), p2(n, 32), 8


def int_matmul(
    a: np.ndarray,
    b: np.ndarray,
    mult: np.ndarray | int | None = None,
    bias: np.ndarray | int | None = None,
    *,
    a_absmax: int | None = None,
    b_absmax: int | None = None,
) -> np.ndarray:
    """``(a @ b) * mult + bias`` with int32 accumulation; returns int64 like the reference.

    ``a`` is ``[..., M, K]``; ``b`` is ``[K, N]`` (clear weights, shared by every batch) or
    ``[..., K, N]`` (enc×enc, leading axes broadcast against ``a``'s). ``mult``/``bias`` are
    per-column (``[N]``) or scalars. ``a_absmax``/``b_absmax`` may raise the magnitude
    bounds above the data's (e.g. to a node's compiled range) so the int32 decision does not
    depend on one input. Raises :class:`Int32Overflow` when an int32 intermediate could wrap.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.ndim < 2 or b.ndim < 2:
        raise ValueError(f"int_matmul: need a [..., M, K] and b [..., K, N], "
                         f"got {a.shape} and {b.shape}")
    m, k = a.shape[-2:]
    if b.shape[-2] != k:
        raise ValueError(f"int_matmul: inner sizes differ: a {a.shape} @ b {b.shape}")
    n = b.shape[-1]
    mult_v = _column(mult, n, "mult")
    bias_v = _column(bias, n, "bias")
    amax = max(_absmax(a), a_absmax or 0)
    bound = int32_bound(amax, b, mult_v, bias_v,
                        None if b_absmax is None else max(b_absmax, _absmax(b)))
    if bound > INT32_MAX:
        raise Int32Overflow(
            f"int_matmul: [{'x'.join(map(str, a.shape))}] @ [{'x'.join(map(str, b.shape))}] "
            f"(K={k}, |a|max={amax}, |b|max={_absmax(b)}, |mult|max={_absmax(mult_v)}, "
            f"|bias|max={_absmax(bias_v)}) can reach {bound} > 2**31-1: int32 would wrap"
        )
    lead = np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) if b.ndim > 2 else a.shape[:-2]
    batch = int(np.prod(lead)) if lead else 1
    a3 = np.ascontiguousarray(np.broadcast_to(a, (*lead, m, k)), dtype=np.int32).reshape(
        batch, m, k)
    if b.ndim == 2:
        b3 = np.ascontiguousarray(b, dtype=np.int32).reshape(1, k, n)
        stride_bb = 0  # every batch reads the same clear weights
    else:
        b3 = np.ascontiguousarray(np.broadcast_to(b, (*lead, k, n)), dtype=np.int32).reshape(
            batch, k, n)
        stride_bb = b3.strides[0] // b3.itemsize
    c3 = np.empty((batch, m, n), dtype=np.int32)
    dummy = np.zeros(1, dtype=np.int32)
    mult32 = dummy if mult_v is None else mult_v.astype(np.int32)
    bias32 = dummy if bias_v is None else bias_v.astype(np.int32)
    if batch and m and n:
        dev = _to_device(a3, b3, c3, mult32, bias32)
        bm, bn, bk = _matmul_blocks(m, n, k)
        grid = (batch, triton.cdiv(m, bm), triton.cdiv(n, bn))
        _int_matmul_kernel[grid](
            dev[0], dev[1], dev[2], dev[3], dev[4],
            m, n, k,
            m * k, k, 1,
            stride_bb, n, 1,
            m * n, n, 1,
            HAS_MULT=mult_v is not None, HAS_BIAS=bias_v is not None,
            BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
        )
        c3 = _from_device(dev[2], c3)
    return c3.reshape(*lead, m, n).astype(np.int64)


def int_mul(
    a: np.ndarray, b: np.ndarray, *, a_absmax: int | None = None, b_absmax: int | None = None
) -> np.ndarray:
    """Elementwise ``a * b`` (NumPy broadcasting) on int32; returns int64 like the reference.

    The IR's enc×enc ``mul``. Raises :class:`Int32Overflow` unless ``|a|max·|b|max`` (data,
    or the larger ``*_absmax`` bounds) fits int32.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    amax = max(_absmax(a), a_absmax or 0)
    bmax = max(_absmax(b), b_absmax or 0)
    if mul_bound(amax, bmax) > INT32_MAX:
        raise Int32Overflow(
            f"int_mul: {a.shape} * {b.shape} (|a|max={amax}, |b|max={bmax}) can reach "
            f"{amax * bmax} > 2**31-1: int32 would wrap"
        )
    shape = np.broadcast_shapes(a.shape, b.shape)
    fa = np.ascontiguousarray(np.broadcast_to(a, shape), dtype=np.int32).reshape(-1)
    fb = np.ascontiguousarray(np.broadcast_to(b, shape), dtype=np.int32).reshape(-1)
    out = np.empty_like(fa)
    if out.size:
        dev = _to_device(fa, fb, out)
        block = 1024 if interpreted() else 256
        _int_mul_kernel[(triton.cdiv(out.size, block),)](dev[0], dev[1], dev[2], out.size,
                                                          BLOCK=block)
        out = _from_device(dev[2], out)
    return out.reshape(shape).astype(np.int64)


def fused_lookup(
    x: np.ndarray, lsbs: int, offset: int, table: np.ndarray, *, name: str = "lut"
) -> np.ndarray:
    """``table[round_lsbs(x, lsbs) - offset]`` in one kernel; returns int64.

    Works in int32 when the input (plus the rounding half) and the table fit, else int64
    (the kernel is the same; only the element type changes), so it never wraps. Raises
    :class:`cerberus.ir.RangeOverflow` when any index leaves the table, with the index
    range in the message like the NumPy path (rounding is monotonic, so the extremes come
    from ``x``'s extremes).
    """
    x = np.asarray(x)
    table = np.asarray(table)
    lsbs = int(lsbs)
    offset = int(offset)
    if lsbs < 0:
        raise ValueError(f"fused_lookup: lsbs must be >= 0, got {lsbs}")
    half = (1 << (lsbs - 1)) if lsbs else 0
    # int32 only if no intermediate can wrap: x + half, and the index itself (a wrapped
    # index could land inside the table and turn an overflow into a silent wrong value)
    fits32 = I32.min <= offset <= I32.max and len(table) <= I32.max
    if x.size:
        lo, hi = int(x.min()), int(x.max())
        fits32 = fits32 and lo >= I32.min and hi + half <= I32.max
        idx_lo, idx_hi = _round_scalar(lo, lsbs) - offset, _round_scalar(hi, lsbs) - offset
        fits32 = fits32 and I32.min <= idx_lo and idx_hi <= I32.max
    if table.size:
        fits32 = fits32 and int(table.min()) >= I32.min and int(table.max()) <= I32.max
    dtype = np.int32 if fits32 else np.int64
    flat = np.ascontiguousarray(x, dtype=dtype).reshape(-1)
    tab = np.ascontiguousarray(table, dtype=dtype).reshape(-1)
    out = np.empty_like(flat)
    bad = np.zeros(1, dtype=np.int32)
    if flat.size:
        if tab.size == 0:
            tab = np.zeros(1, dtype=dtype)  # never read: every index is out of range
        dev = _to_device(flat, tab, out, bad)
        block = 1024 if interpreted() else 256
        grid = (triton.cdiv(flat.size, block),)
        _fused_lookup_kernel[grid](dev[0], dev[1], dev[2], dev[3], flat.size, len(table),
                                   offset, LSBS=lsbs, BLOCK=block)
        out = _from_device(dev[2], out)
        bad = _from_device(dev[3], bad)
    if int(bad[0]):
        lo = _round_scalar(int(x.min()), lsbs) - offset
        hi = _round_scalar(int(x.max()), lsbs) - offset
        raise RangeOverflow(
            f"node {name}: lookup index {lo}..{hi} outside its table of {len(table)} entries"
        )
    return out.reshape(x.shape).astype(np.int64)


def _round_scalar(v: int, lsbs: int) -> int:
    return v if lsbs == 0 else (v + (1 << (lsbs - 1))) >> lsbs


# -- host/device transfer ----------------------------------------------------------------------
def _to_device(*arrays: np.ndarray) -> list[torch.Tensor]:
    """Kernel arguments: CPU tensors sharing the arrays' memory under the emulator (Triton
    launches take tensors, not arrays), CUDA copies on a GPU."""
    tensors = [torch.from_numpy(np.ascontiguousarray(v)) for v in arrays]
    if interpreted():
        return tensors
    return [t.cuda() for t in tensors]


def _from_device(v: torch.Tensor, like: np.ndarray) -> np.ndarray:
    """The kernel's output as a NumPy array of ``like``'s shape (a copy back from a GPU)."""
    return v.cpu().numpy().reshape(like.shape)
