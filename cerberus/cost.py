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

Bit-width conventions (``bits`` = n, the activation/weight quantisation width of SPEC C4):

* a clear-weight linear with fan-in K accumulates 2n + ⌈log2 K⌉ bits; every lookup fed by an
  accumulator sees at most ``round_bits`` bits (``round_bit_pattern`` first, SPEC C6);
* an enc×enc product of two n-bit values costs 2 PBS at n + 1 bits (not rounded: its inputs
  are already n-bit);
* the rounding itself is not priced separately (a refit absorbs it into ``pbs_ref_s``).

Attention per head, sequence T, head dim h, model dim d:
q/k/v requantisation 3·T·h lookups; QKᵀ T²·h products; softmax T² exp lookups, T
reciprocal lookups and T² normalising products; P·V T²·h products; context requantisation
T·h lookups; clear MACs 4·T·d·h (the head's q/k/v rows and its o columns).
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


@dataclass(frozen=True)
class CostConstants:
    """Every number of the cost model, in seconds of single-thread CPU time.

    Seeded from /work/shared/FHE_NOTES.md (concrete-python 2.11, 2 cores, 2026-12-01):
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
    calibrated_on: str = "uncalibrated defaults from FHE_NOTES.md"
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

    def __init__(self, n: int, round_bits: int, k: CostConstants) -> None:
        self.n, self.round_bits, self.k = n, round_bits, k
        self.pbs: Counter[int] = Counter()
        self.macs = 0
        self.adds = 0

    def acc_bits(self, fan_in: int) -> int:
        """Width of an n×n-bit dot product of length ``fan_in``, after rounding."""
        return min(2 * self.n + _clog2(fan_in), self.round_bits)

    def lookups(self, count: int, width: int) -> None:
        if count > 0:
            self.pbs[width] += count

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


def _head_tally(cfg: TransformerConfig, t: int, n: int, round_bits: int, k: CostConstants):
    hd, d = cfg.head_dim, cfg.d_model
    ta = _Tally(n, round_bits, k)
    ta.lookups(3 * t * hd, ta.acc_bits(d))  # requantise q, k, v
    ta.products(t * t * hd)  # QKᵀ
    ta.adds += t * t * hd  # dot-product accumulation
    ta.lookups(t * t, ta.acc_bits(hd))  # exp(score − max) fused with the score requant
    ta.adds += t * t  # softmax denominator
    ta.lookups(t, min(n + _clog2(t), round_bits))  # 1 / Σ exp
    ta.products(t * t)  # exp × reciprocal
    ta.products(t * t * hd)  # P·V
    ta.adds += t * t * hd
    ta.lookups(t * hd, ta.acc_bits(t))  # requantise the context
    ta.macs += 4 * t * d * hd  # this head's q/k/v rows and o columns (clear weights)
    return ta


def _layernorm(ta: _Tally, t: int, d: int) -> None:
    """(x − μ)² lookups, rsqrt of the variance, and the normalising products."""
    ta.adds += 2 * t * d
    ta.lookups(t * d, ta.n + 1)
    ta.lookups(t, ta.acc_bits(d))
    ta.products(t * d)


def head_cost(
    cfg: TransformerConfig,
    seq_len: int,
    bits: int,
    *,
    round_bits: int = DEFAULT_ROUND_BITS,
    constants: CostConstants = DEFAULT_CONSTANTS,
) -> CostBreakdown:
    """FHE cost of ONE attention head (all heads of a config have the same shape)."""
    _check(cfg, seq_len, bits, round_bits)
    ta = _head_tally(cfg, seq_len, bits, round_bits, constants)
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
) -> CostBreakdown:
    """FHE cost of all blocks: kept heads, attention glue, LayerNorms, MLP, residuals.

    ``bits`` is one width for every layer or one per layer. ``heads_kept`` defaults to
    ``cfg.heads_kept``. A layer with no heads left pays no attention cost at all in a pre-LN
    model (its LayerNorm only fed the attention); a post-LN model still normalises there.
    """
    heads_kept = cfg.heads_kept if heads_kept is None else heads_kept
    if len(heads_kept) != cfg.n_layer:
        raise CompileError(f"heads_kept has {len(heads_kept)} layers, model has {cfg.n_layer}")
    per_layer = [bits] * cfg.n_layer if isinstance(bits, int) else list(bits)
    if len(per_layer) != cfg.n_layer:
        raise CompileError(f"bits has {len(per_layer)} entries, model has {cfg.n_layer} layers")
    t, d = seq_len, cfg.d_model
    out = CostBreakdown(constants=constants)
    pbs: Counter[int] = Counter()
    for layer, (kept, n) in enumerate(zip(heads_kept, per_layer, strict=True)):
        _check(cfg, seq_len, n, round_bits)
        tallies: list[tuple[_Tally, str, int | None]] = []
        for h in kept:
            tallies.append((_head_tally(cfg, t, n, round_bits, constants), "head", h))
        glue = _Tally(n, round_bits, constants)
        if kept:
            glue.lookups(t * d, glue.acc_bits(len(kept) * cfg.head_dim))  # o output requant
            if cfg.pre_ln:
                _layernorm(glue, t, d)  # ln1 feeds only the attention
        if not cfg.pre_ln:
            _layernorm(glue, t, d)  # post-LN: ln1 normalises the residual stream anyway
        glue.adds += t * d  # attention residual
        tallies.append((glue, "attention", None))
        mlp = _Tally(n, round_bits, constants)
        _layernorm(mlp, t, d)  # ln2
        mlp.macs += 2 * t * d * cfg.d_ff
        mlp.lookups(t * cfg.d_ff, mlp.acc_bits(d))  # requant → GELU → requant, fused
        mlp.lookups(t * d, mlp.acc_bits(cfg.d_ff))  # fc2 output requant
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
