"""Fixtures for the miner runtime: a real FHE artefact of the tiny model and real miners.

Miners are real ``cerberus serve`` processes on 127.0.0.1 (a free port each); every wait
is bounded.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cerberus.artefact import Artefact


class Miner:
    """A ``cerberus serve`` child process and its address."""

    def __init__(self, artefact: Path, tmp: Path, *args: str) -> None:
        self.record = tmp / "received.bin"
        self.log = tmp / "miner.log"
        cmd = [sys.executable, "-m", "cerberus_cli", "serve", str(artefact), "--port", "0",
               "--record-inputs", str(self.record), *args]
        with open(self.log, "wb") as err:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True,
                                         env=dict(os.environ, PYTHONUNBUFFERED="1"))
        line = self._first_line(timeout=120)
        self.address = line.split(" on ")[1]

    def _first_line(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), False)
        buf = ""
        while time.monotonic() < deadline:
            chunk = self.proc.stdout.readline()
            buf += chunk or ""
            if buf.endswith("\n"):
                return buf.strip()
            if self.proc.poll() is not None:
                raise RuntimeError(f"miner exited: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)
        raise TimeoutError("miner did not start")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)


@pytest.fixture(scope="module")
def miner(fhe_artefact: Artefact, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Miner]:
    m = Miner(fhe_artefact.path, tmp_path_factory.mktemp("miner"), "--key-cache-mb", "1")
    yield m
    m.stop()
