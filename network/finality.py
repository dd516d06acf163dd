"""Proposer rotation, votes and finality (SPEC N1, issue #8) — pure functions.

The rules, in one place:

* **Voting set of height h** = ``chain.validator_set()`` on the state after h-1 (address →
  delegated stake), restricted to ``genesis.authorities`` when those are set (the ledger
  refuses blocks from non-authorities, so stake elsewhere cannot propose). While that is
  empty, the authorities with equal weight 1 — so a fresh network can bootstrap before any
  validator has staked.
* **Proposer ranking** for height h: a stake-weighted draw without replacement, seeded by
  the parent hash, in integers only (sha256 → pick in the cumulative stake of the
  remaining validators in address order). Every node computes the same ranking. The
  validator of rank k may propose (once per height) from round k on, so a dead proposer
  costs one round timeout, not the chain.
* **Votes** are ed25519 signatures by a validator over (chain id, height, round, block
  hash). A block is **final** when votes for the same (height, round, hash) from
  validators holding ≥ 2/3 of the voting set's stake for that height are seen:
  ``3 × voted ≥ 2 × total``. A certificate is such a set of votes, all of one round.
* **Lock**: a validator's latest vote at a height (round L, block A) locks it on A. In a
  later round it votes A again unless it has seen, for some round r with L ≤ r < now,
  signed votes proving that A did not get 2/3 in round r: the stake that voted only for
  other blocks in round r is > 1/3 of the total (``proves_unlock``). Why this is enough:
  if A was final in some round r0, the ≥ 2/3 that voted A there are locked on A from r0
  on, so in every round ≥ r0 the stake voting only for others is ≤ 1/3 and none of them
  can ever unlock — full argument in ``network/node.py``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from ledger.encoding import MAX_INT, canonical, is_hex64, is_int
from ledger.genesis import Genesis
from ledger.keys import Wallet, is_address, verify
from ledger.units import MAX_BRAINS

MAX_RANKED = 1024  # ranking is O(n²) in integers; no proposer beyond this rank is needed
MAX_ROUND = 2**31 - 1  # rounds are small in practice; a bound keeps them ordinary ints


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


def has_quorum(voters: set[str] | list[str], weights: dict[str, int]) -> bool:
    """True when ``voters`` hold ≥ 2/3 of the stake in ``weights`` (integers, exact)."""
    total = sum(weights.values())
    voted = sum(weights.get(v, 0) for v in set(voters))
    return total > 0 and 3 * voted >= 2 * total


def proves_unlock(round_votes: Mapping[str, Collection[str]], locked: str,
                  weights: dict[str, int]) -> bool:
    """True when the votes of one round (hash → voters) prove ``locked`` got no 2/3 in it.

    Counts the stake of voters that voted in that round only for blocks other than
    ``locked``; one who signed two different votes in the round is left out (it is not
    following the rules, so its vote proves nothing). Unlock needs that stake > 1/3 of the
    total, integers only: then the voters for ``locked`` in that round are < 2/3.
    """
    total = sum(weights.values())
    by_voter: dict[str, set[str]] = {}
    for block_hash, voters in round_votes.items():
        for v in voters:
            by_voter.setdefault(v, set()).add(block_hash)
    other = sum(weights.get(v, 0) for v, hashes in by_voter.items()
                if len(hashes) == 1 and locked not in hashes)
    return total > 0 and 3 * other > total


@dataclass(frozen=True)
class Vote:
    """A validator's signature that block ``block_hash`` is its choice for ``height`` in
    round ``round`` (one vote per validator per (height, round); see the module docstring)."""

    height: int
    block_hash: str
    voter: str
    signature: bytes
    round: int = 0

    @staticmethod
    def signing_bytes(chain_id: str, height: int, block_hash: str, round_: int) -> bytes:
        return canonical({"chain": chain_id, "type": "vote", "height": height,
                          "round": round_, "block": block_hash})

    @classmethod
    def make(cls, wallet: Wallet, chain_id: str, height: int, block_hash: str,
             round_: int = 0) -> Vote:
        sig = wallet.sign(cls.signing_bytes(chain_id, height, block_hash, round_))
        return cls(height, block_hash, wallet.address, sig, round_)

    def to_dict(self) -> dict[str, Any]:
        return {"height": self.height, "round": self.round, "block": self.block_hash,
                "voter": self.voter, "sig": self.signature.hex()}

    @classmethod
    def from_dict(cls, d: Any) -> Vote:
        """Parse a peer's vote; raises ``ValueError`` on any malformed field."""
        try:
            height, round_, block_hash, voter = d["height"], d["round"], d["block"], d["voter"]
            sig = bytes.fromhex(d["sig"])
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"malformed vote: {e}") from e
        if not is_int(height, 1):
            raise ValueError("vote height must be a positive int")
        if not is_int(round_, 0, MAX_ROUND):
            raise ValueError(f"vote round must be an int in 0..{MAX_ROUND}")
        if not is_hex64(block_hash):
            raise ValueError("vote block must be 64 hex chars")
        if not is_address(voter):
            raise ValueError("vote voter is not an address")
        return cls(height, block_hash, voter, sig, round_)

    def verify(self, chain_id: str) -> bool:
        return verify(self.voter, self.signing_bytes(chain_id, self.height, self.block_hash,
                                                     self.round),
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
        # bounded here, by name, so no store ever sees an int it cannot hold (issue #15)
        for name, v, hi in (("brain", brain, MAX_BRAINS - 1), ("seq", seq, MAX_INT)):
            if not is_int(v, 0, hi):
                raise ValueError(f"announcement {name} must be an int in 0..{hi}")
        if not isinstance(endpoint, str) or not endpoint or len(endpoint) > cls.MAX_ENDPOINT:
            raise ValueError("announcement endpoint must be a short non-empty string")
        if not is_address(address):
            raise ValueError("announcement address is not an address")
        return cls(brain, endpoint, address, seq, sig)

    def verify(self, chain_id: str) -> bool:
        return verify(self.address, self.signing_bytes(chain_id, self.brain, self.endpoint,
                                                       self.address, self.seq),
                      self.signature)
