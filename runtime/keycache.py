"""The miner's cache of clients' evaluation keys, bounded in bytes (SPEC R2).

Evaluation keys are what a miner must hold to compute for a client: megabytes to gigabytes
per client once programmable bootstraps are involved (cerberus bench reports each
artefact's, benchmarks/RESULTS.md#cerberus_bench). The cache keeps the most
recently used key sets under a byte budget and logs every eviction; an evicted client gets
NOT_FOUND on its next request and uploads again (the client SDK does this by itself).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("runtime.keycache")


@dataclass(frozen=True)
class KeySet:
    """One client's evaluation keys, one entry per FHE program.

    ``nbytes`` is what they hold in memory, what the cache budgets: concrete's keys take
    about their serialized size; a packed program's Galois keys arrive seeded and take
    about twice that once loaded, so they count at their loaded bound (``key_bytes``).
    """

    key_id: str
    keys: dict[str, Any]
    nbytes: int


class KeyCache:
    """Thread-safe LRU of key sets whose total size never exceeds ``limit_bytes``."""

    def __init__(self, limit_bytes: int) -> None:
        if limit_bytes <= 0:
            raise ValueError("the key cache needs a positive byte limit")
        self.limit_bytes = limit_bytes
        self._entries: OrderedDict[str, KeySet] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.evictions = 0

    def put(self, keyset: KeySet) -> None:
        """Insert (or refresh) a key set, evicting least recently used ones to fit it."""
        if keyset.nbytes > self.limit_bytes:
            raise ValueError(f"key set of {keyset.nbytes} bytes exceeds the cache limit of "
                             f"{self.limit_bytes} bytes")
        with self._lock:
            old = self._entries.pop(keyset.key_id, None)
            if old is not None:
                self._bytes -= old.nbytes
            while self._entries and self._bytes + keyset.nbytes > self.limit_bytes:
                victim_id, victim = self._entries.popitem(last=False)
                self._bytes -= victim.nbytes
                self.evictions += 1
                log.info("evicted key set %s (%d bytes) to fit %s", victim_id[:16],
                         victim.nbytes, keyset.key_id[:16])
            self._entries[keyset.key_id] = keyset
            self._bytes += keyset.nbytes

    def get(self, key_id: str) -> KeySet | None:
        """The key set, marked most recently used; None when unknown or evicted."""
        with self._lock:
            ks = self._entries.get(key_id)
            if ks is not None:
                self._entries.move_to_end(key_id)
            return ks

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._bytes

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
