"""The node's own persistent records, beside the ledger's chain.db (SPEC N1, issue #8).

``node.db`` keeps what the ledger does not, and what must survive a SIGKILL:

* ``certs`` — the votes that made each block final, so a node can prove finality to a
  syncing peer (a block from GetBlocks is applied only with a quorum certificate). A
  certificate is written *before* its block is applied, so a crash in between leaves a
  spare certificate, never a final block without one.
* ``round_votes`` — the block this node's validator voted for in each (height, round),
  written before the vote leaves the process: a restarted validator never votes twice in
  one round, and its latest vote (its lock, ``network.consensus``) survives the restart.
  (The older per-height ``my_votes`` table of a pre-round node.db is left unused: its
  votes were signed without a round, so no current node counts them.)
* ``evidence`` — equivocations seen (two signed blocks for one height by one proposer).
* ``directory`` — miners' signed endpoint announcements, newest ``seq`` per (Brain, miner).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS certs (height INTEGER PRIMARY KEY, hash TEXT NOT NULL,
                                  votes TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS round_votes (height INTEGER NOT NULL, round INTEGER NOT NULL,
                                        hash TEXT NOT NULL, PRIMARY KEY (height, round));
CREATE TABLE IF NOT EXISTS evidence (height INTEGER NOT NULL, proposer TEXT NOT NULL,
                                     first TEXT NOT NULL, second TEXT NOT NULL,
                                     headers TEXT NOT NULL,
                                     PRIMARY KEY (height, proposer, second));
CREATE TABLE IF NOT EXISTS directory (brain INTEGER NOT NULL, address TEXT NOT NULL,
                                      endpoint TEXT NOT NULL, seq INTEGER NOT NULL,
                                      record TEXT NOT NULL, PRIMARY KEY (brain, address));
"""


class NodeStore:
    """SQLite (WAL, synchronous=FULL) tables of a node; callers serialise access."""

    def __init__(self, path: str | Path) -> None:
        self.db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    # ---- certificates ------------------------------------------------------------------
    def put_cert(self, height: int, block_hash: str, votes: list[dict[str, Any]]) -> None:
        self.db.execute("INSERT OR REPLACE INTO certs VALUES (?, ?, ?)",
                        (height, block_hash, json.dumps(votes, sort_keys=True)))

    def cert(self, height: int) -> tuple[str, list[dict[str, Any]]] | None:
        row = self.db.execute("SELECT hash, votes FROM certs WHERE height = ?",
                              (height,)).fetchone()
        return None if row is None else (row[0], json.loads(row[1]))

    # ---- own votes ---------------------------------------------------------------------
    def my_vote(self, height: int, round_: int) -> str | None:
        """The block this validator voted for in (height, round), if it voted."""
        row = self.db.execute("SELECT hash FROM round_votes WHERE height = ? AND round = ?",
                              (height, round_)).fetchone()
        return None if row is None else row[0]

    def last_vote(self, height: int) -> tuple[int, str] | None:
        """(round, hash) of this validator's latest vote at ``height`` — its lock."""
        row = self.db.execute("SELECT round, hash FROM round_votes WHERE height = ? "
                              "ORDER BY round DESC LIMIT 1", (height,)).fetchone()
        return None if row is None else (int(row[0]), str(row[1]))

    def record_my_vote(self, height: int, round_: int, block_hash: str) -> bool:
        """Record this node's vote; False (nothing written) if it already voted in that
        (height, round)."""
        cur = self.db.execute("INSERT OR IGNORE INTO round_votes VALUES (?, ?, ?)",
                              (height, round_, block_hash))
        return cur.rowcount == 1

    # ---- evidence ----------------------------------------------------------------------
    def add_evidence(self, height: int, proposer: str, first: str, second: str,
                     headers: list[dict[str, Any]]) -> bool:
        cur = self.db.execute("INSERT OR IGNORE INTO evidence VALUES (?, ?, ?, ?, ?)",
                              (height, proposer, first, second,
                               json.dumps(headers, sort_keys=True)))
        return cur.rowcount == 1

    def evidence(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT height, proposer, first, second, headers FROM evidence "
                               "ORDER BY height LIMIT ?", (limit,)).fetchall()
        return [{"height": h, "proposer": p, "first": a, "second": b,
                 "headers": json.loads(hd)} for h, p, a, b, hd in rows]

    def evidence_count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM evidence").fetchone()[0])

    # ---- directory ---------------------------------------------------------------------
    def put_announcement(self, brain: int, address: str, endpoint: str, seq: int,
                         record: dict[str, Any]) -> bool:
        """Store if newer than what is held; True when it changed the directory."""
        row = self.db.execute("SELECT seq FROM directory WHERE brain = ? AND address = ?",
                              (brain, address)).fetchone()
        if row is not None and row[0] >= seq:
            return False
        self.db.execute("INSERT OR REPLACE INTO directory VALUES (?, ?, ?, ?, ?)",
                        (brain, address, endpoint, seq, json.dumps(record, sort_keys=True)))
        return True

    def directory(self, brain: int) -> dict[str, str]:
        rows = self.db.execute("SELECT address, endpoint FROM directory WHERE brain = ? "
                               "ORDER BY address", (brain,)).fetchall()
        return {a: e for a, e in rows}

    def announcements(self, limit: int = 4096) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT record FROM directory ORDER BY brain, address LIMIT ?",
                               (limit,)).fetchall()
        return [json.loads(r[0]) for r in rows]
