"""Every miner program of an artefact behind one interface, whatever runs it (issue #14;
SPEC C6, R1–R2).

An artefact's manifest names each program's backend (``manifest["fhe"][NAME]["backend"]``):

* ``lwe``: a concrete-python program (``cerberus.fhe.program``); one ciphertext per row,
  evaluation keys uploaded once per client;
* ``packed``: a coefficient-encoded BFV linear (``cerberus.fhe.packed``); all the rows of a
  call in one message; evaluation keys only when its replies are packed (Galois keys,
  uploaded once per client like lwe's, capped by the parameters' key size). The client
  rebuilds its parameters from the manifest; the miner encodes its weights from its
  integer graph (``miner/programs/NAME``).

``ClientPrograms`` (keys, encryption, decryption) and ``MinerPrograms`` (running, size
limits) speak in *calls*: ``encrypt(name, xs)`` takes one call's rows ``xs[i]`` (each a
program input, ``[1, in]`` for a hybrid linear) and returns the messages of one request;
``decrypt`` turns the reply back into one output per row. The runtime moves the messages.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from cerberus.errors import CerberusError, CompileError
from cerberus.fhe.packed import PackedClient, PackedKeys, PackedLinear, PackedParams
from cerberus.ir import IntGraph

log = logging.getLogger("cerberus.fhe")
LWE, PACKED = "lwe", "packed"


def backends(manifest: dict) -> dict[str, str]:
    """Each FHE program's backend (artefacts without ``--fhe`` have none)."""
    programs = manifest.get("fhe") or {}
    out = {name: str(d.get("backend", LWE)) for name, d in programs.items()}
    unknown = sorted(set(out.values()) - {LWE, PACKED})
    if unknown:
        raise CompileError(f"the artefact uses FHE backend(s) {', '.join(unknown)}, which this "
                           "Cerberus does not know: use the version that compiled it")
    return out


def packed_params(manifest: dict, name: str) -> PackedParams:
    return PackedParams.from_dict(manifest["fhe"][name]["packed"])


class ClientPrograms:
    """The client's side: keys, encryption and decryption for every program."""

    def __init__(self, root: Path, manifest: dict, *, key_cache: Path | None) -> None:
        from cerberus.fhe.program import FheClient

        self.backend = backends(manifest)
        if not self.backend:
            raise CompileError(f"{root} holds no FHE programs (compile with --fhe)")
        lwe = [n for n, b in self.backend.items() if b == LWE]
        self.lwe = FheClient(root / "client" / "fhe", key_cache=key_cache) if lwe else None
        if self.lwe is not None and sorted(self.lwe.clients) != sorted(lwe):
            raise CompileError(f"{root}: the client's FHE specs ({sorted(self.lwe.clients)}) "
                               f"do not match the manifest's lwe programs ({sorted(lwe)})")
        self.packed = {n: PackedClient(packed_params(manifest, n))
                       for n, b in self.backend.items() if b == PACKED}

    @property
    def names(self) -> list[str]:
        return sorted(self.backend)

    def keygen(self, seed: int | None = None) -> None:
        """lwe: seeded (and cached) keys; packed: a fresh secret key per process — the
        miner holds nothing of it, so nothing needs to survive a restart."""
        if self.lwe is not None:
            self.lwe.keygen(seed)
        t0 = time.perf_counter()
        for client in self.packed.values():
            client.keygen()
        if self.packed:
            log.debug("packed keys for %d programs in %.2f s", len(self.packed),
                      time.perf_counter() - t0)

    def evaluation_keys(self) -> dict[str, bytes]:
        """What the miner must hold, per program that needs keys (lwe, packing)."""
        keys = {n: c.evaluation_keys() for n, c in self.packed.items() if c.params.pack}
        if self.lwe is not None:
            keys.update({n: self.lwe.evaluation_keys(n) for n in self.lwe.clients})
        return keys

    def key_bytes(self) -> int:
        packed = sum(len(c.evaluation_keys()) for c in self.packed.values() if c.params.pack)
        return packed + (self.lwe.key_bytes() if self.lwe is not None else 0)

    def encrypt(self, name: str, xs: np.ndarray) -> list[bytes]:
        """One call's rows → the ciphertexts of one request."""
        if self.backend.get(name) == PACKED:
            rows = np.asarray(xs).reshape(len(xs), -1)
            return [self.packed[name].encrypt_rows(rows)]
        if self.lwe is None or name not in self.lwe.clients:
            raise CerberusError(f"no FHE program {name!r}")
        return [self.lwe.encrypt(name, x) for x in xs]

    def decrypt(self, name: str, cts: list[bytes], rows: int) -> np.ndarray:
        """A reply → one output per row, stacked ``[rows, ...]``."""
        if self.backend.get(name) == PACKED:
            if len(cts) != 1:
                raise CerberusError(f"{name}: a packed reply is one message, got {len(cts)}")
            client = self.packed[name]
            acc = client.decrypt(cts[0], rows, client.params.n_out)
            return acc.reshape(rows, 1, -1)
        if len(cts) != rows:
            raise CerberusError(f"{name}: {len(cts)} ciphertexts for {rows} rows")
        assert self.lwe is not None
        return np.stack([self.lwe.decrypt(name, c) for c in cts])


class MinerPrograms:
    """The miner's side: every program, its message limits, and running a request."""

    def __init__(self, root: Path, manifest: dict) -> None:
        from cerberus.fhe.program import FheServer

        self.backend = backends(manifest)
        lwe = [n for n, b in self.backend.items() if b == LWE]
        self.lwe = FheServer(root / "miner" / "fhe") if lwe else None
        if self.lwe is not None and sorted(self.lwe.servers) != sorted(lwe):
            raise CompileError(f"{root}: the miner's FHE programs ({sorted(self.lwe.servers)})"
                               f" do not match the manifest's lwe programs ({sorted(lwe)})")
        t0 = time.perf_counter()
        self.packed: dict[str, PackedLinear] = {}
        for name, b in self.backend.items():
            if b != PACKED:
                continue
            folder = root / "miner" / "programs" / name
            graph = IntGraph.load(folder) if folder.is_dir() else None
            if graph is None or graph.meta.get("linear") is None:
                raise CompileError(f"{root}: packed program {name} has no integer linear in "
                                   "miner/programs/")
            w = graph["linear"].attrs["weight"]
            self.packed[name] = PackedLinear(w, packed_params(manifest, name))
        if self.packed:
            log.info("packed weights encoded for %d programs in %.1f s (%.1f MB)",
                     len(self.packed), time.perf_counter() - t0, self.memory_bytes() / 1e6)

    @property
    def names(self) -> list[str]:
        return sorted(self.backend)

    def needs_keys(self) -> list[str]:
        """Programs whose evaluation keys a client must upload."""
        lwe = list(self.lwe.servers) if self.lwe is not None else []
        return sorted(lwe + [n for n, p in self.packed.items() if p.params.pack])

    def key_bytes(self, name: str) -> int:
        """The most key bytes a client may upload for program ``name`` (0: it takes none)."""
        if name in self.packed:
            return self.packed[name].params.key_bytes()
        if self.lwe is None or name not in self.lwe.servers:
            return 0
        return self.lwe.key_bytes(name)

    def load_keys(self, name: str, data: bytes) -> PackedKeys:
        """A packed program's uploaded Galois keys, parsed and checked once, as the key
        cache holds them (lwe keys are concrete's, parsed by the runtime)."""
        if name not in self.packed:
            raise CerberusError(f"program {name} is not packed")
        return self.packed[name].load_keys(data)

    def memory_bytes(self) -> int:
        return sum(p.memory_bytes() for p in self.packed.values())

    def limits(self, name: str, rows: int) -> tuple[int, int, int]:
        """(messages per request, bytes of the largest input message, bytes of the largest
        reply message) for a request of up to ``rows`` rows."""
        if self.backend[name] == PACKED:
            p = self.packed[name].params
            return 1, p.input_bytes(rows), max(p.output_bytes(r) for r in {1, rows})
        assert self.lwe is not None
        size_in, size_out = self.lwe.ciphertext_bytes(name)
        return rows, size_in, size_out

    def rows(self, name: str, cts: list[bytes]) -> int:
        """The rows a request carries (packed: its header says; lwe: one per message)."""
        if self.backend[name] == PACKED:
            if len(cts) != 1:
                raise CerberusError(f"a packed program takes one message per request, got "
                                    f"{len(cts)}")
            return self.packed[name].rows_of(cts[0])
        return len(cts)

    def run(self, name: str, cts: list[bytes], keys: dict | None) -> list[bytes]:
        """Run one request; ``keys``: the client's evaluation keys by program (lwe)."""
        if self.backend[name] == PACKED:
            linear = self.packed[name]
            if not linear.params.pack:
                return [linear.run(cts[0])]
            if keys is None or name not in keys:
                raise CerberusError(f"no Galois keys for program {name}")
            return [linear.run(cts[0], keys[name])]
        assert self.lwe is not None
        if keys is None or name not in keys:
            raise CerberusError(f"no evaluation keys for program {name}")
        return [self.lwe.run(name, ct, keys[name]) for ct in cts]
