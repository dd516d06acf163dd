"""Hostile peers against a live node (issue #15; SPEC N1, L2): each test is one finding of
the outside review, reproduced over real gRPC on 127.0.0.1 against in-process nodes whose
loops run. Every wait is bounded; nothing asserts on wall-clock durations.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from node_harness import (  # noqa: E402
    CHAIN_ID,
    OPERATOR,
    START,
    USER,
    VALIDATORS,
    make_genesis,
    observer_node,
)

from ledger.block import Block  # noqa: E402
from ledger.chain import Chain  # noqa: E402
from ledger.genesis import Genesis  # noqa: E402
from ledger.keys import Wallet  # noqa: E402
from ledger.tx import Tx, make_tx  # noqa: E402
from ledger.units import DEFAULT_REGISTRATION_FEE  # noqa: E402
from network.client import NodeClient  # noqa: E402
from network.finality import Announcement, proposer_ranking, voting_set  # noqa: E402
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
    return gossip_details(node, kind, obj)[0]


def gossip_details(node: Node, kind: str, obj: object) -> tuple[grpc.StatusCode, str]:
    """``gossip`` with the reason the node gave (empty on OK)."""
    with grpc.insecure_channel(node.listen) as ch:
        try:
            node_pb2_grpc.NodeStub(ch).Gossip(
                node_pb2.Envelope(kind=kind, payload=json.dumps(obj).encode()), timeout=10)
        except grpc.RpcError as e:
            return e.code(), e.details() or ""
    return grpc.StatusCode.OK, ""


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


@pytest.fixture()
def observer(tmp_path: Path) -> Iterator[tuple[Node, NodeClient]]:
    """A started node without a wallet and no validator to talk to: nothing is ever
    finalized, so its mempool only changes through what a test submits."""
    with observer_node(tmp_path / "obs", make_genesis()) as pair:
        yield pair


def transfer(nonce: int, amount: int, fee: int = 0, sender: Wallet = USER) -> Tx:
    return make_tx(sender, "transfer", nonce, CHAIN_ID, fee=fee, to=VALIDATORS[0].address,
                   amount=amount)


def test_one_pending_tx_per_sender_and_nonce(observer: tuple[Node, NodeClient]) -> None:
    """Finding: every valid tx at the account's nonce was admitted, so one key filled the
    mempool with variants of one nonce (and re-gossip spread them). Now a second tx at a
    pending nonce is refused unless its fee is higher (then it replaces the first)."""
    node, c = observer
    refused = [c.submit(transfer(0, amount)) for amount in range(1, 41)]
    assert refused[0] is None
    assert all(r is not None for r in refused[1:]), refused
    assert c.status()["mempool"] == 1
    # by gossip too: not fresh, not kept, so not forwarded
    assert gossip(node, "tx", transfer(0, 99).to_dict()) == grpc.StatusCode.OK
    assert c.status()["mempool"] == 1
    assert c.submit(transfer(0, 5, fee=0)) is not None  # same fee: no replacement
    assert c.submit(transfer(0, 5, fee=3)) is None  # higher fee: replaces
    assert (c.status()["mempool"], c.pending_nonce(USER.address)) == (1, 1)
    assert c.submit(transfer(0, 6, fee=2)) is not None  # lower than the replacement


def test_pending_txs_are_checked_against_the_pending_state(
        observer: tuple[Node, NodeClient]) -> None:
    """Finding: a tx ahead of the account's nonce was admitted unchecked. Now it is run on
    the state after the sender's pending txs: its balance must cover all of them, and its
    rule must pass, before it is admitted or gossiped."""
    _node, c = observer
    fee = 1
    assert c.submit(transfer(0, START - 10 - fee, fee=fee)) is None  # leaves 10
    assert c.submit(transfer(1, 100)) is not None  # only 10 left after the pending tx
    stake = make_tx(USER, "stake", 1, CHAIN_ID, brain=999, delegate="", amount=1)
    reason = c.submit(stake)
    assert reason is not None and "999" in reason  # no such Brain
    assert c.submit(transfer(3, 1)) is not None  # a gap
    assert c.submit(transfer(1, 10)) is None  # exactly what is left
    assert c.submit(transfer(2, 1)) is not None
    assert (c.status()["mempool"], c.pending_nonce(USER.address)) == (2, 2)


def test_pending_txs_per_sender_are_capped(observer: tuple[Node, NodeClient]) -> None:
    """Finding: one funded key could queue txs up to the mempool's size. Now a sender has a
    bounded number pending; the rest are refused until blocks take some."""
    _node, c = observer
    reasons = [c.submit(transfer(n, 1, sender=OPERATOR)) for n in range(200)]
    admitted = sum(r is None for r in reasons)
    assert 16 <= admitted < 200
    assert all(r is None for r in reasons[:admitted])  # a prefix, then only refusals
    assert all(r is not None and "pending" in r for r in reasons[admitted:])
    assert c.status()["mempool"] == admitted


class LyingPeer(node_pb2_grpc.NodeServicer):
    """A peer that claims a huge height in Hello (heights are unsigned claims) and then
    answers GetBlocks with nothing, or with junk."""

    def __init__(self, genesis_hash: str, junk: bool) -> None:
        self.genesis_hash, self.junk = genesis_hash, junk
        self.asked = 0

    def Hello(self, request: node_pb2.HelloRequest, context: grpc.ServicerContext
              ) -> node_pb2.HelloReply:
        return node_pb2.HelloReply(genesis_hash=self.genesis_hash, height=2**63)

    def Gossip(self, request: node_pb2.Envelope, context: grpc.ServicerContext
               ) -> node_pb2.GossipReply:
        return node_pb2.GossipReply(fresh=False)

    def GetBlocks(self, request: node_pb2.BlocksRequest, context: grpc.ServicerContext
                  ) -> Iterator[node_pb2.BlockWithVotes]:
        self.asked += 1
        if self.junk:
            yield node_pb2.BlockWithVotes(block=b"{junk", votes=b"[]")


def test_lying_peers_do_not_stall_sync(tmp_path: Path) -> None:
    """Finding: sync always asked the peer with the highest claimed height and never
    penalised an empty or invalid answer, so one liar kept a late joiner at height 0
    forever. Now a peer whose answer brings no block is backed off and others are tried."""
    g = make_genesis([VALIDATORS[0]])  # a sole authority finalizes alone
    honest = Node(NodeConfig(tmp_path / "honest", g, VALIDATORS[0], block_interval=0.1,
                             round_timeout=1.0))
    liars = [LyingPeer(g.genesis_hash(), junk) for junk in (False, True)]
    servers = []
    late: Node | None = None
    try:
        honest.start()
        for liar in liars:
            server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
            node_pb2_grpc.add_NodeServicer_to_server(liar, server)
            servers.append((server, server.add_insecure_port("127.0.0.1:0")))
            server.start()
        assert wait_for(lambda: honest.status()["height"] >= 3)
        # past the vote window's reach by gossip alone: only sync can bring it level
        late = Node(NodeConfig(tmp_path / "late", g, None, hello_interval=0.1, bootstrap=[
            *(f"127.0.0.1:{port}" for _, port in servers), honest.listen]))
        late.start()
        assert wait_for(lambda: late is not None and late.status()["height"] >= 3), \
            late.status()
        assert all(liar.asked >= 1 for liar in liars)  # both were tried, then passed over
    finally:
        if late is not None:
            late.stop()
        for server, _ in servers:
            server.stop(0).wait()
        honest.stop()


def test_directory_takes_only_registered_keys_and_bounded_integers(tmp_path: Path) -> None:
    """Finding: announcements from any key (unregistered, zero balance) were stored and
    re-broadcast, and a brain or seq >= 2^63 overflowed SQLite. Now only a key registered
    in that Brain is stored and gossiped, and out-of-range integers are refused by name."""
    g = make_genesis([VALIDATORS[0]])
    node = Node(NodeConfig(tmp_path / "v", g, VALIDATORS[0], block_interval=0.1,
                           round_timeout=1.0))
    node.start()
    try:
        reg = make_tx(USER, "register", 0, CHAIN_ID, brain=1, role="miner",
                      max_fee=DEFAULT_REGISTRATION_FEE)
        assert node.submit(reg) is None
        assert wait_for(lambda: node.brain_info(1) is not None
                        and USER.address in node.brain_info(1)["miners"].values())
        stranger = Wallet.from_seed("issue-15-stranger")  # no balance, no registration
        spam = Announcement.make(stranger, CHAIN_ID, 1, "127.0.0.1:9", 1).to_dict()
        code, why = gossip_details(node, "announce", spam)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "registered" in why, why
        for brain, seq, name in ((1, 2**63, "seq"), (2**63, 1, "brain")):
            big = Announcement.make(USER, CHAIN_ID, brain, "127.0.0.1:9", seq).to_dict()
            code, why = gossip_details(node, "announce", big)
            assert code == grpc.StatusCode.INVALID_ARGUMENT and name in why, why
        assert node.store.announcements() == []
        ok = Announcement.make(USER, CHAIN_ID, 1, "127.0.0.1:9", 2**63 - 1).to_dict()
        assert gossip(node, "announce", ok) == grpc.StatusCode.OK
        assert node.directory(1) == {USER.address: "127.0.0.1:9"}
    finally:
        node.stop()


def test_a_block_that_breaks_the_check_is_refused_not_fatal(voter: tuple[Node, Genesis]
                                                            ) -> None:
    """Second line of defence behind ``Block.from_dict``: a proposal whose check raises
    anything (here a float fee planted past the parser) is recorded as invalid and the
    node goes on to vote for a valid one in the same step."""
    node, g = voter
    wallets = {w.address: w for w in VALIDATORS}
    first = proposer_ranking(g.genesis_hash(), voting_set({}, g))[0]
    liar = next(w for w in VALIDATORS if w.address != first)
    t = int(time.time())
    bad, _ = Chain(g).produce_block([], liar, t)
    planted = Tx("transfer", liar.address, 0, 1.5, {"to": first, "amount": 1})  # type: ignore[arg-type]
    good, _ = Chain(g).produce_block([], wallets[first], t)
    with node._lock:  # white-box: no parser lets this block in any more
        node._on_block(Block(bad.header, (planted,)))
        node._on_block(good)
        node._step()
        assert node._validity[bad.block_hash()] is not None
    assert (node.status()["my_vote"] or {}).get("hash") == good.block_hash()
