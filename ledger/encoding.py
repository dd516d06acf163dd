"""Canonical bytes for hashing and signing.

Compact JSON with sorted keys, ASCII only, no floats: the same value always yields the same
bytes on every node and every Python version, which is all a hash or a signature needs.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any


def _check(value: Any) -> None:
    """Refuse floats (and anything exotic) so money and roots stay integer-exact."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return
    if isinstance(value, (list, tuple)):
        for v in value:
            _check(v)
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"canonical dict keys must be str, got {type(k).__name__}")
            _check(v)
        return
    raise TypeError(f"not canonically encodable: {type(value).__name__}")


def canonical(value: Any) -> bytes:
    """Canonical JSON bytes of ``value`` (ints, strs, bools, None, lists, str-keyed dicts)."""
    _check(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sha256(data: bytes) -> bytes:
    """SHA-256 digest (one place to change if the hash ever changes)."""
    return hashlib.sha256(data).digest()


MAX_INT = 2**63 - 1
"""The largest integer a peer or client may send (SQLite's INTEGER; far above any supply):
larger ones are refused at parse time, before they can overflow a database column."""


def is_int(value: object, lo: int = 0, hi: int | None = None) -> bool:
    """A real ``int`` in ``[lo, hi]``: the check for every integer a peer or client sends.

    ``bool`` is excluded because ``True == 1`` in Python: a JSON ``true`` must never pass
    as a nonce, a height or an amount.
    """
    return (isinstance(value, int) and not isinstance(value, bool) and value >= lo
            and (hi is None or value <= hi))


_HEX64 = re.compile(r"[0-9a-f]{64}")


def is_hex64(value: object) -> bool:
    """64 lowercase hex characters: a sha256 digest (a block or state root, an address).
    (A compiled pattern: this runs several times per tx on a node's hot path, issue #16.)"""
    return isinstance(value, str) and _HEX64.fullmatch(value) is not None
