"""The miner: serves one compiled artefact's FHE programs over gRPC (SPEC R1–R4).

A miner holds the miner half of an artefact (``miner/fhe/NAME/server.zip``) and, per
client, that client's evaluation keys; it hands clients only the client half. It receives
ciphertexts, runs them and returns ciphertexts; it has no secret key, so it never sees a
prompt, a token or an activation.

Operational shape:

* a bounded worker pool and a bounded number of concurrent RPCs: beyond it gRPC answers
  RESOURCE_EXHAUSTED at once instead of queueing without limit; and per source address
  (over all its connections) a cap on RPCs in flight and on calls per second
  (``runtime.limits``), so one address cannot hold every worker;
* evaluation keys in an LRU cache bounded in bytes (``runtime.keycache``); an upload is
  capped per program by that program's own key sizes, so a stream cannot buffer more;
* message size limits derived from the programs' ciphertext sizes, and per program a cap
  on the rows one request may carry (``max_rows``: the model's context, or fewer when
  that would make a message larger than ``MAX_MESSAGE``);
* protocol ``PROTOCOL`` checked on every call (``x-cerberus-protocol``), so a client of
  another version gets FAILED_PRECONDITION with both versions named;
* every RPC logged as one JSON line with a request id (the client's ``x-request-id`` or a
  fresh one, echoed back in trailing metadata), counted in ``Metrics``;
* SIGTERM/SIGINT drain: no new RPCs, in-flight ones finish (up to ``grace`` seconds).

Bad input never reaches concrete unchecked: unknown programs and oversized or undecodable
ciphertexts are INVALID_ARGUMENT, unknown key ids NOT_FOUND, keys for another artefact
FAILED_PRECONDITION; the server keeps serving everyone else.

``misbehave`` exists only to test validators (SPEC N2, issues #8, #15): each kind is a
way a miner could cheat, and each reply is well-formed — the right header, parameters and
sizes — so nothing at the protocol level gives it away; only a validator's check of the
decrypted accumulators against the simulator can catch it:

* ``replay``: every program answered with the first reply it computed for that program
  (old work; an lwe reply is repeated once per row asked);
* ``lazy``: all-zero weights (no work); ``random``: random weights (random answers);
* ``zero-small``: every weight with |w| ≤ 8 zeroed (~15 % of the multiply-adds skipped);
* ``other:PATH``: another artefact's weights (a squeezed model, one compiled at fewer
  bits), cut or zero-padded to this artefact's shapes, served under this artefact's hash;
* ``first-token``: honest on a connection's first ``Generate`` call (a prefill), lazy after;
* ``honest-to:IP[,IP...]``: honest to requests from those source addresses (say, the
  validators' nodes), ``zero-small`` to everyone else.

The weight-changing kinds run ``PackedLinear`` with the modified weights, so they need
packed programs (the default backend); on lwe programs only ``replay`` is offered. (A
packed reply names its rows, so one replayed to a request of another length is also
refused by the client's check.)
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import json
import logging
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from cerberus import __version__
from cerberus.artefact import (
    FORMAT_VERSION,
    HASH_FILE,
    MINER,
    check_half,
    is_miner_file,
    read_manifest,
)
from cerberus.errors import CerberusError
from cerberus.hashing import digest_of_files, folder_digests
from runtime.keycache import KeyCache, KeySet
from runtime.limits import PerAddressLimiter, peer_ip
from runtime.metrics import Metrics
from runtime.protos import miner_pb2 as pb
from runtime.protos import miner_pb2_grpc as pb_grpc

log = logging.getLogger("runtime.server")

PROTOCOL = 3  # runtime/protos/miner.proto: bump with any change a peer must know about
PROTOCOL_HEADER = "x-cerberus-protocol"
CHUNK = 1 << 20  # bytes per streamed chunk (keys, artefact files)
SLACK = 1 << 20  # headroom over a ciphertext's size for framing
MAX_MESSAGE = 256 << 20  # the largest request or reply; bounds max_rows of wide programs
# for testing validators only; see the module docstring
MISBEHAVIOURS = ("replay", "lazy", "random", "zero-small", "first-token", "honest-to", "other")
_WEIGHT_CHEATS = ("lazy", "random", "zero-small", "first-token", "honest-to", "other")
SMALL = 8  # zero-small: |w| <= SMALL is skipped


def parse_misbehave(text: str) -> tuple[str, str]:
    """``KIND`` or ``KIND:ARG`` → (kind, arg); a clear error for an unknown kind or a
    missing argument (honest-to needs addresses, other an artefact)."""
    kind, _, arg = text.partition(":")
    if kind not in MISBEHAVIOURS:
        raise CerberusError(f"unknown misbehaviour {text!r}; known: {', '.join(MISBEHAVIOURS)}"
                            " (honest-to:IP[,IP...], other:ARTEFACT)")
    if kind in ("honest-to", "other") and not arg:
        raise CerberusError(f"--misbehave {kind} needs an argument: {kind}:"
                            + ("IP[,IP...]" if kind == "honest-to" else "ARTEFACT"))
    if kind not in ("honest-to", "other") and arg:
        raise CerberusError(f"--misbehave {kind} takes no argument")
    return kind, arg


def key_id(artefact_sha256: str, keys: dict[str, bytes]) -> str:
    """The id of a key set: sha256 over the artefact and every program's key digest.

    Client and miner compute it independently, so a client knows its id before uploading.
    """
    h = hashlib.sha256(artefact_sha256.encode())
    for name in sorted(keys):
        h.update(f"\0{name}\0{hashlib.sha256(keys[name]).hexdigest()}".encode())
    return h.hexdigest()


def _client_left(context: grpc.ServicerContext, wait: float = 1.0) -> bool:
    """Whether the client went away, given up to ``wait`` seconds to tell.

    gRPC ends a cancelled client's request stream as it ends a half-closed one and marks
    the call cancelled a moment later (the two events race), so right after the stream
    ends ``is_active()`` may still be true. Used only where a half-closed stream is an
    error anyway (an incomplete key upload), so an honest client never waits on it.
    """
    deadline = time.monotonic() + wait
    while context.is_active():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)
    return True


class Abort(Exception):
    """Ends an RPC with a gRPC status and a message for the client."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def _rpc(method: Callable) -> Callable:
    """Request id, JSON log line, metrics and status mapping around one RPC handler."""
    streaming = inspect.isgeneratorfunction(method)

    def begin(self: MinerService, context: grpc.ServicerContext) -> tuple[str, float]:
        meta = dict(context.invocation_metadata() or ())
        rid = str(meta.get("x-request-id") or uuid.uuid4().hex[:16])
        context.set_trailing_metadata((("x-request-id", rid),))
        with self.lock:
            self.metrics.in_flight += 1
        return rid, time.perf_counter()

    @contextlib.contextmanager
    def admitted(self: MinerService, context: grpc.ServicerContext) -> Iterator[None]:
        """The call runs once the per-address limits admit it and the protocol matches;
        its slot is given back however it ends."""
        address = peer_ip(context.peer())
        refused = self.per_address.enter(address)
        if refused is not None:
            raise Abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"rate limited: {refused}")
        try:
            spoken = dict(context.invocation_metadata() or ()).get(PROTOCOL_HEADER)
            if spoken != str(PROTOCOL):
                raise Abort(grpc.StatusCode.FAILED_PRECONDITION,
                            f"this miner speaks protocol {PROTOCOL}; the client sent "
                            f"{spoken or 'none'}: use a client of the same Cerberus version")
            yield
        finally:
            self.per_address.leave(address)

    def end(self: MinerService, context: grpc.ServicerContext, rid: str, t0: float,
            error: BaseException | None, extra: dict[str, Any], reply: bool = True) -> None:
        code = "OK"
        if isinstance(error, Abort):
            code = error.code.name
        elif error is not None:
            code = "CANCELLED" if not context.is_active() else "INTERNAL"
        dt = time.perf_counter() - t0
        with self.lock:
            self.metrics.in_flight -= 1
        self.metrics.observe(method.__name__, code, dt)
        log.info("rpc", extra={"json": dict(
            extra, request_id=rid, method=method.__name__, peer=context.peer(), code=code,
            ms=round(1000 * dt, 2), **({"error": str(error)} if error is not None else {}))})
        if not reply:
            return
        if isinstance(error, Abort):
            context.abort(error.code, str(error))
        if error is not None and code == "INTERNAL":
            context.abort(grpc.StatusCode.INTERNAL, f"internal error (request {rid})")

    if streaming:
        @functools.wraps(method)
        def stream_wrapper(self: MinerService, request: Any, context: grpc.ServicerContext):
            rid, t0 = begin(self, context)
            extra: dict[str, Any] = {}
            error = None
            try:
                with admitted(self, context):
                    yield from method(self, request, context, extra)
            except GeneratorExit:  # the client went away mid-stream: count it, then close
                end(self, context, rid, t0, Abort(grpc.StatusCode.CANCELLED, "client left"),
                    extra, reply=False)
                raise
            except Exception as e:  # noqa: BLE001 - mapped to a status in end()
                error = e
            end(self, context, rid, t0, error, extra)
        return stream_wrapper

    @functools.wraps(method)
    def wrapper(self: MinerService, request: Any, context: grpc.ServicerContext):
        rid, t0 = begin(self, context)
        extra: dict[str, Any] = {}
        error = result = None
        try:
            with admitted(self, context):
                result = method(self, request, context, extra)
        except Exception as e:  # noqa: BLE001 - mapped to a status in end()
            error = e
        end(self, context, rid, t0, error, extra)
        return result
    return wrapper


class MinerService(pb_grpc.MinerServicer):
    """The RPC handlers over one artefact's FHE programs and a key cache."""

    def __init__(self, artefact: Path, *, key_cache_bytes: int = 4 << 30,
                 record: Path | None = None, misbehave: str | None = None,
                 per_address: PerAddressLimiter | None = None) -> None:
        from cerberus.fhe.backends import MinerPrograms

        self.misbehave, self._misbehave_arg = (parse_misbehave(misbehave)
                                               if misbehave is not None else (None, ""))
        self._honest_to = {a.strip() for a in self._misbehave_arg.split(",") if a.strip()} \
            if self.misbehave == "honest-to" else set()
        self._peers_seen: set[str] = set()  # first-token: connections that had a Generate
        self._replies: dict[str, list[bytes]] = {}  # misbehave="replay": program → 1st reply
        self.path = Path(artefact)
        self.manifest = read_manifest(self.path)  # a clear error for a non- or old artefact
        check_half(self.path, self.manifest, MINER)  # … and one without the miner half
        recorded = (self.path / HASH_FILE).read_text().strip()
        # every file's digest, once: it checks the artefact here and FetchClient sends it
        self.digests = dict(sorted(folder_digests(self.path).items()))
        if digest_of_files(self.digests, exclude={HASH_FILE}) != recorded:
            raise CerberusError(f"artefact {self.path} is corrupted: its files do not match "
                                f"its sha256 {recorded}")
        self.sha256 = recorded
        self.manifest_json = (self.path / "manifest.json").read_text()
        if not self.manifest.get("fhe"):
            raise CerberusError(f"{self.path} has no FHE programs: compile it with --fhe")
        self.fhe = MinerPrograms(self.path, self.manifest)
        self._cheat = self._cheat_programs() if self.misbehave in _WEIGHT_CHEATS else {}
        # the hybrid partition sends a prefill's rows at once; the full one a window a call
        context = int(self.manifest["model_config"]["n_positions"])
        rows = context if self.manifest["partition"]["mode"] == "hybrid" else 1
        self.max_rows = {n: self._rows_that_fit(n, rows) for n in self.fhe.names}
        # per program: (messages per request, bytes per input message, per reply message)
        self.limits = {n: self.fhe.limits(n, self.max_rows[n]) for n in self.fhe.names}
        self.max_message_bytes = max(msgs * (max(i, o) + SLACK)
                                     for msgs, i, o in self.limits.values()) + SLACK
        self.cache = KeyCache(key_cache_bytes)
        # one address cannot hold every worker by opening more connections (issue #15)
        self.per_address = per_address if per_address is not None else PerAddressLimiter()
        self.metrics = Metrics()
        self.lock = threading.Lock()
        self.draining = False
        self._record = open(record, "ab") if record is not None else None  # noqa: SIM115

    # -- helpers ---------------------------------------------------------------------
    def _cheat_programs(self) -> dict[str, Any]:
        """Misbehaviour only: per program, a ``PackedLinear`` over modified weights with
        this artefact's parameters, so its replies are well-formed but wrong."""
        import numpy as np

        from cerberus.fhe.packed import PackedLinear
        from cerberus.ir import IntGraph

        lwe = sorted(n for n, b in self.fhe.backend.items() if b != "packed")
        if lwe:
            raise CerberusError(f"--misbehave {self.misbehave} changes weights, which needs "
                                f"packed programs; {', '.join(lwe[:3])} are lwe")
        rng = np.random.default_rng(0)
        out = {}
        for name, lin in self.fhe.packed.items():
            w, top = lin.w, (1 << (lin.params.weight_bits - 1)) - 1
            if self.misbehave in ("lazy", "first-token"):
                bad = np.zeros_like(w)
            elif self.misbehave == "random":
                bad = rng.integers(-top, top + 1, size=w.shape)
            elif self.misbehave in ("zero-small", "honest-to"):
                bad = np.where(np.abs(w) <= SMALL, 0, w)
            else:  # other: that artefact's weights, fitted to this one's shapes
                folder = Path(self._misbehave_arg) / "miner" / "programs" / name
                bad = np.zeros_like(w)
                if folder.is_dir():
                    theirs = IntGraph.load(folder)["linear"].attrs["weight"]
                    r, c = min(w.shape[0], theirs.shape[0]), min(w.shape[1], theirs.shape[1])
                    bad[:r, :c] = np.clip(theirs[:r, :c], -top, top)
            out[name] = PackedLinear(np.asarray(bad, dtype=w.dtype), lin.params)
        return out

    def _cheats(self, peer: str, first_call: bool) -> bool:
        """Whether this request gets the misbehaviour's wrong answer."""
        if self.misbehave == "honest-to":
            return peer_ip(peer) not in self._honest_to
        if self.misbehave == "first-token":
            return not first_call
        return self.misbehave in _WEIGHT_CHEATS

    def _rows_that_fit(self, name: str, rows: int) -> int:
        """The most rows (≤ ``rows``) one request of program ``name`` may carry without a
        message larger than ``MAX_MESSAGE``."""
        lo, hi = 1, rows
        while lo < hi:  # the largest r with a request under the cap (sizes grow with r)
            mid = (lo + hi + 1) // 2
            msgs, size_in, size_out = self.fhe.limits(name, mid)
            if msgs * (max(size_in, size_out) + SLACK) <= MAX_MESSAGE:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def _recv(self, data: bytes) -> None:
        """Test/audit hook: append every byte a client sent to the record file."""
        if self._record is not None:
            with self.lock:
                self._record.write(data)
                self._record.flush()

    def _run(self, request: pb.InferRequest, cheat: bool = False) -> pb.InferReply:
        for ct in request.ciphertexts:
            self._recv(ct)
        program = request.program
        if program not in self.limits:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT,
                        f"unknown program {program!r}; this artefact has "
                        f"{', '.join(self.fhe.names)}")
        msgs, size_in, _ = self.limits[program]
        if not 1 <= len(request.ciphertexts) <= msgs:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT,
                        f"{len(request.ciphertexts)} ciphertexts for program {program}: "
                        f"send 1 to {msgs} per request")
        big = max(len(ct) for ct in request.ciphertexts)
        if big > size_in + SLACK:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT,
                        f"ciphertext of {big} bytes is larger than program {program}'s input "
                        f"({size_in + SLACK} bytes at most)")
        try:
            rows = self.fhe.rows(program, list(request.ciphertexts))
        except CerberusError as e:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad ciphertext: {e}") from e
        if not 1 <= rows <= self.max_rows[program]:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT,
                        f"{rows} rows for program {program}: send 1 to "
                        f"{self.max_rows[program]} per request")
        keys = self.cache.get(request.key_id)
        if keys is None:
            raise Abort(grpc.StatusCode.NOT_FOUND,
                        f"unknown key id {request.key_id[:16]!r}: upload keys first "
                        "(they may have been evicted)")
        if self.misbehave == "replay":
            with self.lock:
                old = self._replies.get(program)
            if old is not None:  # lazy: the old answer, no computation
                if self.fhe.backend[program] == "lwe":  # one old row per row asked
                    old = [old[0]] * len(request.ciphertexts)
                return pb.InferReply(ciphertexts=old, server_ms=0.0)
        t0 = time.perf_counter()
        try:
            if cheat and program in self._cheat:
                out = [self._cheat[program].run(request.ciphertexts[0],
                                                keys.keys.get(program))]
            else:
                out = self.fhe.run(program, list(request.ciphertexts), keys.keys)
        except CerberusError as e:  # packed: checked header, parameters, sizes
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad ciphertext: {e}") from e
        except RuntimeError as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            if "incompatible raw info" in str(e):
                first = "ciphertext shape or parameters do not match program " + program
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad ciphertext: {first}") from e
        if self.misbehave == "replay":
            with self.lock:
                self._replies.setdefault(program, out)
        return pb.InferReply(ciphertexts=out, server_ms=1000 * (time.perf_counter() - t0))

    # -- RPCs ------------------------------------------------------------------------
    @_rpc
    def Info(self, request: pb.InfoRequest, context: grpc.ServicerContext,  # noqa: N802
             extra: dict) -> pb.InfoReply:
        programs = []
        for n in self.fhe.names:
            _, size_in, size_out = self.fhe.limits(n, 1)
            programs.append(pb.Program(name=n, input_bytes=size_in, output_bytes=size_out,
                                       max_rows=self.max_rows[n], backend=self.fhe.backend[n]))
        return pb.InfoReply(artefact_sha256=self.sha256, manifest_json=self.manifest_json,
                            programs=programs, max_message_bytes=self.max_message_bytes,
                            partition=self.manifest["partition"]["mode"],
                            version=__version__, protocol=PROTOCOL, format=FORMAT_VERSION)

    @_rpc
    def FetchClient(self, request: pb.FetchClientRequest,  # noqa: N802
                    context: grpc.ServicerContext, extra: dict) -> Iterator[pb.FileChunk]:
        for rel, digest in self.digests.items():
            if is_miner_file(rel):  # the miner half stays here: its digest only
                yield pb.FileChunk(path=rel, sha256=digest, skipped=True)
                continue
            with open(self.path / rel, "rb") as f:
                data = f.read(CHUNK)
                yield pb.FileChunk(path=rel, sha256=digest, data=data)
                while data := f.read(CHUNK):
                    yield pb.FileChunk(path=rel, data=data)
        extra["files"] = len(self.digests)

    @_rpc
    def UploadKeys(self, request_iterator: Iterator[pb.KeyChunk],  # noqa: N802
                   context: grpc.ServicerContext, extra: dict) -> pb.KeyId:
        from concrete import fhe

        from cerberus.fhe.program import check_framing

        parts: dict[str, bytearray] = {}
        total = 0
        for chunk in request_iterator:  # a client that dies mid-stream raises here
            if chunk.artefact_sha256 != self.sha256:
                raise Abort(grpc.StatusCode.FAILED_PRECONDITION,
                            f"keys were generated for artefact {chunk.artefact_sha256[:16]!r}; "
                            f"this miner serves {self.sha256[:16]}")
            if chunk.program not in self.fhe.needs_keys():
                raise Abort(grpc.StatusCode.FAILED_PRECONDITION,
                            f"keys for program {chunk.program!r}, which this artefact does not "
                            "have: they belong to another circuit")
            total += len(chunk.data)
            if total > self.cache.limit_bytes:
                raise Abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"keys exceed this miner's key cache ({self.cache.limit_bytes} B)")
            part = parts.setdefault(chunk.program, bytearray())
            if len(part) + len(chunk.data) > self.fhe.key_bytes(chunk.program):
                raise Abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"keys for program {chunk.program} exceed its "
                            f"{self.fhe.key_bytes(chunk.program)} B")
            part.extend(chunk.data)
            self._recv(chunk.data)
        missing = sorted(set(self.fhe.needs_keys()) - set(parts))
        # the client went away: keep nothing (an incomplete upload may be one whose
        # cancellation gRPC has not marked yet: it gets a moment to settle)
        if not context.is_active() or (missing and _client_left(context)):
            raise Abort(grpc.StatusCode.CANCELLED, "upload cancelled by the client")
        if missing:
            raise Abort(grpc.StatusCode.FAILED_PRECONDITION,
                        f"no keys for program(s) {', '.join(missing)}")
        raw = {n: bytes(b) for n, b in parts.items()}
        keys = {}
        for name, data in raw.items():
            if self.fhe.backend[name] == "packed":  # Galois keys, parsed and checked once
                try:
                    keys[name] = self.fhe.load_keys(name, data)
                except CerberusError as e:
                    raise Abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"evaluation keys for {name}: {e}") from e
                continue
            try:
                check_framing(data, f"evaluation keys for {name}")
            except CerberusError as e:
                raise Abort(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from e
            try:
                keys[name] = fhe.EvaluationKeys.deserialize(data)
            except RuntimeError as e:
                raise Abort(grpc.StatusCode.INVALID_ARGUMENT,
                            f"evaluation keys for {name} do not decode "
                            f"({str(e).splitlines()[0][:120]})") from e
        kid = key_id(self.sha256, raw)
        # what the keys hold in memory: loaded Galois keys are SEAL's full key-switching
        # keys, about twice their seeded upload (bounded by key_bytes); concrete's as sent
        held = sum(self.fhe.key_bytes(n) if self.fhe.backend[n] == "packed" else len(d)
                   for n, d in raw.items())
        if held > self.cache.limit_bytes:
            raise Abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"keys need {held} B in memory, over this miner's key cache "
                        f"({self.cache.limit_bytes} B)")
        self.cache.put(KeySet(kid, keys, held))
        extra.update(key_id=kid[:16], bytes=total)
        return pb.KeyId(key_id=kid, bytes=total)

    @_rpc
    def Infer(self, request: pb.InferRequest, context: grpc.ServicerContext,  # noqa: N802
              extra: dict) -> pb.InferReply:
        extra.update(program=request.program, rows=len(request.ciphertexts),
                     bytes_in=sum(len(c) for c in request.ciphertexts))
        return self._run(request, self.misbehave is not None
                         and self._cheats(context.peer(), first_call=False))

    @_rpc
    def Generate(self, request_iterator: Iterator[pb.InferRequest],  # noqa: N802
                 context: grpc.ServicerContext, extra: dict) -> Iterator[pb.InferReply]:
        steps = 0
        cheat = False
        if self.misbehave is not None:
            peer = context.peer()  # ipv4:HOST:PORT: one client connection
            with self.lock:
                first = peer not in self._peers_seen
                if len(self._peers_seen) > 65536:  # test-only, but bounded
                    self._peers_seen.clear()
                self._peers_seen.add(peer)
            cheat = self._cheats(peer, first)
        for request in request_iterator:
            reply = self._run(request, cheat)
            steps += 1
            extra["steps"] = steps
            yield reply
        if not context.is_active():  # gRPC ends the request stream quietly on cancel
            raise Abort(grpc.StatusCode.CANCELLED, "the client left mid-stream")

    @_rpc
    def Health(self, request: pb.HealthRequest, context: grpc.ServicerContext,  # noqa: N802
               extra: dict) -> pb.HealthReply:
        return pb.HealthReply(status="DRAINING" if self.draining else "SERVING",
                              artefact_sha256=self.sha256, cached_keys=len(self.cache),
                              cache_bytes=self.cache.nbytes, in_flight=self.metrics.in_flight)

    @_rpc
    def Metrics(self, request: pb.MetricsRequest, context: grpc.ServicerContext,  # noqa: N802
                extra: dict) -> pb.MetricsReply:
        return pb.MetricsReply(text=self.metrics.render({
            "cerberus_key_cache_bytes": self.cache.nbytes,
            "cerberus_key_cache_limit_bytes": self.cache.limit_bytes,
            "cerberus_key_cache_entries": len(self.cache),
            "cerberus_key_cache_evictions_total": self.cache.evictions,
            "cerberus_rate_limited_total": self.per_address.refused,
        }))

    def close(self) -> None:
        if self._record is not None:
            self._record.close()


def start(service: MinerService, host: str = "127.0.0.1", port: int = 50051, *,
          workers: int = 4, queue: int = 16) -> tuple[grpc.Server, int]:
    """Start serving; returns the server and the bound port (``port=0`` picks a free one).

    ``workers`` RPCs run at once; up to ``queue`` more wait for a worker; beyond that
    gRPC answers RESOURCE_EXHAUSTED. Messages may be as large as the largest ciphertext.
    """
    limit = service.max_message_bytes
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="miner"),
        maximum_concurrent_rpcs=workers + queue,
        options=[("grpc.max_receive_message_length", limit),
                 ("grpc.max_send_message_length", limit)],
    )
    pb_grpc.add_MinerServicer_to_server(service, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise CerberusError(f"cannot listen on {host}:{port} (address in use?)")
    server.start()
    return server, bound


class JsonFormatter(logging.Formatter):
    """One JSON object per line: what log shippers and ``jq`` expect."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {"ts": round(record.created, 3), "level": record.levelname.lower(),
               "logger": record.name, "msg": record.getMessage()}
        doc.update(getattr(record, "json", {}))
        return json.dumps(doc, default=str)


def serve_forever(service: MinerService, host: str, port: int, *, workers: int, queue: int,
                  grace: float = 30.0, on_ready: Callable[[int], None] | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then drain: in-flight RPCs get ``grace`` seconds."""
    server, bound = start(service, host, port, workers=workers, queue=queue)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    log.info("serving", extra={"json": {"event": "serving", "address": f"{host}:{bound}",
                                         "artefact": service.sha256,
                                         "programs": len(service.fhe.names),
                                         "max_message_bytes": service.max_message_bytes}})
    if on_ready is not None:
        on_ready(bound)
    while not stop.wait(0.5):
        pass
    service.draining = True
    log.info("draining", extra={"json": {"event": "draining", "grace_s": grace,
                                          "in_flight": service.metrics.in_flight}})
    server.stop(grace).wait()
    log.info("stopped", extra={"json": {"event": "stopped"}})
    service.close()
