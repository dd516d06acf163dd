"""Work routing by embedding radius (SPEC N3, paper §4.3, issue #8).

The paper sends each query to the miner whose *previous* embeddings are nearest: a miner
that served similar queries has similar activations' working set warm (its vector store,
GPU oversubscription), so locality is the point. Here:

* ``embed_query(artefact, text)``: the model's own token embeddings — the mean of the
  client half's ``tok_emb`` rows for the query's tokens, L2-normalised. Only the client
  half is needed (a client has it; the miner does not see it being used). Positional
  embeddings are left out: every query of the same length shares them, so they would
  measure length, not content. The embedding stays with the router (the client or its
  node); it is never sent to a miner.
* radius of a miner = Euclidean distance from the query to the *nearest* of that miner's
  last ``history`` embeddings (the paper's ``calculate_embedding_radius`` then ``min``).
  History is bounded per miner (a deque), so memory is ``miners × history × d``.

``Router.order`` ranks miners, first to last:

1. miners that failed on their last try go last (ordered by consecutive failures), so a
   dead miner does not cost every query a timeout before the fallback;
2. *cold* miners (no history yet) come before warm ones, least-used first: without this,
   the first miner to answer would own every later query (it is the only one with a
   radius), and new miners would never get work. Cold-first spreads the first queries over
   all miners and lets each one build history; afterwards a new miner gets the next query;
3. warm miners by radius, nearest first; ties by fewer uses, then by list order.

``route(embedding, call)`` tries ``call(miner)`` in that order, falls back to the next on
``MinerError`` (a miner that is down, busy past retries or refusing), records the
embedding for the miner that answered, and raises ``RoutingError`` naming every miner's
failure when all fail. Other exceptions are bugs of the caller and propagate at once.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import TypeVar

import numpy as np

from cerberus.artefact import Artefact, ClientHalf
from cerberus.errors import CerberusError
from runtime.client import MinerError

T = TypeVar("T")
HISTORY = 64  # embeddings kept per miner


class RoutingError(CerberusError):
    """Every miner failed (or there was none); ``failures`` maps miner → error."""

    def __init__(self, message: str, failures: dict[str, BaseException]) -> None:
        super().__init__(message)
        self.failures = failures


def embed_query(artefact: Artefact | ClientHalf, text: str) -> np.ndarray:
    """The query's embedding: mean of its tokens' embedding rows, L2-normalised (float64).

    Only the client half is needed (the token embeddings are the client's)."""
    half = artefact.client if isinstance(artefact, Artefact) else artefact
    ids = list(half.tokenizer(text).input_ids)
    if not ids:
        raise CerberusError("cannot embed an empty query")
    table = half.state["tok_emb.weight"].detach().double().numpy()
    v = table[np.asarray(ids, dtype=np.int64)].mean(axis=0)
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v


class Router:
    """Ranks miners for a query by embedding radius; see the module docstring for the rule."""

    def __init__(self, miners: list[str], history: int = HISTORY) -> None:
        if history < 1:
            raise CerberusError("history must be at least 1")
        self.history = history
        self._lock = threading.Lock()
        self._miners: list[str] = []
        self._past: dict[str, deque[np.ndarray]] = {}
        self._uses: dict[str, int] = {}
        self._failures: dict[str, int] = {}
        self.update(miners)

    @property
    def miners(self) -> list[str]:
        return list(self._miners)

    def update(self, miners: Iterable[str]) -> None:
        """Set the miner list (e.g. after registrations change); kept miners keep history."""
        miners = list(dict.fromkeys(miners))
        with self._lock:
            self._miners = miners
            for m in miners:
                self._past.setdefault(m, deque(maxlen=self.history))
                self._uses.setdefault(m, 0)
                self._failures.setdefault(m, 0)
            for m in set(self._past) - set(miners):
                del self._past[m], self._uses[m], self._failures[m]

    def history_of(self, miner: str) -> list[np.ndarray]:
        """The embeddings remembered for ``miner``, oldest first."""
        with self._lock:
            return list(self._past[miner])

    def radii(self, embedding: np.ndarray) -> dict[str, float | None]:
        """Each miner's radius to ``embedding`` (None: no history yet)."""
        e = self._vector(embedding)
        with self._lock:
            return {m: self._radius(m, e) for m in self._miners}

    def _radius(self, miner: str, e: np.ndarray) -> float | None:
        past = self._past[miner]
        if not past:
            return None
        return float(np.linalg.norm(np.stack(past) - e[None, :], axis=1).min())

    def order(self, embedding: np.ndarray) -> list[str]:
        """Miners from first to last choice for this query."""
        e = self._vector(embedding)
        with self._lock:
            def key(item: tuple[int, str]) -> tuple:
                i, m = item
                r = self._radius(m, e)
                return (self._failures[m], r is not None, r or 0.0, self._uses[m], i)

            return [m for _, m in sorted(enumerate(self._miners), key=key)]

    def record(self, miner: str, embedding: np.ndarray) -> None:
        """Remember that ``miner`` served a query near ``embedding`` (oldest dropped)."""
        e = self._vector(embedding)
        with self._lock:
            if miner not in self._past:
                raise CerberusError(f"unknown miner {miner!r}")
            past = self._past[miner]
            if past and past[0].shape != e.shape:
                raise CerberusError(f"embedding of size {e.size}, history has {past[0].size}")
            past.append(e)
            self._uses[miner] += 1
            self._failures[miner] = 0

    def route(self, embedding: np.ndarray, call: Callable[[str], T]) -> tuple[str, T]:
        """``call`` the best miner; on ``MinerError`` the next one. Returns (miner, result)."""
        failures: dict[str, BaseException] = {}
        for miner in self.order(embedding):
            try:
                result = call(miner)
            except MinerError as e:
                failures[miner] = e
                with self._lock:
                    if miner in self._failures:
                        self._failures[miner] += 1
                continue
            if miner in self.miners:  # not removed by update() meanwhile
                self.record(miner, embedding)
            return miner, result
        if not failures:
            raise RoutingError("no miners to route to", failures)
        detail = "; ".join(f"{m}: {e}" for m, e in failures.items())
        raise RoutingError(f"all {len(failures)} miners failed: {detail}", failures)

    @staticmethod
    def _vector(embedding: np.ndarray) -> np.ndarray:
        e = np.asarray(embedding, dtype=np.float64).reshape(-1)
        if e.size == 0 or not np.all(np.isfinite(e)):
            raise CerberusError("an embedding must be a non-empty finite vector")
        return e
