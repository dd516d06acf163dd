"""A validator's epoch against real miners and a real chain (SPEC N2, issue #8).

The miners are real gRPC servers under real TFHE: an honest one, a ``replay`` one (valid
ciphertexts, old answers), a dead address and a miner with no endpoint. The validator's
``set_weights`` tx is applied by a real in-memory ``ledger.chain.Chain`` whose Brain was
set up by real, signed registration txs.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from tolerance import U64, gamma

from cerberus.artefact import Artefact
from ledger.chain import Chain
from ledger.genesis import Genesis
from ledger.keys import Wallet
from ledger.tx import Tx, make_tx
from ledger.units import BASED
from network.validator import U16_MAX, Validator, speed_weights

BRAIN = 3  # a reserved Brain, owned by the operator at genesis
OPERATOR, BRIDGE, PROPOSER = (Wallet.from_seed(s) for s in ("operator", "bridge", "proposer"))
VALIDATOR = Wallet.from_seed("validator")
MINERS = [Wallet.from_seed(f"miner-{i}") for i in range(4)]
CHALLENGES = ["The for statement is used to", "def f(x):", "import os", "class A:"]


class LocalChain:
    """``ChainView`` over a real in-memory chain: each accepted tx goes into a new block."""

    def __init__(self, chain: Chain, endpoints: dict[str, str | None]) -> None:
        self.chain = chain
        self.chain_id = chain.genesis.chain_id
        self.endpoints = endpoints  # announced by miners off chain in this test

    def miners(self, brain: int) -> dict[int, tuple[str, str | None]]:
        b = self.chain.state.get("brain", brain)
        return {uid: (a, self.endpoints.get(a)) for uid, a in enumerate(b.miners)
                if a is not None}

    def nonce(self, address: str) -> int:
        return self.chain.nonce(address)

    def param(self, name: str) -> int:
        return self.chain.state.param(name)

    def submit(self, tx: Tx) -> str | None:
        reason = self.chain.validate_tx(tx)
        if reason is None:
            block, rejected = self.chain.produce_block([tx], PROPOSER, self.chain.height + 1)
            assert rejected == []
            self.chain.apply_block(block)
        return reason


def _chain(extra: list[Wallet] | None = None, min_fee: int = 0) -> Chain:
    """Genesis, then the operator sets a zero fee and everyone registers, by signed txs;
    ``extra`` miners register after ``MINERS`` (uids 4, 5, …)."""
    miners = [*MINERS, *(extra or [])]
    people = [VALIDATOR, *miners]
    chain = Chain(Genesis(chain_id="cerberus-test", operator=OPERATOR.address,
                          bridge=BRIDGE.address, tempo=1_000_000, min_fee=min_fee,
                          balances={p.address: 1000 * BASED
                                    for p in [OPERATOR, *people]}))
    cid = chain.genesis.chain_id

    def block(txs: list[Tx]) -> None:
        b, rejected = chain.produce_block(txs, PROPOSER, chain.height + 1)
        assert rejected == []
        chain.apply_block(b)

    block([make_tx(OPERATOR, "brain_config", 0, cid, fee=min_fee, brain=BRAIN,
                   key="registration_fee", value="0")])
    block([make_tx(w, "register", 0, cid, fee=min_fee, brain=BRAIN, role=role, max_fee=0)
           for w, role in [(VALIDATOR, "validator"), *[(m, "miner") for m in miners]]])
    return chain


@pytest.fixture()
def hung_address() -> Iterator[str]:
    """A port that accepts TCP connections and never says a word (a hung miner)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        s.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(s.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield f"127.0.0.1:{s.getsockname()[1]}"
    stop.set()
    t.join(5)
    for c in held:
        c.close()
    s.close()


def test_epoch_weights_honest_miner_zeroes_replay_dead_and_silent_ones_and_applies(
        fhe_artefact: Artefact, start_miner: Callable[..., str], dead_address: str,
        tmp_path: Path) -> None:
    honest, replay = start_miner(), start_miner(misbehave="replay")
    chain = _chain()
    view = LocalChain(chain, {MINERS[0].address: honest, MINERS[1].address: replay,
                              MINERS[2].address: dead_address, MINERS[3].address: None})
    v = Validator(VALIDATOR, BRAIN, Path(fhe_artefact.path), view, CHALLENGES, tokens=2,
                  timeout=120, cache_dir=tmp_path / "validator")
    report = v.run_epoch(5)

    r = report.results
    assert sorted(r) == [0, 1, 2, 3]
    assert r[0].correct and r[0].error is None and r[0].latency_s is not None
    assert r[0].got == r[0].expected and len(r[0].got) == 2
    assert r[0].calls >= 2 * len(fhe_artefact.programs)  # every linear of both tokens
    # the replay miner answered (valid ciphertexts) but with old work: caught bit for bit
    assert not r[1].correct and r[1].got is not None
    assert "accumulators differ from the simulator" in (r[1].error or "")
    assert not r[2].correct and r[2].got is None and "UNAVAILABLE" in (r[2].error or "")
    assert not r[3].correct and r[3].error == "no endpoint announced"
    assert report.weights == {0: U16_MAX, 1: 0, 2: 0, 3: 0}

    # the signed tx was accepted and the chain now holds exactly those weights
    assert report.accepted and report.tx is not None and report.tx.sender == VALIDATOR.address
    slot = chain.state.get("reg", (BRAIN, VALIDATOR.address)).slot
    _, row = chain.state.get("wrow", (BRAIN, slot))
    assert row.tolist() == [U16_MAX, 0, 0, 0]
    assert chain.nonce(VALIDATOR.address) == 2  # register, set_weights
    d = json.loads(json.dumps(report.to_dict()))
    assert d["weights"] == {"0": U16_MAX, "1": 0, "2": 0, "3": 0}
    assert d["results"]["0"]["correct"] is True and d["accepted"] is True


def test_a_hung_miner_times_out_and_a_rejected_tx_is_reported(
        fhe_artefact: Artefact, hung_address: str, tmp_path: Path) -> None:
    chain = _chain()
    view = LocalChain(chain, {MINERS[0].address: hung_address})
    v = Validator(VALIDATOR, BRAIN, Path(fhe_artefact.path), view, CHALLENGES, tokens=1,
                  timeout=2, cache_dir=tmp_path / "validator")
    report = v.run_epoch(1)
    assert not report.results[0].correct and report.results[0].error
    assert report.weights[0] == 0 and report.accepted

    # a validator that is not registered in the Brain: the chain refuses, the report says why
    outsider = Validator(Wallet.from_seed("outsider"), BRAIN, Path(fhe_artefact.path), view,
                         CHALLENGES, tokens=1, timeout=2, cache_dir=tmp_path / "outsider")
    rep = outsider.run_epoch(1)
    assert rep.tx is not None and not rep.accepted and rep.rejected


def test_speed_weights() -> None:
    w = speed_weights({0: 1.0, 1: 2.0, 2: None, 3: 4.0})
    assert sum(w.values()) == U16_MAX and w[2] == 0
    assert w[0] > w[1] > w[3] > 0
    # proportional to 1/latency: w = 1 + e + δ with e0 = 2·e1 (to float64 rounding) and
    # |δ| < 1 (largest-remainder rounding), so |w0/w1 − 2| < (1 + |δ0| + 2|δ1|)/w1 < 4/w1
    assert abs(w[0] / w[1] - 2) < 4 / w[1] + gamma(8, U64)
    assert speed_weights({0: None, 1: None}) == {0: 0, 1: 0}
    assert speed_weights({}) == {}
    many = speed_weights({u: 1.0 + u for u in range(1792)})  # a full Brain
    assert sum(many.values()) == U16_MAX and min(many.values()) >= 1
    assert np.all(np.diff([many[u] for u in range(1792)]) <= 0)


# -- issue #15: verification that binds the work ----------------------------------------

def _tampered_miner(artefact: Artefact, tamper: Callable[[np.ndarray], np.ndarray],
                    servers: list) -> str:
    """An in-process miner of a packed artefact whose every linear runs ``tamper(W)``
    instead of W: replies stay well-formed BFV ciphertexts of the right sizes, so only a
    check of the decrypted accumulators can tell."""
    from cerberus.fhe.packed import PackedLinear
    from runtime.server import MinerService, start

    service = MinerService(Path(artefact.path))
    for name, lin in list(service.fhe.packed.items()):
        service.fhe.packed[name] = PackedLinear(tamper(lin.w), lin.params)
    server, port = start(service, "127.0.0.1", 0, workers=2, queue=4)
    servers.append((server, service))
    return f"127.0.0.1:{port}"


def test_a_miner_zeroing_small_weights_is_caught(packed_artefact: Artefact,
                                                 tmp_path: Path) -> None:
    """Issue #15 (a): a miner that zeroes every weight with |w| ≤ 8 (~15% of the
    multiply-adds) must score 0 in an epoch, while an honest miner scores > 0."""
    servers: list = []
    try:
        cheat = _tampered_miner(packed_artefact, lambda w: np.where(np.abs(w) <= 8, 0, w),
                                servers)
        honest = _tampered_miner(packed_artefact, lambda w: w, servers)
        view = LocalChain(_chain(), {MINERS[0].address: cheat, MINERS[1].address: honest})
        v = Validator(VALIDATOR, BRAIN, Path(packed_artefact.path), view, CHALLENGES,
                      tokens=1, timeout=120, cache_dir=tmp_path / "validator")
        report = v.run_epoch(1)
        assert report.weights[1] > 0, report.results[1].error
        assert report.weights[0] == 0, "a miner skipping small weights was paid"
    finally:
        for server, service in servers:
            server.stop(0).wait()
            service.close()


def test_challenges_come_from_private_randomness(packed_artefact: Artefact,
                                                 tmp_path: Path) -> None:
    """Issue #15 (b): with every public input equal (chain, Brain, epoch, validator, uid),
    two runs must still draw different challenges, and not only from a public list."""
    from cerberus.paths import shipped_prompts

    view = LocalChain(_chain(), {})  # no endpoints: challenges are drawn, nothing is sent
    prompts = []
    for i in range(6):
        v = Validator(VALIDATOR, BRAIN, Path(packed_artefact.path), view, CHALLENGES,
                      tokens=2, timeout=5, cache_dir=tmp_path / f"v{i}")
        prompts.append(v.run_epoch(7).results[0].prompt)
    assert len(set(prompts)) > 1, f"the same challenge every time: {prompts[0]!r}"
    public = set(CHALLENGES) | set(shipped_prompts())
    assert any(p not in public for p in prompts), "every challenge is a public constant"


def test_weights_pay_the_chains_live_minimum_fee(packed_artefact: Artefact,
                                                  tmp_path: Path) -> None:
    """Governance can raise the minimum fee while a validator runs (SPEC L8): its weights
    tx pays the chain's live minimum, not the fee it was started with, or it is refused."""
    view = LocalChain(_chain(min_fee=7), {})  # no endpoints: every miner weighs 0
    v = Validator(VALIDATOR, BRAIN, Path(packed_artefact.path), view, CHALLENGES, tokens=2,
                  timeout=5, cache_dir=tmp_path / "v")
    report = v.run_epoch(1)
    assert report.rejected is None and report.tx is not None and report.tx.fee == 7
    assert view.chain.state.get("wrow", (BRAIN, 0)) is not None  # the row landed
