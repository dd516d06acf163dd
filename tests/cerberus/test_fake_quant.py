"""The fake-quantised model: the integer graph simulated in float (SPEC C4)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tolerance import U64, assert_within, dot_atol, gamma

from cerberus.errors import CompileError
from cerberus.frontends.canonical import CanonicalTransformer
from cerberus.passes.adaptive import adaptive_dynamic_quantize
from cerberus.passes.fake_quant import FakeQuantLinear, fake_quant, fake_quantize_model
from cerberus.passes.observers import collect_activation_scales
from cerberus.passes.quantize import dequantize, quantize, quantize_linears


def test_fake_quant_gradient_is_identity_inside_range() -> None:
    x = torch.linspace(-1.0, 1.0, 41, dtype=torch.float64, requires_grad=True)
    y = fake_quant(x, 1.0 / 7, 4)
    want = dequantize(quantize(x, 1.0 / 7, 4), 1.0 / 7)
    # y = x + (q·s − x) in float64, two roundings from q·s: ≤ γ_2·(|x| + 2|q·s|)
    xd = x.detach().numpy()
    assert_within(y, want, gamma(2, U64) * (np.abs(xd) + 2 * np.abs(want)), "fake_quant")
    w = torch.randn(41, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    (y * w).sum().backward()
    assert torch.equal(x.grad, w)


def test_fake_quant_linear_equals_integer_matmul(gpt_text) -> None:
    """What the integer graph computes: (x_int @ w_int.T)·s_x·s_w + b."""
    model, windows = gpt_text
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
        # float32: each operand x̂ = x + (q·s − x), its scale rounded to float32, is within
        # 5 roundings of |x̂| + |x| (same for ŵ); the K-long dot product γ_K; with the bias
        # add (Higham): |got − ref| ≤ γ_{K+10}·(|x̂|+|x|)·(|ŵ|+|w|)ᵀ + γ_2·(|ref| + |b|)
        xhat = quantize(x, p.act_scale, 6) * p.act_scale
        what = p.weight.values * p.weight.scale[:, None]
        xs = np.abs(xhat) + np.abs(x.double().numpy())
        ws = np.abs(what) + np.abs(lin.weight.detach().double().numpy())
        bias = 0.0 if p.bias is None else np.abs(p.bias)
        atol = dot_atol(xs, ws.T, extra=10) + gamma(2) * (np.abs(ref) + bias)
        assert_within(got, ref, atol, name)


def test_fake_quant_model_at_8_bits_agrees_with_float(gpt_text) -> None:
    model, windows = gpt_text
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


def test_fake_quant_model_adaptive_and_traceable(gpt_text) -> None:
    model, windows = gpt_text
    fq = fake_quantize_model(model, 8, {}, adaptive=True, adaptive_kwargs={"levels": 16})
    assert fq.quant_spec.adaptive == {"levels": 16, "threshold": 0.1, "alpha": 0.5}
    with torch.no_grad():
        e = fq.embed(windows[:1])[0]
        e_ref = model.embed(windows[:1])[0]
    r = adaptive_dynamic_quantize(e_ref, levels=16)
    # the module casts the same float64 x̂ to float32 and adds it as x + (x̂ − x): three
    # roundings, ≤ γ_3·(2|x̂| + |x|)
    assert_within(e, r.x_hat, gamma(3) * (2 * np.abs(r.x_hat) + np.abs(e_ref.double().numpy())),
                  "adaptive embedding")
    assert all(len(np.unique(row)) <= 16 for row in r.q_int)
    gm = torch.fx.symbolic_trace(fake_quantize_model(model, 8, {"blocks.0.q": 0.03}))
    with torch.no_grad():
        assert math.isfinite(float(gm(windows[:1]).sum()))
