"""Hostile peers against a live node (issue #15; SPEC N1, L2): each test is one finding of
the outside review, reproduced over real gRPC on 127.0.0.1 against in-process nodes whose
loops run. Every wait is bounded; nothing asserts on wall-clock durations.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from node_harness import CHAIN_ID, VALIDATORS, make_genesis  # noqa: E402

from ledger.block import Block  # noqa: E402
from ledger.chain import Chain  # noqa: E402
from ledger.genesis import Genesis  # noqa: E402
from network.consensus import proposer_ranking, voting_set  # noqa: E402
from network.node import Node, NodeConfig  # noqa: E402
from network.protos import node_pb2, node_pb2_grpc  # noqa: E402

WAIT = 30.0


def wait_for(cond: Callable[[], bool], timeout: float = WAIT) -> bool:
    """Poll ``cond`` until it holds or ``timeout`` passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() >= deadline:
            return bool(cond())
        time.sleep(0.05)
    return True


def gossip(node: Node, kind: str, obj: object) -> grpc.StatusCode:
    """Send one envelope (plain JSON: a hostile peer need not send canonical bytes) over a
    fresh gRPC connection; the status it got back."""
    with grpc.insecure_channel(node.listen) as ch:
        try:
            node_pb2_grpc.NodeStub(ch).Gossip(
                node_pb2.Envelope(kind=kind, payload=json.dumps(obj).encode()), timeout=10)
        except grpc.RpcError as e:
            return e.code()
    return grpc.StatusCode.OK


@pytest.fixture()
def voter(tmp_path: Path) -> Iterator[tuple[Node, Genesis]]:
    """A started validator (one of three authorities) whose own round 0 never opens during
    a test (block interval 1000 s), so it only votes for the blocks a test sends it."""
    g = make_genesis()
    node = Node(NodeConfig(tmp_path / "voter", g, VALIDATORS[1], block_interval=1000.0))
    node.start()
    try:
        yield node, g
    finally:
        node.stop()


def test_a_malformed_block_does_not_stop_a_validator_voting(voter: tuple[Node, Genesis]
                                                             ) -> None:
    """Finding: a validly signed block whose tx has a float fee passed ``Block.from_dict``;
    the vote check's tx root then raised ``TypeError`` on every step, so the node never
    voted at that height again. Now the block is refused (INVALID_ARGUMENT) and the next
    valid proposal is voted for."""
    node, g = voter
    wallets = {w.address: w for w in VALIDATORS}
    first = proposer_ranking(g.genesis_hash(), voting_set({}, g))[0]
    liar = next(w for w in VALIDATORS if w.address != first)
    t = int(time.time())
    bad, _ = Chain(g).produce_block([], liar, t)
    d = bad.to_dict()
    # the header signature does not cover the txs, so it stays valid
    d["txs"] = [{"kind": "transfer", "sender": liar.address, "nonce": 0, "fee": 1.5,
                 "payload": {"to": first, "amount": 1}, "sig": "00" * 64}]
    assert Block.from_dict({"header": d["header"], "txs": []}).header.verify_signature(
        CHAIN_ID)
    assert gossip(node, "block", d) == grpc.StatusCode.INVALID_ARGUMENT
    good, _ = Chain(g).produce_block([], wallets[first], t)
    assert gossip(node, "block", good.to_dict()) == grpc.StatusCode.OK
    assert wait_for(lambda: (node.status()["my_vote"] or {}).get("hash") == good.block_hash())
    assert node.status()["rejected"] >= 1
