"""Integer emission maths: exact apportionment, the 0.5% cap, the top-30% bonus (L1, L6, L8)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.economics import (
    apportion,
    brain_scores,
    is_gigabrain,
    split_block_reward,
    split_brain_emission,
    stake_cap,
)


def test_apportion_hand_vectors() -> None:
    # 10 over weights 1,1,1: floors 3,3,3, one unit left, fractional parts tie → lowest index.
    assert apportion(10, [1, 1, 1]) == [4, 3, 3]
    # 7 over 1,2: exact thirds 2.33/4.67 → floors 2,4, leftover to the larger remainder (idx 1).
    assert apportion(7, [1, 2]) == [2, 5]
    assert apportion(5, [0, 0]) == [0, 0]
    assert apportion(0, [3, 4]) == [0, 0]
    assert apportion(100, [0, 1, 0]) == [0, 100, 0]


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10**20), st.lists(st.integers(0, 10**12), min_size=1, max_size=40))
def test_apportion_is_exact_and_fair(total: int, weights: list[int]) -> None:
    parts = apportion(total, weights)
    if sum(weights) == 0:
        assert parts == [0] * len(weights)
        return
    assert sum(parts) == total
    s = sum(weights)
    for p, w in zip(parts, weights, strict=True):
        # each share is its exact quota rounded down or up (Hamilton property)
        assert total * w // s <= p <= total * w // s + 1


def test_stake_cap_half_percent() -> None:
    # 0.5% of 1,000,000 = 5,000; of 1,999 = 9.995 → floored to 9.
    assert stake_cap(1_000_000) == 5_000
    assert stake_cap(1_999) == 9
    assert stake_cap(0) == 0


def test_gigabrain_threshold_is_inclusive() -> None:
    assert is_gigabrain(5_000, 1_000_000)  # exactly 0.5%
    assert not is_gigabrain(4_999, 1_000_000)
    assert not is_gigabrain(0, 0)


def test_brain_scores_cap_and_bonus() -> None:
    total = 1_000_000  # cap = 5,000
    stakes = {0: 100_000, 1: 3_000, 2: 5_000, 3: 4_000, 4: 1_000, 5: 0}
    perf = {0: 10_000, 1: 9_000, 2: 5_000, 3: 2_000, 4: 1_000, 5: 10_000}
    scores = brain_scores(stakes, perf, total)
    # five eligible Brains (Brain 5 has no stake) → ceil(1.5) = 2 get the bonus: 0 and 1.
    assert scores == {
        0: 5_000 * 10_000 * 3,  # capped at 5,000, top → ×3 (×1.5 relative to ×2)
        1: 3_000 * 9_000 * 3,
        2: 5_000 * 5_000 * 2,
        3: 4_000 * 2_000 * 2,
        4: 1_000 * 1_000 * 2,
    }


def test_bonus_ties_break_to_lower_id() -> None:
    scores = brain_scores({7: 10, 3: 10, 9: 10}, {7: 50, 3: 50, 9: 50}, 1_000)
    # cap = 5; ceil(0.9) = 1 top Brain; tie on performance → Brain 3.
    assert scores == {3: 5 * 50 * 3, 7: 5 * 50 * 2, 9: 5 * 50 * 2}


def test_split_block_reward_exact_and_fallback() -> None:
    assert split_block_reward(10, {1: 1, 2: 2}) == {1: 3, 2: 7}
    assert sum(split_block_reward(10**10, {1: 3, 2: 3, 5: 1}).values()) == 10**10
    assert split_block_reward(10**10, {}) == {0: 10**10}


def test_split_brain_emission_defaults() -> None:
    # 1,000,003 units, owner 25% → 250,000 (floor); rest 750,003; miners 50% → 375,001.
    assert split_brain_emission(1_000_003, 2_500, 5_000) == (250_000, 375_001, 375_002)
    o, m, v = split_brain_emission(999, 3_333, 7_777)
    assert o + m + v == 999
