"""Governance that acts (issue #16; SPEC L8, L5, L7): parameter-change proposals, their
bounds, the voting window, the first-year and later rules with a quorum, and execution at
a fixed height inside block application.

A ``propose_param`` names a governable chain parameter and a value; an unknown parameter or
a value outside its bounds is refused when proposed. Votes are accepted while the window
is open (``created`` ≤ height < ``closes`` = created + ``voting_period``); the outcome is
decided at the end of block ``closes``; a passed change is written into the chain state's
``param`` table at the end of block ``closes + execution_delay`` and governs every block
after it. Every node computes this inside ``apply_block``, so the state root covers it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from ledger_helpers import (
    BRIDGE,
    CHAIN_ID,
    OPERATOR,
    USERS,
    Signer,
    apply_ok,
    conserved,
    genesis,
    next_block,
    reason,
)

from ledger.chain import Chain
from ledger.genesis import param_bounds
from ledger.tx import make_tx
from ledger.units import BASED, DEFAULT_REGISTRATION_FEE

A, B = USERS[0], USERS[1]
BODY = "ef" * 32
WINDOW, DELAY = 5, 3


def _run_to(chain: Chain, height: int) -> None:
    while chain.height < height:
        next_block(chain)


def _giga_chain(brains: tuple[int, ...] = (3, 4, 5), **overrides: object) -> Chain:
    """The operator's Brains in ``brains`` hold equal stake: each one is a GigaBrain."""
    args: dict[str, object] = {"voting_period": WINDOW, "execution_delay": DELAY}
    args.update(overrides)
    chain = Chain(genesis(**args))
    sg = Signer(chain)
    apply_ok(chain, *[sg.tx(OPERATOR, "stake", brain=b, delegate="", amount=1_000 * BASED)
                      for b in brains])
    return chain


def _propose(chain: Chain, param: str, value: int, title: str = "change") -> int:
    """Put a parameter proposal on chain; returns its id."""
    pid = chain.state.meta("next_proposal")
    apply_ok(chain, Signer(chain).tx(OPERATOR, "propose_param", title=title, param=param,
                                     value=value))
    return pid


def _votes(chain: Chain, pid: int, ballots: dict[int, bool]) -> None:
    sg = Signer(chain)
    apply_ok(chain, *[sg.tx(OPERATOR, "vote", proposal=pid, brain=b, approve=v)
                      for b, v in ballots.items()])


def test_live_parameters_start_at_genesis_and_are_in_the_state_root() -> None:
    chain = Chain(genesis(min_fee=3, tempo=500, registration_fee=7 * BASED,
                          blocks_per_year=1_000))
    assert chain.params() == {"beta_start": 2_000, "min_fee": 3, "registration_fee": 7 * BASED,
                              "tempo": 500}
    assert chain.state.param("tempo") == 500
    with pytest.raises(KeyError, match="unknown chain parameter"):
        chain.state.param("voting_period")
    # reserved Brains take the genesis registration fee
    assert chain.state.brain(3).registration_fee == 7 * BASED
    root = chain.state_root()
    mark = chain.state.checkpoint()
    chain.state.put("param", "min_fee", 4)
    assert chain.state_root() != root  # a node with another live value has another root
    chain.state.rollback(mark)
    assert chain.state_root() == root


def test_unknown_parameter_and_out_of_bounds_values_are_refused_when_proposed() -> None:
    chain = _giga_chain()
    bounds = param_bounds(chain.genesis)
    assert bounds == {"beta_start": (0, 8 * chain.genesis.blocks_per_year),
                      "min_fee": (0, BASED), "registration_fee": (0, 10_000 * BASED),
                      "tempo": (100, 100_000)}
    root, pid = chain.state_root(), chain.state.meta("next_proposal")

    def why(param: str, value: int) -> str:
        return reason(chain, Signer(chain).tx(OPERATOR, "propose_param", title="t",
                                              param=param, value=value))

    assert why("voting_period", 10) == (
        "unknown parameter 'voting_period'; governable: beta_start, min_fee, "
        "registration_fee, tempo")
    assert why("tempo", 99) == "tempo must be in [100, 100000], got 99"
    assert why("tempo", 100_001) == "tempo must be in [100, 100000], got 100001"
    assert why("min_fee", BASED + 1) == f"min_fee must be in [0, {BASED}], got {BASED + 1}"
    assert why("registration_fee", 10_000 * BASED + 1).startswith("registration_fee must be")
    assert why("beta_start", 8 * chain.genesis.blocks_per_year + 1).startswith("beta_start")
    assert reason(chain, Signer(chain).tx(B, "propose_param", title="t", param="tempo",
                                          value=200)) == (
        "only the operator or a GigaBrain owner may propose")
    assert chain.state_root() == root and chain.state.meta("next_proposal") == pid
    # the bounds themselves are accepted
    assert chain.validate_tx(Signer(chain).tx(OPERATOR, "propose_param", title="t",
                                              param="tempo", value=100)) is None
    assert chain.validate_tx(Signer(chain).tx(OPERATOR, "propose_param", title="t",
                                              param="min_fee", value=BASED)) is None


def test_passed_change_takes_effect_exactly_at_its_execution_height() -> None:
    chain = _giga_chain()
    pid = _propose(chain, "min_fee", 7)
    p = chain.state.get("prop", pid)
    created = chain.height
    assert (p.param, p.value, p.created, p.closes) == ("min_fee", 7, created, created + WINDOW)
    executes = p.closes + DELAY
    while chain.height < executes - 1:
        next_block(chain)
        assert chain.params()["min_fee"] == 0
        if chain.height >= p.closes:
            passed = chain.state.get("prop", pid)
            assert (passed.status, passed.executes) == ("passed", executes)
    # the head before the execution height: a fee-0 tx is still valid for the next block...
    cheap = Signer(chain).tx(A, "transfer", to=B.address, amount=1)
    assert chain.validate_tx(cheap) is None
    # ...and the execution block itself runs under the old value, then changes it
    apply_ok(chain, cheap)
    assert chain.height == executes
    assert chain.params()["min_fee"] == 7
    assert chain.state.get("prop", pid).status == "executed"
    assert reason(chain, Signer(chain).tx(A, "transfer", to=B.address, amount=1)) == (
        "fee below minimum 7")
    apply_ok(chain, Signer(chain).tx(A, "transfer", fee=7, to=B.address, amount=1))
    assert conserved(chain.state)


def test_first_year_a_change_passes_unless_a_majority_of_gigabrains_vote_it_down() -> None:
    chain = _giga_chain(brains=(3, 4, 5, 6))
    silent = _propose(chain, "tempo", 200, "silence passes")
    half = _propose(chain, "tempo", 300, "half against is not a majority")
    vetoed = _propose(chain, "min_fee", 9, "three of four against")
    _votes(chain, half, {3: False, 4: False, 5: True})
    _votes(chain, vetoed, {3: False, 4: False, 5: False, 6: True})
    _run_to(chain, chain.state.get("prop", vetoed).closes + DELAY)
    st = {pid: chain.state.get("prop", pid) for pid in (silent, half, vetoed)}
    assert st[silent].status == "executed" and st[silent].eligible == 4
    assert (st[half].status, st[half].votes_against, st[half].votes_for) == ("executed", 2, 1)
    assert (st[vetoed].status, st[vetoed].votes_against) == ("rejected", 3)
    # the two tempo changes execute in proposal order at one height: the later one wins;
    # the vetoed fee change never happens
    assert chain.params()["tempo"] == 300
    assert chain.params()["min_fee"] == 0
    _run_to(chain, chain.height + 2 * DELAY)
    assert (chain.params()["tempo"], chain.params()["min_fee"]) == (300, 0)


def test_after_the_first_year_a_change_needs_a_quorum_and_a_majority_of_votes() -> None:
    # year one ends at block 1; quorum 1/3 of the GigaBrains (3,334 bps, the default)
    chain = _giga_chain(brains=(3, 4, 5, 6), blocks_per_year=1)
    assert chain.genesis.quorum_bps == 3_334
    cases = {  # ballots → passes?
        "silence": ({}, False),
        "one yes of four: below quorum": ({3: True}, False),
        "two yes: quorum, majority": ({3: True, 4: True}, True),
        "tie": ({3: True, 4: False}, False),
        "two yes one no": ({3: True, 4: True, 5: False}, True),
        "majority no": ({3: True, 4: False, 5: False}, False),
    }
    first = chain.state.meta("next_proposal")
    pids = {what: first + i for i, what in enumerate(cases)}
    sg = Signer(chain)
    apply_ok(chain, *[sg.tx(OPERATOR, "propose_param", title=what, param="registration_fee",
                            value=(i + 1) * BASED) for i, what in enumerate(cases)])
    sg = Signer(chain)  # every ballot in the next block, inside every window
    apply_ok(chain, *[sg.tx(OPERATOR, "vote", proposal=pids[what], brain=b, approve=v)
                      for what, (ballots, _) in cases.items() for b, v in ballots.items()])
    last = max(chain.state.get("prop", p).closes for p in pids.values())
    _run_to(chain, last + DELAY)
    for what, (_, passes) in cases.items():
        status = chain.state.get("prop", pids[what]).status
        assert status == ("executed" if passes else "rejected"), what
    # the last passed change in proposal order ("two yes one no", value 5 BASED) holds
    assert chain.params()["registration_fee"] == 5 * BASED


def test_votes_are_counted_once_and_only_inside_the_window() -> None:
    chain = _giga_chain(brains=(3, 4, 5))
    pid = _propose(chain, "min_fee", 5)
    sg = Signer(chain)
    vote = sg.tx(OPERATOR, "vote", proposal=pid, brain=3, approve=False)
    apply_ok(chain, vote)
    # the very same signed tx again: its nonce is spent
    assert reason(chain, vote).startswith("bad nonce")
    # a fresh tx for the same Brain: already voted, whichever way
    for approve in (False, True):
        assert reason(chain, Signer(chain).tx(OPERATOR, "vote", proposal=pid, brain=3,
                                              approve=approve)) == "this Brain already voted"
    # two votes of one Brain in one block: the second is refused, the first stands
    sg = Signer(chain)
    block, rejected = next_block(chain, [
        sg.tx(OPERATOR, "vote", proposal=pid, brain=4, approve=False),
        sg.tx(OPERATOR, "vote", proposal=pid, brain=4, approve=True)])
    assert len(block.txs) == 1 and [r for _, r in rejected] == ["this Brain already voted"]
    # a vote signed for another chain does not verify here
    foreign = make_tx(OPERATOR, "vote", chain.nonce(OPERATOR.address), CHAIN_ID + "-other",
                      proposal=pid, brain=5, approve=False)
    assert reason(chain, foreign) == "bad signature"
    # unknown proposal, and Brain 5's vote after the window closed
    assert reason(chain, Signer(chain).tx(OPERATOR, "vote", proposal=pid + 1, brain=5,
                                          approve=False)) == "no open proposal with that id"
    _run_to(chain, chain.state.get("prop", pid).closes - 1)
    late = Signer(chain).tx(OPERATOR, "vote", proposal=pid, brain=5, approve=False)
    _, rejected = next_block(chain, [late])
    assert [r for _, r in rejected] == ["no open proposal with that id"]
    p = chain.state.get("prop", pid)
    # two of three voted no: vetoed even in year one; nothing changes
    assert (p.status, p.votes_against, p.votes_for) == ("rejected", 2, 0)
    _run_to(chain, p.closes + DELAY + 1)
    assert chain.params()["min_fee"] == 0


def test_tempo_change_moves_the_epochs() -> None:
    chain = _giga_chain(brains=(3,), tempo=1_000_000)
    pid = _propose(chain, "tempo", 100)
    executes = chain.state.get("prop", pid).closes + DELAY
    _run_to(chain, executes)
    assert chain.params()["tempo"] == 100
    assert chain.state.brain(3).last_epoch == 0  # no epoch yet under the old tempo
    first = next(h for h in range(executes + 1, executes + 101) if (h + 3) % 100 == 0)
    _run_to(chain, first - 1)
    assert chain.state.brain(3).last_epoch == 0
    next_block(chain)
    assert chain.state.brain(3).last_epoch == first
    assert conserved(chain.state)


def test_registration_fee_change_applies_to_brains_issued_afterwards() -> None:
    chain = _giga_chain(brains=(3,))
    sg = Signer(chain)
    apply_ok(chain, sg.tx(BRIDGE, "bridge_burn", eth_ref="0xbefore", owner=A.address,
                          pepecoin=10_000))
    pid = _propose(chain, "registration_fee", 3 * BASED)
    _run_to(chain, chain.state.get("prop", pid).closes + DELAY)
    apply_ok(chain, Signer(chain).tx(BRIDGE, "bridge_burn", eth_ref="0xafter", owner=A.address,
                                     pepecoin=10_000))
    fees = {b: chain.state.brain(b).registration_fee for b in (3, 7, 8)}
    # the reserved Brain and the Brain issued before keep theirs (owner-set, grandfathered)
    assert fees == {3: DEFAULT_REGISTRATION_FEE, 7: DEFAULT_REGISTRATION_FEE, 8: 3 * BASED}


def test_beta_start_change_feeds_the_epoch_incentive() -> None:
    """β(t) starts its ramp at ``beta_start`` (default 2 years). With 2-block years the
    default gives β = 1 at block 17; moved to 16 blocks, β(17) = 0.9·(17−16)/4 = 0.225."""
    from ledger.keys import Wallet

    v, ms = Wallet.from_seed("beta-v"), [Wallet.from_seed(f"beta-m{i}") for i in range(3)]

    def run(beta_start: int | None) -> list[int]:
        people = {w.address: 10_000 * BASED for w in [v, *ms]}
        chain = Chain(genesis(tempo=10, blocks_per_year=2, voting_period=2, execution_delay=1,
                              balances=people | {OPERATOR.address: 10_000 * BASED}))
        assert chain.params()["beta_start"] == 4
        sg = Signer(chain)
        apply_ok(chain, sg.tx(OPERATOR, "brain_config", brain=3, key="registration_fee",
                              value="0"))
        apply_ok(chain, sg.tx(v, "register", brain=3, role="validator", max_fee=0),
                 *[sg.tx(m, "register", brain=3, role="miner", max_fee=0) for m in ms])
        apply_ok(chain, sg.tx(v, "stake", brain=3, delegate=v.address, amount=1_000 * BASED),
                 sg.tx(v, "set_weights", brain=3, uids=[0, 1], weights=[3, 5]))
        if beta_start is not None:  # year one is over: Brain 3, the one GigaBrain, approves
            pid = _propose(chain, "beta_start", beta_start)
            _votes(chain, pid, {3: True})
        _run_to(chain, 7)  # Brain 3's first epoch; the change executed by now
        assert chain.params()["beta_start"] == (4 if beta_start is None else beta_start)
        # Accuracy(TFT) as a report leaves it (the report tx itself: test_tft.py); here
        # only β matters: the third miner fully accurate, the others not at all
        chain.state.put("tft", 3, (chain.height, (0, 0, 10_000)))
        _run_to(chain, 16)
        before = [chain.balance(m.address) for m in ms]
        _run_to(chain, 17)
        return [chain.balance(m.address) - b for m, b in zip(ms, before, strict=True)]

    # miners' part of 100 BASED: 37.5 BASED; I = normalise(R + β·A), R = (3/8, 5/8, 0)
    miners = 375 * BASED // 10
    assert run(None)[2] == miners // 2  # β = 1: (R + A)/2 → the third miner half
    moved = run(16)
    assert abs(moved[2] - miners * 0.225 / 1.225) < 16  # 2⁻³² quantisation of shares
    assert sum(moved) == miners


def test_zero_delay_executes_at_the_end_of_the_closing_block() -> None:
    chain = _giga_chain(brains=(3,), execution_delay=0)
    pid = _propose(chain, "min_fee", 2)
    closes = chain.state.get("prop", pid).closes
    _run_to(chain, closes - 1)
    assert chain.params()["min_fee"] == 0
    next_block(chain)
    assert chain.params()["min_fee"] == 2
    assert chain.state.get("prop", pid).executes == closes


def test_live_values_survive_a_reopened_database(tmp_path: Path) -> None:
    path = tmp_path / "chain.db"
    chain = Chain.open_sqlite(path, genesis(voting_period=WINDOW, execution_delay=DELAY))
    sg = Signer(chain)
    apply_ok(chain, sg.tx(OPERATOR, "stake", brain=3, delegate="", amount=1_000 * BASED))
    pid = _propose(chain, "tempo", 400)
    _run_to(chain, chain.state.get("prop", pid).closes + DELAY)
    root, params = chain.state_root(), chain.params()
    chain.close()
    reopened = Chain.open_sqlite(path)  # recomputes the root and checks it against the head
    try:
        assert reopened.state_root() == root
        assert reopened.params() == params and params["tempo"] == 400
        assert reopened.state.get("prop", pid).status == "executed"
    finally:
        reopened.close()
