"""Throughput at the node (issue #16; SPEC N1, L2, L10): each tx's signature is checked
once per node on its way from submission to a final block, a peer's block still has every
tx checked by this node, batched submission (``SubmitTxs``) and the block size from
genesis. Live tests run real gRPC on 127.0.0.1 (in-process nodes, or real processes for
the smoke test); they assert correctness only, never speed.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from node_harness import (  # noqa: E402
    CHAIN_ID,
    OPERATOR,
    USER,
    VALIDATORS,
    NodeProc,
    block_at,
    make_genesis,
    observer_node,
)

import ledger.keys as keys  # noqa: E402
from ledger.block import Block, Header, sign_header, tx_root  # noqa: E402
from ledger.chain import Chain, InvalidBlock  # noqa: E402
from ledger.encoding import canonical  # noqa: E402
from ledger.genesis import Genesis  # noqa: E402
from ledger.keys import SigCache, Wallet  # noqa: E402
from ledger.tx import Tx, make_tx  # noqa: E402
from ledger.units import BASED  # noqa: E402
from network.client import NodeClient  # noqa: E402
from network.finality import proposer_ranking, voting_set  # noqa: E402
from network.node import Node, NodeConfig  # noqa: E402
from network.protos import node_pb2, node_pb2_grpc  # noqa: E402

WAIT = 60.0
SENDERS = [Wallet.from_seed(f"tp-sender-{i}") for i in range(10)]


def wait_for(cond: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Poll ``cond`` until it holds; bounded."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def genesis(max_block_txs: int = 1_000) -> Genesis:
    """The test network's genesis, with ten funded senders and the given block size."""
    g = make_genesis()
    return replace(g, balances={**g.balances, **{w.address: 1_000 * BASED for w in SENDERS}},
                   max_block_txs=max_block_txs)


def transfers(per_sender: int, start: int = 0) -> list[Tx]:
    """``per_sender`` consecutive transfers from each sender, interleaved by nonce."""
    return [make_tx(w, "transfer", n, CHAIN_ID, to=SENDERS[(i + 1) % len(SENDERS)].address,
                    amount=1 + n)
            for n in range(start, start + per_sender) for i, w in enumerate(SENDERS)]


@pytest.fixture()
def counted(monkeypatch: pytest.MonkeyPatch) -> Counter[tuple[str, bytes, bytes]]:
    """Every ed25519 check this process makes, counted by (address, message, signature):
    the real check still runs (counting, not mocking)."""
    calls: Counter[tuple[str, bytes, bytes]] = Counter()
    real = keys.ed25519_verify

    def counting(address: str, message: bytes, signature: bytes) -> bool:
        calls[(address, message, signature)] += 1
        return real(address, message, signature)

    monkeypatch.setattr(keys, "ed25519_verify", counting)
    return calls


@pytest.fixture()
def started() -> Iterator[list[Node]]:
    """Nodes a test starts; all stopped afterwards, whatever happens."""
    nodes: list[Node] = []
    yield nodes
    for n in nodes:
        n.stop()


def test_the_cache_answers_only_for_the_identical_bytes(
        counted: Counter[tuple[str, bytes, bytes]]) -> None:
    """A good triple is checked once; a forged signature, another message or another key
    never hits; the cache forgets the least recently used beyond its capacity."""
    w, other = Wallet.from_seed("a"), Wallet.from_seed("b")
    cache = SigCache(capacity=2)
    sig = w.sign(b"m")
    assert cache.verify(w.address, b"m", sig) and cache.verify(w.address, b"m", sig)
    assert counted[(w.address, b"m", sig)] == 1
    forged = bytes([sig[0] ^ 1]) + sig[1:]
    assert not cache.verify(w.address, b"m", forged)
    assert not cache.verify(w.address, b"m2", sig)
    assert not cache.verify(other.address, b"m", sig)
    assert not cache.verify(w.address, b"m", forged)  # bad results are not remembered
    assert counted[(w.address, b"m", forged)] == 2
    for msg in (b"x", b"y"):
        assert cache.verify(w.address, msg, w.sign(msg))
    assert len(cache) == 2
    assert cache.verify(w.address, b"m", sig)  # evicted: checked again
    assert counted[(w.address, b"m", sig)] == 2
    with cache.active():  # the module's verify goes through it only inside the block
        assert keys.verify(w.address, b"m", sig)
    assert counted[(w.address, b"m", sig)] == 2
    assert keys.verify(w.address, b"m", sig)
    assert counted[(w.address, b"m", sig)] == 3


def test_each_tx_signature_is_checked_once_per_node(
        tmp_path: Path, started: list[Node], counted: Counter[tuple[str, bytes, bytes]]
) -> None:
    """Three in-process validators (each with its own chain and cache); 200 txs submitted
    in batches to one of them reach final blocks on all three, and each tx's signature was
    checked by ed25519 exactly three times in all: once per node — at submission or gossip
    or in a peer's block, whichever came first — not at admission, proposal check and
    apply again."""
    g = genesis()
    for i, w in enumerate(VALIDATORS):
        boot = [started[0].listen] if started else []
        node = Node(NodeConfig(tmp_path / f"v{i}", g, w, bootstrap=boot, block_interval=0.3,
                               round_timeout=1.0, hello_interval=0.2))
        node.start()
        started.append(node)
    txs = transfers(20)
    with NodeClient(started[0].listen) as c:
        for k in range(0, len(txs), 50):
            assert c.submit_many(txs[k:k + 50]) == [None] * 50
    for node in started:
        wait_for(lambda node=node: all(node.read(lambda ch, w=w: ch.nonce(w.address)) == 20
                                       for w in SENDERS), "every tx final on every node")
    for tx in txs:
        assert counted[(tx.sender, tx.signing_bytes(CHAIN_ID), tx.signature)] == 3, tx
    height = min(n.status()["height"] for n in started)
    roots = {n.read(lambda ch, h=height: ch.block(h).header.state_root) for n in started}
    assert len(roots) == 1
    assert sum(n.status()["rejected"] for n in started) == 0


@pytest.fixture()
def voter(tmp_path: Path) -> Iterator[tuple[Node, Genesis]]:
    """A started validator whose own round 0 never opens during a test: it only votes for
    the blocks a test sends it."""
    g = genesis()
    node = Node(NodeConfig(tmp_path / "voter", g, VALIDATORS[1], block_interval=1000.0))
    node.start()
    try:
        yield node, g
    finally:
        node.stop()


def forge(block: Block, txs: list[Tx], proposer: Wallet) -> Block:
    """``block`` with other txs, its header's tx root fixed and signed again: everything
    about it is right except what the txs themselves carry."""
    h = block.header
    header = Header(h.height, h.parent, h.state_root, tx_root(txs), h.time, h.proposer)
    return Block(sign_header(header, proposer, CHAIN_ID), tuple(txs))


def test_a_peer_block_with_a_forged_tx_signature_is_refused(
        voter: tuple[Node, Genesis]) -> None:
    """The node first admits a good tx (its signature is now in the cache); the first
    proposer's block then carries the same tx with a forged signature and the right state
    root (signatures do not enter the state): the node records it as invalid for the bad
    signature and does not vote for it, while the same block with the genuine tx passes
    the same check."""
    node, g = voter
    first = next(w for w in VALIDATORS
                 if w.address == proposer_ranking(g.genesis_hash(), voting_set({}, g))[0])
    good_tx = make_tx(USER, "transfer", 0, CHAIN_ID, to=OPERATOR.address, amount=5)
    assert node.submit(good_tx) is None
    good, _ = Chain(g).produce_block([good_tx], first, int(time.time()))
    assert good.txs == (good_tx,)
    sig = good_tx.signature
    bad = forge(good, [replace(good_tx, signature=bytes([sig[0] ^ 1]) + sig[1:])], first)
    with pytest.raises(InvalidBlock, match="bad signature"):
        node.read(lambda ch: ch.check_block(bad))
    with grpc.insecure_channel(node.listen) as ch:
        node_pb2_grpc.NodeStub(ch).Gossip(
            node_pb2.Envelope(kind="block", payload=bad.to_bytes()), timeout=10)
    wait_for(lambda: bad.block_hash() in node._validity, "the node judging the block")
    assert "bad signature" in str(node._validity[bad.block_hash()])
    time.sleep(0.5)  # a few ticks more: no vote comes
    assert node.status()["my_vote"] is None
    node.read(lambda ch: ch.check_block(good))  # the genuine block passes
    # a tx whose message was changed under a good signature misses the cache too
    moved = replace(good_tx, payload={**good_tx.payload, "amount": 6})
    with pytest.raises(InvalidBlock, match="bad signature"):
        node.read(lambda ch: ch.check_block(forge(good, [moved], first)))


@pytest.fixture()
def observer(tmp_path: Path) -> Iterator[tuple[Node, NodeClient]]:
    """A started node with no validator to talk to: nothing is finalized, so its mempool
    changes only through what a test submits."""
    with observer_node(tmp_path / "obs", genesis()) as pair:
        yield pair


def test_submit_many_judges_in_order_and_stops_at_a_forged_signature(
        observer: tuple[Node, NodeClient], counted: Counter[tuple[str, bytes, bytes]]
) -> None:
    """One call admits a sender's consecutive nonces; a forged signature is refused and
    the txs after it are refused unchecked (one ed25519 check, not one per tx); an empty
    or oversized batch is INVALID_ARGUMENT, and a malformed tx is refused alone."""
    node, c = observer
    w = SENDERS[0]
    run = [make_tx(w, "transfer", n, CHAIN_ID, to=USER.address, amount=1) for n in range(5)]
    forged = replace(run[3], signature=bytes(64))
    reasons = c.submit_many([*run[:3], forged, run[4]])
    assert reasons[:3] == [None, None, None]
    assert reasons[3] == "bad tx signature"
    assert reasons[4] is not None and "not checked" in reasons[4]
    assert counted[(w.address, run[4].signing_bytes(CHAIN_ID), run[4].signature)] == 0
    assert (c.status()["mempool"], c.pending_nonce(w.address)) == (3, 3)
    assert c.submit_many(run[3:]) == [None, None]
    assert c.pending_nonce(w.address) == 5
    stub = node_pb2_grpc.NodeStub(c.channel)
    for n in (0, 1_001):
        with pytest.raises(grpc.RpcError) as e:
            stub.SubmitTxs(node_pb2.TxsRequest(txs=[canonical(run[0].to_dict())] * n),
                           timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    reply = stub.SubmitTxs(node_pb2.TxsRequest(txs=[b"not json", b"{}"]), timeout=10)
    assert [r.accepted for r in reply.replies] == [False, False]
    assert all(r.reason for r in reply.replies)


def test_block_size_comes_from_genesis(tmp_path: Path) -> None:
    """``max_block_txs`` is a genesis field (in the genesis hash): a node proposes at most
    that many txs and the ledger refuses a block with more."""
    small = genesis(max_block_txs=7)
    assert small.genesis_hash() != genesis().genesis_hash()
    assert Genesis.from_dict(small.to_dict()) == small
    with pytest.raises(ValueError):
        genesis(max_block_txs=0)
    node = Node(NodeConfig(tmp_path / "n", small, VALIDATORS[0], block_interval=1000.0))
    try:
        for tx in transfers(2):
            assert node.submit(tx) is None
        assert len(node.mempool.block_txs()) == 7
        chain = Chain(small)
        first = next(w for w in VALIDATORS if w.address ==
                     proposer_ranking(small.genesis_hash(), voting_set({}, small))[0])
        big, _ = Chain(genesis()).produce_block(transfers(1), first, int(time.time()))
        assert len(big.txs) == 10
        with pytest.raises(InvalidBlock, match="more than 7 txs"):
            chain.apply_block(forge(replace(big, header=replace(
                big.header, parent=small.genesis_hash())), list(big.txs), first))
        # this chain's own oversized block too (its header is checked before adoption)
        own, _ = chain.produce_block(transfers(1), first, int(time.time()))
        with pytest.raises(InvalidBlock, match="more than 7 txs"):
            chain.apply_block(own)
        assert chain.height == 0
    finally:
        node.stop()


def test_hundreds_of_txs_through_three_validator_processes(tmp_path: Path) -> None:
    """Smoke test of the node path the benchmark drives: 400 transfers submitted in
    batches to three real validator processes (split among them by sender) are all final
    on every node, with equal state roots at one height (correctness only, no timing)."""
    g = genesis(max_block_txs=150)
    procs: list[NodeProc] = []
    try:
        for i, w in enumerate(VALIDATORS):
            procs.append(NodeProc(tmp_path, f"v{i}", g, w,
                                  [procs[0].listen] if procs else []).start())
        txs = transfers(40)
        for i, p in enumerate(procs):  # sender k's txs all go to node k % 3, in order
            mine = [t for t in txs if t.sender in {w.address for w in SENDERS[i::3]}]
            with p.client() as c:
                assert c.submit_many(mine) == [None] * len(mine)
        for p in procs:
            with p.client() as c:
                wait_for(lambda c=c: all(c.nonce(w.address) == 40 for w in SENDERS),
                         f"all txs final on {p.dir.name}", timeout=90.0)
        heights = []
        for p in procs:
            with p.client() as c:
                heights.append(c.status()["height"])
        height = min(heights)
        assert len({block_at(p, height) for p in procs}) == 1
        counts = []
        for p in procs:
            with p.client() as c:
                blocks = [b for lo in range(1, height + 1, 128)
                          for b, _ in c.blocks(lo, min(lo + 127, height))]
            assert all(len(b.txs) <= 150 for b in blocks)
            counts.append(sum(len(b.txs) for b in blocks))
        assert counts == [len(txs)] * 3
    finally:
        for p in procs:
            p.kill()



def test_a_tx_judged_on_the_run_overlay_as_if_the_run_were_replayed() -> None:
    """The mempool judges a tx appended to a sender's run on the state entries the run
    leaves (``Chain.dry_run``'s overlay) instead of replaying the run: for random runs of
    transfers, burns and stakes near the balance, both give the same verdict and the same
    overlay after."""
    import random

    rng = random.Random(16)
    w = SENDERS[0]
    g = replace(genesis(), balances={**genesis().balances, w.address: 10_000})
    chain = Chain(g)
    for _ in range(150):
        run: list[Tx] = []
        for n in range(rng.randint(1, 6)):
            kind = rng.choice(["transfer", "burn", "stake"])
            amount = rng.randint(1, 4_000)
            payload = {"transfer": {"to": USER.address, "amount": amount},
                       "burn": {"amount": amount},
                       "stake": {"brain": 1, "delegate": "", "amount": amount}}[kind]
            run.append(make_tx(w, kind, n, CHAIN_ID, **payload))
        *head, last = run
        bad, overlay = chain.dry_run(head)
        if bad is not None:
            continue
        whole = chain.dry_run(run)
        appended = chain.dry_run([last], overlay)
        assert (whole[0] is None) == (appended[0] is None)
        if whole[0] is not None:
            assert whole[0][1] == appended[0][1]  # the same reason
        else:
            assert whole[1] == {**overlay, **appended[1]}
    assert chain.height == 0 and chain.state.balance(w.address) == 10_000


def test_apply_after_check_runs_nothing_again_yet_refuses_other_txs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``apply_block`` adopts the state ``check_block`` computed for the same block (its
    txs are not run again), but only for that very block: the same header (so the same
    hash) with other txs is refused, the state unchanged."""
    import ledger.chain
    g = genesis()
    chain, replay = Chain(g), Chain(g)
    first = next(w for w in VALIDATORS
                 if w.address == proposer_ranking(g.genesis_hash(), voting_set({}, g))[0])
    block, _ = Chain(g).produce_block(transfers(3), first, int(time.time()))
    chain.check_block(block)
    other = Block(block.header, block.txs[:-1])
    root = chain.state_root()
    with pytest.raises(InvalidBlock, match="tx root"):
        chain.apply_block(other)
    assert chain.state_root() == root and chain.height == 0
    chain.check_block(block)
    runs: list[int] = []
    real = ledger.chain.apply_block_in_place

    def counting(state: object, b: Block, *args: object) -> None:
        runs.append(b.height)
        real(state, b, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(ledger.chain, "apply_block_in_place", counting)
    chain.apply_block(block)
    assert runs == []
    monkeypatch.undo()
    replay.apply_block(block)
    assert chain.state_root() == replay.state_root() == block.header.state_root
    assert chain.block(1) == block and chain.head_hash == block.block_hash()


def test_hostile_txs_batches_are_refused_whole(observer: tuple[Node, NodeClient]) -> None:
    """A peer's "txs" envelope must be a list of 1..1,000 txs, each well formed and
    signed; one forged tx refuses the whole batch (an honest node forwards only txs it
    checked), so nothing of it is admitted. A batch of txs the node already holds is not
    fresh and is neither checked again nor forwarded."""
    node, c = observer
    w = SENDERS[1]
    good = [make_tx(w, "transfer", n, CHAIN_ID, to=USER.address, amount=1).to_dict()
            for n in range(3)]
    forged = {**good[1], "sig": "00" * 64}

    def send(obj: object) -> grpc.StatusCode:
        with grpc.insecure_channel(node.listen) as ch:
            try:
                node_pb2_grpc.NodeStub(ch).Gossip(node_pb2.Envelope(
                    kind="txs", payload=canonical(obj)), timeout=10)
            except grpc.RpcError as e:
                return e.code()
        return grpc.StatusCode.OK

    for junk in ({}, [], "x", [1, 2], [good[0]] * 1_001, [good[0], forged, good[2]],
                 [good[0], {**good[1], "fee": -1}]):
        assert send(junk) == grpc.StatusCode.INVALID_ARGUMENT, junk
    assert c.status()["mempool"] == 0
    assert send(good) == grpc.StatusCode.OK
    assert (c.status()["mempool"], c.pending_nonce(w.address)) == (3, 3)
    with grpc.insecure_channel(node.listen) as ch:
        reply = node_pb2_grpc.NodeStub(ch).Gossip(node_pb2.Envelope(
            kind="txs", payload=canonical(list(reversed(good)))), timeout=10)
    assert not reply.fresh
    assert c.status()["rejected"] == 7


def test_the_node_databases_stay_durable(tmp_path: Path) -> None:
    """Throughput is measured with durable commits: both of a node's SQLite files run in
    WAL mode with synchronous=FULL (2), so a final block survives power loss."""
    node = Node(NodeConfig(tmp_path / "n", genesis(), VALIDATORS[0], block_interval=1000.0))
    try:
        for db in (node.chain.store.db, node.store.db):  # type: ignore[attr-defined]
            assert db.execute("PRAGMA synchronous").fetchone()[0] == 2
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        node.stop()


def test_fuzzed_txs_batches_and_submit_batches_get_a_status(tmp_path: Path) -> None:
    """Hypothesis against the two batch paths (a "txs" envelope, a SubmitTxs call): valid
    batches with one tx replaced by any JSON, one field of one tx replaced, or bytes cut
    and flipped. Each gets a status (OK, INVALID_ARGUMENT or RESOURCE_EXHAUSTED), never
    an internal error; afterwards the node answers and holds only correctly signed txs."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    # the rate limit raised so the messages reach the parsers (it has its own tests)
    node = Node(NodeConfig(tmp_path / "fuzzed", genesis(), None, block_interval=1000.0,
                           rate=1e6, burst=1e6))
    node.start()
    c = NodeClient(node.listen)
    good = [make_tx(w, "transfer", 0, CHAIN_ID, to=USER.address, amount=1).to_dict()
            for w in SENDERS[:3]]
    anything = st.recursive(
        st.none() | st.booleans() | st.floats(allow_nan=False) | st.text(max_size=12)
        | st.integers(-(2**70), 2**70), lambda inner: st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)

    @st.composite
    def batches(draw: st.DrawFn) -> bytes:
        items = [dict(t) for t in good[:draw(st.integers(1, 3))]]
        i = draw(st.integers(0, len(items) - 1))
        how = draw(st.sampled_from(["item", "field", "bytes"]))
        if how == "item":
            items[i] = draw(anything)
        elif how == "field":
            items[i][draw(st.sampled_from(sorted(items[i])))] = draw(anything)
        raw = bytearray(json.dumps(items).encode())
        if how == "bytes":
            cut = draw(st.integers(0, len(raw)))
            raw = raw[:cut] + bytes(draw(st.binary(max_size=4)))
            for pos in draw(st.lists(st.integers(0, max(0, len(raw) - 1)), max_size=3)):
                if raw:
                    raw[pos] ^= 0x41
        return bytes(raw)

    ok = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT,
          grpc.StatusCode.RESOURCE_EXHAUSTED}
    stub = node_pb2_grpc.NodeStub(c.channel)

    @settings(max_examples=1_000, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(payload=batches())
    def fuzz(payload: bytes) -> None:
        try:  # SubmitTxs gets the batch's items one by one when it still parses
            items = json.loads(payload)
            each = [json.dumps(x).encode() for x in items] if isinstance(items, list) \
                and items else [payload]
        except ValueError:
            each = [payload]
        for call in (lambda: stub.Gossip(node_pb2.Envelope(kind="txs", payload=payload),
                                         timeout=10),
                     lambda: stub.SubmitTxs(node_pb2.TxsRequest(txs=each), timeout=10)):
            try:
                call()
                code = grpc.StatusCode.OK
            except grpc.RpcError as e:
                code = e.code()
            assert code in ok, code

    try:
        fuzz()
        assert c.status()["height"] == 0
        held = node.read(lambda _: node.mempool.txs())
        assert held and all(tx.verify_signature(CHAIN_ID) for tx in held)
    finally:
        c.close()
        node.stop()
