"""Durability (SPEC L10): SQLite reopen, atomic block commits, and a SIGKILL crash test."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from crash_worker import crash_genesis, next_block
from ledger_helpers import PROPOSER, USERS, Signer, apply_ok, genesis

from ledger.chain import Chain
from ledger.storage import SqliteStore
from ledger.units import BASED

WORKER = Path(__file__).resolve().parent / "crash_worker.py"
ROOT = Path(__file__).resolve().parents[2]


def test_sqlite_reopen_rebuilds_the_same_root(tmp_path: Path) -> None:
    db = tmp_path / "chain.db"
    chain = Chain.open_sqlite(db, crash_genesis())
    mem = Chain(crash_genesis())
    for _ in range(9):  # crosses two epochs of Brain 3 (tempo 4)
        block = next_block(chain)
        chain.apply_block(block)
        mem.apply_block(block)
    assert chain.state_root() == mem.state_root()
    root, height = chain.state_root(), chain.height
    assert chain.state.tables["bond"], "epochs should have written bonds"
    chain.close()
    again = Chain.open_sqlite(db)  # genesis read back from the database
    assert (again.height, again.state_root()) == (height, root)
    assert again.head_hash == mem.head_hash
    again.apply_block(next_block(again))  # and it keeps going
    assert again.height == height + 1
    again.close()


def test_a_failed_store_commit_changes_nothing(tmp_path: Path) -> None:
    chain = Chain.open_sqlite(tmp_path / "c.db", genesis())
    sg = Signer(chain)
    apply_ok(chain, sg.tx(USERS[0], "transfer", to=USERS[1].address, amount=BASED))
    root, height = chain.state_root(), chain.height
    tx = sg.tx(USERS[0], "transfer", to=USERS[1].address, amount=2)
    block, _ = chain.produce_block([tx], PROPOSER, chain.height + 1)
    store = chain.store
    assert isinstance(store, SqliteStore)
    real = store.db

    class Failing:
        """Lets the block row through, then fails while writing state rows."""

        def execute(self, sql: str, *a: object) -> object:
            return real.execute(sql, *a)

        def executemany(self, sql: str, rows: object) -> object:
            raise OSError("disk full")

    store.db = Failing()  # type: ignore[assignment]
    with pytest.raises(OSError):
        chain.apply_block(block)
    store.db = real
    assert (chain.state_root(), chain.height) == (root, height)
    assert store.head() is not None and store.head()[0] == height  # block row rolled back
    chain.apply_block(block)  # the same block applies cleanly afterwards
    chain.close()
    reopened = Chain.open_sqlite(tmp_path / "c.db")
    assert reopened.state_root() == chain.state_root()
    reopened.close()


def test_genesis_mismatch_is_refused(tmp_path: Path) -> None:
    Chain.open_sqlite(tmp_path / "g.db", genesis()).close()
    with pytest.raises(ValueError):
        Chain.open_sqlite(tmp_path / "g.db", genesis(tempo=7))


def _reference_roots(n: int) -> list[str]:
    chain = Chain(crash_genesis())
    roots = [chain.state_root()]
    for _ in range(n):
        chain.apply_block(next_block(chain))
        roots.append(chain.state_root())
    return roots


def _replay_committed(db: Path) -> tuple[int, str]:
    """Clean replay into memory of the blocks the database says are committed."""
    store = SqliteStore(db)
    head = store.head()
    mem = Chain(crash_genesis())
    for h in range(1, (head[0] if head else 0) + 1):
        block = store.block(h)
        assert block is not None
        mem.apply_block(block)
    store.close()
    return mem.height, mem.state_root()


@pytest.mark.parametrize("kills", [20])
def test_sigkill_during_block_application(tmp_path: Path, kills: int) -> None:
    rng = random.Random(7)
    db = tmp_path / "crash.db"
    target = 10_000  # never reached: every run ends by SIGKILL
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    heights: list[int] = []
    for _ in range(kills):
        proc = subprocess.Popen([sys.executable, str(WORKER), str(db), str(target)],
                                stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("ready"), line
        time.sleep(rng.uniform(0.0, 0.25))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL
        reopened = Chain.open_sqlite(db)
        height, root = reopened.height, reopened.state_root()
        reopened.close()
        assert (height, root) == _replay_committed(db)
        heights.append(height)
    print("committed heights after each kill:", heights)
    assert heights == sorted(heights) and heights[-1] > 0
    assert len(set(heights)) > kills // 2, f"kills did not land mid-run: {heights}"
    # and every committed height matches an independent regeneration of the chain
    assert root == _reference_roots(heights[-1])[-1]


def test_block_series_for_the_tft() -> None:
    from ledger.series import SERIES_COLUMNS, block_series

    chain = Chain(genesis())
    sg = Signer(chain)
    apply_ok(chain, sg.tx(USERS[0], "transfer", to=USERS[1].address, amount=1),
             sg.tx(USERS[0], "transfer", to=USERS[2].address, amount=1),
             sg.tx(USERS[3], "transfer", to=USERS[1].address, amount=1))
    apply_ok(chain)
    x = block_series(chain)
    assert x.shape == (2, len(SERIES_COLUMNS))
    assert x[:, 0].tolist() == [3, 0]  # txs
    assert x[:, 1].tolist() == [1, 1]  # times 1, 2 after genesis time 0
    assert x[:, 3].tolist() == [2, 0]  # distinct senders
    assert x[:, 4].tolist() == [10 * BASED, 10 * BASED]
    assert x[0, 2] > x[1, 2] > 0  # bytes


def test_follower_applies_producer_blocks_from_json_wire(tmp_path: Path) -> None:
    """What the network layer does: blocks travel as JSON, a SQLite follower replays them."""
    import json

    from ledger.block import Block

    producer = Chain(crash_genesis())
    follower = Chain.open_sqlite(tmp_path / "follower.db", crash_genesis())
    for _ in range(6):  # includes registrations, stakes, weights and an epoch (tempo 4)
        block = next_block(producer)
        producer.apply_block(block)
        wire = json.dumps(block.to_dict())
        follower.apply_block(Block.from_dict(json.loads(wire)))
        assert follower.head_hash == producer.head_hash
    assert follower.state_root() == producer.state_root()
    follower.close()
