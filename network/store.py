"""The node's own persistent records, beside the ledger's chain.db (SPEC N1, issue #8).

``node.db`` keeps what the ledger does not, and what must survive a SIGKILL:

* ``certs`` — the votes that made each block final, so a node can prove finality to a
  syncing peer (a block from GetBlocks is applied only with a quorum certificate). A
  certificate is written *before* its block is applied, so a crash in between leaves a
  spare certificate, never a final block without one.
* ``phase_votes`` — the block this node's validator voted for in each (height, round,
  phase), written before the vote leaves the process: a restarted validator never signs
  two votes for one (height, round, phase) — which would be double signing, slashed on
  chain — and its lock (latest precommit, ``network.finality``) survives the restart.
  (The older ``round_votes``/``my_votes`` tables of earlier node.db files are left unused:
  their one-phase votes carry no phase, so no current node counts them.)
* ``evidence`` — equivocations seen (two signed blocks for one height by one proposer).
* ``vote_evidence`` — double signing seen (two signed votes by one validator for one
  height, round and phase), the pair that an evidence tx puts on chain.
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
CREATE TABLE IF NOT EXISTS phase_votes (height INTEGER NOT NULL, round INTEGER NOT NULL,
                                        phase TEXT NOT NULL, hash TEXT NOT NULL,
                                        PRIMARY KEY (height, round, phase));
CREATE TABLE IF NOT EXISTS vote_evidence (height INTEGER NOT NULL, voter TEXT NOT NULL,
                                          round INTEGER NOT NULL, phase TEXT NOT NULL,
                                          votes TEXT NOT NULL,
                                          PRIMARY KEY (height, voter, round, phase));
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
    def my_vote(self, height: int, round_: int, phase: str) -> str | None:
        """The block this validator voted for in (height, round, phase), if it voted."""
        row = self.db.execute("SELECT hash FROM phase_votes WHERE height = ? AND round = ? "
                              "AND phase = ?", (height, round_, phase)).fetchone()
        return None if row is None else row[0]

    def last_vote(self, height: int, phase: str) -> tuple[int, str] | None:
        """(round, hash) of this validator's latest ``phase`` vote at ``height``; for
        precommits that is its lock."""
        row = self.db.execute("SELECT round, hash FROM phase_votes WHERE height = ? AND "
                              "phase = ? ORDER BY round DESC LIMIT 1",
                              (height, phase)).fetchone()
        return None if row is None else (int(row[0]), str(row[1]))

    def last_round(self, height: int) -> int | None:
        """The latest round in which this validator voted at ``height`` (any phase)."""
        row = self.db.execute("SELECT MAX(round) FROM phase_votes WHERE height = ?",
                              (height,)).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def record_my_vote(self, height: int, round_: int, phase: str, block_hash: str) -> bool:
        """Record this node's vote; False (nothing written) if it already voted in that
        (height, round, phase)."""
        cur = self.db.execute("INSERT OR IGNORE INTO phase_votes VALUES (?, ?, ?, ?)",
                              (height, round_, phase, block_hash))
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

    def add_vote_evidence(self, first: dict[str, Any], second: dict[str, Any]) -> bool:
        """Record a double-signing pair (the first seen per (height, voter, round, phase));
        True when it is new."""
        cur = self.db.execute("INSERT OR IGNORE INTO vote_evidence VALUES (?, ?, ?, ?, ?)",
                              (first["height"], first["voter"], first["round"],
                               first["phase"], json.dumps([first, second], sort_keys=True)))
        return cur.rowcount == 1

    def vote_evidence(self, limit: int = 100) -> list[list[dict[str, Any]]]:
        rows = self.db.execute("SELECT votes FROM vote_evidence ORDER BY height, voter LIMIT ?",
                               (limit,)).fetchall()
        return [json.loads(r[0]) for r in rows]

    def vote_evidence_count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM vote_evidence").fetchone()[0])

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
