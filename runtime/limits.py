"""Per-source-address limits for the miner (issue #15; SPEC R3).

gRPC's ``maximum_concurrent_rpcs`` bounds the miner as a whole, and ``context.peer()``
names one *connection* (``ipv4:HOST:PORT``), so a client that opens new connections would
get a fresh budget each time and one address could hold every worker. Here the budget
belongs to the source address: at most ``in_flight`` RPCs at once and a token bucket of
``rate`` calls per second (``burst`` at once) per address, over all its connections.

The table of addresses is bounded: past ``max_addresses`` the least recently seen idle
address is forgotten (an address with calls in flight is never forgotten, so its
in-flight count stays right).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


def peer_ip(peer: str) -> str:
    """``ipv4:127.0.0.5:4242`` / ``ipv6:[::1]:4242`` → the address alone."""
    rest = peer.split(":", 1)[1] if ":" in peer else peer
    return rest.rsplit(":", 1)[0].strip("[]")


@dataclass
class _Address:
    tokens: float
    stamp: float
    in_flight: int = 0


class PerAddressLimiter:
    """Admission of one RPC per call of :meth:`enter`, released by :meth:`leave`."""

    def __init__(self, *, in_flight: int = 8, rate: float = 50.0, burst: float = 100.0,
                 max_addresses: int = 4096,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if in_flight < 1 or rate <= 0 or burst < 1 or max_addresses < 1:
            raise ValueError("per-address limits must be positive")
        self.in_flight, self.rate, self.burst = in_flight, rate, burst
        self.max_addresses, self.clock = max_addresses, clock
        self.refused = 0
        self._table: OrderedDict[str, _Address] = OrderedDict()
        self._lock = threading.Lock()

    def enter(self, address: str) -> str | None:
        """Admit one call from ``address``: None, or why it is refused (nothing taken)."""
        with self._lock:
            now = self.clock()
            entry = self._table.get(address)
            if entry is None:
                entry = self._table[address] = _Address(self.burst, now)
                self._forget_idle()
            else:
                self._table.move_to_end(address)
                entry.tokens = min(self.burst, entry.tokens + (now - entry.stamp) * self.rate)
                entry.stamp = now
            if entry.in_flight >= self.in_flight:
                self.refused += 1
                return (f"{entry.in_flight} calls from {address} in flight "
                        f"(at most {self.in_flight})")
            if entry.tokens < 1:
                self.refused += 1
                return f"more than {self.rate:g} calls/s from {address}"
            entry.tokens -= 1
            entry.in_flight += 1
            return None

    def leave(self, address: str) -> None:
        """End one admitted call from ``address``."""
        with self._lock:
            entry = self._table.get(address)
            if entry is not None and entry.in_flight > 0:
                entry.in_flight -= 1

    def _forget_idle(self) -> None:
        """Drop least recently seen idle addresses past ``max_addresses`` (lock held)."""
        if len(self._table) <= self.max_addresses:
            return
        for address in list(self._table):
            if len(self._table) <= self.max_addresses:
                break
            if self._table[address].in_flight == 0:
                del self._table[address]
