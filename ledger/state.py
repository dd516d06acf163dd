"""The chain state: typed tables of immutable values, an undo journal, and the state root.

Why this shape:
- Every value stored is immutable (ints, tuples, frozen dataclasses, read-only NumPy
  arrays), so a journal of ``(table, key, old value)`` is enough to undo a tx or a block
  exactly, and ``fork()`` is a cheap shallow copy (used by the pure ``apply_block``).
- Every table entry has one canonical byte encoding. The state root hashes those bytes,
  and the SQLite store saves exactly those bytes, so a node that reopens its database
  decodes the same values and recomputes the same root.
- Floats never enter the state: bonds are u16 fixed point (value × 65535), weights are the
  u16 values validators submit.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from ledger.encoding import canonical, sha256

_MISSING: Any = object()


@dataclass(frozen=True)
class Brain:
    """One Brain (L3, L4). Slot tuples hold an address or ``None`` for a free slot."""

    id: int
    owner: str
    method: str  # "reserved" | "burn" | "stake"
    acquired_at: int
    lock_pepecoin: int  # Pepecoin locked by the stake method (0 otherwise)
    name: str
    task: str  # sha256 hex of the artefact, "" until the owner sets it
    reward_address: str
    owner_bps: int  # owner share of the Brain's emission, default 2,500 (25%)
    miner_bps: int  # miners' share of the rest; validators get the remainder
    registration_fee: int  # base units, paid to the owner by "memorize"
    validators: tuple[str | None, ...] = ()
    miners: tuple[str | None, ...] = ()
    v_reg_at: tuple[int, ...] = ()
    m_reg_at: tuple[int, ...] = ()
    last_epoch: int = 0


@dataclass(frozen=True)
class Registration:
    """A memorized validator or miner; ``fee_paid`` is the grandfathered fee it paid."""

    role: str
    slot: int
    fee_paid: int
    height: int


@dataclass(frozen=True)
class Proposal:
    """A governance proposal (L8). ``status``: "open" | "passed" | "rejected" | "executed".

    A text proposal has ``body_sha256`` and ``param == ""``; a parameter change has
    ``param``/``value`` (and ``body_sha256 == ""``): once passed, ``executes`` is the height
    at whose end the value is written, after which its status is "executed"."""

    id: int
    proposer: str
    title: str
    body_sha256: str
    created: int
    closes: int
    status: str = "open"
    votes_for: int = 0
    votes_against: int = 0
    eligible: int = 0
    param: str = ""
    value: int = 0
    executes: int = 0


def _ro(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


# ---- codecs: table -> (key parts types, encode value, decode value) -------------------------

def _enc_json(v: Any) -> bytes:
    return canonical(v)


def _enc_dc(v: Any) -> bytes:
    return canonical(asdict(v))


def _dec_dc(cls: type) -> Any:
    names = [f.name for f in fields(cls)]

    def dec(b: bytes) -> Any:
        d = json.loads(b)
        return cls(**{n: tuple(d[n]) if isinstance(d[n], list) else d[n] for n in names})

    return dec


def _enc_wrow(v: tuple[int, np.ndarray]) -> bytes:
    return v[0].to_bytes(8, "big") + v[1].astype("<u2").tobytes()


def _dec_wrow(b: bytes) -> tuple[int, np.ndarray]:
    return int.from_bytes(b[:8], "big"), _ro(np.frombuffer(b[8:], dtype="<u2").astype(np.uint16))


def _enc_bond(v: np.ndarray) -> bytes:
    r, c = v.shape
    return r.to_bytes(4, "big") + c.to_bytes(4, "big") + v.astype("<u2").tobytes()


def _dec_bond(b: bytes) -> np.ndarray:
    r, c = int.from_bytes(b[:4], "big"), int.from_bytes(b[4:8], "big")
    return _ro(np.frombuffer(b[8:], dtype="<u2").astype(np.uint16).reshape(r, c))


def _dec_json_tuple(b: bytes) -> Any:
    v = json.loads(b)
    return tuple(v) if isinstance(v, list) else v


TABLES: dict[str, tuple[tuple[type, ...], Any, Any]] = {
    "acct": ((str,), _enc_json, _dec_json_tuple),  # addr -> (balance, nonce)
    "meta": ((str,), _enc_json, json.loads),  # name -> int | str
    "brain": ((int,), _enc_dc, _dec_dc(Brain)),
    "pend": ((int,), _enc_json, json.loads),  # brain -> emission waiting for its epoch
    "perf": ((int,), _enc_json, json.loads),  # brain -> performance (bps) of its last epoch
    "reg": ((int, str), _enc_dc, _dec_dc(Registration)),
    "stake": ((int, str, str), _enc_json, json.loads),  # (brain, delegate, staker) -> amount
    "wrow": ((int, int), _enc_wrow, _dec_wrow),  # (brain, validator slot) -> (set_at, u16[])
    "bond": ((int,), _enc_bond, _dec_bond),  # brain -> u16[validator slots, miner slots]
    "cred": ((int,), _enc_json, _dec_json_tuple),  # brain -> cumulative credits per miner slot
    "eth": ((str,), _enc_json, json.loads),  # bridge attestation ref -> kind (replay guard)
    "prop": ((int,), _enc_dc, _dec_dc(Proposal)),
    "vote": ((int, int), _enc_json, json.loads),  # (proposal, brain) -> approve
    # governance agenda, so a block touches only the proposals due at its height:
    "pclose": ((int,), _enc_json, _dec_json_tuple),  # closing height -> proposal ids
    "pexec": ((int,), _enc_json, _dec_json_tuple),  # execution height -> proposal ids
    "param": ((str,), _enc_json, json.loads),  # governable parameter -> live value (L8)
    "unlock": ((int, int), _enc_json, _dec_json_tuple),  # (brain, height) -> (owner, pepecoin)
    "tft": ((int,), _enc_json, _dec_json_tuple),  # brain -> (set_at, (accuracy bps per slot))
    # (release height, brain, delegate, staker) -> amount unstaked, bonded until then (L5)
    "unbond": ((int, int, str, str), _enc_json, json.loads),
    "tomb": ((str,), _enc_json, json.loads),  # slashed double-signer -> offence height
}


def encode_key(table: str, key: Any) -> str:
    """Storage/root key: ``table:part/part``. Parts never contain '/' (checked by rules)."""
    parts = key if isinstance(key, tuple) else (key,)
    return table + ":" + "/".join(str(p) for p in parts)


def decode_key(skey: str) -> tuple[str, Any]:
    table, rest = skey.split(":", 1)
    types = TABLES[table][0]
    raw = rest.split("/")
    if len(raw) != len(types):
        raise ValueError(f"bad key {skey!r}")
    parts = tuple(t(p) for t, p in zip(types, raw, strict=True))
    return table, parts if len(parts) > 1 else parts[0]


def encode_value(table: str, value: Any) -> bytes:
    return TABLES[table][1](value)


def decode_value(table: str, data: bytes) -> Any:
    return TABLES[table][2](data)


class State:
    """All chain state. Mutate only through ``put``/``delete`` (journaled, dirty-tracked)."""

    def __init__(self) -> None:
        self.tables: dict[str, dict[Any, Any]] = {t: {} for t in TABLES}
        self._journal: list[tuple[str, Any, Any]] = []
        self._dirty_root: set[tuple[str, Any]] = set()
        self._dirty_store: set[tuple[str, Any]] = set()
        self._leaves: dict[str, bytes] = {}
        self._order: list[str] = []  # sorted keys of _leaves
        # derived indexes, rebuilt from the "stake" table; never hashed or stored
        self.delegate_stake: dict[tuple[int, str], int] = {}
        self.stakers: dict[tuple[int, str], dict[str, int]] = {}
        self.brain_stake: dict[int, int] = {}
        self.total_stake: int = 0

    # ---- primitive access ------------------------------------------------------------
    def get(self, table: str, key: Any, default: Any = None) -> Any:
        return self.tables[table].get(key, default)

    def put(self, table: str, key: Any, value: Any) -> None:
        self._journal.append((table, key, self.tables[table].get(key, _MISSING)))
        self._raw_set(table, key, value)

    def delete(self, table: str, key: Any) -> None:
        if key in self.tables[table]:
            self._journal.append((table, key, self.tables[table][key]))
            self._raw_set(table, key, _MISSING)

    def _raw_set(self, table: str, key: Any, value: Any) -> None:
        tab = self.tables[table]
        if table == "stake":
            self._index_stake(key, tab.get(key, 0), 0 if value is _MISSING else value)
        if value is _MISSING:
            tab.pop(key, None)
        else:
            tab[key] = value
        self._dirty_root.add((table, key))
        self._dirty_store.add((table, key))

    def _index_stake(self, key: tuple[int, str, str], old: int, new: int) -> None:
        brain, delegate, staker = key
        d = new - old
        dk = (brain, delegate)
        self.delegate_stake[dk] = self.delegate_stake.get(dk, 0) + d
        self.brain_stake[brain] = self.brain_stake.get(brain, 0) + d
        self.total_stake += d
        pool = self.stakers.setdefault(dk, {})
        if new:
            pool[staker] = new
        else:
            pool.pop(staker, None)

    def items(self, table: str) -> Iterator[tuple[Any, Any]]:
        return iter(self.tables[table].items())

    # ---- journal -------------------------------------------------------------------------
    def checkpoint(self) -> int:
        """Mark the journal; ``rollback`` to it undoes everything since."""
        return len(self._journal)

    def rollback(self, mark: int) -> None:
        while len(self._journal) > mark:
            table, key, old = self._journal.pop()
            self._raw_set(table, key, old)

    def commit(self) -> None:
        """Forget the undo history (after a block is accepted)."""
        self._journal.clear()

    def take_dirty(self) -> tuple[dict[str, bytes], list[str]]:
        """Encoded upserts and deletions since the last call (what the store must write)."""
        upserts: dict[str, bytes] = {}
        deletes: list[str] = []
        for table, key in self._dirty_store:
            skey = encode_key(table, key)
            if key in self.tables[table]:
                upserts[skey] = encode_value(table, self.tables[table][key])
            else:
                deletes.append(skey)
        self._dirty_store.clear()
        return upserts, deletes

    # ---- root ------------------------------------------------------------------------------
    def state_root(self) -> str:
        """Hex sha256 over the sorted leaves sha256(key, value) of every table entry.

        Leaf hashes are cached and only changed keys are rehashed; the sorted key order is
        kept between calls (Timsort merges the few new keys in near-linear time).
        """
        added: list[str] = []
        removed = False
        for table, key in self._dirty_root:
            skey = encode_key(table, key)
            if key in self.tables[table]:
                kb = skey.encode()
                val = encode_value(table, self.tables[table][key])
                if skey not in self._leaves:
                    added.append(skey)
                self._leaves[skey] = sha256(len(kb).to_bytes(4, "big") + kb + val)
            elif self._leaves.pop(skey, None) is not None:
                removed = True
        self._dirty_root.clear()
        if removed:
            self._order = [k for k in self._order if k in self._leaves]
        if added:
            self._order.extend(added)
            self._order.sort()
        leaves = self._leaves
        return sha256(b"".join([leaves[k] for k in self._order])).hex()

    # ---- copies and loading ---------------------------------------------------------------
    def fork(self) -> State:
        """An independent copy (values are immutable, so shallow table copies suffice)."""
        s = State()
        s.tables = {t: dict(v) for t, v in self.tables.items()}
        s._dirty_root = set(self._dirty_root)
        s._leaves = dict(self._leaves)
        s._order = list(self._order)
        s.delegate_stake = dict(self.delegate_stake)
        s.stakers = {k: dict(v) for k, v in self.stakers.items()}
        s.brain_stake = dict(self.brain_stake)
        s.total_stake = self.total_stake
        return s

    @classmethod
    def from_encoded(cls, rows: Iterator[tuple[str, bytes]]) -> State:
        """Rebuild a state from stored ``(key, value bytes)`` rows (a reopened database)."""
        s = cls()
        for skey, data in rows:
            table, key = decode_key(skey)
            s._raw_set(table, key, decode_value(table, data))
        s._dirty_store.clear()
        return s

    def encoded_items(self) -> Iterator[tuple[str, bytes]]:
        for table, tab in self.tables.items():
            for key, value in tab.items():
                yield encode_key(table, key), encode_value(table, value)

    # ---- typed helpers used by the rules --------------------------------------------------
    def meta(self, name: str, default: Any = 0) -> Any:
        return self.tables["meta"].get(name, default)

    @property
    def height(self) -> int:
        return int(self.meta("height"))

    def param(self, name: str) -> int:
        """The live value of a governable chain parameter (``genesis.param_bounds``): its
        genesis value until a passed proposal executes. Rules read this, never ``Genesis``."""
        value = self.tables["param"].get(name)
        if value is None:
            raise KeyError(f"unknown chain parameter {name!r}")
        return int(value)

    def params(self) -> dict[str, int]:
        """Every governable parameter's live value, by name."""
        return dict(sorted(self.tables["param"].items()))

    def balance(self, addr: str) -> int:
        return self.tables["acct"].get(addr, (0, 0))[0]

    def nonce(self, addr: str) -> int:
        """Next nonce the account must use."""
        return self.tables["acct"].get(addr, (0, 0))[1]

    def set_account(self, addr: str, balance: int, nonce: int) -> None:
        if balance < 0:
            raise AssertionError("negative balance must be caught by the rules")
        if balance == 0 and nonce == 0:
            self.delete("acct", addr)
        else:
            self.put("acct", addr, (balance, nonce))

    def credit(self, addr: str, amount: int) -> None:
        if amount:
            self.set_account(addr, self.balance(addr) + amount, self.nonce(addr))

    def brain(self, brain_id: int) -> Brain | None:
        return self.tables["brain"].get(brain_id)

    def supply(self) -> int:
        """Every base unit in existence: balances + stakes + unbonding stakes + emission
        pending in Brains."""
        return (
            sum(b for b, _ in self.tables["acct"].values())
            + self.total_stake
            + sum(self.tables["unbond"].values())
            + sum(self.tables["pend"].values())
        )
