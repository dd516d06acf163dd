"""Lowering to the integer graph: it mirrors the model, and the integers track the floats."""

import copy

import numpy as np
import pytest
import torch
from tolerance import U64, assert_within, network_atol, transformer_roundings

from cerberus.errors import CompileError
from cerberus.ir import RangeOverflow, evaluate
from cerberus.lower import LoweringOptions, lower_blocks

from .conftest import embedded, to_int


def run_blocks(model, x: np.ndarray) -> np.ndarray:
    """The float blocks in double precision, on a copy (fixtures are shared)."""
    with torch.no_grad():
        return copy.deepcopy(model).double().run_blocks(torch.tensor(x)).numpy()


def assert_float_path_is_the_model(model, x: np.ndarray, ref: np.ndarray,
                                   per_linear: int = 0) -> None:
    """Two float64 runs of the same blocks: each within γ̃_N(λ)·max|y| (tests/tolerance.py,
    u = 2**-53, N the blocks' roundings, no LM head), so the two within twice that."""
    cfg = model.cfg
    n = transformer_roundings(cfg.d_model, cfg.d_ff, cfg.n_layer, cfg.head_dim, x.shape[1],
                              lm_head=False, per_linear=per_linear)
    assert_within(ref, run_blocks(model, x), 2 * network_atol(ref, n, u=U64),
                  "lowering's float path vs the model's blocks")


@pytest.mark.parametrize("which", ["gpt", "bert"])
def test_float_reference_path_is_the_model(which, tiny_gpt, tiny_bert) -> None:
    """The lowering's float path computes exactly the model's blocks (same dataflow)."""
    model = copy.deepcopy(tiny_gpt[0] if which == "gpt" else tiny_bert)
    ids = torch.randint(0, 100, (4, 8), generator=torch.Generator().manual_seed(1))
    x = embedded(model, ids)
    g = lower_blocks(model, x)
    assert_float_path_is_the_model(model, x, g.calibration_ref)


def test_integer_path_tracks_float_and_respects_widths(tiny_gpt, gpt_windows) -> None:
    model, _ = tiny_gpt
    calib, test = gpt_windows
    g = lower_blocks(model, embedded(model, calib), LoweringOptions(bits=8, max_lookup_bits=8))
    assert max(g.lookup_widths().values()) <= 8
    x = embedded(model, test)
    out = evaluate(g, to_int(g, x))["output"] * g.meta["output_scale"]
    ref = run_blocks(model, x)
    cos = (out * ref).sum(-1) / (np.linalg.norm(out, axis=-1) * np.linalg.norm(ref, axis=-1))
    assert cos.mean() > 0.95


def test_more_bits_means_closer(tiny_bert) -> None:
    ids = torch.randint(0, 100, (16, 8), generator=torch.Generator().manual_seed(2))
    x = embedded(tiny_bert, ids)
    ref = run_blocks(tiny_bert, x)
    errs = []
    for bits in (4, 8):
        g = lower_blocks(tiny_bert, x, LoweringOptions(bits=bits, wide_bits=max(bits, 8)))
        out = evaluate(g, to_int(g, x))["output"] * g.meta["output_scale"]
        errs.append(np.abs(out - ref).mean())
    assert errs[1] < errs[0]


def test_lowering_is_deterministic(tiny_gpt, gpt_windows) -> None:
    model, _ = tiny_gpt
    x = embedded(model, gpt_windows[0])
    assert lower_blocks(model, x).digest() == lower_blocks(model, x).digest()


def test_calibration_data_fits_compiled_ranges_and_outliers_fail(tiny_gpt, gpt_windows) -> None:
    model, _ = tiny_gpt
    x = embedded(model, gpt_windows[0])
    g = lower_blocks(model, x)
    evaluate(g, to_int(g, x))  # raises if any calibration value left its range
    wild = to_int(g, x * 50.0)
    with pytest.raises(RangeOverflow):
        evaluate(g, wild)


def test_lookup_width_limit_is_respected_at_every_setting(tiny_bert) -> None:
    x = embedded(tiny_bert, torch.randint(0, 100, (4, 8)))
    for limit in (5, 6, 8):
        g = lower_blocks(tiny_bert, x, LoweringOptions(bits=4, max_lookup_bits=limit))
        assert max(g.lookup_widths().values()) <= limit


def test_outlier_channel_is_equalised_exactly(tiny_gpt, gpt_windows) -> None:
    """A channel with a 20× range gets an integer pre-scale; the float path stays exact."""
    model = copy.deepcopy(tiny_gpt[0])
    with torch.no_grad():
        model.pos_emb.weight[:, 5] *= 20
    x = embedded(model, gpt_windows[0])
    g = lower_blocks(model, x)
    assert any(n.name.endswith(".equalize") for n in g.nodes)
    # the pre-scale and its inverse in the next linear: two more roundings per linear
    assert_float_path_is_the_model(model, x, g.calibration_ref, per_linear=2)


@pytest.mark.parametrize("bits", [1, 9])
def test_bits_out_of_range(bits, tiny_bert) -> None:
    x = embedded(tiny_bert, torch.randint(0, 100, (2, 4)))
    with pytest.raises(CompileError, match="bits must be in 2..8"):
        lower_blocks(tiny_bert, x, LoweringOptions(bits=bits))
