"""Byzantine safety of finality (issue #15; SPEC N1): one validator of four signs whatever
helps it, and the network delivers messages in the order that hurts most.

Three honest in-process ``Node``s (real SQLite, real signatures), not started: the test is
their network, so it decides who hears what and when; rounds move only when a node hears a
later round (round timeout 1000 s). The Byzantine validator Z (rank 0, a quarter of the
stake) is played by the test with Z's own key; honest votes are relayed, never invented
(ed25519 is deterministic, so re-signing what ``status()["my_vote"]`` shows gives the
bytes the node sent).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from node_harness import CHAIN_ID, make_genesis  # noqa: E402

from ledger.block import Block  # noqa: E402
from ledger.chain import Chain  # noqa: E402
from ledger.encoding import canonical  # noqa: E402
from ledger.genesis import Genesis  # noqa: E402
from ledger.keys import Wallet  # noqa: E402
from network.consensus import Vote, proposer_ranking, voting_set  # noqa: E402
from network.node import Node, NodeConfig  # noqa: E402
from network.protos import node_pb2  # noqa: E402

FOUR = [Wallet.from_seed(f"byz-validator-{i}") for i in range(4)]


def env(kind: str, obj: dict[str, Any]) -> node_pb2.Envelope:
    return node_pb2.Envelope(kind=kind, payload=canonical(obj))


def signed_votes(wallet: Wallet, block_hash: str, round_: int) -> list[node_pb2.Envelope]:
    """Every vote message the protocol has, signed by ``wallet`` for (1, round_, block)."""
    return [env("vote", Vote.make(wallet, CHAIN_ID, 1, block_hash, round_).to_dict())]


def relay_my_vote(src: Node, wallet: Wallet, dst: Node) -> None:
    """Deliver the vote ``src`` cast last (its status says which) to ``dst``."""
    mv = src.status()["my_vote"]
    assert mv is not None
    for e in signed_votes(wallet, mv["hash"], mv["round"]):
        dst.handle_envelope(e)


@pytest.fixture
def four(tmp_path: Path) -> Iterator[tuple[Genesis, dict[str, Wallet], dict[str, Node]]]:
    g = make_genesis(FOUR)
    by_addr = {w.address: w for w in FOUR}
    z, b, a, c = (by_addr[x] for x in proposer_ranking(Chain(g).head_hash, voting_set({}, g)))
    wallets = {"Z": z, "B": b, "A": a, "C": c}
    nodes = {name: Node(NodeConfig(tmp_path / name, g, wallets[name], block_interval=0.0,
                                   round_timeout=1000.0)) for name in "ABC"}
    try:
        yield g, wallets, nodes
    finally:
        for n in nodes.values():
            n.stop()


def test_one_double_signer_cannot_make_two_blocks_final(
        four: tuple[Genesis, dict[str, Wallet], dict[str, Node]]) -> None:
    """The attack on one-phase round-and-lock voting: Z votes for B's block X to B and for
    its own block Y to A in the same round; A, which only sees the Y half, takes C's and
    Z's round-1 votes for Y as proof that X got no 2/3 there, unlocks, and helps Y to
    2/3 in round 2, while B already applied X."""
    g, w, n = four
    Z = w["Z"]
    y_block, _ = Chain(g).produce_block([], Z, int(time.time()))  # rank 0: Z's own block
    Y = y_block.block_hash()
    # round 0: only C hears Y, and votes for it (rank 0 is eligible in round 0)
    n["C"].handle_envelope(env("block", y_block.to_dict()))
    assert n["C"].status()["my_vote"]["hash"] == Y
    # round 1: Z pulls B into round 1, where B (rank 1) proposes X and votes for it
    for e in signed_votes(Z, Y, 1):
        n["B"].handle_envelope(e)
    x_block: Block = next(iter(n["B"]._proposals[1].values()))
    X = x_block.block_hash()
    assert X != Y and n["B"].status()["my_vote"]["hash"] == X
    # A hears X and B's vote: it joins round 1 and votes X
    n["A"].handle_envelope(env("block", x_block.to_dict()))
    relay_my_vote(n["B"], w["B"], n["A"])
    assert n["A"].status()["my_vote"]["hash"] == X
    # B hears A's vote and Z's vote for X: X is final at B
    relay_my_vote(n["A"], w["A"], n["B"])
    for e in signed_votes(Z, X, 1):
        n["B"].handle_envelope(e)
    # C is pulled into round 1 by Z and votes Y again (locked); A hears C and Z for Y
    for e in signed_votes(Z, Y, 1):
        n["C"].handle_envelope(e)
        n["A"].handle_envelope(e)
    relay_my_vote(n["C"], w["C"], n["A"])
    # round 2: Z gives A its block Y and pulls A and C into round 2
    n["A"].handle_envelope(env("block", y_block.to_dict()))
    for e in signed_votes(Z, Y, 2):
        n["A"].handle_envelope(e)
        n["C"].handle_envelope(e)
    relay_my_vote(n["C"], w["C"], n["A"])
    relay_my_vote(n["A"], w["A"], n["C"])
    finals = {name: node.status()["head_hash"] for name, node in n.items()
              if node.status()["height"] >= 1}
    assert len(set(finals.values())) <= 1, f"two blocks final at height 1: {finals}"
