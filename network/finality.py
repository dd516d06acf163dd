"""Finality: voting set, proposer rotation and two-phase votes (SPEC N1, issue #8, #15) —
pure functions. (Named for block finality; ``ledger.consensus`` is Yuma, SPEC L7.)

The rules, in one place:

* **Voting set of height h** = ``chain.validator_set()`` on the state after h-1: per Brain,
  the validators active under SPEC L7 (stake ≥ the 70th percentile of that Brain's
  validator stakes), each weighted by its stake summed over the Brains where it is active,
  double-signers tombstoned on chain left out — restricted to ``genesis.authorities`` when
  those are set (the ledger refuses blocks from non-authorities). While that is empty, the
  authorities with equal weight 1, so a fresh network can bootstrap before anyone stakes.
* **Proposer ranking** for height h: a stake-weighted draw without replacement, seeded by
  the parent hash, in integers only (sha256 → pick in the cumulative stake of the
  remaining validators in address order). Every node computes the same ranking. The
  validator of rank k may propose (once per height) from round k on, so a dead proposer
  costs one round timeout, not the chain.
* **Votes** are ed25519 signatures over (chain id, height, round, phase, block hash), the
  bytes defined once in ``ledger.evidence`` (so a vote is also valid evidence); phase is
  ``prevote`` or ``precommit`` (Tendermint, Buchman–Kwon–Milosevic 2018). A *POL* (proof of
  lock) for B in round r is prevotes for (h, r, B) from ≥ 2/3 of the stake; a block is
  **final** with precommits for the same (h, r, B) from ≥ 2/3: ``3 × voted ≥ 2 × total``.
  A certificate is such a set of precommits, all of one round.
* **Lock**: a validator precommits B in round r only on seeing a POL for B in round r, and
  its latest precommit (round L, block A) locks it. In a later round it prevotes A unless
  it has seen a POL for some block in a round ≥ L (then that block). Why this is safe while
  the Byzantine stake is < 1/3: full argument in ``network/rounds.py``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from ledger.encoding import MAX_INT, canonical, is_int
from ledger.evidence import (
    MAX_ROUND,
    PHASES,
    sign_vote,
    vote_format_problem,
    vote_signature_ok,
)
from ledger.genesis import Genesis
from ledger.keys import Wallet, is_address, verify
from ledger.units import MAX_BRAINS

MAX_RANKED = 1024  # ranking is O(n²) in integers; no proposer beyond this rank is needed
PREVOTE, PRECOMMIT = PHASES
__all__ = ["MAX_ROUND", "PHASES", "PRECOMMIT", "PREVOTE", "Announcement", "Vote",
           "has_quorum", "more_than_a_third", "proposer_ranking", "voting_set"]


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


def more_than_a_third(voters: Collection[str], weights: Mapping[str, int]) -> bool:
    """True when ``voters`` hold > 1/3 of the stake: at least one of them is honest while
    the Byzantine stake is < 1/3 (the round-jump rule)."""
    total = sum(weights.values())
    voted = sum(weights.get(v, 0) for v in set(voters))
    return total > 0 and 3 * voted > total


@dataclass(frozen=True)
class Vote:
    """A validator's signed ``phase`` vote for ``block_hash`` at (``height``, ``round``): one
    per validator per (height, round, phase); two different ones are double signing."""

    height: int
    block_hash: str
    voter: str
    signature: bytes
    round: int = 0
    phase: str = PRECOMMIT

    @classmethod
    def make(cls, wallet: Wallet, chain_id: str, height: int, block_hash: str,
             round_: int = 0, phase: str = PRECOMMIT) -> Vote:
        return cls.from_dict(sign_vote(wallet, chain_id, height, round_, phase, block_hash))

    def to_dict(self) -> dict[str, Any]:
        return {"height": self.height, "round": self.round, "phase": self.phase,
                "block": self.block_hash, "voter": self.voter, "sig": self.signature.hex()}

    @classmethod
    def from_dict(cls, d: Any) -> Vote:
        """Parse a peer's vote; raises ``ValueError`` on any malformed field."""
        problem = vote_format_problem(d)
        if problem:
            raise ValueError(f"malformed vote: {problem}")
        return cls(d["height"], d["block"], d["voter"], bytes.fromhex(d["sig"]), d["round"],
                   d["phase"])

    def verify(self, chain_id: str) -> bool:
        return vote_signature_ok(self.to_dict(), chain_id)


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
