"""Fusion: folds are exact in float, lookup composition is exact in integers."""

import numpy as np
import torch

from cerberus.ir import evaluate
from cerberus.lower import LoweringOptions, lower_blocks
from cerberus.passes.fuse import compose_luts, fold_affine, graph_stats

from .conftest import embedded, to_int


def test_fold_affine_is_exact_and_does_not_mutate(tiny_gpt, gpt_windows) -> None:
    model, _ = tiny_gpt
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded, report = fold_affine(model)
    ids = gpt_windows[1]
    with torch.no_grad():
        torch.testing.assert_close(folded(ids), model(ids), atol=2e-4, rtol=1e-4)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert folded.cfg.attn_scale_folded and not model.cfg.attn_scale_folded
    assert any("ln1" in f for f in report.folded)
    assert torch.all(folded.blocks[0].ln1.weight == 1) and torch.all(folded.blocks[0].ln1.bias == 0)


def test_fold_affine_on_post_ln_only_folds_the_scale(tiny_bert) -> None:
    folded, report = fold_affine(tiny_bert)
    ids = torch.randint(0, 100, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(folded.float()(ids), tiny_bert.float()(ids), atol=1e-4,
                                   rtol=1e-4)
    assert all("sqrt" in f for f in report.folded)


def test_compose_luts_is_bit_exact_and_removes_lookups(tiny_gpt, gpt_windows) -> None:
    model, _ = tiny_gpt
    calib, test = gpt_windows
    graph = lower_blocks(model, embedded(model, calib), LoweringOptions(fuse=False))
    fused, chains = compose_luts(graph)
    assert chains, "the unfused graph has requant → activation chains to merge"
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
