"""Request counters and latency histograms in Prometheus' text format (SPEC R4).

Operators scrape these through the ``Metrics`` RPC (``cerberus serve`` also logs them at
shutdown); validators' latency scores come from their own clocks, not from these.
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict

# Seconds; FHE steps range from tens of milliseconds (a hybrid linear) to minutes.
BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class Metrics:
    """Counters by (method, status code) and a latency histogram per method."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str], int] = defaultdict(int)
        self._hist: dict[str, list[int]] = defaultdict(lambda: [0] * (len(BUCKETS) + 1))
        self._sum: dict[str, float] = defaultdict(float)
        self.in_flight = 0

    def observe(self, method: str, code: str, seconds: float) -> None:
        with self._lock:
            self._requests[(method, code)] += 1
            self._hist[method][bisect.bisect_left(BUCKETS, seconds)] += 1
            self._sum[method] += seconds

    def requests(self, method: str, code: str = "OK") -> int:
        with self._lock:
            return self._requests[(method, code)]

    def render(self, gauges: dict[str, float]) -> str:
        """The exposition text; ``gauges`` adds point-in-time values (cache bytes, …)."""
        lines = ["# HELP cerberus_requests_total RPCs handled, by method and status code.",
                 "# TYPE cerberus_requests_total counter"]
        with self._lock:
            for (method, code), n in sorted(self._requests.items()):
                lines.append(f'cerberus_requests_total{{method="{method}",code="{code}"}} {n}')
            lines += ["# HELP cerberus_request_seconds RPC latency.",
                      "# TYPE cerberus_request_seconds histogram"]
            for method, counts in sorted(self._hist.items()):
                acc = 0
                for bound, c in zip((*BUCKETS, float("inf")), counts, strict=True):
                    acc += c
                    le = "+Inf" if bound == float("inf") else repr(bound)
                    lines.append(f'cerberus_request_seconds_bucket{{method="{method}",le="{le}"}}'
                                 f" {acc}")
                lines.append(f'cerberus_request_seconds_sum{{method="{method}"}} '
                             f"{self._sum[method]:.6f}")
                lines.append(f'cerberus_request_seconds_count{{method="{method}"}} {acc}')
            gauges = dict(gauges, cerberus_in_flight=self.in_flight)
        for name, value in sorted(gauges.items()):
            lines += [f"# TYPE {name} gauge", f"{name} {value:g}"]
        return "\n".join(lines) + "\n"


def parse(text: str) -> dict[str, float]:
    """Sample name (with labels) → value; what a scraper (and the tests) read back."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out
