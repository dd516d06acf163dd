"""Finality votes as the ledger sees them, and double-signing evidence (SPEC N1, L5).

Why this lives in the ledger: a double-signing proof is checked by every node when it
applies the evidence tx, so the bytes a validator signs for a vote must be defined here,
below the network (which only imports them, ``network.finality.Vote``). One definition,
so a vote that counts towards finality is exactly a vote that can be used as evidence.

A vote is (chain id, height, round, phase, block hash) signed by the voter; ``phase`` is
``prevote`` or ``precommit`` (two-phase voting, Tendermint). Two votes by one voter for
the same (height, round, phase) and different blocks are *double signing*: an honest
validator signs at most one vote per (height, round, phase), so the pair proves the key
is Byzantine, whatever else happened.
"""

from __future__ import annotations

from typing import Any

from ledger.encoding import MAX_INT, canonical, is_hex64, is_int
from ledger.keys import Wallet, is_address, verify

PHASES = ("prevote", "precommit")
MAX_ROUND = 2**31 - 1  # rounds are small in practice; a bound keeps them ordinary ints
VOTE_FIELDS = frozenset({"height", "round", "phase", "block", "voter", "sig"})


def vote_signing_bytes(chain_id: str, height: int, round_: int, phase: str,
                       block_hash: str) -> bytes:
    """The bytes a validator signs for one vote (the chain id stops cross-chain replay)."""
    return canonical({"chain": chain_id, "type": "vote", "height": height, "round": round_,
                      "phase": phase, "block": block_hash})


def sign_vote(wallet: Wallet, chain_id: str, height: int, round_: int, phase: str,
              block_hash: str) -> dict[str, Any]:
    """A vote in its wire form (what gossip carries and what an evidence tx holds)."""
    sig = wallet.sign(vote_signing_bytes(chain_id, height, round_, phase, block_hash))
    return {"height": height, "round": round_, "phase": phase, "block": block_hash,
            "voter": wallet.address, "sig": sig.hex()}


def vote_format_problem(d: Any) -> str | None:
    """Why ``d`` is not a well-formed vote (exact fields, types, ranges), or None."""
    if not isinstance(d, dict) or set(d) != VOTE_FIELDS:
        return f"a vote needs exactly {sorted(VOTE_FIELDS)}"
    if not is_int(d["height"], 1, MAX_INT):
        return "vote height must be a positive int"
    if not is_int(d["round"], 0, MAX_ROUND):
        return f"vote round must be an int in 0..{MAX_ROUND}"
    if d["phase"] not in PHASES:
        return f"vote phase must be one of {PHASES}"
    if not is_hex64(d["block"]):
        return "vote block must be 64 hex chars"
    if not is_address(d["voter"]):
        return "vote voter is not an address"
    sig = d["sig"]
    if not isinstance(sig, str) or len(sig) != 128:
        return "vote sig must be 128 hex chars"
    try:
        bytes.fromhex(sig)
    except ValueError:
        return "vote sig must be 128 hex chars"
    return None


def vote_signature_ok(d: dict[str, Any], chain_id: str) -> bool:
    """True when the voter's key signed this (well-formed) vote for ``chain_id``."""
    return verify(d["voter"], vote_signing_bytes(chain_id, d["height"], d["round"],
                                                 d["phase"], d["block"]),
                  bytes.fromhex(d["sig"]))


def double_sign_problem(first: Any, second: Any, chain_id: str) -> str | None:
    """Why (first, second) does not prove double signing, or None when it does: both
    well-formed and validly signed, one voter, one (height, round, phase), two blocks."""
    for name, d in (("first", first), ("second", second)):
        problem = vote_format_problem(d)
        if problem:
            return f"{name}: {problem}"
    if first["voter"] != second["voter"]:
        return "the votes are by different voters"
    if (first["height"], first["round"], first["phase"]) != \
            (second["height"], second["round"], second["phase"]):
        return "the votes are not for the same height, round and phase"
    if first["block"] == second["block"]:
        return "the votes are for the same block"
    for name, d in (("first", first), ("second", second)):
        if not vote_signature_ok(d, chain_id):
            return f"{name}: bad vote signature"
    return None
