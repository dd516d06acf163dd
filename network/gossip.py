"""Gossip for the P2P node (SPEC N1): envelope checks, the seen-set, the peer table, fanout
broadcast, Hello rounds and rate limiting.

Split out of ``network.node`` (issue #15) so that what a hostile peer can reach first —
size limits, JSON parsing, signatures, token buckets, the bounded tables — sits in one
place with no knowledge of rounds or the ledger. It gets what it needs passed in: the
node's lock (one lock for the whole node, so the locking is what it always was), its stop
event, a clock, the node's listen address, and the counters ``status()`` reports.

Robustness: gRPC messages over ``MAX_MESSAGE`` bytes are refused by gRPC itself; per-kind
payload limits, malformed JSON and bad signatures raise ``Rejected``; the seen-set, the
peer table and the token buckets are bounded; fresh gossip goes to at most ``fanout``
peers through a bounded queue (a full queue drops and counts, never blocks the caller).
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import random
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import grpc

from ledger.tx import Tx, TxFormatError
from network.protos import node_pb2, node_pb2_grpc

log = logging.getLogger("cerberus.network")

T = TypeVar("T")

MAX_MESSAGE = 4 * 1024 * 1024  # gRPC refuses anything larger (RESOURCE_EXHAUSTED)
# "txs": a batch of txs (issue #16), the node's own way to gossip them: one message per
# tick instead of one per tx, which the per-peer rate limit could never carry at 1,000 tx/s
PAYLOAD_LIMITS = {"tx": 16 * 1024, "txs": 2 * 1024 * 1024, "vote": 1024, "announce": 2048,
                  "block": 3 * 1024 * 1024}
MAX_TX_BATCH = 1_000  # txs per "txs" envelope and per SubmitTxs call
SEEN_CAP = 50_000  # dedup set size (oldest forgotten first)
MAX_BUCKETS = 1024
PEER_RE = re.compile(r"^[A-Za-z0-9.\-]{1,253}:[0-9]{1,5}$")
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
    # A restarted peer must be reachable again within about a second, not minutes.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


class Clock(Protocol):
    """The clock the node's parts read (a test may pass one only it moves)."""

    def time(self) -> float: ...

    def monotonic(self) -> float: ...

    def time_ns(self) -> int: ...


class Rejected(ValueError):
    """A peer's message that is malformed, oversized or badly signed (INVALID_ARGUMENT)."""


def check_size(payload: bytes, kind: str) -> None:
    """Refuse an unknown kind or a payload over its kind's limit (``Rejected``)."""
    limit = PAYLOAD_LIMITS.get(kind)
    if limit is None:
        raise Rejected(f"unknown envelope kind {kind!r}")
    if len(payload) > limit:
        raise Rejected(f"{kind} payload of {len(payload)} bytes exceeds {limit}")


def parse_payload(payload: bytes, kind: str) -> Any:
    """Parse a peer's JSON payload with its kind's size limit, or raise ``Rejected``."""
    check_size(payload, kind)
    try:
        return json.loads(payload)
    except (ValueError, RecursionError, UnicodeDecodeError) as e:
        raise Rejected(f"malformed {kind} JSON: {e}") from e


def signed(what: str, parse: Callable[[Any], T], verify: Callable[[T], bool], obj: Any,
           errors: tuple[type[Exception], ...] = (ValueError,)) -> T:
    """A peer's signed object (tx, block, vote, announcement) parsed and its signature
    checked, or ``Rejected``: the one gate every gossiped kind passes."""
    try:
        item = parse(obj)
    except errors as e:
        raise Rejected(str(e)) from e
    if not verify(item):
        raise Rejected(f"bad {what} signature")
    return item


def parse_tx(obj: Any, chain_id: str) -> Tx:
    """A peer's or client's tx, format and signature checked, or ``Rejected``."""
    def parse(o: Any) -> Tx:
        tx = Tx.from_dict(o)
        tx.check_format()
        return tx

    return signed("tx", parse, lambda tx: tx.verify_signature(chain_id), obj,
                  (TxFormatError, TypeError, AttributeError))


def parse_txs(obj: Any, chain_id: str) -> list[Tx]:
    """A peer's "txs" batch: a non-empty list of at most ``MAX_TX_BATCH`` txs, every one's
    format and signature checked, or ``Rejected`` at the first bad one (an honest node
    only forwards txs it checked, so one bad tx marks the whole batch as hostile)."""
    check_batch(obj)
    return [parse_tx(o, chain_id) for o in obj]


def check_batch(obj: Any) -> list[Any]:
    """``obj`` if it is a list of 1..``MAX_TX_BATCH`` items, else ``Rejected``."""
    if not isinstance(obj, list) or not 0 < len(obj) <= MAX_TX_BATCH:
        raise Rejected(f"txs must be a list of 1..{MAX_TX_BATCH} txs")
    return obj


def batch_payload(payloads: list[bytes]) -> bytes:
    """The canonical JSON list of canonical tx payloads (what ``canonical`` would give for
    the list of their dicts, without re-encoding each)."""
    return b"[" + b",".join(payloads) + b"]"


def seen_key(kind: str, payload: bytes) -> bytes:
    """What the dedup set remembers of a gossiped message."""
    return hashlib.sha256(kind.encode() + b"\0" + payload).digest()


class TokenBucket:
    """Classic token bucket: ``rate`` tokens/s up to ``burst``; one token per message."""

    def __init__(self, rate: float, burst: float, clock: Clock) -> None:
        self.rate, self.burst = rate, burst
        self.clock = clock
        self.tokens = burst
        self.stamp = clock.monotonic()

    def take(self, cost: float = 1.0) -> bool:
        now = self.clock.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False


class RateLimiter:
    """A token bucket per peer connection and one per source address over all its
    connections (``per_address`` × the connection's budget), so opening more connections
    gains a flooder nothing (issue #15); least recently used buckets are forgotten past
    ``MAX_BUCKETS``."""

    def __init__(self, rate: float, burst: float, per_address: float, clock: Clock,
                 counters: dict[str, int]) -> None:
        self.rate, self.burst, self.per_address = rate, burst, per_address
        self.clock, self.counters = clock, counters
        # its own lock, not the node's: every RPC takes a token first, and waiting behind
        # a block being applied just to be counted stalled all of them (issue #16)
        self.lock = threading.Lock()
        self.buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def take(self, peer: str, cost: float = 1.0) -> bool:
        """One message from ``peer`` (gRPC's ``ipv4:HOST:PORT``), worth ``cost`` tokens (a
        batch costs more); False when its connection or its address is over budget."""
        address = peer.rsplit(":", 1)[0]
        with self.lock:
            ok = all([self._bucket(peer, self.rate, self.burst).take(cost),
                      self._bucket(f"addr:{address}", self.rate * self.per_address,
                                   self.burst * self.per_address).take(cost)])
            if not ok:
                self.counters["rate_limited"] += 1
            return ok

    def _bucket(self, key: str, rate: float, burst: float) -> TokenBucket:
        """The bucket for ``key``, least recently used ones forgotten past MAX_BUCKETS."""
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = TokenBucket(rate, burst, self.clock)
            while len(self.buckets) > MAX_BUCKETS:
                self.buckets.popitem(last=False)
        else:
            self.buckets.move_to_end(key)
        return bucket


@dataclass
class Peer:
    """What this node knows about one peer (by its listen address)."""

    listen: str
    address: str = ""
    height: int = 0
    failures: int = 0
    last_try: float = 0.0
    sync_failures: int = 0  # GetBlocks answers in a row that brought no block
    sync_after: float = 0.0  # monotonic time before which sync passes this peer over
    channel: grpc.Channel | None = None
    stub: node_pb2_grpc.NodeStub | None = None


class Gossip:
    """The peer table, the seen-set and the outbound queue with its sender threads.

    ``listen`` gives this node's own listen address (known only once it is bound): it is
    never added as a peer and is stamped as the origin of what it sends."""

    def __init__(self, *, listen: Callable[[], str], bootstrap: list[str], fanout: int,
                 max_peers: int, lock: threading.RLock, stop: threading.Event,
                 clock: Clock, counters: dict[str, int]) -> None:
        self.listen, self.bootstrap = listen, bootstrap
        self.fanout, self.max_peers = fanout, max_peers
        self.lock, self.stop, self.clock, self.counters = lock, stop, clock, counters
        self.peers: dict[str, Peer] = {}
        self.seen: OrderedDict[bytes, None] = OrderedDict()
        self.out: queue.Queue[tuple[Peer, node_pb2.Envelope]] = queue.Queue(maxsize=4096)

    def add_peer(self, listen: str) -> None:
        """Add a peer by its listen address (lock held); a full table makes room only by
        dropping a failing peer that was not a bootstrap."""
        if not PEER_RE.match(listen) or listen == self.listen() or listen in self.peers:
            return
        if not 0 < int(listen.rsplit(":", 1)[1]) < 65536:
            return
        if len(self.peers) >= self.max_peers:
            dead = [p for p in self.peers.values()
                    if p.failures >= 3 and p.listen not in self.bootstrap]
            if not dead:
                return
            gone = self.peers.pop(dead[0].listen)
            if gone.channel is not None:
                gone.channel.close()
        channel = grpc.insecure_channel(listen, options=CHANNEL_OPTIONS)
        self.peers[listen] = Peer(listen, channel=channel,
                                  stub=node_pb2_grpc.NodeStub(channel))

    def live_peers(self) -> list[str]:
        """Listen addresses of the peers not currently failing, sorted (lock held)."""
        return sorted(p.listen for p in self.peers.values() if p.failures == 0)

    def is_seen(self, kind: str, payload: bytes) -> bool:
        with self.lock:
            return seen_key(kind, payload) in self.seen

    def mark_seen(self, kind: str, payload: bytes) -> bool:
        """Remember a message; False if it was already seen (dedup)."""
        key = seen_key(kind, payload)
        with self.lock:
            if key in self.seen:
                return False
            self.seen[key] = None
            while len(self.seen) > SEEN_CAP:
                self.seen.popitem(last=False)
            return True

    def publish(self, kind: str, payload: bytes) -> None:
        """Send this node's own message: remembered as seen (so its echo is dropped), then
        broadcast."""
        self.mark_seen(kind, payload)
        self.broadcast(node_pb2.Envelope(kind=kind, payload=payload))

    def broadcast(self, env: node_pb2.Envelope, exclude: str = "") -> None:
        """Queue ``env`` for at most ``fanout`` live peers (other than ``exclude``)."""
        with self.lock:
            peers = [p for p in self.peers.values() if p.listen != exclude
                     and p.failures < 3 and p.stub is not None]
        if len(peers) > self.fanout:
            peers = random.sample(peers, self.fanout)
        env = node_pb2.Envelope(kind=env.kind, payload=env.payload, origin=self.listen())
        for p in peers:
            try:
                self.out.put_nowait((p, env))
            except queue.Full:
                self.counters["dropped_out"] += 1

    def sender(self) -> None:
        """One sender thread: deliver queued envelopes until stopped."""
        while not self.stop.is_set():
            try:
                peer, env = self.out.get(timeout=0.2)
            except queue.Empty:
                continue
            if peer.stub is None:
                continue
            try:
                peer.stub.Gossip(env, timeout=2.0)
                peer.failures = 0
            except grpc.RpcError as e:
                if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    peer.failures += 1
            except ValueError:  # channel closed (peer evicted, or stop())
                continue

    def hello_all(self, req: node_pb2.HelloRequest, add_peer: Callable[[str], None]) -> None:
        """Say Hello to every peer, learning its height and its peers (``add_peer`` is
        called under the lock for each, so the node decides what joins its table)."""
        with self.lock:
            peers = list(self.peers.values())
        now = self.clock.monotonic()
        for p in peers:
            if self.stop.is_set():
                return
            # a failing peer is retried less often, but always retried (it may restart)
            if p.failures >= 3 and now - p.last_try < 3.0:
                continue
            p.last_try = now
            assert p.stub is not None
            try:
                reply = p.stub.Hello(req, timeout=1.0)
            except grpc.RpcError as e:
                p.failures += 1
                if e.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    log.warning("peer %s: %s", p.listen, e.details())
                continue
            except ValueError:  # channel closed (peer evicted)
                continue
            p.failures, p.address, p.height = 0, reply.address, reply.height
            with self.lock:
                for listen in list(reply.peers)[: self.max_peers]:
                    add_peer(listen)

    def close(self) -> None:
        """Close every peer channel (lock held)."""
        for p in self.peers.values():
            if p.channel is not None:
                p.channel.close()
