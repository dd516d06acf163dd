"""Staking/delegation/unstaking (SPEC L5), GigaBrains and governance (L8), emission split
among Brains by capped stake × performance (L6)."""

from __future__ import annotations

from ledger_helpers import (
    OPERATOR,
    START_BALANCE,
    USERS,
    Signer,
    apply_ok,
    conserved,
    genesis,
    next_block,
    reason,
)

from ledger.chain import Chain
from ledger.economics import brain_scores, split_block_reward
from ledger.rules import _emit, gigabrains
from ledger.units import BASED

A, B, C = USERS[0], USERS[1], USERS[2]
BODY = "cd" * 32


def test_stake_delegate_unstake() -> None:
    chain = Chain(genesis())
    sg = Signer(chain)
    apply_ok(chain, sg.tx(B, "register", brain=3, role="validator", max_fee=100 * BASED))
    apply_ok(chain, sg.tx(A, "stake", brain=3, delegate="", amount=30 * BASED),
             sg.tx(A, "stake", brain=3, delegate=B.address, amount=20 * BASED))
    st = chain.state
    assert st.brain_stake[3] == 50 * BASED and st.total_stake == 50 * BASED
    assert st.delegate_stake[(3, B.address)] == 20 * BASED
    assert chain.balance(A.address) == START_BALANCE - 50 * BASED
    assert reason(chain, Signer(chain).tx(A, "stake", brain=3, delegate=C.address, amount=1)) == (
        "delegate is not a validator of Brain #3")
    assert reason(chain, Signer(chain).tx(A, "stake", brain=99, delegate="", amount=1)) == (
        "no Brain #99")
    assert reason(chain, Signer(chain).tx(A, "unstake", brain=3, delegate="",
                                          amount=31 * BASED)).startswith("staked")
    assert reason(chain, Signer(chain).tx(A, "stake", brain=3, delegate="",
                                          amount=START_BALANCE)).startswith("insufficient")
    apply_ok(chain, sg.tx(A, "unstake", brain=3, delegate="", amount=30 * BASED),
             sg.tx(A, "unstake", brain=3, delegate=B.address, amount=5 * BASED))
    assert chain.state.get("stake", (3, "", A.address)) is None  # fully unstaked → row gone
    assert chain.state.total_stake == 15 * BASED
    # L5: unstaked amounts wait out the unbonding period (still slashable) before paying
    assert chain.balance(A.address) == START_BALANCE - 50 * BASED
    assert sum(chain.state.tables["unbond"].values()) == 35 * BASED
    assert conserved(chain.state)
    assert chain.validator_set() == {B.address: 15 * BASED}


def test_emission_follows_capped_stake_and_performance() -> None:
    chain = Chain(genesis())
    st = chain.state
    sg = Signer(chain)
    # Brain 3: 9,000 stake, Brain 4: 1,000 stake; cap = 0.5% of 10,000 = 50 (both capped).
    apply_ok(chain, sg.tx(A, "stake", brain=3, delegate="", amount=9_000),
             sg.tx(B, "stake", brain=4, delegate="", amount=1_000))
    st.put("perf", 3, 4_000)
    st.put("perf", 4, 8_000)
    pend = {b: st.get("pend", b, 0) for b in (3, 4)}
    _emit(st, 10)
    # Two eligible Brains → ceil(0.6) = 1 bonus Brain: Brain 4 (higher performance).
    # Scores: Brain 3 50·4000·2 = 400,000; Brain 4 50·8000·3 = 1,200,000 → 1 : 3 of 10 BASED.
    assert st.get("pend", 3) - pend[3] == 2_500_000_000
    assert st.get("pend", 4) - pend[4] == 7_500_000_000
    assert brain_scores({3: 9_000, 4: 1_000}, {3: 4_000, 4: 8_000}, 10_000) == {
        3: 400_000, 4: 1_200_000}
    assert split_block_reward(10, {3: 1}) == {3: 10}


def _giga_chain() -> Chain:
    """Brains 3 and 4 hold 99.8% of stake; Brain 5 exactly 0.1% (not Giga), 7 owned by A."""
    chain = Chain(genesis(voting_period=5))
    sg = Signer(chain)
    apply_ok(chain, sg.tx(OPERATOR, "stake", brain=3, delegate="", amount=499_000),
             sg.tx(OPERATOR, "stake", brain=4, delegate="", amount=495_000),
             sg.tx(OPERATOR, "stake", brain=5, delegate="", amount=1_000),
             sg.tx(A, "stake", brain=6, delegate="", amount=5_000))
    return chain


def test_gigabrain_threshold_through_state() -> None:
    chain = _giga_chain()
    # total 1,000,000; 0.5% = 5,000: Brain 6 exactly at the threshold is Giga, Brain 5 is not.
    assert gigabrains(chain.state) == [3, 4, 6]
    apply_ok(chain, Signer(chain).tx(A, "unstake", brain=6, delegate="", amount=1))
    assert gigabrains(chain.state) == [3, 4]


def test_first_year_default_pass_and_majority_veto() -> None:
    chain = _giga_chain()
    sg = Signer(chain)
    assert reason(chain, Signer(chain).tx(B, "propose", title="x", body_sha256=BODY)) == (
        "only the operator or a GigaBrain owner may propose")
    apply_ok(chain, sg.tx(OPERATOR, "propose", title="raise tempo", body_sha256=BODY),
             sg.tx(OPERATOR, "propose", title="lower fees", body_sha256=BODY))
    # Proposal 0: nobody votes → passes by default in year one.
    # Proposal 1: Brains 3 and 4 vote no (2 of 3 GigaBrains) → vetoed.
    apply_ok(chain, sg.tx(OPERATOR, "vote", proposal=1, brain=3, approve=False),
             sg.tx(OPERATOR, "vote", proposal=1, brain=4, approve=False))
    assert reason(chain, Signer(chain).tx(OPERATOR, "vote", proposal=1, brain=3,
                                          approve=True)) == "this Brain already voted"
    assert reason(chain, Signer(chain).tx(OPERATOR, "vote", proposal=1, brain=5,
                                          approve=True)) == "only GigaBrains vote"
    assert reason(chain, Signer(chain).tx(B, "vote", proposal=1, brain=6,
                                          approve=True)) == "sender does not own Brain #6"
    while chain.height < 7:
        next_block(chain)
    p0, p1 = chain.state.get("prop", 0), chain.state.get("prop", 1)
    assert (p0.status, p0.eligible) == ("passed", 3)
    assert (p1.status, p1.votes_against) == ("rejected", 2)
    assert reason(chain, Signer(chain).tx(OPERATOR, "vote", proposal=0, brain=3,
                                          approve=True)) == "no open proposal with that id"


def test_after_first_year_a_majority_must_approve() -> None:
    chain2 = Chain(genesis(voting_period=5, blocks_per_year=1))  # year one ends at block 1
    sg = Signer(chain2)
    apply_ok(chain2, sg.tx(OPERATOR, "stake", brain=3, delegate="", amount=600),
             sg.tx(A, "stake", brain=6, delegate="", amount=400))
    apply_ok(chain2, sg.tx(OPERATOR, "propose", title="a", body_sha256=BODY),
             sg.tx(OPERATOR, "propose", title="b", body_sha256=BODY))
    apply_ok(chain2, sg.tx(OPERATOR, "vote", proposal=1, brain=3, approve=True),
             sg.tx(OPERATOR, "vote", proposal=1, brain=6, approve=True))
    while chain2.height < 8:
        next_block(chain2)
    assert chain2.state.get("prop", 0).status == "rejected"  # silence no longer passes
    assert chain2.state.get("prop", 1).status == "passed"
