"""Wallet key files for nodes, miners and validators (SPEC N1, N4; issue #8).

A wallet file holds the 32-byte ed25519 private key as hex, nothing else. It is created
with mode 0600 and a file that group or others can read is refused rather than used: a
leaked validator key lets anyone sign conflicting blocks in its name (equivocation), so a
loose permission is an error the operator must fix, not a warning.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.keys import Wallet


class WalletFileError(ValueError):
    """The wallet file is unreadable, malformed or too widely readable."""


def load_or_create(path: str | Path) -> Wallet:
    """Load the wallet at ``path``, or create a fresh one there (mode 0600) if absent."""
    path = Path(path)
    if not path.exists():
        wallet = Wallet.generate()
        save(wallet, path)
        return wallet
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise WalletFileError(
            f"wallet file {path} has mode {mode:04o}; it must not be group/world accessible "
            f"(chmod 600 {path})")
    text = path.read_text().strip()
    try:
        raw = bytes.fromhex(text)
    except ValueError as e:
        raise WalletFileError(f"wallet file {path} is not hex") from e
    if len(raw) != 32:
        raise WalletFileError(f"wallet file {path} must hold a 32-byte ed25519 seed")
    return Wallet(Ed25519PrivateKey.from_private_bytes(raw))


def save(wallet: Wallet, path: str | Path) -> None:
    """Write ``wallet`` to a new file at ``path`` with mode 0600 (refuses to overwrite)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL: never overwrite a key another process created meanwhile.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(wallet.private_bytes().hex() + "\n")


__all__ = ["WalletFileError", "load_or_create", "save"]
