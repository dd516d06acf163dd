"""FHE cost model (SPEC C3): the law, the counts, and monotonicity under pruning."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from tolerance import LIBM_ULPS, U64, gamma, roundings_approx

from cerberus.cost import (
    COST_TABLE,
    DEFAULT_CONSTANTS,
    CostConstants,
    graph_cost,
    head_cost,
    load_constants,
    model_cost,
)
from cerberus.errors import CompileError
from cerberus.frontends.canonical import TransformerConfig
from cerberus.ir import IntGraph, Node
from cerberus.lower import LoweringOptions, lower_blocks

from .conftest import embedded

#: roundings of one price c_ref·g^(w − w_ref): the power (a library pow, LIBM_ULPS) and
#: the product; float64 throughout (tests/tolerance.py)
PRICE = LIBM_ULPS + 1


def _total_rtol(c) -> float:
    """A cost total is a sum of non-negative terms (count × price, MACs and adds × their
    price) over its rows and widths: within γ_n of its exact value, no cancellation."""
    terms = max(len(c.rows), 1) * (len(c.pbs_by_width) + 2)
    return gamma(terms + PRICE + 1, U64)


def _cfg(**kw) -> TransformerConfig:
    base = dict(
        kind="causal-lm", vocab_size=512, n_positions=64, d_model=64, n_layer=2, n_head=4,
        d_ff=256,
    )
    base.update(kw)
    return TransformerConfig(**base)


def test_pbs_cost_follows_its_growth_law_and_constants_are_frozen_with_provenance():
    k = DEFAULT_CONSTANTS
    assert k.growth_per_bit > 1
    for w in range(2, 12):
        assert k.pbs_s(w + 1) == roundings_approx(k.growth_per_bit * k.pbs_s(w), 2 * PRICE + 1,
                                                  k.pbs_s(w + 1))
    with pytest.raises(dataclasses.FrozenInstanceError):
        k.pbs_ref_s = 1.0  # type: ignore[misc]
    assert k.calibrated_on and k.date
    # The uncalibrated fallback keeps its hand measurements: 256 PBS at 7 bits in 1.81 s,
    # 16×16 clear linear in 0.018 s, and SPEC C3's 2× per bit.
    u = CostConstants()
    assert "uncalibrated" in u.calibrated_on
    # (the seeds are decimals divided by 256, times 256 again: exact; each decimal rounds)
    assert 256 * u.pbs_s(7) == roundings_approx(1.81, PRICE + 3, 1.81)
    assert u.pbs_s(8) == roundings_approx(2 * u.pbs_s(7), 2 * PRICE, u.pbs_s(8))
    assert 256 * u.clear_mac_s == roundings_approx(0.018, 3, 0.018)


def test_default_constants_are_the_shipped_calibration_table():
    """SPEC C3 / issue 5: DEFAULT_CONSTANTS come from cerberus/cost_table.json when present."""
    if not COST_TABLE.exists():
        assert DEFAULT_CONSTANTS == CostConstants()
        return
    table = json.loads(COST_TABLE.read_text(encoding="utf-8"))
    assert DEFAULT_CONSTANTS == load_constants(COST_TABLE) != CostConstants()
    assert "uncalibrated" not in DEFAULT_CONSTANTS.calibrated_on
    # the same JSON number parsed twice: exact
    assert DEFAULT_CONSTANTS.pbs_ref_s == table["constants"]["pbs_ref_s"]
    assert table["machine"]["cpu"] and table["concrete_python"] and table["grid"]


def test_head_counts_follow_the_attention_shapes():
    """Products counted from the shapes: QKᵀ T²·h, softmax normalisation T², P·V T²·h;
    every lookup pays 1 PBS plus 1 per bit its exact rounding removes (SPEC C3, issue 5)."""
    cfg = _cfg()
    t, n, hd, d, r, w = 16, 5, cfg.head_dim, cfg.d_model, 8, 12
    c = head_cost(cfg, t, n, round_bits=r, wide_bits=w)
    products = t * t * hd + t * t + t * t * hd
    k = DEFAULT_CONSTANTS
    # mul_pbs_per_product lookups (2: (a+b)²/4 − (a−b)²/4) per enc×enc product
    assert c.pbs_by_width[n + k.mul_extra_bits] == k.mul_pbs_per_product * products

    def lookup(count: int, source_bits: int) -> int:
        return count * (1 + max(0, source_bits - r))

    qkv = lookup(3 * t * hd, w + n + 6)  # W-bit input, n-bit weights, fan-in 64
    row_max = lookup(t * (t - 1), 2 * n + 3)
    exp, recip = lookup(t * t, 2 * n + 2), lookup(t, n + 4)
    probs, ctx = lookup(t * t, 2 * n), lookup(t * hd, 2 * n)
    assert c.pbs == k.mul_pbs_per_product * products + qkv + row_max + exp + recip + probs + ctx
    assert c.clear_macs == 4 * t * d * hd


def test_rounding_is_priced_one_pbs_per_removed_bit():
    """The measured law (benchmarks/RESULTS.md, calibrate_cost): an exact
    ``round_bit_pattern`` of k bits is k PBS per element, before the lookup's own."""
    cfg = _cfg()
    a = model_cost(cfg, 16, 6, wide_bits=10)
    b = model_cost(cfg, 16, 6, wide_bits=12)
    # 2 more wide bits: every lookup on a linear's accumulator removes 2 more bits
    t, d, ff, heads = 16, cfg.d_model, cfg.d_ff, cfg.n_head
    per_layer = (3 * t * d  # q/k/v of every head
                 + t * d  # o → residual unit
                 + t * ff + t * d  # GELU, fc2 → residual unit
                 + 2 * (2 * t * d)  # each LayerNorm: square (centred stream) and output
                 + (heads - 1) * t * cfg.head_dim)  # contexts re-aligned to one scale
    assert b.pbs - a.pbs == 2 * cfg.n_layer * per_layer
    assert b.pbs_by_width.keys() == a.pbs_by_width.keys() and b.total > a.total


def test_head_cost_grows_with_sequence_and_bits():
    cfg = _cfg()
    by_t = [head_cost(cfg, t, 6).total for t in (4, 8, 16, 32)]
    assert all(a < b for a, b in zip(by_t, by_t[1:], strict=False))
    assert by_t[-1] / by_t[-2] > 3  # attention is quadratic in the sequence
    by_n = [head_cost(cfg, 16, n).total for n in (3, 4, 5, 6, 7)]
    # +1 bit: products' lookups grow by g = growth_per_bit, accumulator lookups (2n + log K
    # bits) at most by g², and stop growing once rounded to 8 bits; MACs and adds do not.
    g2 = DEFAULT_CONSTANTS.growth_per_bit ** 2
    assert all(1.0 < b / a <= g2 for a, b in zip(by_n, by_n[1:], strict=False))


@pytest.mark.parametrize("pre_ln", [True, False])
def test_pruning_any_head_strictly_reduces_the_estimate(pre_ln):
    cfg = _cfg(pre_ln=pre_ln, kind="causal-lm" if pre_ln else "encoder")
    full = model_cost(cfg, 16, 6)
    for layer in range(cfg.n_layer):
        for head in range(cfg.n_head):
            kept = [list(range(cfg.n_head)) for _ in range(cfg.n_layer)]
            kept[layer].remove(head)
            less = model_cost(cfg, 16, 6, kept)
            assert less.total < full.total and less.pbs < full.pbs
    one = model_cost(cfg, 16, 6, [[0], [0, 1, 2, 3]])
    none = model_cost(cfg, 16, 6, [[], [0, 1, 2, 3]])
    assert none.total < one.total and none.pbs < one.pbs


def test_breakdown_table_is_consistent_and_serialisable():
    cfg = _cfg()
    c = model_cost(cfg, 16, [6, 4], [[0, 2], [1, 2, 3]])
    rows = sum(r["seconds"] for r in c.rows)
    assert c.total == roundings_approx(rows, len(c.rows), rows)  # non-negative terms
    assert c.pbs == sum(r["pbs"] for r in c.rows)
    assert set(c.per_head()) == {(0, 0), (0, 2), (1, 1), (1, 2), (1, 3)}
    # Layer 1 at 4 bits: each head is cheaper than a layer-0 head at 6 bits.
    assert c.per_head()[(1, 1)] < c.per_head()[(0, 0)]
    assert c.max_lookup_bits == max(r["max_bits"] for r in c.rows)
    d = json.loads(json.dumps(c.to_dict()))
    assert d["pbs"] == c.pbs and d["constants"]["calibrated_on"]


def test_lookup_widths_respect_rounding():
    cfg = _cfg()
    for n in (3, 6, 8):
        c = model_cost(cfg, 32, n, round_bits=8)
        # Accumulator-fed lookups are rounded to 8 bits; products need n + extra bits.
        assert c.max_lookup_bits == max(8, n + DEFAULT_CONSTANTS.mul_extra_bits)
    narrow = model_cost(cfg, 32, 4, round_bits=5)
    # products are not rounded: their inputs are already n-bit
    assert narrow.max_lookup_bits == max(5, 4 + DEFAULT_CONSTANTS.mul_extra_bits)
    assert narrow.total < model_cost(cfg, 32, 4, round_bits=8).total


def test_constants_change_the_price_not_the_counts():
    cfg = _cfg()
    k2 = dataclasses.replace(DEFAULT_CONSTANTS, pbs_ref_s=2 * DEFAULT_CONSTANTS.pbs_ref_s)
    a, b = model_cost(cfg, 16, 6), model_cost(cfg, 16, 6, constants=k2)
    assert a.pbs_by_width == b.pbs_by_width and b.total > a.total
    lut_a = sum(cnt * DEFAULT_CONSTANTS.pbs_s(w) for w, cnt in a.pbs_by_width.items())
    # a difference of two totals: each within its bound, lut_a within its own sum's
    assert b.total - a.total == roundings_approx(
        lut_a, 1, 0, extra=_total_rtol(a) * (a.total + b.total)
        + gamma(len(a.pbs_by_width) + PRICE, U64) * lut_a)


def test_bad_arguments():
    cfg = _cfg()
    with pytest.raises(CompileError, match="bits"):
        model_cost(cfg, 16, 1)
    with pytest.raises(CompileError, match="seq_len"):
        model_cost(cfg, cfg.n_positions + 1, 6)
    with pytest.raises(CompileError, match="layers"):
        model_cost(cfg, 16, [6])
    with pytest.raises(CompileError, match="layers"):
        model_cost(cfg, 16, 6, [[0]])
    assert math.isfinite(head_cost(cfg, 1, 2).total)


@pytest.mark.parametrize("bits", [8, 4])
def test_closed_form_tracks_the_lowered_graph(tiny_gpt, gpt_windows, bits):
    """model_cost (what squeezing uses before any graph exists) stays within 15% of the
    exact PBS count and price of the graph ``lower.py`` actually emits for the shipped
    model. Without the rounding PBS it was 4.6× too low at 8 bits (170k vs 780k PBS)."""
    model, _ = tiny_gpt
    opts = LoweringOptions(bits=bits, weight_bits=bits)
    graph = lower_blocks(model, embedded(model, gpt_windows[0]), opts)
    exact = graph_cost(graph)
    assert exact.pbs == graph.pbs_count()
    closed = model_cost(model.cfg, graph.meta["seq_len"], bits)
    assert closed.pbs == pytest.approx(exact.pbs, rel=0.15)
    assert closed.total == pytest.approx(exact.total, rel=0.15)


def test_graph_cost_prices_rounding_at_the_lookup_width():
    """One lookup of 2 elements on a 12-bit value: 1 + lsbs PBS each, all at the index
    width; a fused lookup chain is one PBS on the first table's index."""
    k = DEFAULT_CONSTANTS

    def graph(lsbs: int, chain: bool = False) -> IntGraph:
        off = -(1 << (11 - lsbs))
        table = np.arange(off, -off + 1) // 2
        nodes = [Node("input", "input", [], -2048, 2047),
                 Node("a", "lut", ["input"], int(table.min()), int(table.max()),
                      attrs={"table": table, "lsbs": lsbs, "offset": off})]
        if chain:
            t2 = np.arange(int(table.min()), int(table.max()) + 1) ** 2
            nodes.append(Node("b", "lut", ["a"], 0, int(t2.max()),
                              attrs={"table": t2, "lsbs": 0, "offset": int(table.min())}))
        return IntGraph(nodes, "input", nodes[-1].name, {"seq_len": 1, "d_model": 2})

    for lsbs in (0, 3, 6):
        g = graph(lsbs)
        c = graph_cost(g)
        w = g["a"].lookup_bits
        assert c.pbs_by_width == {w: 2 * (1 + lsbs)}
        want = 2 * (1 + lsbs) * k.pbs_s(w)
        assert c.total == roundings_approx(want, PRICE + 4, want)  # one width, no MACs
    fused = graph_cost(graph(6, chain=True))
    assert fused.pbs_by_width == {graph(6)["a"].lookup_bits: 2 * 7}
