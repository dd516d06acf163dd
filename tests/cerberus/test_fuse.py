"""Fusion: folds are exact in float, lookup composition is exact in integers."""

import copy

import numpy as np
import torch
from tolerance import assert_within, network_atol, transformer_roundings

from cerberus.ir import evaluate
from cerberus.lower import LoweringOptions, lower_blocks
from cerberus.passes.fuse import compose_luts, fold_affine, graph_stats

from .conftest import embedded, to_int


def _fold_atol(model, ref64: torch.Tensor, t: int) -> float:
    """A float32 run of the model, folded or not, against the unfolded model in float64:
    γ̃_N(λ)·max|y64| (tests/tolerance.py), N counting per linear the fold's roundings: the
    weight times the LN gain and the scale (2), the bias fold W·β + b (d + 1)."""
    cfg = model.cfg
    return network_atol(ref64, transformer_roundings(
        cfg.d_model, cfg.d_ff, cfg.n_layer, cfg.head_dim, t, lm_head=model.lm_head is not None,
        per_linear=cfg.d_model + 3))


def test_fold_affine_is_exact_and_does_not_mutate(tiny_gpt, gpt_windows) -> None:
    model, _ = tiny_gpt
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded, report = fold_affine(model)
    ids = gpt_windows[1]
    with torch.no_grad():
        got, want, ref64 = folded(ids), model(ids), copy.deepcopy(model).double()(ids)
    atol = _fold_atol(model, ref64, ids.shape[1])
    assert_within(got, ref64, atol, "folded vs float64")
    assert_within(want, ref64, atol, "unfolded vs float64")
    assert_within(got, want, 2 * atol, "folded vs unfolded")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert folded.cfg.attn_scale_folded and not model.cfg.attn_scale_folded
    assert any("ln1" in f for f in report.folded)
    assert torch.all(folded.blocks[0].ln1.weight == 1) and torch.all(folded.blocks[0].ln1.bias == 0)


def test_fold_affine_on_post_ln_only_folds_the_scale(tiny_bert) -> None:
    folded, report = fold_affine(tiny_bert)
    ids = torch.randint(0, 100, (2, 8))
    with torch.no_grad():
        got, want = folded.float()(ids), tiny_bert.float()(ids)
        ref64 = copy.deepcopy(tiny_bert).double()(ids)
    atol = _fold_atol(tiny_bert, ref64, ids.shape[1])
    assert_within(got, ref64, atol, "folded vs float64")
    assert_within(want, ref64, atol, "unfolded vs float64")
    assert_within(got, want, 2 * atol, "folded vs unfolded")
    assert all("sqrt" in f for f in report.folded)


def test_compose_luts_is_bit_exact_and_removes_lookups(tiny_gpt, gpt_windows) -> None:
    model, _ = tiny_gpt
    calib, test = gpt_windows
    graph = lower_blocks(model, embedded(model, calib), LoweringOptions(fuse=False))
    fused, report = compose_luts(graph)
    chains = report.composed
    assert chains, "the unfused graph has requant → activation chains to merge"
    assert report.before == graph_stats(graph) and report.after == graph_stats(fused)
    assert graph_stats(fused)["lookups"] == graph_stats(graph)["lookups"] - sum(
        len(c) - 1 for c in chains)
    x = to_int(graph, embedded(model, test))
    assert np.array_equal(evaluate(fused, x)["output"], evaluate(graph, x)["output"])


def test_stats_count_bootstraps(tiny_gpt, gpt_windows) -> None:
    model, _ = tiny_gpt
    graph = lower_blocks(model, embedded(model, gpt_windows[0]))
    stats = graph_stats(graph)
    t, d = graph.meta["seq_len"], graph.meta["d_model"]
    # at least the MLP activation lookups of every layer: T × 4d each
    assert stats["pbs"] > model.cfg.n_layer * t * 4 * d
    assert stats["max_lookup_bits"] <= 8
    assert sum(stats["lookup_width_histogram"].values()) == stats["lookups"]
