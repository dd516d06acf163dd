"""Byzantine safety of finality (issue #15; SPEC N1): one validator of four signs whatever
helps it, and the network delivers messages in the order that hurts most.

Three honest in-process ``Node``s (real SQLite, real signatures), not started: the test is
their network and their clock (``network.node.time`` replaced by a clock only the test
moves; ``Node.tick`` runs the state machine once), so it decides who hears what and
when. The Byzantine validator Z (rank 0, a quarter of the stake) is played by the test
with Z's own key; honest votes are relayed, never invented (ed25519 is deterministic, so
re-signing what ``status()`` shows a node voted gives the bytes the node sent).
"""

from __future__ import annotations

import queue
import random
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from node_harness import CHAIN_ID, Clock, env, make_genesis  # noqa: E402

import network.node  # noqa: E402
from ledger.block import Block  # noqa: E402
from ledger.chain import Chain  # noqa: E402
from ledger.economics import slash_amount  # noqa: E402
from ledger.genesis import Genesis  # noqa: E402
from ledger.keys import Wallet  # noqa: E402
from ledger.tx import make_tx  # noqa: E402
from ledger.units import BASED, DEFAULT_REGISTRATION_FEE  # noqa: E402
from network.finality import PRECOMMIT, PREVOTE, Vote, proposer_ranking, voting_set  # noqa: E402
from network.node import VOTE_WINDOW, Node, NodeConfig  # noqa: E402
from network.protos import node_pb2  # noqa: E402

FOUR = [Wallet.from_seed(f"byz-validator-{i}") for i in range(4)]



ROUND = 10.0  # round timeout on the test's clock



def z_vote(wallet: Wallet, phase: str, block_hash: str, round_: int) -> node_pb2.Envelope:
    return env("vote", Vote.make(wallet, CHAIN_ID, 1, block_hash, round_, phase).to_dict())


def relay(src: Node, wallet: Wallet, dst: Node, phase: str) -> None:
    """Deliver the latest ``phase`` vote ``src`` cast (its status says which) to ``dst``."""
    mine = src.status()["my_vote" if phase == PREVOTE else "my_precommit"]
    assert mine is not None, f"{phase} expected"
    dst.handle_envelope(z_vote(wallet, phase, mine["hash"], mine["round"]))


@pytest.fixture
def four(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
         ) -> Iterator[tuple[Genesis, dict[str, Wallet], dict[str, Node], Clock]]:
    clock = Clock()
    monkeypatch.setattr(network.node, "time", clock)
    g = make_genesis(FOUR)
    by_addr = {w.address: w for w in FOUR}
    z, b, a, c = (by_addr[x] for x in proposer_ranking(Chain(g).head_hash, voting_set({}, g)))
    wallets = {"Z": z, "B": b, "A": a, "C": c}
    nodes = {name: Node(NodeConfig(tmp_path / name, g, wallets[name], block_interval=0.0,
                                   round_timeout=ROUND)) for name in "ABC"}
    try:
        yield g, wallets, nodes, clock
    finally:
        for n in nodes.values():
            n.stop()


def test_one_double_signer_cannot_make_two_blocks_final(
        four: tuple[Genesis, dict[str, Wallet], dict[str, Node], Clock]) -> None:
    """The attack that broke one-phase voting, played against prevote/precommit: Z votes
    for B's block X on B's side and for its own block Y on C's side in the same rounds;
    B finalizes X, A is kept from seeing that. A is locked on X (it precommitted on a POL
    for X); Y can get 2/3 prevotes only with A or B, so neither unlocks and Y is never
    final. Z's two prevotes of one round, both seen by A, are double signing: recorded
    and turned into an evidence tx. After the network heals everyone finalizes X."""
    g, w, n, clock = four
    A, B, C = n["A"], n["B"], n["C"]
    Z = w["Z"]
    y_block, _ = Chain(g).produce_block([], Z, int(clock.now))  # rank 0: Z's own block
    Y = y_block.block_hash()
    # round 0: only C hears Y (with Z's votes for it) and prevotes it; no POL anywhere
    C.handle_envelope(env("block", y_block.to_dict()))
    for phase in (PREVOTE, PRECOMMIT):
        C.handle_envelope(z_vote(Z, phase, Y, 0))
    assert C.status()["my_vote"]["hash"] == Y and C.status()["my_precommit"] is None
    # round 1 on everyone's clock: B (rank 1) proposes X and prevotes it
    clock.now += ROUND
    for node in n.values():
        node.tick()
    x_block: Block = next(iter(B._proposals[1].values()))
    X = x_block.block_hash()
    assert X != Y and B.status()["my_vote"] == {"height": 1, "round": 1, "hash": X}
    A.handle_envelope(env("block", x_block.to_dict()))
    assert A.status()["my_vote"]["hash"] == X
    C.tick()
    assert C.status()["my_vote"] == {"height": 1, "round": 1, "hash": Y}  # C knows no X
    # Z prevotes X to A and B, Y to C; A and B see a POL for X and precommit (lock) it
    for node in (A, B):
        node.handle_envelope(z_vote(Z, PREVOTE, X, 1))
    C.handle_envelope(z_vote(Z, PREVOTE, Y, 1))
    relay(A, w["A"], B, PREVOTE)
    relay(B, w["B"], A, PREVOTE)
    assert A.status()["my_precommit"]["hash"] == X == B.status()["my_precommit"]["hash"]
    # B gets A's and Z's precommits: X is final at B; A never hears of it
    relay(A, w["A"], B, PRECOMMIT)
    B.handle_envelope(z_vote(Z, PRECOMMIT, X, 1))
    assert B.status()["height"] == 1 and B.status()["head_hash"] == X
    # Z now works on A and C for Y: its Y votes of rounds 1 and 2, C's votes, Y itself
    A.handle_envelope(env("block", y_block.to_dict()))
    for phase in (PREVOTE, PRECOMMIT):
        A.handle_envelope(z_vote(Z, phase, Y, 1))  # A saw Z prevote X in round 1 too
    relay(C, w["C"], A, PREVOTE)
    clock.now += ROUND
    for node in (A, C):
        node.tick()
        for phase in (PREVOTE, PRECOMMIT):
            node.handle_envelope(z_vote(Z, phase, Y, 2))
    relay(C, w["C"], A, PREVOTE)
    relay(A, w["A"], C, PREVOTE)
    assert A.status()["my_vote"] == {"height": 1, "round": 2, "hash": X}  # still locked
    finals = {name: node.status()["head_hash"] for name, node in n.items()
              if node.status()["height"] >= 1}
    assert len(set(finals.values())) <= 1, f"two blocks final at height 1: {finals}"
    assert A.status()["height"] == 0 and C.status()["height"] == 0
    # the double signing A saw is recorded and on its way to the chain as an evidence tx
    st = A.status()
    assert st["double_signs"] >= 1
    assert {v["voter"] for pair in st["double_sign_list"] for v in pair} == {Z.address}
    assert st["mempool"] == 1
    # the partition heals: B's certificate reaches A and C, and X is final everywhere
    cert = B.store.cert(1)
    assert cert is not None and cert[0] == X
    for node in (A, C):
        node.handle_envelope(env("block", x_block.to_dict()))
        for d in cert[1]:
            node.handle_envelope(env("vote", d))
    assert {(node.status()["height"], node.status()["head_hash"]) for node in n.values()} \
        == {(1, X)}


# ---- the network test: four live nodes over real gRPC, one of them Byzantine ---------
STAKE = 1_000 * BASED
WAIT = 120.0


class LiveNode(Node):
    """A node whose links the test can cut (a partition): peers in ``blocked`` are dropped
    from its peer table and never re-added until ``heal``; the other side does the same,
    so neither gossip, Hello nor sync crosses the cut."""

    def __init__(self, config: NodeConfig) -> None:
        super().__init__(config)
        self.blocked: set[str] = set()

    def _add_peer(self, listen: str) -> None:
        if listen not in self.blocked:
            super()._add_peer(listen)

    def cut(self, listens: set[str]) -> None:
        with self._lock:
            self.blocked = set(listens)
            for listen in listens:
                p = self._peers.pop(listen, None)
                if p is not None and p.channel is not None:
                    p.channel.close()

    def heal(self, listens: set[str]) -> None:
        with self._lock:
            self.blocked = set()
            for listen in listens:
                self._add_peer(listen)


class ByzantineNode(LiveNode):
    """Once ``evil``: at every height and in every round it proposes two blocks and signs a
    prevote and a precommit for each, sending one half to half of its peers and the other
    half to the rest (it never votes for anyone else's block). It still follows the chain
    (finalizes what the others decide) so it keeps attacking the next height."""

    evil = False

    def _step(self) -> None:
        if not self.evil:
            super()._step()
            return
        for _ in range(VOTE_WINDOW):
            if not self._try_finalize():
                break
        self._equivocate()

    def _equivocate(self) -> None:
        h, r = self.chain.height + 1, self._current_round()
        if (h, r) in self._attacked or self.wallet is None:
            return
        self._attacked.add((h, r))
        if h not in self._twins:
            t = max(int(time.time()), int(self.chain.state.meta("time")) + 1)
            self._twins = {h: [self.chain.produce_block([], self.wallet, t + i)[0]
                               for i in range(2)]}
        peers = sorted(self._peers.values(), key=lambda p: p.listen)
        for i, peer in enumerate(peers):
            block = self._twins[h][i % 2]
            out = [env("block", block.to_dict())]
            out += [env("vote", Vote.make(self.wallet, CHAIN_ID, h, block.block_hash(), r,
                                          phase).to_dict()) for phase in (PREVOTE, PRECOMMIT)]
            for e in out:
                e.origin = self.listen
                try:
                    self._out.put_nowait((peer, e))
                except queue.Full:
                    pass

    _attacked: set[tuple[int, int]] = set()
    _twins: dict[int, list[Block]] = {}


def _heights(nodes: list[LiveNode]) -> list[int]:
    return [n.status()["height"] for n in nodes]


def _wait(cond: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _run_byzantine_network(root: Path, seed: int, heights: int) -> dict[str, Any]:
    """Four validators of equal stake, one Byzantine from the moment all are staked, for
    ``heights`` heights, with a partition of the honest ones healed midway; returns what
    the test asserts on."""
    rng = random.Random(seed)
    g = make_genesis(FOUR)
    bad = rng.randrange(4)
    nodes: list[LiveNode] = []
    for i, w in enumerate(FOUR):
        cls = ByzantineNode if i == bad else LiveNode
        nodes.append(cls(NodeConfig(root / f"v{i}", g, w, block_interval=0.2,
                                    round_timeout=1.0, hello_interval=0.3)))
    byz = nodes[bad]
    assert isinstance(byz, ByzantineNode)
    byz._attacked, byz._twins = set(), {}
    honest = [n for n in nodes if n is not byz]
    try:
        for n in nodes:
            n.start()
        for n in nodes[1:]:
            n.hello(node_pb2.HelloRequest(genesis_hash=g.genesis_hash(),
                                          listen=nodes[0].listen))
        for w, n in zip(FOUR, nodes, strict=True):  # register and stake, equal stakes
            assert n.submit(make_tx(w, "register", 0, CHAIN_ID, brain=1, role="validator",
                                    max_fee=DEFAULT_REGISTRATION_FEE)) is None
            assert n.submit(make_tx(w, "stake", 1, CHAIN_ID, brain=1, delegate=w.address,
                                    amount=STAKE)) is None
        _wait(lambda: all(n.read(lambda c: len(c.validator_set()) == 4) for n in nodes),
              "four staked validators")
        start = max(_heights(honest))
        byz.evil = True
        target = start + heights
        # partition midway: one honest validator cut off from everyone, the two others
        # and the Byzantine one on the other side
        _wait(lambda: min(_heights(honest)) >= start + heights // 2, "the first half")
        lone = rng.choice(honest)
        rest = [n for n in honest if n is not lone]
        lone.cut({n.listen for n in rest} | {byz.listen})
        for n in [*rest, byz]:
            n.cut({lone.listen})
        cut_at = lone.status()["height"]
        _wait(lambda: min(_heights(rest)) >= cut_at + 3, "the majority side to go on")
        lone_during = lone.status()["height"]
        lone.heal({n.listen for n in rest} | {byz.listen})
        for n in [*rest, byz]:
            n.heal({lone.listen})
        _wait(lambda: min(_heights(honest)) >= target, f"height {target} everywhere")
        top = min(_heights(honest))
        chains = [[n.read(lambda c, h=h: c.block(h).block_hash()) for h in range(1, top + 1)]
                  for n in honest]
        z = FOUR[bad].address
        first = honest[0]
        return {
            "forks": sum(len({c[h] for c in chains}) > 1 for h in range(top)),
            "tomb": first.read(lambda c: c.state.get("tomb", z)),
            "stake": first.read(lambda c: c.state.get("stake", (1, z, z))),
            "double_signs": sum(n.status()["double_signs"] for n in honest),
            "lone_gap": (cut_at, lone_during),
            "start": start, "top": top,
        }
    finally:
        for n in nodes:
            n.stop()


def _check_run(result: dict[str, Any]) -> None:
    assert result["forks"] == 0, "honest nodes hold different blocks at some height"
    assert result["tomb"] is not None, "the double-signer is not tombstoned on chain"
    assert result["stake"] == STAKE - slash_amount(STAKE), "the double-signer kept its stake"
    assert result["double_signs"] > 0
    assert result["top"] > result["start"]
    cut_at, lone_during = result["lone_gap"]
    assert lone_during <= cut_at + 1, "the lone validator finalized alone: no partition"


def test_a_double_signer_with_a_partition_no_fork_slashed_fast(tmp_path: Path) -> None:
    """The fast version of the network test below: one seed, ten heights."""
    _check_run(_run_byzantine_network(tmp_path, seed=0, heights=10))


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_double_signer_with_a_partition_no_fork_slashed(tmp_path: Path, seed: int) -> None:
    """Issue #15's Byzantine test: 4 validators of equal stake, one double-signs, proposes
    conflicting blocks and votes for both at every height for 30 heights, a partition of
    the honest ones is healed midway: no fork, the chain keeps finalizing, the offender is
    slashed on chain."""
    _check_run(_run_byzantine_network(tmp_path, seed=seed, heights=30))
