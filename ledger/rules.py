"""State-transition rules: ``apply_tx``, end-of-block work, and ``apply_block`` (SPEC L2–L8).

Discipline: every rule first checks, then mutates, and ``apply_tx`` wraps the whole tx in a
journal checkpoint, so a rejected tx leaves the state exactly as it was (fee and nonce
included). A block is all-or-nothing the same way.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from ledger import economics as econ
from ledger.block import Block, InvalidBlock, tx_root
from ledger.encoding import is_hex64
from ledger.epoch import run_epoch
from ledger.evidence import double_sign_problem
from ledger.genesis import Genesis, new_brain, param_bounds
from ledger.keys import is_address
from ledger.state import Proposal, Registration, State
from ledger.tft_report import report_problem
from ledger.tx import Tx, TxFormatError
from ledger.units import (
    BPS,
    MAX_BRAINS,
    MAX_MINERS,
    MAX_VALIDATORS,
    PEPECOIN_STAKE_AMOUNT,
    RESERVED_BRAINS,
    block_reward,
    brain_burn_price,
)

_ETH_REF = re.compile(r"^[0-9A-Za-z_\-.:]{1,128}$")
ROLES = ("validator", "miner")
MAX_BLOCK_TXS = 20_000  # bounds the work one block can demand of every node
U16_MAX = 65_535


class TxRejected(ValueError):
    """A tx that cannot apply to this state; ``str(e)`` is the reason."""


@dataclass(frozen=True)
class Ctx:
    """What a tx rule may know about the block it is in."""

    genesis: Genesis
    height: int
    proposer: str | None  # receives fees; None when only validating a tx


def _require(cond: bool, reason: str) -> None:
    if not cond:
        raise TxRejected(reason)


def _debit(s: State, addr: str, amount: int) -> None:
    bal = s.balance(addr)
    _require(bal >= amount, f"insufficient balance: has {bal}, needs {amount}")
    s.set_account(addr, bal - amount, s.nonce(addr))


def _brain(s: State, brain_id: int):  # noqa: ANN202 - Brain
    b = s.brain(brain_id)
    _require(b is not None, f"no Brain #{brain_id}")
    return b


def _owned_brain(s: State, brain_id: int, sender: str):  # noqa: ANN202
    b = _brain(s, brain_id)
    _require(b.owner == sender, f"sender does not own Brain #{brain_id}")
    return b


def stake_matured(b, ctx_height: int, g: Genesis) -> bool:  # noqa: ANN001
    """A stake-method Brain earns owner rewards only after its 90-day lock (whitepaper 2.4.1)."""
    return b.method != "stake" or ctx_height >= b.acquired_at + g.stake_lock_blocks


# ---- tx kinds ------------------------------------------------------------------------------

def _transfer(s: State, tx: Tx, ctx: Ctx) -> None:
    amount, to = tx.payload["amount"], tx.payload["to"]
    _require(amount > 0, "amount must be > 0")
    _debit(s, tx.sender, amount)
    s.credit(to, amount)


def _burn(s: State, tx: Tx, ctx: Ctx) -> None:
    amount = tx.payload["amount"]
    _require(amount > 0, "amount must be > 0")
    _debit(s, tx.sender, amount)
    s.put("meta", "burned", s.meta("burned") + amount)


def _stake(s: State, tx: Tx, ctx: Ctx) -> None:
    brain_id, delegate, amount = (tx.payload[k] for k in ("brain", "delegate", "amount"))
    _brain(s, brain_id)
    _require(amount > 0, "amount must be > 0")
    if delegate:
        reg = s.get("reg", (brain_id, delegate))
        _require(reg is not None and reg.role == "validator",
                 f"delegate is not a validator of Brain #{brain_id}")
    _debit(s, tx.sender, amount)
    key = (brain_id, delegate, tx.sender)
    s.put("stake", key, s.get("stake", key, 0) + amount)


def _unstake(s: State, tx: Tx, ctx: Ctx) -> None:
    brain_id, delegate, amount = (tx.payload[k] for k in ("brain", "delegate", "amount"))
    key = (brain_id, delegate, tx.sender)
    have = s.get("stake", key, 0)
    _require(amount > 0, "amount must be > 0")
    _require(have >= amount, f"staked {have}, cannot unstake {amount}")
    if have == amount:
        s.delete("stake", key)
    else:
        s.put("stake", key, have - amount)
    # L5: the amount stays bonded — still slashable — for the unbonding period, so a
    # validator cannot sign two votes and leave with its stake before the evidence lands
    period = ctx.genesis.unbonding_blocks
    if period == 0:
        s.credit(tx.sender, amount)
        return
    ukey = (ctx.height + period, brain_id, delegate, tx.sender)
    s.put("unbond", ukey, s.get("unbond", ukey, 0) + amount)


def _release_unbonded(s: State, height: int) -> None:
    """Pay out the unbonding entries whose period ends at this height (or before)."""
    for key in sorted(k for k in s.tables["unbond"] if k[0] <= height):
        s.credit(key[3], s.tables["unbond"][key])
        s.delete("unbond", key)


def _evidence(s: State, tx: Tx, ctx: Ctx) -> None:
    """Double-signing evidence (SPEC N1, L5): two votes by one validator for one
    (height, round, phase) and different blocks, each signature checked here.

    The offender loses ``economics.SLASH_DOUBLE_SIGN_BPS`` of every stake delegated to it
    in every Brain — its own and its delegators', bonded or unbonding (delegators chose
    it, as in Cosmos) — burned, and is tombstoned: out of the voting set for good, and
    punished once however many pairs it signed (one episode, one slash). Evidence older
    than the unbonding period is refused: stake that left since has been paid out."""
    first, second = tx.payload["first"], tx.payload["second"]
    problem = double_sign_problem(first, second, ctx.genesis.chain_id)
    _require(problem is None, f"not double signing: {problem}")
    offender, height = first["voter"], first["height"]
    _require(ctx.height - height <= ctx.genesis.unbonding_blocks,
             f"evidence too old: height {height}, unbonding period "
             f"{ctx.genesis.unbonding_blocks} blocks")
    _require(s.get("tomb", offender) is None, "offender already slashed")
    cut = 0
    bonded = [(k, pool) for k, pool in s.stakers.items() if k[1] == offender]
    for (brain_id, _), pool in sorted(bonded):
        for staker, amount in sorted(pool.items()):
            part = econ.slash_amount(amount)
            if part:
                s.put("stake", (brain_id, offender, staker), amount - part)
                cut += part
    for key in sorted(k for k in s.tables["unbond"] if k[2] == offender):
        amount = s.tables["unbond"][key]
        part = econ.slash_amount(amount)
        if part:
            if amount == part:
                s.delete("unbond", key)
            else:
                s.put("unbond", key, amount - part)
            cut += part
    s.put("meta", "burned", s.meta("burned") + cut)
    s.put("tomb", offender, height)


def _register(s: State, tx: Tx, ctx: Ctx) -> None:
    """"Memorize" (L4): pay the Brain's current fee to its owner and take a free slot."""
    brain_id, role, max_fee = (tx.payload[k] for k in ("brain", "role", "max_fee"))
    b = _brain(s, brain_id)
    _require(role in ROLES, "role must be 'validator' or 'miner'")
    _require(s.get("reg", (brain_id, tx.sender)) is None, "already registered in this Brain")
    fee = b.registration_fee
    _require(max_fee >= fee, f"registration fee is {fee}, above max_fee {max_fee}")
    slots = list(b.validators if role == "validator" else b.miners)
    reg_at = list(b.v_reg_at if role == "validator" else b.m_reg_at)
    cap = MAX_VALIDATORS if role == "validator" else MAX_MINERS
    free = next((i for i, a in enumerate(slots) if a is None), None)
    _require(free is not None or len(slots) < cap, f"Brain #{brain_id} has no free {role} slot")
    _debit(s, tx.sender, fee)
    s.credit(b.reward_address, fee)
    if free is None:
        free = len(slots)
        slots.append(tx.sender)
        reg_at.append(ctx.height)
    else:
        slots[free] = tx.sender
        reg_at[free] = ctx.height
    if role == "validator":
        b = replace(b, validators=tuple(slots), v_reg_at=tuple(reg_at))
    else:
        b = replace(b, miners=tuple(slots), m_reg_at=tuple(reg_at))
    s.put("brain", brain_id, b)
    s.put("reg", (brain_id, tx.sender), Registration(role, free, fee, ctx.height))


def _deregister(s: State, tx: Tx, ctx: Ctx) -> None:
    brain_id = tx.payload["brain"]
    b = _brain(s, brain_id)
    reg = s.get("reg", (brain_id, tx.sender))
    _require(reg is not None, "not registered in this Brain")
    if reg.role == "validator":
        slots = list(b.validators)
        slots[reg.slot] = None
        b = replace(b, validators=tuple(slots))
        s.delete("wrow", (brain_id, reg.slot))
    else:
        slots = list(b.miners)
        slots[reg.slot] = None
        b = replace(b, miners=tuple(slots))
    s.put("brain", brain_id, b)
    s.delete("reg", (brain_id, tx.sender))


def _set_weights(s: State, tx: Tx, ctx: Ctx) -> None:
    brain_id, uids, weights = (tx.payload[k] for k in ("brain", "uids", "weights"))
    b = _brain(s, brain_id)
    reg = s.get("reg", (brain_id, tx.sender))
    _require(reg is not None and reg.role == "validator", "sender is not a validator here")
    _require(len(uids) == len(weights), "uids and weights differ in length")
    _require(len(set(uids)) == len(uids), "duplicate uid")
    _require(all(u < len(b.miners) and b.miners[u] is not None for u in uids),
             "uid is not a registered miner")
    _require(all(w <= U16_MAX for w in weights), "weights are u16 (<= 65535)")
    row = np.zeros(len(b.miners), dtype=np.uint16)
    if uids:
        row[np.asarray(uids, dtype=np.int64)] = np.asarray(weights, dtype=np.uint16)
    row.setflags(write=False)
    s.put("wrow", (brain_id, reg.slot), (ctx.height, row))


_INT_SETTINGS = {"owner_bps": BPS, "miner_bps": BPS, "registration_fee": 10**24}


def _brain_config(s: State, tx: Tx, ctx: Ctx) -> None:
    """Owner settings (L4): name, task, reward address, splits, registration fee."""
    brain_id, key, value = (tx.payload[k] for k in ("brain", "key", "value"))
    b = _owned_brain(s, brain_id, tx.sender)
    if key in _INT_SETTINGS:
        _require(value.isdigit() and str(int(value)) == value, f"{key} must be a decimal int")
        v = int(value)
        _require(v <= _INT_SETTINGS[key], f"{key} must be <= {_INT_SETTINGS[key]}")
        b = replace(b, **{key: v})  # registration_fee: existing members are grandfathered
    elif key == "name":
        _require(0 < len(value) <= 64 and value.isprintable(), "name: 1-64 printable chars")
        b = replace(b, name=value)
    elif key == "task":
        _require(value == "" or is_hex64(value),
                 "task must be an artefact sha256 (hex) or empty")
        b = replace(b, task=value)
    elif key == "reward_address":
        _require(is_address(value), "reward_address must be an address")
        b = replace(b, reward_address=value)
    else:
        raise TxRejected(f"unknown Brain setting {key!r}")
    s.put("brain", brain_id, b)


def _brain_transfer(s: State, tx: Tx, ctx: Ctx) -> None:
    brain_id, to = tx.payload["brain"], tx.payload["to"]
    b = _owned_brain(s, brain_id, tx.sender)
    _require(b.method == "burn", "only Brains acquired by burning Pepecoin are transferable")
    s.put("brain", brain_id, replace(b, owner=to, reward_address=to))


def _brain_deactivate(s: State, tx: Tx, ctx: Ctx) -> None:
    """Return a staked Brain: free its slot, unlock the Pepecoin, give every stake back."""
    brain_id = tx.payload["brain"]
    b = _owned_brain(s, brain_id, tx.sender)
    _require(b.method == "stake", "only Brains acquired by staking Pepecoin can be deactivated")
    _require(stake_matured(b, ctx.height, ctx.genesis), "the 90-day Pepecoin lock has not ended")
    for (bid, delegate), pool in sorted(s.stakers.items()):
        if bid != brain_id:
            continue
        for staker, amount in sorted(pool.items()):
            s.delete("stake", (bid, delegate, staker))
            s.credit(staker, amount)
    s.credit(b.reward_address, s.get("pend", brain_id, 0))
    s.delete("pend", brain_id)
    for table in ("reg", "wrow"):
        for key in [k for k in s.tables[table] if k[0] == brain_id]:
            s.delete(table, key)
    for table in ("bond", "cred", "perf", "tft", "brain"):
        s.delete(table, brain_id)
    s.put("unlock", (brain_id, ctx.height), (b.owner, b.lock_pepecoin))


def _free_brain_id(s: State) -> int | None:
    for i in range(MAX_BRAINS):
        if i not in s.tables["brain"] and i not in RESERVED_BRAINS:
            return i
    return None


def _bridge(s: State, tx: Tx, ctx: Ctx, method: str) -> None:
    """A Pepecoin burn/lock attestation from the genesis bridge key issues a Brain (L3)."""
    ref, owner, pepe = (tx.payload[k] for k in ("eth_ref", "owner", "pepecoin"))
    _require(tx.sender == ctx.genesis.bridge, "only the bridge key attests Pepecoin events")
    _require(bool(_ETH_REF.match(ref)), "eth_ref must be 1-128 chars of [0-9A-Za-z_-.:]")
    _require(s.get("eth", ref) is None, "attestation already used")
    if method == "burn":
        price = brain_burn_price(s.meta("brains_burned"))
        _require(pepe >= price, f"burn price is {price} Pepecoin, attested {pepe}")
    else:
        _require(pepe >= PEPECOIN_STAKE_AMOUNT,
                 f"stake acquisition needs {PEPECOIN_STAKE_AMOUNT} Pepecoin")
    bid = _free_brain_id(s)
    _require(bid is not None, "all 1024 Brains are issued")
    s.put("brain", bid, new_brain(bid, owner, method, ctx.height, s.param("registration_fee"),
                                  pepe if method == "stake" else 0))
    s.put("eth", ref, method)
    if method == "burn":
        s.put("meta", "brains_burned", s.meta("brains_burned") + 1)


def gigabrains(s: State) -> list[int]:
    """Brains holding >= 0.5% of total stake: one governance vote each (L8)."""
    return [b for b in sorted(s.tables["brain"])
            if econ.is_gigabrain(s.brain_stake.get(b, 0), s.total_stake)]


def _new_proposal(s: State, tx: Tx, ctx: Ctx, body_sha256: str = "", param: str = "",
                  value: int = 0) -> None:
    """Open a proposal (L8): its window is ``created`` ≤ height < ``closes`` = created +
    ``voting_period``; it goes on the agenda of its closing height (``pclose``)."""
    giga = set(gigabrains(s))
    owns_giga = any(s.brain(b).owner == tx.sender for b in giga)
    _require(tx.sender == ctx.genesis.operator or owns_giga,
             "only the operator or a GigaBrain owner may propose")
    title = tx.payload["title"]
    _require(0 < len(title) <= 200 and title.isprintable(), "title: 1-200 printable chars")
    pid = s.meta("next_proposal")
    closes = ctx.height + ctx.genesis.voting_period
    s.put("meta", "next_proposal", pid + 1)
    s.put("prop", pid, Proposal(pid, tx.sender, title, body_sha256, ctx.height, closes,
                                param=param, value=value))
    s.put("pclose", closes, (*s.get("pclose", closes, ()), pid))


def _propose(s: State, tx: Tx, ctx: Ctx) -> None:
    """A text proposal: the outcome is recorded, nothing executes."""
    _new_proposal(s, tx, ctx, body_sha256=tx.payload["body_sha256"])


def _propose_param(s: State, tx: Tx, ctx: Ctx) -> None:
    """A parameter change (issue #16): refused now, not at execution, if the parameter is
    not governable or the value is outside its bounds (``genesis.param_bounds``)."""
    param, value = tx.payload["param"], tx.payload["value"]
    bounds = param_bounds(ctx.genesis)
    _require(param in bounds,
             f"unknown parameter {param!r}; governable: {', '.join(sorted(bounds))}")
    lo, hi = bounds[param]
    _require(lo <= value <= hi, f"{param} must be in [{lo}, {hi}], got {value}")
    _new_proposal(s, tx, ctx, param=param, value=value)


def _vote(s: State, tx: Tx, ctx: Ctx) -> None:
    pid, brain_id, approve = (tx.payload[k] for k in ("proposal", "brain", "approve"))
    p = s.get("prop", pid)
    _require(p is not None and p.status == "open" and ctx.height < p.closes,
             "no open proposal with that id")
    _owned_brain(s, brain_id, tx.sender)
    _require(econ.is_gigabrain(s.brain_stake.get(brain_id, 0), s.total_stake),
             "only GigaBrains vote")
    _require(s.get("vote", (pid, brain_id)) is None, "this Brain already voted")
    s.put("vote", (pid, brain_id), approve)


def _tft_report(s: State, tx: Tx, ctx: Ctx) -> None:
    """Accuracy(TFT) per miner, reported by the owner of Brain #2 (L7, L9).

    The TFT itself (torch) runs off-chain in ``ledger.tft``; every node recomputes the
    report's integer rule (accuracy = skill × verified share, ``ledger.tft_report``) and
    stores only the accuracies, so every node computes the same epoch without running a
    neural network.
    """
    problem = report_problem(s, tx.sender, tx.payload, ctx.height)
    _require(problem is None, str(problem))
    b = _brain(s, tx.payload["brain"])
    row = [0] * len(b.miners)
    for u, a in zip(tx.payload["uids"], tx.payload["accuracy_bps"], strict=True):
        row[u] = a
    s.put("tft", b.id, (ctx.height, tuple(row)))


RULES: dict[str, Callable[[State, Tx, Ctx], None]] = {
    "transfer": _transfer,
    "burn": _burn,
    "stake": _stake,
    "unstake": _unstake,
    "register": _register,
    "deregister": _deregister,
    "set_weights": _set_weights,
    "brain_config": _brain_config,
    "brain_transfer": _brain_transfer,
    "brain_deactivate": _brain_deactivate,
    "bridge_burn": lambda s, t, c: _bridge(s, t, c, "burn"),
    "bridge_lock": lambda s, t, c: _bridge(s, t, c, "stake"),
    "propose": _propose,
    "propose_param": _propose_param,
    "vote": _vote,
    "tft_report": _tft_report,
    "evidence": _evidence,
}


def apply_tx(state: State, tx: Tx, ctx: Ctx) -> None:
    """Apply one tx in place, or raise ``TxRejected`` and leave ``state`` untouched.

    Order: format, signature (over the chain id), nonce == account nonce, fee >= minimum;
    then the fee moves to the proposer, the nonce increments, and the kind's rule runs.
    """
    try:
        tx.check_format()
    except TxFormatError as e:
        raise TxRejected(str(e)) from e
    if not tx.verify_signature(ctx.genesis.chain_id):
        raise TxRejected("bad signature")
    expected = state.nonce(tx.sender)
    if tx.nonce != expected:
        raise TxRejected(f"bad nonce: expected {expected}, got {tx.nonce}")
    min_fee = state.param("min_fee")  # live: governance may change it (L8)
    if tx.fee < min_fee:
        raise TxRejected(f"fee below minimum {min_fee}")
    mark = state.checkpoint()
    try:
        bal = state.balance(tx.sender)
        _require(bal >= tx.fee, "cannot pay the fee")
        state.set_account(tx.sender, bal - tx.fee, expected + 1)
        if ctx.proposer is not None:
            state.credit(ctx.proposer, tx.fee)
        else:
            state.put("meta", "burned", state.meta("burned") + tx.fee)  # validation only
        RULES[tx.kind](state, tx, ctx)
    except BaseException:
        state.rollback(mark)
        raise


# ---- end of block --------------------------------------------------------------------------

def _emit(s: State, height: int) -> None:
    """Split this block's reward among Brains and park it until each Brain's epoch (L6)."""
    reward = block_reward(height)
    if reward == 0:
        return
    ids = sorted(s.tables["brain"])
    stakes = {b: s.brain_stake.get(b, 0) for b in ids}
    perf = {b: s.get("perf", b, 0) for b in ids}
    for b, part in econ.split_block_reward(reward, econ.brain_scores(stakes, perf,
                                                                       s.total_stake)).items():
        s.put("pend", b, s.get("pend", b, 0) + part)
    s.put("meta", "issued", s.meta("issued") + reward)


def proposal_passes(yes: int, no: int, eligible: int, first_year: bool,
                    quorum_bps: int) -> bool:
    """The L8 rule, over the votes of the ``eligible`` Brains that are GigaBrains at closing.

    First year (proposal created before ``blocks_per_year``): it passes unless a majority
    of the GigaBrains vote it down (no > eligible / 2). Afterwards: a quorum — at least
    ``quorum_bps`` of the GigaBrains voted — and more yes than no votes.
    """
    if first_year:
        return 2 * no <= eligible
    return (yes + no) * BPS >= quorum_bps * eligible and yes > no


def _resolve_proposals(s: State, g: Genesis, height: int) -> None:
    """Decide the proposals whose window closes now (L8); only the votes of Brains that are
    GigaBrains now count. A passed parameter change goes on the agenda of height
    + ``execution_delay`` (``pexec``)."""
    due = s.get("pclose", height, ())
    if not due:
        return
    s.delete("pclose", height)
    giga = gigabrains(s)
    for pid in due:
        p = s.get("prop", pid)
        votes = [v for v in (s.get("vote", (pid, b)) for b in giga) if v is not None]
        yes = sum(1 for v in votes if v)
        no = len(votes) - yes
        passed = proposal_passes(yes, no, len(giga), p.created < g.blocks_per_year,
                                 g.quorum_bps)
        executes = 0
        if passed and p.param:
            executes = height + g.execution_delay
            s.put("pexec", executes, (*s.get("pexec", executes, ()), pid))
        s.put("prop", pid, replace(p, status="passed" if passed else "rejected",
                                   votes_for=yes, votes_against=no, eligible=len(giga),
                                   executes=executes))


def _execute_proposals(s: State, height: int) -> None:
    """Write the parameter changes due at this height, in proposal order (a later change of
    the same parameter wins). Their bounds were checked when proposed and do not change."""
    due = s.get("pexec", height, ())
    if not due:
        return
    s.delete("pexec", height)
    for pid in due:
        p = s.get("prop", pid)
        s.put("param", p.param, p.value)
        s.put("prop", pid, replace(p, status="executed"))


def end_block(state: State, g: Genesis, height: int) -> None:
    """Unbonded stake paid out, emission, then the epochs due at this height, then
    governance: proposals closing now are decided, then the changes due now are written —
    last, so a whole block runs under one set of parameters and the new values govern
    from the next block on."""
    _release_unbonded(state, height)
    _emit(state, height)
    tempo = state.param("tempo")
    for b in sorted(state.tables["brain"]):
        if (height + b) % tempo == 0:
            run_epoch(state, g, b, height, matured=stake_matured(state.brain(b), height, g))
    _resolve_proposals(state, g, height)
    _execute_proposals(state, height)


def check_header(state: State, block: Block, g: Genesis, parent_hash: str) -> None:
    """Header checks that need no tx execution."""
    h = block.header
    problem = h.format_problem()
    if problem:
        raise InvalidBlock(problem)
    if h.height != state.height + 1:
        raise InvalidBlock(f"height {h.height} does not follow {state.height}")
    if h.parent != parent_hash:
        raise InvalidBlock("parent hash mismatch")
    if h.time <= state.meta("time"):
        raise InvalidBlock("block time must increase")
    if g.authorities and h.proposer not in g.authorities:
        raise InvalidBlock("proposer is not an authority")
    if not h.verify_signature(g.chain_id):
        raise InvalidBlock("bad proposer signature")
    if len(block.txs) > min(MAX_BLOCK_TXS, g.max_block_txs):
        raise InvalidBlock(f"more than {min(MAX_BLOCK_TXS, g.max_block_txs)} txs")
    if h.tx_root != tx_root(block.txs):
        raise InvalidBlock("tx root mismatch")


def apply_block_in_place(state: State, block: Block, g: Genesis, parent_hash: str) -> None:
    """Apply ``block`` to ``state`` or raise ``InvalidBlock`` leaving it unchanged."""
    check_header(state, block, g, parent_hash)
    mark = state.checkpoint()
    try:
        execute(state, block.txs, g, block.header.height, block.header.proposer,
                block.header.time, strict=True)
        root = state.state_root()
        if root != block.header.state_root:
            raise InvalidBlock(f"state root mismatch: computed {root}")
    except TxRejected as e:
        state.rollback(mark)
        raise InvalidBlock(f"invalid tx: {e}") from e
    except BaseException:
        state.rollback(mark)
        raise


def execute(state: State, txs: tuple[Tx, ...] | list[Tx], g: Genesis, height: int,
            proposer: str, time: int, strict: bool) -> tuple[list[Tx], list[tuple[Tx, str]]]:
    """Run txs and end-of-block work; return (applied txs, rejected txs with reasons).
    ``strict``: the first bad tx raises (block validation); otherwise bad txs are skipped
    (block production)."""
    ctx = Ctx(g, height, proposer)
    applied: list[Tx] = []
    rejected: list[tuple[Tx, str]] = []
    for tx in txs:
        try:
            apply_tx(state, tx, ctx)
        except TxRejected as e:
            if strict:
                raise
            rejected.append((tx, str(e)))
        else:
            applied.append(tx)
    end_block(state, g, height)
    state.put("meta", "height", height)
    state.put("meta", "time", time)
    return applied, rejected


def apply_block(state: State, block: Block, g: Genesis, parent_hash: str) -> State:
    """Pure form: return the state after ``block``; ``state`` itself is not modified."""
    new = state.fork()
    apply_block_in_place(new, block, g, parent_hash)
    new.commit()
    return new
