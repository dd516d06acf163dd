"""A validator's epoch: spot-check a Brain's miners, set weights on chain (SPEC N2, issue #8).

FHE hides everything from the miner, which also means nobody can see whether it did the
work: a ciphertext of garbage decrypts to garbage without any error. The only check is to
be a client. So each epoch a validator, under its *own* keys (its own cache folder and the
secret seed ``MinerClient`` draws once there), sends each miner a challenge prompt from a
held set, decrypts the tokens that come back and compares them bit for bit with the
bit-exact simulator (``Artefact.generate`` on the validator's local copy of the artefact).
The miner cannot tell a challenge from a paying user's query, since both are ciphertexts.

Challenge choice is deterministic so anyone can audit it, but not fixed: the prompt for
miner ``uid`` is ``sha256(chain id, brain, epoch, validator address, uid) mod len(held)``.
A miner that learned last epoch's prompt learns nothing about this one's, and two
validators pick different prompts, covering more of the held set. ``tokens`` ≥ 2 matters:
a miner replaying old work has to compute something honestly first, and the second token
of the very first query already exposes it.

Weights (u16 per uid, sum ≤ 65535, the ``set_weights`` tx of ``ledger/tx.py``):

* wrong tokens, an error, a timeout, no endpoint → 0;
* every correct miner gets 1 (so "correct" and "weight > 0" coincide), and the remaining
  ``65535 − k`` units are split among the k correct miners in proportion to 1/latency by
  largest remainder (ties to the lower uid). Speed is rewarded smoothly rather than by
  rank, so a miner 5 % slower than the fastest earns ~5 % less, not a rank step.

Latency is the validator's wall clock for the ``Generate`` calls (``tokens`` of them, after
the keys are uploaded), so it includes the validator's own encryption and decryption — the
same for every miner — and cannot be faked by a miner reporting its own ``server_ms``.

Miners are queried concurrently on a small thread pool; each has its own deadline
(``timeout`` seconds, after which its channel is closed and its RPCs cancelled), so a
miner that hangs or refuses costs the epoch at most ``timeout``, never the other miners'
checks.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from concurrent import futures
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cerberus.artefact import Artefact, load_artefact
from cerberus.errors import CerberusError
from ledger.keys import Wallet
from ledger.tx import Tx, make_tx
from runtime.client import DEFAULT_CACHE, MinerClient, MinerError

log = logging.getLogger("network.validator")

U16_MAX = 65535
POOL = 4  # miners checked at once: each check is CPU-heavy for the validator too


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
        return {
            "epoch": self.epoch, "brain": self.brain, "validator": self.validator,
            "results": {str(u): asdict(r) for u, r in sorted(self.results.items())},
            "weights": {str(u): w for u, w in sorted(self.weights.items())},
            "tx": self.tx.to_dict() if self.tx is not None else None,
            "accepted": self.accepted, "rejected": self.rejected,
            "seconds": round(self.seconds, 3),
        }


def challenge_index(chain_id: str, brain: int, epoch: int, validator: str, uid: int,
                    n: int) -> int:
    """Which of ``n`` held prompts miner ``uid`` gets this epoch (see the module docstring)."""
    h = hashlib.sha256(f"cerberus-challenge|{chain_id}|{brain}|{epoch}|{validator}|{uid}"
                       .encode()).digest()
    return int.from_bytes(h[:8], "big") % n


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


class Validator:
    """One validator of one Brain: ``run_epoch(epoch)`` checks every miner and sets weights."""

    def __init__(self, wallet: Wallet, brain: int, artefact: Path, chain: ChainView,
                 challenges: list[str], tokens: int = 2, timeout: float = 120,
                 cache_dir: Path = DEFAULT_CACHE / "validator", *, fee: int = 0,
                 workers: int = POOL) -> None:
        if not challenges:
            raise CerberusError("a validator needs at least one challenge prompt")
        if tokens < 1:
            raise CerberusError("tokens must be at least 1")
        if timeout <= 0:
            raise CerberusError("timeout must be positive")
        self.wallet = wallet
        self.brain = brain
        self.artefact_path = Path(artefact)
        self.artefact: Artefact = load_artefact(self.artefact_path)  # verifies its hash
        self.chain = chain
        self.challenges = list(challenges)
        self.tokens = tokens
        self.timeout = float(timeout)
        self.cache_dir = Path(cache_dir)
        self.fee = fee
        self.workers = max(1, workers)
        self._ids: list[list[int]] = []
        for prompt in self.challenges:
            ids = list(self.artefact.tokenizer(prompt).input_ids)
            if not ids:
                raise CerberusError(f"challenge {prompt!r} tokenizes to nothing")
            self._ids.append(ids)
        self._expected: dict[int, list[int]] = {}  # challenge index → simulator's tokens
        # Keygen writes the key cache and the secret seed: one thread at a time.
        self._keygen_lock = threading.Lock()

    @property
    def address(self) -> str:
        return self.wallet.address

    def expected(self, index: int) -> list[int]:
        """The simulator's greedy tokens for challenge ``index`` (computed once)."""
        if index not in self._expected:
            self._expected[index] = self.artefact.generate(self._ids[index], self.tokens)
        return self._expected[index]

    def run_epoch(self, epoch: int) -> EpochReport:
        """Check every miner of the Brain, then sign and submit the weights."""
        t0 = time.perf_counter()
        report = EpochReport(epoch=epoch, brain=self.brain, validator=self.address)
        miners = self.chain.miners(self.brain)
        for uid, (address, endpoint) in sorted(miners.items()):
            i = challenge_index(self.chain.chain_id, self.brain, epoch, self.address, uid,
                                len(self.challenges))
            report.results[uid] = MinerResult(uid, address, endpoint, self.challenges[i],
                                              self.expected(i))
            if endpoint is None:
                report.results[uid].error = "no endpoint announced"
        todo = [r for r in report.results.values() if r.endpoint is not None]
        if todo:
            self._check_all(todo)
        report.weights = speed_weights({u: r.latency_s if r.correct else None
                                        for u, r in report.results.items()})
        if report.weights:
            uids = sorted(report.weights)
            tx = make_tx(self.wallet, "set_weights", self.chain.nonce(self.address),
                         self.chain.chain_id, fee=self.fee, brain=self.brain, uids=uids,
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
        done, late = futures.wait(jobs, timeout=rounds * (self.timeout + 30))
        for job in late:
            r = jobs[job]
            r.correct, r.error = False, f"no answer within {self.timeout:g} s"
        pool.shutdown(wait=False, cancel_futures=True)

    def _check(self, r: MinerResult) -> None:
        """One miner: its own client under this validator's keys; fills ``r`` in place."""
        assert r.endpoint is not None
        client = MinerClient(r.endpoint, artefact=self.artefact_path,
                             expected_sha256=self.artefact.sha256, cache_dir=self.cache_dir,
                             timeout=self.timeout, retries=1, backoff=0.2)
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
            ids = self._ids[self.challenges.index(r.prompt)]
            t0 = time.perf_counter()
            out = client.generate(ids, self.tokens)
            r.latency_s = time.perf_counter() - t0
            r.got = out.ids
            r.correct = out.ids == r.expected
            if not r.correct:
                r.error = f"wrong tokens {out.ids}, the simulator gives {r.expected}"
        except Exception as e:  # noqa: BLE001 - any failure of the miner scores 0
            r.correct = False
            r.error = (f"no answer within {self.timeout:g} s" if expired.is_set()
                       else str(e) if isinstance(e, MinerError) else f"{type(e).__name__}: {e}")
        finally:
            timer.cancel()
            client.close()
        log.info("checked", extra={"json": {
            "event": "checked", "uid": r.uid, "endpoint": r.endpoint, "correct": r.correct,
            "latency_s": r.latency_s, "error": r.error}})
