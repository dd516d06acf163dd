"""Tests for the Yuma-style consensus epoch (SPEC L7).

Expected values are worked out by hand in the tests (fractions written out), never copied from
the implementation's output.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from tolerance import U64, gamma, roundings_approx

from ledger.consensus import (
    KAPPA,
    active_validator_mask,
    beta_schedule,
    weighted_median_col,
    yuma_epoch,
)

YEAR = 3_155_760


def epoch_rtol(shape: tuple[int, int]) -> float:
    """Relative bound of every yuma_epoch output against its hand-worked value (float64).

    Every quantity is built from sums of non-negative terms, products and divides, so no
    cancellation: each output is within γ_n of its exact value (Higham), n the longest chain
    of roundings — the stake and row normalisations (V + 1, M + 1), the stake-weighted sums
    (V), the rank normalisation (M + 1) and with β the accuracy's and the incentive's (2M +
    3), the bonds' product, EMA (3) and three column normalisations (3V + 3), the dividends'
    sum (M) and normalisation (V + 1): ≤ 4(V + M) + 20, plus 4 for the hand-written fraction.
    """
    v, m = shape
    return gamma(4 * (v + m) + 24, U64)


def epoch_close(actual, expected, shape: tuple[int, int], err_msg: str = "") -> None:
    np.testing.assert_allclose(actual, expected, rtol=epoch_rtol(shape), atol=0, err_msg=err_msg)


# --- β(t) schedule (whitepaper §3.4.2) -------------------------------------------------------


@pytest.mark.parametrize(
    ("height", "expected"),
    [
        (0, 0.0),
        (YEAR, 0.0),
        (2 * YEAR, 0.0),  # t = 2 exactly: still 0 ("t ≤ 2")
        (3 * YEAR, 0.45),  # half-way through the ramp: 0.9 / 2
        (4 * YEAR, 0.9),  # t = 4 exactly: end of the ramp ("2 < t ≤ 4")
        (4 * YEAR + 1, 1.0),  # just after 4 years
        (10 * YEAR, 1.0),
    ],
)
def test_beta_schedule_boundaries(height: int, expected: float) -> None:
    # 0.9·(h − 2Y)/(2Y): the integer parts exact, 0.9, the product and the divide round,
    # and the expectation's decimal: γ_4 relative (0 and 1 exactly)
    assert beta_schedule(height) == roundings_approx(expected, 4, expected)


def test_beta_schedule_just_after_two_years_is_small_positive() -> None:
    b = beta_schedule(2 * YEAR + 1)
    # one block into a 2-year ramp to 0.9
    assert b == roundings_approx(0.9 / (2 * YEAR), 5, b)
    assert b > 0


def test_beta_schedule_custom_year_length() -> None:
    # 10 blocks a year: height 25 is t = 2.5, a quarter of the way up the ramp.
    assert beta_schedule(25, blocks_per_year=10) == roundings_approx(0.225, 4, 0.225)
    assert beta_schedule(20, blocks_per_year=10) == 0.0
    assert beta_schedule(41, blocks_per_year=10) == 1.0


def test_beta_schedule_rejects_negative_height() -> None:
    with pytest.raises(ValueError):
        beta_schedule(-1)


# --- active validators: the 70th-percentile rule (Figure 4) ----------------------------------


def test_figure_4_percentile_rule() -> None:
    stake = np.array([40, 50, 60, 80, 85, 90])
    assert active_validator_mask(stake).tolist() == [False, False, False, True, True, True]


def test_percentile_rule_order_does_not_matter() -> None:
    stake = np.array([85, 40, 90, 60, 80, 50])
    assert active_validator_mask(stake).tolist() == [True, False, True, False, True, False]


def test_percentile_rule_ten_validators() -> None:
    # Sorted stakes 1..10; "lower" 70th percentile index = floor(0.7 * 9) = 6 -> stake 7.
    stake = np.arange(1, 11)
    assert active_validator_mask(stake).tolist() == [False] * 6 + [True] * 4


def test_percentile_rule_ties_and_edge_sizes() -> None:
    assert active_validator_mask(np.array([5, 5, 5])).all()
    assert active_validator_mask(np.array([7])).tolist() == [True]
    assert active_validator_mask(np.array([], dtype=np.int64)).shape == (0,)


def test_percentile_rule_exact_on_huge_integer_stakes() -> None:
    # Differences of one base unit above 2**53 must still be told apart.
    base = 2**60
    stake = np.array([base + 1, base + 2, base + 3, base + 4, base + 5, base + 6], dtype=np.int64)
    # threshold index floor(0.7 * 5) = 3 -> base + 4
    assert active_validator_mask(stake).tolist() == [False, False, False, True, True, True]


# --- weighted median ------------------------------------------------------------------------


def test_weighted_median_picks_value_backed_by_kappa_stake() -> None:
    stake = np.array([0.2, 0.3, 0.5])
    w = np.array([[0.9], [0.6], [0.1]])
    # values >= 0.9: stake 0.2; >= 0.6: 0.5 (>= κ ≈ 0.49999); >= 0.1: 1.0 -> median 0.6
    # (the median is one of the column's own values: compared exactly)
    assert weighted_median_col(stake, w, KAPPA)[0] == 0.6
    # with κ = 0.6 only the value 0.1 is backed by enough stake
    assert weighted_median_col(stake, w, 0.6)[0] == 0.1


def test_weighted_median_half_stake_is_enough_with_default_kappa() -> None:
    # κ = 32767/65535 is just below 1/2, so exactly half of the stake sets the consensus.
    stake = np.array([0.5, 0.5])
    w = np.array([[0.2, 0.0], [0.8, 1.0]])
    np.testing.assert_array_equal(weighted_median_col(stake, w, KAPPA), [0.8, 1.0])
    # with κ exactly 1/2 the same holds (ties count as backing)
    np.testing.assert_array_equal(weighted_median_col(stake, w, 0.5), [0.8, 1.0])


def test_weighted_median_ignores_zero_stake_rows() -> None:
    stake = np.array([0.0, 1.0])
    w = np.array([[1.0], [0.3]])
    assert weighted_median_col(stake, w, KAPPA)[0] == 0.3


# --- a 2-validator × 3-miner epoch by hand ---------------------------------------------------


def test_two_validators_three_miners_by_hand() -> None:
    # Two validators; with 2 stakes the 70th-percentile index is floor(0.7*1) = 0, so both
    # are active.
    weights = np.array([[2.0, 1.0, 1.0], [0.0, 1.0, 3.0]])
    stake = np.array([3, 1])
    res = yuma_epoch(weights, stake, np.zeros((2, 3)))

    # S = (3, 1) / 4 = (0.75, 0.25)
    # W row-normalised: V0 = (2,1,1)/4 = (0.5, 0.25, 0.25); V1 = (0,1,3)/4 = (0, 0.25, 0.75)
    # pre-ranks P = Sᵀ·W:
    #   m0 = 0.75*0.5 + 0.25*0 = 0.375
    #   m1 = 0.75*0.25 + 0.25*0.25 = 0.25
    #   m2 = 0.75*0.25 + 0.25*0.75 = 0.375
    # consensus (largest value backed by >= κ ≈ 0.5 of stake):
    #   m0: 0.5 is backed by 0.75 -> C0 = 0.5
    #   m1: both say 0.25 -> C1 = 0.25
    #   m2: 0.75 backed by only 0.25, 0.25 backed by 1.0 -> C2 = 0.25
    assert res.active.tolist() == [True, True]
    epoch_close(res.consensus, [0.5, 0.25, 0.25], weights.shape)

    # clipped: V0 = (0.5, 0.25, 0.25); V1 = (0, 0.25, 0.25)  (0.75 clipped to 0.25)
    # validator trust = row sums = (1.0, 0.5)
    epoch_close(res.validator_trust, [1.0, 0.5], weights.shape)

    # ranks: m0 = 0.375, m1 = 0.25, m2 = 0.75*0.25 + 0.25*0.25 = 0.25; total 0.875
    # normalised R = (0.375, 0.25, 0.25) / 0.875 = (3/7, 2/7, 2/7)
    epoch_close(res.ranks, [3 / 7, 2 / 7, 2 / 7], weights.shape)
    # trust = R/P before normalisation = (0.375/0.375, 0.25/0.25, 0.25/0.375)
    epoch_close(res.trust, [1.0, 1.0, 2 / 3], weights.shape)
    # β = 0: incentive is the ranks
    epoch_close(res.incentive, [3 / 7, 2 / 7, 2 / 7], weights.shape)

    # ΔB = clipped ⊙ S: V0 = (0.375, 0.1875, 0.1875); V1 = (0, 0.0625, 0.0625)
    # column-normalised: m0 = (1, 0); m1 = m2 = (0.75, 0.25)
    # EMA with zero previous bonds: 0.1*ΔB, column-normalised back to ΔB
    epoch_close(res.bonds, [[1.0, 0.75, 0.75], [0.0, 0.25, 0.25]], weights.shape)

    # dividends D = B·I: V0 = 1*3/7 + 0.75*2/7 + 0.75*2/7 = 6/7; V1 = 0.25*2/7*2 = 1/7
    epoch_close(res.dividends, [6 / 7, 1 / 7], weights.shape)

    # ΔCredits = W·S with raw stake: 3*(0.5,0.25,0.25) + 1*(0,0.25,0.75) = (1.5, 1.0, 1.5)
    epoch_close(res.credits, [1.5, 1.0, 1.5], weights.shape)


def test_bonds_ema_second_epoch_by_hand() -> None:
    weights = np.array([[2.0, 1.0, 1.0], [0.0, 1.0, 3.0]])
    stake = np.array([3, 1])
    bonds_prev = np.array([[0.0, 1.0, 0.5], [1.0, 0.0, 0.5]])
    res = yuma_epoch(weights, stake, bonds_prev)
    # ΔB (column-normalised, from the test above) = [[1, .75, .75], [0, .25, .25]]
    # B = 0.1*ΔB + 0.9*B_prev:
    #   m0: 0.1*(1, 0)     + 0.9*(0, 1)    = (0.1, 0.9)
    #   m1: 0.1*(.75, .25) + 0.9*(1, 0)    = (0.975, 0.025)
    #   m2: 0.1*(.75, .25) + 0.9*(.5, .5)  = (0.525, 0.475)
    expected = np.array([[0.1, 0.975, 0.525], [0.9, 0.025, 0.475]])
    epoch_close(res.bonds, expected, weights.shape)
    # previous bonds are column-normalised first, so their scale does not matter
    res_scaled = yuma_epoch(weights, stake, 2.0 * bonds_prev)
    epoch_close(res_scaled.bonds, expected, weights.shape)
    # dividends D = B·I with I = (3/7, 2/7, 2/7):
    #   V0 = (0.1*3 + 0.975*2 + 0.525*2)/7 = 3.3/7; V1 = (0.9*3 + 0.025*2 + 0.475*2)/7 = 3.7/7
    epoch_close(res.dividends, [3.3 / 7, 3.7 / 7], weights.shape)


def test_bond_alpha_one_forgets_history() -> None:
    weights = np.array([[2.0, 1.0, 1.0], [0.0, 1.0, 3.0]])
    stake = np.array([3, 1])
    bonds_prev = np.array([[0.0, 1.0, 0.5], [1.0, 0.0, 0.5]])
    res = yuma_epoch(weights, stake, bonds_prev, bond_alpha=1.0)
    epoch_close(res.bonds, [[1.0, 0.75, 0.75], [0.0, 0.25, 0.25]], weights.shape)


# --- incentive with the TFT term -------------------------------------------------------------


def test_incentive_and_dividends_with_tft_accuracy_by_hand() -> None:
    weights = np.array([[2.0, 1.0, 1.0], [0.0, 1.0, 3.0]])
    stake = np.array([3, 1])
    acc = np.array([0.0, 0.2, 0.6])
    res = yuma_epoch(weights, stake, np.zeros((2, 3)), beta=0.45, tft_accuracy=acc)
    # R = (3/7, 2/7, 2/7) (see the hand-computed epoch above)
    # A = acc / Σacc = (0, 0.2, 0.6) / 0.8 = (0, 0.25, 0.75)
    # I = (R + 0.45*A) / (1 + 0.45)
    i0 = (3 / 7) / 1.45
    i1 = (2 / 7 + 0.45 * 0.25) / 1.45
    i2 = (2 / 7 + 0.45 * 0.75) / 1.45
    epoch_close(res.incentive, [i0, i1, i2], weights.shape)
    # ranks are untouched by the TFT term
    epoch_close(res.ranks, [3 / 7, 2 / 7, 2 / 7], weights.shape)
    # dividends use the final incentive; B = [[1, .75, .75], [0, .25, .25]]:
    #   D0 = i0 + 0.75*(i1 + i2),  D1 = 0.25*(i1 + i2)  (they already sum to 1)
    epoch_close(res.dividends, [i0 + 0.75 * (i1 + i2), 0.25 * (i1 + i2)], weights.shape)


def test_beta_zero_is_pure_yuma_even_with_accuracy() -> None:
    weights = np.array([[2.0, 1.0, 1.0], [0.0, 1.0, 3.0]])
    stake = np.array([3, 1])
    res = yuma_epoch(weights, stake, np.zeros((2, 3)), beta=0.0, tft_accuracy=np.ones(3))
    epoch_close(res.incentive, res.ranks, weights.shape)


def test_accuracy_alone_pays_when_nobody_sets_weights() -> None:
    res = yuma_epoch(
        np.zeros((2, 2)), np.array([1, 1]), np.zeros((2, 2)), beta=1.0,
        tft_accuracy=np.array([0.25, 0.75]),
    )
    epoch_close(res.incentive, [0.25, 0.75], (2, 2))


def test_accuracy_out_of_range_is_rejected() -> None:
    with pytest.raises(ValueError):
        yuma_epoch(np.ones((1, 2)), np.array([1]), np.zeros((1, 2)), beta=1.0,
                   tft_accuracy=np.array([0.5, 1.5]))


# --- κ and clipping --------------------------------------------------------------------------


def test_miner_backed_by_less_than_kappa_gets_nothing() -> None:
    # Stakes 40, 30, 30: 70th-percentile index floor(0.7*2) = 1 -> 30, all active.
    # m0 is weighted by everyone; m1 only by V1 (30% of stake < κ); m2 by V1 and V2 (60%).
    weights = np.array([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 1.0]])
    res = yuma_epoch(weights, np.array([40, 30, 30]), np.zeros((3, 3)))
    assert res.consensus[1] == 0.0
    assert res.incentive[1] == 0.0
    assert res.trust[1] == 0.0
    assert res.incentive[2] > 0.0
    # V1's weight on m1 (1/3 after row normalisation) was clipped away entirely.
    assert res.validator_trust[1] < 1.0


def test_dishonest_validator_outlier_weights_are_clipped() -> None:
    # Four honest validators weight miners 0-2 equally; one (20% of stake) puts everything on
    # miner 3, which nobody else supports.
    honest = [1.0, 1.0, 1.0, 0.0]
    weights = np.array([honest] * 4 + [[0.0, 0.0, 0.0, 1.0]])
    stake = np.array([10, 10, 10, 10, 10])
    res = yuma_epoch(weights, stake, np.zeros((5, 4)))
    assert res.active.all()
    # consensus on miner 3: value 1 is backed by 20% < κ, value 0 by 80% -> 0
    assert res.consensus[3] == 0.0
    epoch_close(res.incentive, [1 / 3, 1 / 3, 1 / 3, 0.0], weights.shape)
    epoch_close(res.validator_trust, [1, 1, 1, 1, 0], weights.shape)
    # no bonds in the miners that pay, so no dividends for the cheat
    assert res.dividends[4] == 0.0
    epoch_close(res.dividends[:4], 0.25, weights.shape)


def test_inactive_validators_weights_are_ignored() -> None:
    # Figure-4 stakes: only the validators at 80, 85, 90 are active.
    stake = np.array([40, 50, 60, 80, 85, 90])
    rng = np.random.default_rng(7)
    weights = rng.random((6, 5))
    bonds_prev = rng.random((6, 5))
    a = yuma_epoch(weights, stake, bonds_prev)
    weights2, bonds2 = weights.copy(), bonds_prev.copy()
    weights2[:3] = rng.random((3, 5)) * 100  # scribble over the inactive rows
    bonds2[:3] = rng.random((3, 5))
    b = yuma_epoch(weights2, stake, bonds2)
    for name in ("consensus", "ranks", "trust", "incentive", "dividends", "bonds", "credits"):
        # the active rows are the same numbers: the two runs round alike, each within its
        # bound of the same exact values
        np.testing.assert_allclose(getattr(a, name), getattr(b, name),
                                   rtol=2 * epoch_rtol(weights.shape), atol=0, err_msg=name)
    assert a.dividends[:3].sum() == 0.0
    assert a.bonds[:3].sum() == 0.0
    # credits: W·S in stake units, each column within γ of its value, then a sum of 5
    assert a.credits.sum() == roundings_approx(80 + 85 + 90, 4 * 11 + 24 + 5, 80 + 85 + 90)


# --- edge cases ------------------------------------------------------------------------------


def _assert_finite(res) -> None:
    for name, value in vars(res).items():
        assert np.all(np.isfinite(np.asarray(value, dtype=float))), name


def test_all_zero_weights_give_zero_incentive_and_no_nan() -> None:
    res = yuma_epoch(np.zeros((3, 4)), np.array([1, 2, 3]), np.zeros((3, 4)))
    _assert_finite(res)
    assert res.incentive.sum() == 0.0
    assert res.dividends.sum() == 0.0
    assert res.bonds.sum() == 0.0


def test_zero_stake_everywhere_gives_zero_and_no_nan() -> None:
    res = yuma_epoch(np.ones((3, 4)), np.zeros(3, dtype=np.int64), np.zeros((3, 4)))
    _assert_finite(res)
    assert res.incentive.sum() == 0.0
    assert res.dividends.sum() == 0.0


def test_one_silent_validator_does_not_break_the_epoch() -> None:
    weights = np.array([[0.0, 0.0], [1.0, 3.0]])
    res = yuma_epoch(weights, np.array([5, 5]), np.zeros((2, 2)))
    _assert_finite(res)
    # the silent validator's half of the stake backs value 0 for both miners; the other half
    # backs (0.25, 0.75) and exactly half of the stake is enough (κ < 1/2)
    epoch_close(res.consensus, [0.25, 0.75], weights.shape)
    epoch_close(res.incentive, [0.25, 0.75], weights.shape)
    epoch_close(res.dividends, [0.0, 1.0], weights.shape)


def test_empty_brain_shapes() -> None:
    res = yuma_epoch(np.zeros((0, 3)), np.zeros(0, dtype=np.int64), np.zeros((0, 3)))
    assert res.incentive.shape == (3,) and res.incentive.sum() == 0.0
    res = yuma_epoch(np.zeros((2, 0)), np.array([1, 2]), np.zeros((2, 0)))
    assert res.dividends.shape == (2,) and res.dividends.sum() == 0.0


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ValueError):
        yuma_epoch(-np.ones((1, 1)), np.array([1]), np.zeros((1, 1)))
    with pytest.raises(ValueError):
        yuma_epoch(np.full((1, 1), np.nan), np.array([1]), np.zeros((1, 1)))
    with pytest.raises(ValueError):
        yuma_epoch(np.ones((2, 1)), np.array([1]), np.zeros((2, 1)))
    with pytest.raises(ValueError):
        yuma_epoch(np.ones((1, 2)), np.array([1]), np.zeros((2, 1)))


# --- properties ------------------------------------------------------------------------------


@st.composite
def brains(draw):
    n_val = draw(st.integers(1, 6))
    n_min = draw(st.integers(1, 8))
    weights = draw(hnp.arrays(np.float64, (n_val, n_min), elements=st.integers(0, 5).map(float)))
    stake = draw(hnp.arrays(np.int64, (n_val,), elements=st.integers(0, 1000)))
    bonds = draw(hnp.arrays(np.float64, (n_val, n_min), elements=st.sampled_from([0, 0.25, 1.0])))
    acc = draw(hnp.arrays(np.float64, (n_min,), elements=st.sampled_from([0, 0.1, 0.5, 1.0])))
    beta = draw(st.sampled_from([0.0, 0.45, 1.0]))
    perm = draw(st.permutations(range(n_min)))
    return weights, stake, bonds, acc, beta, np.array(perm, dtype=int)


def _reference_median(stake: np.ndarray, column: np.ndarray) -> float:
    """Largest weight c with Σ_{i: w_i >= c} stake_i >= κ·Σ stake, in exact integer arithmetic.

    κ = 32767/65535, so "part/total >= κ" is "65535·part >= 32767·total".
    """
    total = int(stake.sum())
    if total == 0:
        return 0.0
    for c in sorted(set(column.tolist()), reverse=True):
        part = int(stake[column >= c].sum())
        if 65535 * part >= 32767 * total:
            return c
    return 0.0


@settings(max_examples=150, deadline=None)
@given(brains())
def test_vectorised_weighted_median_matches_reference(brain) -> None:
    weights, stake, *_ = brain
    s = stake.astype(float)
    s = s / s.sum() if s.sum() > 0 else s
    got = weighted_median_col(s, weights, KAPPA)
    expected = [_reference_median(stake, weights[:, j]) for j in range(weights.shape[1])]
    np.testing.assert_array_equal(got, expected)


def _sums_to_one_or_zero(x: np.ndarray) -> bool:
    # x = y/Σy: the sum's n − 1 roundings, n divides and this sum's n − 1: within γ_{3n}
    total = float(x.sum())
    return abs(total - 1.0) <= gamma(3 * len(x), U64) or total == 0.0


@settings(max_examples=150, deadline=None)
@given(brains())
def test_epoch_invariants(brain) -> None:
    weights, stake, bonds, acc, beta, _ = brain
    res = yuma_epoch(weights, stake, bonds, beta=beta, tft_accuracy=acc)
    _assert_finite(res)
    assert np.all(res.incentive >= 0) and _sums_to_one_or_zero(res.incentive)
    assert np.all(res.dividends >= 0) and _sums_to_one_or_zero(res.dividends)
    assert np.all(res.ranks >= 0) and _sums_to_one_or_zero(res.ranks)
    # ≤ 1 exactly, up to the normalisations' rounding: γ_n relative (see epoch_rtol)
    top = 1 + epoch_rtol(weights.shape)
    assert np.all((res.bonds >= 0) & (res.bonds <= top))
    assert np.all((res.trust >= 0) & (res.trust <= top))
    assert np.all((res.validator_trust >= 0) & (res.validator_trust <= top))
    # consensus never exceeds any miner's largest row-normalised weight
    assert np.all(res.consensus <= top)
    # inactive validators earn nothing
    assert np.all(res.dividends[~res.active] == 0)


@settings(max_examples=150, deadline=None)
@given(brains())
def test_permuting_miners_permutes_the_result(brain) -> None:
    weights, stake, bonds, acc, beta, perm = brain
    a = yuma_epoch(weights, stake, bonds, beta=beta, tft_accuracy=acc)
    b = yuma_epoch(weights[:, perm], stake, bonds[:, perm], beta=beta, tft_accuracy=acc[perm])
    # the sums over miners add in another order: each run within epoch_rtol of the exact
    # values, so the two within twice it
    rtol = 2 * epoch_rtol(weights.shape)
    for name in ("consensus", "ranks", "trust", "incentive", "credits"):
        np.testing.assert_allclose(getattr(b, name), getattr(a, name)[perm], rtol=rtol, atol=0)
    np.testing.assert_allclose(b.bonds, a.bonds[:, perm], rtol=rtol, atol=0)
    np.testing.assert_allclose(b.dividends, a.dividends, rtol=rtol, atol=0)
    np.testing.assert_allclose(b.validator_trust, a.validator_trust, rtol=rtol, atol=0)
