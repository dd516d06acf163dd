"""Real node processes for the network tests (SPEC N1, issue #8).

Each node is ``python -m network.cli`` on 127.0.0.1 with its own data directory (real
SQLite files) and wallet file; the harness reads the one line the node prints first
(``node <address> on <host>:<port>``) and talks to it only through ``NodeClient``.
Every wait is bounded; every process is SIGKILLed at teardown if still alive.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from ledger.encoding import canonical
from ledger.genesis import Genesis
from ledger.keys import Wallet
from ledger.units import BASED
from network.client import NodeClient
from network.node import Node, NodeConfig
from network.protos import node_pb2
from network.wallet import save

ROOT = Path(__file__).resolve().parents[2]
CHAIN_ID = "cerberus-net-test"
OPERATOR = Wallet.from_seed("net-operator")
BRIDGE = Wallet.from_seed("net-bridge")
VALIDATORS = [Wallet.from_seed(f"net-validator-{i}") for i in range(3)]
USER = Wallet.from_seed("net-user")
START = 1_000_000 * BASED
STARTUP_TIMEOUT = 60.0


def make_genesis(validators: list[Wallet] = VALIDATORS) -> Genesis:
    """Validators are the authorities (so block 1 can be proposed before anyone stakes)."""
    return Genesis(
        chain_id=CHAIN_ID, operator=OPERATOR.address, bridge=BRIDGE.address,
        balances={w.address: START for w in [*validators, OPERATOR, USER]},
        time=int(time.time()) - 1, block_time=1, tempo=1_000_000,
        authorities=tuple(w.address for w in validators))


def free_port() -> int:
    """A 127.0.0.1 port that was free a moment ago (the node binds it right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NodeProc:
    """One ``python -m network.cli`` process; restartable on the same port and data."""

    def __init__(self, root: Path, name: str, genesis: Genesis, wallet: Wallet | None,
                 bootstrap: list[str], extra: list[str] | None = None) -> None:
        self.dir = root / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.genesis_file = self.dir / "genesis.json"
        self.genesis_file.write_text(json.dumps(genesis.to_dict()))
        self.wallet_file: Path | None = None
        if wallet is not None:
            self.wallet_file = self.dir / "wallet.key"
            if not self.wallet_file.exists():
                save(wallet, self.wallet_file)
        self.port = free_port()
        self.bootstrap = bootstrap
        self.extra = extra or []
        self.proc: subprocess.Popen[str] | None = None
        self.address = ""
        self.listen = f"127.0.0.1:{self.port}"
        self.starts = 0

    def start(self) -> NodeProc:
        cmd = [sys.executable, "-m", "network.cli", "--data", str(self.dir / "data"),
               "--genesis", str(self.genesis_file), "--port", str(self.port),
               "--block-interval", "1", "--round-timeout", "2", *self.extra]
        if self.wallet_file is not None:
            cmd += ["--wallet", str(self.wallet_file)]
        if self.bootstrap:
            cmd += ["--bootstrap", *self.bootstrap]
        self.starts += 1
        log = open(self.dir / f"node-{self.starts}.log", "w")  # noqa: SIM115 - owned by proc
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=log,
                                     text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        log.close()
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], STARTUP_TIMEOUT)
        if not ready:
            self.kill()
            raise TimeoutError(f"{self.dir.name} printed nothing in {STARTUP_TIMEOUT} s")
        line = self.proc.stdout.readline().strip()
        parts = line.split()
        if len(parts) != 4 or parts[0] != "node" or parts[2] != "on":
            self.kill()
            raise AssertionError(f"unexpected first line {line!r}; log: {self.log_tail()}")
        self.address, self.listen = parts[1], parts[3]
        return self

    def client(self) -> NodeClient:
        return NodeClient(self.listen)

    def kill(self) -> None:
        """SIGKILL: no chance to flush or close anything."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def terminate(self) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
                return -9
        return int(self.proc.returncode)

    def log_tail(self, n: int = 2000) -> str:
        logs = sorted(self.dir.glob("node-*.log"))
        return logs[-1].read_text()[-n:] if logs else ""


def block_at(node: NodeProc, height: int) -> tuple[str, str]:
    """(block hash, state root) of a node's final block at ``height``."""
    with node.client() as c:
        [(block, _votes)] = c.blocks(height, height)
    return block.block_hash(), block.header.state_root


def env(kind: str, obj: dict[str, Any]) -> node_pb2.Envelope:
    """A gossip envelope of ``kind`` carrying ``obj`` canonically encoded."""
    return node_pb2.Envelope(kind=kind, payload=canonical(obj))


class Clock:
    """Stands in for the ``time`` module inside ``network.node`` in in-process tests:
    rounds move only when the test moves ``now``."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def time_ns(self) -> int:
        return int(self.now * 1e9)


@contextmanager
def observer_node(root: Path, genesis: Genesis) -> Iterator[tuple[Node, NodeClient]]:
    """A started in-process node without a wallet and with no validator to talk to: nothing
    is ever finalized, so its mempool changes only through what a test submits."""
    node = Node(NodeConfig(root, genesis, None, block_interval=1000.0))
    node.start()
    client = NodeClient(node.listen)
    try:
        yield node, client
    finally:
        client.close()
        node.stop()


T = TypeVar("T")


def wait_for(fn: Callable[[], T | None], what: str, timeout: float = 60.0) -> T:
    """Poll ``fn`` until it returns something truthy, and return that; bounded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = fn()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
