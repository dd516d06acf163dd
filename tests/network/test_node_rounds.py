"""Round-based votes with a lock (SPEC N1, issue #8).

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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from node_harness import CHAIN_ID, VALIDATORS, make_genesis  # noqa: E402

from ledger.chain import Chain  # noqa: E402
from ledger.encoding import canonical  # noqa: E402
from ledger.genesis import Genesis  # noqa: E402
from ledger.keys import Wallet  # noqa: E402
from network.client import NodeClient  # noqa: E402
from network.consensus import Vote, proposer_ranking, proves_unlock, voting_set  # noqa: E402
from network.node import Node, NodeConfig  # noqa: E402
from network.protos import node_pb2  # noqa: E402

T = TypeVar("T")
WAIT = 60.0


def wait_for(fn: Callable[[], T | None], what: str, timeout: float = WAIT) -> T:
    """Poll ``fn`` until it returns something truthy; bounded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = fn()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def make_node(root: Path, name: str, g: Genesis, wallet: Wallet | None) -> Node:
    return Node(NodeConfig(root / name, g, wallet, block_interval=0.2, round_timeout=0.6,
                           hello_interval=0.2))


def env(kind: str, obj: dict[str, Any]) -> node_pb2.Envelope:
    return node_pb2.Envelope(kind=kind, payload=canonical(obj))


def vote(wallet: Wallet, block_hash: str, round_: int, height: int = 1) -> node_pb2.Envelope:
    return env("vote", Vote.make(wallet, CHAIN_ID, height, block_hash, round_).to_dict())


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


def test_unlock_needs_more_than_a_third_voting_only_for_others() -> None:
    a, b, c = "a" * 64, "b" * 64, "c" * 64
    w = {a: 1, b: 1, c: 1}
    A, B, C = "0a" * 32, "0b" * 32, "0c" * 32
    assert proves_unlock({A: {a}, B: {b}, C: {c}}, A, w)  # three-way split: 2/3 elsewhere
    assert not proves_unlock({A: {a}, B: {b}}, A, w)  # 1/3 elsewhere: A may still get c
    assert not proves_unlock({A: {a, c}, B: {b}}, A, w)
    # c signed two votes in this round: its votes prove nothing, so only b's 1/3 counts
    assert not proves_unlock({A: {a}, B: {b, c}, C: {c}}, A, w)
    assert not proves_unlock({A: {a}, B: {b, c}}, B, w)  # a's 1/3 only
    w2 = {a: 2, b: 1, c: 1}
    assert proves_unlock({B: {b, c}}, A, w2) and not proves_unlock({B: {b}}, A, w2)
    assert not proves_unlock({B: {b}}, A, {})


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


def test_a_locked_validator_keeps_its_block_until_the_split_is_proven(
        tmp_path: Path, started: list[Node]) -> None:
    g = make_genesis()
    weights = voting_set({}, g)
    by_addr = {w.address: w for w in VALIDATORS}
    first, second, me = (by_addr[a] for a in proposer_ranking(Chain(g).head_hash, weights))
    now = int(time.time())
    block_b, _ = Chain(g).produce_block([], first, now)  # rank 0: preferred when free
    block_a, _ = Chain(g).produce_block([], second, now)  # rank 1
    A, B = block_a.block_hash(), block_b.block_hash()
    node = make_node(tmp_path, "me", g, me)  # rank 2, alone: only what we feed it
    started.append(node)
    assert node.handle_envelope(env("block", block_a.to_dict()))
    node.start()
    locked = wait_for(lambda: my_vote(node), "the vote for A (round ≥ 1)")
    assert locked["hash"] == A and locked["round"] >= 1
    assert node.handle_envelope(env("block", block_b.to_dict()))
    # B is lower-ranked, and `first` votes for it — only 1/3 of the stake: not a proof
    for _ in range(3):
        r = wait_for(lambda: my_vote(node), "a vote")["round"]
        node.handle_envelope(vote(first, B, r + 1))  # the node joins round r + 1
        later = wait_for(lambda r=r: (v := my_vote(node)) and v["round"] >= r + 2 and v,
                         "two more rounds")
        assert later["hash"] == A, "left its lock without proof"
    assert node.status()["height"] == 0
    # now 2/3 of the stake votes for other blocks in one round: A cannot be final there,
    # so the lock is left and the lowest-ranked valid proposal (B) gets the vote
    moved = None
    for _ in range(5):  # a round can pass between two feeds; retry in a later one
        r = wait_for(lambda: my_vote(node), "a vote")["round"]
        node.handle_envelope(vote(second, "cd" * 32, r + 1))
        node.handle_envelope(vote(first, B, r + 1))
        moved = wait_for(lambda r=r: (v := my_vote(node)) and v["round"] >= r + 2 and v,
                         "the next round's vote")
        if moved["hash"] == B:
            break
    assert moved is not None and moved["hash"] == B
    node.handle_envelope(vote(first, B, moved["round"]))  # 2/3 for B in that round
    wait_for(lambda: node.status()["height"] == 1, "B to be final")
    assert node.status()["head_hash"] == B


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
    try:
        node.handle_envelope(env("block", block.to_dict()))  # rank 0: voted in round 0
        assert node.status()["my_vote"] == {"height": 1, "round": 0, "hash": bh}
        node.handle_envelope(vote(third, bh, 3))  # a peer in round 3: join it, vote again
        assert node.status()["my_vote"] == {"height": 1, "round": 3, "hash": bh}
    finally:
        node.stop()
    again = make_node(tmp_path, "v", g, me)  # the lock and the round come back from disk
    try:
        st = again.status()
        assert st["my_vote"] == {"height": 1, "round": 3, "hash": bh}
        assert st["round"] >= 3  # rounds never go backwards
    finally:
        again.stop()
