"""The cheat matrix (issue #15; SPEC N2): every kind of cheating miner scores 0.

Fast: one ``Validator`` epoch in-process against real gRPC miners of a packed tiny-gpt
artefact, one per misbehaviour of ``runtime/server.py`` plus two honest ones; the weights
tx is applied by a real in-memory chain (``test_validator.LocalChain``). The validator
sends challenges from 127.0.3.x (``sources``), not from 127.0.0.1, the address the
``honest-to`` miner is honest to. Slow (``-m slow``): the same kinds as real
``cerberus join`` processes with their own 127.0.0.x addresses in a 3-validator network
over 3 epochs (``benchmarks/cheat_matrix.py``): each cheat earns < 10 % of an honest
miner and honest miners never score 0.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from cerberus.artefact import Artefact
from ledger.keys import Wallet
from network.validator import Validator

from .test_validator import BRAIN, MINERS, VALIDATOR, LocalChain, _chain

KINDS = ["honest", "honest", "replay", "lazy", "random", "zero-small", "squeezed",
         "fewer-bits", "first-token", "honest-to"]
MORE = [Wallet.from_seed(f"miner-{i}") for i in range(len(MINERS), len(KINDS))]


@pytest.fixture(scope="module")
def others(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The artefacts a cheat serves instead: tiny-gpt squeezed (a head budget that keeps 2
    of 8 heads) and tiny-gpt at 4-bit weights."""
    from cerberus.compile import CompileOptions, compile_model
    from cerberus.paths import shipped_model

    root = tmp_path_factory.mktemp("others")
    out = {"squeezed": root / "squeezed.cerb", "fewer-bits": root / "w4.cerb"}
    compile_model(shipped_model(), out["squeezed"],
                  CompileOptions(seq_len=8, fhe=True, budget=42000))
    compile_model(shipped_model(), out["fewer-bits"],
                  CompileOptions(seq_len=8, fhe=True, weight_bits=4))
    return out


@pytest.fixture()
def miners(packed_artefact: Artefact, others: dict[str, Path]) -> Iterator[list[str]]:
    """One in-process miner per kind, in ``KINDS`` order."""
    from runtime.server import MinerService, start

    flag = {"honest": None, "squeezed": f"other:{others['squeezed']}",
            "fewer-bits": f"other:{others['fewer-bits']}", "honest-to": "honest-to:127.0.0.1"}
    servers, out = [], []
    try:
        for kind in KINDS:
            service = MinerService(Path(packed_artefact.path), misbehave=flag.get(kind, kind))
            server, port = start(service, "127.0.0.1", 0, workers=2, queue=4)
            servers.append((server, service))
            out.append(f"127.0.0.1:{port}")
        yield out
    finally:
        for server, service in servers:
            server.stop(0).wait()
            service.close()


def test_every_cheat_scores_zero_in_one_epoch(packed_artefact: Artefact, miners: list[str],
                                              tmp_path: Path) -> None:
    wallets = [*MINERS, *MORE]
    chain = _chain(extra=MORE)
    view = LocalChain(chain, {w.address: e for w, e in zip(wallets, miners, strict=True)})
    v = Validator(VALIDATOR, BRAIN, Path(packed_artefact.path), view, tokens=3, timeout=120,
                  cache_dir=tmp_path / "validator", rng=random.Random(15),
                  sources=["127.0.3.1", "127.0.3.2"], workers=2)
    report = v.run_epoch(1)
    by_kind = {u: KINDS[u] for u in report.results}
    wrong = []
    for uid, r in report.results.items():
        kind = by_kind[uid]
        if kind == "honest":
            if not (r.correct and report.weights[uid] > 0):
                wrong.append(f"honest uid {uid} scored 0: {r.error}")
            elif r.calls < 2 * len(packed_artefact.programs):  # every linear, ≥ 2 tokens
                wrong.append(f"honest uid {uid}: only {r.calls} calls checked")
        elif report.weights[uid] != 0 or r.correct:
            wrong.append(f"{kind} was paid {report.weights[uid]} ({r.error})")
        # caught by the accumulator check, not by a protocol error (a packed reply replayed
        # to a request of another length also names the wrong rows: the client refuses it)
        elif "accumulators differ" not in (r.error or "") and not (
                kind == "replay" and "bad reply" in (r.error or "")):
            wrong.append(f"{kind} caught by something else: {r.error}")
    assert not wrong, "\n".join(wrong)
    assert report.accepted


@pytest.mark.slow
def test_cheat_matrix_real_processes(tmp_path: Path) -> None:
    from benchmarks.cheat_matrix import run

    doc = run(tmp_path / "net", epochs=3, tempo=30)
    honest = [m for m in doc["miners"] if m["kind"] == "honest"]
    assert honest and all(m["earned"] > 0 for m in honest), doc["miners"]
    for m in doc["miners"]:
        if m["kind"] != "honest":
            assert m["earned"] < 0.1 * doc["honest_mean"], m
    assert doc["state_roots_agree"]
