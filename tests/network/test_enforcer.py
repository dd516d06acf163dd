"""The TFT Enforcer's report rule, on a real in-memory chain (SPEC L7, L9; issue #16).

Fast, except the one test that derives a report in a second interpreter (slow). The live
network run is ``test_enforcer_live.py`` (slow).
"""

from __future__ import annotations

import numpy as np
import pytest

from ledger.block import Block
from ledger.chain import Chain
from ledger.consensus import beta_schedule, yuma_epoch
from ledger.genesis import Genesis
from ledger.keys import Wallet
from ledger.tft_report import bounded_accuracy, verified_bps
from ledger.tx import Tx, make_tx
from ledger.units import BASED, BPS
from network.enforcer import Auditor, Enforcer, derive, landed_reports, reproduce

BRAIN = 1
OPERATOR = Wallet.from_seed("enf-operator")  # owns the reserved Brains, #2 included
STRANGER = Wallet.from_seed("enf-stranger")
VALIDATORS = [Wallet.from_seed(f"enf-validator-{i}") for i in range(3)]
PROPOSER = Wallet.from_seed("enf-proposer")


class ChainEnforcerView:
    """``network.enforcer.EnforcerView`` over a ``Chain``; accepted txs wait in ``pending``
    for the test's next block, as a node's mempool would keep them."""

    def __init__(self, chain: Chain) -> None:
        self.chain = chain
        self.chain_id = chain.genesis.chain_id
        self.pending: list[Tx] = []

    def height(self) -> int:
        return self.chain.height

    def blocks(self, lo: int, hi: int) -> list[Block]:
        return [self.chain.block(h) for h in range(lo, hi + 1)]  # type: ignore[misc]

    def report_basis(self, brain: int) -> dict[int, int]:
        return verified_bps(self.chain.state, brain)

    def param(self, name: str) -> int:
        return self.chain.state.param(name)

    def nonce(self, address: str) -> int:
        return self.chain.nonce(address) + sum(t.sender == address for t in self.pending)

    def submit(self, tx: Tx) -> str | None:
        reason = self.chain.validate_tx(tx)
        if reason is None:
            self.pending.append(tx)
        return reason


class Net:
    """A chain with 3 staked validators and ``len(rows[0])`` miners on Brain 1; each
    validator re-sends its weight row at every epoch boundary."""

    def __init__(self, miners: int, rows: list[list[int]], *, tempo: int = 8,
                 blocks_per_year: int = 1_000_000) -> None:
        self.miners = [Wallet.from_seed(f"enf-miner-{j}") for j in range(miners)]
        funded = [OPERATOR, STRANGER, *VALIDATORS, *self.miners]
        self.genesis = Genesis(chain_id="enf-test", operator=OPERATOR.address,
                               bridge=OPERATOR.address,
                               balances={w.address: 1_000 * BASED for w in funded},
                               time=0, block_time=1, tempo=tempo,
                               blocks_per_year=blocks_per_year)
        self.chain = Chain(self.genesis)
        self.view = ChainEnforcerView(self.chain)
        self.rows = rows
        self.tx(*[self.make(w, "register", brain=BRAIN, role="validator", max_fee=100 * BASED)
                  for w in VALIDATORS],
                *[self.make(w, "register", brain=BRAIN, role="miner", max_fee=100 * BASED)
                  for w in self.miners])
        self.tx(*[self.make(w, "stake", brain=BRAIN, delegate=w.address, amount=100 * BASED)
                  for w in VALIDATORS])
        self.set_weights()
        self.tx()

    def make(self, wallet: Wallet, kind: str, **payload: object) -> Tx:
        return make_tx(wallet, kind, self.view.nonce(wallet.address), self.genesis.chain_id,
                       **payload)

    def tx(self, *txs: Tx) -> Block:
        """One block holding the pending txs and ``txs``, all of which must apply."""
        block, rejected = self.chain.produce_block([*self.view.pending, *txs], PROPOSER,
                                                   self.chain.height + 1)
        assert rejected == [], rejected
        self.chain.apply_block(block)
        self.view.pending = []
        return block

    def set_weights(self) -> None:
        uids = list(range(len(self.miners)))
        for v, row in zip(VALIDATORS, self.rows, strict=True):
            self.view.pending.append(self.make(v, "set_weights", brain=BRAIN, uids=uids,
                                               weights=row))

    def step(self) -> Block:
        """The next block; validators' weights follow each epoch boundary."""
        block = self.tx()
        if (self.chain.height + BRAIN) % self.genesis.tempo == 0:
            self.set_weights()
        return block

    def run_to(self, height: int) -> None:
        while self.chain.height < height:
            self.step()


HONEST_ROW = [39_321, 26_214, 0]  # miners 0, 1 verified (speed split), miner 2 failed


@pytest.fixture(scope="module")
def net() -> Net:
    n = Net(3, [HONEST_ROW] * 3)
    n.run_to(30)
    return n


def report(net: Net, wallet: Wallet = OPERATOR, **changes: object) -> Tx:
    """A report over the public blocks as the Enforcer derives it, fields overridden."""
    verified = verified_bps(net.chain.state, BRAIN)
    uids = sorted(verified)
    nums = derive(net.view, net.genesis, BRAIN, uids, net.chain.height)
    payload: dict[str, object] = {
        "brain": BRAIN, "uids": uids, "skill_bps": nums.skill_bps,
        "accuracy_bps": [bounded_accuracy(k, verified[u]) for u, k in zip(uids, nums.skill_bps,
                                                                          strict=True)],
        "checkpoint": nums.checkpoint, "data_height": net.chain.height}
    payload.update(changes)
    return make_tx(wallet, "tft_report", net.chain.nonce(wallet.address), net.genesis.chain_id,
                   **payload)


def test_verified_share_is_the_stake_majority_that_weighted_the_miner(net: Net) -> None:
    assert verified_bps(net.chain.state, BRAIN) == {0: BPS, 1: BPS, 2: 0}
    # one validator of three (a third of the stake, below κ ≈ 1/2) vouching counts for 0;
    # two of three count as their share
    one = Net(3, [[1, 1, 1], [1, 1, 0], [1, 0, 0]])
    assert verified_bps(one.chain.state, BRAIN) == {0: BPS, 1: 6666, 2: 0}


def test_the_enforcers_report_lands_and_bounds_accuracy_by_verification(net: Net) -> None:
    enforcer = Enforcer(OPERATOR, BRAIN, net.genesis, net.view, say=lambda _: None)
    height = net.chain.height
    summary = enforcer.step()
    assert summary is not None and summary["data_height"] == height
    assert enforcer.step() is None  # once per epoch
    block = net.tx()
    assert [t.kind for t in block.txs] == ["tft_report"]
    set_at, row = net.chain.state.get("tft", BRAIN)
    assert set_at == block.header.height
    skill = summary["skill_bps"]
    assert list(row) == [skill[0], skill[1], 0]  # the failed miner: 0 whatever its skill
    assert all(0 <= k <= BPS for k in skill) and max(skill) > 0


def test_every_node_reproduces_the_report_from_public_blocks(net: Net) -> None:
    tx = report(net)
    block = net.tx(tx)
    # a second node: an independent chain that applied the same blocks
    other = Chain(net.genesis)
    for h in range(1, net.chain.height + 1):
        other.apply_block(net.chain.block(h))  # type: ignore[arg-type]
    assert other.state_root() == net.chain.state_root()
    (height, landed), = landed_reports(ChainEnforcerView(other), block.header.height,
                                       block.header.height)
    rep = reproduce(ChainEnforcerView(other), net.genesis, landed, height)
    assert rep.ok and rep.derived.skill_bps == tx.payload["skill_bps"]
    assert rep.derived.checkpoint == tx.payload["checkpoint"]
    # a report whose skills were made up still applies on a bare chain (the ledger checks
    # only the integer rule) but does not reproduce; nodes refuse it (test_tft_reject.py)
    fake = report(net, skill_bps=[BPS, 0, BPS], accuracy_bps=[BPS, 0, 0])
    net.tx(fake)
    assert not reproduce(net.view, net.genesis, fake, net.chain.height).ok


def test_the_auditor_says_which_reports_reproduce(net: Net) -> None:
    said: list[str] = []
    auditor = Auditor(net.genesis, net.view, say=said.append)
    assert auditor.step() == []  # nothing landed since it started
    honest = report(net)
    net.tx(honest)
    made_up = report(net, skill_bps=[BPS, 0, 0], accuracy_bps=[BPS, 0, 0])
    net.tx(made_up)
    net.tx()
    outcomes = auditor.step()
    assert [r.ok for r in outcomes] == [True, False]
    assert "reproduced" in said[0] and "MISMATCH" in said[1]
    assert auditor.step() == []  # each report once


@pytest.mark.slow  # a second interpreter importing torch: ~10-25 s on 2 cores
def test_a_report_derived_in_another_process_is_bit_identical(net: Net, tmp_path) -> None:
    """What two nodes on one machine do: the same blocks, another interpreter, the same
    checkpoint hash and skills."""
    import json
    import subprocess
    import sys

    uids = sorted(verified_bps(net.chain.state, BRAIN))
    height = net.chain.height
    here = derive(net.view, net.genesis, BRAIN, uids, height)
    (tmp_path / "blocks.json").write_text(json.dumps(
        [net.chain.block(h).to_dict() for h in range(1, height + 1)]))  # type: ignore[union-attr]
    (tmp_path / "genesis.json").write_text(json.dumps(net.genesis.to_dict()))
    code = (
        "import json, sys\n"
        "from ledger.block import Block\nfrom ledger.genesis import Genesis\n"
        "from network.enforcer import derive\n"
        "d = sys.argv[1]\n"
        "blocks = [Block.from_dict(b) for b in json.load(open(d + '/blocks.json'))]\n"
        "class Src:\n"
        "    def blocks(self, lo, hi):\n"
        "        return blocks[lo - 1:hi]\n"
        "g = Genesis.from_dict(json.load(open(d + '/genesis.json')))\n"
        f"n = derive(Src(), g, {BRAIN}, {uids}, {height})\n"
        "print(json.dumps([n.checkpoint, n.skill_bps]))\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                         text=True, timeout=300, check=True).stdout
    assert json.loads(out.strip().splitlines()[-1]) == [here.checkpoint, here.skill_bps]


@pytest.mark.parametrize("change, why", [
    ({"accuracy_bps": "cheater"}, "accuracy_bps of uid 2 is"),
    ({"accuracy_bps": "inflated"}, "accuracy_bps of uid 0 is"),
    ({"uids": [0, 1], "accuracy_bps": "short", "skill_bps": "short"}, "occupied miner slots"),
    ({"skill_bps": "over"}, "skill_bps must be <= 10000"),
    ({"data_height": "future"}, "data_height must be"),
    ({"wallet": STRANGER}, "only the owner of Brain #2"),
])
def test_a_forged_report_is_rejected(net: Net, change: dict[str, object], why: str) -> None:
    honest = report(net)
    p = dict(honest.payload)
    wallet = OPERATOR
    for key, value in change.items():
        if key == "wallet":
            wallet = value  # type: ignore[assignment]
        elif value == "cheater":  # the failed miner's skill passed through unbounded
            p[key] = [*p[key][:2], max(p["skill_bps"][2], 1)]  # type: ignore[index]
        elif value == "inflated":
            p[key] = [p[key][0] + 1, *p[key][1:]]  # type: ignore[index]
        elif value == "short":
            p[key] = p[key][:2]  # type: ignore[index]
        elif value == "over":
            p[key] = [BPS + 1, *p[key][1:]]  # type: ignore[index]
        elif value == "future":
            p[key] = net.chain.height + 1
        else:
            p[key] = value
    forged = make_tx(wallet, "tft_report", net.chain.nonce(wallet.address),
                     net.genesis.chain_id, **p)
    reason = net.chain.validate_tx(forged)
    assert reason is not None and why in reason, reason
    assert net.chain.validate_tx(honest) is None  # the honest one still applies


KINDS = ["honest", "honest", "replay", "lazy", "random", "zero-small", "squeezed",
         "fewer-bits", "first-token", "honest-to"]


def cheat_matrix_rows(fooled: bool) -> list[list[int]]:
    """RESULTS#cheat_matrix's outcome as weight rows: honest miners split 60/40 by speed,
    every cheat 0; with ``fooled``, one validator of three (a stake minority) is fooled by
    every cheat, as ``honest-to`` fooled validators that challenged from their own address."""
    honest = [39_321, 26_214] + [0] * 8
    minority = [20_000, 13_000] + [4_000] * 8
    return [honest, honest, minority if fooled else honest]


@pytest.mark.parametrize("fooled", [False, True])
def test_cheat_matrix_holds_at_beta_09(fooled: bool) -> None:
    """At β = 0.9 each cheat earns < 10 % of the honest miners' mean even when the report
    gives every cheat the best skill (a steady cheater is the most predictable series)."""
    bpy = 5  # β(t) = 0.9 at height 4·bpy = 20, an epoch boundary of Brain 1 at tempo 7
    n = Net(len(KINDS), cheat_matrix_rows(fooled), tempo=7, blocks_per_year=bpy)
    n.run_to(17)
    skill = [5_000 if k == "honest" else BPS for k in KINDS]
    verified = verified_bps(n.chain.state, BRAIN)
    acc = [bounded_accuracy(k, verified[u]) for u, k in enumerate(skill)]
    n.tx(make_tx(OPERATOR, "tft_report", n.chain.nonce(OPERATOR.address), n.genesis.chain_id,
                 brain=BRAIN, uids=list(range(len(KINDS))), skill_bps=skill,
                 accuracy_bps=acc, checkpoint="ab" * 32, data_height=n.chain.height))
    before = [n.chain.balance(w.address) for w in n.miners]
    n.run_to(20)
    assert beta_schedule(20, bpy) == pytest.approx(0.9)
    earned = [n.chain.balance(w.address) - b for w, b in zip(n.miners, before, strict=True)]
    honest_mean = (earned[0] + earned[1]) / 2
    assert honest_mean > 0
    for kind, e in zip(KINDS[2:], earned[2:], strict=True):
        assert e < 0.1 * honest_mean, (kind, e, honest_mean)
    # without the bound (Accuracy(TFT) = the skill alone, the old rule) the same epoch pays
    # each steady cheat more than an honest miner's 10 %: the bound is what holds the matrix
    W = np.asarray(cheat_matrix_rows(fooled), dtype=np.float64)
    unbounded = yuma_epoch(W, np.full(3, 100 * BASED), np.zeros_like(W), beta=0.9,
                           tft_accuracy=np.asarray(skill) / BPS).incentive
    assert unbounded[2:].min() > 0.1 * unbounded[:2].mean()

