"""Lower the blocks of a canonical transformer to an ``IntGraph`` (SPEC C4–C6).

The miner's part of the split (SPEC C6) is every transformer block: the client embeds
and quantizes the tokens, the miner computes the blocks on integers, the client
dequantizes and applies the final norm and LM head.

Lowering walks the model once with calibration data flowing through two paths side by
side: the float reference (what the model computes) and the integers (what the circuit
computes). Each quantization point takes its scale from the float path and its compiled
range from the integer path, so every lookup is sized from values it will really see, as
concrete-python itself sizes circuits from an input set.

Non-linear maths becomes lookups on narrow, rounded inputs:
- LayerNorm: ``c = d·x − Σx`` (clear linear), ``1/σ`` from a lookup of ``Σ lut(c)²``, then
  one encrypted product ``c·(1/σ)``; γ and β are folded into the next linear when the
  block is pre-LN (see ``passes.fuse``).
- softmax: ``exp(s − m)`` lookup with the row max ``m`` (a tree of ReLU lookups), a clear
  0/1 causal mask, a reciprocal lookup of the row sum and one encrypted product.
- GELU and every requantization: lookups.

Padding (``LoweringOptions.key_mask``): the client appends one column to its ``[T, d]``
input, the key-position mask bit (1 = real token, 0 = padding), encrypted with the rest,
so the miner's program keeps a single encrypted input. Every head of every layer gives a
masked key zero weight and lets it move nothing else (``Builder.attention`` says how and
what it costs).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from cerberus.errors import CompileError
from cerberus.frontends.canonical import Block, CanonicalTransformer
from cerberus.ir import IntGraph, Node, round_lsbs, width
from cerberus.passes.quantize import qmax

Fn = Callable[[np.ndarray], np.ndarray]


def round_half_up(x: np.ndarray) -> np.ndarray:
    """Deterministic rounding used for every table and constant: floor(x + 1/2)."""
    return np.floor(np.asarray(x, dtype=np.float64) + 0.5)


def clipped_scale(ref: np.ndarray, peak_scale: float, lo_q: int, hi_q: int) -> float:
    """The scale in [0.3, 1] × ``peak_scale`` whose rounding and clipping to [lo_q, hi_q]
    loses the least squared error on ``ref`` (the calibration's float values)."""
    best, best_err = peak_scale, math.inf
    for f in np.linspace(0.3, 1.0, 29):
        sc = peak_scale * float(f)
        err = float(np.square(np.clip(round_half_up(ref / sc), lo_q, hi_q) * sc - ref).sum())
        if err < best_err:
            best, best_err = sc, err
    return best


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def gelu_erf(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


ACTIVATION_FNS: dict[str, Fn] = {
    "gelu_new": gelu_tanh,
    "gelu": gelu_erf,
    "relu": lambda x: np.maximum(x, 0.0),
}


# Width of lookup outputs that feed only leveled ops (``--wide-bits``); the cost model and
# the compiler's options take their default from here.
DEFAULT_WIDE_BITS = 12


@dataclass
class Val:
    """A value during lowering: its node, real unit, calibration integers and float reference."""

    name: str
    scale: float
    data: np.ndarray
    ref: np.ndarray
    lo: int
    hi: int
    # Per-channel factor the value carries (LayerNorm equalisation); the next linear
    # divides its weight columns by it, so the product is unchanged.
    chan: np.ndarray | None = None
    # Zero point: the integers are ``real / scale + zero`` (``Builder.lut``'s ``zero``), so
    # a signed value can enter an encrypted product unsigned (``Builder.product``).
    zero: int = 0


@dataclass(frozen=True)
class LoweringOptions:
    bits: int = 8  # width of every value that feeds an encrypted product (q, k, v, probs…)
    # Width of lookup outputs that feed only leveled ops (clear linears, residual adds):
    # wider costs no bootstrap, since the next lookup rounds its input anyway.
    wide_bits: int = DEFAULT_WIDE_BITS
    weight_bits: int = 8
    max_lookup_bits: int = 8  # widest table index any lookup may have
    # Head-room on ranges observed in calibration: a value beyond its compiled width would
    # make the FHE result garbage. 0.5 left no overflow on 400 held-out windows of the
    # shipped model where 0.25 left 1.3% (benchmarks/RESULTS.md).
    margin: float = 0.5
    mult_bits: int = 6  # precision of per-channel rescaling multipliers
    fuse: bool = True  # emit requantization and activation as one lookup
    per_channel: bool = True
    # The input carries a key mask column (1 = real token, 0 = padding) after the d
    # embedding columns: encoders and padded batches (issue #13; Builder.attention).
    key_mask: bool = False
    # Attention with its clear weights inside the encrypted products
    # (``Builder.attention_folded``): fewer requantizations; pays for one head or few.
    fold_attention: bool = False
    # Requantizing lookups take the scale that minimises the squared error on calibration
    # (clipping the tails) instead of the peak's: narrow values lose less to rare outliers.
    clip: bool = False


class Builder:
    """Emits nodes while carrying calibration integers and float references."""

    def __init__(self, opts: LoweringOptions) -> None:
        self.opts = opts
        self.nodes: list[Node] = []
        self.names: set[str] = set()
        self.vals: dict[str, Val] = {}  # every value by node name (reports and tests)

    # -- plumbing -------------------------------------------------------------------
    def _name(self, base: str) -> str:
        name, i = base, 1
        while name in self.names:
            i += 1
            name = f"{base}_{i}"
        self.names.add(name)
        return name

    def _observed(self, data: np.ndarray) -> tuple[int, int]:
        """Calibrated range plus margin, widened to the whole domain of its bit width.

        The circuit works on ``width`` bits anyway, so a table covering that whole domain
        costs nothing and keeps values beyond the calibration set correct.
        """
        mn, mx = int(data.min()), int(data.max())
        pad = lambda v: int(math.ceil(self.opts.margin * max(abs(v), 1)))  # noqa: E731
        w = width(mn - pad(mn), mx + pad(mx))
        return (-qmax(w) - 1, qmax(w)) if mn - pad(mn) < 0 else (0, qmax(w, signed=False))

    def _emit(self, op: str, name: str, inputs: list[Val], data: np.ndarray, ref: np.ndarray,
              scale: float, lo: int | None = None, hi: int | None = None, **attrs) -> Val:
        if lo is None or hi is None:
            lo, hi = self._observed(data)
        name = self._name(name)
        self.nodes.append(Node(name, op, [v.name for v in inputs], int(lo), int(hi), scale, attrs))
        val = Val(name, scale, data.astype(np.int64), ref, int(lo), int(hi))
        self.vals[name] = val
        return val

    # -- ops ------------------------------------------------------------------------
    def input(self, ref: np.ndarray, keep: np.ndarray | None = None) -> Val:
        """The client's integers ``[…, T, d]``; with ``keep`` (``[…, T]``, 1 = real token)
        one more column holding it as it is (0 or 1)."""
        b = self.opts.wide_bits
        scale = float(np.abs(ref).max()) / qmax(b) or 1.0
        data = np.clip(round_half_up(ref / scale), -qmax(b), qmax(b))
        if keep is not None:
            data = np.concatenate([data, keep[..., None]], -1)
            ref = np.concatenate([ref, keep[..., None].astype(np.float64)], -1)
        return self._emit("input", "input", [], data, ref, scale, -qmax(b), qmax(b))

    def key_column(self, inp: Val, d: int) -> Val:
        """The mask column ``[…, T, 1]`` of the input (0 or 1).

        A clear one-hot linear, not a slice: concrete types a slice like the tensor it
        comes from, and a column whose input-set values are all ≥ 0 cut from the signed
        input fails to compile ("expected element type to be '!FHE.esint<…>'").
        """
        w = np.zeros((d + 1, 1), dtype=np.int64)
        w[d, 0] = 1
        return self._emit("linear", "input.keys", [inp], inp.data @ w, inp.ref @ w, 1.0, 0, 1,
                          weight=w, mult=None, bias=None)

    def bit(self, name: str, keys: Val, fn: Fn) -> Val:
        """``fn`` (0 or 1) of the mask column, narrow enough to compute with.

        The column shares the input's wide encoding in concrete, so a lookup on it as it
        is would bootstrap at that width; rounding one bit away (``(b + 1) >> 1`` is the
        bit itself) lets concrete bootstrap it at 1 bit: 1 PBS per position for the
        rounding, paid once for every such lookup (shared), plus 1 per lookup.
        """
        return self.lut(name, keys, lambda v: fn(v).astype(np.float64), signed=False,
                        scale=1.0, bits=1, lsbs=1)

    def linear(self, name: str, x: Val, w: np.ndarray, b: np.ndarray | None,
               weight_bits: int | None = None) -> Val:
        """Clear-weight linear ``x @ w.T + b`` with per-channel weight scales.

        Per-channel scales are snapped to ``s_max·m_j/2**mult_bits`` with integer ``m_j``
        before the weights are rounded, so multiplying column j of the accumulator by
        ``m_j`` puts every column on one exact common unit (no rescaling error).
        """
        if x.chan is not None:
            w = w / x.chan[None, :]
        wq = qmax(weight_bits or self.opts.weight_bits)
        s_max = float(np.abs(w).max()) / wq or 1.0
        mult = None
        acc_scale = x.scale * s_max
        s_w = np.full(w.shape[0], s_max)
        if self.opts.per_channel:
            rows = np.abs(w).max(axis=1) / wq
            m = np.maximum(np.ceil(2**self.opts.mult_bits * rows / s_max - 1e-9), 1)
            if not np.all(m == 2**self.opts.mult_bits):
                mult = m.astype(np.int64)
                s_w = s_max * m / 2**self.opts.mult_bits
                acc_scale = x.scale * s_max / 2**self.opts.mult_bits
        w_int = np.clip(round_half_up(w / s_w[:, None]), -wq, wq).astype(np.int64)
        bias = None if b is None else round_half_up(b / acc_scale).astype(np.int64)
        data = x.data @ w_int.T
        if mult is not None:
            data = data * mult
        if bias is not None:
            data = data + bias
        ref = x.ref @ w.T + (0.0 if b is None else b)
        return self._emit("linear", name, [x], data, ref, acc_scale, weight=w_int.T.copy(),
                          mult=mult, bias=bias)

    def lookup_lsbs(self, lo: int, hi: int) -> int:
        """The fewest low bits a lookup of an input in [lo, hi] rounds away so that its
        table index fits ``max_lookup_bits``."""
        lsbs = 0
        while width(int(round_lsbs(np.int64(lo), lsbs)), int(round_lsbs(np.int64(hi), lsbs))) \
                > self.opts.max_lookup_bits:
            lsbs += 1
        return lsbs

    def lut(self, name: str, x: Val, fn: Fn, *, signed: bool = True, scale: float | None = None,
            bits: int | None = None, lsbs: int | None = None, zero: int = 0) -> Val:
        """Table lookup of ``fn`` on the rounded input, requantized to ``bits``; ``lsbs``
        forces the rounding (default: ``lookup_lsbs``); ``zero`` is added to every entry
        (a signed ``bits``-bit value with ``zero = qmax(bits)`` is stored unsigned)."""
        bits = bits or self.opts.bits
        ref = fn(x.ref)
        hi_q = qmax(bits, signed)
        lo_q = -hi_q if signed else 0
        if scale is None:
            mag = np.abs(ref) if signed else np.maximum(ref, 0.0)
            peak = float(mag.max()) if mag.size else 0.0
            scale = peak / hi_q if peak > 0 else 1.0
            if self.opts.clip and peak > 0:
                scale = clipped_scale(ref, scale, lo_q, hi_q)
        if lsbs is None:
            lsbs = self.lookup_lsbs(x.lo, x.hi)
        offset = int(round_lsbs(np.int64(x.lo), lsbs))
        top = int(round_lsbs(np.int64(x.hi), lsbs))
        index = np.arange(offset, top + 1, dtype=np.int64)
        real = fn(index.astype(np.float64) * (2**lsbs) * x.scale)
        table = np.clip(round_half_up(real / scale), lo_q, hi_q).astype(np.int64) + zero
        data = table[round_lsbs(x.data, lsbs) - offset]
        out = self._emit("lut", name, [x], data, ref, scale, int(table.min()), int(table.max()),
                         table=table, lsbs=lsbs, offset=offset)
        out.zero = zero
        return out

    def requant(self, name: str, x: Val, fn: Fn | None = None, **kw) -> Val:
        """Requantize (and optionally apply ``fn``): one lookup fused, two unfused."""
        identity: Fn = lambda v: v  # noqa: E731
        if fn is None:
            return self.lut(name, x, identity, **kw)
        if self.opts.fuse:
            return self.lut(name, x, fn, **kw)
        signed = kw.get("signed", True)
        return self.lut(name + ".act", self.lut(name + ".rq", x, identity), fn, signed=signed,
                        **{k: v for k, v in kw.items() if k != "signed"})

    def mul(self, name: str, a: Val, b: Val) -> Val:
        corners = [a.lo * b.lo, a.lo * b.hi, a.hi * b.lo, a.hi * b.hi]
        return self._emit("mul", name, [a, b], a.data * b.data, a.ref * b.ref,
                          a.scale * b.scale, min(corners), max(corners))

    def product(self, name: str, a: Val, b: Val, op: str = "mul") -> Val:
        """``a * b`` (``op`` "mul") or ``a @ b`` ("matmul") of an unsigned ``a`` and a ``b``
        stored with a zero point (``b = b_u − zero``), computed as ``a·b_u − zero·Σa``.

        Why not ``mul``/``matmul`` of the signed value as it is: concrete multiplies mixed
        signs wrongly, so the backend centres one operand and adds a correction of the
        *other* operand's sums (``cerberus.ops._product``); concrete then gives that operand
        the output's width, and the product's lookups run at that width (measured on the
        d16 block: ×16 complexity for P·V). Here both operands are unsigned and the
        correction ``zero·Σa`` comes from a twin lookup of ``a`` (its table times
        ``zero``: one more PBS per element of ``a``, whose rounding it shares), so no
        operand is widened. ``a`` must be a lookup's output; the result is exact.
        """
        node = next(n for n in reversed(self.nodes) if n.name == a.name)
        if node.op != "lut" or a.lo < 0 or a.zero or b.lo < 0:
            raise CompileError(f"node {name}: product needs an unsigned lookup output and an "
                               "unsigned operand with a zero point")
        matrix = op == "matmul"
        c = int(b.zero)
        data = a.data @ b.data if matrix else a.data * b.data
        real = a.ref @ b.ref if matrix else a.ref * b.ref
        if not c:
            return self._emit(op, name, [a, b], data, real, a.scale * b.scale)
        prod = self._emit(op, f"{name}.u", [a, b], data, real, a.scale * b.scale)
        src = self.vals[node.inputs[0]]
        table = node.attrs["table"] * c
        twin = next((self.vals[n.name] for n in self.nodes  # concrete runs one of the same
                     if n.op == "lut" and n.inputs == node.inputs and n.attrs["lsbs"] ==
                     node.attrs["lsbs"] and np.array_equal(n.attrs["table"], table)), None)
        if twin is None:
            twin = self._emit("lut", f"{name}.zero", [src], a.data * c, a.ref * c, a.scale,
                              int(a.lo) * c, int(a.hi) * c, table=table,
                              lsbs=node.attrs["lsbs"], offset=node.attrs["offset"])
        corr = self.sum(f"{name}.zero.sum", twin, exact=True) if matrix else twin
        lo = hi = None
        if not matrix:  # exactly the signed product's range, as ``mul`` gives it
            corners = [x * (y - c) for x in (a.lo, a.hi) for y in (b.lo, b.hi)]
            lo, hi = min(corners), max(corners)
        return self._emit("sub", name, [prod, corr], prod.data - corr.data, real,
                          a.scale * b.scale, lo, hi)

    def mul_const(self, name: str, x: Val, const: np.ndarray, real: np.ndarray,
                  const_scale: float = 1.0) -> Val:
        """``x * const`` with a clear integer ``const`` standing for ``real``."""
        const = np.asarray(const, dtype=np.int64)
        corners = [x.lo * int(const.min()), x.lo * int(const.max()),
                   x.hi * int(const.min()), x.hi * int(const.max())]
        return self._emit("mul_const", name, [x], x.data * const, x.ref * real,
                          x.scale * const_scale, min(corners), max(corners), const=const)

    def add_const(self, name: str, x: Val, real: np.ndarray) -> Val:
        const = np.atleast_1d(round_half_up(np.asarray(real) / x.scale)).astype(np.int64)
        return self._emit("add_const", name, [x], x.data + const, x.ref + real, x.scale,
                          x.lo + int(const.min()), x.hi + int(const.max()), const=const)

    def add(self, name: str, a: Val, b: Val) -> Val:
        if not math.isclose(a.scale, b.scale, rel_tol=1e-12):
            raise CompileError(f"node {name}: adding values of different scales")
        return self._emit("add", name, [a, b], a.data + b.data, a.ref + b.ref, a.scale,
                          a.lo + b.lo, a.hi + b.hi)

    def sub(self, name: str, a: Val, b: Val) -> Val:
        if not math.isclose(a.scale, b.scale, rel_tol=1e-12):
            raise CompileError(f"node {name}: subtracting values of different scales")
        return self._emit("sub", name, [a, b], a.data - b.data, a.ref - b.ref, a.scale,
                          a.lo - b.hi, a.hi - b.lo)

    def row_max(self, name: str, s: Val, mask: np.ndarray) -> tuple[Val, Val, int]:
        """Row-wise max over the unmasked entries, as a tree of ``b + relu(a − b)`` lookups.

        Masked entries are first set to the lowest representable score (a clear multiply
        and a clear add), so a causal row's max ignores the future while the range stays
        that of ``s``. T−1 lookups per row, no encrypted comparison. With a rounded
        difference each level may overshoot the true max by half a rounding step, which
        the bounds below account for; any per-row shift near the max suits softmax.
        Returns (max, masked scores, total overshoot bound).
        """
        keep = mask.astype(np.int64)
        cur = self.mul_const(f"{name}.keep", s, keep, mask)
        cur = self.add_const(f"{name}.masked", cur, (1.0 - mask) * s.lo * s.scale)
        masked = cur
        lo, hi = s.lo, s.hi
        level = 0
        while cur.data.shape[-1] > 1:
            w = cur.data.shape[-1]
            h = w // 2
            a = self.slice(f"{name}.l{level}.a", cur, 0, h)
            b = self.slice(f"{name}.l{level}.b", cur, h, 2 * h)
            d = self.sub(f"{name}.l{level}.diff", a, b)
            r = self.lut(f"{name}.l{level}.relu", d, lambda v: np.maximum(v, 0.0),
                         scale=s.scale, signed=False, bits=width(0, max(d.hi, 1)))
            lsbs = int(self.nodes[-1].attrs["lsbs"])
            hi += (1 << lsbs) // 2
            m = self._emit("add", f"{name}.l{level}.max", [b, r], b.data + r.data,
                           b.ref + r.ref, s.scale, lo, hi)
            if w % 2:
                m = self.concat(f"{name}.l{level}.carry", [m, self.slice(
                    f"{name}.l{level}.rest", cur, 2 * h, w)])
            cur, level = m, level + 1
        return cur, masked, hi - s.hi

    def matmul(self, name: str, a: Val, b: Val) -> Val:
        return self._emit("matmul", name, [a, b], a.data @ b.data, a.ref @ b.ref,
                          a.scale * b.scale)

    def sum(self, name: str, x: Val, *, exact: bool = False) -> Val:
        """Row sums; ``exact`` sizes them by the worst case (n × the input's bounds) instead
        of calibration — right where that costs no width, as for softmax's exp row sums."""
        n = x.data.shape[-1]
        lo, hi = (x.lo * n, x.hi * n) if exact else (None, None)
        return self._emit("sum", name, [x], x.data.sum(-1, keepdims=True),
                          x.ref.sum(-1, keepdims=True), x.scale, lo, hi)

    def slice(self, name: str, x: Val, start: int, stop: int) -> Val:
        out = self._emit("slice", name, [x], x.data[..., start:stop], x.ref[..., start:stop],
                         x.scale, x.lo, x.hi, start=start, stop=stop)
        out.zero = x.zero
        return out

    def concat(self, name: str, xs: list[Val]) -> Val:
        if len({v.scale for v in xs}) != 1:
            raise CompileError(f"node {name}: concatenating values of different scales")
        return self._emit("concat", name, xs, np.concatenate([v.data for v in xs], -1),
                          np.concatenate([v.ref for v in xs], -1), xs[0].scale,
                          min(v.lo for v in xs), max(v.hi for v in xs))

    def transpose(self, name: str, x: Val) -> Val:
        out = self._emit("transpose", name, [x], np.swapaxes(x.data, -1, -2),
                         np.swapaxes(x.ref, -1, -2), x.scale, x.lo, x.hi)
        out.zero = x.zero
        return out

    # -- transformer pieces ---------------------------------------------------------
    def layernorm(self, name: str, x: Val, ln: torch.nn.LayerNorm, *, feeds_linear: bool) -> Val:
        """Normalise each row; γ/β only where they were not folded into the next linear.

        ``feeds_linear``: only linears read the output (pre-LN), so a per-channel factor
        may ride along to their weights; otherwise (post-LN: the output is the residual
        stream) it is undone here.
        """
        d = x.data.shape[-1]
        eps = ln.eps
        center = d * np.eye(d) - 1.0
        c = self._emit("linear", f"{name}.center", [x], x.data @ center.astype(np.int64),
                       x.ref @ center, x.scale, weight=center.astype(np.int64), mult=None,
                       bias=None)
        # Equalise before rounding, so every row and channel spans the table index range:
        # - positions: row t times an integer r_t (LayerNorm is invariant to a row's scale,
        #   so nothing needs undoing; a circuit's positions are fixed, so r_t is clear);
        # - channels (SmoothQuant-style): channel j times an integer k_j, undone in the
        #   sum of squares and in the next linear's weight columns.
        t = c.data.shape[-2]
        margin = 1.0 + self.opts.margin
        row_peak = np.abs(c.data).reshape(-1, t, d).max(axis=(0, 2)).astype(np.float64)
        rows = np.maximum(1.0, np.floor(row_peak.max() / (np.maximum(row_peak, 1.0) * margin)))
        if np.any(rows > 1):
            c = self.mul_const(f"{name}.rows", c, rows.astype(np.int64)[:, None], rows[:, None])
        peak = np.abs(c.data).reshape(-1, d).max(axis=0).astype(np.float64)
        k = np.maximum(1.0, np.floor(peak.max() / (np.maximum(peak, 1.0) * margin)))
        if np.any(k > 1):
            c = self.mul_const(f"{name}.equalize", c, k.astype(np.int64), k)
            sq = self.lut(f"{name}.square", c, np.square, signed=False)
            ss = self.linear(f"{name}.sumsq", sq, (1.0 / k**2)[None, :], None, weight_bits=16)
        else:
            sq = self.lut(f"{name}.square", c, np.square, signed=False)
            ss = self.sum(f"{name}.sumsq", sq)
        # Σ (d(x−μ))² = d³·var, so 1/σ = 1/sqrt(ss/d³ + ε)
        inv = self.lut(f"{name}.rsqrt", ss, lambda v: 1.0 / np.sqrt(np.maximum(v, 0) / d**3 + eps),
                       signed=False)
        cq = self.requant(f"{name}.cq", c, zero=qmax(self.opts.bits))
        # c·(1/σ) = d·(x−μ)/σ: the 1/d goes into the requantization below
        xn = self.product(f"{name}.norm", inv, cq)
        gamma = ln.weight.detach().double().numpy()
        beta = ln.bias.detach().double().numpy()
        wide = self.opts.wide_bits
        identity = np.allclose(gamma, 1.0) and np.allclose(beta, 0.0)
        if identity and (feeds_linear or np.all(k == 1)):
            out = self.requant(f"{name}.out", xn, lambda v: v / d, bits=wide)
            out.chan = k if np.any(k > 1) else None
            return out
        xn = self.requant(f"{name}.xn", xn, lambda v: v / d, bits=wide)
        g_real = gamma / k
        g_scale = float(np.abs(g_real).max()) / qmax(self.opts.weight_bits) or 1.0
        g_int = round_half_up(g_real / g_scale)
        y = self.mul_const(f"{name}.gamma", xn, g_int, g_real, g_scale)
        y = self.add_const(f"{name}.beta", y, beta)
        return self.requant(f"{name}.out", y, bits=wide)

    def attention(self, name: str, x: Val, blk: Block, causal: bool,
                  keys: Val | None = None) -> Val | None:
        """Multi-head attention of the kept heads; returns the output-projection accumulator.

        ``keys``: the input's mask column (``key_column``). A padded key then gets zero
        weight in every head and moves no real position's output by a single bit. A key
        enters a head's softmax in two places, and the mask is applied at each as cheaply
        as this lowering knows how (FHE cost is PBS count × width):

        * The row max. It is only a shift, but the integers of a real row must not depend
          on what the padding holds, and the max tree rounds each pair's difference, so a
          padded score must be a constant there, as the causal mask makes a future score.
          The layer's keys are multiplied by the bit (``k ⊙ keep``: 2 PBS per element of
          k at ``bits`` + 1, i.e. 2·T·head_dim per head), so a padded key's score is
          exactly 0, and a leveled ``+ pad·s_lo`` puts it at the bottom of the score
          range: the tree is that of the real keys and no width grows. Rejected: a
          penalty on the scores alone (leveled, but one more bit for the whole tree, and
          a padded key's value leaks into the tree's roundings), or masking the scores
          themselves (a product of ~20-bit values: no TFHE parameters).
        * The exp weight, folded into the exp lookup's index (``zero_shift``): ``z +
          pad·Q`` (leveled) moves a padded key to an index where the table reads 0. The
          shifted scores ``z ∈ [0, s_hi − s_lo + 2·slop]`` fill about half of their
          power-of-two index range, and exp reaches 0 well inside it for any but very
          flat attention, so Q usually fits: no PBS and no bit more. Otherwise Q lands
          just past the real range (the table reads 0 there by construction) and the
          index grows one bit: one more rounding PBS per score at ``max_lookup_bits``.
          Rejected: ``e ⊙ keep``, 2 PBS per score at ``bits`` + 1 (2·T² per head).
        * The bits themselves, ``keep`` and ``pad``: 1-bit lookups of the mask column,
          once per graph (``shared_bit``), 3 PBS per position with their shared rounding.

        With the causal mask the two combine: a key is hidden when it is in the future
        or padded. A row with no visible key (left padding's own rows) sums to 0 and
        gets weight 0 everywhere.
        """
        hd = blk.cfg.head_dim
        w = lambda lin: lin.weight.detach().double().numpy()  # noqa: E731
        bias = lambda lin: lin.bias.detach().double().numpy()  # noqa: E731
        if blk.n_kept == 0:
            return None
        q = self.requant(f"{name}.q", self.linear(f"{name}.q.lin", x, w(blk.q), bias(blk.q)))
        k = self.requant(f"{name}.k", self.linear(f"{name}.k.lin", x, w(blk.k), bias(blk.k)),
                         zero=0 if keys is None else qmax(self.opts.bits))
        v = self.requant(f"{name}.v", self.linear(f"{name}.v.lin", x, w(blk.v), bias(blk.v)),
                         zero=qmax(self.opts.bits))
        if keys is not None:
            k = self.product(f"{name}.k.keys", self.shared_bit("input.keep", keys,
                                                               lambda b: b > 0.5), k)
            if "input.pad" not in self.vals:  # the padding bit of each key, as a row
                self.transpose("input.pad", self.shared_bit("input.pad.col", keys,
                                                           lambda b: b < 0.5))
        t = x.data.shape[-2]
        mask = np.tril(np.ones((t, t))) if causal else np.ones((t, t))
        gates = blk.gates.detach().double().numpy()
        heads = []
        for h in range(blk.n_kept):
            hn = f"{name}.h{blk.cfg.heads_kept[blk.layer][h]}"
            qh = self.slice(f"{hn}.q", q, h * hd, (h + 1) * hd)
            kh = self.transpose(f"{hn}.kT", self.slice(f"{hn}.k", k, h * hd, (h + 1) * hd))
            vh = self.slice(f"{hn}.v", v, h * hd, (h + 1) * hd)
            s = self.matmul(f"{hn}.scores", qh, kh)
            c = 1.0 if blk.cfg.attn_scale_folded else 1.0 / math.sqrt(hd)
            if not self.opts.fuse:  # a naive compiler requantizes the scores on their own
                s, c = self.requant(f"{hn}.scaled", s, lambda z, c=c: z * c), 1.0
            pad = None
            if keys is not None:  # a padded key's score is 0 (k ⊙ keep): move it to s.lo
                pad = self.vals["input.pad"]
                pen = self.mul_const(f"{hn}.pad.score", pad, np.int64(s.lo),
                                     np.float64(s.lo * s.scale), s.scale)
                s = self._emit("add", f"{hn}.scores.keys", [s, pen], s.data + pen.data,
                               s.ref + pen.ref, s.scale, s.lo, s.hi)
            p = self.softmax(hn, s, c, mask, gates[h], pad)
            heads.append(self.requant(f"{hn}.ctx", self.product(f"{hn}.pv", p, vh, "matmul"),
                                      bits=self.opts.wide_bits))
        if len({hh.scale for hh in heads}) > 1:  # one scale for the concatenation
            common = max(hh.scale for hh in heads)
            heads = [hh if hh.scale == common else self.requant(
                f"{hh.name}.align", hh, scale=common, bits=self.opts.wide_bits) for hh in heads]
        ctx = heads[0] if len(heads) == 1 else self.concat(f"{name}.concat", heads)
        return self.linear(f"{name}.o", ctx, w(blk.o), bias(blk.o))

    def softmax(self, hn: str, s: Val, c: float, mask: np.ndarray, gate: float,
                pad: Val | None = None, scale: float | None = None) -> Val:
        """``gate · softmax(c·s)`` over the unmasked keys, requantized to ``bits`` unsigned.

        softmax(s) = softmax(s − max): the exp table sees max − s ≥ 0 only, so its whole
        (unsigned) index range covers what matters; the scale c goes in it too. ``pad``:
        the padding bit of each key as a row (``attention``'s key mask); ``scale``: the
        probabilities' unit (default: from their calibrated peak).
        """
        bits = self.opts.bits
        m, masked, slop = self.row_max(f"{hn}.max", s, mask)
        z = self._emit("sub", f"{hn}.shift", [m, masked], m.data - masked.data,
                       m.ref - masked.ref, s.scale, -slop, s.hi - s.lo + slop)
        z = self.add_const(f"{hn}.offset", z, np.asarray(slop * s.scale))
        exp: Fn = lambda v, o=slop * s.scale, c=c: np.exp(-np.maximum(v - o, 0.0) * c)  # noqa: E731
        e_scale = 1.0 / qmax(bits, False)
        lsbs = None
        if pad is not None:  # fold the bit into the exp lookup's index
            shift, lsbs, exp = self.zero_shift(z, exp, e_scale)
            z = self.add(f"{hn}.offset.keys", z, self.mul_const(
                f"{hn}.pad.exp", pad, np.int64(shift), np.float64(shift * z.scale), z.scale))
        e = self.lut(f"{hn}.exp", z, exp, signed=False, scale=e_scale, lsbs=lsbs)
        if pad is not None:
            e.ref = e.ref * (1.0 - pad.ref)  # the model's weight of a padded key: 0
        em = self.mul_const(f"{hn}.mask", e, mask.astype(np.int64), mask)
        z = self.sum(f"{hn}.rowsum", em, exact=True)
        # sized by the rows that see a key: a row of padding alone sums to 0
        seen = z.ref[z.ref > 0]
        inv = self.lut(f"{hn}.recip", z, lambda r: 1.0 / np.maximum(r, 1e-9), signed=False,
                       scale=float((1.0 / seen).max()) / qmax(bits, False)
                       if seen.size else None)
        return self.requant(f"{hn}.probs", self.mul(f"{hn}.softmax", em, inv),
                            lambda r, g=gate: r * g, signed=False, scale=scale)

    def attention_folded(self, name: str, x: Val, blk: Block, causal: bool) -> Val:
        """Multi-head attention with the output projection folded into the values.

        ``Σ_h P_h (x W_v,hᵀ + b_v,h) W_o,hᵀ + b_o = Σ_h P_h V′_h + b`` with
        ``V′_h = x·(W_o,h W_v,h)ᵀ`` one clear linear per head and, since a softmax row sums
        to one (times the head's gate), ``b = b_o + Σ_h g_h W_o,h b_v,h`` added once at the
        end. Saved: the context requantization (1 + lsbs PBS per element) and the output
        projection's accumulator. The scores keep their own q and k lookups: an operand
        of an encrypted product must not be read by a clear linear too, since concrete
        gives a linear's input its output's width and the product's lookups would run at
        that width (measured: ×10 complexity with ``A = x·W_qᵀW_k`` against ``x``).

        q and k are balanced per channel (SmoothQuant's α = 1/2, free in the weights):
        ``q_c k_c = (α_c q_c)(k_c / α_c)`` with ``α_c = sqrt(max|k_c| / max|q_c|)`` on
        calibration, so both operands of the narrow product span one range per channel.

        Returns the output accumulator (``Σ_h P_h V′_h`` + biases), not requantized.
        """
        hd = blk.cfg.head_dim
        w = lambda lin: lin.weight.detach().double().numpy()  # noqa: E731
        bias = lambda lin: lin.bias.detach().double().numpy()  # noqa: E731
        if blk.n_kept == 0:
            raise CompileError(f"node {name}: attention with no head kept")
        t = x.data.shape[-2]
        mask = np.tril(np.ones((t, t))) if causal else np.ones((t, t))
        gates = blk.gates.detach().double().numpy()
        c = 1.0 if blk.cfg.attn_scale_folded else 1.0 / math.sqrt(hd)
        wq, wk, wv, wo = w(blk.q), w(blk.k), w(blk.v), w(blk.o)
        bq, bk, bv, bo = bias(blk.q), bias(blk.k), bias(blk.v), bias(blk.o)
        chan = np.ones(x.ref.shape[-1]) if x.chan is None else x.chan
        real = x.ref / chan  # the input's real values, for the balance below
        out_bias = bo.copy()
        # one unit for every head's P and V′, so their products add as they are
        heads = [slice(h * hd, (h + 1) * hd) for h in range(blk.n_kept)]
        p_scale = float(gates.max()) / qmax(self.opts.bits, False)
        v_scale = max(float(np.abs(real @ (wo[:, r] @ wv[r]).T).max()) for r in heads) \
            / qmax(self.opts.bits) or 1.0
        acc: Val | None = None
        for h in range(blk.n_kept):
            hn = f"{name}.h{blk.cfg.heads_kept[blk.layer][h]}"
            rows = slice(h * hd, (h + 1) * hd)
            peak = lambda lw, lb: np.abs(real @ lw.T + lb).reshape(-1, hd).max(0)  # noqa: E731
            alpha = np.sqrt(np.maximum(peak(wk[rows], bk[rows]), 1e-12)
                            / np.maximum(peak(wq[rows], bq[rows]), 1e-12))
            q = self.requant(f"{hn}.q", self.linear(f"{hn}.q.lin", x, wq[rows] * alpha[:, None],
                                                    bq[rows] * alpha))
            k = self.requant(f"{hn}.k", self.linear(f"{hn}.k.lin", x, wk[rows] / alpha[:, None],
                                                    bk[rows] / alpha))
            s = self.matmul(f"{hn}.scores", q, self.transpose(f"{hn}.kT", k))
            one = blk.n_kept == 1  # alone, a head keeps its own calibrated units
            p = self.softmax(hn, s, c, mask, gates[h], scale=None if one else p_scale)
            out_bias += gates[h] * (wo[:, rows] @ bv[rows])
            v = self.requant(f"{hn}.vo", self.linear(f"{hn}.vo.lin", x, wo[:, rows] @ wv[rows],
                                                     None), scale=None if one else v_scale,
                             zero=qmax(self.opts.bits))
            pv = self.product(f"{hn}.pv", p, v, "matmul")
            acc = pv if acc is None else self.add(f"{hn}.sum", acc, pv)
        assert acc is not None
        return self.add_const(f"{name}.bias", acc, out_bias)

    def shared_bit(self, name: str, keys: Val, fn: Fn) -> Val:
        """One lookup ``fn`` of the mask column for the whole graph, made where first used.

        concrete computes identical lookups of one value once (measured: two heads' own
        ``pad`` lookups cost the PBS of one), so one node per bit is what the circuit
        runs and what ``IntGraph.pbs_count`` can count.
        """
        if name not in self.vals:
            self.bit(name, keys, fn)
        return self.vals[name]

    def zero_shift(self, x: Val, fn: Fn, scale: float) -> tuple[int, int, Fn]:
        """Fold a 0/1 mask into a lookup of ``fn`` on ``x``: ``(Q, lsbs, fn′)`` such that the
        lookup of ``fn′`` on ``x + Q`` reads 0 for every x in [x.lo, x.hi] while on ``x`` it
        reads what ``fn``'s does, both rounded by ``lsbs``.

        Q is the smallest multiple of the rounding step that reaches an index from which
        the table of ``fn`` reads 0 up to its end (``fn`` non-increasing, as exp of a
        shift is); when it never does, Q is just past the range and ``fn′`` is 0 there.
        A Q that widens the index past ``max_lookup_bits`` takes one more rounding bit,
        with which Q is found again.
        """
        lsbs = self.lookup_lsbs(x.lo, x.hi)
        while True:
            step = 1 << lsbs
            lo, hi = (int(round_lsbs(np.int64(b), lsbs)) for b in (x.lo, x.hi))
            index = np.arange(lo, hi + 1, dtype=np.int64)
            reads = round_half_up(fn(index.astype(np.float64) * step * x.scale) / scale)
            nonzero = np.flatnonzero(reads > 0)
            first_zero = lo + (int(nonzero[-1]) + 1 if nonzero.size else 0)
            shift = (first_zero - lo) * step
            wider = self.lookup_lsbs(x.lo, x.hi + shift)
            if wider <= lsbs:
                break
            lsbs = wider
        cut = (hi + 0.5) * step * x.scale  # between the last real index and the next
        return shift, lsbs, lambda v: np.where(v < cut, fn(v), 0.0)

    def mlp(self, name: str, x: Val, blk: Block) -> Val:
        w = lambda lin: lin.weight.detach().double().numpy()  # noqa: E731
        bias = lambda lin: lin.bias.detach().double().numpy()  # noqa: E731
        h = self.linear(f"{name}.fc1", x, w(blk.fc1), bias(blk.fc1))
        h = self.requant(f"{name}.act", h, ACTIVATION_FNS[blk.cfg.activation],
                         bits=self.opts.wide_bits)
        return self.linear(f"{name}.fc2", h, w(blk.fc2), bias(blk.fc2))

    def residual(self, name: str, x: Val, acc: Val | None) -> Val:
        """``x + branch`` on the residual stream's own unit, exactly.

        The branch accumulator goes through one lookup into the stream's unit; the add is
        leveled and nothing rounds the stream itself, so it never loses precision (it
        only grows by the branch's range). Only lookups reading it round.
        """
        if acc is None:
            return x
        branch = self.lut(f"{name}.branch", acc, lambda v: v, scale=x.scale,
                          bits=self.opts.wide_bits + 1)
        return self.add(f"{name}.add", x, branch)


def padding_masks(n: int, t: int) -> np.ndarray:
    """``[n, t]`` key masks (1 = real token) to calibrate a key-masked lowering with: real
    lengths 1 … t−1 in turn, padded on the right (as a tokenizer pads an encoder's batch)
    and on the left (as a causal LM's batch is padded to generate) alternately."""
    keep = np.ones((n, t), dtype=np.int64)
    for i in range(n):
        real = 1 + (i // 2) % max(t - 1, 1)
        if i % 2:
            keep[i, : t - real] = 0
        else:
            keep[i, real:] = 0
    return keep


def lower_blocks(
    model: CanonicalTransformer, calib: np.ndarray, opts: LoweringOptions | None = None,
    keep: np.ndarray | None = None,
) -> IntGraph:
    """Lower ``model.run_blocks`` to an IntGraph using embedded calibration inputs [N, T, d].

    With ``opts.key_mask`` the graph's input is ``[T, d + 1]``, the last column the key
    mask, and ``keep`` ``[N, T]`` gives the calibration windows' masks. By default every
    window is seen twice, unpadded and padded (``padding_masks``): padding changes what
    the attention computes (a real row over fewer keys, a row of padding alone), and every
    range must hold for it too. So must concrete's: it sizes a circuit from its input set,
    which must hold padded windows as well (``padding_masks``).
    """
    opts = opts or LoweringOptions()
    for b in (opts.bits, opts.weight_bits):
        if not 2 <= b <= 8:
            raise CompileError(f"bits must be in 2..8, got {b}")
    if not 2 <= opts.max_lookup_bits <= 16:
        raise CompileError(f"max lookup bits must be in 2..16, got {opts.max_lookup_bits}")
    calib = np.asarray(calib, dtype=np.float64)
    n, t, d = calib.shape
    bld = Builder(opts)
    keys = None
    if opts.key_mask:
        if keep is None:
            keep = np.concatenate([np.ones((n, t), dtype=np.int64), padding_masks(n, t)])
            calib = np.concatenate([calib, calib])
        keep = np.asarray(keep)
        if keep.shape != calib.shape[:2] or not np.isin(keep, (0, 1)).all():
            raise CompileError(f"calibration key masks must be 0/1 of shape {calib.shape[:2]}, "
                               f"got {keep.shape}")
        inp = bld.input(calib, keep.astype(np.int64))
        x = bld.slice("input.x", inp, 0, d)
        keys = bld.key_column(inp, d)
    elif keep is not None:
        raise CompileError("calibration key masks need LoweringOptions(key_mask=True)")
    else:
        inp = x = bld.input(calib)
    causal = model.cfg.kind == "causal-lm"
    if opts.fold_attention and opts.key_mask:
        raise CompileError("fold_attention takes no key mask")

    def attend(name: str, h: Val, blk: Block) -> Val | None:
        if opts.fold_attention:
            return bld.attention_folded(name, h, blk, causal) if blk.n_kept else None
        return bld.attention(name, h, blk, causal, keys)

    for i, blk in enumerate(model.blocks):
        p = f"l{i}"
        if model.cfg.pre_ln:  # x + attn(ln1 x); x + mlp(ln2 x)
            h = bld.layernorm(f"{p}.ln1", x, blk.ln1, feeds_linear=True)
            x = bld.residual(f"{p}.res1", x, attend(f"{p}.attn", h, blk))
            h = bld.layernorm(f"{p}.ln2", x, blk.ln2, feeds_linear=True)
            x = bld.residual(f"{p}.res2", x, bld.mlp(f"{p}.mlp", h, blk))
        else:  # ln1(x + attn x); ln2(x + mlp x)
            x = bld.residual(f"{p}.res1", x, attend(f"{p}.attn", x, blk))
            x = bld.layernorm(f"{p}.ln1", x, blk.ln1, feeds_linear=False)
            x = bld.residual(f"{p}.res2", x, bld.mlp(f"{p}.mlp", x, blk))
            x = bld.layernorm(f"{p}.ln2", x, blk.ln2, feeds_linear=False)
    # d_model is the input's width: the model's, plus the mask column with key_mask
    meta = {"input_scale": inp.scale, "input_bits": opts.wide_bits,
            "output_scale": x.scale, "bits": opts.bits, "wide_bits": opts.wide_bits,
            "weight_bits": opts.weight_bits, "max_lookup_bits": opts.max_lookup_bits,
            "seq_len": t, "d_model": int(inp.data.shape[-1]), "key_mask": opts.key_mask}
    graph = IntGraph(bld.nodes, "input", x.name, meta)
    graph.calibration_ref = x.ref  # float reference of the output, for reports and tests
    return graph


def lower_attention(
    blk: Block, calib: np.ndarray, opts: LoweringOptions | None = None, *,
    causal: bool = False,
) -> IntGraph:
    """Lower one block's attention alone, on an input the client has normalised (SPEC C6).

    The program a client runs when it computes ``z = LN(x)`` itself and the miner only
    the attention ``attn(z)`` (``Builder.attention_folded``): the split of concrete-ml's
    attention circuits, compared in benchmarks/fhe_compare_block.py. The input ``[T, d]``
    is quantized to ``opts.wide_bits`` (only clear linears read it); the output is
    the attention's accumulator, which the client rescales by ``meta["output_scale"]``.
    """
    opts = opts or LoweringOptions()
    if opts.key_mask:
        raise CompileError("lower_attention takes no key mask")
    calib = np.asarray(calib, dtype=np.float64)
    n, t, d = calib.shape
    bld = Builder(opts)
    x = bld.input(calib)
    out = bld.attention_folded(f"l{blk.layer}.attn", x, blk, causal)
    meta = {"input_scale": x.scale, "input_bits": opts.wide_bits, "output_scale": out.scale,
            "bits": opts.bits, "wide_bits": opts.wide_bits, "weight_bits": opts.weight_bits,
            "max_lookup_bits": opts.max_lookup_bits, "seq_len": t, "d_model": d,
            "key_mask": False}
    graph = IntGraph(bld.nodes, "input", out.name, meta)
    graph.calibration_ref = out.ref
    return graph
