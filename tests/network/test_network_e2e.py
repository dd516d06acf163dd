"""A whole local network (issue #8): 3 validators and 3 miners as real ``cerberus join``
processes on 127.0.0.1, one miner misbehaving; three epochs of real encrypted checks.

Shows: blocks finalize; honest miners earn and the lazy miner earns < 10% of an honest
one; every node's balances equal a replay of its own blocks from genesis; every node has
the same state root at a common height; an encrypted query routed by embedding (N3) is
answered and equals the simulator.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cerberus.artefact import Artefact
from cerberus_cli import JOIN_CMD
from ledger.chain import Chain
from network import local

EPOCHS = 3


@pytest.fixture(scope="module")
def network_run(fhe_artefact: Artefact, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("net")
    net = local.start(root, validators=3, miners=3, misbehave=1, artefact=fhe_artefact.path,
                      tempo=20, join_cmd=JOIN_CMD)
    try:
        start = local.balances(net)
        epochs = local.run_epochs(net, EPOCHS, timeout=300)
        summary = local.summary(net, epochs, start)
        roots = local.check_roots(net)
        query = local.route_query(net, "The for statement is used to", 2)
        with net.client() as c:
            query["directory"] = c.directory(local.BRAIN)
    finally:
        net.stop()
    return net, summary, roots, query


def test_blocks_finalize_and_nodes_agree(network_run) -> None:
    net, summary, roots, _ = network_run
    assert len(summary["epochs"]) == EPOCHS
    assert roots["height"] >= summary["epochs"][-1]["height"]  # final past the last epoch
    assert roots["agree"], roots
    assert all(p.popen.returncode == 0 for p in net.procs)  # SIGTERM: a clean exit


def test_honest_miners_earn_and_the_lazy_one_does_not(network_run) -> None:
    _, summary, _, _ = network_run
    miners = [p for p in summary["participants"] if p["role"] == "miner"]
    honest = [p["earned"] for p in miners if not p["misbehave"]]
    lazy = [p["earned"] for p in miners if p["misbehave"]]
    assert len(honest) == 2 and len(lazy) == 1
    assert min(honest) > 0
    assert lazy[0] < 0.1 * min(honest), summary
    validators = [p["earned"] for p in summary["participants"] if p["role"] == "validator"]
    assert all(v > 0 for v in validators)
    assert sum(e["emitted_to_participants"] for e in summary["epochs"]) > 0


def test_every_nodes_balances_equal_a_replay_of_its_blocks(network_run) -> None:
    net, summary, _, _ = network_run
    addresses = [p.wallet.address for p in net.procs] + [net.operator.address]
    for p in net.procs:
        chain = Chain.open_sqlite(Path(p.log_path.parent / "data" / "chain.db"), net.genesis)
        replay = Chain(net.genesis)
        try:
            for h in range(1, chain.height + 1):
                replay.apply_block(chain.block(h))
            assert replay.state_root() == chain.state_root(), p.name
            for a in addresses:
                assert replay.balance(a) == chain.balance(a), (p.name, a)
        finally:
            chain.close()


def test_a_query_is_routed_to_a_vouched_for_miner_and_answered(network_run) -> None:
    net, _, _, query = network_run
    lazy = next(p for p in net.procs if p.misbehave)
    lazy_endpoint = query["directory"][lazy.wallet.address]
    assert query["scores"][lazy_endpoint] == 0  # the validators gave it no weight
    assert query["miner"] in query["trusted"] and query["miner"] != lazy_endpoint
    assert query["equals_simulator"], query
    assert len(query["tokens"]) == 2
