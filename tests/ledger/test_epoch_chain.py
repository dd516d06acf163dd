"""An epoch's emission paid out through the chain (SPEC L6, L7): 2 validators × 3 miners,
expected amounts worked out by hand in the comments."""

from __future__ import annotations

import numpy as np
from ledger_helpers import (
    BRIDGE,
    OPERATOR,
    START_BALANCE,
    Signer,
    apply_ok,
    conserved,
    genesis,
    next_block,
)

from ledger.chain import Chain
from ledger.keys import Wallet
from ledger.units import BASED

V1, V2 = Wallet.from_seed("v1"), Wallet.from_seed("v2")
M = [Wallet.from_seed(f"m{i}") for i in range(3)]
D, E = Wallet.from_seed("delegator-brain"), Wallet.from_seed("delegator-v1")
TEMPO = 10  # Brain 3's epochs fall on heights h with (h + 3) % 10 == 0: 7, 17, 27, ...


def _setup(extra_stake: bool = False, **genesis_args: object) -> Chain:
    people = [V1, V2, *M, D, E]
    chain = Chain(genesis(tempo=TEMPO, balances={p.address: START_BALANCE for p in people},
                          **genesis_args))
    sg = Signer(chain)
    apply_ok(chain, sg.tx(OPERATOR, "brain_config", brain=3, key="registration_fee", value="0"))
    roles = [(V1, "validator"), (V2, "validator"), *[(m, "miner") for m in M]]
    apply_ok(chain, *[sg.tx(w, "register", brain=3, role=r, max_fee=0) for w, r in roles])
    txs = [sg.tx(V1, "stake", brain=3, delegate=V1.address, amount=600 * BASED),
           sg.tx(V2, "stake", brain=3, delegate=V2.address, amount=400 * BASED),
           sg.tx(V1, "set_weights", brain=3, uids=[0, 1], weights=[1000, 1000]),
           sg.tx(V2, "set_weights", brain=3, uids=[1, 2], weights=[7, 7])]
    if extra_stake:
        txs += [sg.tx(D, "stake", brain=3, delegate="", amount=1000 * BASED)]
    apply_ok(chain, *txs)
    return chain


def _run_to(chain: Chain, height: int) -> None:
    while chain.height < height:
        next_block(chain)


def test_two_by_three_epoch_paid_through_the_chain() -> None:
    chain = _setup()
    # Block 7: first epoch of Brain 3. Until then no Brain had a performance score, so the
    # reward of blocks 1-7 went to Brain #0 (the fallback) and Brain 3 had nothing to pay.
    _run_to(chain, 7)
    assert chain.state.get("pend", 0) == 7 * 10 * BASED
    # Hand: S = (.6, .4); rows W1 = (.5, .5, 0), W2 = (0, .5, .5). κ-median per miner:
    # C = (.5, .5, 0). Clipped: W1 = (.5, .5, 0), W2 = (0, .5, 0) → vtrust = (1, .5).
    # Performance = stake-weighted vtrust = .6·1 + .4·.5 = .8 → 8,000 bps.
    assert chain.state.get("perf", 3) == 8_000
    # Bonds: column-normalised S·Wclipped: M0 (1, 0), M1 (.6, .4), M2 (0, 0); α·Δ + (1−α)·0
    # then column-normalised again = Δ. Stored as u16: .6 → 39,321, .4 → 26,214.
    bonds = chain.state.get("bond", 3)
    assert bonds.tolist() == [[65535, 39321, 0], [0, 26214, 0]]

    # Blocks 8-17: Brain 3 is the only Brain with a score, so it gets all 10 × 10 BASED.
    _run_to(chain, 16)
    before = {w.address: chain.balance(w.address) for w in [V1, V2, *M, OPERATOR]}
    assert chain.state.get("pend", 3) == 9 * 10 * BASED
    _run_to(chain, 17)
    gain = {a: chain.balance(a) - b for a, b in before.items()}
    # E = 100 BASED: owner 25% = 25; nodes 75 → miners 50% = 37.5, validators 37.5.
    assert gain[OPERATOR.address] == 25 * BASED
    # Ranks = S·Wclipped = (.3, .5, 0) → incentive (.375, .625, 0) of 37.5 BASED.
    assert [gain[m.address] for m in M] == [14_062_500_000, 23_437_500_000, 0]
    # Dividends = bonds·incentive = (1·.375 + .6·.625, .4·.625) = (.75, .25) of 37.5 BASED,
    # each validator's share paid to its stakers (here itself).
    assert gain[V1.address] == 28_125_000_000
    assert gain[V2.address] == 9_375_000_000
    assert sum(gain.values()) == 100 * BASED
    assert chain.state.get("pend", 3) is None
    assert conserved(chain.state)
    # ΔCredits = W·S per miner (row-normalised W, stake in base units), cumulative over the
    # two epochs: M0 .5·600, M1 .5·600 + .5·400, M2 .5·400 (BASED), twice.
    assert chain.state.get("cred", 3) == (600 * BASED, 1000 * BASED, 400 * BASED)


def test_brain_level_stake_and_delegators_share_the_validator_part() -> None:
    chain = _setup(extra_stake=True)
    sg = Signer(chain)
    apply_ok(chain, sg.tx(E, "stake", brain=3, delegate=V1.address, amount=200 * BASED))
    _run_to(chain, 16)
    before = {w.address: chain.balance(w.address) for w in [V1, V2, D, E, *M, OPERATOR]}
    _run_to(chain, 17)
    gain = {a: chain.balance(a) - b for a, b in before.items()}
    assert sum(gain.values()) == 100 * BASED
    # Validator part 37.5 BASED; Brain-level stake 1000 of 2200 → D gets 37.5·10/22 (floored).
    val_part = 37_500_000_000
    assert gain[D.address] == val_part * 1000 // 2200
    rest = val_part - gain[D.address]
    # V1 (800 stake: 600 own + 200 E) and V2 share the rest; E gets 1/4 of V1's amount.
    v1_total = gain[V1.address] + gain[E.address]
    assert v1_total + gain[V2.address] == rest
    assert abs(gain[E.address] * 4 - v1_total) <= 4
    assert conserved(chain.state)


def test_new_miner_does_not_inherit_weights_or_bonds() -> None:
    chain = _setup()
    _run_to(chain, 7)
    sg = Signer(chain)
    newbie = Wallet.from_seed("newbie")
    apply_ok(chain, sg.tx(D, "transfer", to=newbie.address, amount=BASED))
    apply_ok(chain, sg.tx(M[0], "deregister", brain=3))
    apply_ok(chain, sg.tx(newbie, "register", brain=3, role="miner", max_fee=0))
    assert chain.state.get("reg", (3, newbie.address)).slot == 0
    _run_to(chain, 17)
    # nobody set weights for the newcomer: V1's old weight on slot 0 is dropped
    assert chain.state.get("bond", 3)[:, 0].tolist() == [0, 0]
    assert np.array_equal(chain.state.get("bond", 3)[:, 2], [0, 0])
    assert conserved(chain.state)


def test_no_validators_pays_the_owner() -> None:
    chain = Chain(genesis(tempo=TEMPO))
    _run_to(chain, 10)  # Brain 0 epoch at 10: everything (100 BASED) to the operator
    assert chain.balance(OPERATOR.address) == START_BALANCE + 100 * BASED
    assert conserved(chain.state)


def test_tft_accuracy_enters_incentive_once_beta_is_positive() -> None:
    # blocks_per_year = 2 → at block 17, t = 8.5 "years" > 4, so β(t) = 1.
    chain = _setup(blocks_per_year=2)
    _run_to(chain, 11)  # a report needs Recipe.min_height blocks of public data
    sg = Signer(chain)
    # Accuracy = skill × verified share (ledger.tft_report): miner 0 is verified by V1's
    # 60 % of the stake, miner 2 only by V2's 40 % (below the κ majority), so skills
    # (1, 0, 1) give accuracies (.6, 0, 0); a report giving miner 2 any is refused.
    report = dict(brain=3, uids=[0, 1, 2], skill_bps=[10_000, 0, 10_000],
                  checkpoint="00" * 32, data_height=11)
    ok = sg.tx(OPERATOR, "tft_report", accuracy_bps=[6_000, 0, 0], **report)
    assert chain.validate_tx(ok) is None
    for wallet, acc in ((OPERATOR, [6_000, 0, 10_000]), (V1, [6_000, 0, 0])):
        forged = Signer(chain).tx(wallet, "tft_report", accuracy_bps=acc, **report)
        assert chain.validate_tx(forged).startswith(
            "accuracy_bps of uid 2" if wallet is OPERATOR else "only the owner of Brain #2")
    apply_ok(chain, ok)
    _run_to(chain, 16)
    before = {w.address: chain.balance(w.address) for w in [V1, V2, *M]}
    _run_to(chain, 17)
    gain = {a: chain.balance(a) - b for a, b in before.items()}
    # I = normalise(R + β·normalise(A)) = normalise((.375, .625, 0) + (1, 0, 0))
    #   = (.6875, .3125, 0) of the 37.5 BASED miners' part.
    assert [gain[m.address] for m in M] == [25_781_250_000, 11_718_750_000, 0]
    # dividends = bonds·I = (1·.6875 + .6·.3125, .4·.3125) = (.875, .125)
    assert (gain[V1.address], gain[V2.address]) == (32_812_500_000, 4_687_500_000)
    assert conserved(chain.state)


def test_staked_brain_owner_earns_nothing_during_its_lock() -> None:
    # Brain 7 acquired by a Pepecoin stake: for 90 days its owner share goes to the nodes.
    owner = Wallet.from_seed("lock-owner")
    chain = Chain(genesis(tempo=TEMPO, balances={p.address: START_BALANCE for p in [V1, *M]}))
    sg = Signer(chain)
    apply_ok(chain, sg.tx(BRIDGE, "bridge_lock", eth_ref="0xlock", owner=owner.address,
                          pepecoin=100_000))
    apply_ok(chain,
             sg.tx(owner, "brain_config", brain=7, key="registration_fee", value="0"),
             sg.tx(V1, "register", brain=7, role="validator", max_fee=0),
             sg.tx(M[0], "register", brain=7, role="miner", max_fee=0),
             sg.tx(V1, "stake", brain=7, delegate=V1.address, amount=10 * BASED),
             sg.tx(V1, "set_weights", brain=7, uids=[0], weights=[1]))
    _run_to(chain, 3)  # Brain 7's first epoch ((3 + 7) % 10 == 0) sets performance 10,000
    assert chain.state.get("perf", 7) == 10_000
    before = {w.address: chain.balance(w.address) for w in [V1, M[0], owner]}
    _run_to(chain, 13)  # blocks 4..13 all go to Brain 7: 100 BASED, no owner part
    gain = {a: chain.balance(a) - b for a, b in before.items()}
    assert gain == {V1.address: 50 * BASED, M[0].address: 50 * BASED, owner.address: 0}
    assert conserved(chain.state)
