"""Round-based two-phase votes with a lock (SPEC N1, issues #8, #15).

The liveness bug this guards against: three CPU-starved validators each voted for a
different block at one height; with one vote per height no block could reach 2/3 and the
chain stalled forever. Here real in-process ``Node``s (real gRPC, SQLite, clocks) are
first kept apart so each proposes and votes for its own block — the same three-way
split — and then connected: the height must finalize in a later round, with every node on
the same block. A locked validator must not leave its block while the split is not
proven, and a quorum counts only within one round.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from node_harness import (  # noqa: E402
    CHAIN_ID,
    VALIDATORS,
    Clock,
    env,
    make_genesis,
    wait_for,
)

import network.node  # noqa: E402
from ledger.chain import Chain  # noqa: E402
from ledger.genesis import Genesis  # noqa: E402
from ledger.keys import Wallet  # noqa: E402
from network.client import NodeClient  # noqa: E402
from network.finality import (  # noqa: E402
    PRECOMMIT,
    PREVOTE,
    Vote,
    more_than_a_third,
    proposer_ranking,
    voting_set,
)
from network.node import Node, NodeConfig  # noqa: E402
from network.protos import node_pb2  # noqa: E402


def make_node(root: Path, name: str, g: Genesis, wallet: Wallet | None) -> Node:
    return Node(NodeConfig(root / name, g, wallet, block_interval=0.2, round_timeout=0.6,
                           hello_interval=0.2))



def vote(wallet: Wallet, block_hash: str, round_: int, height: int = 1,
         phase: str = PRECOMMIT) -> node_pb2.Envelope:
    return env("vote", Vote.make(wallet, CHAIN_ID, height, block_hash, round_, phase)
               .to_dict())



def my_vote(node: Node) -> dict[str, Any] | None:
    mv: dict[str, Any] | None = node.status()["my_vote"]
    return mv


@pytest.fixture
def started() -> Iterator[list[Node]]:
    """Nodes a test starts; all stopped afterwards, whatever happens."""
    nodes: list[Node] = []
    yield nodes
    for n in nodes:
        n.stop()


def test_round_jumps_need_more_than_a_third() -> None:
    a, b, c = "a" * 64, "b" * 64, "c" * 64
    w = {a: 1, b: 1, c: 1}
    assert not more_than_a_third({a}, w) and more_than_a_third({a, b}, w)
    assert more_than_a_third({a}, {a: 2, b: 1, c: 1}) and not more_than_a_third({a}, {})


def test_three_way_split_finalizes_in_a_later_round_with_all_nodes_agreeing(
        tmp_path: Path, started: list[Node]) -> None:
    g = make_genesis()
    nodes = [make_node(tmp_path, f"v{i}", g, w) for i, w in enumerate(VALIDATORS)]
    started.extend(nodes)
    for n in nodes:
        n.start()  # no bootstrap: each is alone, like a validator too starved to hear
    split = [wait_for(lambda n=n: my_vote(n), f"{n.address[:8]} to vote") for n in nodes]
    hashes = [v["hash"] for v in split]
    assert len(set(hashes)) == 3, "each validator voted for its own block: the split"
    assert all(n.status()["height"] == 0 for n in nodes)
    # Without rounds this height was stuck for good. Connect everyone now.
    for n in nodes:
        for other in nodes:
            if other is not n:
                n.hello(node_pb2.HelloRequest(genesis_hash=g.genesis_hash(),
                                              listen=other.listen, address=other.address))
    wait_for(lambda: all(n.status()["height"] >= 2 for n in nodes), "heights 1 and 2")
    for h in (1, 2):
        at_h = {n.read(lambda c, h=h: c.block(h).block_hash()) for n in nodes}
        assert len(at_h) == 1, f"nodes disagree at height {h}"
    final = nodes[0].read(lambda c: c.block(1).block_hash())
    assert final in hashes  # one of the split blocks, proposed before the partition healed
    with NodeClient(nodes[0].listen) as c:
        [(block, cert)] = c.blocks(1, 1)
    assert block.block_hash() == final
    assert len({d["round"] for d in cert}) == 1  # a certificate is one round's votes
    cert_round = cert[0]["round"]
    voters = {d["voter"] for d in cert}
    assert len(voters) >= 2 and all(d["block"] == final for d in cert)
    # at least one voter had voted for another block in the split, and left it only
    # through an unlock in a later round than the one where it was first seen locked
    movers = [v for n, v in zip(nodes, split, strict=True)
              if n.address in voters and v["hash"] != final]
    assert movers
    assert all(cert_round > v["round"] for v in movers)


def test_a_locked_validator_prevotes_its_block_until_a_later_pol(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr(network.node, "time", clock)
    g = make_genesis()
    weights = voting_set({}, g)
    by_addr = {w.address: w for w in VALIDATORS}
    first, second, me = (by_addr[a] for a in proposer_ranking(Chain(g).head_hash, weights))
    block_b, _ = Chain(g).produce_block([], first, int(clock.now))  # rank 0
    block_a, _ = Chain(g).produce_block([], second, int(clock.now))  # rank 1
    A, B = block_a.block_hash(), block_b.block_hash()
    node = Node(NodeConfig(tmp_path / "me", g, me, block_interval=0.0, round_timeout=10.0))
    try:
        node.handle_envelope(env("block", block_a.to_dict()))
        clock.now += 10.0  # round 1: rank 1's block is eligible
        node.tick()
        assert my_vote(node) == {"height": 1, "round": 1, "hash": A}
        node.handle_envelope(vote(second, A, 1, phase=PREVOTE))  # POL for A in round 1
        assert node.status()["my_precommit"] == {"height": 1, "round": 1, "hash": A}
        node.handle_envelope(env("block", block_b.to_dict()))  # lower-ranked, but locked
        for r in (2, 3):
            clock.now += 10.0
            node.handle_envelope(vote(first, B, r, phase=PREVOTE))  # 1/3 only: no POL
            node.tick()
            assert my_vote(node) == {"height": 1, "round": r, "hash": A}, "left its lock"
        # a POL for B in round 3 (≥ the lock's round): A cannot have been final, move
        node.handle_envelope(vote(second, B, 3, phase=PREVOTE))
        clock.now += 10.0
        node.tick()
        assert my_vote(node) == {"height": 1, "round": 4, "hash": B}
        assert node.status()["height"] == 0
        for w in (first, second):
            node.handle_envelope(vote(w, B, 4, phase=PREVOTE))
        assert node.status()["my_precommit"] == {"height": 1, "round": 4, "hash": B}
        node.handle_envelope(vote(first, B, 4))  # 2/3 precommits for B in round 4
        assert (node.status()["height"], node.status()["head_hash"]) == (1, B)
    finally:
        node.stop()


def test_a_quorum_counts_only_within_one_round(tmp_path: Path) -> None:
    g = make_genesis()
    a, b, _c = VALIDATORS
    block, _ = Chain(g).produce_block([], a, int(time.time()))
    bh = block.block_hash()
    node = make_node(tmp_path, "observer", g, None)  # follows, never votes; fed directly
    try:
        node.handle_envelope(env("block", block.to_dict()))
        node.handle_envelope(vote(a, bh, 0))
        node.handle_envelope(vote(b, bh, 1))  # 2/3 of the stake, but across two rounds
        assert node.status()["height"] == 0
        node.handle_envelope(vote(b, bh, 0))
        assert (node.status()["height"], node.status()["head_hash"]) == (1, bh)
    finally:
        node.stop()


def test_the_lock_survives_a_restart(tmp_path: Path) -> None:
    g = make_genesis()
    by_addr = {w.address: w for w in VALIDATORS}
    first, me, third = (by_addr[a] for a in proposer_ranking(Chain(g).head_hash,
                                                             voting_set({}, g)))
    block, _ = Chain(g).produce_block([], first, int(time.time()))
    bh = block.block_hash()
    node = make_node(tmp_path, "v", g, me)  # not started: driven by what it is fed
    node.config.round_timeout = 1000.0
    try:
        node.handle_envelope(env("block", block.to_dict()))  # rank 0: prevoted in round 0
        assert node.status()["my_vote"] == {"height": 1, "round": 0, "hash": bh}
        node.handle_envelope(vote(third, bh, 0, phase=PREVOTE))  # POL: precommit, locked
        assert node.status()["my_precommit"] == {"height": 1, "round": 0, "hash": bh}
        node.handle_envelope(vote(third, bh, 3, phase=PREVOTE))  # 1/3 in round 3: stay
        assert node.status()["round"] == 0
        node.handle_envelope(vote(first, "cd" * 32, 3, phase=PREVOTE))  # > 1/3: join it
        assert node.status()["round"] == 3
        assert node.status()["my_vote"] == {"height": 1, "round": 3, "hash": bh}  # locked
        # with `third`'s prevote that is a POL in round 3: the lock moves up to round 3
        assert node.status()["my_precommit"] == {"height": 1, "round": 3, "hash": bh}
    finally:
        node.stop()
    again = make_node(tmp_path, "v", g, me)  # the lock and the round come back from disk
    try:
        st = again.status()
        assert st["my_precommit"] == {"height": 1, "round": 3, "hash": bh}
        assert st["my_vote"] == {"height": 1, "round": 3, "hash": bh}
        assert st["round"] >= 3  # rounds never go backwards
    finally:
        again.stop()
