"""Run ``network.cli`` with a sampling profiler over all its threads (issue #16).

cProfile sees only the thread that started it, and a node's work happens in its gRPC and
loop threads, so ``benchmarks/node_throughput.py --profile`` starts each node through
this: every ``INTERVAL`` seconds it reads each thread's CPU time so far (Linux
``/proc/self/task/TID/schedstat``, nanoseconds) and charges what the thread used since the
last sample to its current stack: the innermost function (self time) and every function
on it (inclusive time). A thread waiting on a lock, a socket or the GIL uses no CPU and is
charged nothing, so the figures are CPU milliseconds, not wall time. At exit it writes
them to ``OUT`` as JSON.

    python benchmarks/_node_sampler.py OUT.json -- <network.cli arguments>
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from types import FrameType

INTERVAL = 0.005


def _name(f: FrameType) -> str:
    return f"{Path(f.f_code.co_filename).name}:{f.f_code.co_name}"


def main() -> int:
    out = Path(sys.argv[1])
    args = sys.argv[sys.argv.index("--") + 1:]
    self_ms: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    by_thread: Counter[str] = Counter()
    last: dict[int, int] = {}
    stop = threading.Event()

    def cpu_ns(tid: int) -> int:
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                return int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return 0

    def sample() -> None:
        me = threading.get_ident()
        while not stop.wait(INTERVAL):
            threads = {t.ident: t for t in threading.enumerate()}
            for ident, frame in sys._current_frames().items():
                t = threads.get(ident)
                if ident == me or t is None or t.native_id is None:
                    continue
                now = cpu_ns(t.native_id)
                used = (now - last.get(ident, now)) / 1e6
                last[ident] = now
                if used <= 0:
                    continue
                by_thread[t.name.rstrip("0123456789_")] += used
                self_ms[_name(frame)] += used
                seen = set()
                f: FrameType | None = frame
                while f is not None:
                    n = _name(f)
                    if n not in seen:
                        seen.add(n)
                        incl[n] += used
                    f = f.f_back
    t = threading.Thread(target=sample, daemon=True)
    t.start()
    from network.cli import main as node_main
    start = time.monotonic()
    try:
        return node_main(args)
    finally:
        stop.set()
        t.join(timeout=2)
        def top(c: Counter[str], n: int) -> list[tuple[str, float]]:
            return [(k, round(v, 1)) for k, v in c.most_common(n)]

        out.write_text(json.dumps({"seconds": time.monotonic() - start, "interval": INTERVAL,
                                   "cpu_ms_by_thread": top(by_thread, 20),
                                   "self_cpu_ms": top(self_ms, 60),
                                   "inclusive_cpu_ms": top(incl, 100)}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
