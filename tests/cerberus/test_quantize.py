"""Integer quantization primitives: ranges, rounding, weight scales (SPEC C4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from tolerance import ETA64, U64, gamma

from cerberus.errors import CompileError
from cerberus.passes.fake_quant import fake_quant
from cerberus.passes.observers import calibrate_activation
from cerberus.passes.quantize import (
    check_bits,
    dequantize,
    qrange,
    quantize,
    quantize_weight_per_channel,
    quantize_weight_per_tensor,
)


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
    # half a step, plus float64 rounding of w/s (u·|w|) and of q·s, or their underflow
    # when hypothesis draws subnormals (ETA64)
    deq = qt.dequantize()
    err = np.abs(deq - w)
    bound = gamma(2, U64) * (np.abs(w) + np.abs(deq)) + ETA64
    assert np.all(err <= qt.scale[:, None] / 2 + bound)
    s = calibrate_activation(w, bits)
    deq = dequantize(quantize(w, s, bits), s)
    assert np.all(np.abs(deq - w) <= s / 2 + gamma(2, U64) * (np.abs(w) + np.abs(deq)) + ETA64)


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
    # the search's own error sums and these differ by float64 rounding: the dequantization,
    # difference and square of each of the K terms and their sum, γ_{K+3} of each sum
    k = w.shape[1]
    assert np.all(e_ms <= e_mx + gamma(k + 3, U64) * (e_mx + e_ms))
    assert e_ms.sum() < e_mx.sum()  # on Gaussian rows at 3 bits clipping pays off
    assert np.all(ms.scale[[0, 1, 3]] < mx.scale[[0, 1, 3]])
    ms2 = quantize_weight_per_channel(w, 3, method="mse")
    assert np.array_equal(ms.scale, ms2.scale)
