"""The hybrid partition: integer linears under FHE, the rest on the client (SPEC C6)."""

import copy

import numpy as np
import pytest
import torch
from tolerance import U64, assert_within, network_atol, transformer_roundings

from cerberus.calibration import calibration_batches
from cerberus.hybrid import hybrid_model, lower_hybrid
from cerberus.ir import evaluate
from cerberus.passes.fake_quant import fake_quantize_model
from cerberus.passes.observers import collect_activation_scales


@pytest.fixture(scope="module")
def held_out(tiny_gpt):
    """1,600 tokens of CPython docs topics the model never trained on, in 16-token windows."""
    from pydoc_data.topics import topics

    _, tok = tiny_gpt
    names = sorted(topics)
    text = " ".join(topics[n] for i, n in enumerate(names) if i % 5 == 4)
    return torch.tensor(tok(text).input_ids[: 16 * 100]).view(100, 16)


@pytest.fixture(scope="module")
def calib(tiny_gpt):
    return calibration_batches(tiny_gpt[1], seq_len=16, batch_size=8, max_batches=6)


def test_each_part_is_one_clear_weight_linear(tiny_gpt, calib) -> None:
    model, _ = tiny_gpt
    parts = lower_hybrid(model, calib, 8, 8)
    assert set(parts) == {f"blocks.{i}.{n}" for i in range(2)
                          for n in ("q", "k", "v", "o", "fc1", "fc2")}
    for part in parts.values():
        assert [n.op for n in part.graph.nodes] == ["input", "linear"]
        x = np.random.default_rng(0).integers(-127, 128, (3, part.graph["linear"].attrs[
            "weight"].shape[0]))
        evaluate(part.graph, x)  # the declared accumulator range holds for any input


def test_integer_linears_equal_the_fake_quant_simulation(tiny_gpt, calib, held_out) -> None:
    model, _ = tiny_gpt
    parts = lower_hybrid(model, calib, 8, 8)
    scales = collect_activation_scales(model, calib, 8)
    double = copy.deepcopy(model).double()  # fixtures are shared: never convert in place
    fq = fake_quantize_model(double, 8, scales)
    ids = held_out[:4]
    with torch.no_grad():
        got = hybrid_model(double, parts)(ids)
        ref = fq(ids)
    # Both in float64, the integer accumulation exact: they differ by float64 rounding only,
    # each within γ̃_N(λ)·max|y| (tests/tolerance.py; N counts the fake quantization's and
    # the dequantization's ≤ 6 roundings per linear), so the two within twice that.
    cfg = model.cfg
    n = transformer_roundings(cfg.d_model, cfg.d_ff, cfg.n_layer, cfg.head_dim, ids.shape[1],
                              per_linear=6)
    assert_within(got, ref, 2 * network_atol(ref, n, u=U64), "hybrid vs fake-quant model")


def test_top1_agreement_at_8_bits_is_at_least_95_percent(tiny_gpt, calib, held_out) -> None:
    """Issue #4's fidelity bar, on held-out text, for the hybrid partition."""
    model, _ = tiny_gpt
    parts = lower_hybrid(model, calib, 8, 8)
    with torch.no_grad():
        agree = (hybrid_model(model, parts)(held_out).argmax(-1)
                 == model(held_out).argmax(-1)).float().mean().item()
    assert agree >= 0.95


def test_fewer_bits_lose_fidelity(tiny_gpt, calib, held_out) -> None:
    model, _ = tiny_gpt
    ids = held_out[:40]
    with torch.no_grad():
        ref = model(ids).argmax(-1)
        agree = {b: (hybrid_model(model, lower_hybrid(model, calib, b, b))(ids).argmax(-1)
                     == ref).float().mean().item() for b in (4, 8)}
    assert agree[4] < agree[8]
