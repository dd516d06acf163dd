"""Brains: reserved ids, Pepecoin burn/lock via bridge attestations, transfer, deactivation,
owner settings, "memorize" registration with grandfathered fees, slot caps (SPEC L3, L4)."""

from __future__ import annotations

from ledger_helpers import (
    BRIDGE,
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
from ledger.keys import Wallet
from ledger.units import BASED, MAX_MINERS, MAX_VALIDATORS, RESERVED_BRAINS

A, B, C = USERS[0], USERS[1], USERS[2]


def _burn(sg: Signer, ref: str, owner: str, pepe: int):  # noqa: ANN202
    return sg.tx(BRIDGE, "bridge_burn", eth_ref=ref, owner=owner, pepecoin=pepe)


def test_reserved_brains_at_genesis() -> None:
    chain = Chain(genesis())
    assert sorted(chain.state.tables["brain"]) == [0, 1, 2, 3, 4, 5, 6, 47]
    assert RESERVED_BRAINS == (0, 1, 2, 3, 4, 5, 6, 47)
    assert all(b.owner == OPERATOR.address for b in chain.state.tables["brain"].values())


def test_burn_prices_rise_and_ids_skip_reserved() -> None:
    chain = Chain(genesis())
    sg = Signer(chain)
    apply_ok(chain, _burn(sg, "0xa", A.address, 1_000))
    # second Brain costs 1,000 + 200 × 1 = 1,200: 1,199 is refused
    assert reason(chain, _burn(Signer(chain), "0xb", B.address, 1_199)).startswith(
        "burn price is 1200")
    apply_ok(chain, _burn(sg, "0xb", B.address, 1_200))
    ids = sorted(b for b, v in chain.state.tables["brain"].items() if v.method == "burn")
    assert ids == [7, 8]
    assert chain.state.brain(7).owner == A.address
    assert chain.state.meta("brains_burned") == 2
    # 3rd costs 1,400
    assert reason(chain, _burn(Signer(chain), "0xc", B.address, 1_399)).startswith(
        "burn price is 1400")


def test_only_bridge_attests_and_refs_are_single_use() -> None:
    chain = Chain(genesis())
    sg = Signer(chain)
    fake = sg.tx(A, "bridge_burn", eth_ref="0x1", owner=A.address, pepecoin=10**6)
    assert reason(chain, fake) == "only the bridge key attests Pepecoin events"
    sg = Signer(chain)
    apply_ok(chain, _burn(sg, "0x1", A.address, 1_000))
    again = sg.tx(BRIDGE, "bridge_lock", eth_ref="0x1", owner=A.address, pepecoin=100_000)
    assert reason(chain, again) == "attestation already used"


def test_brain_cap_1024() -> None:
    chain = Chain(genesis())
    sg = Signer(chain)
    free = 1024 - len(RESERVED_BRAINS)
    txs = [sg.tx(BRIDGE, "bridge_lock", eth_ref=f"r{i}", owner=A.address, pepecoin=100_000)
           for i in range(free)]
    apply_ok(chain, *txs)
    assert len(chain.state.tables["brain"]) == 1024
    extra = sg.tx(BRIDGE, "bridge_lock", eth_ref="one-more", owner=A.address, pepecoin=100_000)
    assert reason(chain, extra) == "all 1024 Brains are issued"


def test_transfer_only_burned_brains() -> None:
    chain = Chain(genesis())
    sg = Signer(chain)
    apply_ok(chain, _burn(sg, "b", A.address, 1_000),
             sg.tx(BRIDGE, "bridge_lock", eth_ref="l", owner=A.address, pepecoin=100_000))
    apply_ok(chain, sg.tx(A, "brain_transfer", brain=7, to=B.address))
    assert chain.state.brain(7).owner == B.address
    assert chain.state.brain(7).reward_address == B.address
    assert reason(chain, sg.tx(A, "brain_transfer", brain=8, to=B.address)) == (
        "only Brains acquired by burning Pepecoin are transferable")
    assert reason(chain, Signer(chain).tx(OPERATOR, "brain_transfer", brain=3, to=B.address)) == (
        "only Brains acquired by burning Pepecoin are transferable")


def test_stake_acquisition_lock_and_deactivation_frees_the_slot() -> None:
    g = genesis(block_time=86_400)  # 1 block per day → 90-day lock = 90 blocks
    assert g.stake_lock_blocks == 90
    chain = Chain(g)
    sg = Signer(chain)
    assert reason(chain, Signer(chain).tx(BRIDGE, "bridge_lock", eth_ref="x", owner=A.address,
                                          pepecoin=99_999)).startswith("stake acquisition")
    apply_ok(chain, sg.tx(BRIDGE, "bridge_lock", eth_ref="x", owner=A.address, pepecoin=100_000))
    assert chain.state.brain(7).method == "stake"
    acquired = chain.height
    apply_ok(chain, sg.tx(B, "stake", brain=7, delegate="", amount=40 * BASED))
    early = Signer(chain).tx(A, "brain_deactivate", brain=7)
    assert reason(chain, early) == "the 90-day Pepecoin lock has not ended"
    while chain.height < acquired + 90 - 1:
        next_block(chain)
    apply_ok(chain, sg.tx(A, "brain_deactivate", brain=7))
    assert chain.state.brain(7) is None
    assert chain.state.get("unlock", (7, chain.height)) == (A.address, 100_000)
    assert chain.balance(B.address) == START_BALANCE  # stake returned
    assert chain.state.total_stake == 0
    assert conserved(chain.state)
    # the slot is free again: the next acquisition gets id 7
    apply_ok(chain, sg.tx(BRIDGE, "bridge_burn", eth_ref="y", owner=C.address, pepecoin=1_000))
    assert chain.state.brain(7).owner == C.address


def test_burned_and_reserved_brains_cannot_deactivate() -> None:
    chain = Chain(genesis())
    sg = Signer(chain)
    apply_ok(chain, _burn(sg, "b", A.address, 1_000))
    assert reason(chain, sg.tx(A, "brain_deactivate", brain=7)).startswith("only Brains acquired")


def test_owner_settings() -> None:
    chain = Chain(genesis())
    sg = Signer(chain)
    task = "ab" * 32
    apply_ok(chain,
             sg.tx(OPERATOR, "brain_config", brain=3, key="task", value=task),
             sg.tx(OPERATOR, "brain_config", brain=3, key="name", value="ZK-LLM"),
             sg.tx(OPERATOR, "brain_config", brain=3, key="reward_address", value=C.address),
             sg.tx(OPERATOR, "brain_config", brain=3, key="owner_bps", value="1000"),
             sg.tx(OPERATOR, "brain_config", brain=3, key="miner_bps", value="7000"))
    b = chain.state.brain(3)
    assert (b.task, b.name, b.reward_address, b.owner_bps, b.miner_bps) == (
        task, "ZK-LLM", C.address, 1000, 7000)
    s2 = Signer(chain)
    assert reason(chain, s2.tx(A, "brain_config", brain=3, key="name", value="x")) == (
        "sender does not own Brain #3")
    for key, value in [("owner_bps", "10001"), ("task", "xyz"), ("owner_bps", "01"),
                       ("reward_address", "nope"), ("colour", "red")]:
        assert reason(chain, Signer(chain).tx(OPERATOR, "brain_config", brain=3, key=key,
                                              value=value))


def test_registration_fee_goes_to_owner_and_is_grandfathered() -> None:
    chain = Chain(genesis())
    sg = Signer(chain)
    op0 = chain.balance(OPERATOR.address)
    apply_ok(chain, sg.tx(A, "register", brain=3, role="miner", max_fee=100 * BASED))
    assert chain.balance(A.address) == START_BALANCE - 100 * BASED
    assert chain.balance(OPERATOR.address) == op0 + 100 * BASED
    apply_ok(chain, sg.tx(OPERATOR, "brain_config", brain=3, key="registration_fee",
                          value=str(250 * BASED)))
    # A stays registered at the fee it paid, and is charged nothing more
    assert chain.state.get("reg", (3, A.address)).fee_paid == 100 * BASED
    assert chain.balance(A.address) == START_BALANCE - 100 * BASED
    # a newcomer pays the new fee; max_fee protects against a fee raised under one's feet
    assert reason(chain, Signer(chain).tx(B, "register", brain=3, role="validator",
                                          max_fee=100 * BASED)).startswith("registration fee")
    apply_ok(chain, sg.tx(B, "register", brain=3, role="validator", max_fee=250 * BASED))
    assert chain.balance(B.address) == START_BALANCE - 250 * BASED
    assert chain.state.get("reg", (3, B.address)).fee_paid == 250 * BASED
    assert reason(chain, Signer(chain).tx(A, "register", brain=3, role="validator",
                                          max_fee=10**15)) == "already registered in this Brain"
    # re-registering after leaving pays the current fee
    apply_ok(chain, sg.tx(A, "deregister", brain=3))
    apply_ok(chain, sg.tx(A, "register", brain=3, role="miner", max_fee=250 * BASED))
    assert chain.balance(A.address) == START_BALANCE - 350 * BASED
    assert conserved(chain.state)


def _caps_chain(n: int) -> tuple[Chain, list[Wallet]]:
    ws = [Wallet.from_seed(f"slot-{i}") for i in range(n)]
    chain = Chain(genesis(balances={w.address: 1 for w in ws}))
    apply_ok(chain, Signer(chain).tx(OPERATOR, "brain_config", brain=3, key="registration_fee",
                                     value="0"))
    return chain, ws


def test_validator_cap_256_and_slot_reuse() -> None:
    chain, ws = _caps_chain(MAX_VALIDATORS + 1)
    sg = Signer(chain)
    apply_ok(chain, *[sg.tx(w, "register", brain=3, role="validator", max_fee=0)
                      for w in ws[:MAX_VALIDATORS]])
    last = ws[MAX_VALIDATORS]
    assert reason(chain, Signer(chain).tx(last, "register", brain=3, role="validator",
                                          max_fee=0)) == "Brain #3 has no free validator slot"
    apply_ok(chain, sg.tx(ws[5], "deregister", brain=3))
    apply_ok(chain, sg.tx(last, "register", brain=3, role="validator", max_fee=0))
    assert chain.state.get("reg", (3, last.address)).slot == 5
    assert len(chain.state.brain(3).validators) == MAX_VALIDATORS


def test_miner_cap_1792() -> None:
    chain, ws = _caps_chain(MAX_MINERS + 1)
    sg = Signer(chain)
    apply_ok(chain, *[sg.tx(w, "register", brain=3, role="miner", max_fee=0)
                      for w in ws[:MAX_MINERS]])
    assert reason(chain, Signer(chain).tx(ws[-1], "register", brain=3, role="miner",
                                          max_fee=0)) == "Brain #3 has no free miner slot"
