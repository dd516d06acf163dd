"""Miner endpoint announcements travel by gossip into every node's directory; the reads a
validator or router needs (Account, Brain, Directory) answer the same in-process and over
gRPC (SPEC N1, issue #8). Two in-process nodes on 127.0.0.1 talking real gRPC."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from node_harness import CHAIN_ID, USER, VALIDATORS, make_genesis  # noqa: E402

from ledger.tx import make_tx  # noqa: E402
from ledger.units import DEFAULT_REGISTRATION_FEE  # noqa: E402
from network.client import NodeClient  # noqa: E402
from network.node import Node, NodeConfig  # noqa: E402

WAIT = 60.0


def wait_for(cond: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def test_announced_miner_endpoint_reaches_other_nodes(tmp_path: Path) -> None:
    g = make_genesis([VALIDATORS[0]])
    validator = Node(NodeConfig(tmp_path / "v", g, VALIDATORS[0], block_interval=0.5))
    vport = validator.start()
    miner = Node(NodeConfig(tmp_path / "m", g, USER, bootstrap=[f"127.0.0.1:{vport}"],
                            announce_interval=0.5))
    miner.start()
    client = NodeClient(f"127.0.0.1:{vport}")
    try:
        endpoint = "127.0.0.1:50051"
        miner.announce(1, endpoint)
        wait_for(lambda: client.status()["height"] >= 1)
        assert client.directory(1) == {}  # announced, but not a registered miner yet
        reg = make_tx(USER, "register", 0, CHAIN_ID, brain=1, role="miner",
                      max_fee=DEFAULT_REGISTRATION_FEE)
        assert miner.submit(reg) is None  # gossiped to the validator, which proposes
        wait_for(lambda: client.directory(1) == {USER.address: endpoint})
        assert validator.directory(1) == {USER.address: endpoint}
        wait_for(lambda: miner.directory(1) == {USER.address: endpoint})
        info = client.brain(1)
        assert info is not None and info["miners"] == {0: USER.address}
        assert {"uid": 0, "address": USER.address, "role": "miner"} in info["registrations"]
        assert client.brain(999) is None
        assert validator.read(lambda ch: ch.nonce(USER.address)) == 1
        assert client.account(USER.address)["nonce"] == 1
        # a second announcement (new endpoint) replaces the first everywhere
        miner.announce(1, "127.0.0.1:50052")
        wait_for(lambda: client.directory(1) == {USER.address: "127.0.0.1:50052"})
    finally:
        client.close()
        miner.stop()
        validator.stop()
