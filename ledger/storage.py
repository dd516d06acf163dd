"""Durable storage (SPEC L10): a ``Store`` protocol, an in-memory store, and SQLite.

A block and the state changes it causes are written in ONE database transaction, so after
a crash the database holds either the block and its effects or neither. State rows are the
canonical encodings the state root hashes, so reopening rebuilds the same root.

SQLite is the only durable store. A server database (Postgres or another) is optional
under SPEC L10 and not built; one would implement the six methods of ``Store``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from ledger.block import Block
from ledger.encoding import canonical


class Store(Protocol):
    """What ``Chain`` needs from a database."""

    def genesis(self) -> dict[str, Any] | None:
        """The genesis config stored at initialisation, or None for an empty store."""

    def init_genesis(self, genesis: dict[str, Any], rows: dict[str, bytes]) -> None:
        """Atomically store the genesis config and the genesis state rows."""

    def commit_block(self, block: Block, upserts: dict[str, bytes], deletes: list[str]) -> None:
        """Atomically store ``block`` and its state changes."""

    def state_rows(self) -> Iterator[tuple[str, bytes]]:
        """Every stored state row."""

    def block(self, height: int) -> Block | None:
        """The block at ``height`` (1-based), or None."""

    def block_record(self, height: int) -> tuple[str, bytes] | None:
        """(hash, canonical bytes) of the block at ``height``, or None."""

    def head(self) -> tuple[int, str] | None:
        """(height, hash) of the last stored block, or None before block 1."""


class MemoryStore:
    """A non-durable store (tests, simulations)."""

    def __init__(self) -> None:
        self._genesis: dict[str, Any] | None = None
        self._rows: dict[str, bytes] = {}
        self._blocks: dict[int, Block] = {}

    def genesis(self) -> dict[str, Any] | None:
        return self._genesis

    def init_genesis(self, genesis: dict[str, Any], rows: dict[str, bytes]) -> None:
        self._genesis = genesis
        self._rows = dict(rows)

    def commit_block(self, block: Block, upserts: dict[str, bytes], deletes: list[str]) -> None:
        self._rows.update(upserts)
        for k in deletes:
            self._rows.pop(k, None)
        self._blocks[block.height] = block

    def state_rows(self) -> Iterator[tuple[str, bytes]]:
        return iter(list(self._rows.items()))

    def block(self, height: int) -> Block | None:
        return self._blocks.get(height)

    def block_record(self, height: int) -> tuple[str, bytes] | None:
        b = self._blocks.get(height)
        return None if b is None else (b.block_hash(), b.to_bytes())

    def head(self) -> tuple[int, str] | None:
        if not self._blocks:
            return None
        h = max(self._blocks)
        return h, self._blocks[h].block_hash()

    def close(self) -> None:
        pass


class SqliteStore:
    """SQLite in WAL mode with ``synchronous=FULL``: a committed block survives power loss."""

    def __init__(self, path: str | Path, synchronous: str = "FULL") -> None:
        self.path = str(path)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        if synchronous.upper() not in ("FULL", "NORMAL", "EXTRA", "OFF"):
            raise ValueError("synchronous must be FULL, EXTRA, NORMAL or OFF")
        self.db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS config (k TEXT PRIMARY KEY, v BLOB NOT NULL);
            CREATE TABLE IF NOT EXISTS state (k TEXT PRIMARY KEY, v BLOB NOT NULL);
            CREATE TABLE IF NOT EXISTS blocks (
                height INTEGER PRIMARY KEY, hash TEXT NOT NULL UNIQUE, data BLOB NOT NULL);
            """
        )

    def genesis(self) -> dict[str, Any] | None:
        row = self.db.execute("SELECT v FROM config WHERE k='genesis'").fetchone()
        return None if row is None else json.loads(row[0])

    def init_genesis(self, genesis: dict[str, Any], rows: dict[str, bytes]) -> None:
        with self._tx():
            self.db.execute("INSERT INTO config VALUES ('genesis', ?)", (canonical(genesis),))
            self.db.executemany("INSERT INTO state VALUES (?, ?)", rows.items())

    def commit_block(self, block: Block, upserts: dict[str, bytes], deletes: list[str]) -> None:
        with self._tx():
            self.db.execute("INSERT INTO blocks VALUES (?, ?, ?)",
                            (block.height, block.block_hash(), block.to_bytes()))
            self.db.executemany("INSERT OR REPLACE INTO state VALUES (?, ?)", upserts.items())
            self.db.executemany("DELETE FROM state WHERE k=?", ((k,) for k in deletes))

    def state_rows(self) -> Iterator[tuple[str, bytes]]:
        return iter(self.db.execute("SELECT k, v FROM state").fetchall())

    def block(self, height: int) -> Block | None:
        row = self.db.execute("SELECT data FROM blocks WHERE height=?", (height,)).fetchone()
        return None if row is None else Block.from_dict(json.loads(row[0]))

    def block_record(self, height: int) -> tuple[str, bytes] | None:
        row = self.db.execute("SELECT hash, data FROM blocks WHERE height=?",
                              (height,)).fetchone()
        return None if row is None else (str(row[0]), bytes(row[1]))

    def head(self) -> tuple[int, str] | None:
        row = self.db.execute("SELECT height, hash FROM blocks ORDER BY height DESC LIMIT 1")
        r = row.fetchone()
        return None if r is None else (int(r[0]), str(r[1]))

    def close(self) -> None:
        self.db.close()

    def _tx(self) -> _Transaction:
        return _Transaction(self.db)


class _Transaction:
    """BEGIN IMMEDIATE … COMMIT, or ROLLBACK on any exception."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.db.execute("COMMIT")
        else:
            self.db.execute("ROLLBACK")
