"""The squeeze-fidelity benchmark's core on a tiny configuration (issue #4; SPEC C2–C4).

Why: the benchmark's tables are only as trustworthy as the code that fills them. These tests
run its core (two compiles of the shipped model on a few held-out windows) and check the
structure and the invariants every result must satisfy, never particular numbers: those
change whenever the lowering improves.
"""

from __future__ import annotations

import copy
import math
import sys
from pathlib import Path

import pytest
import torch
from tolerance import (
    LIBM_ULPS,
    cost_total_rtol,
    network_atol,
    roundings_approx,
    transformer_roundings,
)

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import squeeze_fidelity as sf  # noqa: E402
from cerberus.compile import load_source  # noqa: E402
from cerberus.cost import model_cost  # noqa: E402

# one compile per partition: the sweep in "full", the pruned one in the default "hybrid"
TINY = dict(max_windows=8, sweep_bits=(8,), sweep_partitions=("full",), wide_lookup_bits=None,
            ablation_settings=(("hybrid", 8),),
            selections=(sf.Selection("significance", "gradient"),), seeds=(0,),
            random_seeds=(), adaptive=(False,), qat_steps=(0,))


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict:
    cfg = sf.BenchConfig(**TINY, workdir=tmp_path_factory.mktemp("artefacts"))
    return sf.run(cfg)


@pytest.fixture(scope="module")
def tiny_gpt():
    return load_source(sf.BenchConfig().source)


def _measured(rows: list[dict]) -> list[dict]:
    assert rows, "no rows"
    for r in rows:
        assert "error" not in r, r.get("error")
    return rows


def test_structure(result: dict) -> None:
    assert set(result) >= {"heldout", "sweep", "ablation", "ablation_summary", "verdicts",
                           "cost_check", "ppl_float_unpruned", "compiles", "n_heads"}
    assert result["compiles"] == len(result["sweep"]) + len(result["ablation"]) == 2
    assert result["heldout"]["windows"] == TINY["max_windows"]
    assert result["heldout"]["tokens"] == TINY["max_windows"] * result["heldout"]["seq_len"]
    md = sf.to_markdown(result, "cmd")
    for heading in ("### 1.", "### 2.", "### 3.", "beat random"):
        assert heading in md


def test_metrics_are_sane(result: dict) -> None:
    rows = _measured(result["sweep"]) + _measured(result["ablation"])
    assert math.isfinite(result["ppl_float_unpruned"]) and result["ppl_float_unpruned"] >= 1
    for r in rows:
        assert r["windows"] + r["overflow_windows"] == result["heldout"]["windows"]
        for k in ("top1_vs_float", "top1_vs_pruned_float"):
            assert 0.0 <= r[k] <= 1.0
        for k in ("ppl_integer", "ppl_pruned_float", "ppl_float"):
            assert math.isfinite(r[k]) and r[k] >= 1.0


def _folded_ppl_rtol(model, windows: torch.Tensor) -> float:
    """Relative bound of the perplexity of two float32 runs of the model, folded or not.

    Each run's logits are within a = γ̃_N(λ)·max|z64| of the unfolded model in float64
    (tests/tolerance.py; N counting the folds' d + 3 roundings per linear, as in
    test_fuse); each token's NLL z_t − logsumexp(z) moves by ≤ 2a, so the mean NLL m of the
    two runs by ≤ 4a (the rest is float64) and the perplexity e^m by ≤ expm1(4a).
    """
    cfg = model.cfg
    inputs = windows[:, :-1]
    with torch.no_grad():
        z64 = copy.deepcopy(model).double()(inputs)
    n = transformer_roundings(cfg.d_model, cfg.d_ff, cfg.n_layer, cfg.head_dim,
                              inputs.shape[1], per_linear=cfg.d_model + 3)
    return math.expm1(4 * network_atol(z64, n))


def test_sweep_keeps_every_head(result: dict, tiny_gpt) -> None:
    model, tok, _ = tiny_gpt
    windows = sf.heldout_windows(tok, result["heldout"]["seq_len"], TINY["max_windows"])
    rtol = _folded_ppl_rtol(model, windows)
    cost_rtol = cost_total_rtol(model_cost(model.cfg, result["heldout"]["seq_len"], 8))
    for r in _measured(result["sweep"]):
        assert r["n_heads_kept"] == result["n_heads"]
        assert r["cost_after_s"] == roundings_approx(
            r["cost_before_s"], 1, 0, extra=2 * cost_rtol * r["cost_before_s"])
        # with every head kept, the pruned float model is the float model (folding only)
        assert r["ppl_pruned_float"] == pytest.approx(r["ppl_float"], rel=rtol, abs=0)


def test_pruning_reduces_cost_within_budget(result: dict, tiny_gpt) -> None:
    cost = model_cost(tiny_gpt[0].cfg, result["heldout"]["seq_len"], 8)
    for r in _measured(result["ablation"]):
        assert 0 < r["n_heads_kept"] <= r["budget_heads"] < result["n_heads"]
        assert r["cost_after_s"] < r["cost_before_s"]
        assert r["cost_after_s"] <= r["budget_s"] * (1 + 2 * cost_total_rtol(cost))
    assert result["cost_check"]["pruned_runs"] == len(result["ablation"])
    assert result["cost_check"]["all_reduced"]


def test_summary_and_verdicts(result: dict) -> None:
    (s,) = result["ablation_summary"]
    assert s["runs"] == 1 and s["failed"] == 0 and s["ppl_integer"]["n"] == 1
    # no random baseline in this configuration: the verdict must say "undecided", not guess
    assert [v["beats_random"] for v in result["verdicts"]] == [None]


def test_equal_budget_fits_exactly_k_heads(tiny_gpt) -> None:
    model, _, _ = tiny_gpt
    cfg, n = model.cfg, sum(len(h) for h in model.cfg.heads_kept)
    full = model_cost(cfg, 16, 8)
    per_head = sorted(full.per_head().values())
    fixed = full.total - sum(per_head)
    for k in range(1, n):
        budget = sf.equal_budget(cfg, 16, 8, k)
        assert fixed + sum(per_head[:k]) <= budget < fixed + sum(per_head[: k + 1])


def test_heldout_windows_are_validation_text(tiny_gpt) -> None:
    _, tok, _ = tiny_gpt
    w = sf.heldout_windows(tok, 16)
    assert w.dim() == 2 and w.shape[1] == 17 and w.dtype == torch.int64
    assert torch.equal(w[:-1, -1], w[1:, 0])  # consecutive windows share one token
    sub = sf.heldout_windows(tok, 16, max_windows=5)
    assert sub.shape == (5, 17)
    assert sf.calibration_overlap(tok, sub, 16) == 0


def test_metric_helpers() -> None:
    logits = torch.zeros(2, 3, 7)
    targets = torch.zeros(2, 3, dtype=torch.int64)
    # uniform over 7 tokens: log of a sum of 7 exps (LIBM_ULPS each), a mean of 6, an exp;
    # the exp turns the NLL's absolute error (scale log 7) into a relative one
    assert sf.perplexity(logits, targets) == roundings_approx(
        7.0, 3 * LIBM_ULPS + 14, 7.0 * (1 + math.log(7.0)))
    other = logits.clone()
    other[0, :, 1] = 1.0  # first sequence predicts token 1 instead of 0
    assert sf.agreement(logits, other) == 0.5  # 3 of 6 positions: exact in binary
