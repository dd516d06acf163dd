"""Signed transactions (SPEC L2).

One ``Tx`` type carries every kind: ``kind`` names the rule that applies it and ``payload``
holds its arguments. ``PAYLOAD_SCHEMAS`` fixes, per kind, the exact payload fields and their
types, so a tx with a missing, extra or mistyped field is rejected before any rule runs.
The signature covers the chain id, so a tx signed for a testnet cannot be replayed on
another chain; the per-account nonce stops replays on the same chain.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ledger.encoding import MAX_INT, canonical, is_hex64, is_int, sha256
from ledger.evidence import vote_format_problem
from ledger.keys import Wallet, is_address, verify

# Field types: "int" (int in 0..MAX_INT), "addr" (address), "str", "bool", "hex32" (sha256 hex),
# "ints" (list of non-negative ints), "vote" (a signed finality vote's wire form, ledger.evidence).
PAYLOAD_SCHEMAS: dict[str, dict[str, str]] = {
    "transfer": {"to": "addr", "amount": "int"},
    "burn": {"amount": "int"},  # bridge-out / destroy $BASED; counted in supply as burned
    "stake": {"brain": "int", "delegate": "str", "amount": "int"},  # delegate "" = the Brain
    "unstake": {"brain": "int", "delegate": "str", "amount": "int"},
    "register": {"brain": "int", "role": "str", "max_fee": "int"},  # "memorize" (L4)
    "deregister": {"brain": "int"},
    "set_weights": {"brain": "int", "uids": "ints", "weights": "ints"},
    "brain_config": {"brain": "int", "key": "str", "value": "str"},
    "brain_transfer": {"brain": "int", "to": "addr"},
    "brain_deactivate": {"brain": "int"},
    "bridge_burn": {"eth_ref": "str", "owner": "addr", "pepecoin": "int"},  # bridge key only
    "bridge_lock": {"eth_ref": "str", "owner": "addr", "pepecoin": "int"},  # bridge key only
    "propose": {"title": "str", "body_sha256": "hex32"},  # a text proposal (L8)
    # change a governable chain parameter (genesis.param_bounds) if it passes (issue #16)
    "propose_param": {"title": "str", "param": "str", "value": "int"},
    "vote": {"proposal": "int", "brain": "int", "approve": "bool"},
    # Accuracy(TFT) per miner of a Brain, in bps, from the owner of Brain #2 (the TFT Brain):
    # accuracy = skill × verified share, checked by every node (ledger.tft_report)
    "tft_report": {"brain": "int", "uids": "ints", "accuracy_bps": "ints", "skill_bps": "ints",
                   "checkpoint": "hex32", "data_height": "int"},
    # two conflicting votes signed by one validator (SPEC N1): anyone may report them; the
    # ledger checks the signatures itself and slashes (rules._evidence)
    "evidence": {"first": "vote", "second": "vote"},
}

MAX_STR = 256


class TxFormatError(ValueError):
    """A tx whose shape is wrong, independent of any state."""


def _check_field(name: str, kind: str, value: Any) -> None:
    ok: bool
    if kind == "int":
        ok = is_int(value, 0, MAX_INT)
    elif kind == "addr":
        ok = is_address(value)
    elif kind == "str":
        ok = isinstance(value, str) and len(value) <= MAX_STR
    elif kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "hex32":
        ok = is_hex64(value)
    elif kind == "ints":
        ok = isinstance(value, list) and all(is_int(v, 0, MAX_INT) for v in value)
    elif kind == "vote":
        ok = vote_format_problem(value) is None
    else:  # pragma: no cover - schema typo
        raise AssertionError(kind)
    if not ok:
        raise TxFormatError(f"payload field {name!r} must be {kind}")


@dataclass(frozen=True)
class Tx:
    """A transaction. ``signature`` is over ``signing_bytes(chain_id)``."""

    kind: str
    sender: str
    nonce: int
    fee: int
    payload: dict[str, Any] = field(default_factory=dict)
    signature: bytes = b""

    def body(self, chain_id: str) -> dict[str, Any]:
        """The signed fields as a canonical-encodable dict."""
        return {
            "chain": chain_id,
            "kind": self.kind,
            "sender": self.sender,
            "nonce": self.nonce,
            "fee": self.fee,
            "payload": self.payload,
        }

    def signing_bytes(self, chain_id: str) -> bytes:
        """Bytes the sender signs."""
        return canonical(self.body(chain_id))

    def to_dict(self) -> dict[str, Any]:
        """Wire/storage form (signature as hex); chain id is implied by the chain."""
        return {
            "kind": self.kind,
            "sender": self.sender,
            "nonce": self.nonce,
            "fee": self.fee,
            "payload": self.payload,
            "sig": self.signature.hex(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Tx:
        """Inverse of ``to_dict``; raises ``TxFormatError`` on junk (``check_format`` then
        checks the fields' types and ranges)."""
        try:
            if not isinstance(d["payload"], dict):
                raise TypeError("payload must be an object")
            return cls(
                kind=d["kind"],
                sender=d["sender"],
                nonce=d["nonce"],
                fee=d["fee"],
                payload=dict(d["payload"]),
                signature=bytes.fromhex(d["sig"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise TxFormatError(f"malformed tx: {e}") from e

    def tx_hash(self) -> bytes:
        """Identity of the tx: sha256 of its canonical wire form (signature included)."""
        return sha256(canonical(self.to_dict()))

    def check_format(self) -> None:
        """Raise ``TxFormatError`` unless kind, header fields and payload fit the schema."""
        schema = PAYLOAD_SCHEMAS.get(self.kind)
        if schema is None:
            raise TxFormatError(f"unknown tx kind {self.kind!r}")
        if not is_address(self.sender):
            raise TxFormatError("sender is not an address")
        for name, value in (("nonce", self.nonce), ("fee", self.fee)):
            if not is_int(value, 0, MAX_INT):
                raise TxFormatError(f"{name} must be an int in 0..{MAX_INT}")
        if not isinstance(self.payload, dict) or set(self.payload) != set(schema):
            raise TxFormatError(f"{self.kind} payload needs exactly {sorted(schema)}")
        for name, kind in schema.items():
            _check_field(name, kind, self.payload[name])

    def verify_signature(self, chain_id: str) -> bool:
        """True when the sender's key signed this tx for ``chain_id``."""
        return verify(self.sender, self.signing_bytes(chain_id), self.signature)


def make_tx(
    wallet: Wallet, kind: str, nonce: int, chain_id: str, fee: int = 0, **payload: Any
) -> Tx:
    """Build, format-check and sign a tx (the one way clients should create txs)."""
    unsigned = Tx(kind=kind, sender=wallet.address, nonce=nonce, fee=fee, payload=payload)
    unsigned.check_format()
    sig = wallet.sign(unsigned.signing_bytes(chain_id))
    return Tx(kind=kind, sender=wallet.address, nonce=nonce, fee=fee, payload=payload,
              signature=sig)
