"""A validator's epoch: check a Brain's miners' work, set weights on chain (SPEC N2,
issues #8, #15).

FHE hides everything from the miner, which also means nobody can see whether it did the
work: a ciphertext of garbage decrypts to garbage without any error. The only check is to
be a client. So each epoch a validator, under its *own* keys, sends each miner a challenge
through the same RPCs a user's ``MinerClient`` makes, and checks **every decrypted
accumulator of every program call** (each linear of each token, prefill included) against
the simulator: ``cerberus.light_client.simulated_miner`` over the miner-half programs of
the validator's own copy of the artefact — the one whose sha256 is the Brain's task, never
anything the checked miner sends. Both backends are exact (lwe: concrete's integer
programs; packed: BFV with a plaintext modulus above every accumulator), so the check is
bit for bit: a miner that skips one multiply-add that met a non-zero input is caught. The
greedy tokens are compared with the simulator's as well.

What a miner could use to recognise a challenge, and how each is matched to user traffic
(the full list is in network/README.md, "Validators"):

* the prompt: drawn per check from the validator's private randomness (``secrets``-grade
  ``random.SystemRandom`` unless a test passes ``rng``): a passage at a random offset and
  length of a real-text corpus shipped in the repo (``network/data/challenge_corpus.txt``)
  or a random token sequence; nothing about it follows from public inputs;
* its length and the tokens asked: drawn per check (prompt 1..``MAX_PROMPT`` tokens,
  2..``tokens`` new tokens), so neither is a constant; several tokens, because "honest on
  the first token only" is a cheap cheat;
* the keys: each check uses one of a small pool of key identities (its own cache folder
  and secret seed, as ``MinerClient`` keeps them for a user), a new one replacing an old
  one now and then — returning keys and first-time keys both occur, as with users;
* the source address: with ``sources`` each check leaves through a ``network.relay.Relay``
  bound to an address drawn from that pool, not the validator node's public address;
* the time: with ``spread`` each check starts at a random moment of the first ``spread``
  seconds of the epoch, not all at its boundary.

Weights (u16 per uid, sum ≤ 65535, the ``set_weights`` tx of ``ledger/tx.py``):

* any accumulator off, wrong tokens, an error, a timeout, no endpoint → 0;
* every correct miner gets 1 (so "correct" and "weight > 0" coincide), and the remaining
  ``65535 − k`` units are split among the k correct miners in proportion to their speed
  (positions per second: prompt plus new tokens over the wall clock of the ``Generate``
  calls) by largest remainder (ties to the lower uid). Speed is rewarded smoothly rather
  than by rank, so a miner 5 % slower than the fastest earns ~5 % less, not a rank step.

Latency is the validator's own wall clock, so it includes the validator's encryption and
decryption — the same for every miner — and cannot be faked by a miner reporting its own
``server_ms``.

Miners are checked concurrently on a small thread pool; each check has its own deadline
(``timeout`` seconds, after which its channel is closed and its RPCs cancelled), so a
miner that hangs or refuses costs the epoch at most ``timeout``, never the other miners'
checks.
"""

from __future__ import annotations

import logging
import math
import random
import shutil
import threading
import time
from collections.abc import Sequence
from concurrent import futures
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from cerberus.artefact import Artefact, load_artefact
from cerberus.errors import CerberusError
from cerberus.light_client import simulated_miner
from ledger.keys import Wallet
from ledger.tx import Tx, make_tx
from network.relay import Relay
from runtime.client import DEFAULT_CACHE, MinerClient, MinerError

log = logging.getLogger("network.validator")

U16_MAX = 65535
POOL = 4  # miners checked at once: each check is CPU-heavy for the validator too
CORPUS = Path(__file__).resolve().parent / "data" / "challenge_corpus.txt"
MAX_PROMPT = 24  # challenge prompts are 1..MAX_PROMPT tokens (bounded by the context)
RANDOM_SHARE = 0.25  # the share of challenges that are random token sequences
IDENTITIES = 4  # key identities a validator rotates through
ROTATE = 0.1  # the chance, per check, that a fresh identity replaces the oldest


def load_corpus(path: Path = CORPUS) -> list[str]:
    """The shipped real-text corpus: one passage a line, ``#`` lines skipped."""
    lines = [ln.strip() for ln in Path(path).read_text().splitlines()]
    out = [ln for ln in lines if ln and not ln.startswith("#")]
    if not out:
        raise CerberusError(f"challenge corpus {path} holds no passage")
    return out


class ChainView(Protocol):
    """What a validator needs from the chain (the node implements it over its ``Chain``).

    ``miners`` maps each occupied miner uid (slot) of a Brain to the miner's address and
    its serving endpoint (``host:port``), or None when it announced none. ``submit`` hands a
    signed tx to the node and returns None when it was accepted (valid against the head;
    queued or included), else the reason it was rejected — the ``Chain.validate_tx``
    convention.
    """

    chain_id: str

    def miners(self, brain: int) -> dict[int, tuple[str, str | None]]: ...

    def nonce(self, address: str) -> int: ...

    def submit(self, tx: Tx) -> str | None: ...

    def param(self, name: str) -> int: ...  # a live chain parameter (governance, SPEC L8)


@dataclass
class Challenge:
    """One drawn challenge: the prompt's ids (and text, for logs), the tokens to ask."""

    source: str  # "corpus" | "random"
    prompt: str
    ids: list[int]
    tokens: int

    @property
    def positions(self) -> int:
        """Work units for speed: positions the miner computes (prompt + new tokens)."""
        return len(self.ids) + self.tokens


class Challenger:
    """Draws challenges from private randomness (see the module docstring).

    ``rng`` must be the validator's secret: ``random.SystemRandom()`` in production; a test
    may pass a seeded ``random.Random``. Nothing drawn depends on chain data.
    """

    def __init__(self, artefact: Artefact, corpus: Sequence[str], rng: random.Random, *,
                 tokens: int = 4, max_prompt: int = MAX_PROMPT,
                 random_share: float = RANDOM_SHARE) -> None:
        if tokens < 1:
            raise CerberusError("tokens must be at least 1")
        cfg = artefact.client.cfg
        self.rng = rng
        self.encoder = cfg.kind != "causal-lm"
        self.vocab = int(cfg.vocab_size)
        self.tokens = (0, 0) if self.encoder else (min(2, tokens), tokens)
        room = int(cfg.n_positions) - self.tokens[1]
        if room < 1:
            raise CerberusError(f"{tokens} tokens per challenge leave no room for a prompt in "
                                f"a context of {cfg.n_positions}")
        self.max_prompt = max(1, min(max_prompt, room))
        self.tokenizer = artefact.tokenizer
        self.random_share = random_share if self.tokenizer is not None else 1.0
        self.corpus = list(corpus)
        self._ids: dict[int, list[int]] = {}  # corpus line → its tokens, on first use

    def _line(self, i: int) -> list[int]:
        if i not in self._ids:
            self._ids[i] = list(self.tokenizer(self.corpus[i]).input_ids)
        return self._ids[i]

    def draw(self) -> Challenge:
        rng = self.rng
        length = rng.randint(1, self.max_prompt)
        tokens = rng.randint(*self.tokens)
        if self.corpus and rng.random() >= self.random_share:
            for _ in range(8):  # a line shorter than the length drawn: try another
                ids = self._line(rng.randrange(len(self.corpus)))
                if len(ids) >= length:
                    start = rng.randint(0, len(ids) - length)
                    ids = ids[start:start + length]
                    return Challenge("corpus", self.tokenizer.decode(ids), ids, tokens)
        ids = [rng.randrange(self.vocab) for _ in range(length)]
        text = self.tokenizer.decode(ids) if self.tokenizer is not None else str(ids)
        return Challenge("random", text, ids, tokens)


@dataclass
class MinerResult:
    """One miner's check this epoch."""

    uid: int
    address: str
    endpoint: str | None
    prompt: str
    expected: list[int]
    got: list[int] | None = None
    correct: bool = False
    latency_s: float | None = None
    error: str | None = None
    tokens: int = 0
    prompt_tokens: int = 0
    calls: int = 0  # program calls whose accumulators were checked
    source: str = ""  # corpus | random
    from_address: str | None = None  # the source address the challenge left from
    delay_s: float = 0.0  # when in the epoch the check started
    _challenge: Challenge | None = field(default=None, repr=False)


@dataclass
class EpochReport:
    """What an epoch did: per-uid results, the weights, and the tx's fate."""

    epoch: int
    brain: int
    validator: str
    results: dict[int, MinerResult] = field(default_factory=dict)
    weights: dict[int, int] = field(default_factory=dict)
    tx: Tx | None = None
    rejected: str | None = None  # why the tx was not accepted (None: accepted or not sent)
    seconds: float = 0.0

    @property
    def accepted(self) -> bool:
        return self.tx is not None and self.rejected is None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (uids become string keys), for logs, the CLI and dashboards."""
        def row(r: MinerResult) -> dict[str, Any]:
            d = asdict(r)
            d.pop("_challenge", None)
            return d

        return {
            "epoch": self.epoch, "brain": self.brain, "validator": self.validator,
            "results": {str(u): row(r) for u, r in sorted(self.results.items())},
            "weights": {str(u): w for u, w in sorted(self.weights.items())},
            "tx": self.tx.to_dict() if self.tx is not None else None,
            "accepted": self.accepted, "rejected": self.rejected,
            "seconds": round(self.seconds, 3),
        }


def speed_weights(latencies: dict[int, float | None]) -> dict[int, int]:
    """u16 weights from per-uid latencies of *correct* answers (None: wrong or missing).

    Correct uids get 1 + their largest-remainder share of ``65535 − k`` by 1/latency; the
    others 0. The sum is exactly 65535 when any uid is correct, else 0.
    """
    out = {u: 0 for u in latencies}
    good = sorted(u for u, t in latencies.items() if t is not None)
    if not good:
        return out
    if len(good) > U16_MAX:
        raise CerberusError(f"{len(good)} correct miners exceed the u16 weight budget")
    speed = {u: 1.0 / max(float(latencies[u]), 1e-6) for u in good}  # type: ignore[arg-type]
    total = sum(speed.values())
    rest = U16_MAX - len(good)
    exact = {u: rest * speed[u] / total for u in good}
    share = {u: math.floor(exact[u]) for u in good}
    left = rest - sum(share.values())
    for u in sorted(good, key=lambda u: (-(exact[u] - share[u]), u))[:left]:
        share[u] += 1
    for u in good:
        out[u] = 1 + share[u]
    return out


def check_calls(programs: dict, calls: list[tuple[str, np.ndarray, np.ndarray]]
                ) -> str | None:
    """None when every call's decrypted reply equals the simulator's output on the same
    input rows, bit for bit; else what differs first. No call at all is an error too."""
    if not calls:
        return "no program call was answered"
    sim = simulated_miner(programs)
    for i, (program, xs, got) in enumerate(calls):
        want = np.asarray(sim(program, xs))
        got = np.asarray(got)
        if got.shape != want.shape:
            return (f"call {i} ({program}): reply of shape {list(got.shape)}, the simulator "
                    f"gives {list(want.shape)}")
        if not np.array_equal(got, want):
            off = int(np.count_nonzero(got != want))
            return (f"call {i} of {len(calls)} ({program}, {len(xs)} rows): {off} of "
                    f"{want.size} accumulators differ from the simulator")
    return None


class Validator:
    """One validator of one Brain: ``run_epoch(epoch)`` checks every miner and sets weights.

    ``challenges``: the real-text corpus challenge prompts are cut from (default: the
    shipped one); ``tokens``: the most new tokens a challenge asks (2..tokens are drawn);
    ``rng``: the private randomness (default ``random.SystemRandom``); ``sources``: source
    addresses challenges leave from (empty: this host's default); ``spread``: seconds of
    the epoch over which the checks' start times are spread.
    """

    def __init__(self, wallet: Wallet, brain: int, artefact: Path, chain: ChainView,
                 challenges: Sequence[str] | None = None, tokens: int = 4,
                 timeout: float = 120, cache_dir: Path = DEFAULT_CACHE / "validator", *,
                 fee: int = 0, workers: int = POOL, rng: random.Random | None = None,
                 sources: Sequence[str] = (), spread: float = 0.0,
                 identities: int = IDENTITIES) -> None:
        if tokens < 1:
            raise CerberusError("tokens must be at least 1")
        if timeout <= 0:
            raise CerberusError("timeout must be positive")
        if spread < 0 or identities < 1:
            raise CerberusError("spread must be ≥ 0 and identities ≥ 1")
        self.wallet = wallet
        self.brain = brain
        self.artefact_path = Path(artefact)
        self.artefact: Artefact = load_artefact(self.artefact_path)  # verifies its hash
        self.chain = chain
        self.rng = rng if rng is not None else random.SystemRandom()
        corpus = load_corpus() if challenges is None else list(challenges)
        self.challenger = Challenger(self.artefact, corpus, self.rng, tokens=tokens)
        self.tokens = tokens
        self.timeout = float(timeout)
        self.cache_dir = Path(cache_dir)
        self.fee = fee
        self.workers = max(1, workers)
        self.sources = list(sources)
        self.spread = float(spread)
        self.identities = identities
        self.stop = threading.Event()  # set: pending checks start at once (shutdown)
        # Keygen writes the key cache and the secret seed; identities are drawn and
        # rotated under the same lock (one thread at a time).
        self._keygen_lock = threading.Lock()
        self._rng_lock = threading.Lock()

    @property
    def address(self) -> str:
        return self.wallet.address

    def draw(self, uid: int, address: str, endpoint: str | None) -> MinerResult:
        """A fresh challenge for one miner, with its source address and start time."""
        c = self.challenger.draw()
        r = MinerResult(uid, address, endpoint, c.prompt, [], tokens=c.tokens,
                        prompt_tokens=len(c.ids), source=c.source, _challenge=c)
        r.from_address = self.rng.choice(self.sources) if self.sources else None
        r.delay_s = self.rng.uniform(0.0, self.spread) if self.spread > 0 else 0.0
        return r

    def run_epoch(self, epoch: int) -> EpochReport:
        """Check every miner of the Brain, then sign and submit the weights."""
        t0 = time.perf_counter()
        report = EpochReport(epoch=epoch, brain=self.brain, validator=self.address)
        miners = self.chain.miners(self.brain)
        for uid, (address, endpoint) in sorted(miners.items()):
            report.results[uid] = r = self.draw(uid, address, endpoint)
            if endpoint is None:
                r.error = "no endpoint announced"
        todo = [r for r in report.results.values() if r.endpoint is not None]
        if todo:
            self._check_all(todo)
        # speed = positions per second, so a longer challenge is not a slower miner
        report.weights = speed_weights({
            u: r.latency_s / max(1, r.prompt_tokens + r.tokens)
            if r.correct and r.latency_s is not None else None
            for u, r in report.results.items()})
        if report.weights:
            uids = sorted(report.weights)
            # governance may have raised the minimum fee since this validator started
            fee = max(self.fee, self.chain.param("min_fee"))
            tx = make_tx(self.wallet, "set_weights", self.chain.nonce(self.address),
                         self.chain.chain_id, fee=fee, brain=self.brain, uids=uids,
                         weights=[report.weights[u] for u in uids])
            report.tx = tx
            report.rejected = self.chain.submit(tx)
        else:
            report.rejected = f"Brain #{self.brain} has no miners: nothing to submit"
        report.seconds = time.perf_counter() - t0
        log.info("epoch", extra={"json": {
            "event": "epoch", "epoch": epoch, "brain": self.brain,
            "correct": sum(r.correct for r in report.results.values()),
            "miners": len(report.results), "accepted": report.accepted,
            "rejected": report.rejected, "seconds": round(report.seconds, 2)}})
        return report

    # -- checking miners -----------------------------------------------------------------
    def _check_all(self, todo: list[MinerResult]) -> None:
        """Check miners concurrently; whatever has not finished in time is a timeout."""
        pool = futures.ThreadPoolExecutor(max_workers=min(self.workers, len(todo)),
                                          thread_name_prefix="validator")
        jobs = {pool.submit(self._check, r): r for r in todo}
        rounds = math.ceil(len(todo) / min(self.workers, len(todo)))
        # Each check closes its own channel at its deadline; this is the backstop for a
        # check stuck outside gRPC (it is abandoned, not waited for).
        done, late = futures.wait(jobs, timeout=self.spread + rounds * (self.timeout + 30))
        for job in late:
            r = jobs[job]
            r.correct, r.error = False, f"no answer within {self.timeout:g} s"
        pool.shutdown(wait=False, cancel_futures=True)

    def _identity(self) -> Path:
        """The key identity (cache folder: secret seed and keys) of one check.

        A pool of ``identities`` folders; with chance ``ROTATE`` (or while the pool is not
        full) a fresh one is made and the oldest beyond the pool size removed, so a miner
        sees returning keys and first-time keys, as from users."""
        root = self.cache_dir / "identities"
        with self._rng_lock:
            root.mkdir(parents=True, exist_ok=True)
            have = sorted(d for d in root.iterdir() if d.is_dir())
            if len(have) < self.identities or self.rng.random() < ROTATE:
                fresh = root / f"{time.time_ns():020d}-{self.rng.getrandbits(64):016x}"
                fresh.mkdir()
                have.append(fresh)
                for old in have[:-self.identities]:
                    shutil.rmtree(old, ignore_errors=True)
                return fresh
            return self.rng.choice(have)

    def _check(self, r: MinerResult) -> None:
        """One miner: a user's client under one of this validator's identities, every
        program call recorded and checked against the simulator; fills ``r`` in place."""
        assert r.endpoint is not None and r._challenge is not None
        if r.delay_s > 0 and self.stop.wait(r.delay_s):
            r.error = "validator stopping"
            return
        c = r._challenge
        calls: list[tuple[str, np.ndarray, np.ndarray]] = []

        def record(program: str, xs: np.ndarray, ys: np.ndarray) -> None:
            calls.append((program, np.array(xs, copy=True), np.array(ys, copy=True)))

        relay = Relay(r.endpoint, r.from_address) if r.from_address else None
        client = MinerClient(relay.address if relay is not None else r.endpoint,
                             artefact=self.artefact_path, expected_sha256=self.artefact.sha256,
                             cache_dir=self._identity(), timeout=self.timeout, retries=1,
                             backoff=0.2, on_call=record)
        expired = threading.Event()

        def expire() -> None:  # cancels the miner's in-flight RPCs
            expired.set()
            client.close()

        timer = threading.Timer(self.timeout, expire)
        timer.daemon = True
        timer.start()
        try:
            client.info()  # refuses a miner serving another artefact
            with self._keygen_lock:
                client.keygen()
            client.upload_keys()
            t0 = time.perf_counter()
            if self.challenger.encoder:
                client.sentence_embedding(torch.tensor([c.ids]))
            else:
                r.got = client.generate(c.ids, c.tokens).ids
            r.latency_s = time.perf_counter() - t0
            r.calls = len(calls)
            bad = check_calls(self.artefact.programs, calls)
            if not self.challenger.encoder:
                r.expected = self.artefact.generate(c.ids, c.tokens)
                if bad is None and r.got != r.expected:
                    bad = f"wrong tokens {r.got}, the simulator gives {r.expected}"
            r.correct, r.error = bad is None, bad
        except Exception as e:  # noqa: BLE001 - any failure of the miner scores 0
            r.correct = False
            r.error = (f"no answer within {self.timeout:g} s" if expired.is_set()
                       else str(e) if isinstance(e, MinerError) else f"{type(e).__name__}: {e}")
        finally:
            timer.cancel()
            client.close()
            if relay is not None:
                relay.close()
        log.info("checked", extra={"json": {
            "event": "checked", "uid": r.uid, "endpoint": r.endpoint, "correct": r.correct,
            "calls": r.calls, "latency_s": r.latency_s, "error": r.error}})
