"""The TFT Enforcer in a live network with a compressed year (SPEC L7, L9; issue #16).

Three validator nodes (``python -m network.cli``, real SQLite, gRPC on 127.0.0.1), three
registered miners, and Brain #2's owner running ``cerberus join --role enforcer`` as its own
process. ``blocks_per_year`` is 12 blocks, so β(t) is 0 up to height 24, rises to 0.9 at
height 48 and is 1 after. The validators' verification outcomes are their ``set_weights``
rows, sent at every epoch boundary by this test with their keys: miners 0 and 1 verified
(3:1 by speed), miner 2 failing every check — the FHE checks themselves are covered by
``test_network_e2e.py`` and the cheat matrix. Slow (about two minutes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from node_harness import BRIDGE, OPERATOR, ROOT, USER, VALIDATORS, NodeProc  # noqa: E402

from ledger.chain import Chain  # noqa: E402
from ledger.consensus import beta_schedule  # noqa: E402
from ledger.genesis import Genesis  # noqa: E402
from ledger.keys import Wallet  # noqa: E402
from ledger.tx import make_tx  # noqa: E402
from ledger.units import BASED, BPS  # noqa: E402
from network.client import NodeClient  # noqa: E402
from network.enforcer import ClientBlocks, landed_reports, reproduce  # noqa: E402

pytestmark = pytest.mark.slow

BRAIN = 1
TEMPO = 10
YEAR = 12  # blocks: β = 0 for h ≤ 24, 0.9·(h − 24)/24 up to 48, then 1
LAST = 69  # the run ends after Brain 1's epoch at height 69
MINERS = [Wallet.from_seed(f"enf-live-miner-{j}") for j in range(3)]
ROWS = [30_000, 10_000, 0]  # every validator: miners 0, 1 verified, miner 2 failed
ROWS_VERIFIED = [BPS, BPS, 0]  # so each miner's verified share (ledger.tft_report)
WAIT = 240.0


def boundary(h: int) -> bool:
    return (h + BRAIN) % TEMPO == 0


class Run:
    """The network's processes and what the test learned while it ran."""

    def __init__(self, root: Path) -> None:
        self.genesis = Genesis(
            chain_id="cerberus-enforcer-live", operator=OPERATOR.address,
            bridge=BRIDGE.address,
            balances={w.address: 10_000 * BASED for w in [*VALIDATORS, OPERATOR, USER,
                                                           *MINERS]},
            time=int(time.time()) - 1, block_time=1, tempo=TEMPO, blocks_per_year=YEAR,
            authorities=tuple(w.address for w in VALIDATORS))
        self.root = root
        self.nodes: list[NodeProc] = []
        self.enforcer: subprocess.Popen[str] | None = None
        self.forged: dict[str, str | None] = {}

    def start(self) -> None:
        for i, w in enumerate(VALIDATORS):
            boot = [self.nodes[0].listen] if self.nodes else []
            self.nodes.append(NodeProc(self.root, f"v{i}", self.genesis, w, boot).start())
        gfile = self.root / "genesis.json"
        gfile.write_text(json.dumps(self.genesis.to_dict()))
        wallet = self.root / "enforcer" / "wallet.key"
        wallet.parent.mkdir(parents=True, exist_ok=True)
        from network.wallet import save

        save(OPERATOR, wallet)
        out = open(self.root / "enforcer" / "join.out", "w")  # noqa: SIM115 - owned by proc
        err = open(self.root / "enforcer" / "join.log", "w")  # noqa: SIM115
        self.enforcer = subprocess.Popen(
            [sys.executable, "-m", "cerberus_cli", "join", "--brain", str(BRAIN), "--role",
             "enforcer", "--genesis", str(gfile), "--data", str(self.root / "enforcer" / "data"),
             "--wallet", str(wallet), "--bootstrap", self.nodes[0].listen,
             "--block-interval", "1", "--round-timeout", "2", "--progress-every", "5"],
            cwd=ROOT, stdout=out, stderr=err, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        out.close()
        err.close()

    def client(self, i: int = 0) -> NodeClient:
        return self.nodes[i].client()

    def send(self, c: NodeClient, wallet: Wallet, kind: str, **payload: object) -> None:
        tx = make_tx(wallet, kind, c.pending_nonce(wallet.address), self.genesis.chain_id,
                     **payload)
        reason = c.submit(tx)
        assert reason is None, (kind, reason)

    def join_all(self) -> None:
        """Miners and validators register on Brain 1; validators stake on themselves."""
        with self.client() as c:
            for w in VALIDATORS:
                self.send(c, w, "register", brain=BRAIN, role="validator", max_fee=100 * BASED)
            for w in MINERS:
                self.send(c, w, "register", brain=BRAIN, role="miner", max_fee=100 * BASED)
            c.wait_until(lambda s: len((c.brain(BRAIN) or {"miners": {}})["miners"]) == 3, WAIT)
            for w in VALIDATORS:
                self.send(c, w, "stake", brain=BRAIN, delegate=w.address, amount=100 * BASED)
            self.set_weights(c)

    def set_weights(self, c: NodeClient) -> None:
        for w in VALIDATORS:
            self.send(c, w, "set_weights", brain=BRAIN, uids=[0, 1, 2], weights=ROWS)

    def forge(self, c: NodeClient) -> None:
        """Reports no node may accept: a failed miner's accuracy raised, one signed by a key
        that does not own Brain #2, and one by the owner whose skills are made up (the
        integer rule kept: only reproducing it shows it is false)."""
        blocks = ClientBlocks(c)
        head = int(c.status()["height"])
        [(_, last)] = landed_reports(blocks, head - TEMPO + 1, head)[-1:]
        p = dict(last.payload)
        p["accuracy_bps"] = [*p["accuracy_bps"][:2], max(p["skill_bps"][2], 1)]
        owner = make_tx(OPERATOR, "tft_report", c.nonce(OPERATOR.address),
                        self.genesis.chain_id, **p)
        stranger = make_tx(USER, "tft_report", c.nonce(USER.address), self.genesis.chain_id,
                           **dict(last.payload))
        q = dict(last.payload)
        q["skill_bps"] = [(k + 1_234) % (BPS + 1) for k in q["skill_bps"]]
        q["accuracy_bps"] = [k * ROWS_VERIFIED[j] // BPS for j, k in enumerate(q["skill_bps"])]
        made_up = make_tx(OPERATOR, "tft_report", c.nonce(OPERATOR.address),
                          self.genesis.chain_id, **q)
        self.forged = {"inflated": c.submit(owner), "stranger": c.submit(stranger)}
        with NodeClient(self.nodes[1].listen, timeout=120) as patient:  # waits for training
            self.forged["made_up"] = patient.submit(made_up)

    def drive(self) -> None:
        """New weight rows after every boundary, two forgeries mid-run; up to ``LAST``."""
        with self.client() as c:
            h = int(c.status()["height"])
            deadline = time.monotonic() + WAIT
            while h < LAST + 2:
                assert time.monotonic() < deadline, f"stuck at height {h}"
                assert self.enforcer is not None and self.enforcer.poll() is None, \
                    (self.root / "enforcer" / "join.log").read_text()[-2000:]
                c.wait_until(lambda s, h=h: int(s["height"]) > h, 60)
                new = int(c.status()["height"])
                if any(boundary(x) for x in range(h + 1, new + 1)):
                    self.set_weights(c)
                if not self.forged and new >= 40 and (new + BRAIN) % TEMPO <= 2:
                    self.forge(c)
                h = new

    def stop(self) -> None:
        if self.enforcer is not None and self.enforcer.poll() is None:
            self.enforcer.terminate()
            try:
                self.enforcer.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.enforcer.kill()
        for n in self.nodes:
            n.terminate()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    r = Run(tmp_path_factory.mktemp("enforcer-live"))
    try:
        r.start()
        r.join_all()
        r.drive()
        yield r
    finally:
        r.stop()


def replay(r: Run) -> tuple[dict[int, dict[str, int]], dict[int, tuple | None], int]:
    """Node 0's final blocks applied to a fresh in-memory chain: miners' balances and the
    Accuracy(TFT) row after every block, and the height of the first weight rows."""
    chain = Chain(r.genesis)
    bal: dict[int, dict[str, int]] = {0: {w.address: chain.balance(w.address) for w in MINERS}}
    rows: dict[int, tuple | None] = {}
    first_weights = 0
    with r.client() as c:
        head = int(c.status()["height"])
        for block in ClientBlocks(c).blocks(1, head):
            chain.apply_block(block)
            h = chain.height
            bal[h] = {w.address: chain.balance(w.address) for w in MINERS}
            entry = chain.state.get("tft", BRAIN)
            rows[h] = None if entry is None else tuple(entry[1])
            if not first_weights and any(t.kind == "set_weights" for t in block.txs):
                first_weights = h
    return bal, rows, first_weights


def test_a_report_lands_every_epoch_and_every_node_accepts_it(run: Run) -> None:
    with run.client() as c:
        reports = landed_reports(ClientBlocks(c), 1, LAST)
    # the epoch a report is for: that of its data height (it may land a block or two
    # later, gossiped from the Enforcer's node to the proposers)
    epochs = sorted((tx.payload["data_height"] + BRAIN) // TEMPO for _, tx in reports)
    # one report per epoch from the Enforcer's first on: epoch 1 is the first with enough
    # public blocks (Recipe.min_height); the process may take a while to start
    assert epochs and epochs[0] <= 2, epochs
    assert epochs == list(range(epochs[0], (LAST + BRAIN) // TEMPO)), epochs
    heights = [h for h, _ in reports]
    roots = set()
    for i in range(3):  # every node holds the same blocks and state: the report applied
        with run.client(i) as c:
            for h in heights:
                [(block, _)] = c.blocks(h, h)
                assert any(t.kind == "tft_report" for t in block.txs)
            [(block, _)] = c.blocks(LAST, LAST)
            roots.add(block.header.state_root)
    assert len(roots) == 1


def test_every_node_reproduces_every_report(run: Run) -> None:
    """Skills and checkpoint re-derived here, in another process than the Enforcer's, from
    each node's own copy of the blocks: bit-identical on one machine."""
    for i in range(3):
        with run.client(i) as c:
            src = ClientBlocks(c)
            for h, tx in landed_reports(src, 1, LAST):
                rep = reproduce(src, run.genesis, tx, h)
                assert rep.ok, (i, h, rep)


def test_forged_reports_are_rejected(run: Run) -> None:
    assert run.forged, "the run never reached the forging point"
    assert "accuracy_bps of uid 2" in str(run.forged["inflated"])
    assert "only the owner of Brain #2" in str(run.forged["stranger"])
    assert "tft_report not reproduced" in str(run.forged["made_up"]), run.forged["made_up"]


def test_incentives_follow_beta_and_the_failed_miner_earns_nothing(run: Run) -> None:
    """Per epoch, the verified miners' payouts split as I = normalise(R + β(t)·A) (SPEC L7)
    with R from the rows (3:1) and A from the report in force; the failed miner gets 0."""
    bal, rows, first_weights = replay(run)
    a, b, cheat = (w.address for w in MINERS)
    seen_beta = []
    for h in range(TEMPO - BRAIN, LAST + 1, TEMPO):
        if h <= first_weights + TEMPO:
            # miners registering, validators staking and weighing; then the first epoch
            # with weights sets the Brain's performance, which its emission share needs
            continue
        got = {k: bal[h][k] - bal[h - 1][k] for k in bal[h]}
        assert got[cheat] == 0
        beta = beta_schedule(h, YEAR)
        acc = [0, 0] if rows[h] is None else list(rows[h][:2])
        assert rows[h] is None or rows[h][2] == 0  # the failed miner's Accuracy(TFT)
        A = [x / sum(acc) for x in acc] if sum(acc) else [0.0, 0.0]
        incentive = [0.75 + beta * A[0], 0.25 + beta * A[1]]
        want = incentive[1] / sum(incentive)
        assert got[a] + got[b] > 0, (h, first_weights)
        assert got[b] / (got[a] + got[b]) == pytest.approx(want, abs=1e-4), (h, beta, acc)
        seen_beta.append(beta)
    # the run covered β = 0, the ramp and β = 1
    assert seen_beta[0] == 0 and 0 < min(x for x in seen_beta if x > 0) < 0.9
    assert seen_beta[-1] == 1
