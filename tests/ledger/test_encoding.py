"""The one check for integers and digests that peers send (ledger/encoding.py)."""

import pytest

from ledger.encoding import is_hex64, is_int
from ledger.genesis import Genesis

ADDR = "ab" * 32


@pytest.mark.parametrize("v, lo, hi, ok", [
    (0, 0, None, True), (5, 1, 5, True), (6, 1, 5, False), (0, 1, None, False),
    (-1, 0, None, False), (True, 0, None, False), (False, 0, None, False),
    (1.0, 0, None, False), ("1", 0, None, False), (None, 0, None, False), (2**80, 0, None, True),
])
def test_is_int_takes_only_real_ints_in_range(v, lo, hi, ok) -> None:
    assert is_int(v, lo, hi) is ok


@pytest.mark.parametrize("v, ok", [
    ("0f" * 32, True), ("0F" * 32, False), ("0f" * 31, False), ("0f" * 32 + "0", False),
    ("zz" * 32, False), (b"0f" * 32, False), (None, False),
])
def test_is_hex64_takes_only_lowercase_sha256_hex(v, ok) -> None:
    assert is_hex64(v) is ok


def test_genesis_refuses_a_bool_balance() -> None:
    """``True`` passed the old ``isinstance(v, int)`` check as a balance of 1 base unit."""
    with pytest.raises(ValueError, match="balances"):
        Genesis(chain_id="t", operator=ADDR, bridge=ADDR, balances={ADDR: True})
