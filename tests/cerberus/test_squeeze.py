"""Budgeted squeezing (SPEC C3, paper §7.1.3): pruning, knapsack selection, baselines."""

from __future__ import annotations

import copy
import itertools
import json
import math
import random
import statistics

import pytest
import torch
import torch.nn.functional as F
from tolerance import (
    U64,
    as_f64,
    assert_within,
    cost_total_rtol,
    gamma,
    network_atol,
    roundings_approx,
    transformer_roundings,
)

from cerberus.calibration import DEFAULT_CALIBRATION_TEXT, calibration_batches, random_batches
from cerberus.cost import head_cost, model_cost
from cerberus.errors import CompileError
from cerberus.passes.significance import head_significance
from cerberus.passes.squeeze import knapsack, prune_heads, select_heads, squeeze

T = 32
BITS = 6


@pytest.fixture(scope="module")
def gpt_sig(gpt):
    model, tok = gpt
    batches = calibration_batches(tok, seq_len=T, batch_size=4, max_batches=3)
    return head_significance(model, batches, method="gradient")


def _gated_reference(model, heads_kept):
    """The unpruned model with the removed heads' gates set to 0."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for layer, blk in enumerate(ref.blocks):
            for pos, h in enumerate(ref.cfg.heads_kept[layer]):
                if h not in heads_kept[layer]:
                    blk.gates[pos] = 0.0
    return ref


def _assert_equals_gated(pruned, model, heads_kept, ids) -> tuple[torch.Tensor, float]:
    """The pruned model and the gated reference, both float32, each within γ̃_N(λ)·max|y64|
    of the gated reference run in float64 (tests/tolerance.py), so within twice that of
    each other. Returns the pruned output and that bound."""
    gated = _gated_reference(model, heads_kept)
    with torch.no_grad():
        got, want = pruned(ids), gated(ids)
        ref64 = gated.double()(ids)  # gated is a private copy
    cfg = model.cfg
    atol = network_atol(ref64, transformer_roundings(
        cfg.d_model, cfg.d_ff, cfg.n_layer, cfg.head_dim, ids.shape[1],
        lm_head=model.lm_head is not None))
    assert_within(got, ref64, atol, "pruned vs float64 gated reference")
    assert_within(want, ref64, atol, "gated reference vs float64")
    assert_within(got, want, 2 * atol, "pruned vs gated reference")
    return got, 2 * atol


# ---------------------------------------------------------------- pruning


@pytest.mark.parametrize("which", ["gpt", "bert"])
@pytest.mark.parametrize("kept", [[[0, 2], [1, 2, 3]], [[3], []], [[], [0, 1, 2, 3]]])
def test_pruned_model_equals_gated_reference(which, kept, gpt, bert):
    model = gpt[0] if which == "gpt" else bert
    ids = random_batches(model.cfg.vocab_size, 24, batch_size=3, n_batches=1, seed=7)[0]
    pruned = prune_heads(model, kept)
    assert pruned.cfg.heads_kept == kept
    for layer, blk in enumerate(pruned.blocks):
        assert blk.q.weight.shape[0] == len(kept[layer]) * model.cfg.head_dim
        assert blk.o.weight.shape[1] == len(kept[layer]) * model.cfg.head_dim
        assert blk.n_kept == len(kept[layer])
    got, atol = _assert_equals_gated(pruned, model, kept, ids)
    # Not trivially equal to the full model: the removed heads mattered, beyond rounding.
    with torch.no_grad():
        assert abs(as_f64(got) - as_f64(model(ids))).max() > atol


def test_pruning_does_not_touch_the_input_and_composes(gpt):
    model, _ = gpt
    before = {k: v.clone() for k, v in model.state_dict().items()}
    once = prune_heads(model, [[0, 1, 3], [1, 2]])
    twice = prune_heads(once, [[1, 3], [2]])  # original head ids throughout
    assert model.cfg.heads_kept == [[0, 1, 2, 3], [0, 1, 2, 3]]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    ids = random_batches(512, 16, batch_size=2, n_batches=1, seed=1)[0]
    _assert_equals_gated(twice, model, [[1, 3], [2]], ids)
    torch.fx.symbolic_trace(twice)  # still capturable by the fx-based passes (SPEC C1)


def test_pruning_rejects_heads_not_present(gpt):
    model, _ = gpt
    once = prune_heads(model, [[0, 1], [0, 1, 2, 3]])
    with pytest.raises(CompileError, match="not in the model"):
        prune_heads(once, [[2], [0]])
    with pytest.raises(CompileError, match="duplicate"):
        prune_heads(model, [[0, 0], [1]])
    with pytest.raises(CompileError, match="layers"):
        prune_heads(model, [[0]])


# ---------------------------------------------------------------- knapsack


def _brute(values, costs, cap):
    best = 0.0
    for r in range(len(values) + 1):
        for sub in itertools.combinations(range(len(values)), r):
            if sum(costs[i] for i in sub) <= cap:
                best = max(best, sum(values[i] for i in sub))
    return best


def test_knapsack_beats_greedy_on_the_textbook_case():
    # Greedy by value density takes items 0 and 1 (160); the optimum is 1 and 2 (220).
    idx, solver = knapsack([60, 100, 120], [10, 20, 30], 50)
    assert idx == [1, 2] and solver == "branch-and-bound"


@pytest.mark.parametrize("seed", range(6))
def test_knapsack_is_optimal_against_brute_force(seed):
    rng = random.Random(seed)
    n = 11
    values = [rng.uniform(0, 1) for _ in range(n)]
    costs = [rng.uniform(0.5, 3.0) for _ in range(n)]
    cap = sum(costs) * rng.uniform(0.2, 0.7)
    idx, _ = knapsack(values, costs, cap)
    assert sum(costs[i] for i in idx) <= cap
    best = _brute(values, costs, cap)  # the same or an equal-valued set, summed in any order
    assert sum(values[i] for i in idx) == roundings_approx(best, n, best)


def test_knapsack_grid_fallback_is_feasible_and_exact_on_integer_costs():
    rng = random.Random(3)
    values = [rng.uniform(0, 1) for _ in range(12)]
    costs = [rng.randint(1, 9) for _ in range(12)]
    idx, solver = knapsack(values, costs, 25, node_limit=0, resolution=25)
    assert solver == "dp-grid"
    assert sum(costs[i] for i in idx) <= 25
    best = _brute(values, costs, 25)
    assert sum(values[i] for i in idx) == roundings_approx(best, len(values), best)


def test_select_heads_optimal_on_a_hand_made_model():
    """Layer tables by original id; None = head already gone. Checked by brute force."""
    scores = [[0.9, 0.1, None, 0.5], [0.3, 0.7, 0.05, None]]
    costs = [[4.0, 1.0, None, 2.0], [1.5, 3.0, 1.0, None]]
    budget = 6.0
    kept = select_heads(scores, costs, theta=0.0, budget=budget)
    heads = [(0, 0), (0, 1), (0, 3), (1, 0), (1, 1), (1, 2)]
    feasible = sorted(
        (sum(scores[layer][h] for layer, h in sub), sub)
        for r in range(len(heads) + 1)
        for sub in itertools.combinations(heads, r)
        if sum(costs[layer][h] for layer, h in sub) <= budget
    )
    (best, best_set), (second, _) = feasible[-1], feasible[-2]
    # the example has a unique optimum (greedy by density misses it): the gap is more than
    # the rounding of two sums of ≤ 6 scores
    assert best - second > gamma(len(heads), U64) * (best + second)
    assert kept == [sorted(h for layer, h in best_set if layer == i) for i in range(2)]
    # θ removes low-significance heads before the knapsack.
    assert select_heads(scores, costs, theta=0.4, budget=None) == [[0, 3], [1]]


# ---------------------------------------------------------------- the pass


def test_squeeze_report_and_budget(gpt, gpt_sig):
    model, _ = gpt
    full = model_cost(model.cfg, T, BITS).total
    budget = full - 3.5 * head_cost(model.cfg, T, BITS).total
    pruned, rep = squeeze(model, gpt_sig, budget=budget, seq_len=T, bits=BITS)
    c_full, c_pruned = model_cost(model.cfg, T, BITS), model_cost(pruned.cfg, T, BITS)
    assert rep.cost_after_s <= budget < rep.cost_before_s == roundings_approx(
        full, 1, 0, extra=2 * cost_total_rtol(c_full) * full)
    assert rep.cost_after_s == roundings_approx(
        c_pruned.total, 1, 0, extra=2 * cost_total_rtol(c_pruned) * c_pruned.total)
    assert sum(map(len, rep.heads_kept)) == 4  # 3.5 heads' worth removed → 4 of 8 remain
    for have, k, r in zip(model.cfg.heads_kept, rep.heads_kept, rep.heads_removed, strict=True):
        assert sorted(k + r) == have and not set(k) & set(r)
    assert pruned.cfg.heads_kept == rep.heads_kept
    assert 0 < rep.retained_significance < 1
    json.dumps(rep.to_dict())
    assert model.cfg.heads_kept == [[0, 1, 2, 3], [0, 1, 2, 3]]  # input untouched


def test_significance_retains_at_least_what_baselines_retain(gpt, gpt_sig):
    model, _ = gpt
    full = model_cost(model.cfg, T, BITS).total
    hc = head_cost(model.cfg, T, BITS).total
    for removed in (1.5, 3, 5.5):
        budget = full - removed * hc
        _, sig = squeeze(model, gpt_sig, budget=budget, seq_len=T, bits=BITS)
        for strategy in ("random", "magnitude"):
            for seed in range(3):
                _, base = squeeze(
                    model, gpt_sig, budget=budget, seq_len=T, bits=BITS,
                    strategy=strategy, seed=seed,
                )
                assert base.cost_after_s <= budget
                # retained = Σ kept / Σ all over ≤ 8 non-negative scores: γ_{n+1} each
                slack = gamma(2 * model.cfg.n_layer * model.cfg.n_head + 2, U64) * (
                    sig.retained_significance + base.retained_significance)
                assert sig.retained_significance >= base.retained_significance - slack


def test_random_baseline_is_seeded(gpt, gpt_sig):
    model, _ = gpt
    budget = model_cost(model.cfg, T, BITS).total - 4 * head_cost(model.cfg, T, BITS).total
    runs = [
        squeeze(model, gpt_sig, budget=budget, seq_len=T, bits=BITS, strategy="random",
                seed=s)[1].heads_kept
        for s in (0, 0, 1, 2, 3)
    ]
    assert runs[0] == runs[1] and len({json.dumps(r) for r in runs}) > 1


def test_magnitude_baseline_drops_a_zero_weight_head_first(gpt, gpt_sig):
    model, _ = gpt
    m = copy.deepcopy(model)
    hd = m.cfg.head_dim
    with torch.no_grad():
        for name in ("q", "k", "v"):
            getattr(m.blocks[0], name).weight[2 * hd : 3 * hd] = 0
        m.blocks[0].o.weight[:, 2 * hd : 3 * hd] = 0
    budget = model_cost(m.cfg, T, BITS).total - 0.5 * head_cost(m.cfg, T, BITS).total
    _, rep = squeeze(m, gpt_sig, budget=budget, seq_len=T, bits=BITS, strategy="magnitude")
    assert rep.heads_removed == [[2], []]


def test_significance_selection_beats_random_on_held_out_text(gpt):
    """Held-out LM loss after removing half the heads: significance ≤ mean over random seeds.

    Uses the leave-one-out ``ablation`` significance. (Michel's |dL/dξ| and Fisher scores do
    NOT pass this on tiny-gpt at T = 64; see the significance module's docstring.)
    """
    model, tok = gpt
    paras = DEFAULT_CALIBRATION_TEXT.split("\n\n")
    cal = calibration_batches(tok, "\n\n".join(paras[:3]), seq_len=T, batch_size=8)
    held = calibration_batches(tok, "\n\n".join(paras[3:]), seq_len=T, batch_size=8)

    def loss(m):
        with torch.no_grad():
            return statistics.mean(
                float(F.cross_entropy(m(x)[:, :-1].flatten(0, 1), x[:, 1:].flatten()))
                for x in held
            )

    sig = head_significance(model, cal, method="ablation")
    budget = model_cost(model.cfg, T, BITS).total - 4 * head_cost(model.cfg, T, BITS).total
    pruned, rep = squeeze(model, sig, budget=budget, seq_len=T, bits=BITS)
    assert sum(map(len, rep.heads_kept)) == 4
    random_losses = [
        loss(squeeze(model, sig, budget=budget, seq_len=T, bits=BITS, strategy="random",
                     seed=s)[0])
        for s in range(6)
    ]
    assert loss(pruned) <= statistics.mean(random_losses)


def test_budget_too_small_and_theta_too_high(gpt, gpt_sig):
    model, _ = gpt
    full = model_cost(model.cfg, T, BITS)
    cheapest = min(full.per_head().values())
    no_heads = model_cost(model.cfg, T, BITS, [[], []]).total
    with pytest.raises(CompileError) as e:
        squeeze(model, gpt_sig, budget=no_heads, seq_len=T, bits=BITS)
    msg = str(e.value)
    assert "\n" not in msg and f"C_max={no_heads:.6g}" in msg and f"{cheapest:.6g}" in msg
    top = max(s for row in gpt_sig.normalized for s in row)
    with pytest.raises(CompileError, match="θ=.* removes every head"):
        squeeze(model, gpt_sig, theta=top, seq_len=T, bits=BITS)
    # Just below the top score (the next float down: θ is compared with the stored scores
    # themselves), exactly one head survives.
    _, rep = squeeze(model, gpt_sig, theta=math.nextafter(top, 0.0), seq_len=T, bits=BITS)
    assert sum(map(len, rep.heads_kept)) == 1


def test_stale_significance_is_rejected(gpt, gpt_sig):
    model, _ = gpt
    pruned = prune_heads(model, [[0, 1], [2, 3]])
    with pytest.raises(CompileError, match="other heads"):
        squeeze(pruned, gpt_sig, seq_len=T, bits=BITS)


def test_bert_squeeze_with_distortion_scores(bert):
    batches = random_batches(100, 16, batch_size=4, n_batches=2, seed=0)
    sig = head_significance(bert, batches, method="fisher")
    budget = model_cost(bert.cfg, 16, BITS).total - 5 * head_cost(bert.cfg, 16, BITS).total
    pruned, rep = squeeze(bert, sig, budget=budget, seq_len=16, bits=BITS)
    rtol = cost_total_rtol(model_cost(bert.cfg, 16, BITS))
    assert rep.cost_after_s <= budget * (1 + 2 * rtol) and sum(map(len, rep.heads_kept)) == 3
    _assert_equals_gated(pruned, bert, rep.heads_kept, batches[0])
