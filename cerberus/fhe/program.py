"""FHE programs of an artefact: compile, save, and the client/server halves (SPEC C6, R1–R2).

An artefact compiled with ``--fhe`` holds one concrete-python program per miner program
(one per fused linear in the hybrid partition, one for the blocks in the full partition),
split between the artefact's halves:

    miner/fhe/NAME/server.zip     what the miner loads and runs (``fhe.Server``)
    client/fhe/NAME/client.specs  what the client needs to generate keys and encrypt

Inputs are compressed (``compress_input_ciphertexts``: a seeded LWE ciphertext is its body
and a seed, ~25 B per value instead of ~11.5 KB) and so are evaluation keys: the client's
upload is what shrinks; outputs stay full ciphertexts.

``FheClient`` generates keys (seeded on request, cached on disk by the program's hash and
the seed so a second run skips keygen), encrypts and decrypts; ``FheServer`` runs
ciphertexts with the client's evaluation keys. Only serialized bytes cross between them,
as they will over gRPC.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import struct
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from concrete import fhe

from cerberus.errors import CerberusError, CompileError
from cerberus.fhe.concrete_backend import (
    LOOKUP_OUTPUT_LIMIT_BITS,
    compile_circuit,
    lookup_output_widths,
)
from cerberus.ir import IntGraph
from cerberus.paths import CACHE_DIR, private_dir

log = logging.getLogger("cerberus.fhe")
DEFAULT_KEY_CACHE = CACHE_DIR / "keys"
CONFIGURATION = fhe.Configuration(show_progress=False, compress_input_ciphertexts=True,
                                  compress_evaluation_keys=True)


def compile_programs(
    graphs: dict[str, IntGraph], inputsets: dict[str, Iterable[np.ndarray]]
) -> dict[str, fhe.Circuit]:
    """Compile every graph with its inputset; a graph concrete cannot fit is named."""
    out = {}
    for name, graph in graphs.items():
        t0 = time.perf_counter()
        try:
            out[name] = compile_circuit(graph, list(inputsets[name]), CONFIGURATION)
        except RuntimeError as e:  # concrete: NoParametersFound, width too large, …
            raise CompileError(f"FHE compilation of {name} failed "
                               f"({str(e).splitlines()[0]}); {_widest(graph)}") from e
        log.info("compiled FHE program %s in %.1f s: %d PBS", name, time.perf_counter() - t0,
                 out[name].statistics["programmable_bootstrap_count"])
    return out


def _widest(graph: IntGraph) -> str:
    """Why concrete found no parameters, as far as we know: the lookup whose output has to
    be widest (``lookup_output_widths``), else the widest value."""
    outs = lookup_output_widths(graph)
    if outs:
        src, (bits, where) = max(outs.items(), key=lambda kv: kv[1][0])
        if bits > LOOKUP_OUTPUT_LIMIT_BITS:
            return (f"node {src} must output {bits}-bit ciphertexts (it feeds node {where}); "
                    f"concrete finds parameters for lookup outputs up to about "
                    f"{LOOKUP_OUTPUT_LIMIT_BITS} bits: narrow what it feeds (--wide-bits, "
                    "--weight-bits, --no-per-channel)")
    widest = max(graph.nodes, key=lambda n: n.bits)
    return f"its widest value is node {widest.name} at {widest.bits} bits"


def save_programs(circuits: dict[str, fhe.Circuit], root: Path) -> dict[str, dict]:
    """Write each program's ``server.zip`` into the artefact's miner half and its
    ``client.specs`` into the client half (``root`` is the artefact folder); returns their
    statistics."""
    stats = {}
    for name, circuit in circuits.items():
        server, client = root / "miner" / "fhe" / name, root / "client" / "fhe" / name
        server.mkdir(parents=True, exist_ok=True)
        client.mkdir(parents=True, exist_ok=True)
        circuit.server.save(server / "server.zip")
        (client / "client.specs").write_bytes(circuit.client.specs.serialize())
        s = circuit.statistics
        stats[name] = {"pbs": int(s["programmable_bootstrap_count"]),
                       "complexity": float(circuit.complexity),
                       "max_bits": int(circuit.graph.maximum_integer_bit_width())}
    return stats


def program_names(folder: Path, marker: str = "server.zip") -> list[str]:
    """Programs under ``folder``: the miner looks for server.zip, a client for client.specs."""
    return sorted(d.name for d in folder.iterdir() if (d / marker).is_file())


class FheClient:
    """The client's half: keys, encryption, decryption for every program of an artefact."""

    def __init__(self, folder: Path, *, key_cache: Path | None = DEFAULT_KEY_CACHE) -> None:
        self.clients: dict[str, fhe.Client] = {}
        self._specs_sha: dict[str, str] = {}
        self.key_cache = key_cache
        for name in program_names(folder, "client.specs"):
            specs_bytes = (folder / name / "client.specs").read_bytes()
            self._specs_sha[name] = hashlib.sha256(specs_bytes).hexdigest()
            self.clients[name] = fhe.Client(fhe.ClientSpecs.deserialize(specs_bytes))
        if not self.clients:
            raise CompileError(f"{folder} holds no FHE programs (compile with --fhe)")

    def keygen(self, seed: int | None = None) -> None:
        """Generate (or load from the cache) every program's keys.

        Without a seed the secret key is drawn from the OS's randomness: concrete itself
        would use seed 0, giving every client the same secret key.
        """
        if seed is None:
            seed = secrets.randbits(127)
        seed_tag = hashlib.sha256(str(seed).encode()).hexdigest()[:16]  # names, never reveals
        for name, client in self.clients.items():
            t0 = time.perf_counter()
            path = None
            if self.key_cache is not None:
                path = self.key_cache / f"{self._specs_sha[name][:32]}-{seed_tag}.keys"
            if path is not None and path.is_file():
                client.keys.load(path)
                how = "loaded"
            else:
                client.keygen(secret_seed=seed, encryption_seed=seed)
                how = "generated"
                if path is not None:
                    _save_private(client.keys.serialize(), path)
            log.debug("keys for %s %s in %.1f s", name, how, time.perf_counter() - t0)

    def evaluation_keys(self, name: str) -> bytes:
        return self.clients[name].evaluation_keys.serialize()

    def key_bytes(self) -> int:
        """Total size of the evaluation keys the miner must hold."""
        return sum(len(self.evaluation_keys(n)) for n in self.clients)

    def encrypt(self, name: str, x: np.ndarray) -> bytes:
        return self.clients[name].encrypt(np.asarray(x, dtype=np.int64)).serialize()

    def decrypt(self, name: str, ciphertext: bytes) -> np.ndarray:
        return np.asarray(self.clients[name].decrypt(fhe.Value.deserialize(ciphertext)))


def _save_private(data: bytes, path: Path) -> None:
    """Write secret key material atomically (temp file, then rename), readable by us only.

    Our own cache instead of concrete's keyset cache: that one prints a line per program
    on every miss and keys its files by a layout we do not control.
    """
    private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


KEY_SLACK = 64 << 10  # bytes of a key set's framing and metadata beyond the keys
MAX_SEGMENTS = 512  # Cap'n Proto's own default limit on a message's segments


def check_framing(data: bytes, what: str) -> None:
    """Refuse bytes that are not exactly one Cap'n Proto message before concrete parses
    them: a segment table that claims more (or fewer) words than the bytes hold, too many
    segments, or trailing bytes. concrete's deserializer takes seconds to reject a segment
    claiming 2^28 words (found by fuzzing a miner), so a few hostile bytes could tie up a
    worker; this check is a few integer reads.

    The framing: u32 segment count − 1, one u32 size in 8-byte words per segment, padding
    to 8 bytes, then the segments."""
    if len(data) < 8:
        raise CerberusError(f"{what}: bad framing (only {len(data)} bytes)")
    count = struct.unpack_from("<I", data)[0] + 1
    if count > MAX_SEGMENTS:
        raise CerberusError(f"{what}: bad framing ({count} segments, at most {MAX_SEGMENTS})")
    head = 4 + 4 * count
    head += head % 8
    if len(data) < head:
        raise CerberusError(f"{what}: bad framing (truncated segment table)")
    words = sum(struct.unpack_from(f"<{count}I", data, 4))
    if head + 8 * words != len(data):
        raise CerberusError(f"{what}: bad framing (segments of {8 * words} bytes claimed, "
                            f"{len(data) - head} present)")


class FheServer:
    """The miner's half: runs ciphertexts; it never holds a secret key."""

    def __init__(self, folder: Path) -> None:
        self.servers = {name: fhe.Server.load(folder / name / "server.zip")
                        for name in program_names(folder)}

    def run(self, name: str, ciphertext: bytes,
            evaluation_keys: bytes | fhe.EvaluationKeys) -> bytes:
        """Run program ``name``; keys may come pre-deserialized (a miner's key cache)."""
        if name not in self.servers:
            raise KeyError(f"no FHE program {name!r}")
        if isinstance(evaluation_keys, bytes):
            check_framing(evaluation_keys, "evaluation keys")
            evaluation_keys = fhe.EvaluationKeys.deserialize(evaluation_keys)
        check_framing(ciphertext, "ciphertext")
        result = self.servers[name].run(fhe.Value.deserialize(ciphertext),
                                        evaluation_keys=evaluation_keys)
        return result.serialize()

    def key_bytes(self, name: str) -> int:
        """An upper bound of program ``name``'s serialized evaluation keys: its bootstrap
        and key-switching keys uncompressed (compression only shrinks them) plus
        ``KEY_SLACK`` for the serialization's own structure. What a miner accepts."""
        server = self.servers[name]
        return int(server.size_of_bootstrap_keys) + int(server.size_of_keyswitch_keys) \
            + KEY_SLACK

    def ciphertext_bytes(self, name: str) -> tuple[int, int]:
        """Upper bounds of one input's and one output's ciphertext size, in bytes."""
        server = self.servers[name]
        fn = server.program_info.get_circuits()[0].get_name()
        return int(server.size_of_inputs(fn)), int(server.size_of_outputs(fn))
