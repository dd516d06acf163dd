"""The paper's §5 adaptive dynamic quantization (SPEC C4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tolerance import U32, U64, assert_within, gamma, roundings_approx

from cerberus.errors import CompileError
from cerberus.passes.adaptive import AdaptiveQuantizer, adaptive_dynamic_quantize


def test_adaptive_matches_hand_computed_example() -> None:
    x = torch.tensor([[0.0, 0.4, 0.8, 1.0], [0.01, 0.02, 0.03, 0.05]], dtype=torch.float64)
    r = adaptive_dynamic_quantize(x, levels=4, threshold=0.1, alpha=0.5)
    # Row 0: mean .55, Σ(dev²) = .3025+.0225+.0625+.2025 = .59, σ = sqrt(.59/4) = .38406 > T
    #   → S = α = .5; scaled [0, .2, .4, .5]; min 0, Q = .5/3; (y−min)/Q = [0, 1.2, 2.4, 3]
    #   → levels [0, 1, 2, 3]; x̂ = [0, 1/3, 2/3, 1].
    # Row 1: mean .0275, Σ(dev²) = .000875, σ = sqrt(.00021875) = .014790 ≤ T → S = 1/α = 2;
    #   scaled [.02, .04, .06, .10]; min .02, Q = .08/3; (y−min)/Q = [0, .75, 1.5, 3]
    #   → levels [0, 0, 1, 3]; q = [.02, .02, .02+.08/3, .10]; x̂ = q/2.
    # Expectations within the float64 roundings of both sides (Higham, tests/tolerance.py):
    # σ (4 squares of differences, a sum, a divide, sqrt: 11) and the 11 decimals it is
    # written to; min·S exact (S a power of two) against the decimal 0.02; Q: two decimal
    # inputs, a subtraction and a divide against 0.08/3 (5); x̂ = (q·Q + min)/S: Q's and
    # the expectation's own (8), all on operands ≤ 0.1 (row 1) or ≤ 1 (row 0).
    assert r.sigma == roundings_approx([0.38405728739, 0.01479019946], 11, 1.0, extra=0.5e-11)
    assert r.S.tolist() == [0.5, 2.0]
    assert r.q_int.tolist() == [[0, 1, 2, 3], [0, 0, 1, 3]]
    assert r.q_int.dtype == np.int64
    assert r.mins == roundings_approx([0.0, 0.02], 2, 0.1)
    assert r.q_step == roundings_approx([0.5 / 3, 0.08 / 3], 5, 0.5)
    assert r.x_hat[0] == roundings_approx([0.0, 1 / 3, 2 / 3, 1.0], 8, 1.0)
    assert r.x_hat[1] == roundings_approx([0.01, 0.01, (0.02 + 0.08 / 3) / 2, 0.05], 8, 0.1)


def test_adaptive_both_branches_of_S() -> None:
    x = torch.stack([torch.linspace(-3, 3, 16), torch.linspace(-0.01, 0.01, 16)])
    r = adaptive_dynamic_quantize(x, threshold=0.1, alpha=0.25)
    assert r.S.tolist() == [0.25, 4.0]
    # threshold above both σ → both rows scaled up
    r2 = adaptive_dynamic_quantize(x, threshold=10.0, alpha=0.25)
    assert r2.S.tolist() == [4.0, 4.0]
    # x is float32 (linspace's default): −3 is exact, −0.01 carries float32's rounding,
    # then ×S is exact (a power of two)
    assert r.mins[0] == -3 * 0.25
    assert r.mins[1] == roundings_approx(-0.01 * 4, 1, 0.04, u=U32, extra=gamma(1, U64) * 0.04)


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
    # slack: the implementation's 1e-9 floor guard (one level up within 1e-9·step), and
    # float64 rounding of S·x, − min, /Q, q·Q, + min, /S and d itself: γ_7·(|x| + |x̂|)
    slack = 1e-9 * step + gamma(7, U64) * (np.abs(x.numpy()) + np.abs(r.x_hat))
    assert np.all(d >= -slack) and np.all(d < step + slack)


def test_adaptive_constant_rows_do_not_divide_by_zero() -> None:
    x = torch.tensor([[0.3, 0.3, 0.3], [0.0, 0.0, 0.0], [1.0, 2.0, 3.0]])
    r = adaptive_dynamic_quantize(x)
    assert np.all(np.isfinite(r.x_hat))
    assert r.q_step[0] == 0 and r.q_step[1] == 0
    assert r.q_int[:2].tolist() == [[0, 0, 0], [0, 0, 0]]
    # x is float32: 0.3 carries float32's rounding; S·x then /S two float64 ones
    assert r.x_hat[0] == roundings_approx([0.3] * 3, 1, 0.3, u=U32, extra=gamma(2, U64) * 0.3)
    assert r.x_hat[1].tolist() == [0.0] * 3
    with pytest.raises(CompileError):
        adaptive_dynamic_quantize(x, levels=1)


def test_adaptive_module_is_fake_quant_with_straight_through_gradient() -> None:
    x = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x.requires_grad_(True)
    mod = AdaptiveQuantizer(levels=8)
    y = mod(x)
    r = adaptive_dynamic_quantize(x.detach().reshape(-1, 8), levels=8)
    # y = x + (x̂ − x) in float64, two roundings from x̂: ≤ γ_2·(2|x̂| + |x|)
    flat = x.detach().reshape(-1, 8).numpy()
    assert_within(y.detach().reshape(-1, 8), r.x_hat,
                  gamma(2, U64) * (2 * np.abs(r.x_hat) + np.abs(flat)), "AdaptiveQuantizer")
    assert not torch.equal(y.detach(), x.detach())
    (y * torch.arange(8.0, dtype=torch.float64)).sum().backward()
    assert torch.equal(x.grad, torch.arange(8.0, dtype=torch.float64).expand(2, 5, 8))
