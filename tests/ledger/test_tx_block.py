"""Signatures, canonical bytes and header checks (SPEC L2)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from ledger_helpers import CHAIN_ID, PROPOSER, USERS, Signer, apply_ok, genesis, reason

from ledger.block import Block, Header, sign_header, tx_root
from ledger.chain import Chain
from ledger.encoding import canonical
from ledger.keys import Wallet, verify
from ledger.rules import InvalidBlock
from ledger.tx import Tx, TxFormatError, make_tx
from ledger.units import BASED

A, B = USERS[0], USERS[1]


def test_canonical_bytes_are_order_independent_and_float_free() -> None:
    assert canonical({"b": 1, "a": [1, "x"]}) == b'{"a":[1,"x"],"b":1}'
    with pytest.raises(TypeError):
        canonical({"a": 1.5})


def test_sign_and_verify() -> None:
    w = Wallet.from_seed("k")
    sig = w.sign(b"msg")
    assert verify(w.address, b"msg", sig)
    assert not verify(w.address, b"msh", sig)
    assert not verify(Wallet.from_seed("other").address, b"msg", sig)
    assert not verify("zz", b"msg", sig)


def test_tx_roundtrip_and_hash_changes_with_any_field() -> None:
    tx = make_tx(A, "transfer", 0, CHAIN_ID, fee=3, to=B.address, amount=7)
    assert Tx.from_dict(tx.to_dict()) == tx
    assert tx.verify_signature(CHAIN_ID)
    assert not tx.verify_signature("another-chain")  # no cross-chain replay
    other = make_tx(A, "transfer", 0, CHAIN_ID, fee=3, to=B.address, amount=8)
    assert other.tx_hash() != tx.tx_hash()


def test_format_errors() -> None:
    with pytest.raises(TxFormatError):
        make_tx(A, "transfer", 0, CHAIN_ID, to=B.address)  # missing amount
    with pytest.raises(TxFormatError):
        make_tx(A, "transfer", 0, CHAIN_ID, to=B.address, amount=-1)
    with pytest.raises(TxFormatError):
        make_tx(A, "mint", 0, CHAIN_ID, amount=1)
    with pytest.raises(TxFormatError):
        make_tx(A, "transfer", 0, CHAIN_ID, to=B.address, amount=True)


def test_tampered_replayed_and_out_of_order_txs_are_rejected() -> None:
    chain = Chain(genesis())
    sg = Signer(chain)
    tx = sg.tx(A, "transfer", to=B.address, amount=5 * BASED)
    forged = replace(tx, payload={**tx.payload, "amount": 500 * BASED})
    assert reason(chain, forged) == "bad signature"
    wrong_signer = make_tx(B, "transfer", 0, CHAIN_ID, to=B.address, amount=1)
    assert reason(chain, replace(wrong_signer, sender=A.address)) == "bad signature"
    skip = make_tx(A, "transfer", 1, CHAIN_ID, to=B.address, amount=1)
    assert reason(chain, skip).startswith("bad nonce")
    apply_ok(chain, tx)
    assert chain.balance(B.address) == 10_000 * BASED + 5 * BASED
    assert reason(chain, tx).startswith("bad nonce")  # replay
    root = chain.state_root()
    block, rejected = chain.produce_block([tx], PROPOSER, chain.height + 1)
    assert block.txs == () and len(rejected) == 1
    chain.apply_block(block)
    assert chain.balance(B.address) == 10_000 * BASED + 5 * BASED
    assert chain.state_root() != root  # height/time moved, balances did not


def test_tx_root_merkle() -> None:
    t = [make_tx(A, "transfer", i, CHAIN_ID, to=B.address, amount=1) for i in range(3)]
    from ledger.encoding import sha256

    h = [x.tx_hash() for x in t]
    assert tx_root(t) == sha256(sha256(h[0] + h[1]) + h[2]).hex()
    assert tx_root([]) == "00" * 32


def _resign(h: Header) -> Header:
    return sign_header(replace(h, signature=b""), PROPOSER, CHAIN_ID)


def test_block_header_checks_leave_state_unchanged() -> None:
    chain = Chain(genesis())
    sg = Signer(chain)
    tx = sg.tx(A, "transfer", fee=1, to=B.address, amount=BASED)
    block, _ = chain.produce_block([tx], PROPOSER, 5)
    root = chain.state_root()
    h = block.header
    bad = [
        Block(_resign(replace(h, height=2)), block.txs),
        Block(_resign(replace(h, parent="11" * 32)), block.txs),
        Block(_resign(replace(h, time=0)), block.txs),
        Block(_resign(replace(h, state_root="22" * 32)), block.txs),
        Block(h, ()),  # tx root mismatch
        Block(replace(h, signature=b"\0" * 64), block.txs),
        Block(sign_header(replace(h, proposer=A.address, signature=b""), A, CHAIN_ID),
              block.txs),  # state root was computed with another fee recipient
    ]
    for b in bad:
        with pytest.raises(InvalidBlock):
            chain.apply_block(b)
        assert chain.state_root() == root and chain.height == 0
    chain.apply_block(block)
    assert chain.height == 1
    assert Block.from_dict(block.to_dict()) == block


def test_fee_goes_to_proposer() -> None:
    chain = Chain(genesis())
    sg = Signer(chain)
    apply_ok(chain, sg.tx(A, "transfer", fee=123, to=B.address, amount=1))
    assert chain.balance(PROPOSER.address) == 123
    assert chain.balance(A.address) == 10_000 * BASED - 124


def test_duplicate_tx_in_one_batch_is_included_once() -> None:
    chain = Chain(genesis())
    tx = Signer(chain).tx(A, "transfer", to=B.address, amount=1)
    block, rejected = chain.produce_block([tx, tx], PROPOSER, 1)
    assert block.txs == (tx,)
    assert [r for _, r in rejected] == ["bad nonce: expected 1, got 0"]
    chain.apply_block(block)
    assert chain.nonce(A.address) == 1


def test_malformed_wire_blocks_raise_value_error() -> None:
    chain = Chain(genesis())
    block, _ = chain.produce_block([], PROPOSER, 1)
    good = block.to_dict()
    for mutate in (
        lambda d: d.pop("txs"),
        lambda d: d["header"].update(height="1"),
        lambda d: d["header"].update(sig="zz"),
        lambda d: d["header"].update(parent="xy"),
        lambda d: d["header"].update(extra=1),
        lambda d: d["txs"].append({"kind": "transfer"}),
    ):
        d = {"header": dict(good["header"]), "txs": list(good["txs"])}
        mutate(d)
        with pytest.raises(ValueError):
            Block.from_dict(d)
    assert Block.from_dict(good) == block


def test_wire_blocks_with_mistyped_txs_are_invalid_blocks() -> None:
    """Issue #15: ``from_dict`` took any tx shape, so a float fee reached ``canonical`` (and
    raised ``TypeError``) only when a node computed the tx root to vote. Every tx field's
    type, range and hex is checked at parse time; the error is ``InvalidBlock``."""
    chain = Chain(genesis())
    tx = make_tx(A, "transfer", 0, CHAIN_ID, fee=1, to=B.address, amount=1)
    block, _ = chain.produce_block([tx], PROPOSER, 1)
    good = block.to_dict()
    tx_changes: list[dict[str, object]] = [
        {"fee": 1.5}, {"fee": 2**63}, {"fee": True}, {"nonce": -1}, {"nonce": 2**64},
        {"kind": "mint"}, {"kind": 3}, {"sender": 7}, {"sender": "AB" * 32}, {"sig": "zz"},
        {"sig": 5}, {"payload": {"to": B.address, "amount": 0.5}},
        {"payload": {"to": B.address, "amount": 2**63}},
        {"payload": [["to", B.address], ["amount", 1]]}, {"payload": {"to": B.address}},
    ]
    for change in tx_changes:
        d = {"header": dict(good["header"]), "txs": [{**good["txs"][0], **change}]}
        with pytest.raises(InvalidBlock):
            Block.from_dict(d)
    for header_change in ({"height": 2**63}, {"time": 2**63}, {"time": 1.0}):
        d = {"header": {**good["header"], **header_change}, "txs": good["txs"]}
        with pytest.raises(InvalidBlock):
            Block.from_dict(d)
    for d in ({"header": good["header"], "txs": "abc"}, {"header": good["header"], "txs": {}},
              {"header": [], "txs": []}, [], None):
        with pytest.raises(InvalidBlock):
            Block.from_dict(d)  # type: ignore[arg-type]
    assert Block.from_dict(good) == block
