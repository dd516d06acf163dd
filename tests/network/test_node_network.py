"""Three validator processes, a SIGKILLed validator, a late joiner (SPEC N1, issue #8).

Real ``python -m network.cli`` processes on 127.0.0.1 with real SQLite files. The tests
share one network and run in file order: they follow its life (bootstrap by genesis
authorities → staked validators → a crash → a newcomer). Only bounded waits; nothing is
asserted about speed.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from node_harness import (  # noqa: E402
    CHAIN_ID,
    OPERATOR,
    START,
    VALIDATORS,
    NodeProc,
    block_at,
    make_genesis,
)

from ledger.chain import Chain  # noqa: E402
from ledger.genesis import Genesis  # noqa: E402
from ledger.tx import make_tx  # noqa: E402
from ledger.units import BASED, DEFAULT_REGISTRATION_FEE  # noqa: E402

STAKE = 1_000 * BASED
WAIT = 90.0


class Net:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.genesis: Genesis = make_genesis()
        self.procs: list[NodeProc] = []

    def node(self, name: str, wallet_index: int | None, bootstrap: list[str]) -> NodeProc:
        wallet = VALIDATORS[wallet_index] if wallet_index is not None else None
        p = NodeProc(self.root, name, self.genesis, wallet, bootstrap)
        self.procs.append(p)
        return p.start()


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    n = Net(tmp_path_factory.mktemp("net"))
    try:
        first = n.node("v0", 0, [])
        n.node("v1", 1, [first.listen])
        n.node("v2", 2, [first.listen])
        yield n
    finally:
        for p in n.procs:
            p.kill()


def heights(nodes: list[NodeProc]) -> list[int]:
    out = []
    for p in nodes:
        with p.client() as c:
            out.append(c.status()["height"])
    return out


def wait_height(nodes: list[NodeProc], h: int) -> None:
    for p in nodes:
        with p.client() as c:
            c.wait_until(lambda s: s["height"] >= h, WAIT)


def assert_agree(nodes: list[NodeProc], h: int) -> str:
    """All nodes hold the same final block (hence state root) at height ``h``."""
    seen = {p.dir.name: block_at(p, h) for p in nodes}
    assert len(set(seen.values())) == 1, seen
    return next(iter(seen.values()))[1]


def test_validators_register_stake_and_finalize(net: Net) -> None:
    v = net.procs[:3]
    wait_height(v, 2)  # genesis authorities produce and finalize before anyone staked
    for i, (p, w) in enumerate(zip(v, VALIDATORS, strict=True)):
        with p.client() as c:
            nonce = c.nonce(w.address)
            reg = make_tx(w, "register", nonce, CHAIN_ID, brain=1, role="validator",
                          max_fee=DEFAULT_REGISTRATION_FEE)
            stake = make_tx(w, "stake", nonce + 1, CHAIN_ID, brain=1, delegate=w.address,
                            amount=STAKE)
            # a node other than the sender's: gossip must carry the txs to the proposers
            with v[(i + 1) % 3].client() as other:
                assert other.submit(reg) is None
                assert other.submit(stake) is None
                assert other.pending_nonce(w.address) == nonce + 2  # mempool or chain
    expected = {w.address: STAKE for w in VALIDATORS}
    for p in v:
        with p.client() as c:
            c.wait_until(lambda s: s["validators"] == expected, WAIT)
    with v[0].client() as c:
        info = c.brain(1)
        assert info is not None
        assert sorted(info["validators"].values()) == sorted(w.address for w in VALIDATORS)
        assert all(r["role"] == "validator" for r in info["registrations"])
        assert c.balance(OPERATOR.address) == START + 3 * DEFAULT_REGISTRATION_FEE
        for w in VALIDATORS:
            assert c.account(w.address)["nonce"] == 2
    # the staked set (not the authorities' fallback) now finalizes further blocks
    h = max(heights(v)) + 3
    wait_height(v, h)
    assert_agree(v, h)
    with v[1].client() as c:
        [(_, votes)] = c.blocks(h, h)
    assert len({d["voter"] for d in votes}) >= 2  # a 2/3 certificate travels with the block


def test_sigkill_validator_others_finalize_and_it_resyncs(net: Net) -> None:
    v = net.procs[:3]
    victim, others = v[2], v[:2]
    h0 = max(heights(others))
    victim.kill()
    wait_height(others, h0 + 4)  # 2 of 3 equal stakes = 2/3: still final
    assert_agree(others, h0 + 4)
    victim.start()  # same data dir, same port
    target = max(heights(others))
    wait_height([victim], target)
    assert_agree(v, target)
    # and it takes part again: the network keeps finalizing with all three
    wait_height(v, target + 3)
    assert_agree(v, target + 3)


def test_late_joiner_syncs_from_zero(net: Net) -> None:
    v = net.procs[:3]
    target = max(heights(v))
    late = net.node("late", None, [v[1].listen])
    wait_height([late], target)
    root = assert_agree([*v, late], target)
    with late.client() as c:
        st = c.status()
        # it was given one peer and learned the others by peer exchange
        assert {p.listen for p in v} <= set(st["known_peers"]), st["known_peers"]
        blocks = []
        for lo in range(1, target + 1, 128):
            blocks += [b for b, _ in c.blocks(lo, min(target, lo + 127))]
    # an independent replay of the served blocks reaches the same root
    replay = Chain(net.genesis)
    for b in blocks:
        replay.apply_block(b)
    assert replay.height == target and replay.state_root() == root
