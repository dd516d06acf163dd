"""FHE cost model C(heads, bit-widths) for budgeted squeezing (SPEC C3, paper §7.1.3).

Why a model and not a measurement: squeezing must compare thousands of head subsets, and one
concrete-python compilation takes minutes. Under TFHE, programmable bootstraps (PBS, i.e.
table lookups) dominate, and a PBS's cost grows about 2× per extra bit of its input; a
product of two encrypted values costs two lookups on inputs one bit wider
((a+b)²/4 − (a−b)²/4), and a linear layer with clear weights costs no PBS at all, only
cheap additions. So the model counts PBS per input width plus clear MACs and additions, and
prices them with :class:`CostConstants` — every number lives there, with its provenance,
so that the FHE-lowering issue (issue 5) can refit them on real compilations.

What is counted is the part the miner computes under FHE (SPEC C6): the transformer blocks.
Embeddings, the final norm and the LM head run on the client in the clear.

Bit-width conventions (``bits`` = n, the width of values entering encrypted products,
SPEC C4; ``wide_bits`` = W, the width of lookup outputs that feed only clear linears and
residual adds; ``weight_bits`` = b; ``round_bits`` = R, the widest table index, SPEC C6),
following ``cerberus/lower.py`` node by node:

* a clear-weight linear on a W-bit input with fan-in K accumulates W + b + ⌈log2 K⌉ bits;
* a lookup on a value of A > R bits first removes A − R bits with an exact
  ``round_bit_pattern``, which concrete-python 2.11 runs as **one PBS per removed bit** per
  element (measured: benchmarks/RESULTS.md, calibrate_cost; tests/fhe/test_pbs_count.py);
  those PBS are priced like the lookup's own (the calibration measured ≈ 1.01×). In the
  full partition this rounding, not the tables, is most of the PBS: a 27-bit q/k/v
  accumulator pays 19 rounding PBS per element before its one table lookup;
* an enc×enc product of two n-bit values costs 2 PBS at n + 1 bits (not rounded);
* two lookups of the same value with the same rounding share it (LayerNorm's square and
  centre lookups), as concrete computes it once.

For a lowered graph :func:`graph_cost` prices the exact per-node PBS counts of
``IntGraph.pbs_by_node`` (equal to concrete's statistics); :func:`model_cost` is the
closed form squeezing needs before any graph exists, and stays within a small factor of
it (tests/cerberus/test_cost.py).

Attention per head, sequence T, head dim h, model dim d:
q/k/v requantisation 3·T·h lookups; QKᵀ T²·h products; row max T·(T−1) ReLU lookups;
softmax T² exp lookups, T reciprocal lookups and T² normalising products; P·V T²·h
products; context requantisation T·h lookups; clear MACs 4·T·d·h (the head's q/k/v rows
and its o columns).
"""

from __future__ import annotations

import json
import math
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from cerberus.errors import CompileError
from cerberus.frontends.canonical import TransformerConfig
from cerberus.ir import IntGraph
from cerberus.lower import DEFAULT_WIDE_BITS
from cerberus.ops import op_def


@dataclass(frozen=True)
class CostConstants:
    """Every number of the cost model, in seconds of single-thread CPU time.

    These defaults are the fallback when ``cost_table.json`` (the fit of
    ``benchmarks/calibrate_cost.py``, benchmarks/RESULTS.md#calibrate_cost) is missing; they
    are hand measurements on concrete-python 2.11, 2 cores, 2026-12-01, made before the
    project had a calibration script, and are not fitted:
    * ``pbs_ref_s``: enc×enc 4×8 @ 8×4 with 3-bit inputs ran 256 PBS of 7 bits in 1.81 s
      → 7.1 ms per 7-bit PBS. (The 16×16 linear + ReLU rows give 56 ms at 5 bits and
      0.74 s at 9 bits per lookup, i.e. those circuits' parameters are set by their wide
      accumulators; the 2×/bit law over-predicts them at low width and under-predicts at 9.)
    * ``growth_per_bit``: SPEC C3's "cost grows ~2× per extra bit of a lookup's input".
    * ``clear_mac_s``: the 16×16 clear-weight linear (256 MACs, no PBS) ran in 0.018 s.
    * ``add_s``: an encrypted addition/subtraction, priced like a clear MAC (upper bound).
    """

    pbs_ref_s: float = 1.81 / 256
    pbs_ref_bits: int = 7
    growth_per_bit: float = 2.0
    mul_pbs_per_product: int = 2
    mul_extra_bits: int = 1
    clear_mac_s: float = 0.018 / 256
    add_s: float = 0.018 / 256
    calibrated_on: str = "uncalibrated fallback (hand measurements, concrete-python 2.11)"
    date: str = "2026-12-01"

    def pbs_s(self, width: int) -> float:
        """Seconds per PBS whose input is ``width`` bits: c(w) = c_ref · g^(w − w_ref)."""
        return self.pbs_ref_s * self.growth_per_bit ** (width - self.pbs_ref_bits)

    def to_dict(self) -> dict:
        return asdict(self)


COST_TABLE = Path(__file__).with_name("cost_table.json")


def load_constants(path: Path = COST_TABLE) -> CostConstants:
    """Constants fitted by ``benchmarks/calibrate_cost.py`` (SPEC C3, issue 5), else defaults.

    Why a fallback: squeezing must work on a checkout without a calibration table; a table
    that exists but cannot be read is warned about rather than silently replaced.
    """
    if not path.exists():
        return CostConstants()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))["constants"]
        names = {f.name for f in fields(CostConstants)}
        return CostConstants(**{k: v for k, v in data.items() if k in names})
    except (OSError, ValueError, KeyError, TypeError) as e:
        warnings.warn(f"{path}: unreadable cost table ({e}); using uncalibrated defaults",
                      stacklevel=2)
        return CostConstants()


DEFAULT_CONSTANTS = load_constants()
DEFAULT_ROUND_BITS = 8  # SPEC C6: no lookup wider than 8 bits by default


@dataclass
class CostBreakdown:
    """Counted FHE work and its price. ``rows`` is the per-layer/per-head table."""

    pbs_by_width: dict[int, int] = field(default_factory=dict)
    clear_macs: int = 0
    adds: int = 0
    total: float = 0.0  # estimated seconds
    rows: list[dict] = field(default_factory=list)
    constants: CostConstants = DEFAULT_CONSTANTS

    @property
    def pbs(self) -> int:
        return sum(self.pbs_by_width.values())

    @property
    def max_lookup_bits(self) -> int:
        return max(self.pbs_by_width, default=0)

    def per_head(self) -> dict[tuple[int, int], float]:
        """{(layer, original head id): seconds} for every head row."""
        return {(r["layer"], r["head"]): r["seconds"] for r in self.rows if r["part"] == "head"}

    def to_dict(self) -> dict:
        return {
            "total_s": self.total,
            "pbs": self.pbs,
            "max_lookup_bits": self.max_lookup_bits,
            "pbs_by_width": {str(w): c for w, c in sorted(self.pbs_by_width.items())},
            "clear_macs": self.clear_macs,
            "adds": self.adds,
            "rows": [dict(r) for r in self.rows],
            "constants": self.constants.to_dict(),
        }


class _Tally:
    """Accumulates lookups, products, MACs and adds for one row of the table."""

    def __init__(self, n: int, round_bits: int, k: CostConstants, wide_bits: int,
                 weight_bits: int) -> None:
        self.n, self.round_bits, self.k = n, round_bits, k
        self.wide, self.wbits = wide_bits, weight_bits
        self.pbs: Counter[int] = Counter()
        self.macs = 0
        self.adds = 0

    def acc_bits(self, fan_in: int) -> int:
        """Width of a clear-weight linear's accumulator on a W-bit input (``lower.py``)."""
        return self.wide + self.wbits + _clog2(fan_in)

    def lookups(self, count: int, source_bits: int, *, rounded: bool = True) -> None:
        """``count`` lookups of a ``source_bits``-wide value, rounded to ``round_bits``.

        ``rounded=False``: the value's rounding is shared with another lookup already
        counted, so only the tables are paid.
        """
        if count <= 0:
            return
        width = min(source_bits, self.round_bits)
        lsbs = source_bits - width if rounded else 0
        self.pbs[width] += count * (1 + lsbs)

    def products(self, count: int) -> None:
        if count > 0:
            self.pbs[self.n + self.k.mul_extra_bits] += self.k.mul_pbs_per_product * count
            self.adds += 3 * count  # a+b, a−b, and the difference of the two squares

    def seconds(self) -> float:
        lut = sum(c * self.k.pbs_s(w) for w, c in self.pbs.items())
        return lut + self.macs * self.k.clear_mac_s + self.adds * self.k.add_s

    def row(self, layer: int, part: str, head: int | None = None) -> dict:
        return {
            "layer": layer,
            "part": part,
            "head": head,
            "pbs": sum(self.pbs.values()),
            "max_bits": max(self.pbs, default=0),
            "seconds": self.seconds(),
        }


def _clog2(x: int) -> int:
    return max(0, math.ceil(math.log2(max(1, x))))


def _check(cfg: TransformerConfig, seq_len: int, bits: int, round_bits: int) -> None:
    if not 1 <= seq_len <= cfg.n_positions:
        raise CompileError(f"seq_len {seq_len} out of range 1..{cfg.n_positions}")
    if not 2 <= bits <= 16:
        raise CompileError(f"bits {bits} out of range 2..16")
    if round_bits < 1:
        raise CompileError(f"round_bits must be ≥ 1, got {round_bits}")


def _head_tally(cfg: TransformerConfig, t: int, n: int, round_bits: int, k: CostConstants,
                wide_bits: int, weight_bits: int) -> _Tally:
    hd, d = cfg.head_dim, cfg.d_model
    ta = _Tally(n, round_bits, k, wide_bits, weight_bits)
    scores = 2 * n + 1  # n-bit × n-bit dot products, as calibrated
    ta.lookups(3 * t * hd, ta.acc_bits(d))  # requantise q, k, v
    ta.products(t * t * hd)  # QKᵀ
    ta.adds += t * t * hd  # dot-product accumulation
    ta.lookups(t * (t - 1), scores + 2)  # row max: a tree of b + relu(a − b)
    ta.adds += 2 * t * (t - 1)
    ta.lookups(t * t, scores + 1)  # exp(max − score), the score scale folded in
    ta.adds += t * t  # softmax denominator
    ta.lookups(t, n + _clog2(t))  # 1 / Σ exp
    ta.products(t * t)  # exp × reciprocal
    ta.lookups(t * t, 2 * n)  # requantise the probabilities
    ta.products(t * t * hd)  # P·V
    ta.adds += t * t * hd
    ta.lookups(t * hd, 2 * n)  # requantise the context to the wide unit
    ta.macs += 4 * t * d * hd  # this head's q/k/v rows and o columns (clear weights)
    return ta


def _layernorm(ta: _Tally, t: int, d: int, stream_bits: int) -> None:
    """Centre (clear), square and centre lookups sharing one rounding, rsqrt of the variance,
    the normalising products, and the requantisation of the result (γ, β) to the wide unit."""
    centred = stream_bits + _clog2(d) + 1
    ta.adds += t * d
    ta.lookups(t * d, centred)  # square
    ta.lookups(t, ta.round_bits + _clog2(d) - 2)  # rsqrt of Σ squares (sum's range, measured)
    ta.lookups(t * d, centred, rounded=False)  # the centred value's requantisation
    ta.products(t * d)
    ta.lookups(t * d, 2 * ta.n)  # normalised, /d
    ta.lookups(t * d, ta.wide + ta.wbits)  # γ·x̂ + β to the wide unit


def head_cost(
    cfg: TransformerConfig,
    seq_len: int,
    bits: int,
    *,
    round_bits: int = DEFAULT_ROUND_BITS,
    constants: CostConstants = DEFAULT_CONSTANTS,
    wide_bits: int = DEFAULT_WIDE_BITS,
    weight_bits: int | None = None,
) -> CostBreakdown:
    """FHE cost of ONE attention head (all heads of a config have the same shape)."""
    _check(cfg, seq_len, bits, round_bits)
    ta = _head_tally(cfg, seq_len, bits, round_bits, constants, wide_bits,
                     bits if weight_bits is None else weight_bits)
    return CostBreakdown(
        pbs_by_width=dict(ta.pbs),
        clear_macs=ta.macs,
        adds=ta.adds,
        total=ta.seconds(),
        rows=[ta.row(-1, "head")],
        constants=constants,
    )


def model_cost(
    cfg: TransformerConfig,
    seq_len: int,
    bits: int | Sequence[int],
    heads_kept: list[list[int]] | None = None,
    *,
    round_bits: int = DEFAULT_ROUND_BITS,
    constants: CostConstants = DEFAULT_CONSTANTS,
    wide_bits: int = DEFAULT_WIDE_BITS,
    weight_bits: int | None = None,
) -> CostBreakdown:
    """FHE cost of all blocks: kept heads, attention glue, LayerNorms, MLP, residuals.

    ``bits`` is one width for every layer or one per layer; ``weight_bits`` defaults to it
    (as ``--weight-bits`` does). ``heads_kept`` defaults to ``cfg.heads_kept``. A layer
    with no heads left pays no attention cost at all in a pre-LN model (its LayerNorm only
    fed the attention); a post-LN model still normalises there.
    """
    heads_kept = cfg.heads_kept if heads_kept is None else heads_kept
    if len(heads_kept) != cfg.n_layer:
        raise CompileError(f"heads_kept has {len(heads_kept)} layers, model has {cfg.n_layer}")
    per_layer = [bits] * cfg.n_layer if isinstance(bits, int) else list(bits)
    if len(per_layer) != cfg.n_layer:
        raise CompileError(f"bits has {len(per_layer)} entries, model has {cfg.n_layer} layers")
    t, d, w = seq_len, cfg.d_model, wide_bits
    stream = w + 1  # the residual stream: the input plus branches, never rounded
    out = CostBreakdown(constants=constants)
    pbs: Counter[int] = Counter()
    for layer, (kept, n) in enumerate(zip(heads_kept, per_layer, strict=True)):
        _check(cfg, seq_len, n, round_bits)
        wb = n if weight_bits is None else weight_bits
        tallies: list[tuple[_Tally, str, int | None]] = []
        for h in kept:
            tallies.append((_head_tally(cfg, t, n, round_bits, constants, w, wb), "head", h))
        glue = _Tally(n, round_bits, constants, w, wb)
        if kept:
            if len(kept) > 1:  # all but one head's context re-aligned to a common scale
                glue.lookups((len(kept) - 1) * t * cfg.head_dim, w)
            glue.lookups(t * d, glue.acc_bits(len(kept) * cfg.head_dim))  # o → stream unit
            if cfg.pre_ln:
                _layernorm(glue, t, d, stream)  # ln1 feeds only the attention
        if not cfg.pre_ln:
            _layernorm(glue, t, d, stream)  # post-LN: ln1 normalises the residual stream
        glue.adds += t * d  # attention residual
        tallies.append((glue, "attention", None))
        mlp = _Tally(n, round_bits, constants, w, wb)
        _layernorm(mlp, t, d, stream)  # ln2
        mlp.macs += 2 * t * d * cfg.d_ff
        mlp.lookups(t * cfg.d_ff, mlp.acc_bits(d))  # requant → GELU → wide, fused
        mlp.lookups(t * d, mlp.acc_bits(cfg.d_ff))  # fc2 → stream unit
        mlp.adds += t * d  # MLP residual
        tallies.append((mlp, "mlp", None))
        for ta, part, h in tallies:
            pbs.update(ta.pbs)
            out.clear_macs += ta.macs
            out.adds += ta.adds
            out.total += ta.seconds()
            out.rows.append(ta.row(layer, part, h))
    out.pbs_by_width = dict(pbs)
    return out


def graph_cost(graph: IntGraph, constants: CostConstants = DEFAULT_CONSTANTS) -> CostBreakdown:
    """Price a lowered graph from its exact PBS counts (``IntGraph.pbs_by_node``).

    Why beside :func:`model_cost`: once a graph exists its PBS are known exactly (equal to
    concrete's statistics, tests/fhe/test_pbs_count.py), shared roundings, fused lookup
    chains and folded constants included. A lookup's PBS — its rounding's and its table's
    — are priced at its table-index width (for a fused chain, that of the chain's first
    table, whose input the single PBS reads); a product's at its wider operand + 1 bit.
    """
    shapes = graph.shapes()
    pbs: Counter[int] = Counter()
    macs = adds = 0
    for name, count in graph.pbs_by_node().items():
        node = graph[name]
        pbs_bits = op_def(node.op, name).pbs_bits
        assert pbs_bits is not None  # every op with a PBS rule prices it (test_ops.py)
        pbs[pbs_bits(node, graph, constants.mul_extra_bits)] += count
    for node in graph.nodes:
        work = op_def(node.op, node.name).work(node, [shapes[i] for i in node.inputs],
                                               shapes[node.name])
        macs += work.clear_macs
        adds += work.adds
    k = constants
    total = sum(c * k.pbs_s(w) for w, c in pbs.items()) + macs * k.clear_mac_s + adds * k.add_s
    return CostBreakdown(pbs_by_width=dict(pbs), clear_macs=macs, adds=adds, total=total,
                         rows=[], constants=constants)
