"""Ed25519 keys and addresses (SPEC L2).

An address is the lowercase hex of the 32-byte raw public key, so a verifier needs nothing
but the address to check a signature: no key registry has to live in the state.

A node meets each tx's signature three or four times (submission or gossip, mempool
admission, the proposal's dry run, applying the final block); at ~0.1–0.2 ms per ed25519
check that was most of a node's time per tx (issue #16). ``SigCache`` remembers the
(address, message, signature) triples one owner has already found good, bounded, so each
is checked once; ``with cache.active():`` makes every ``verify`` in that thread consult it.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

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


def ed25519_verify(address: str, message: bytes, signature: bytes) -> bool:
    """The ed25519 check itself, uncached; never raises."""
    if not is_address(address) or len(signature) != 64:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(address)).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


SIG_CACHE_SIZE = 65_536  # about a minute of txs at 1,000 tx/s; ~10 MB


class SigCache:
    """Signatures one owner (a node's chain) has already found good: each (address,
    message, signature) is checked by ed25519 once while it stays among the ``capacity``
    most recently used. Only good results are kept (a forged signature cannot enter, so a
    flood of bad ones never evicts good ones by being cached, only costs its checks), and
    the key binds all three fields, so nothing but the identical bytes can hit."""

    def __init__(self, capacity: int = SIG_CACHE_SIZE) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self._good: OrderedDict[bytes, None] = OrderedDict()
        # held through the check itself: two of a node's gRPC threads meeting one tx at
        # once (the same batch from two peers) still check it once; ed25519 holds the GIL
        # anyway, so this serialises nothing that ran in parallel
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._good)

    def verify(self, address: str, message: bytes, signature: bytes) -> bool:
        """``ed25519_verify``, answered from the cache when these bytes passed before."""
        if not is_address(address) or len(signature) != 64:
            return False
        # fixed-length prefix (64 address chars, 64 signature bytes): unambiguous key
        key = hashlib.sha256(address.encode() + signature + message).digest()
        with self._lock:
            if key in self._good:
                self._good.move_to_end(key)
                return True
            if not ed25519_verify(address, message, signature):
                return False
            self._good[key] = None
            if len(self._good) > self.capacity:
                self._good.popitem(last=False)
        return True

    @contextmanager
    def active(self) -> Iterator[SigCache]:
        """Within this block, in this thread, ``verify`` goes through this cache (nested
        uses restore the outer one)."""
        token = _ACTIVE.set(self)
        try:
            yield self
        finally:
            _ACTIVE.reset(token)


_ACTIVE: ContextVar[SigCache | None] = ContextVar("cerberus_sig_cache", default=None)


def verify(address: str, message: bytes, signature: bytes) -> bool:
    """Check ``signature`` over ``message`` by the key behind ``address``; never raises.
    Inside ``SigCache.active()`` a triple that passed before is not checked again."""
    cache = _ACTIVE.get()
    if cache is not None:
        return cache.verify(address, message, signature)
    return ed25519_verify(address, message, signature)
