"""Quantization primitives, the paper's §5 adaptive quantization and the fake-quant model (C4)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from cerberus.errors import CompileError
from cerberus.frontends.canonical import CanonicalTransformer
from cerberus.frontends.huggingface import from_hf_module, load_pretrained
from cerberus.passes.quantize import (
    AdaptiveQuantizer,
    FakeQuantLinear,
    adaptive_dynamic_quantize,
    calibrate_activation,
    check_bits,
    collect_activation_scales,
    dequantize,
    fake_quant,
    fake_quantize_model,
    qrange,
    quantize,
    quantize_linears,
    quantize_weight_per_channel,
    quantize_weight_per_tensor,
)
from cerberus.paths import shipped_model

# Text in the style of the CPython docs tiny-gpt was trained on (written for this test).
TEXT = """The for statement is used to iterate over the elements of a sequence (such as a string,
tuple or list) or other iterable object. The expression list is evaluated once; it should yield
an iterable object. An iterator is created for the result of that iterable. Each item in turn is
assigned to the target list using the standard rules for assignments, and then the suite is
executed. When the items are exhausted, the suite in the else clause, if present, is executed,
and the loop terminates. A break statement executed in the first suite terminates the loop
without executing the else clause's suite. A continue statement executed in the first suite
skips the rest of the suite and continues with the next item, or with the else clause if there
is no next item. The try statement specifies exception handlers and/or cleanup code for a group
of statements. The with statement is used to wrap the execution of a block with methods defined
by a context manager. Function definitions are executable statements. A class definition defines
a class object. Objects are Python's abstraction for data. All data in a Python program is
represented by objects or by relations between objects. Every object has an identity, a type and
a value. An object's identity never changes once it has been created; you may think of it as the
object's address in memory. The is operator compares the identity of two objects."""


@pytest.fixture(scope="module")
def tiny() -> tuple[CanonicalTransformer, torch.Tensor]:
    model, tok = load_pretrained(str(shipped_model()))
    ids = torch.tensor(tok(TEXT).input_ids)
    n = len(ids) // 64
    assert n >= 6
    return from_hf_module(model), ids[: n * 64].view(n, 64)


# --- integer primitives -------------------------------------------------------------------


def test_qrange() -> None:
    assert qrange(8) == (-128, 127)
    assert qrange(2) == (-2, 1)
    assert qrange(4, signed=False) == (0, 15)


@pytest.mark.parametrize("bits", [0, 1, 9, 16, -3, 2.5, True])
def test_bits_out_of_range_is_a_compile_error(bits) -> None:
    with pytest.raises(CompileError, match="bits must be in 2..8"):
        check_bits(bits)
    with pytest.raises(CompileError, match="bits must be in 2..8"):
        quantize_weight_per_channel(torch.ones(2, 2), bits)


def test_rounding_is_half_to_even_and_clips() -> None:
    q = quantize(np.array([0.5, 1.5, 2.5, -0.5, -1.5, 1000.0, -1000.0]), 1.0, 8)
    assert q.dtype == np.int64
    assert q.tolist() == [0, 2, 2, 0, -2, 127, -128]
    # fake_quant gives the same numbers in torch
    t = fake_quant(torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 1000.0, -1000.0]), 1.0, 8)
    assert t.tolist() == [0.0, 2.0, 2.0, 0.0, -2.0, 127.0, -128.0]


@settings(max_examples=40, deadline=None)
@given(
    arrays(np.float64, (5, 7), elements=st.floats(-50, 50, allow_nan=False)),
    st.integers(2, 8),
)
def test_round_trip_error_at_most_half_a_step(w: np.ndarray, bits: int) -> None:
    qt = quantize_weight_per_channel(w, bits)
    lo, hi = qrange(bits)
    assert qt.values.min() >= lo and qt.values.max() <= hi
    err = np.abs(qt.dequantize() - w)
    assert np.all(err <= qt.scale[:, None] / 2 * (1 + 1e-9) + 1e-300)
    s = calibrate_activation(w, bits)
    assert np.all(np.abs(dequantize(quantize(w, s, bits), s) - w) <= s / 2 * (1 + 1e-9))


def test_per_channel_beats_per_tensor_on_rows_of_different_norms() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 32, generator=g) * torch.tensor([1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0])[:, None]
    pc = quantize_weight_per_channel(w, 4)
    pt = quantize_weight_per_tensor(w, 4)
    wn = w.double().numpy()
    err_pc = ((pc.dequantize() - wn) ** 2).sum(axis=1)
    err_pt = ((pt.dequantize() - wn) ** 2).sum(axis=1)
    assert err_pc.sum() < err_pt.sum()
    # the small rows are wiped out per tensor but kept per channel
    assert np.all(pt.values[:3] == 0)
    assert np.all(np.abs(pc.values[:3]).max(axis=1) == 7)


def test_zero_rows_get_scale_one_and_mse_search_never_worse() -> None:
    g = torch.Generator().manual_seed(1)
    w = torch.randn(4, 64, generator=g)
    w[2] = 0.0
    mx = quantize_weight_per_channel(w, 3)
    ms = quantize_weight_per_channel(w, 3, method="mse")
    assert mx.scale[2] == 1.0 and ms.scale[2] == 1.0 and np.all(ms.values[2] == 0)
    wn = w.double().numpy()
    e_mx = ((mx.dequantize() - wn) ** 2).sum(axis=1)
    e_ms = ((ms.dequantize() - wn) ** 2).sum(axis=1)
    assert np.all(e_ms <= e_mx + 1e-12)
    assert e_ms.sum() < e_mx.sum()  # on Gaussian rows at 3 bits clipping pays off
    assert np.all(ms.scale[[0, 1, 3]] < mx.scale[[0, 1, 3]])
    ms2 = quantize_weight_per_channel(w, 3, method="mse")
    assert np.array_equal(ms.scale, ms2.scale)


def test_activation_calibration_methods() -> None:
    batches = [torch.linspace(-1, 1, 10001), torch.tensor([0.5, 8.0])]
    assert calibrate_activation(batches, 8) == pytest.approx(8.0 / 127)
    p = calibrate_activation(batches, 8, method="percentile", percentile=99.0)
    assert p == pytest.approx(np.percentile(np.abs(torch.cat(batches).numpy()), 99.0) / 127)
    assert calibrate_activation(torch.zeros(5), 4) == 1.0
    with pytest.raises(CompileError):
        calibrate_activation(batches, 8, method="median")


# --- adaptive dynamic quantization (paper §5) -------------------------------------------


def test_adaptive_matches_hand_computed_example() -> None:
    x = torch.tensor([[0.0, 0.4, 0.8, 1.0], [0.01, 0.02, 0.03, 0.05]], dtype=torch.float64)
    r = adaptive_dynamic_quantize(x, levels=4, threshold=0.1, alpha=0.5)
    # Row 0: mean .55, Σ(dev²) = .3025+.0225+.0625+.2025 = .59, σ = sqrt(.59/4) = .38406 > T
    #   → S = α = .5; scaled [0, .2, .4, .5]; min 0, Q = .5/3; (y−min)/Q = [0, 1.2, 2.4, 3]
    #   → levels [0, 1, 2, 3]; x̂ = [0, 1/3, 2/3, 1].
    # Row 1: mean .0275, Σ(dev²) = .000875, σ = sqrt(.00021875) = .014790 ≤ T → S = 1/α = 2;
    #   scaled [.02, .04, .06, .10]; min .02, Q = .08/3; (y−min)/Q = [0, .75, 1.5, 3]
    #   → levels [0, 0, 1, 3]; q = [.02, .02, .02+.08/3, .10]; x̂ = q/2.
    assert r.sigma == pytest.approx([0.38405728739, 0.01479019946], rel=1e-9)
    assert r.S.tolist() == [0.5, 2.0]
    assert r.q_int.tolist() == [[0, 1, 2, 3], [0, 0, 1, 3]]
    assert r.q_int.dtype == np.int64
    assert r.mins == pytest.approx([0.0, 0.02])
    assert r.q_step == pytest.approx([0.5 / 3, 0.08 / 3])
    assert r.x_hat[0] == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0])
    assert r.x_hat[1] == pytest.approx([0.01, 0.01, (0.02 + 0.08 / 3) / 2, 0.05])


def test_adaptive_both_branches_of_S() -> None:
    x = torch.stack([torch.linspace(-3, 3, 16), torch.linspace(-0.01, 0.01, 16)])
    r = adaptive_dynamic_quantize(x, threshold=0.1, alpha=0.25)
    assert r.S.tolist() == [0.25, 4.0]
    # threshold above both σ → both rows scaled up
    r2 = adaptive_dynamic_quantize(x, threshold=10.0, alpha=0.25)
    assert r2.S.tolist() == [4.0, 4.0]
    assert r.mins[0] == pytest.approx(-3 * 0.25) and r.mins[1] == pytest.approx(-0.01 * 4)


@pytest.mark.parametrize("levels", [2, 5, 16, 256])
def test_adaptive_respects_levels_and_bounds_error(levels: int) -> None:
    x = torch.randn(20, 300, generator=torch.Generator().manual_seed(levels), dtype=torch.float64)
    r = adaptive_dynamic_quantize(x, levels=levels)
    assert r.q_int.min() >= 0 and r.q_int.max() <= levels - 1
    for row in r.q_int:
        assert len(np.unique(row)) <= levels
    assert np.all(r.q_int.max(axis=1) == levels - 1)  # the row max reaches the top level
    # floor ⇒ the reconstruction lies below x by less than one step (in x units)
    d = x.numpy() - r.x_hat
    step = (r.q_step / r.S)[:, None]
    assert np.all(d >= -1e-9 * step) and np.all(d < step * (1 + 1e-9))


def test_adaptive_constant_rows_do_not_divide_by_zero() -> None:
    x = torch.tensor([[0.3, 0.3, 0.3], [0.0, 0.0, 0.0], [1.0, 2.0, 3.0]])
    r = adaptive_dynamic_quantize(x)
    assert np.all(np.isfinite(r.x_hat))
    assert r.q_step[0] == 0 and r.q_step[1] == 0
    assert r.q_int[:2].tolist() == [[0, 0, 0], [0, 0, 0]]
    assert r.x_hat[0] == pytest.approx([0.3] * 3) and r.x_hat[1].tolist() == [0.0] * 3
    with pytest.raises(CompileError):
        adaptive_dynamic_quantize(x, levels=1)


def test_adaptive_module_is_fake_quant_with_straight_through_gradient() -> None:
    x = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x.requires_grad_(True)
    mod = AdaptiveQuantizer(levels=8)
    y = mod(x)
    r = adaptive_dynamic_quantize(x.detach().reshape(-1, 8), levels=8)
    assert np.allclose(y.detach().reshape(-1, 8).numpy(), r.x_hat)
    assert not torch.equal(y.detach(), x.detach())
    (y * torch.arange(8.0, dtype=torch.float64)).sum().backward()
    assert torch.equal(x.grad, torch.arange(8.0, dtype=torch.float64).expand(2, 5, 8))


# --- straight-through fake quantization ------------------------------------------------


def test_fake_quant_gradient_is_identity_inside_range() -> None:
    x = torch.linspace(-1.0, 1.0, 41, dtype=torch.float64, requires_grad=True)
    y = fake_quant(x, 1.0 / 7, 4)
    assert np.allclose(y.detach().numpy(), dequantize(quantize(x, 1.0 / 7, 4), 1.0 / 7))
    w = torch.randn(41, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    (y * w).sum().backward()
    assert torch.equal(x.grad, w)


def test_fake_quant_linear_equals_integer_matmul(tiny) -> None:
    """What the integer graph computes: (x_int @ w_int.T)·s_x·s_w + b."""
    model, windows = tiny
    scales = collect_activation_scales(model, windows[:2], 6)
    fq = fake_quantize_model(model, 6, scales)
    params = quantize_linears(model, 6, scales)
    assert set(params) == set(fq.quant_spec.quantized_linears)
    assert len(params) == 6 * model.cfg.n_layer
    for name in ("blocks.0.fc1", "blocks.1.o"):
        i, sub = int(name.split(".")[1]), name.split(".")[2]
        lin = getattr(fq.blocks[i], sub)
        assert isinstance(lin, FakeQuantLinear)
        p = params[name]
        assert p.weight.values.dtype == np.int64 and np.abs(p.weight.values).max() <= 31
        x = torch.randn(10, lin.in_features, generator=torch.Generator().manual_seed(0))
        acc = quantize(x, p.act_scale, 6) @ p.weight.values.T  # exact integer accumulation
        ref = acc * p.act_scale * p.weight.scale[None, :] + p.bias
        with torch.no_grad():
            got = lin(x).double().numpy()
        assert np.allclose(got, ref, atol=1e-5)


# --- the fake-quantised model ------------------------------------------------------------


def test_collect_scales_names_every_linear_and_block_and_leaves_model_alone(tiny) -> None:
    model, windows = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scales = collect_activation_scales(model, [windows[:1], windows[1:2]], 8)
    for i in range(model.cfg.n_layer):
        assert f"blocks.{i}" in scales
        for sub in ("q", "k", "v", "o", "fc1", "fc2"):
            assert scales[f"blocks.{i}.{sub}"] > 0
    assert scales["blocks.0.q"] == scales["blocks.0.k"]  # same input (ln1 output)
    assert not any(m._forward_pre_hooks for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_fake_quant_model_at_8_bits_agrees_with_float(tiny) -> None:
    model, windows = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scales = collect_activation_scales(model, windows, 8, "percentile")
    fq = fake_quantize_model(model, 8, scales)
    assert isinstance(fq, CanonicalTransformer) and fq is not model
    assert isinstance(model.blocks[0].q, torch.nn.Linear)
    assert type(model.blocks[0].q) is torch.nn.Linear  # input untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert set(fq.state_dict()) == set(model.state_dict())
    with torch.no_grad():
        ref, got = model(windows), fq(windows)
    assert not torch.equal(ref, got)
    agree = (ref.argmax(-1) == got.argmax(-1)).float().mean().item()
    assert agree >= 0.95
    # 4 bits is much coarser than 8: the simulation really quantizes
    fq4 = fake_quantize_model(model, 4, collect_activation_scales(model, windows, 4, "percentile"))
    with torch.no_grad():
        err4 = (fq4(windows) - ref).abs().mean()
    assert err4 > (got - ref).abs().mean() * 4
    with pytest.raises(CompileError, match="bits must be in 2..8"):
        fake_quantize_model(model, 9, scales)


def test_fake_quant_model_adaptive_and_traceable(tiny) -> None:
    model, windows = tiny
    fq = fake_quantize_model(model, 8, {}, adaptive=True, adaptive_kwargs={"levels": 16})
    assert fq.quant_spec.adaptive == {"levels": 16, "threshold": 0.1, "alpha": 0.5}
    with torch.no_grad():
        e = fq.embed(windows[:1])[0]
        e_ref = model.embed(windows[:1])[0]
    r = adaptive_dynamic_quantize(e_ref, levels=16)
    assert np.allclose(e.double().numpy(), r.x_hat, atol=1e-6)
    assert all(len(np.unique(row)) <= 16 for row in r.q_int)
    gm = torch.fx.symbolic_trace(fake_quantize_model(model, 8, {"blocks.0.q": 0.03}))
    with torch.no_grad():
        assert math.isfinite(float(gm(windows[:1]).sum()))
