"""Client SDK: private generation through a miner (SPEC R1–R3).

    with MinerClient("127.0.0.1:50051") as c:
        out = c.generate(c.tokenizer("def f(").input_ids, max_new_tokens=8)
        print(c.tokenizer.decode(out.ids))

The client holds the secret key and does everything that needs plaintext: tokenizing,
embedding, quantizing, encrypting, decrypting and — in the hybrid partition — the norms,
attention, softmax and GELU between the miner's linears, with its own K/V cache
(``cerberus.light_client``). The miner sees only ciphertexts.

What the client needs — the artefact's client half: embeddings, norms, head, scales,
tokenizer, FHE client specs; no miner weight — it fetches from the miner once and checks
against the artefact's sha256 (the miner half's files as digests only), so the address is
enough; pass ``artefact=`` to use a local copy instead, and ``expected_sha256=`` (a
Brain's registered task, SPEC L6) to refuse any other model. Every call carries the
protocol version; a miner of another version is refused with both versions named.

Keys: the first run draws a secret seed from the OS, stores it (mode 0600) under the cache
folder and generates keys; later runs reload them. The evaluation keys are uploaded once;
if the miner evicted them (NOT_FOUND) the client uploads again and retries. UNAVAILABLE
and RESOURCE_EXHAUSTED (a busy miner) are retried with exponential backoff.

``on_call(program, rows, decrypted)`` (optional) sees every program call's plaintext input
rows and the decrypted reply — the accumulators of a linear — as the client uses them. A
validator checks each against the simulator (``network.validator``, SPEC N2): a miner's
whole work, not only the tokens it leads to.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import secrets
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
import torch

from cerberus.artefact import FORMAT_VERSION, HASH_FILE, ClientHalf, is_miner_file, load_client
from cerberus.errors import CerberusError
from cerberus.frontends.canonical import KVCache
from cerberus.hashing import digest_of_files, file_sha256
from cerberus.light_client import LightClient, Session
from cerberus.paths import CACHE_DIR, private_dir
from runtime.protos import miner_pb2 as pb
from runtime.protos import miner_pb2_grpc as pb_grpc
from runtime.server import CHUNK, PROTOCOL, PROTOCOL_HEADER, key_id

log = logging.getLogger("runtime.client")
DEFAULT_CACHE = CACHE_DIR
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)
T = TypeVar("T")


class MinerError(CerberusError):
    """A miner call failed for good (after retries); ``code`` is the gRPC status."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


class _KeysLost(Exception):
    """The miner no longer has our keys (evicted or restarted): upload and retry."""


@dataclass
class Step:
    """What one token (or one whole-sequence call) cost: miner time, bytes, round trips."""

    server_ms: float = 0.0
    bytes_sent: int = 0
    bytes_received: int = 0
    round_trips: int = 0
    # per program, one entry per round trip: (rows, miner ms, client wall ms of the round
    # trip: send to reply, encryption and decryption not included) — the bench's
    # per-linear and per-layer latency
    programs: dict[str, list[tuple[int, float, float]]] = field(default_factory=dict)

    def reset(self) -> None:  # a retried stream counts only its last attempt
        self.server_ms, self.bytes_sent, self.bytes_received, self.round_trips = 0.0, 0, 0, 0
        self.programs = {}


@dataclass
class Generation:
    """What ``generate`` returns: the new tokens and, per token, what each cost (the
    first token's step includes the prefill)."""

    ids: list[int]
    token_seconds: list[float] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)

    def add(self, token: int, seconds: float, step: Step) -> None:
        self.ids.append(token)
        self.token_seconds.append(seconds)
        self.steps.append(step)

    @property
    def server_ms(self) -> float:
        return sum(s.server_ms for s in self.steps)

    @property
    def bytes_sent(self) -> int:
        return sum(s.bytes_sent for s in self.steps)

    @property
    def bytes_received(self) -> int:
        return sum(s.bytes_received for s in self.steps)

    @property
    def round_trips(self) -> int:
        return sum(s.round_trips for s in self.steps)


def sample(logits: np.ndarray, temperature: float, top_k: int, rng: np.random.Generator) -> int:
    """Greedy when ``temperature`` is 0, else softmax sampling over the ``top_k`` best."""
    if temperature <= 0:
        return int(np.argmax(logits))
    z = np.asarray(logits, dtype=np.float64) / temperature
    if 0 < top_k < z.size:
        z[z < np.partition(z, -top_k)[-top_k]] = -np.inf
    p = np.exp(z - z.max())
    return int(rng.choice(z.size, p=p / p.sum()))


class _Stream:
    """One ``Generate`` call: send a step, wait for its result, in order."""

    def __init__(self, stub: pb_grpc.MinerStub, metadata: tuple, timeout: float) -> None:
        self._requests: queue.Queue[pb.InferRequest | None] = queue.Queue()
        self._replies: Iterator[pb.InferReply] = stub.Generate(
            iter(self._requests.get, None), metadata=metadata, timeout=timeout)

    def step(self, request: pb.InferRequest) -> pb.InferReply:
        self._requests.put(request)
        return next(self._replies)

    def close(self) -> None:
        """Half-close and wait for the call to end; a failure was already raised by step."""
        self._requests.put(None)
        try:
            for _ in self._replies:
                pass
        except grpc.RpcError:
            pass


class MinerClient:
    """A connection to one miner, with the keys and client half of its artefact."""

    def __init__(self, address: str, *, artefact: Path | None = None,
                 expected_sha256: str | None = None, cache_dir: Path = DEFAULT_CACHE,
                 seed: int | None = None, timeout: float = 600.0, retries: int = 4,
                 backoff: float = 0.25,
                 on_call: Callable[[str, np.ndarray, np.ndarray], None] | None = None
                 ) -> None:
        self.address = address
        self.on_call = on_call
        self.cache_dir = Path(cache_dir)
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._local = Path(artefact) if artefact is not None else None
        self._expected = expected_sha256
        self._seed = seed
        self._info: pb.InfoReply | None = None
        self._artefact: ClientHalf | None = None
        self._light: LightClient | None = None
        self._fhe: Any = None  # cerberus.fhe.backends.ClientPrograms once keys exist
        self._key_id: str | None = None
        self._uploaded = False
        self._stream: _Stream | None = None  # the token's Generate call, while it runs
        self._stats: Step | None = None
        self.channel = grpc.insecure_channel(address, options=[
            ("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)])
        self.stub = pb_grpc.MinerStub(self.channel)

    def __enter__(self) -> MinerClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    # -- calls with retries ----------------------------------------------------------
    def _call(self, what: str, fn: Callable[[tuple], T]) -> T:
        """Run ``fn(metadata)`` (one RPC, or a whole token's stream); retry UNAVAILABLE /
        busy with backoff, turn lost keys into ``_KeysLost``, anything else MinerError."""
        delay = self.backoff
        for attempt in range(self.retries + 1):
            metadata = (("x-request-id", uuid.uuid4().hex[:16]),
                        (PROTOCOL_HEADER, str(PROTOCOL)))
            try:
                return fn(metadata)
            except grpc.RpcError as e:
                code, details = e.code(), e.details()
                if code == grpc.StatusCode.NOT_FOUND and "key id" in (details or ""):
                    raise _KeysLost() from e
                busy = code in RETRYABLE and "larger than" not in (details or "")
                if busy and attempt < self.retries:
                    log.warning("%s: %s (%s); retry %d/%d in %.2f s", what, code.name, details,
                                attempt + 1, self.retries, delay)
                    time.sleep(delay * (1 + 0.25 * random.random()))
                    delay *= 2
                    continue
                raise MinerError(f"{what} at {self.address} failed: {code.name}: {details}",
                                 code) from e
        raise AssertionError("unreachable")

    def info(self) -> pb.InfoReply:
        if self._info is None:
            info = self._call("Info", lambda md: self.stub.Info(
                pb.InfoRequest(), metadata=md, timeout=min(self.timeout, 30)))
            if info.protocol != PROTOCOL or info.format != FORMAT_VERSION:
                raise MinerError(f"miner {self.address} speaks protocol {info.protocol} with "
                                 f"artefact format {info.format}; this client speaks protocol "
                                 f"{PROTOCOL}, format {FORMAT_VERSION}: use the same Cerberus "
                                 f"version (the miner runs {info.version or 'unknown'})")
            self._info = info
            if self._expected and self._info.artefact_sha256 != self._expected:
                raise MinerError(f"miner {self.address} serves artefact "
                                 f"{self._info.artefact_sha256[:16]}, not the expected "
                                 f"{self._expected[:16]}")
        return self._info

    def health(self) -> pb.HealthReply:
        return self._call("Health", lambda md: self.stub.Health(
            pb.HealthRequest(), metadata=md, timeout=min(self.timeout, 30)))

    def metrics(self) -> str:
        return self._call("Metrics", lambda md: self.stub.Metrics(
            pb.MetricsRequest(), metadata=md, timeout=min(self.timeout, 30))).text

    # -- the artefact's client half ----------------------------------------------------
    @property
    def artefact(self) -> ClientHalf:
        """The client half: a local artefact (checked whole) or fetched from the miner."""
        if self._artefact is None:
            sha = self.info().artefact_sha256
            if self._local is not None:
                half = load_client(self._local)
                if half.sha256 != sha:
                    raise MinerError(f"{self._local} is artefact {half.sha256[:16]} but miner "
                                     f"{self.address} serves {sha[:16]}")
            else:
                half = load_client(self._fetch(sha), sha256=sha)
            self._artefact = half
        return self._artefact

    @property
    def tokenizer(self) -> Any:
        return self.artefact.tokenizer

    def _fetch(self, sha: str) -> Path:
        """Download the client half into the cache once; every file checked against ``sha``."""
        dest = self.cache_dir / "artefacts" / sha
        if dest.is_dir():
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{sha[:16]}.", dir=dest.parent))
        try:
            digests = self._download(tmp)
            offered = sorted(r for r in digests if is_miner_file(r) and (tmp / r).exists())
            if offered:  # a client has no use for them and must not hold them
                raise MinerError(f"miner {self.address} sent files of its miner half "
                                 f"({', '.join(offered[:3])}); a client takes the client half")
            for rel, digest in digests.items():
                local = tmp / rel
                if local.exists() and file_sha256(local) != digest:
                    raise MinerError(f"miner sent {rel} with the wrong content")
            if digest_of_files(digests, exclude={HASH_FILE}) != sha:
                raise MinerError(f"miner {self.address}'s files do not hash to its artefact "
                                 f"{sha[:16]}")
            try:
                tmp.rename(dest)
            except OSError:  # another process fetched it meanwhile
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("fetched the client half of artefact %s into %s", sha[:16], dest)
        return dest

    def _download(self, into: Path) -> dict[str, str]:
        def run(md: tuple) -> dict[str, str]:
            digests: dict[str, str] = {}
            handle = None
            for chunk in self.stub.FetchClient(pb.FetchClientRequest(), metadata=md,
                                               timeout=self.timeout):
                if chunk.sha256:  # a new file starts
                    if chunk.path in digests or ".." in Path(chunk.path).parts \
                            or Path(chunk.path).is_absolute():
                        raise MinerError(f"miner sent a bad file path {chunk.path!r}")
                    digests[chunk.path] = chunk.sha256
                    if handle is not None:
                        handle.close()
                        handle = None
                    if chunk.skipped:
                        continue
                    (into / chunk.path).parent.mkdir(parents=True, exist_ok=True)
                    handle = open(into / chunk.path, "wb")  # noqa: SIM115
                if handle is not None:
                    handle.write(chunk.data)
            if handle is not None:
                handle.close()
            return digests
        return self._call("FetchClient", run)

    # -- keys --------------------------------------------------------------------------
    def keygen(self) -> str:
        """Create (or reload) this client's keys; returns the key id."""
        if self._fhe is None:
            from cerberus.fhe.backends import ClientPrograms

            sha = self.info().artefact_sha256
            seed = self._seed if self._seed is not None else self._stored_seed(sha)
            # key files are named by program and seed, so one folder serves all
            self._fhe = ClientPrograms(self.artefact.path, self.artefact.manifest,
                                       key_cache=self.cache_dir / "keys" / sha[:32])
            t0 = time.perf_counter()
            self._fhe.keygen(seed)
            log.info("keys ready in %.2f s (%d bytes of evaluation keys)",
                     time.perf_counter() - t0, self._fhe.key_bytes())
            self._key_id = key_id(sha, self._fhe.evaluation_keys())
        assert self._key_id is not None
        return self._key_id

    def key_bytes(self) -> int:
        """Size of the evaluation keys this client uploads (what the miner must hold)."""
        self.keygen()
        return int(self._fhe.key_bytes())

    def _stored_seed(self, sha: str) -> int:
        """This machine's secret seed for an artefact: drawn once, kept private (0600)."""
        path = self.cache_dir / "keys" / sha[:32] / "secret-seed"
        private_dir(path.parent, under=self.cache_dir)
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(str(secrets.randbits(127)))
        return int(path.read_text())

    def upload_keys(self) -> str:
        """Stream the evaluation keys to the miner; returns the key id it confirmed."""
        kid = self.keygen()
        sha = self.info().artefact_sha256

        def chunks() -> Iterator[pb.KeyChunk]:
            for name, data in sorted(self._fhe.evaluation_keys().items()):
                for i in range(0, max(len(data), 1), CHUNK):
                    yield pb.KeyChunk(artefact_sha256=sha, program=name,
                                      data=data[i:i + CHUNK])

        reply = self._call("UploadKeys", lambda md: self.stub.UploadKeys(
            chunks(), metadata=md, timeout=self.timeout))
        if reply.key_id != kid:
            raise MinerError(f"miner {self.address} computed key id {reply.key_id[:16]}, "
                             f"expected {kid[:16]}")
        log.info("uploaded %d bytes of evaluation keys (key id %s)", reply.bytes, kid[:16])
        self._uploaded = True
        return kid

    def _with_keys(self, fn: Callable[[], T]) -> T:
        """Run ``fn``; if the miner lost our keys, upload them and run it once more."""
        try:
            return fn()
        except _KeysLost:
            log.info("miner %s does not hold our keys; uploading", self.address)
            self.upload_keys()
            try:
                return fn()
            except _KeysLost as e:
                raise MinerError(f"miner {self.address} lost our keys again right after "
                                 "upload (is its key cache too small?)",
                                 grpc.StatusCode.NOT_FOUND) from e

    # -- encrypted computation ---------------------------------------------------------
    @property
    def light(self) -> LightClient:
        """The client's side of the split, built once, with this miner computing the rest."""
        if self._light is None:
            self._light = self.artefact.light_client(self._miner)
        return self._light

    def _miner(self, program: str, xs: np.ndarray) -> np.ndarray:
        """One program on the rows ``xs`` through the open stream: encrypt, one round trip
        per ``max_rows`` rows, decrypt."""
        stream, stats = self._stream, self._stats
        if stream is None or stats is None:
            raise AssertionError("miner programs run only inside a stream (_streamed)")
        kid = self.keygen()
        limit = self._max_rows().get(program)
        if limit is None:
            raise MinerError(f"miner {self.address} has no program {program!r}")
        out: list[np.ndarray] = []
        for i in range(0, len(xs), limit):
            rows = xs[i:i + limit]
            cts = self._fhe.encrypt(program, rows)
            t0 = time.perf_counter()
            reply = stream.step(pb.InferRequest(key_id=kid, program=program, ciphertexts=cts))
            wall_ms = 1000 * (time.perf_counter() - t0)
            if len(reply.ciphertexts) != len(cts):
                raise MinerError(f"miner {self.address} answered {len(reply.ciphertexts)} "
                                 f"ciphertexts for {len(cts)}")
            stats.server_ms += reply.server_ms
            stats.bytes_sent += sum(map(len, cts))
            stats.bytes_received += sum(map(len, reply.ciphertexts))
            stats.round_trips += 1
            stats.programs.setdefault(program, []).append((len(rows), reply.server_ms, wall_ms))
            try:
                out.append(self._fhe.decrypt(program, list(reply.ciphertexts), len(rows)))
            except CerberusError as e:  # a reply of the wrong shape or parameters
                raise MinerError(f"miner {self.address} sent a bad reply for {program}: {e}") \
                    from e
            if self.on_call is not None:
                self.on_call(program, np.asarray(rows), out[-1])
        return np.concatenate(out)

    def infer(self, program: str, x: np.ndarray) -> np.ndarray:
        """One program on one encrypted input (unary ``Infer``); the decrypted result."""
        kid = self.keygen()
        cts = self._fhe.encrypt(program, np.asarray(x)[None])

        def run() -> np.ndarray:
            reply = self._call("Infer", lambda md: self.stub.Infer(
                pb.InferRequest(key_id=kid, program=program, ciphertexts=cts), metadata=md,
                timeout=self.timeout))
            if len(reply.ciphertexts) != len(cts):
                raise MinerError(f"miner {self.address} answered {len(reply.ciphertexts)} "
                                 f"ciphertexts for {len(cts)}")
            y = self._fhe.decrypt(program, list(reply.ciphertexts), 1)
            if self.on_call is not None:
                self.on_call(program, np.asarray(x)[None], y)
            return y[0]
        return self._with_keys(run)

    def _max_rows(self) -> dict[str, int]:
        return {p.name: max(1, p.max_rows) for p in self.info().programs}

    def _streamed(self, fn: Callable[[], T], stats: Step, cache: KVCache | None = None) -> T:
        """Run ``fn`` (one token's client work) with its miner calls on one ``Generate``
        stream. A broken stream (UNAVAILABLE, busy) or lost keys redo the whole token from
        the KV cache as it was before it, so a retry never appends twice."""
        self.keygen()
        saved = (list(cache.layers), cache.length) if cache is not None else None

        def run(metadata: tuple) -> T:
            if cache is not None and saved is not None:
                cache.layers, cache.length = list(saved[0]), saved[1]
            stats.reset()
            self._stream, self._stats = _Stream(self.stub, metadata, self.timeout), stats
            try:
                return fn()
            finally:
                self._stream.close()
                self._stream = self._stats = None

        return self._with_keys(lambda: self._call("Generate", run))

    def logits(self, input_ids: torch.Tensor,
               attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, Step]:
        """Logits (or an encoder's hidden states) of whole sequences, every miner step
        encrypted; no cache."""
        stats = Step()
        out = self._streamed(lambda: self.light.logits(input_ids, attention_mask), stats)
        return out, stats

    def sentence_embedding(self, input_ids: torch.Tensor,
                           attention_mask: torch.Tensor | None = None
                           ) -> tuple[torch.Tensor, Step]:
        """An encoder's pooled sentence embeddings ``[B, d]``, computed through the miner."""
        stats = Step()
        out = self._streamed(lambda: self.light.sentence_embedding(input_ids, attention_mask),
                             stats)
        return out, stats

    def generate(self, prompt_ids: list[int], max_new_tokens: int, *,
                 temperature: float = 0.0, top_k: int = 0, seed: int | None = None,
                 on_token: Callable[[int, float], None] | None = None) -> Generation:
        """Autoregressive generation under encryption; greedy unless ``temperature`` > 0.

        Hybrid partition: the prompt's rows go once (prefill), then one row per program per
        token, the client keeping the K/V cache in the clear; full partition: the window is
        recomputed per token. ``on_token(token_id, seconds)`` is called as each token
        arrives (for progress). Per-token costs are in the returned ``Generation``.
        """
        if not prompt_ids:
            raise MinerError("the prompt is empty")
        if max_new_tokens < 1:
            raise MinerError("max_new_tokens must be at least 1")
        light = self.light
        session = Session(light) if light.partition == "hybrid" else None
        if session is not None:  # before keys or a Generate call reach the miner
            session.check(len(prompt_ids), max_new_tokens - 1)
        if not self._uploaded:
            self.upload_keys()
        rng = np.random.default_rng(seed)
        out = Generation(ids=[])

        def pick(logits: torch.Tensor) -> int:
            return sample(logits.double().numpy(), temperature, top_k, rng)

        ids = list(prompt_ids)
        for step in range(max_new_tokens):
            t0 = time.perf_counter()
            stats = Step()
            if session is not None:  # prefill, then the last token only
                new = ids if step == 0 else ids[-1:]
                reserve = max_new_tokens - 1 - step
                logits = self._streamed(lambda n=new, r=reserve: session.feed(n, r), stats,
                                        session.cache)
            else:
                window, pos = light.window(ids)
                logits = self._streamed(lambda w=window: light.logits(w), stats)[0, pos]
            token = pick(logits)
            ids.append(token)
            out.add(token, time.perf_counter() - t0, stats)
            if on_token is not None:
                on_token(token, out.token_seconds[-1])
        return out
