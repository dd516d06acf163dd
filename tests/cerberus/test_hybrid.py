"""The hybrid partition: integer linears under FHE, the rest on the client (SPEC C6)."""

import copy

import numpy as np
import pytest
import torch
from tolerance import U64, assert_within, network_atol, transformer_roundings

from cerberus.calibration import calibration_batches
from cerberus.errors import CompileError
from cerberus.hybrid import EncryptedLinear, extreme_rows, lower_hybrid
from cerberus.ir import evaluate
from cerberus.light_client import LightClient, client_state, simulated_miner
from cerberus.passes.fake_quant import fake_quantize_model
from cerberus.passes.observers import collect_activation_scales
from cerberus.passes.quantize import qmax


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


def client(model, specs, programs, *, double: bool = False) -> LightClient:
    light = LightClient(model.cfg, client_state(model, "hybrid"), partition="hybrid",
                        miner=simulated_miner(programs), linears=specs)
    if double:
        light.model.double()
    return light


def test_each_program_is_one_clear_weight_linear_with_q_k_v_fused(tiny_gpt, calib) -> None:
    model, _ = tiny_gpt
    specs, programs = lower_hybrid(model, calib, 8, 8)
    assert set(programs) == set(specs) == {f"blocks.{i}.{n}" for i in range(2)
                                           for n in ("qkv", "o", "fc1", "fc2")}
    inner = model.blocks[0].n_kept * model.cfg.head_dim
    for name, graph in programs.items():
        assert [n.op for n in graph.nodes] == ["input", "linear"]
        w = graph["linear"].attrs["weight"]
        assert w.shape[1] == specs[name].out_features
        if name.endswith("qkv"):
            assert w.shape == (model.cfg.d_model, 3 * inner)
        # the declared ranges hold at their edges, which are in every inputset
        evaluate(graph, extreme_rows(graph))
        x = np.random.default_rng(0).integers(-127, 128, (3, 1, w.shape[0]))
        evaluate(graph, x)


def test_extreme_rows_reach_the_widest_column_s_bounds(tiny_gpt, calib) -> None:
    model, _ = tiny_gpt
    _, programs = lower_hybrid(model, calib, 8, 8)
    for graph in programs.values():
        w = graph["linear"].attrs["weight"]
        lo, hi = graph["input"].lo, graph["input"].hi
        col = np.abs(w).sum(axis=0).argmax()
        top = np.maximum(w[:, col] * hi, w[:, col] * lo).sum()
        bottom = np.minimum(w[:, col] * hi, w[:, col] * lo).sum()
        y = evaluate(graph, extreme_rows(graph))["output"][:, 0, col]
        assert (y[0], y[1]) == (top, bottom)


def test_integer_linears_equal_the_fake_quant_simulation(tiny_gpt, calib, held_out) -> None:
    """With one calibrated scale per tensor (no smoothing) the integer path is exactly the
    fake-quant model's arithmetic: float64 roundings apart."""
    model, _ = tiny_gpt
    specs, programs = lower_hybrid(model, calib, 8, 8)
    scales = collect_activation_scales(model, calib, 8)
    double = copy.deepcopy(model).double()  # fixtures are shared: never convert in place
    fq = fake_quantize_model(double, 8, scales)
    ids = held_out[:4]
    with torch.no_grad():
        got = client(double, specs, programs, double=True).logits(ids)
        ref = fq(ids)
    # Both in float64, the integer accumulation exact: they differ by float64 rounding only,
    # each within γ̃_N(λ)·max|y| (tests/tolerance.py; N counts the fake quantization's and
    # the dequantization's ≤ 6 roundings per linear), so the two within twice that.
    cfg = model.cfg
    n = transformer_roundings(cfg.d_model, cfg.d_ff, cfg.n_layer, cfg.head_dim, ids.shape[1],
                              per_linear=6)
    assert_within(got, ref, 2 * network_atol(ref, n, u=U64), "hybrid vs fake-quant model")


@pytest.mark.parametrize("alpha", [None, 0.5])
def test_each_linear_is_within_its_quantization_bound(tiny_gpt, calib, held_out,
                                                      alpha) -> None:
    """Per-token scales, with and without smoothing: the client's encoding and the miner's
    weights must agree (a factor applied on one side only breaks the bound by far).

    Bound per output k, from the roundings: an input code is off by ≤ r/2 (r the row's
    scale), a weight code by ≤ σ_k/2 (σ_k the channel's scale), so
    |y − x·Wᵀ|_k ≤ r/2·Σ_j |W'_kj| + σ_k/2·Σ_j |x'_j| + in·r·σ_k/4, with x' = x/s and
    W' = W·s the smoothed sides, plus float64 rounding (negligible at this scale).
    """
    model, _ = tiny_gpt
    specs, programs = lower_hybrid(model, calib, 8, 8, per_token=True, smooth_alpha=alpha)
    sim = simulated_miner(programs)
    block = model.blocks[0]
    x = torch.randn(5, model.cfg.d_model, dtype=torch.float64) * 3
    spec = specs["blocks.0.fc1"]
    got = EncryptedLinear(spec, sim)(x).numpy()
    w = block.fc1.weight.detach().double().numpy()
    want = x.numpy() @ w.T + block.fc1.bias.detach().double().numpy()
    s = spec.smooth if spec.smooth is not None else np.ones(w.shape[1])
    xs, ws = x.numpy() / s, w * s
    r = np.abs(xs).max(axis=1, keepdims=True) / qmax(8)
    sigma = spec.weight_scale[None, :]
    bound = (r / 2 * np.abs(ws).sum(axis=1)[None, :] + sigma / 2 * np.abs(xs).sum(axis=1,
             keepdims=True) + w.shape[1] * r * sigma / 4)
    assert np.all(np.abs(got - want) <= bound * (1 + 1e-9))
    assert np.abs(got - want).max() > 0  # quantization did happen


def test_smoothing_needs_per_token_scales(tiny_gpt, calib) -> None:
    with pytest.raises(CompileError, match="per-token"):
        lower_hybrid(tiny_gpt[0], calib, 8, 8, smooth_alpha=0.5)


def test_top1_agreement_at_8_bits_is_at_least_95_percent(tiny_gpt, calib, held_out) -> None:
    """Issue #4's fidelity bar, on held-out text, with the compiler's default encoding."""
    model, _ = tiny_gpt
    specs, programs = lower_hybrid(model, calib, 8, 8, per_token=True, smooth_alpha=0.5)
    with torch.no_grad():
        agree = (client(model, specs, programs).logits(held_out).argmax(-1)
                 == model(held_out).argmax(-1)).float().mean().item()
    assert agree >= 0.95


def test_fewer_bits_lose_fidelity(tiny_gpt, calib, held_out) -> None:
    model, _ = tiny_gpt
    ids = held_out[:40]
    with torch.no_grad():
        ref = model(ids).argmax(-1)
        agree = {b: (client(model, *lower_hybrid(model, calib, b, b)).logits(ids).argmax(-1)
                     == ref).float().mean().item() for b in (4, 8)}
    assert agree[4] < agree[8]


def test_a_block_with_every_head_pruned_runs_its_mlp_only(tiny_gpt, calib, held_out) -> None:
    """Its zero-width projections have nothing to calibrate and send nothing to the miner;
    the calibration used to fail on them ("activation observer saw no data")."""
    from cerberus.passes.squeeze import prune_heads

    pruned = prune_heads(tiny_gpt[0], [[], [0, 1, 2, 3]])
    specs, programs = lower_hybrid(pruned, calib, 8, 8, per_token=True, smooth_alpha=0.5)
    assert set(programs) == {"blocks.0.fc1", "blocks.0.fc2"} | {
        f"blocks.1.{n}" for n in ("qkv", "o", "fc1", "fc2")}
    ids = held_out[:20]
    with torch.no_grad():
        agree = (client(pruned, specs, programs).logits(ids).argmax(-1)
                 == pruned(ids).argmax(-1)).float().mean().item()
    assert agree >= 0.9
