"""Genesis configuration and the genesis state (SPEC L2, L3).

Every chain parameter a node must agree on lives here, and the genesis hash covers all of
them, so two nodes with different parameters can never accept each other's blocks.

Governable parameters (SPEC L8, issue #16) only *start* here: ``genesis_state`` copies them
into the state table ``param``, which every rule reads (``State.param``) and which a passed
``propose_param`` changes within ``param_bounds``. Reading ``Genesis.tempo`` or
``Genesis.min_fee`` after genesis gives the starting value, not the live one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ledger.encoding import canonical, is_int, sha256
from ledger.keys import is_address
from ledger.state import Brain, State
from ledger.units import BASED, BLOCKS_PER_YEAR, BPS, DEFAULT_REGISTRATION_FEE, RESERVED_BRAINS

DEFAULT_OWNER_BPS = 2_500  # 25% to the Brain owner (L6)
DEFAULT_MINER_BPS = 5_000  # of the remaining 75%: half to miners, half to validators


@dataclass(frozen=True)
class Genesis:
    """Chain parameters. ``balances`` are base units; addresses are hex ed25519 keys."""

    chain_id: str
    operator: str  # owns the reserved Brains #0–#6 and #47 (L3)
    bridge: str  # signs Pepecoin burn/lock attestations (L3)
    balances: dict[str, int] = field(default_factory=dict)
    time: int = 0
    block_time: int = 10  # seconds; L2 (configurable for tests)
    tempo: int = 360  # blocks between two epochs of a Brain (L7)
    voting_period: int = 60_480  # blocks a proposal stays open (one week at 10 s)
    # blocks from a passed proposal's close to its execution (one day at 10 s): time for
    # nodes and clients to see a change coming before it applies
    execution_delay: int = 8_640
    # after year one, the share of GigaBrains (bps) that must vote for an outcome to count
    quorum_bps: int = 3_334
    registration_fee: int = DEFAULT_REGISTRATION_FEE  # fee of a newly issued Brain (L4)
    blocks_per_year: int = BLOCKS_PER_YEAR  # for β(t) and the first-year governance rule
    stake_lock_days: int = 90
    min_fee: int = 0
    authorities: tuple[str, ...] = ()  # allowed proposers; empty = any valid signature
    # L5: blocks an unstaked amount stays bonded — and slashable — before it is paid out;
    # also how old double-signing evidence may be (one week of 10 s blocks)
    unbonding_blocks: int = 60_480
    max_block_txs: int = 1_000  # txs per block (issue #16); the ledger caps it at 20,000

    def __post_init__(self) -> None:
        for a in (self.operator, self.bridge, *self.balances, *self.authorities):
            if not is_address(a):
                raise ValueError(f"not an address: {a!r}")
        if not all(is_int(v) for v in self.balances.values()):
            raise ValueError("genesis balances must be non-negative ints")
        if self.tempo < 1 or self.block_time < 1 or self.voting_period < 1:
            raise ValueError("tempo, block_time and voting_period must be >= 1")
        for name in ("min_fee", "execution_delay", "registration_fee"):
            if not is_int(getattr(self, name)):
                raise ValueError(f"{name} must be a non-negative int")
        if not is_int(self.quorum_bps, 0, BPS):
            raise ValueError(f"quorum_bps must be an int in 0..{BPS}")
        if not is_int(self.unbonding_blocks):
            raise ValueError("unbonding_blocks must be a non-negative int")
        if not is_int(self.max_block_txs, 1, 20_000):
            raise ValueError("max_block_txs must be an int in 1..20000")

    @property
    def stake_lock_blocks(self) -> int:
        """The 90-day Pepecoin stake lock, in blocks."""
        return self.stake_lock_days * 86_400 // self.block_time

    def to_dict(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "operator": self.operator,
            "bridge": self.bridge,
            "balances": dict(sorted(self.balances.items())),
            "time": self.time,
            "block_time": self.block_time,
            "tempo": self.tempo,
            "voting_period": self.voting_period,
            "execution_delay": self.execution_delay,
            "quorum_bps": self.quorum_bps,
            "registration_fee": self.registration_fee,
            "blocks_per_year": self.blocks_per_year,
            "stake_lock_days": self.stake_lock_days,
            "min_fee": self.min_fee,
            "authorities": list(self.authorities),
            "unbonding_blocks": self.unbonding_blocks,
            "max_block_txs": self.max_block_txs,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Genesis:
        d = dict(d)
        d["authorities"] = tuple(d.get("authorities", ()))
        return cls(**d)

    def genesis_hash(self) -> str:
        """Hex hash of the configuration; the parent hash of block 1."""
        return sha256(canonical(self.to_dict())).hex()

    @property
    def supply(self) -> int:
        return sum(self.balances.values())


def param_bounds(g: Genesis) -> dict[str, tuple[int, int]]:
    """Inclusive bounds of each governable parameter: a ``propose_param`` outside them is
    refused when proposed. Why these:

    - ``min_fee`` ≤ 1 $BASED: every validator pays it for ``set_weights`` each epoch, so a
      higher floor could price honest validators out; 0 allowed (the genesis default).
    - ``registration_fee`` (of Brains issued from then on) ≤ 10,000 $BASED: 100× the
      whitepaper's default; owners still set their own Brain's fee (L4).
    - ``tempo`` 100..100,000 blocks: epochs are staggered by Brain id, so a block runs at
      most ⌈1024 / tempo⌉ Brain epochs (≤ 11 at 100, each ~40 ms for a full Brain); above
      100,000 (~11.6 days at 10 s) miners would wait too long to be paid.
    - ``beta_start`` 0..8 years of blocks: where β(t)'s 2-year ramp to 0.9 starts (L7).
    """
    return {
        "beta_start": (0, 8 * g.blocks_per_year),
        "min_fee": (0, BASED),
        "registration_fee": (0, 10_000 * BASED),
        "tempo": (100, 100_000),
    }


def genesis_params(g: Genesis) -> dict[str, int]:
    """The governable parameters' starting values (the state table ``param`` at height 0);
    β(t)'s ramp starts after two years (L7)."""
    return {
        "beta_start": 2 * g.blocks_per_year,
        "min_fee": g.min_fee,
        "registration_fee": g.registration_fee,
        "tempo": g.tempo,
    }


def new_brain(brain_id: int, owner: str, method: str, height: int, registration_fee: int,
              lock: int = 0) -> Brain:
    """A Brain with the default owner settings (25% owner share) and the live default
    registration fee (parameter ``registration_fee``), which its owner may change."""
    return Brain(
        id=brain_id,
        owner=owner,
        method=method,
        acquired_at=height,
        lock_pepecoin=lock,
        name=f"Brain #{brain_id}",
        task="",
        reward_address=owner,
        owner_bps=DEFAULT_OWNER_BPS,
        miner_bps=DEFAULT_MINER_BPS,
        registration_fee=registration_fee,
    )


def genesis_state(g: Genesis) -> State:
    """The state before block 1: balances, the eight reserved Brains, zeroed counters, the
    governable parameters' starting values."""
    assert DEFAULT_OWNER_BPS <= BPS
    s = State()
    for addr, bal in sorted(g.balances.items()):
        s.set_account(addr, bal, 0)
    for b in RESERVED_BRAINS:
        s.put("brain", b, new_brain(b, g.operator, "reserved", 0, g.registration_fee))
    for name, value in genesis_params(g).items():
        s.put("param", name, value)
    for name, value in (
        ("height", 0),
        ("time", g.time),
        ("genesis_supply", g.supply),
        ("issued", 0),
        ("burned", 0),
        ("brains_burned", 0),
        ("next_proposal", 0),
    ):
        s.put("meta", name, value)
    s.commit()
    return s
