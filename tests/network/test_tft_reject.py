"""Nodes refuse a ``tft_report`` they cannot reproduce (SPEC L9, N1; issue #16).

The reproducer's bounded cache is tested on its own, on an in-memory chain. Then two
honest validator nodes in this process (real gRPC on 127.0.0.1, real SQLite), started on
a chain whose history — three staked validators, three miners, weight rows — was built
block by block with ``test_enforcer.Net`` and written into each node's ``chain.db``. The
third validator (``VALIDATORS[0]``) runs no node: the test signs a block with its key when
it is the first proposer of a height, so that block is the one the honest nodes would
prevote in round 0. Brain #2's owner is ``OPERATOR``.
"""

from __future__ import annotations

import functools
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from node_harness import wait_for as harness_wait_for  # noqa: E402
from test_enforcer import (  # noqa: E402
    BRAIN,
    HONEST_ROW,
    OPERATOR,
    STRANGER,
    VALIDATORS,
    ChainEnforcerView,
    Net,
)
from test_enforcer import report as chain_report  # noqa: E402

from ledger.block import Block  # noqa: E402
from ledger.chain import Chain  # noqa: E402
from ledger.encoding import canonical  # noqa: E402
from ledger.tft_report import bounded_accuracy  # noqa: E402
from ledger.tx import Tx, make_tx  # noqa: E402
from ledger.units import BPS  # noqa: E402
from network.enforcer import (  # noqa: E402
    NodeEnforcerView,
    Numbers,
    Reproducer,
    Verdict,
    derive,
)
from network.finality import PREVOTE  # noqa: E402
from network.node import Node, NodeConfig  # noqa: E402
from network.protos import node_pb2  # noqa: E402

WAIT = 90.0
BYZANTINE = VALIDATORS[0]  # its key signs the test's block; it runs no node


wait_for = functools.partial(harness_wait_for, timeout=WAIT)


class GatedView(ChainEnforcerView):
    """A chain's blocks, served only once the test opens the gate (so the test knows
    which reports are still queued when it asks; every wait bounded)."""

    def __init__(self, chain: Chain) -> None:
        super().__init__(chain)
        self.gate = threading.Event()

    def blocks(self, lo: int, hi: int) -> list[Block]:
        assert self.gate.wait(WAIT), "gate never opened"
        return super().blocks(lo, hi)


def test_the_reproducer_caches_verdicts_by_tx_hash_within_its_bounds() -> None:
    net = Net(3, [HONEST_ROW] * 3)
    net.run_to(14)
    view = GatedView(net.chain)
    done: list[tuple[bytes, bool]] = []
    rep = Reproducer(net.genesis, view, max_verdicts=2, max_queued=2,
                     on_done=lambda tx, h, v: done.append((h, v.ok)))
    honest = chain_report(net)
    other = chain_report(net, wallet=STRANGER)  # same numbers, another tx hash
    fake = chain_report(net, skill_bps=[BPS, 0, BPS], accuracy_bps=[BPS, 0, 0])
    assert fake.payload["skill_bps"] != honest.payload["skill_bps"]
    h_honest, h_other, h_fake = (t.tx_hash() for t in (honest, other, fake))
    try:
        # the queue holds two (the one being derived counts): a third is refused for now
        assert rep.request(honest, h_honest) and rep.request(fake, h_fake)
        assert rep.request(honest, h_honest)  # already queued: not queued twice
        assert not rep.request(other, h_other)
        assert rep.verdict(h_honest) is None and rep.wait(h_honest, 0.05) is None
        view.gate.set()
        assert rep.wait(h_honest, WAIT) == Verdict(True)
        v = rep.wait(h_fake, WAIT)
        assert v is not None and not v.ok and "tft_report not reproduced" in v.reason
        assert str(honest.payload["skill_bps"]) in v.reason  # what the blocks give
        assert str(fake.payload["skill_bps"]) in v.reason  # what it reports
        assert rep.derived == 2 and done == [(h_honest, True), (h_fake, False)]
        # cached: asking again derives nothing
        assert rep.request(honest, h_honest) and rep.verdict(h_honest) == Verdict(True)
        assert rep.derived == 2
        # at most two verdicts: a third drops the least recently used (fake; honest was
        # just read), which is derived again when asked
        assert rep.request(other, h_other) and rep.wait(h_other, WAIT) == Verdict(True)
        assert len(rep) == 2 and rep.verdict(h_fake) is None
        assert rep.verdict(h_honest) == Verdict(True)
        assert rep.request(fake, h_fake)
        again = rep.wait(h_fake, WAIT)
        assert again == v and rep.derived == 4
        # a report over blocks this chain does not have: refused, the worker lives on
        ahead = chain_report(net, data_height=net.chain.height + 5)
        assert rep.request(ahead, ahead.tx_hash())
        bad = rep.wait(ahead.tx_hash(), WAIT)
        assert bad is not None and not bad.ok and "tft_report not reproduced" in bad.reason
    finally:
        view.gate.set()
        rep.stop()
    assert not rep.request(other, b"x" * 32)  # stopped: nothing new is queued


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[tuple[Net, list[Node]]]:
    """``Net``'s history in two honest validators' ``chain.db``; both started, connected."""
    net = Net(3, [HONEST_ROW] * 3)
    net.run_to(14)
    started: list[Node] = []
    try:
        for i, w in enumerate(VALIDATORS[1:], start=1):
            data = tmp_path / f"v{i}"
            data.mkdir()
            chain = Chain.open_sqlite(data / "chain.db", net.genesis)
            for h in range(1, net.chain.height + 1):
                chain.apply_block(net.chain.block(h))  # type: ignore[arg-type]
            chain.close()
            node = Node(NodeConfig(data, net.genesis, w, block_interval=0.3,
                                   round_timeout=2.5, hello_interval=0.2,
                                   bootstrap=[started[0].listen] if started else []))
            node.start()
            started.append(node)
        yield net, started
    finally:
        for n in started:
            n.stop()


def height(node: Node) -> int:
    return int(node.status()["height"])


def report(net: Net, node: Node, numbers: Numbers | None = None,
           skill: list[int] | None = None) -> tuple[Tx, Numbers]:
    """A report signed by Brain #2's owner over ``node``'s blocks up to its head: the
    derived numbers, or ``skill`` with the integer rule (accuracy = skill × verified) kept."""
    view = NodeEnforcerView(node)
    at = view.height()
    verified = view.report_basis(BRAIN)
    uids = sorted(verified)
    if numbers is None:
        numbers = derive(view, net.genesis, BRAIN, uids, at)
    skills = numbers.skill_bps if skill is None else skill
    nonce = node.read(lambda c: c.nonce(OPERATOR.address))  # the account's: nothing pending
    tx = make_tx(OPERATOR, "tft_report", nonce, net.genesis.chain_id,
                 fee=view.param("min_fee"), brain=BRAIN, uids=uids, skill_bps=skills,
                 accuracy_bps=[bounded_accuracy(k, verified[u])
                               for u, k in zip(uids, skills, strict=True)],
                 checkpoint=numbers.checkpoint, data_height=at)
    return tx, numbers


def my_prevotes(node: Node, h: int) -> list[str]:
    """The block hashes this validator prevoted at height ``h``, any round."""
    def read(_: Chain) -> list[str]:
        last = node.store.last_round(h)
        got = [node.store.my_vote(h, r, PREVOTE) for r in range(0, (last or 0) + 1)]
        return [v for v in got if v is not None]

    return node.read(read)


def final_reports(node: Node, lo: int, hi: int) -> list[bytes]:
    """Hashes of the ``tft_report`` txs in ``node``'s final blocks ``lo..hi``."""
    def read(c: Chain) -> list[bytes]:
        blocks = [c.block(h) for h in range(lo, min(hi, c.height) + 1)]
        return [t.tx_hash() for b in blocks if b is not None for t in b.txs
                if t.kind == "tft_report"]

    return node.read(read)


def test_made_up_skills_are_refused_and_an_honest_report_finalizes(
        nodes: tuple[Net, list[Node]]) -> None:
    net, (a, b) = nodes
    wait_for(lambda: height(a) >= 16 and height(b) >= 16, "live blocks on both nodes")

    # (1) made-up skills with a correct integer rule: the ledger would apply it, the
    # mempool refuses it because this node derives other skills from the same blocks
    fake, honest_numbers = report(net, a, skill=[BPS, 0, BPS])
    assert fake.payload["skill_bps"] != honest_numbers.skill_bps
    assert a.read(lambda c: c.validate_tx(fake)) is None  # the integer rule holds
    for node in (a, b):
        reason = node.submit(fake)
        assert reason is not None and "tft_report not reproduced" in reason, reason

    # (2) a block holding another made-up report, signed by the round-0 proposer of a
    # height: the honest nodes never prevote it, the height finalizes without it
    skew = [max(0, k - 1_000) for k in honest_numbers.skill_bps]
    fake2, _ = report(net, a, numbers=honest_numbers, skill=skew)
    assert fake2.payload["skill_bps"] != honest_numbers.skill_bps
    sent: tuple[int, Block] | None = None
    deadline = time.monotonic() + WAIT
    while sent is None:
        assert time.monotonic() < deadline, "the byzantine key never ranked first"
        h, first = a.read(lambda c: (c.height + 1, a.rounds.ranking()[0]))
        if first != BYZANTINE.address or a.status()["my_vote"] is not None \
                or b.read(lambda c: c.height + 1) != h or b.status()["my_vote"] is not None:
            time.sleep(0.05)
            continue
        t = max(int(time.time()), int(a.read(lambda c: c.state.meta("time"))) + 1)
        block, rejected = a.read(lambda c, t=t: c.produce_block([fake2], BYZANTINE, t))
        assert rejected == [] and [tx.kind for tx in block.txs] == ["tft_report"]
        env = node_pb2.Envelope(kind="block", payload=canonical(block.to_dict()))
        for node in (a, b):
            node.handle_envelope(env)
        sent = (h, block)
    h, block = sent
    wait_for(lambda: height(a) >= h and height(b) >= h, f"height {h} to finalize")
    for node in (a, b):
        final = node.read(lambda c: c.block(h))
        assert final is not None and final.block_hash() != block.block_hash()
        assert block.block_hash() not in my_prevotes(node, h)
        assert fake2.tx_hash() not in final_reports(node, h, h)

    # (3) the honest report over the same blocks is admitted and finalizes on both nodes
    honest, _ = report(net, a, numbers=None)
    assert a.submit(honest) is None
    start = height(a)
    wait_for(lambda: all(honest.tx_hash() in final_reports(n, start, height(n))
                         for n in (a, b)), "the honest report to finalize")
    # b had it by gossip (held until reproduced, then admitted) or in a proposal: either
    # way it reproduced it before voting
    assert all(n.reproducer.verdict(honest.tx_hash()) == Verdict(True) for n in (a, b))
    rows: list[Any] = [n.read(lambda c: c.state.get("tft", BRAIN)[1]) for n in (a, b)]
    assert [list(r) for r in rows] == [honest.payload["accuracy_bps"]] * 2
    for node in (a, b):  # neither made-up report ever landed
        assert {fake.tx_hash(), fake2.tx_hash()}.isdisjoint(
            final_reports(node, 1, height(node)))
