"""Proposer rotation, votes and finality (SPEC N1, issue #8) — pure functions.

The rules, in one place:

* **Voting set of height h** = ``chain.validator_set()`` on the state after h-1 (address →
  delegated stake), restricted to ``genesis.authorities`` when those are set (the ledger
  refuses blocks from non-authorities, so stake elsewhere cannot propose). While that is
  empty, the authorities with equal weight 1 — so a fresh network can bootstrap before any
  validator has staked.
* **Proposer ranking** for height h: a stake-weighted draw without replacement, seeded by
  the parent hash, in integers only (sha256 → pick in the cumulative stake of the
  remaining validators in address order). Every node computes the same ranking. Round r's
  proposer is ``ranking[r % n]``; it may propose once ``r × round_timeout`` has passed since
  the round-0 slot opened, so a dead proposer costs one round timeout, not the chain.
* **Votes** are ed25519 signatures by a validator over (chain id, height, block hash).
  A block is **final** when votes from validators holding ≥ 2/3 of the voting set's stake
  for that height are seen: ``3 × voted ≥ 2 × total``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from ledger.encoding import canonical
from ledger.genesis import Genesis
from ledger.keys import Wallet, is_address, verify

MAX_RANKED = 1024  # ranking is O(n²) in integers; no proposer beyond this rank is needed


def voting_set(validators: dict[str, int], genesis: Genesis) -> dict[str, int]:
    """The stake each validator counts with for the next height (see module docstring)."""
    vs = {a: s for a, s in validators.items() if s > 0}
    if genesis.authorities:
        vs = {a: s for a, s in vs.items() if a in genesis.authorities}
        if not vs:
            vs = {a: 1 for a in sorted(set(genesis.authorities))}
    return dict(sorted(vs.items()))


def proposer_ranking(parent_hash: str, weights: dict[str, int]) -> list[str]:
    """Deterministic stake-weighted order of proposers for the block after ``parent_hash``."""
    remaining = sorted((a, w) for a, w in weights.items() if w > 0)
    order: list[str] = []
    i = 0
    while remaining and len(order) < MAX_RANKED:
        total = sum(w for _, w in remaining)
        seed = hashlib.sha256(f"{parent_hash}:{i}".encode()).digest()
        pick = int.from_bytes(seed, "big") % total
        acc = 0
        for j, (a, w) in enumerate(remaining):
            acc += w
            if pick < acc:
                order.append(a)
                del remaining[j]
                break
        i += 1
    return order


def proposer_rank(parent_hash: str, weights: dict[str, int], address: str) -> int | None:
    """The first round in which ``address`` may propose, or None if it is not in the set."""
    ranking = proposer_ranking(parent_hash, weights)
    return ranking.index(address) if address in ranking else None


def has_quorum(voters: set[str] | list[str], weights: dict[str, int]) -> bool:
    """True when ``voters`` hold ≥ 2/3 of the stake in ``weights`` (integers, exact)."""
    total = sum(weights.values())
    voted = sum(weights.get(v, 0) for v in set(voters))
    return total > 0 and 3 * voted >= 2 * total


@dataclass(frozen=True)
class Vote:
    """A validator's signature that block ``block_hash`` is its choice for ``height``."""

    height: int
    block_hash: str
    voter: str
    signature: bytes

    @staticmethod
    def signing_bytes(chain_id: str, height: int, block_hash: str) -> bytes:
        return canonical({"chain": chain_id, "type": "vote", "height": height,
                          "block": block_hash})

    @classmethod
    def make(cls, wallet: Wallet, chain_id: str, height: int, block_hash: str) -> Vote:
        sig = wallet.sign(cls.signing_bytes(chain_id, height, block_hash))
        return cls(height, block_hash, wallet.address, sig)

    def to_dict(self) -> dict[str, Any]:
        return {"height": self.height, "block": self.block_hash, "voter": self.voter,
                "sig": self.signature.hex()}

    @classmethod
    def from_dict(cls, d: Any) -> Vote:
        """Parse a peer's vote; raises ``ValueError`` on any malformed field."""
        try:
            height, block_hash, voter = d["height"], d["block"], d["voter"]
            sig = bytes.fromhex(d["sig"])
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"malformed vote: {e}") from e
        if not isinstance(height, int) or isinstance(height, bool) or height < 1:
            raise ValueError("vote height must be a positive int")
        if not (isinstance(block_hash, str) and len(block_hash) == 64
                and all(c in "0123456789abcdef" for c in block_hash)):
            raise ValueError("vote block must be 64 hex chars")
        if not is_address(voter):
            raise ValueError("vote voter is not an address")
        return cls(height, block_hash, voter, sig)

    def verify(self, chain_id: str) -> bool:
        return verify(self.voter, self.signing_bytes(chain_id, self.height, self.block_hash),
                      self.signature)


@dataclass(frozen=True)
class Announcement:
    """A miner's signed endpoint for a Brain; ``seq`` orders re-announcements (newest wins)."""

    brain: int
    endpoint: str
    address: str
    seq: int
    signature: bytes

    MAX_ENDPOINT = 256

    @staticmethod
    def signing_bytes(chain_id: str, brain: int, endpoint: str, address: str, seq: int
                      ) -> bytes:
        return canonical({"chain": chain_id, "type": "announce", "brain": brain,
                          "endpoint": endpoint, "address": address, "seq": seq})

    @classmethod
    def make(cls, wallet: Wallet, chain_id: str, brain: int, endpoint: str, seq: int
             ) -> Announcement:
        sig = wallet.sign(cls.signing_bytes(chain_id, brain, endpoint, wallet.address, seq))
        return cls(brain, endpoint, wallet.address, seq, sig)

    def to_dict(self) -> dict[str, Any]:
        return {"brain": self.brain, "endpoint": self.endpoint, "address": self.address,
                "seq": self.seq, "sig": self.signature.hex()}

    @classmethod
    def from_dict(cls, d: Any) -> Announcement:
        """Parse a peer's announcement; raises ``ValueError`` on any malformed field."""
        try:
            brain, endpoint, address, seq = d["brain"], d["endpoint"], d["address"], d["seq"]
            sig = bytes.fromhex(d["sig"])
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"malformed announcement: {e}") from e
        for name, v in (("brain", brain), ("seq", seq)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"announcement {name} must be a non-negative int")
        if not isinstance(endpoint, str) or not endpoint or len(endpoint) > cls.MAX_ENDPOINT:
            raise ValueError("announcement endpoint must be a short non-empty string")
        if not is_address(address):
            raise ValueError("announcement address is not an address")
        return cls(brain, endpoint, address, seq, sig)

    def verify(self, chain_id: str) -> bool:
        return verify(self.address, self.signing_bytes(chain_id, self.brain, self.endpoint,
                                                       self.address, self.seq),
                      self.signature)
