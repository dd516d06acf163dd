"""Ed25519 keys and addresses (SPEC L2).

An address is the lowercase hex of the 32-byte raw public key, so a verifier needs nothing
but the address to check a signature: no key registry has to live in the state.
"""

from __future__ import annotations

import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from ledger.encoding import is_hex64


class Wallet:
    """An ed25519 keypair; ``address`` is the hex public key."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._sk = private_key
        self.public_bytes = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.address = self.public_bytes.hex()

    @classmethod
    def generate(cls) -> Wallet:
        """A fresh random wallet."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes | str) -> Wallet:
        """A deterministic wallet (tests, devnets): the key is sha256 of the seed."""
        raw = seed.encode() if isinstance(seed, str) else seed
        return cls(Ed25519PrivateKey.from_private_bytes(hashlib.sha256(raw).digest()))

    def private_bytes(self) -> bytes:
        """The raw 32-byte private key (to save a wallet file)."""
        return self._sk.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())

    def sign(self, message: bytes) -> bytes:
        """A 64-byte ed25519 signature (deterministic, RFC 8032)."""
        return self._sk.sign(message)


def is_address(value: object) -> bool:
    """True for a well-formed address: 64 lowercase hex characters."""
    return is_hex64(value)  # the hex of a 32-byte public key


def verify(address: str, message: bytes, signature: bytes) -> bool:
    """Check ``signature`` over ``message`` by the key behind ``address``; never raises."""
    if not is_address(address) or len(signature) != 64:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(address)).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True
