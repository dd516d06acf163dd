"""The key cache: LRU under a byte budget, evictions counted and logged."""

import logging

import pytest

from runtime.keycache import KeyCache, KeySet


def ks(name: str, size: int) -> KeySet:
    return KeySet(name, {"p": b"\0" * size}, size)


def test_lru_eviction_keeps_total_under_limit(caplog: pytest.LogCaptureFixture) -> None:
    cache = KeyCache(1000)
    with caplog.at_level(logging.INFO, logger="runtime.keycache"):
        cache.put(ks("a", 400))
        cache.put(ks("b", 400))
        assert cache.get("a") is not None  # a is now the most recently used
        cache.put(ks("c", 400))  # evicts b, the least recently used
    assert cache.get("b") is None
    assert cache.get("a") is not None and cache.get("c") is not None
    assert cache.nbytes == 800 <= cache.limit_bytes
    assert cache.evictions == 1
    assert any("evicted key set b" in r.getMessage() for r in caplog.records)


def test_reinserting_does_not_double_count() -> None:
    cache = KeyCache(1000)
    cache.put(ks("a", 600))
    cache.put(ks("a", 600))
    assert cache.nbytes == 600 and len(cache) == 1 and cache.evictions == 0


def test_a_key_set_larger_than_the_cache_is_refused() -> None:
    cache = KeyCache(100)
    with pytest.raises(ValueError, match="exceeds the cache limit"):
        cache.put(ks("big", 101))
    assert len(cache) == 0


def test_many_inserts_never_exceed_the_budget() -> None:
    cache = KeyCache(10_000)
    for i in range(200):
        cache.put(ks(str(i), 37 * (i % 50) + 1))
        assert cache.nbytes <= cache.limit_bytes
    assert cache.evictions > 0
