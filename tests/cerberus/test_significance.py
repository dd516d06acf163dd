"""Calibration data and head significance S(h) (SPEC C2)."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from tolerance import U64, gamma
from torch.func import functional_call, jacfwd

from cerberus.calibration import DEFAULT_CALIBRATION_TEXT, calibration_batches, random_batches
from cerberus.errors import CompileError
from cerberus.passes.significance import head_significance


def _batches(tok, text=None, seq_len=32, seed=0):
    return calibration_batches(tok, text, seq_len=seq_len, batch_size=4, max_batches=3, seed=seed)


# ---------------------------------------------------------------- calibration


def test_default_calibration_text_is_a_few_kb_of_prose():
    assert 2_000 <= len(DEFAULT_CALIBRATION_TEXT.encode()) <= 4_096
    assert DEFAULT_CALIBRATION_TEXT.count("\n\n") >= 3


def test_calibration_batches_shape_dtype_and_determinism(gpt):
    _, tok = gpt
    a = calibration_batches(tok, seq_len=16, batch_size=4, max_batches=3, seed=1)
    b = calibration_batches(tok, seq_len=16, batch_size=4, max_batches=3, seed=1)
    c = calibration_batches(tok, seq_len=16, batch_size=4, max_batches=3, seed=2)
    assert len(a) == 3 and all(x.shape == (4, 16) and x.dtype == torch.int64 for x in a)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))
    # Windows are real token runs of the text.
    ids = tok.encode(DEFAULT_CALIBRATION_TEXT)
    text_runs = {tuple(ids[i : i + 16]) for i in range(len(ids) - 15)}
    assert all(tuple(row.tolist()) in text_runs for x in a for row in x)


def test_calibration_file_errors(gpt, tmp_path):
    _, tok = gpt
    with pytest.raises(CompileError, match="not found"):
        calibration_batches(tok, path=tmp_path / "nope.txt", seq_len=16)
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(CompileError, match="empty"):
        calibration_batches(tok, path=empty, seq_len=16)
    short = tmp_path / "short.txt"
    short.write_text("def f(): pass")
    with pytest.raises(CompileError, match="too short"):
        calibration_batches(tok, path=short, seq_len=64)
    ok = tmp_path / "ok.txt"
    ok.write_text(DEFAULT_CALIBRATION_TEXT)
    assert calibration_batches(tok, path=ok, seq_len=16)[0].shape[1] == 16


def test_random_batches_range_and_seed():
    a = random_batches(100, 8, batch_size=2, n_batches=3, seed=5)
    b = random_batches(100, 8, batch_size=2, n_batches=3, seed=5)
    assert len(a) == 3 and all(x.shape == (2, 8) and x.dtype == torch.int64 for x in a)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert all(int(x.min()) >= 0 and int(x.max()) < 100 for x in a)


# ---------------------------------------------------------------- significance


@pytest.mark.parametrize("which", ["gpt", "bert"])
@pytest.mark.parametrize("method", ["gradient", "fisher", "ablation"])
def test_both_loss_modes_run_and_report(which, method, gpt, bert):
    if which == "gpt":
        model, tok = gpt
        batches = _batches(tok)
    else:
        model = bert
        batches = random_batches(100, 16, batch_size=4, n_batches=2, seed=0)
    rep = head_significance(model, batches, method=method, seed=0)
    assert rep.loss == ("lm" if which == "gpt" else "distortion")
    assert rep.n_batches == len(batches) and rep.n_examples == sum(b.shape[0] for b in batches)
    assert len(rep.scores) == model.cfg.n_layer
    assert all(len(row) == model.cfg.n_head for row in rep.scores)
    assert all(s is not None and math.isfinite(s) for row in rep.scores for s in row)
    if method != "ablation":  # |g| and g² are non-negative; a loss change need not be
        assert all(s >= 0 for row in rep.scores for s in row)
    for row in rep.normalized:  # Michel: unit L2 norm per layer
        # float64: the norm (n squares, n − 1 adds, sqrt), n divides, and this check's own
        # n squares, adds and sqrt: relative error ≤ γ_{3n+4}
        n = len(row)
        assert math.isclose(math.sqrt(sum(s * s for s in row)), 1.0, rel_tol=gamma(3 * n + 4, U64))
    json.dumps(rep.to_dict())


def test_deterministic_for_a_seed_and_sensitive_to_data(gpt, bert):
    model, tok = gpt
    b = _batches(tok)
    assert head_significance(model, b).scores == head_significance(model, b).scores
    other = _batches(tok, text=DEFAULT_CALIBRATION_TEXT.split("\n\n", 3)[3])
    assert head_significance(model, other).scores != head_significance(model, b).scores
    rb = random_batches(100, 16, batch_size=4, n_batches=2, seed=0)
    f1 = head_significance(bert, rb, method="fisher", seed=3).scores
    assert f1 == head_significance(bert, rb, method="fisher", seed=3).scores
    assert f1 != head_significance(bert, rb, method="fisher", seed=4).scores  # projections


def test_does_not_mutate_the_model(gpt):
    model, tok = gpt
    m = copy.deepcopy(model).train()
    m.blocks[0].q.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    flags = {n: p.requires_grad for n, p in m.named_parameters()}
    for method in ("gradient", "fisher", "ablation"):
        head_significance(m, _batches(tok), method=method)
    assert m.training
    assert flags == {n: p.requires_grad for n, p in m.named_parameters()}
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert all(p.grad is None for p in m.parameters())


def _zero_o_columns(model, layer, head):
    m = copy.deepcopy(model)
    hd = m.cfg.head_dim
    pos = m.cfg.heads_kept[layer].index(head)
    with torch.no_grad():
        m.blocks[layer].o.weight[:, pos * hd : (pos + 1) * hd] = 0
    return m


@pytest.mark.parametrize("which", ["gpt", "bert"])
@pytest.mark.parametrize("method", ["gradient", "fisher", "ablation"])
def test_head_with_zeroed_output_projection_scores_zero(which, method, gpt, bert):
    if which == "gpt":
        base, tok = gpt
        batches = _batches(tok)
    else:
        base = bert
        batches = random_batches(100, 16, batch_size=4, n_batches=2, seed=0)
    m = _zero_o_columns(base, 1, 2)
    rep = head_significance(m, batches, method=method)
    others = [abs(s) for (layer, h), s in _flat(rep.scores).items() if (layer, h) != (1, 2)]
    assert max(others) > 0
    # exactly 0: the head's output meets only zero weights, so its gradient is a sum of exact
    # zeros, and masking it changes no rounded value of the forward
    assert rep.scores[1][2] == 0.0
    if method != "ablation":
        assert rep.ranking(normalized=False)[-1] == (1, 2)
        assert rep.ranking(normalized=True)[-1] == (1, 2)


def _flat(scores):
    return {(layer, h): s for layer, row in enumerate(scores) for h, s in enumerate(row)}


def test_ablation_score_is_the_measured_loss_change(gpt):
    """S_ablation(h) must equal L(model without h) − L(model) on the same batches."""
    model, tok = gpt
    batches = _batches(tok)
    rep = head_significance(model, batches, method="ablation")

    def loss(m):
        with torch.no_grad():
            tot = sum(
                F.cross_entropy(m(x)[:, :-1].flatten(0, 1), x[:, 1:].flatten()) * x.shape[0]
                for x in batches
            )
        return float(tot) / sum(x.shape[0] for x in batches)

    base = loss(model)
    for layer, head in [(0, 1), (1, 3)]:
        m = copy.deepcopy(model)
        with torch.no_grad():
            m.blocks[layer].gates[m.cfg.heads_kept[layer].index(head)] = 0
        # The forwards are the ablation's own (same float32 values, same shapes), so the two
        # differ only in how the per-batch losses are accumulated: here a float32 sum of
        # n_batches products CE·B, in the ablation a float32 difference (exact, Sterbenz)
        # summed in float64: ≤ γ_{n+1}·(L(m) + L) (Higham)
        lm = loss(m)
        atol = gamma(len(batches) + 1) * (lm + base)
        assert rep.scores[layer][head] == pytest.approx(lm - base, abs=atol, rel=0)


def test_fisher_distortion_estimates_jacobian_norm(bert):
    """Docstring claim: E[(dL/dξ_h)²] = ||∂f/∂ξ_h||² / numel for L = ⟨r, f⟩/√numel."""
    batches = random_batches(100, 6, batch_size=16, n_batches=12, seed=1)
    rep = head_significance(bert, batches, method="fisher", seed=0)
    gates = {f"blocks.{i}.gates": bert.blocks[i].gates.detach() for i in range(2)}
    exact = torch.zeros(2, 4, dtype=torch.float64)
    per_example: list[list[torch.Tensor]] = [[], []]
    for batch in batches:
        jac = jacfwd(lambda g, batch=batch: functional_call(bert, g, (batch,)))(gates)
        for i in range(2):  # jac[...]: [B, T, d, n_heads]; per-example ||∂f/∂ξ||² summed
            exact[i] += jac[f"blocks.{i}.gates"].double().square().sum(dim=(0, 1, 2)) / (6 * 32)
            per_example[i].append(
                jac[f"blocks.{i}.gates"].double().square().sum(dim=(1, 2)) / (6 * 32))
    exact /= sum(b.shape[0] for b in batches)
    est = torch.tensor(rep.scores, dtype=torch.float64)
    # One Gaussian projection per example (192): its squared projection is q_e·χ²₁, q_e the
    # example's ||∂f/∂ξ||²/numel, variance 2·q_e²; so the mean's relative standard error is
    # √(2·Σq_e²)/Σq_e per head (≈ √(2/192) ≈ 0.1 for equal q_e). 3.5 standard errors: a
    # Gaussian tail of ~5e-4 per head. (Float rounding is ~1e-7 of this.)
    q = torch.stack([torch.cat(p) for p in per_example])  # [layers, examples, heads]
    rel_se = (2 * q.square().sum(dim=1)).sqrt() / q.sum(dim=1)
    assert torch.all((est - exact).abs() <= 3.5 * rel_se * exact), (est, exact, rel_se)


def test_bad_inputs(gpt):
    model, tok = gpt
    with pytest.raises(CompileError, match="method"):
        head_significance(model, _batches(tok), method="bogus")
    with pytest.raises(CompileError, match="at least one"):
        head_significance(model, [])
    with pytest.raises(CompileError, match="does not fit"):
        head_significance(model, [torch.zeros(1, model.cfg.n_positions + 1, dtype=torch.long)])
