"""Blocks and headers (SPEC L2).

The block hash is the hash of the *unsigned* header, so the id never depends on signature
bytes; the proposer's signature covers exactly those bytes plus the chain id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ledger.encoding import MAX_INT, canonical, is_hex64, is_int, sha256
from ledger.keys import Wallet, is_address, verify
from ledger.tx import Tx

ZERO_HASH = "00" * 32


class InvalidBlock(ValueError):
    """A block that cannot apply (or, from a peer, cannot even be parsed); the state is
    unchanged."""


def tx_root(txs: list[Tx] | tuple[Tx, ...]) -> str:
    """Binary Merkle root (hex) of the tx hashes; odd nodes are promoted; empty → zero hash."""
    level = [t.tx_hash() for t in txs]
    if not level:
        return ZERO_HASH
    while len(level) > 1:
        nxt = [sha256(level[i] + level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0].hex()


@dataclass(frozen=True)
class Header:
    """Block header. ``state_root`` is the root *after* applying the block."""

    height: int
    parent: str
    state_root: str
    tx_root: str
    time: int
    proposer: str
    signature: bytes = b""

    def unsigned(self) -> dict[str, Any]:
        return {
            "height": self.height,
            "parent": self.parent,
            "state_root": self.state_root,
            "tx_root": self.tx_root,
            "time": self.time,
            "proposer": self.proposer,
        }

    def format_problem(self) -> str | None:
        """Why the header's fields have the wrong types/shapes (from a peer), or None."""
        for name in ("height", "time"):
            v = getattr(self, name)
            if not is_int(v, 0, MAX_INT):
                return f"header {name} must be an int in 0..{MAX_INT}"
        for name in ("parent", "state_root", "tx_root"):
            v = getattr(self, name)
            if not is_hex64(v):
                return f"header {name} must be 64 hex chars"
        if not is_address(self.proposer):
            return "header proposer is not an address"
        if not isinstance(self.signature, bytes):
            return "header signature must be bytes"
        return None

    def block_hash(self) -> str:
        """Hex id of the block (hash of the unsigned header)."""
        return sha256(canonical(self.unsigned())).hex()

    def signing_bytes(self, chain_id: str) -> bytes:
        return canonical({"chain": chain_id, **self.unsigned()})

    def verify_signature(self, chain_id: str) -> bool:
        return verify(self.proposer, self.signing_bytes(chain_id), self.signature)


@dataclass(frozen=True)
class Block:
    """A header and its ordered transactions."""

    header: Header
    txs: tuple[Tx, ...]

    @property
    def height(self) -> int:
        return self.header.height

    def block_hash(self) -> str:
        return self.header.block_hash()

    def to_dict(self) -> dict[str, Any]:
        """Wire/storage form (JSON-able)."""
        return {
            "header": {**self.header.unsigned(), "sig": self.header.signature.hex()},
            "txs": [t.to_dict() for t in self.txs],
        }

    def to_bytes(self) -> bytes:
        return canonical(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Block:
        """Inverse of ``to_dict``; raises ``InvalidBlock`` on malformed input (from a peer).

        Every field is checked here, txs included (types, integer ranges, hex), because a
        block that parses is hashed, voted on and stored: a mistyped tx found only later
        (say a float fee when the tx root is computed) raised ``TypeError`` where callers
        expect ``InvalidBlock`` — issue #15, where it stopped a validator voting."""
        try:
            h = dict(d["header"])
            sig = bytes.fromhex(h.pop("sig"))
            header = Header(signature=sig, **h)
            if not isinstance(d["txs"], list):
                raise TypeError("txs must be a list")
            txs = tuple(Tx.from_dict(t) for t in d["txs"])
            for tx in txs:
                tx.check_format()
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise InvalidBlock(f"malformed block: {e}") from e
        problem = header.format_problem()
        if problem:
            raise InvalidBlock(problem)
        return cls(header, txs)


def sign_header(header: Header, wallet: Wallet, chain_id: str) -> Header:
    """Return ``header`` signed by ``wallet`` (which must be the proposer)."""
    if wallet.address != header.proposer:
        raise ValueError("proposer address does not match the signing wallet")
    sig = wallet.sign(header.signing_bytes(chain_id))
    return Header(**header.unsigned(), signature=sig)
