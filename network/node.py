"""The P2P node (SPEC N1, issue #8): gossip, sync, block production and finality over gRPC.

One ``Node`` owns one ledger ``Chain`` (``data_dir/chain.db``) and its own ``NodeStore``
(``data_dir/node.db``: finality certificates, its validator's votes, equivocation evidence,
the miner directory), so a node killed at any point restarts where it was.

Apply / fork rule — **finalize, then apply** (why: no block is ever reverted, so the
ledger needs no fork choice and every applied block is final):

1. A *proposal* for height h = head + 1 is a signed block whose proposer is in the voting
   set of h (``network.finality``). Valid = the ledger's full check against the head
   passes (dry run) and its time is not in the future by more than ``MAX_DRIFT`` seconds.
2. *Rounds*. Round 0 of h opens at ``anchor + block_interval`` (anchor = when this node
   applied the parent, or started); round r+1 begins when round r has lasted
   ``round_timeout`` on the local clock. A node that has seen votes of height h from
   validators with > 1/3 of the stake in rounds ≥ r' (so at least one honest one is there)
   jumps to r' (its timer restarts there); one Byzantine validator alone cannot push it.
   Rounds are labels: safety never depends on clocks.
3. *Proposing*. The validator of proposer rank k proposes once per height, from round k
   on, and only while it has not voted at h.
4. *Two-phase voting* (Tendermint, Buchman–Kwon–Milosevic 2018). At most one prevote and
   one precommit per (h, round), each persisted before it is sent, so a restart can never
   make a validator double-sign or forget its lock. A *POL* for B in round r is prevotes
   for (h, r, B) from ≥ 2/3 of the stake. *Prevote* in round r: locked on A since round L
   (its latest precommit) → the block of the highest-round POL it has seen if that round
   is ≥ L, else A; not locked → the highest POL's block if any, else the lowest-ranked
   valid proposal whose rank ≤ r, skipping proposers caught with two blocks at h.
   *Precommit* B in round r (this node's current round) once it sees a POL for B in
   round r and holds B, valid: that is also its new lock. Each round timeout it re-sends
   its latest prevote and precommit, the prevotes of the highest POL it knows, and those
   blocks (gossip is fire-and-forget; a restarting or partitioned peer may have missed
   them, and a POL is what lets a validator locked in an older round move).
5. A block is *final* once precommits from ≥ 2/3 of the voting set's stake for the same
   (h, round, hash) are seen; only then is it applied, with those precommits stored
   first as its certificate. Head = finalized height; a final block is never reverted.
6. *Sync*: a node behind a peer (peer heights come with Hello, every ``hello_interval``)
   fetches blocks with their certificates by GetBlocks and applies each one whose
   certificate holds, within one round, precommits from a quorum of the voting set it
   computes itself. Heights are unsigned claims: a peer whose answer brings no block is
   backed off and others are asked (``_sync_once``).
7. *Equivocation*: a second, different, validly signed block by the same proposer for the
   same height is recorded as evidence (``node.db``, ``status()``); the proposer is no
   longer anyone's free choice at h (its blocks are kept — two per proposer — in case a
   POL forms for one). *Double signing*: a second, different vote by one validator for
   one (h, round, phase) is recorded (``vote_evidence``) and, by a validator node, put
   on chain as an ``evidence`` tx, which the ledger checks and turns into a slash
   (``ledger.rules._evidence``); the tx is re-submitted until the offender is
   tombstoned. Both votes still count in quorums (safe: see below).

Safety (at most one final block per height while the Byzantine stake f is < 1/3). Two
sets of ≥ 2/3 of the stake share > 1/3, hence an honest validator. (i) Two blocks final
in one round would need an honest validator to precommit twice in it. (ii) Say A is final
in round r0. Claim: no POL for a block B ≠ A exists in any round r ≥ r0. In r0 the POL for
A (which every honest precommitter of A saw) and one for B would share an honest
validator, which prevotes once per round. In r > r0: A's honest precommitters in r0 hold
> 2/3 − f > 1/3 of the stake and are locked on A since a round ≥ r0; by induction they see
no POL for another block in a round ≥ their lock, so they prevote A, and prevotes for B
come from the rest, < 2/3. So no honest validator precommits B in a round ≥ r0 and B is
never final there; B final in an earlier round is the same argument with A and B
swapped. Counting a double-signer's conflicting votes in both places changes nothing:
the argument only uses honest votes.
Liveness: after the partition heals and messages arrive within a round, everyone learns
the highest POL (re-sent each round), prevotes its block (locked validators included,
as their locks are ≤ it), and it gets 2/3 precommits; with no POL at all, everyone is
unlocked and prevotes the same lowest-ranked proposal of an honest proposer.

Fault model: Byzantine validators with < 1/3 of the voting stake (double signing,
equivocating proposals, withheld or selectively sent messages), plus crashes, restarts,
CPU starvation and delayed or lost messages. Not built: evidence of a proposer's two
blocks is kept in ``node.db`` but not slashed (only votes are, SPEC N1).

Robustness: gRPC messages over ``MAX_MESSAGE`` bytes are refused by gRPC itself
(RESOURCE_EXHAUSTED); per-kind payload limits, malformed JSON and bad signatures give
INVALID_ARGUMENT; every peer connection has a token bucket, and so has every source
address over all its connections (``per_address`` × the connection's; over either:
RESOURCE_EXHAUSTED, the message is dropped and counted); any other error while handling a peer's message is
logged and refused the same way, never left to stop the loop; fresh gossip goes to at most
``fanout`` peers; the seen-set, mempool (and each sender's share of it, ``_admit``), peer
table, proposal and vote buffers are all bounded.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import queue
import random
import re
import signal
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc

from ledger.block import Block
from ledger.chain import Chain, InvalidBlock
from ledger.encoding import canonical
from ledger.genesis import Genesis
from ledger.keys import Wallet
from ledger.rules import apply_block as dry_run_block
from ledger.tx import Tx, TxFormatError, make_tx
from network.finality import (
    MAX_ROUND,
    PHASES,
    PRECOMMIT,
    PREVOTE,
    Announcement,
    Vote,
    has_quorum,
    more_than_a_third,
    proposer_ranking,
    voting_set,
)
from network.protos import node_pb2, node_pb2_grpc
from network.store import NodeStore

log = logging.getLogger("cerberus.network")

T = TypeVar("T")

MAX_MESSAGE = 4 * 1024 * 1024  # gRPC refuses anything larger (RESOURCE_EXHAUSTED)
PAYLOAD_LIMITS = {"tx": 16 * 1024, "vote": 1024, "announce": 2048, "block": 3 * 1024 * 1024}
MAX_DRIFT = 10  # seconds a proposal's time may be ahead of this node's clock
SEEN_CAP = 50_000  # dedup set size (oldest forgotten first)
VOTE_WINDOW = 16  # heights ahead of the head for which proposals/votes are buffered
MAX_HASHES_PER_HEIGHT = 16  # blocks per height, and hashes per (height, round, phase)
MAX_BLOCKS_PER_PROPOSER = 2  # per height: the first, and one more as evidence (more only
# once > 1/3 of the stake voted for it)
MAX_ROUNDS_KEPT = 64  # rounds of votes kept per height (the lowest dropped first, never the
# round of the highest POL; a POL seen is remembered apart from the buffer)
MAX_ROUND_AHEAD = 4  # votes further ahead of this node's round wait until it gets there
# (the round-jump rule still sees them)
MAX_PENDING_EVIDENCE = 64  # offenders this node has an evidence tx in flight for
EVIDENCE_RETRY = 3  # heights after which evidence not in the mempool nor on chain is re-sent
MAX_VOTERS = 1024  # votes kept per (height, hash); a voting set is far smaller in practice
MAX_SYNC_BATCH = 128  # blocks per GetBlocks call
MAX_SYNC_TRIES = 3  # peers asked per sync round
MAX_SYNC_BACKOFF = 30.0  # seconds a peer whose answer brought no block may be passed over
MAX_BUCKETS = 1024
MAX_REGOSSIP = 64  # pending mempool txs re-sent per announce_interval
MAX_PENDING_PER_SENDER = 64  # one key cannot fill the mempool (issue #15)
PEER_RE = re.compile(r"^[A-Za-z0-9.\-]{1,253}:[0-9]{1,5}$")
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
    # A restarted peer must be reachable again within about a second, not minutes.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


class Rejected(ValueError):
    """A peer's message that is malformed, oversized or badly signed (INVALID_ARGUMENT)."""


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
    max_mempool: int = 5_000
    max_block_txs: int = 1_000
    mempool_ttl: float = 300.0
    workers: int = 16


class TokenBucket:
    """Classic token bucket: ``rate`` tokens/s up to ``burst``; one token per message."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = burst
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


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


def _json(payload: bytes, kind: str) -> Any:
    """Parse a peer's JSON payload with its kind's size limit, or raise ``Rejected``."""
    limit = PAYLOAD_LIMITS.get(kind)
    if limit is None:
        raise Rejected(f"unknown envelope kind {kind!r}")
    if len(payload) > limit:
        raise Rejected(f"{kind} payload of {len(payload)} bytes exceeds {limit}")
    try:
        return json.loads(payload)
    except (ValueError, RecursionError, UnicodeDecodeError) as e:
        raise Rejected(f"malformed {kind} JSON: {e}") from e


def _signed(what: str, parse: Callable[[Any], T], verify: Callable[[T], bool], obj: Any,
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


def _parse_tx(obj: Any, chain_id: str) -> Tx:
    def parse(o: Any) -> Tx:
        tx = Tx.from_dict(o)
        tx.check_format()
        return tx

    return _signed("tx", parse, lambda tx: tx.verify_signature(chain_id), obj,
                   (TxFormatError, TypeError, AttributeError))


def _seen_key(kind: str, payload: bytes) -> bytes:
    """What the dedup set remembers of a gossiped message."""
    return hashlib.sha256(kind.encode() + b"\0" + payload).digest()


class Node:
    """A P2P node: see the module docstring for the rules it follows."""

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
        self._mempool: OrderedDict[bytes, tuple[Tx, float]] = OrderedDict()
        self._by_sender: dict[str, dict[int, bytes]] = {}  # sender → nonce → mempool key
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        # height → hash → block (heights head+1 .. head+VOTE_WINDOW)
        self._proposals: dict[int, dict[str, Block]] = {}
        self._validity: dict[str, str | None] = {}  # hash → None (valid) or reason
        self._by_proposer: dict[tuple[int, str], list[str]] = {}
        self._equivocators: dict[int, set[str]] = {}  # height → proposers of two blocks
        # height → (round, phase) → hash → voter → vote
        self._votes: dict[int, dict[tuple[int, str], dict[str, dict[str, Vote]]]] = {}
        # height → (round, phase, voter) → the first vote seen (double-sign detection)
        self._cast: dict[int, dict[tuple[int, str, str], Vote]] = {}
        self._peer_round: dict[int, dict[str, int]] = {}  # height → member → highest round
        # height → the highest POL seen: (round, block hash, its prevotes)
        self._valid: dict[int, tuple[int, str, list[Vote]]] = {}
        # offender → (first vote, second vote, height when submitted, evidence tx hash)
        self._reports: dict[str, tuple[dict[str, Any], dict[str, Any], int, bytes]] = {}
        # the latest round this node jumped to at head+1 (where > 1/3 of the stake is)
        self._jump: tuple[int, float] = (-1, 0.0)
        self._proposed: set[int] = set()
        self._weights_at: tuple[str, dict[str, int]] = ("", {})
        self._ranking_at: tuple[str, list[str]] = ("", [])
        self._head_since = time.time()
        self._peers: dict[str, Peer] = {}
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._out: queue.Queue[tuple[Peer, node_pb2.Envelope]] = queue.Queue(maxsize=4096)
        self._my_announcements: dict[int, str] = {}
        self._last_announce = 0.0
        self._last_hello = 0.0
        self._last_resend = 0.0
        self._last_regossip = 0.0
        self.counters = {"rate_limited": 0, "rejected": 0, "dropped_out": 0}
        self._server: grpc.Server | None = None
        self._threads: list[threading.Thread] = []
        self._resume_round()
        self.port = config.port
        self.listen = ""

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
            self._head_since = time.time()
            self._resume_round()
        self._threads = [threading.Thread(target=self._loop, name="node-loop", daemon=True)]
        self._threads += [threading.Thread(target=self._sender, name=f"node-send-{i}",
                                           daemon=True) for i in range(4)]
        for t in self._threads:
            t.start()
        log.info("node %s listening on %s (height %d)", self.address or "-", self.listen,
                 self.chain.height)
        return port

    def stop(self) -> None:
        """Stop serving and close the databases (idempotent)."""
        self._stop.set()
        if self._server is not None:
            self._server.stop(grace=0.5).wait(2.0)
            self._server = None
        for t in self._threads:
            t.join(timeout=3.0)
        self._threads = []
        with self._lock:
            for p in self._peers.values():
                if p.channel is not None:
                    p.channel.close()
            self.chain.close()
            self.store.close()

    # ---- public API --------------------------------------------------------------------
    def read(self, fn: Callable[[Chain], T]) -> T:
        """Run ``fn(chain)`` under the node's lock (``Chain`` is not thread-safe)."""
        with self._lock:
            return fn(self.chain)

    def submit(self, tx: Tx) -> str | None:
        """Admit ``tx`` to the mempool and gossip it; returns the reason if rejected."""
        try:
            tx.check_format()
        except TxFormatError as e:
            return str(e)
        if not tx.verify_signature(self.chain_id):
            return "bad tx signature"
        with self._lock:
            reason = self._admit(tx)
        if reason is None:
            payload = canonical(tx.to_dict())
            self._mark_seen("tx", payload)
            self._broadcast(node_pb2.Envelope(kind="tx", payload=payload))
        return reason

    def status(self) -> dict[str, Any]:
        """Height, finalized height, state root, head hash, peers, address, evidence."""
        with self._lock:
            weights = self._weights()
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
                "peers": sorted(p.listen for p in self._peers.values() if p.failures == 0),
                "known_peers": sorted(self._peers),
                "mempool": len(self._mempool),
                "validators": weights,
                "round": self._current_round(),  # at height + 1
                "my_vote": self._my_vote_info(PREVOTE),
                "my_precommit": self._my_vote_info(PRECOMMIT),  # = the lock
                "pol": (None if (v := self._valid.get(self.chain.height + 1)) is None
                        else {"round": v[0], "hash": v[1]}),
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
            nonce = self.chain.nonce(address)
            queued = self._by_sender.get(address, {})
            pending = nonce
            while pending in queued:  # bounded by MAX_PENDING_PER_SENDER
                pending += 1
            return {"address": address, "balance": self.chain.balance(address),
                    "nonce": nonce, "pending_nonce": pending, "height": self.chain.height}

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

    # ---- mempool -----------------------------------------------------------------------
    def _admit(self, tx: Tx) -> str | None:
        """Mempool admission (lock held; format and signature already checked).

        Why so strict (issue #15): whatever is admitted is also gossiped and re-gossiped,
        so a cheap way in is a flood of the whole network. Hence: one tx per (sender,
        nonce) — another at a pending nonce only *replaces* it, and only with a higher
        fee; a sender's pending txs are a run of nonces from its account nonce, at most
        ``MAX_PENDING_PER_SENDER`` long; and the run with ``tx`` in it must apply in order
        on the head's state (``Chain.validate_txs``, the pending-state overlay), so the
        balance covers every pending amount and fee and a tx ahead of the account's nonce
        passes its rule before it is admitted or gossiped."""
        h = tx.tx_hash()
        if h in self._mempool:
            return None
        current = self.chain.nonce(tx.sender)
        if tx.nonce < current:
            return f"bad nonce: {tx.nonce} is used, the next is {current}"
        pending = self._by_sender.get(tx.sender, {})
        run = [self._mempool[pending[n]][0]
               for n in range(current, current + len(pending)) if n in pending]
        i = tx.nonce - current
        if i > len(run):
            return f"nonce {tx.nonce} is ahead of the next ({current}) + {len(run)} pending"
        old = run[i] if i < len(run) else None
        if old is not None and tx.fee <= old.fee:
            return (f"a tx at nonce {tx.nonce} is pending; a replacement needs a fee above "
                    f"{old.fee}")
        if old is None and len(run) >= MAX_PENDING_PER_SENDER:
            return f"{len(run)} txs of this sender are pending (at most " \
                   f"{MAX_PENDING_PER_SENDER})"
        if old is None and len(self._mempool) >= self.config.max_mempool:
            return "mempool full"
        bad = self.chain.validate_txs([*run[:i], tx, *run[i + 1:]])
        if bad is not None:
            j, reason = bad
            if j < i:  # an older pending tx no longer applies (the head moved): drop it on
                for t in run[j:]:
                    self._pool_remove(t)
                return f"pending tx at nonce {current + j} no longer applies: {reason}"
            return reason
        if old is not None:
            self._pool_remove(old)
        self._mempool[h] = (tx, time.monotonic())
        self._by_sender.setdefault(tx.sender, {})[tx.nonce] = h
        return None

    def _pool_remove(self, tx: Tx) -> None:
        """Drop ``tx`` from the mempool and its sender index (lock held)."""
        self._mempool.pop(tx.tx_hash(), None)
        by_nonce = self._by_sender.get(tx.sender, {})
        if by_nonce.get(tx.nonce) == tx.tx_hash():
            del by_nonce[tx.nonce]
            if not by_nonce:
                del self._by_sender[tx.sender]

    def _block_txs(self) -> list[Tx]:
        """Mempool txs for a block: senders in arrival order, each sender's by nonce."""
        first: dict[str, int] = {}
        txs = [t for t, _ in self._mempool.values()]
        for i, t in enumerate(txs):
            first.setdefault(t.sender, i)
        txs.sort(key=lambda t: (first[t.sender], t.nonce))
        return txs[: self.config.max_block_txs]

    def _prune_mempool(self) -> None:
        """Drop used nonces and expired txs, and a sender's txs after a gap (they can no
        longer apply), so each sender's pending txs stay a run from its account nonce."""
        now = time.monotonic()
        for sender, by_nonce in list(self._by_sender.items()):
            expect = self.chain.nonce(sender)
            for nonce in sorted(by_nonce):
                t, added = self._mempool[by_nonce[nonce]]
                if nonce == expect and now - added <= self.config.mempool_ttl:
                    expect += 1
                else:
                    self._pool_remove(t)

    # ---- consensus ---------------------------------------------------------------------
    def _weights(self) -> dict[str, int]:
        """Voting set for the next height (lock held); computed once per head."""
        if self._weights_at[0] != self.chain.head_hash:
            self._weights_at = (self.chain.head_hash,
                                voting_set(self.chain.validator_set(), self.genesis))
        return self._weights_at[1]

    def _ranking(self) -> list[str]:
        """Proposer ranking for the next height (lock held); computed once per head."""
        if self._ranking_at[0] != self.chain.head_hash:
            self._ranking_at = (self.chain.head_hash,
                                proposer_ranking(self.chain.head_hash, self._weights()))
        return self._ranking_at[1]

    def _round_open(self, rank: int) -> float:
        anchor = max(self._head_since, float(self.chain.state.meta("time")))
        return anchor + self.interval + rank * self.config.round_timeout

    def _current_round(self) -> int:
        """This node's round at head+1 (lock held): the timer's, or later after a jump.
        Before round 0 opens this is 0 (a rank-0 proposal may be voted as it arrives)."""
        now = time.time()
        rt = max(self.config.round_timeout, 1e-3)
        start = self._round_open(0)
        r = int((now - start) // rt) if now >= start else 0
        jumped, since = self._jump
        if jumped >= 0:
            r = max(r, jumped + int((now - since) // rt))
        return min(r, MAX_ROUND)

    def _resume_round(self) -> None:
        """After a (re)start, continue from the round of this validator's own latest vote
        at head+1, so its rounds never go backwards (lock held or not started)."""
        last = self.store.last_round(self.chain.height + 1)
        self._jump = (last, time.time()) if last is not None else (-1, 0.0)

    def _my_vote_info(self, phase: str = PREVOTE) -> dict[str, Any] | None:
        """This validator's latest ``phase`` vote at head+1 (for precommits: its lock)."""
        h = self.chain.height + 1
        last = self.store.last_vote(h, phase) if self.wallet is not None else None
        return None if last is None else {"height": h, "round": last[0], "hash": last[1]}

    def _on_block(self, block: Block) -> bool | None:
        """Record a signed block from a peer or ourselves: True if stored (new), False if
        not usable, None if it may be usable later (do not mark it seen)."""
        h, proposer, bh = block.height, block.header.proposer, block.block_hash()
        head = self.chain.height
        if h <= head:
            final = self.chain.block(h)
            if final is not None and final.header.proposer == proposer \
                    and final.block_hash() != bh:
                self._record_equivocation(final, block)
            return False
        if h > head + VOTE_WINDOW:
            return None
        # Only proposers of the current voting set get buffer space (else anyone with a
        # key could fill it); a set change makes a later height fall back to sync/rounds.
        if proposer not in self._weights():
            return False
        at_h = self._proposals.setdefault(h, {})
        if bh in at_h:
            return False
        mine = self._by_proposer.setdefault((h, proposer), [])
        if mine:
            # a second block by one proposer at h: evidence, and the proposer is no longer
            # anyone's free choice at h; the block is still kept (two per proposer, more
            # only once > 1/3 of the stake voted for it) because a POL may form for it
            first = at_h.get(mine[0])
            if first is not None:
                self._record_equivocation(first, block)
            self._equivocators.setdefault(h, set()).add(proposer)
            if len(mine) >= MAX_BLOCKS_PER_PROPOSER and not self._backed(h, bh):
                return None
        if len(at_h) >= MAX_HASHES_PER_HEIGHT and not self._backed(h, bh):
            return None
        mine.append(bh)
        at_h[bh] = block
        return True

    def _backed(self, height: int, block_hash: str) -> bool:
        """Whether validators with > 1/3 of the stake voted for ``block_hash`` at ``height``
        (some honest one did, so the block may be needed however full the buffer is)."""
        voters = {v for (_r, _p), by_hash in self._votes.get(height, {}).items()
                  for v in by_hash.get(block_hash, {})}
        return more_than_a_third(voters, self._weights())

    def _record_equivocation(self, first: Block, second: Block) -> None:
        if self.store.add_evidence(second.height, second.header.proposer, first.block_hash(),
                                   second.block_hash(),
                                   [first.to_dict()["header"], second.to_dict()["header"]]):
            log.warning("equivocation by %s at height %d", second.header.proposer,
                        second.height)

    def _check_proposal(self, block: Block, ranking: list[str]) -> str | None:
        """Why this node must not vote for ``block`` at head+1, or None (cached by hash)."""
        bh = block.block_hash()
        if bh in self._validity:
            return self._validity[bh]
        reason: str | None = None
        if block.header.proposer not in ranking:
            reason = "proposer is not in the voting set"
        elif block.header.time > time.time() + MAX_DRIFT:
            reason = "block time is in the future"
        else:
            try:
                dry_run_block(self.chain.state, block, self.genesis, self.chain.head_hash)
            except InvalidBlock as e:
                reason = str(e)
            except Exception as e:  # a peer's block must never stop this node voting
                log.exception("proposal %s failed its check unexpectedly", bh[:12])
                reason = f"check failed: {e!r}"
        self._validity[bh] = reason
        return reason

    def _usable(self, height: int, block_hash: str) -> Block | None:
        """The block ``block_hash`` at head+1 if this node holds it and it is valid."""
        block = self._proposals.get(height, {}).get(block_hash)
        if block is None or self._check_proposal(block, self._ranking()) is not None:
            return None
        return block

    def _on_vote(self, vote: Vote) -> bool | None:
        """Record a signed vote: True if new (or new double-signing evidence), False if
        useless, None if it may be usable later (not marked seen; it will be re-sent)."""
        head, h = self.chain.height, vote.height
        if h <= head:
            return False
        if h > head + VOTE_WINDOW:
            return None
        weights = self._weights()
        if vote.voter not in weights:  # same bound as for proposals
            return False
        # the round-jump rule sees every member's highest round (one int per member)
        seen_round = self._peer_round.setdefault(h, {})
        if vote.round > seen_round.get(vote.voter, -1):
            seen_round[vote.voter] = vote.round
            if h == head + 1:
                self._maybe_jump(h)
        if h == head + 1 and vote.round > self._current_round() + MAX_ROUND_AHEAD:
            return None  # far ahead of us: kept only once we get there (re-sent)
        key = (vote.round, vote.phase, vote.voter)
        cast = self._cast.setdefault(h, {})
        first = cast.get(key)
        if first is not None:
            if first.block_hash == vote.block_hash:
                return False
            # double signing: evidence — and the vote still counts where it was cast.
            # Counting both is safe: two quorums (≥ 2/3 each) share > 1/3 of the stake,
            # so an honest validator, which signs one, is in both only for one block.
            self._on_double_sign(first, vote)
        rounds = self._votes.setdefault(h, {})
        kept = {r for r, _ in rounds}
        if vote.round not in kept and len(kept) >= MAX_ROUNDS_KEPT:
            protect = self._valid.get(h, (-1, "", []))[0]
            evictable = sorted(r for r in kept if r != protect)
            if not evictable or vote.round < evictable[0]:
                return None
            self._drop_round(h, evictable[0])
        by_hash = rounds.setdefault((vote.round, vote.phase), {})
        if vote.block_hash not in by_hash and len(by_hash) >= MAX_HASHES_PER_HEIGHT:
            return None
        voters = by_hash.setdefault(vote.block_hash, {})
        if len(voters) >= MAX_VOTERS:
            return None
        if vote.voter in voters:
            return False
        voters[vote.voter] = vote
        cast.setdefault(key, vote)
        if vote.phase == PREVOTE and h == head + 1:
            self._note_pol(h, vote.round, vote.block_hash)
        return True

    def _drop_round(self, height: int, round_: int) -> None:
        """Forget the votes of one round at ``height`` (the vote buffer's bound)."""
        rounds = self._votes.get(height, {})
        for key in [k for k in rounds if k[0] == round_]:
            del rounds[key]
        cast = self._cast.get(height, {})
        for key in [k for k in cast if k[0] == round_]:
            del cast[key]

    def _note_pol(self, height: int, round_: int, block_hash: str) -> None:
        """Remember the highest-round POL (≥ 2/3 prevotes for one block in one round) seen
        at ``height``: the block a validator locked below it must prevote (rule 4)."""
        voters = self._votes.get(height, {}).get((round_, PREVOTE), {}).get(block_hash, {})
        if round_ > self._valid.get(height, (-1, "", []))[0] \
                and has_quorum(list(voters), self._weights()):
            self._valid[height] = (round_, block_hash, list(voters.values()))

    def _maybe_jump(self, height: int) -> None:
        """Join round r once validators with > 1/3 of the stake were seen in rounds ≥ r (at
        least one honest validator is there, so a Byzantine one alone cannot push this
        node ahead; Tendermint's f+1 rule)."""
        weights = self._weights()
        total, acc = sum(weights.values()), 0
        for voter, r in sorted(self._peer_round.get(height, {}).items(),
                               key=lambda item: -item[1]):
            acc += weights.get(voter, 0)
            if 3 * acc > total:
                if r > self._current_round():
                    self._jump = (r, time.time())
                return

    def _on_double_sign(self, first: Vote, second: Vote) -> bool:
        """Two signed votes by one validator for one (height, round, phase): record the
        pair, and as a validator put it on chain (slashing). True when it is new."""
        if not self.store.add_vote_evidence(first.to_dict(), second.to_dict()):
            return False
        log.warning("double signing by %s at height %d round %d (%s)", first.voter[:12],
                    first.height, first.round, first.phase)
        if self.wallet is not None and first.voter not in self._reports \
                and len(self._reports) < MAX_PENDING_EVIDENCE \
                and self.chain.state.get("tomb", first.voter) is None:
            self._reports[first.voter] = (first.to_dict(), second.to_dict(), -1, b"")
            self._submit_evidence(first.voter)
        return True

    def _submit_evidence(self, offender: str) -> None:
        """Sign an evidence tx for ``offender``'s double signing and admit + gossip it."""
        assert self.wallet is not None
        first, second, _, _ = self._reports[offender]
        nonce = self.account(self.address)["pending_nonce"]
        tx = make_tx(self.wallet, "evidence", nonce, self.chain_id, fee=self.genesis.min_fee,
                     first=first, second=second)
        reason = self._admit(tx)
        self._reports[offender] = (first, second, self.chain.height, tx.tx_hash())
        if reason is not None:
            log.info("evidence against %s not admitted: %s", offender[:12], reason)
            return
        payload = canonical(tx.to_dict())
        self._mark_seen("tx", payload)
        self._broadcast(node_pb2.Envelope(kind="tx", payload=payload))
        log.info("evidence against %s submitted", offender[:12])

    def _follow_up_evidence(self) -> None:
        """After each block: drop reports that landed (offender tombstoned) or are too old,
        re-submit one whose tx is gone from the mempool, and drop pending evidence txs that
        can no longer apply (lock held)."""
        state, head = self.chain.state, self.chain.height
        for offender, (first, _second, at, txh) in list(self._reports.items()):
            if state.get("tomb", offender) is not None \
                    or head - first["height"] > self.genesis.unbonding_blocks:
                del self._reports[offender]
            elif txh not in self._mempool and head >= at + EVIDENCE_RETRY:
                self._submit_evidence(offender)
        for tx, _ in list(self._mempool.values()):
            if tx.kind == "evidence" and state.get("tomb", tx.payload["first"]["voter"]) \
                    is not None:
                self._pool_remove(tx)

    def _cast_vote(self, height: int, round_: int, phase: str, block_hash: str) -> None:
        assert self.wallet is not None
        if not self.store.record_my_vote(height, round_, phase, block_hash):
            return  # persisted first: never two votes for one (height, round, phase)
        vote = Vote.make(self.wallet, self.chain_id, height, block_hash, round_, phase)
        self._on_vote(vote)
        payload = canonical(vote.to_dict())
        self._mark_seen("vote", payload)
        self._broadcast(node_pb2.Envelope(kind="vote", payload=payload))
        log.debug("%s %d round %d %s", phase, height, round_, block_hash[:12])

    def _step(self) -> None:
        """Finalize, propose, prevote, precommit — as far as the view allows (lock held)."""
        for _ in range(VOTE_WINDOW):
            if not self._try_finalize():
                break
        self._maybe_propose()
        self._maybe_prevote()
        self._maybe_precommit()

    def _try_finalize(self) -> bool:
        """Apply head+1 if this node holds a block with precommits from ≥ 2/3 of the
        stake in one round (rule 5)."""
        h = self.chain.height + 1
        weights = self._weights()
        for (_round, phase), by_hash in sorted(self._votes.get(h, {}).items()):
            if phase != PRECOMMIT:
                continue
            for bh, voters in by_hash.items():
                block = self._proposals.get(h, {}).get(bh)
                if block is None or not has_quorum(list(voters), weights):
                    continue
                cert = [v.to_dict() for v in voters.values() if v.voter in weights]
                self.store.put_cert(h, bh, cert)
                try:
                    self.chain.apply_block(block)
                except Exception as e:  # 2/3 signed a block this node finds invalid
                    log.error("final block %d %s does not apply here: %r", h, bh[:12], e)
                    self._proposals[h].pop(bh, None)
                    return False
                self._after_apply()
                return True
        return False

    def _after_apply(self) -> None:
        head = self.chain.height
        self._head_since = time.time()
        for table in (self._proposals, self._votes, self._cast, self._peer_round,
                      self._valid, self._equivocators):
            for h in [h for h in table if h <= head]:
                del table[h]
        self._by_proposer = {k: v for k, v in self._by_proposer.items() if k[0] > head}
        self._proposed = {h for h in self._proposed if h > head}
        self._validity.clear()
        # the new height starts at round 0, or where > 1/3 of the new voting set already
        # is (peers that finalized first); POLs buffered for it count under the new set
        self._jump = (-1, 0.0)
        h = head + 1
        self._maybe_jump(h)
        for (r, phase), by_hash in sorted(self._votes.get(h, {}).items()):
            if phase == PREVOTE:
                for bh in by_hash:
                    self._note_pol(h, r, bh)
        self._follow_up_evidence()
        self._prune_mempool()
        log.debug("height %d %s", head, self.chain.head_hash[:12])

    def _prevote_choice(self, height: int, round_: int) -> str | None:
        """The block to prevote in ``round_`` (rule 4), or None while there is none.

        Locked on A since round L (latest own precommit): the block of the highest POL
        seen if that POL's round is ≥ L, else A. Unlocked: the highest POL's block, else
        the lowest-ranked valid proposal whose rank ≤ round, skipping proposers caught
        proposing two blocks at this height (so a split they caused heals in a round)."""
        lock = self.store.last_vote(height, PRECOMMIT)
        pol = self._valid.get(height)
        if pol is not None and (lock is None or pol[0] >= lock[0]) \
                and self._usable(height, pol[1]) is not None:
            return pol[1]
        if lock is not None:
            return lock[1]
        ranking = self._ranking()
        bad = self._equivocators.get(height, set())
        best: tuple[int, str] | None = None
        for bh, block in self._proposals.get(height, {}).items():
            if block.header.proposer in bad or self._check_proposal(block, ranking):
                continue
            rank = ranking.index(block.header.proposer)
            # a later rank's block counts only once its round has opened here
            if rank <= round_ and (best is None or rank < best[0]):
                best = (rank, bh)
        return None if best is None else best[1]

    def _maybe_prevote(self) -> None:
        if self.wallet is None:
            return
        h = self.chain.height + 1
        if self.address not in self._weights():
            return
        r = self._current_round()
        if self.store.last_round(h) is not None and self.store.last_round(h) > r:
            return  # rounds only increase (a restart resumes from the latest)
        if self.store.my_vote(h, r, PREVOTE) is not None:
            return
        choice = self._prevote_choice(h, r)
        if choice is not None:
            self._cast_vote(h, r, PREVOTE, choice)

    def _maybe_precommit(self) -> None:
        """Precommit B in this round once a POL for B in this round is seen (rule 4)."""
        if self.wallet is None:
            return
        h = self.chain.height + 1
        weights = self._weights()
        if self.address not in weights:
            return
        r = self._current_round()
        if self.store.my_vote(h, r, PRECOMMIT) is not None:
            return
        for bh, voters in self._votes.get(h, {}).get((r, PREVOTE), {}).items():
            if has_quorum(list(voters), weights) and self._usable(h, bh) is not None:
                self._cast_vote(h, r, PRECOMMIT, bh)
                return

    def _maybe_propose(self) -> None:
        if self.wallet is None:
            return
        h = self.chain.height + 1
        if h in self._proposed or self.store.last_round(h) is not None:
            return
        ranking = self._ranking()
        if self.address not in ranking:
            return
        rank = ranking.index(self.address)
        now = time.time()
        # one proposal per height, from the moment this validator's round opens
        if now < self._round_open(0) or self._current_round() < rank:
            return
        t = max(int(now), int(self.chain.state.meta("time")) + 1)
        if t > now + 1:
            return
        block, rejected = self.chain.produce_block(self._block_txs(), self.wallet, t)
        for tx, _ in rejected:
            if tx.nonce <= self.chain.nonce(tx.sender):
                self._pool_remove(tx)
        self._proposed.add(h)
        self._on_block(block)
        payload = canonical(block.to_dict())
        self._mark_seen("block", payload)
        self._broadcast(node_pb2.Envelope(kind="block", payload=payload))
        log.debug("proposed %d %s (rank %d, %d txs)", h, block.block_hash()[:12], rank,
                  len(block.txs))

    def _resend_if_stuck(self) -> None:
        """Gossip is fire-and-forget: if no block was finalized for a round timeout, send
        this validator's latest prevote and precommit, the highest POL it knows (its
        prevotes) and the blocks they are for, again (identical bytes, so peers that have
        them drop them as duplicates; a peer that missed them — restarting, starved, or on
        the other side of a partition that just healed — gets them now, and with the POL
        a validator locked in an older round can move to the block the others hold)."""
        h = self.chain.height + 1
        now = time.time()
        if now - max(self._head_since, self._last_resend) < self.config.round_timeout:
            return
        self._last_resend = now
        out: list[node_pb2.Envelope] = []
        hashes: list[str] = []
        if self.wallet is not None:
            for phase in PHASES:
                last = self.store.last_vote(h, phase)
                if last is not None:
                    hashes.append(last[1])
                    vote = Vote.make(self.wallet, self.chain_id, h, last[1], last[0], phase)
                    out.append(node_pb2.Envelope(kind="vote",
                                                 payload=canonical(vote.to_dict())))
        valid = self._valid.get(h)
        if valid is not None:
            hashes.append(valid[1])
            out += [node_pb2.Envelope(kind="vote", payload=canonical(v.to_dict()))
                    for v in valid[2]]
        for bh in dict.fromkeys(hashes):
            block = self._proposals.get(h, {}).get(bh)
            if block is not None:
                out.insert(0, node_pb2.Envelope(kind="block",
                                                payload=canonical(block.to_dict())))
        for env in out:
            self._broadcast(env)

    # ---- sync --------------------------------------------------------------------------
    def _apply_synced(self, block: Block, votes: list[Any]) -> bool:
        """Apply a block from GetBlocks if its certificate is a quorum (lock held)."""
        h, bh = block.height, block.block_hash()
        if h != self.chain.height + 1:
            return False
        weights = self._weights()
        by_round: dict[int, dict[str, Vote]] = {}
        for d in votes[: 4 * len(weights) + 4]:
            try:
                v = Vote.from_dict(d)
            except ValueError:
                continue
            if v.height == h and v.block_hash == bh and v.phase == PRECOMMIT \
                    and v.voter in weights and v.verify(self.chain_id):
                by_round.setdefault(v.round, {})[v.voter] = v
        # a quorum must be within one round: votes of different rounds do not add up
        good = next((vs for vs in by_round.values() if has_quorum(list(vs), weights)), None)
        if good is None:
            log.warning("synced block %d lacks a quorum certificate", h)
            return False
        self.store.put_cert(h, bh, [v.to_dict() for v in good.values()])
        try:
            self.chain.apply_block(block)
        except InvalidBlock as e:
            log.warning("synced block %d invalid: %s", h, e)
            return False
        self._after_apply()
        return True

    def _sync_once(self) -> None:
        """Catch up from peers that claim to be ahead (lock not held).

        Heights are unsigned claims (Hello), so the highest is not trusted (issue #15): a
        peer whose answer brings this node no block (empty, junk, no certificate, an RPC
        error) is backed off for 2^k hello intervals (at most ``MAX_SYNC_BACKOFF``) with its
        claim lowered to our height, and the next peer is asked — at most
        ``MAX_SYNC_TRIES`` per round, fewest recent failures first. A liar costs a bounded
        number of calls, never the sync."""
        with self._lock:
            mine = self.chain.height
            now = time.monotonic()
            ahead = [p for p in self._peers.values() if p.height > mine and p.failures == 0
                     and p.stub is not None and now >= p.sync_after]
        ahead.sort(key=lambda p: (p.sync_failures, -p.height))
        for peer in ahead[:MAX_SYNC_TRIES]:
            if self._stop.is_set():
                return
            self._sync_from(peer, mine)
            with self._lock:
                if self.chain.height > mine:  # progress, from this peer or by gossip
                    peer.sync_failures = 0
                    return
                peer.sync_failures = min(peer.sync_failures + 1, 16)
                peer.sync_after = time.monotonic() + min(
                    MAX_SYNC_BACKOFF, self.config.hello_interval * 2 ** peer.sync_failures)
                peer.height = min(peer.height, mine)
                log.info("sync from %s brought no block: passed over for a while",
                         peer.listen)

    def _sync_from(self, peer: Peer, mine: int) -> None:
        """Apply the blocks after ``mine`` that ``peer`` sends, while they hold."""
        to = min(peer.height, mine + MAX_SYNC_BATCH)
        assert peer.stub is not None
        try:
            items = list(peer.stub.GetBlocks(
                node_pb2.BlocksRequest(from_height=mine + 1, to_height=to), timeout=10.0))
        except (grpc.RpcError, ValueError) as e:  # ValueError: channel closed (evicted)
            log.debug("sync from %s failed: %s", peer.listen, e)
            return
        for item in items[: MAX_SYNC_BATCH]:
            try:
                block = Block.from_dict(json.loads(item.block))
                votes = json.loads(item.votes)
                if not isinstance(votes, list):
                    raise ValueError("votes must be a list")
            except (ValueError, TypeError, RecursionError) as e:
                log.warning("bad block from %s: %s", peer.listen, e)
                return
            with self._lock:
                if not self._apply_synced(block, votes):
                    return

    # ---- peers and gossip --------------------------------------------------------------
    def _add_peer(self, listen: str) -> None:
        if not PEER_RE.match(listen) or listen == self.listen or listen in self._peers:
            return
        if not 0 < int(listen.rsplit(":", 1)[1]) < 65536:
            return
        if len(self._peers) >= self.config.max_peers:
            # full: make room only by dropping a failing peer that was not a bootstrap
            dead = [p for p in self._peers.values()
                    if p.failures >= 3 and p.listen not in self.config.bootstrap]
            if not dead:
                return
            gone = self._peers.pop(dead[0].listen)
            if gone.channel is not None:
                gone.channel.close()
        channel = grpc.insecure_channel(listen, options=CHANNEL_OPTIONS)
        self._peers[listen] = Peer(listen, channel=channel,
                                   stub=node_pb2_grpc.NodeStub(channel))

    def _mark_seen(self, kind: str, payload: bytes) -> bool:
        """Remember a message; False if it was already seen (dedup)."""
        key = _seen_key(kind, payload)
        with self._lock:
            if key in self._seen:
                return False
            self._seen[key] = None
            while len(self._seen) > SEEN_CAP:
                self._seen.popitem(last=False)
            return True

    def _broadcast(self, env: node_pb2.Envelope, exclude: str = "") -> None:
        with self._lock:
            peers = [p for p in self._peers.values() if p.listen != exclude
                     and p.failures < 3 and p.stub is not None]
        if len(peers) > self.config.fanout:
            peers = random.sample(peers, self.config.fanout)
        env = node_pb2.Envelope(kind=env.kind, payload=env.payload, origin=self.listen)
        for p in peers:
            try:
                self._out.put_nowait((p, env))
            except queue.Full:
                self.counters["dropped_out"] += 1

    def _sender(self) -> None:
        while not self._stop.is_set():
            try:
                peer, env = self._out.get(timeout=0.2)
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

    def _regossip_mempool(self) -> None:
        """Gossip is fire-and-forget: a tx admitted while this node had no peers (the first
        node of a network, say) would wait in this mempool until this node proposes — which
        a node outside the voting set never does. So pending txs older than one interval
        are sent again (peers that have them drop the identical bytes as duplicates)."""
        now = time.monotonic()
        with self._lock:
            old = [t for t, added in self._mempool.values()
                   if now - added >= self.config.announce_interval][:MAX_REGOSSIP]
        for tx in old:
            self._broadcast(node_pb2.Envelope(kind="tx", payload=canonical(tx.to_dict())))

    def _hello_all(self) -> None:
        with self._lock:
            req = node_pb2.HelloRequest(genesis_hash=self.genesis.genesis_hash(),
                                        listen=self.listen, address=self.address,
                                        height=self.chain.height)
            peers = list(self._peers.values())
        now = time.monotonic()
        for p in peers:
            if self._stop.is_set():
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
            with self._lock:
                for listen in list(reply.peers)[: self.config.max_peers]:
                    self._add_peer(listen)

    def _announce(self, brain: int, endpoint: str) -> None:
        assert self.wallet is not None
        ann = Announcement.make(self.wallet, self.chain_id, brain, endpoint,
                                time.time_ns() // 1000)
        record = ann.to_dict()
        with self._lock:
            self.store.put_announcement(brain, ann.address, endpoint, ann.seq, record)
        payload = canonical(record)
        self._mark_seen("announce", payload)
        self._broadcast(node_pb2.Envelope(kind="announce", payload=payload))

    def _loop(self) -> None:
        while not self._stop.wait(self.config.tick):
            try:
                now = time.monotonic()
                if now - self._last_hello >= self.config.hello_interval:
                    self._last_hello = now
                    self._hello_all()
                    self._sync_once()
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
                self.tick()
            except Exception:  # the loop must survive anything a bad state throws at it
                log.exception("node loop step failed")

    def tick(self) -> None:
        """One step of the finality state machine on the current view and clock (the loop
        calls it every ``tick`` seconds; a test driving a node that is not started calls it
        after moving the clock)."""
        with self._lock:
            self._step()
            self._resend_if_stuck()

    # ---- inbound -----------------------------------------------------------------------
    def take_token(self, peer: str) -> bool:
        """Rate limit per connection and per source address (``peer`` is gRPC's
        ``ipv4:HOST:PORT``); False when either is over its budget."""
        address = peer.rsplit(":", 1)[0]
        c = self.config
        with self._lock:
            ok = all([self._bucket(peer, c.rate, c.burst).take(),
                      self._bucket(f"addr:{address}", c.rate * c.per_address,
                                   c.burst * c.per_address).take()])
            if not ok:
                self.counters["rate_limited"] += 1
            return ok

    def _bucket(self, key: str, rate: float, burst: float) -> TokenBucket:
        """The bucket for ``key``, least recently used ones forgotten past MAX_BUCKETS."""
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(rate, burst)
            while len(self._buckets) > MAX_BUCKETS:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket

    def handle_envelope(self, env: node_pb2.Envelope) -> bool:
        """Process one gossiped envelope; True if fresh. Raises ``Rejected`` on bad input."""
        kind, payload = env.kind, bytes(env.payload)
        obj = _json(payload, kind)  # size limit + JSON first: cheap rejections
        with self._lock:
            if _seen_key(kind, payload) in self._seen:
                return False
        fresh: bool | None = False
        if kind == "tx":
            tx = _parse_tx(obj, self.chain_id)
            with self._lock:
                fresh = self._admit(tx) is None
        elif kind == "block":
            block = _signed("block", Block.from_dict,
                            lambda b: b.header.verify_signature(self.chain_id), obj,
                            (ValueError, TypeError, AttributeError))
            with self._lock:
                fresh = self._on_block(block)
                self._step()
        elif kind == "vote":
            vote = _signed("vote", Vote.from_dict, lambda v: v.verify(self.chain_id), obj)
            with self._lock:
                fresh = self._on_vote(vote)
                self._step()
        else:  # announce
            ann = _signed("announcement", Announcement.from_dict,
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
            self._mark_seen(kind, payload)
        if fresh:
            self._broadcast(env, exclude=env.origin)
        return bool(fresh)

    def hello(self, req: node_pb2.HelloRequest) -> node_pb2.HelloReply:
        if req.genesis_hash != self.genesis.genesis_hash():
            raise Rejected("different genesis")
        with self._lock:
            if req.listen:
                self._add_peer(req.listen)
                p = self._peers.get(req.listen)
                if p is not None:  # it just called us: alive again, gossip to it
                    p.height, p.address, p.failures = req.height, req.address, 0
            peers = sorted(p.listen for p in self._peers.values() if p.failures == 0)
            return node_pb2.HelloReply(genesis_hash=self.genesis.genesis_hash(),
                                       address=self.address, height=self.chain.height,
                                       peers=peers[: self.config.max_peers])

    def blocks(self, lo: int, hi: int) -> Iterator[node_pb2.BlockWithVotes]:
        hi = min(hi, lo + MAX_SYNC_BATCH - 1)
        for h in range(max(lo, 1), hi + 1):
            with self._lock:
                if h > self.chain.height:
                    return
                block = self.chain.block(h)
                cert = self.store.cert(h)
            if block is None:
                return
            votes = cert[1] if cert is not None and cert[0] == block.block_hash() else []
            yield node_pb2.BlockWithVotes(block=canonical(block.to_dict()),
                                          votes=json.dumps(votes).encode())


class _Servicer(node_pb2_grpc.NodeServicer):
    """gRPC face of a ``Node``: rate limit, then map ``Rejected`` to INVALID_ARGUMENT."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def _guard(self, context: grpc.ServicerContext) -> None:
        if not self.node.take_token(context.peer()):
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
            tx = _parse_tx(_json(bytes(request.tx), "tx"), self.node.chain_id)
            reason = self.node.submit(tx)
        except Exception as e:  # any failure on a client's tx is a rejection (#15)
            self._reject(context, e)
            raise
        return node_pb2.SubmitReply(accepted=reason is None, reason=reason or "",
                                    tx_hash=tx.tx_hash().hex())

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


# ---- command line ----------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """``python -m network.node``: run one node until SIGTERM/SIGINT."""
    from network.wallet import load_or_create

    ap = argparse.ArgumentParser(prog="python -m network.node", description=__doc__.split(
        "\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="data directory")
    ap.add_argument("--genesis", type=Path, required=True, help="genesis JSON file")
    ap.add_argument("--wallet", type=Path, help="wallet key file (created 0600 if absent)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--bootstrap", nargs="*", action="extend", default=[],
                    metavar="HOST:PORT", help="peers to start from (repeatable)")
    ap.add_argument("--block-interval", type=float, default=None)
    ap.add_argument("--round-timeout", type=float, default=3.0)
    ap.add_argument("--rate", type=float, default=200.0, help="messages/s per peer")
    ap.add_argument("--burst", type=float, default=400.0)
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    genesis = Genesis.from_dict(json.loads(args.genesis.read_text()))
    wallet = load_or_create(args.wallet) if args.wallet else None
    node = Node(NodeConfig(data_dir=args.data, genesis=genesis, wallet=wallet,
                           host=args.host, port=args.port, bootstrap=list(args.bootstrap),
                           block_interval=args.block_interval,
                           round_timeout=args.round_timeout, rate=args.rate,
                           burst=args.burst))
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    port = node.start()
    print(f"node {node.address or '-'} on {args.host}:{port}", flush=True)
    done.wait()
    node.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
