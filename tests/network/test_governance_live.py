"""Governance that acts, on a live network (issue #16; SPEC L8, N1).

Three validator processes (``python -m network.cli`` on 127.0.0.1, real SQLite files). The
operator stakes two GigaBrains (#3, #4) and proposes two parameter changes in year one:
raise the network's minimum fee to 5 (nobody objects: it passes by default) and raise the
default registration fee (both GigaBrains vote no: vetoed). Then, on every node:

- the same final block and state root just before, at and after the execution height;
- the value before and after that height, replayed from the final blocks (each block's
  state root recomputed from its txs, so the roots every node signed commit to it);
- each node's own mempool admitting a fee-0 tx before and refusing it after;
- each node's own database, reopened after the processes stop, holding the new minimum
  fee and the old registration fee.

Only bounded waits; nothing is asserted about speed.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator
from pathlib import Path

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
)

from ledger.block import Block  # noqa: E402
from ledger.chain import Chain  # noqa: E402
from ledger.genesis import Genesis  # noqa: E402
from ledger.keys import Wallet  # noqa: E402
from ledger.tx import Tx, make_tx  # noqa: E402
from ledger.units import BASED  # noqa: E402

WINDOW, DELAY = 5, 2  # voting period and execution delay, in blocks
NEW_MIN_FEE = 5
WAIT = 90.0


@dataclasses.dataclass
class Net:
    genesis: Genesis
    nodes: list[NodeProc]


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    genesis = dataclasses.replace(make_genesis(), voting_period=WINDOW, execution_delay=DELAY)
    root = tmp_path_factory.mktemp("gov")
    nodes: list[NodeProc] = []
    try:
        for i, w in enumerate(VALIDATORS):
            p = NodeProc(root, f"v{i}", genesis, w, [nodes[0].listen] if nodes else [])
            nodes.append(p)
            p.start()
        yield Net(genesis, nodes)
    finally:
        for p in nodes:
            p.kill()


def wait_height(nodes: list[NodeProc], h: int) -> None:
    for p in nodes:
        with p.client() as c:
            c.wait_until(lambda s: s["height"] >= h, WAIT)


def final_blocks(node: NodeProc, hi: int) -> list[Block]:
    """Blocks 1..hi of a node, in calls of at most 128 (the node's cap)."""
    out: list[Block] = []
    with node.client() as c:
        while len(out) < hi:
            lo = len(out) + 1
            got = [b for b, _ in c.blocks(lo, min(hi, lo + 127))]
            assert got, f"{node.dir.name} served no block from {lo}"
            out += got
    return out


def transfer(node: NodeProc, wallet: Wallet, fee: int) -> Tx:
    with node.client() as c:
        nonce = c.pending_nonce(wallet.address)
    return make_tx(wallet, "transfer", nonce, CHAIN_ID, fee=fee, to=USER.address, amount=1)


def test_a_passed_change_takes_effect_at_its_height_on_every_node(net: Net) -> None:
    nodes = net.nodes
    wait_height(nodes, 2)
    with nodes[0].client() as c:
        n = c.pending_nonce(OPERATOR.address)
    txs = [
        make_tx(OPERATOR, "stake", n, CHAIN_ID, brain=3, delegate="", amount=1_000 * BASED),
        make_tx(OPERATOR, "stake", n + 1, CHAIN_ID, brain=4, delegate="", amount=1_000 * BASED),
        make_tx(OPERATOR, "propose_param", n + 2, CHAIN_ID, title="network min fee 5",
                param="min_fee", value=NEW_MIN_FEE),
        make_tx(OPERATOR, "propose_param", n + 3, CHAIN_ID, title="dearer Brains",
                param="registration_fee", value=1_000 * BASED),
        # proposal ids 0 and 1 (a fresh chain); both GigaBrains veto the second
        make_tx(OPERATOR, "vote", n + 4, CHAIN_ID, proposal=1, brain=3, approve=False),
        make_tx(OPERATOR, "vote", n + 5, CHAIN_ID, proposal=1, brain=4, approve=False),
    ]
    with nodes[1].client() as c:  # a node other than the one asked for the nonce
        assert c.submit_many(txs) == [None] * len(txs)
    # before: every node's mempool takes a fee-0 tx
    for p, w in zip(nodes, VALIDATORS, strict=True):
        with p.client() as c:
            assert c.submit(transfer(p, w, 0)) is None, p.dir.name

    # once all six are final, find the min-fee proposal's block: the rules fix its
    # execution height at created + voting period + execution delay
    with nodes[0].client() as c:
        for _ in range(int(WAIT)):  # bounded: one look per block
            if c.nonce(OPERATOR.address) == n + len(txs):
                break
            h = c.status()["height"]
            c.wait_until(lambda s, h=h: s["height"] > h, WAIT)
        assert c.nonce(OPERATOR.address) == n + len(txs), "the txs never became final"
        head = c.status()["height"]
        proposed = next(b.header.height for b, _ in c.blocks(1, head) for t in b.txs
                        if t.kind == "propose_param" and t.payload["param"] == "min_fee")
    executes = proposed + WINDOW + DELAY
    wait_height(nodes, executes + 1)

    # the same final block and state root on every node around the execution height
    for h in (executes - 1, executes, executes + 1):
        seen = {p.dir.name: block_at(p, h) for p in nodes}
        assert len(set(seen.values())) == 1, (h, seen)

    # the value before and after, replayed block by block from those final blocks
    replay = Chain(net.genesis)
    before = replay.params()
    assert before["min_fee"] == net.genesis.min_fee == 0
    values = {}
    for block in final_blocks(nodes[2], executes + 1):
        replay.apply_block(block)  # recomputes and checks each header's state root
        values[replay.height] = replay.params()
    assert values[executes - 1]["min_fee"] == 0
    assert values[executes]["min_fee"] == NEW_MIN_FEE
    assert values[executes + 1]["registration_fee"] == before["registration_fee"]
    assert replay.state.get("prop", 0).status == "executed"
    assert (replay.state.get("prop", 1).status, replay.state.get("prop", 1).votes_against) == (
        "rejected", 2)

    # after: every node shows the live value (what its clients sign with), its mempool
    # refuses a fee below the new minimum and takes one at it
    for p, w in zip(nodes, VALIDATORS, strict=True):
        with p.client() as c:
            assert c.status()["params"]["min_fee"] == NEW_MIN_FEE, p.dir.name
            assert c.submit(transfer(p, w, 0)) == f"fee below minimum {NEW_MIN_FEE}"
            assert c.submit(transfer(p, w, NEW_MIN_FEE)) is None, p.dir.name

    # each node's own database holds the live values
    for p in nodes:
        assert p.terminate() == 0, p.log_tail()
        chain = Chain.open_sqlite(p.dir / "data" / "chain.db")
        try:
            assert chain.height >= executes
            assert chain.params()["min_fee"] == NEW_MIN_FEE, p.dir.name
            assert chain.params()["registration_fee"] == before["registration_fee"]
            assert chain.state.get("prop", 1).status == "rejected"
        finally:
            chain.close()
