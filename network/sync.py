"""Catch-up sync for the P2P node (SPEC N1, rule 6 of ``network.node``): peer heights,
GetBlocks with a backoff per peer.

Split out of ``network.node`` (issue #15). Sync knows nothing of certificates or the
ledger: it asks peers that claim to be ahead and hands each block with its votes to
``apply`` (the node checks the certificate and applies it, returning whether it did).
Peer heights are unsigned claims (Hello), so a liar must cost a bounded number of calls,
never the sync.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

import grpc

from ledger.block import Block
from network.gossip import Clock, Peer
from network.protos import node_pb2

log = logging.getLogger("cerberus.network")

MAX_SYNC_BATCH = 128  # blocks per GetBlocks call
MAX_SYNC_TRIES = 3  # peers asked per sync round
MAX_SYNC_BACKOFF = 30.0  # seconds a peer whose answer brought no block may be passed over

ApplyCertified = Callable[[Block, list[Any]], bool]


class Sync:
    """Fetches missing blocks from peers ahead of this node."""

    def __init__(self, *, peers: Callable[[], Iterable[Peer]], height: Callable[[], int],
                 apply: ApplyCertified, hello_interval: float, lock: threading.RLock,
                 stop: threading.Event, clock: Clock) -> None:
        self.peers, self.height, self.apply = peers, height, apply
        self.hello_interval = hello_interval
        self.lock, self.stop, self.clock = lock, stop, clock

    def sync_once(self) -> None:
        """Catch up from peers that claim to be ahead (lock not held).

        Heights are unsigned claims (Hello), so the highest is not trusted (issue #15): a
        peer whose answer brings this node no block (empty, junk, no certificate, an RPC
        error) is backed off for 2^k hello intervals (at most ``MAX_SYNC_BACKOFF``) with its
        claim lowered to our height, and the next peer is asked — at most
        ``MAX_SYNC_TRIES`` per round, fewest recent failures first. A liar costs a bounded
        number of calls, never the sync."""
        with self.lock:
            mine = self.height()
            now = self.clock.monotonic()
            ahead = [p for p in self.peers() if p.height > mine and p.failures == 0
                     and p.stub is not None and now >= p.sync_after]
        ahead.sort(key=lambda p: (p.sync_failures, -p.height))
        for peer in ahead[:MAX_SYNC_TRIES]:
            if self.stop.is_set():
                return
            self.sync_from(peer, mine)
            with self.lock:
                if self.height() > mine:  # progress, from this peer or by gossip
                    peer.sync_failures = 0
                    return
                peer.sync_failures = min(peer.sync_failures + 1, 16)
                peer.sync_after = self.clock.monotonic() + min(
                    MAX_SYNC_BACKOFF, self.hello_interval * 2 ** peer.sync_failures)
                peer.height = min(peer.height, mine)
                log.info("sync from %s brought no block: passed over for a while",
                         peer.listen)

    def sync_from(self, peer: Peer, mine: int) -> None:
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
            with self.lock:
                if not self.apply(block, votes):
                    return
