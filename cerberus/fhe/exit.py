"""Leave the process with the status we mean, whatever concrete-python does at exit.

concrete-python 2.11's runtime, once a circuit has run in a process (``Server.run``),
ends that process with status 0 at interpreter exit, whatever status was asked for
(``sys.exit(3)`` after a run exits 0; before a run, 3). A command that ran circuits —
``cerberus bench`` with its in-process miner, a benchmark, a test session — would then
report success on failure. ``exit_now`` flushes the standard streams and ends the
process at once with ``status``, before any exit handler can replace it
(tests/test_exit_status.py).
"""

from __future__ import annotations

import os
import sys


def exit_now(status: int) -> None:
    """Flush stdout/stderr and end the process with ``status`` (no exit handlers run)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken stream: nothing more to say
            pass
    os._exit(int(status))
