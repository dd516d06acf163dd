"""Double-signing evidence, slashing, unbonding and the L7 voting set (issue #15; SPEC N1,
L5, L7).

A validator that signs two different votes for one (height, round, phase) has proven
itself Byzantine; anyone may put both signatures on chain, and the ledger, checking them
itself, slashes a fixed fraction of every stake delegated to it — stake in its unbonding
period included, which is what the unbonding period is for — and removes it from the
voting set for good, all in one tx (atomic: a rejected evidence tx changes nothing).
"""

from __future__ import annotations

from ledger_helpers import (
    BRIDGE,
    CHAIN_ID,
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
from ledger.keys import Wallet
from ledger.units import BASED

V, D, W, R = USERS[0], USERS[1], USERS[2], USERS[3]
X, Y = "0a" * 32, "0b" * 32


def _staked_chain(unbonding: int = 10) -> Chain:
    """Brain 3: validators V (1,000 own + 400 of D's, 100 more of D's unbonding) and W."""
    chain = Chain(genesis(unbonding_blocks=unbonding))
    sg = Signer(chain)
    apply_ok(chain, sg.tx(V, "register", brain=3, role="validator", max_fee=100 * BASED),
             sg.tx(W, "register", brain=3, role="validator", max_fee=100 * BASED))
    apply_ok(chain, sg.tx(V, "stake", brain=3, delegate=V.address, amount=1_000 * BASED),
             sg.tx(D, "stake", brain=3, delegate=V.address, amount=500 * BASED),
             sg.tx(W, "stake", brain=3, delegate=W.address, amount=1_000 * BASED))
    apply_ok(chain, sg.tx(D, "unstake", brain=3, delegate=V.address, amount=100 * BASED))
    return chain


def test_unstaked_stake_waits_out_the_unbonding_period() -> None:
    chain = _staked_chain(unbonding=10)
    released_at = chain.height + 10
    before = chain.balance(D.address)
    assert chain.state.delegate_stake[(3, V.address)] == 1_400 * BASED
    while chain.height < released_at - 1:
        next_block(chain)
        assert chain.balance(D.address) == before  # still bonded, still slashable
        assert conserved(chain.state)
    next_block(chain)
    assert chain.balance(D.address) == before + 100 * BASED
    assert conserved(chain.state)


def test_double_signing_evidence_slashes_stake_and_unbonding_stake() -> None:
    from ledger.economics import SLASH_DOUBLE_SIGN_BPS, slash_amount
    from ledger.evidence import sign_vote

    chain = _staked_chain()
    h = chain.height
    first = sign_vote(V, CHAIN_ID, h, 0, "precommit", X)
    second = sign_vote(V, CHAIN_ID, h, 0, "precommit", Y)
    burned = chain.state.meta("burned")
    sg = Signer(chain)
    apply_ok(chain, sg.tx(R, "evidence", first=first, second=second))
    assert 0 < SLASH_DOUBLE_SIGN_BPS < 10_000
    own, dlg, unb = 1_000 * BASED, 400 * BASED, 100 * BASED
    cut = slash_amount(own) + slash_amount(dlg) + slash_amount(unb)
    assert cut == (own + dlg + unb) * SLASH_DOUBLE_SIGN_BPS // 10_000
    assert chain.state.get("stake", (3, V.address, V.address)) == own - slash_amount(own)
    assert chain.state.get("stake", (3, V.address, D.address)) == dlg - slash_amount(dlg)
    assert chain.state.delegate_stake[(3, W.address)] == 1_000 * BASED  # others untouched
    assert chain.state.meta("burned") == burned + cut
    assert conserved(chain.state)
    assert V.address not in chain.validator_set()  # out of the voting set for good
    assert W.address in chain.validator_set()
    # the same offence (or another vote pair of it) is punished once
    third = sign_vote(V, CHAIN_ID, h, 1, "prevote", X)
    fourth = sign_vote(V, CHAIN_ID, h, 1, "prevote", Y)
    assert "already slashed" in reason(chain, Signer(chain).tx(R, "evidence", first=third,
                                                                second=fourth))
    # D's unbonding 100 comes back slashed
    d_before = chain.balance(D.address)
    for _ in range(10):
        next_block(chain)
    assert chain.balance(D.address) == d_before + unb - slash_amount(unb)
    assert conserved(chain.state)


def test_evidence_that_proves_nothing_is_refused_and_changes_nothing() -> None:
    from ledger.evidence import sign_vote

    chain = _staked_chain(unbonding=10)
    h = chain.height
    a = sign_vote(V, CHAIN_ID, h, 0, "prevote", X)
    cases = {
        "same block": sign_vote(V, CHAIN_ID, h, 0, "prevote", X),
        "different round": sign_vote(V, CHAIN_ID, h, 1, "prevote", Y),
        "different phase": sign_vote(V, CHAIN_ID, h, 0, "precommit", Y),
        "different height": sign_vote(V, CHAIN_ID, h + 1, 0, "prevote", Y),
        "different voter": sign_vote(W, CHAIN_ID, h, 0, "prevote", Y),
        "other chain": sign_vote(V, "another-chain", h, 0, "prevote", Y),
        "forged": {**sign_vote(V, CHAIN_ID, h, 0, "prevote", Y),
                   "sig": sign_vote(Wallet.from_seed("x"), CHAIN_ID, h, 0, "prevote",
                                    Y)["sig"]},
    }
    root = chain.state_root()
    for what, b in cases.items():
        r = reason(chain, Signer(chain).tx(R, "evidence", first=a, second=b))
        assert r, what
    assert chain.state_root() == root
    # evidence older than the unbonding period: the stake may have left; refused
    for _ in range(11):
        next_block(chain)
    late = sign_vote(V, CHAIN_ID, h, 0, "prevote", Y)
    assert "too old" in reason(chain, Signer(chain).tx(R, "evidence", first=a, second=late))
    assert chain.balance(R.address) == START_BALANCE


def test_voting_set_is_the_active_validators_of_each_brain_under_l7() -> None:
    """SPEC L7: in each Brain only validators with stake ≥ the 70th percentile (numpy's
    ``method="lower"``) of that Brain's validator stakes are active; the paper's Figure 4
    stakes 40, 50, 60, 80, 85, 90 → 80, 85, 90. The network's voting set counts a
    validator's stake only in the Brains where it is active."""
    chain = Chain(genesis())
    sg = Signer(chain)
    six = USERS[:6]
    apply_ok(chain, *[sg.tx(u, "register", brain=3, role="validator", max_fee=100 * BASED)
                      for u in six])
    apply_ok(chain, *[sg.tx(u, "stake", brain=3, delegate=u.address, amount=s * BASED)
                      for u, s in zip(six, (40, 50, 60, 80, 85, 90), strict=True)])
    assert chain.validator_set() == {six[3].address: 80 * BASED, six[4].address: 85 * BASED,
                                     six[5].address: 90 * BASED}
    # six[0] is also alone in Brain 4: active there, so that stake counts (not Brain 3's)
    apply_ok(chain, sg.tx(six[0], "register", brain=4, role="validator", max_fee=100 * BASED))
    apply_ok(chain, sg.tx(six[0], "stake", brain=4, delegate=six[0].address, amount=7))
    assert chain.validator_set()[six[0].address] == 7
    assert BRIDGE.address not in chain.validator_set()


def test_integer_active_threshold_is_numpys_rule() -> None:
    """``active_stake_threshold`` (ints, for the voting set) and the epoch's float mask
    pick the same validators, including sizes where 0.7·(n−1) rounds below an integer."""
    import random

    import numpy as np

    from ledger.consensus import active_stake_threshold, active_validator_mask

    rng = random.Random(7)
    for n in [*range(1, 40), 64, 101, 256]:
        stakes = [rng.randrange(1, 1_000) for _ in range(n)]
        t = active_stake_threshold(stakes)
        mask = active_validator_mask(np.asarray(stakes, dtype=np.int64))
        assert [s >= t for s in stakes] == mask.tolist(), n
    assert active_stake_threshold([40, 50, 60, 80, 85, 90]) == 80
    assert active_stake_threshold([]) == 0
