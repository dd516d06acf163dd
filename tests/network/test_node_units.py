"""Unit-level checks of the node's rules (SPEC N1, issue #8): proposer ranking, quorum,
voting set, wallet files, and equivocation fed as two conflicting signed blocks."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from node_harness import CHAIN_ID, OPERATOR, USER, VALIDATORS, make_genesis  # noqa: E402

from ledger.block import Block  # noqa: E402
from ledger.chain import Chain  # noqa: E402
from ledger.encoding import canonical  # noqa: E402
from ledger.keys import Wallet  # noqa: E402
from ledger.tx import make_tx  # noqa: E402
from network.client import NodeClient  # noqa: E402
from network.finality import (  # noqa: E402
    PRECOMMIT,
    PREVOTE,
    Vote,
    has_quorum,
    proposer_ranking,
    voting_set,
)
from network.node import Node, NodeConfig  # noqa: E402
from network.protos import node_pb2  # noqa: E402
from network.wallet import WalletFileError, load_or_create  # noqa: E402


def test_ranking_is_a_deterministic_stake_weighted_permutation() -> None:
    weights = {"a" * 64: 3, "b" * 64: 1, "c" * 64: 1, "d" * 64: 0}
    r = proposer_ranking("11" * 32, weights)
    assert r == proposer_ranking("11" * 32, dict(reversed(list(weights.items()))))
    assert sorted(r) == ["a" * 64, "b" * 64, "c" * 64]  # zero stake never proposes
    firsts = [proposer_ranking(f"{i:064x}", weights)[0] for i in range(3000)]
    share = firsts.count("a" * 64) / len(firsts)
    assert 0.55 < share < 0.65  # 3/5 of the stake leads ~3/5 of the heights
    assert len({tuple(proposer_ranking(f"{i:064x}", weights)) for i in range(50)}) > 1


def test_quorum_is_two_thirds_of_stake() -> None:
    w = {"a": 1, "b": 1, "c": 1}
    assert has_quorum(["a", "b"], w) and not has_quorum(["a"], w)
    assert not has_quorum(["a", "a", "x"], w)  # duplicates and outsiders do not count
    assert has_quorum(["a"], {"a": 2, "b": 1}) and not has_quorum(["b"], {"a": 2, "b": 1})
    assert not has_quorum(["a"], {"a": 65, "b": 35}) and has_quorum(["a"], {"a": 67, "b": 33})
    assert not has_quorum([], {})


def test_voting_set_falls_back_to_authorities() -> None:
    g = make_genesis()
    auth = {w.address: 1 for w in VALIDATORS}
    assert voting_set({}, g) == auth
    outsider = Wallet.from_seed("outsider").address
    assert voting_set({outsider: 5}, g) == auth  # stake outside the authorities cannot propose
    assert voting_set({VALIDATORS[1].address: 9, outsider: 5}, g) == {VALIDATORS[1].address: 9}


def test_wallet_file_created_private_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "w.key"
    w = load_or_create(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert load_or_create(path).address == w.address
    path.chmod(0o644)
    with pytest.raises(WalletFileError, match="group/world"):
        load_or_create(path)
    path.chmod(0o600)
    path.write_text("zz")
    with pytest.raises(WalletFileError):
        load_or_create(path)


def _env(kind: str, obj: dict) -> node_pb2.Envelope:
    return node_pb2.Envelope(kind=kind, payload=canonical(obj))


def test_equivocation_is_recorded_and_the_second_block_is_no_free_choice(
        tmp_path: Path) -> None:
    """Two signed blocks by one proposer at one height: evidence. The second is still kept
    (a POL may form for it: then honest validators need it), but neither is anyone's free
    choice any more; a block is applied only with 2/3 precommits — prevotes are not
    enough."""
    g = make_genesis()
    a, b, c = VALIDATORS
    now = int(time.time())
    first, _ = Chain(g).produce_block([], a, now + 2)
    second, _ = Chain(g).produce_block([], a, now + 1)  # same proposer, same height
    assert first.block_hash() != second.block_hash()
    node = Node(NodeConfig(tmp_path / "n", g, None))  # an observer; fed directly
    try:
        assert node.handle_envelope(_env("block", first.to_dict())) is True
        assert node.handle_envelope(_env("block", second.to_dict())) is True  # kept, once
        assert node.handle_envelope(_env("block", second.to_dict())) is False
        st = node.status()
        assert st["evidence"] == 1
        ev = st["evidence_list"][0]
        assert (ev["height"], ev["proposer"]) == (1, a.address)
        assert (ev["first"], ev["second"]) == (first.block_hash(), second.block_hash())
        assert [Block.from_dict({"header": h, "txs": []}).header.verify_signature(CHAIN_ID)
                for h in ev["headers"]] == [True, True]  # the evidence proves itself
        # 2/3 of the voting set prevotes the second block: a POL, not finality
        for v in (b, c):
            node.handle_envelope(_env("vote", Vote.make(v, CHAIN_ID, 1, second.block_hash(),
                                                        0, PREVOTE).to_dict()))
        assert node.status()["height"] == 0
        assert node.status()["pol"] == {"round": 0, "hash": second.block_hash()}
        # the first block with 2/3 precommits in one round is final
        for v in (b, c):
            node.handle_envelope(_env("vote", Vote.make(v, CHAIN_ID, 1, first.block_hash(),
                                                        1, PRECOMMIT).to_dict()))
        assert (node.status()["height"], node.status()["head_hash"]) == (1, first.block_hash())
        # a conflicting block for a height that is already final is evidence too
        third, _ = Chain(g).produce_block([], a, now + 3)
        node.handle_envelope(_env("block", third.to_dict()))
        assert node.status()["evidence"] == 2
    finally:
        node.stop()
    again = Node(NodeConfig(tmp_path / "n", g, None))  # evidence and chain persist
    try:
        st = again.status()
        assert st["evidence"] == 2 and st["height"] == 1
    finally:
        again.stop()


def test_a_tx_admitted_while_alone_reaches_peers_that_come_later(tmp_path: Path) -> None:
    """The first node of a network admits txs before it has any peer (its own register tx,
    the operator's config); gossip is fire-and-forget, so it must send them again."""
    g = make_genesis()
    cfg = {"block_interval": 1000.0, "announce_interval": 0.3, "hello_interval": 0.2}
    first = Node(NodeConfig(tmp_path / "first", g, None, **cfg))  # observers: no blocks
    later = Node(NodeConfig(tmp_path / "later", g, None, **cfg))
    try:
        first.start()
        tx = make_tx(USER, "transfer", 0, CHAIN_ID, to=OPERATOR.address, amount=1)
        assert first.submit(tx) is None  # admitted, gossiped to nobody
        later.start()
        later.hello(node_pb2.HelloRequest(genesis_hash=g.genesis_hash(), listen=first.listen))
        deadline = time.monotonic() + 30.0
        while later.status()["mempool"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        with NodeClient(later.listen) as c:
            assert c.pending_nonce(USER.address) == 1  # the tx is in the later node's pool
    finally:
        first.stop()
        later.stop()
