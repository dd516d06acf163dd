"""The one hashing scheme for files, folders and models (content addresses, SPEC C8).

A folder's digest is the sha256 over ``relative path NUL file sha256 LF`` per file,
sorted by path. Hashing each file apart from combining the digests lets a client that
holds only some files of an artefact (and the miner's word for the other digests) still
check the whole artefact's id, and lets a source model folder and an artefact be hashed
the same way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping
from pathlib import Path, PurePosixPath


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks (model weights can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def digest_of_files(digests: Mapping[str, str], exclude: Collection[str] = ()) -> str:
    """Combine per-file digests (relative POSIX path → sha256); files named in
    ``exclude`` (by base name, e.g. the file that records the digest itself) are left out."""
    h = hashlib.sha256()
    for rel in sorted(digests, key=PurePosixPath):
        if PurePosixPath(rel).name not in exclude:
            h.update(f"{rel}\0{digests[rel]}\n".encode())
    return h.hexdigest()


def folder_digests(folder: Path) -> dict[str, str]:
    """Relative POSIX path → sha256 for every file under ``folder``."""
    return {p.relative_to(folder).as_posix(): file_sha256(p)
            for p in folder.rglob("*") if p.is_file()}


def folder_sha256(folder: Path, exclude: Collection[str] = ()) -> str:
    """A folder's content address: ``digest_of_files`` over every file in it."""
    return digest_of_files(folder_digests(folder), exclude)


def arrays_sha256(arrays: Mapping[str, bytes]) -> str:
    """A model's state (name → raw bytes) hashed like a folder of one file per tensor."""
    return digest_of_files({k: hashlib.sha256(v).hexdigest() for k, v in arrays.items()})
