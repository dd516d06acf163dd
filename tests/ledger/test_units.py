"""Hand-computed vectors for the money units and the reward schedule (SPEC L1, L2, L3)."""

from __future__ import annotations

import pytest

from ledger.units import (
    BASED,
    HALVING_INTERVAL,
    block_reward,
    brain_burn_price,
    cumulative_issuance,
)

YEAR = 3_155_760


def test_constants_match_spec() -> None:
    assert BASED == 1_000_000_000
    assert HALVING_INTERVAL == YEAR


@pytest.mark.parametrize(
    ("height", "reward"),
    [
        (0, 0),  # genesis issues nothing
        (1, 10_000_000_000),
        (YEAR, 10_000_000_000),  # last block of era 0
        (YEAR + 1, 5_000_000_000),  # first block of era 1
        (2 * YEAR, 5_000_000_000),
        (2 * YEAR + 1, 2_500_000_000),
        (3 * YEAR + 1, 1_250_000_000),
        (30 * YEAR + 1, 10_000_000_000 // 2**30),  # = 9 base units (floored)
        (34 * YEAR + 1, 0),  # 10^10 / 2^34 < 1 base unit
    ],
)
def test_halving_boundaries(height: int, reward: int) -> None:
    assert block_reward(height) == reward


def test_cumulative_issuance_closed_form() -> None:
    # Era 0 in full, then 3 blocks of era 1: 3,155,760 × 10 BASED + 3 × 5 BASED.
    assert cumulative_issuance(YEAR + 3) == YEAR * 10 * BASED + 3 * 5 * BASED
    # Sum by brute force over a window crossing the first halving.
    start = YEAR - 5
    brute = cumulative_issuance(start) + sum(block_reward(h) for h in range(start + 1, YEAR + 6))
    assert brute == cumulative_issuance(YEAR + 5)
    assert cumulative_issuance(0) == 0


def test_total_supply_is_bounded_by_two_eras() -> None:
    total = cumulative_issuance(80 * YEAR)
    assert total < 2 * YEAR * 10 * BASED
    assert total == cumulative_issuance(100 * YEAR)  # nothing after the reward reaches 0


@pytest.mark.parametrize(("burned", "price"), [(0, 1_000), (1, 1_200), (2, 1_400), (10, 3_000)])
def test_brain_burn_prices(burned: int, price: int) -> None:
    assert brain_burn_price(burned) == price


def test_burn_prices_sum_by_formula() -> None:
    # Whitepaper 2.4.1 quotes 107,563,530 Pepecoin for all Brains burned; its own formula
    # gives sum_{k<1024} (1000 + 200k) = 1000·1024 + 100·1024·1023 = 105,779,200. SPEC L3
    # states the formula, so the formula wins.
    assert sum(brain_burn_price(k) for k in range(1024)) == 105_779_200


def test_negative_inputs_rejected() -> None:
    with pytest.raises(ValueError):
        brain_burn_price(-1)
