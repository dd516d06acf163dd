"""The P2P node (SPEC N1, issue #8): gossip, sync, block production and finality over gRPC.

One ``Node`` owns one ledger ``Chain`` (``data_dir/chain.db``) and its own ``NodeStore``
(``data_dir/node.db``: finality certificates, its validator's votes, equivocation evidence,
the miner directory), so a node killed at any point restarts where it was.

``Node`` is the composition root (issue #15): it opens the storage, holds the one lock
every part runs under, and wires the parts together, each given only what it needs:

* ``network.rounds.Rounds`` — the finality rules (finalize, then apply; two-phase voting
  with locks and POLs; double-signing evidence), with the safety argument in its
  docstring. It gets the chain, the store, the mempool, a clock, and two send callables.
* ``network.gossip.Gossip`` / ``RateLimiter`` — envelope checks, the seen-set, the peer
  table, fanout broadcast, Hello rounds and per-connection / per-address token buckets.
* ``network.sync.Sync`` — catch-up by GetBlocks with a backoff per peer; it hands each
  block to ``Rounds.apply_synced``, which checks the certificate.
* ``network.mempool.Mempool`` — admission against a pending-state overlay.
* ``network.enforcer.Reproducer`` — re-derives each ``tft_report`` (the TFT Enforcer's
  float part, which the ledger cannot check) on a worker thread; a report is admitted only
  once it reproduced here (``_reproduction``), and ``Rounds`` prevotes a block holding one
  only then (SPEC L9).
* ``network.cli`` — ``python -m network.cli``: run one node.

The node itself keeps the lifecycle (gRPC server, loop and sender threads), the public API
(submit, status, account, brain_info, announce, directory) and the inbound dispatch of
gossip by kind.

Robustness: gRPC messages over ``MAX_MESSAGE`` bytes are refused by gRPC itself
(RESOURCE_EXHAUSTED); per-kind payload limits, malformed JSON and bad signatures give
INVALID_ARGUMENT; every peer connection has a token bucket, and so has every source
address over all its connections (``per_address`` × the connection's; over either:
RESOURCE_EXHAUSTED, the message is dropped and counted); any other error while handling a
peer's message is logged and refused the same way, never left to stop the loop; fresh
gossip goes to at most ``fanout`` peers; the seen-set, mempool (and each sender's share of
it, ``Mempool.admit``), peer table, proposal and vote buffers are all bounded.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc

from ledger.block import Block
from ledger.chain import Chain
from ledger.encoding import canonical, is_int, sha256
from ledger.genesis import Genesis
from ledger.keys import Wallet
from ledger.tft_report import report_problem
from ledger.tx import Tx, TxFormatError
from network.enforcer import NodeEnforcerView, Reproducer, Verdict
from network.finality import PRECOMMIT, PREVOTE, Announcement, Vote
from network.gossip import (
    CHANNEL_OPTIONS,
    MAX_MESSAGE,
    MAX_TX_BATCH,
    PAYLOAD_LIMITS,
    Gossip,
    Peer,
    RateLimiter,
    Rejected,
    batch_payload,
    check_batch,
    check_size,
    parse_payload,
    parse_tx,
    parse_txs,
    signed,
)
from network.mempool import Mempool
from network.protos import node_pb2, node_pb2_grpc
from network.rounds import VOTE_WINDOW, Rounds
from network.store import NodeStore
from network.sync import MAX_SYNC_BATCH, Sync

__all__ = ["MAX_MESSAGE", "VOTE_WINDOW", "Node", "NodeConfig", "Rejected"]

log = logging.getLogger("cerberus.network")

T = TypeVar("T")

MAX_REGOSSIP = 64  # pending mempool txs re-sent per announce_interval
TXS_PER_TOKEN = 16  # a SubmitTxs call costs one rate-limit token per this many txs
MAX_OUTBOX = 4 * MAX_TX_BATCH  # admitted txs waiting for the next batch (more: dropped,
# counted; the mempool's re-gossip sends them later)
REPRODUCE_WAIT = 30.0  # seconds a client's submit waits for its tft_report's derivation
MAX_AWAITING = 16  # tft_reports held for admission until their derivation is done


@dataclass
class NodeConfig:
    """Everything a node needs; times are seconds."""

    data_dir: Path
    genesis: Genesis
    wallet: Wallet | None = None
    host: str = "127.0.0.1"
    port: int = 0
    bootstrap: list[str] = field(default_factory=list)
    block_interval: float | None = None  # round 0 opens this long after the parent;
    # None = genesis.block_time
    round_timeout: float = 3.0
    tick: float = 0.1
    hello_interval: float = 1.0
    announce_interval: float = 5.0
    fanout: int = 8
    max_peers: int = 32
    rate: float = 200.0  # messages per second per peer connection
    burst: float = 400.0
    # … and per source address, over all its connections: a flooder gains nothing by
    # opening more (honest peers sharing an address, as in local tests, fit under it)
    per_address: float = 8.0
    max_mempool: int | None = None  # None = max(5,000, 4 blocks' worth)
    max_block_txs: int | None = None  # None = genesis.max_block_txs (never more)
    mempool_ttl: float = 300.0
    workers: int = 16


class _ModuleClock:
    """The clock every part of a node reads: this module's ``time``, looked up at each
    call, so a test that replaces ``network.node.time`` with a clock only it moves moves
    the rounds, buckets and mempool of its nodes too."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def time_ns(self) -> int:
        return time.time_ns()


class Node:
    """A P2P node: see the module docstring for its parts and ``network.rounds`` for the
    rules it follows."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.genesis = config.genesis
        self.chain_id = config.genesis.chain_id
        self.wallet = config.wallet
        self.address = self.wallet.address if self.wallet else ""
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.chain = Chain.open_sqlite(config.data_dir / "chain.db", config.genesis)
        self.store = NodeStore(config.data_dir / "node.db")
        self.interval = float(config.block_interval if config.block_interval is not None
                              else config.genesis.block_time)
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self.counters = {"rate_limited": 0, "rejected": 0, "dropped_out": 0}
        clock = _ModuleClock()
        self.port = config.port
        self.listen = ""
        self.gossip = Gossip(listen=lambda: self.listen, bootstrap=config.bootstrap,
                             fanout=config.fanout, max_peers=config.max_peers,
                             lock=self._lock, stop=self._stop, clock=clock,
                             counters=self.counters)
        self.limiter = RateLimiter(config.rate, config.burst, config.per_address, clock,
                                   self.counters)
        block_txs = min(config.max_block_txs or config.genesis.max_block_txs,
                        config.genesis.max_block_txs)
        self.mempool = Mempool(self.chain, max_size=config.max_mempool or max(5_000,
                                                                             4 * block_txs),
                               max_block_txs=block_txs, ttl=config.mempool_ttl, clock=clock)
        # tft_reports refused or admitted by their derivation here (SPEC L9); blocks are
        # read under the lock, the TFT trains on the reproducer's thread without it
        self.reproducer = Reproducer(config.genesis, NodeEnforcerView(self),
                                     on_done=self._reproduced)
        # tx hash → (report, origin): reports that arrived while their derivation was not
        # done, admitted (and gossiped on) by ``_reproduced`` if it reproduces
        self._awaiting: dict[bytes, tuple[Tx, str]] = {}
        self.rounds = Rounds(chain=self.chain, store=self.store, mempool=self.mempool,
                             genesis=config.genesis, wallet=self.wallet,
                             interval=self.interval, timing=config,
                             clock=clock, publish=self.gossip.publish, send=self._send,
                             reproducer=self.reproducer)
        self.sync = Sync(peers=lambda: self.gossip.peers.values(),
                         height=lambda: self.chain.height, apply=self.rounds.apply_synced,
                         hello_interval=config.hello_interval, lock=self._lock,
                         stop=self._stop, clock=clock)
        self._clock = clock
        self._my_announcements: dict[int, str] = {}
        self._last_announce = 0.0
        self._last_hello = 0.0
        self._last_regossip = 0.0
        # admitted txs not yet gossiped, by the peer they came from ("" = a client), sent
        # as "txs" batches each tick (never back to that peer)
        self._outbox: dict[str, list[bytes]] = {}
        self._outbox_len = 0
        self._server: grpc.Server | None = None
        self._threads: list[threading.Thread] = []

    # ---- views kept for tests and subclasses (the state lives in the parts) ------------
    @property
    def _peers(self) -> dict[str, Peer]:
        return self.gossip.peers

    @property
    def _out(self) -> queue.Queue[tuple[Peer, node_pb2.Envelope]]:
        return self.gossip.out

    @property
    def _proposals(self) -> dict[int, dict[str, Block]]:
        return self.rounds.proposals

    @property
    def _validity(self) -> dict[str, str | None]:
        return self.rounds.validity

    def _add_peer(self, listen: str) -> None:
        """Add a peer (lock held): every path that adds one comes through here, so a
        subclass can filter (a test's partition does)."""
        self.gossip.add_peer(listen)

    def _on_block(self, block: Block) -> bool | None:
        return self.rounds.on_block(block)

    def _current_round(self) -> int:
        return self.rounds.current_round()

    def _try_finalize(self) -> bool:
        return self.rounds.try_finalize()

    def _step(self) -> None:
        """Finalize, propose, prevote, precommit — as far as the view allows (lock held).
        Inbound blocks and votes and ``tick`` all come through here, so a subclass (a
        test's Byzantine validator) can replace the whole step."""
        self.rounds.step()

    def _send(self, kind: str, payload: bytes) -> None:
        """Re-send identical bytes (not marked seen again: they already are)."""
        self.gossip.broadcast(node_pb2.Envelope(kind=kind, payload=payload))

    # ---- lifecycle ---------------------------------------------------------------------
    def start(self) -> int:
        """Serve gRPC, start the loop and gossip senders; returns the bound port."""
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self.config.workers,
                                       thread_name_prefix="node-rpc"),
            options=CHANNEL_OPTIONS[:2])
        node_pb2_grpc.add_NodeServicer_to_server(_Servicer(self), server)
        port = server.add_insecure_port(f"{self.config.host}:{self.config.port}")
        if port == 0:
            raise OSError(f"cannot bind {self.config.host}:{self.config.port}")
        server.start()
        self._server = server
        self.port = port
        self.listen = f"{self.config.host}:{port}"
        with self._lock:
            for b in self.config.bootstrap:
                self._add_peer(b)
            self.rounds.restart()
        self._threads = [threading.Thread(target=self._loop, name="node-loop", daemon=True)]
        self._threads += [threading.Thread(target=self.gossip.sender,
                                           name=f"node-send-{i}", daemon=True)
                          for i in range(4)]
        for t in self._threads:
            t.start()
        log.info("node %s listening on %s (height %d)", self.address or "-", self.listen,
                 self.chain.height)
        return port

    def stop(self) -> None:
        """Stop serving and close the databases (idempotent)."""
        self._stop.set()
        self.reproducer.stop()
        if self._server is not None:
            self._server.stop(grace=0.5).wait(2.0)
            self._server = None
        for t in self._threads:
            t.join(timeout=3.0)
        self._threads = []
        with self._lock:
            self.gossip.close()
            self.chain.close()
            self.store.close()

    # ---- public API --------------------------------------------------------------------
    def read(self, fn: Callable[[Chain], T]) -> T:
        """Run ``fn(chain)`` under the node's lock (``Chain`` is not thread-safe)."""
        with self._lock:
            return fn(self.chain)

    def submit(self, tx: Tx, wait: float = REPRODUCE_WAIT) -> str | None:
        """Admit ``tx`` to the mempool and gossip it; returns the reason if rejected
        (``wait``: see ``submit_many``)."""
        return self.submit_many([tx], wait)[0]

    def submit_many(self, txs: Sequence[Tx], wait: float = REPRODUCE_WAIT
                    ) -> list[str | None]:
        """Admit a client's ``txs`` in order (each judged after the ones before it) and
        gossip the admitted ones with the next batch; per tx, None or the reason.

        Signatures are checked in order through the chain's cache, and the first bad one
        ends the checking: the txs after it are refused unchecked, so a batch of forged
        signatures costs this node one check, not a thousand. A ``tft_report`` waits up to
        ``wait`` seconds for its derivation (outside the node's lock), so the client learns
        whether it reproduced; one not done by then is admitted when it is."""
        reasons: list[str | None] = []
        forged = False
        with self.chain.sigs.active():
            for tx in txs:
                if forged:
                    reasons.append("not checked: an earlier tx of this batch has a bad "
                                   "signature")
                    continue
                try:
                    tx.check_format()
                except TxFormatError as e:
                    reasons.append(str(e))
                    continue
                forged = not tx.verify_signature(self.chain_id)
                reasons.append("bad tx signature" if forged else None)
        ok = [(i, tx) for i, tx in enumerate(txs) if reasons[i] is None]
        for i, reason in self._admit([tx for _, tx in ok], "", wait):
            reasons[ok[i][0]] = reason
        return reasons

    def _admit(self, txs: Sequence[Tx], origin: str, wait: float = 0.0
               ) -> list[tuple[int, str | None]]:
        """Mempool admission of checked txs (format and signature) from ``origin`` (a
        peer's listen address, "" for a client); the new ones join the gossip outbox.
        Returns (index, reason) per tx. A ``tft_report`` must reproduce first
        (``_reproduction``, which may wait up to ``wait`` seconds, outside the lock)."""
        early = {i: self._reproduction(tx, origin, wait) for i, tx in enumerate(txs)
                 if tx.kind == "tft_report"}
        out: list[tuple[int, str | None]] = []
        with self._lock, self.chain.sigs.active():
            for i, tx in enumerate(txs):
                if early.get(i) is not None:
                    out.append((i, early[i]))
                    continue
                payload = canonical(tx.to_dict())  # what it is gossiped as; its hash is the id
                h = sha256(payload)
                new = h not in self.mempool
                reason = self.mempool.admit(tx, h)
                out.append((i, reason))
                if reason is None and new:
                    if self._outbox_len >= MAX_OUTBOX:
                        self.counters["dropped_out"] += 1
                        continue
                    self._outbox.setdefault(origin, []).append(payload)
                    self._outbox_len += 1
        return out

    def _reproduction(self, tx: Tx, origin: str, wait: float) -> str | None:
        """Why the ``tft_report`` ``tx`` may not enter the mempool now, or None once its
        skills and checkpoint reproduced here (SPEC L9). Runs without the node's lock held
        while it waits: the node keeps voting and gossiping during a derivation.

        Order: a cached verdict; else the ledger's integer rule on the head's state (cheap:
        a report the ledger refuses anyway costs no training); else the derivation is
        queued on the reproducer, and waited for up to ``wait`` seconds (a client's submit;
        gossip passes 0: a peer's call must not wait on training). A report not judged by
        then is held and admitted, and gossiped on, when its verdict is good
        (``_reproduced``)."""
        h = tx.tx_hash()
        v = self.reproducer.verdict(h)
        if v is None:
            with self._lock:
                if h in self.mempool:
                    return None
                problem = report_problem(self.chain.state, tx.sender, tx.payload,
                                         self.chain.height + 1)
            if problem is not None:
                return problem
            if not self.reproducer.request(tx, h):
                return ("tft_report not reproduced yet: this node is busy reproducing "
                        "others; submit it again later")
            if wait > 0:
                v = self.reproducer.wait(h, wait)
            if v is None:
                with self._lock:
                    if h not in self._awaiting and len(self._awaiting) < MAX_AWAITING:
                        self._awaiting[h] = (tx, origin)
                return "tft_report is being reproduced; this node admits it once it is"
        return None if v.ok else v.reason

    def _reproduced(self, tx: Tx, tx_hash: bytes, verdict: Verdict) -> None:
        """The reproducer's hook (its thread): admit a held report that reproduced."""
        with self._lock:
            held = self._awaiting.pop(tx_hash, None)
        if not verdict.ok:
            log.warning("tft_report %s refused: %s", tx_hash.hex()[:12], verdict.reason)
        elif held is not None:
            [(_, reason)] = self._admit([held[0]], held[1])
            if reason is not None:
                log.info("reproduced tft_report %s not admitted: %s", tx_hash.hex()[:12],
                         reason)

    def _unknown(self, items: list[Any]) -> list[Any]:
        """A peer's "txs" batch less the txs this node already has — final (a used nonce)
        or pending with the same signature — which, in a mesh, is every copy after the
        first from another peer: they cost a lookup here instead of parsing and hashing.
        Items too malformed to look up are kept for ``parse_txs`` to refuse."""
        unknown = []
        with self._lock:
            for d in items:
                if isinstance(d, dict):
                    sender, nonce, sig = d.get("sender"), d.get("nonce"), d.get("sig")
                    if isinstance(sender, str) and is_int(nonce) and isinstance(sig, str) \
                            and (nonce < self.chain.nonce(sender)
                                 or self.mempool.holds(sender, nonce, sig)):
                        continue
                unknown.append(d)
        return unknown

    def flush_txs(self) -> None:
        """Gossip the admitted txs waiting in the outbox as "txs" batches (each at most
        ``MAX_TX_BATCH`` txs and within the kind's payload limit), never back to the peer
        they came from (the loop calls it every tick)."""
        with self._lock:
            outbox, self._outbox, self._outbox_len = self._outbox, {}, 0
        limit = PAYLOAD_LIMITS["txs"] - 2
        for origin, payloads in outbox.items():
            batch: list[bytes] = []
            size = 0
            for item in [*payloads, None]:
                if batch and (item is None or len(batch) >= MAX_TX_BATCH
                              or size + len(item) + 1 > limit):
                    payload = batch_payload(batch)
                    self.gossip.mark_seen("txs", payload)
                    self.gossip.broadcast(node_pb2.Envelope(kind="txs", payload=payload),
                                          exclude=origin)
                    batch, size = [], 0
                if item is not None:
                    batch.append(item)
                    size += len(item) + 1

    def status(self) -> dict[str, Any]:
        """Height, finalized height, state root, head hash, peers, address, the live chain
        parameters, evidence."""
        with self._lock:
            weights = self.rounds.weights()
            return {
                "height": self.chain.height,
                "finalized_height": self.chain.height,  # finalize-then-apply: head is final
                "state_root": self.chain.state_root(),
                "head_hash": self.chain.head_hash,
                "time": self.chain.state.meta("time"),
                "address": self.address,
                "listen": self.listen,
                "chain_id": self.chain_id,
                "genesis_hash": self.genesis.genesis_hash(),
                "peers": self.gossip.live_peers(),
                "known_peers": sorted(self.gossip.peers),
                "mempool": len(self.mempool),
                "validators": weights,
                "params": self.chain.params(),  # live governable parameters (SPEC L8)
                "round": self.rounds.current_round(),  # at height + 1
                "my_vote": self.rounds.my_vote_info(PREVOTE),
                "my_precommit": self.rounds.my_vote_info(PRECOMMIT),  # = the lock
                "pol": self.rounds.pol_info(),
                "evidence": self.store.evidence_count(),
                "evidence_list": self.store.evidence(limit=10),
                "double_signs": self.store.vote_evidence_count(),
                "double_sign_list": self.store.vote_evidence(limit=10),
                **self.counters,
            }

    def account(self, address: str) -> dict[str, Any]:
        """Balance and next nonce at the head; ``pending_nonce`` also counts this node's
        mempool, so a client can sign several txs in a row without waiting for blocks."""
        with self._lock:
            return {"address": address, "balance": self.chain.balance(address),
                    "nonce": self.chain.nonce(address),
                    "pending_nonce": self.mempool.pending_nonce(address),
                    "height": self.chain.height}

    def brain_info(self, brain_id: int) -> dict[str, Any] | None:
        """A Brain's config and registrations (uid = slot per role), or None if absent."""
        with self._lock:
            b = self.chain.state.brain(brain_id)
            if b is None:
                return None
            miners = {i: a for i, a in enumerate(b.miners) if a is not None}
            validators = {i: a for i, a in enumerate(b.validators) if a is not None}
            return {
                "id": b.id, "owner": b.owner, "method": b.method, "name": b.name,
                "task": b.task, "reward_address": b.reward_address, "owner_bps": b.owner_bps,
                "miner_bps": b.miner_bps, "registration_fee": b.registration_fee,
                "miners": miners, "validators": validators,
                "registrations": (
                    [{"uid": u, "address": a, "role": "miner"} for u, a in miners.items()]
                    + [{"uid": u, "address": a, "role": "validator"}
                       for u, a in validators.items()]),
                "height": self.chain.height,
            }

    def announce(self, brain: int, endpoint: str) -> None:
        """Gossip this node's signed endpoint for ``brain`` (re-announced periodically)."""
        if self.wallet is None:
            raise ValueError("announce needs a wallet")
        with self._lock:
            self._my_announcements[brain] = endpoint
        self._announce(brain, endpoint)

    def directory(self, brain: int) -> dict[str, str]:
        """Announced endpoints of the Brain's currently registered miners: {address: endpoint}."""
        with self._lock:
            out = {}
            for addr, endpoint in self.store.directory(brain).items():
                reg = self.chain.state.get("reg", (brain, addr))
                if reg is not None and reg.role == "miner":
                    out[addr] = endpoint
            return out

    # ---- loop --------------------------------------------------------------------------
    def _announce(self, brain: int, endpoint: str) -> None:
        assert self.wallet is not None
        ann = Announcement.make(self.wallet, self.chain_id, brain, endpoint,
                                time.time_ns() // 1000)
        record = ann.to_dict()
        with self._lock:
            self.store.put_announcement(brain, ann.address, endpoint, ann.seq, record)
        self.gossip.publish("announce", canonical(record))

    def _regossip_mempool(self) -> None:
        """Gossip is fire-and-forget: a tx admitted while this node had no peers (the first
        node of a network, say) would wait in this mempool until this node proposes — which
        a node outside the voting set never does. So pending txs older than one interval
        are sent again (peers that have them drop the identical bytes as duplicates)."""
        with self._lock:
            old = self.mempool.older_than(self.config.announce_interval, MAX_REGOSSIP)
        if old:
            self._send("txs", batch_payload([canonical(tx.to_dict()) for tx in old]))

    def _hello_all(self) -> None:
        with self._lock:
            req = node_pb2.HelloRequest(genesis_hash=self.genesis.genesis_hash(),
                                        listen=self.listen, address=self.address,
                                        height=self.chain.height)
        self.gossip.hello_all(req, self._add_peer)

    def _loop(self) -> None:
        while not self._stop.wait(self.config.tick):
            try:
                now = time.monotonic()
                if now - self._last_hello >= self.config.hello_interval:
                    self._last_hello = now
                    self._hello_all()
                    self.sync.sync_once()
                if self._my_announcements and \
                        now - self._last_announce >= self.config.announce_interval:
                    self._last_announce = now
                    with self._lock:
                        mine = dict(self._my_announcements)
                    for brain, endpoint in mine.items():
                        self._announce(brain, endpoint)
                if now - self._last_regossip >= self.config.announce_interval:
                    self._last_regossip = now
                    self._regossip_mempool()
                self.flush_txs()
                self.tick()
            except Exception:  # the loop must survive anything a bad state throws at it
                log.exception("node loop step failed")

    def tick(self) -> None:
        """One step of the finality state machine on the current view and clock (the loop
        calls it every ``tick`` seconds; a test driving a node that is not started calls it
        after moving the clock)."""
        with self._lock:
            self._step()
            self.rounds.resend_if_stuck()

    # ---- inbound -----------------------------------------------------------------------
    def take_token(self, peer: str, cost: float = 1.0) -> bool:
        """Rate limit per connection and per source address (``peer`` is gRPC's
        ``ipv4:HOST:PORT``); False when either is over its budget."""
        return self.limiter.take(peer, cost)

    def handle_envelope(self, env: node_pb2.Envelope) -> bool:
        """Process one gossiped envelope; True if fresh. Raises ``Rejected`` on bad input."""
        kind, payload = env.kind, bytes(env.payload)
        check_size(payload, kind)  # cheap rejections first, then the seen-set, then JSON
        if self.gossip.is_seen(kind, payload):
            return False
        obj = parse_payload(payload, kind)
        fresh: bool | None = False
        if kind in ("tx", "txs"):
            with self.chain.sigs.active():
                if kind == "tx":
                    txs = [parse_tx(obj, self.chain_id)]
                else:
                    unknown = self._unknown(check_batch(obj))
                    txs = parse_txs(unknown, self.chain_id) if unknown else []
            admitted = self._admit(txs, env.origin)
            fresh = any(reason is None for _, reason in admitted)
            if kind == "txs":  # its new txs are in the outbox: the batch is not re-sent
                self.gossip.mark_seen(kind, payload)
                return fresh
        elif kind == "block":
            block = signed("block", Block.from_dict,
                           lambda b: b.header.verify_signature(self.chain_id), obj,
                           (ValueError, TypeError, AttributeError))
            with self._lock:
                fresh = self.rounds.on_block(block)
                self._step()
        elif kind == "vote":
            vote = signed("vote", Vote.from_dict, lambda v: v.verify(self.chain_id), obj)
            with self._lock:
                fresh = self.rounds.on_vote(vote)
                self._step()
        else:  # announce
            ann = signed("announcement", Announcement.from_dict,
                         lambda a: a.verify(self.chain_id), obj)
            with self._lock:
                # only keys registered in that Brain may use this node's disk and its
                # peers' bandwidth (issue #15): anyone else's is refused, not stored
                if self.chain.state.get("reg", (ann.brain, ann.address)) is None:
                    raise Rejected(f"announcer is not registered in Brain #{ann.brain}")
                fresh = self.store.put_announcement(ann.brain, ann.address, ann.endpoint,
                                                    ann.seq, ann.to_dict())
        # A tx the ledger refuses now (e.g. its predecessor has not arrived yet) may be
        # admissible later, so only admitted txs are remembered as seen; likewise a block or
        # vote kept out only for now (too far ahead, buffer full: None) is not, so its
        # re-sending gets through later.
        if fresh is not None and (kind != "tx" or fresh):
            self.gossip.mark_seen(kind, payload)
        if fresh:
            self.gossip.broadcast(env, exclude=env.origin)
        return bool(fresh)

    def hello(self, req: node_pb2.HelloRequest) -> node_pb2.HelloReply:
        """Answer a peer's Hello: add it (alive again), tell it our height and peers."""
        if req.genesis_hash != self.genesis.genesis_hash():
            raise Rejected("different genesis")
        with self._lock:
            if req.listen:
                self._add_peer(req.listen)
                p = self.gossip.peers.get(req.listen)
                if p is not None:  # it just called us: alive again, gossip to it
                    p.height, p.address, p.failures = req.height, req.address, 0
            peers = self.gossip.live_peers()
            return node_pb2.HelloReply(genesis_hash=self.genesis.genesis_hash(),
                                       address=self.address, height=self.chain.height,
                                       peers=peers[: self.config.max_peers])

    def blocks(self, lo: int, hi: int) -> Iterator[node_pb2.BlockWithVotes]:
        """Serve GetBlocks: final blocks ``lo..hi`` with their certificates."""
        hi = min(hi, lo + MAX_SYNC_BATCH - 1)  # what sync asks for at most
        for h in range(max(lo, 1), hi + 1):
            with self._lock:
                if h > self.chain.height:
                    return
                record = self.chain.block_record(h)  # the stored canonical bytes
                cert = self.store.cert(h)
            if record is None:
                return
            votes = cert[1] if cert is not None and cert[0] == record[0] else []
            yield node_pb2.BlockWithVotes(block=record[1], votes=json.dumps(votes).encode())


def _wait(context: grpc.ServicerContext) -> float:
    """How long a client's call may wait for a tft_report's derivation: ``REPRODUCE_WAIT``,
    less if the call's deadline comes first (a second is left to answer)."""
    left = context.time_remaining()
    return REPRODUCE_WAIT if left is None else max(0.0, min(REPRODUCE_WAIT, left - 1.0))


class _Servicer(node_pb2_grpc.NodeServicer):
    """gRPC face of a ``Node``: rate limit, then map ``Rejected`` to INVALID_ARGUMENT."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def _guard(self, context: grpc.ServicerContext, cost: float = 1.0) -> None:
        if not self.node.take_token(context.peer(), cost):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "rate limit exceeded")

    def _reject(self, context: grpc.ServicerContext, e: Exception) -> None:
        self.node.counters["rejected"] += 1
        if not isinstance(e, Rejected):  # a case the parsers missed: log it, still refuse
            log.exception("peer %s: unexpected error on its message", context.peer())
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e)[:500])

    def Hello(self, request: node_pb2.HelloRequest, context: grpc.ServicerContext
              ) -> node_pb2.HelloReply:
        self._guard(context)
        try:
            return self.node.hello(request)
        except Rejected as e:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
            raise  # unreachable: abort raises

    def Gossip(self, request: node_pb2.Envelope, context: grpc.ServicerContext
               ) -> node_pb2.GossipReply:
        self._guard(context)
        try:
            return node_pb2.GossipReply(fresh=self.node.handle_envelope(request))
        except Exception as e:  # any failure on a peer's message is a rejection (#15)
            self._reject(context, e)
            raise

    def GetBlocks(self, request: node_pb2.BlocksRequest, context: grpc.ServicerContext
                  ) -> Iterator[node_pb2.BlockWithVotes]:
        self._guard(context)
        yield from self.node.blocks(request.from_height, request.to_height)

    def Status(self, request: node_pb2.Empty, context: grpc.ServicerContext
               ) -> node_pb2.JsonReply:
        self._guard(context)
        return node_pb2.JsonReply(json=json.dumps(self.node.status()))

    def SubmitTx(self, request: node_pb2.TxRequest, context: grpc.ServicerContext
                 ) -> node_pb2.SubmitReply:
        self._guard(context)
        try:
            with self.node.chain.sigs.active():  # checked here once, found in submit
                tx = parse_tx(parse_payload(bytes(request.tx), "tx"), self.node.chain_id)
            reason = self.node.submit(tx, _wait(context))
        except Exception as e:  # any failure on a client's tx is a rejection (#15)
            self._reject(context, e)
            raise
        return node_pb2.SubmitReply(accepted=reason is None, reason=reason or "",
                                    tx_hash=tx.tx_hash().hex())

    def SubmitTxs(self, request: node_pb2.TxsRequest, context: grpc.ServicerContext
                  ) -> node_pb2.SubmitTxsReply:
        n = len(request.txs)
        self._guard(context, max(1.0, -(-n // TXS_PER_TOKEN)))
        if not 0 < n <= MAX_TX_BATCH:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"a batch holds 1..{MAX_TX_BATCH} txs, not {n}")
        txs: list[Tx | None] = []
        reasons: list[str | None] = []
        for raw in request.txs:  # a malformed tx is refused alone, the rest still judged
            try:
                tx = Tx.from_dict(parse_payload(bytes(raw), "tx"))
                tx.check_format()  # before anything encodes it (a float fee cannot be)
                txs.append(tx)
                reasons.append(None)
            except (Rejected, TxFormatError, TypeError, AttributeError) as e:
                txs.append(None)
                reasons.append(str(e)[:500])
        try:
            ok = [(i, tx) for i, tx in enumerate(txs) if tx is not None]
            for (i, _), reason in zip(ok, self.node.submit_many([tx for _, tx in ok],
                                                                _wait(context)),
                                      strict=True):
                reasons[i] = reason
        except Exception as e:  # any failure on a client's txs is a rejection (#15)
            self._reject(context, e)
            raise
        return node_pb2.SubmitTxsReply(replies=[
            node_pb2.SubmitReply(accepted=reason is None, reason=reason or "",
                                 tx_hash=tx.tx_hash().hex() if tx is not None else "")
            for tx, reason in zip(txs, reasons, strict=True)])

    def Account(self, request: node_pb2.AccountRequest, context: grpc.ServicerContext
                ) -> node_pb2.JsonReply:
        self._guard(context)
        return node_pb2.JsonReply(json=json.dumps(self.node.account(request.address)))

    def Brain(self, request: node_pb2.BrainRequest, context: grpc.ServicerContext
              ) -> node_pb2.JsonReply:
        self._guard(context)
        info = self.node.brain_info(request.brain)
        if info is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no Brain #{request.brain}")
        return node_pb2.JsonReply(json=json.dumps(info))

    def Directory(self, request: node_pb2.BrainRequest, context: grpc.ServicerContext
                  ) -> node_pb2.JsonReply:
        self._guard(context)
        return node_pb2.JsonReply(json=json.dumps(self.node.directory(request.brain)))
