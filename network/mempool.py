"""The node's mempool (SPEC N1, issue #15): admission against a pending-state overlay,
block selection, pruning.

Split out of ``network.node`` so admission — the rule that decides what the whole network
re-gossips — can be read on its own. It sees the chain only through ``PoolChain`` (account
nonces and an in-order dry run of txs on the head's state); the caller holds the node's
lock around every call.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol

from ledger.chain import Overlay
from ledger.tx import Tx
from network.gossip import Clock

MAX_PENDING_PER_SENDER = 64  # one key cannot fill the mempool (issue #15)


class PoolChain(Protocol):
    """What the mempool needs from the chain (``ledger.chain.Chain`` implements it)."""

    @property
    def head_hash(self) -> str: ...

    def nonce(self, address: str) -> int: ...

    def dry_run(self, txs: Sequence[Tx], overlay: Overlay | None = None
                ) -> tuple[tuple[int, str] | None, Overlay]: ...


class Mempool:
    """Pending txs in arrival order, indexed by (sender, nonce)."""

    def __init__(self, chain: PoolChain, *, max_size: int, max_block_txs: int, ttl: float,
                 clock: Clock) -> None:
        self.chain = chain
        self.max_size, self.max_block_txs, self.ttl = max_size, max_block_txs, ttl
        self.clock = clock
        self.entries: OrderedDict[bytes, tuple[Tx, float]] = OrderedDict()
        self.by_sender: dict[str, dict[int, bytes]] = {}  # sender → nonce → entry key
        # sender → (head hash, hash of its last pending tx, the state entries its pending
        # run leaves on that head): a tx appended to the run is judged on this overlay
        # instead of replaying the run (issue #16); dropped when the run or head changes
        self.overlays: dict[str, tuple[str, bytes, Overlay]] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, tx_hash: object) -> bool:
        return tx_hash in self.entries

    def txs(self) -> list[Tx]:
        """Every pending tx, in arrival order."""
        return [t for t, _ in self.entries.values()]

    def holds(self, sender: str, nonce: int, signature_hex: str) -> bool:
        """Whether the pending tx of ``sender`` at ``nonce`` carries this signature (then a
        peer's copy is this very tx, or a forgery of it: nothing to check or keep)."""
        h = self.by_sender.get(sender, {}).get(nonce)
        return h is not None and self.entries[h][0].signature.hex() == signature_hex

    def older_than(self, age: float, limit: int) -> list[Tx]:
        """Up to ``limit`` pending txs admitted at least ``age`` seconds ago."""
        now = self.clock.monotonic()
        return [t for t, added in self.entries.values() if now - added >= age][:limit]

    def pending_nonce(self, address: str) -> int:
        """The next nonce after ``address``'s account nonce and its run of pending txs."""
        queued = self.by_sender.get(address, {})
        pending = self.chain.nonce(address)
        while pending in queued:  # bounded by MAX_PENDING_PER_SENDER
            pending += 1
        return pending

    def admit(self, tx: Tx, tx_hash: bytes | None = None) -> str | None:
        """Mempool admission (format and signature already checked); the reason if not.

        Why so strict (issue #15): whatever is admitted is also gossiped and re-gossiped,
        so a cheap way in is a flood of the whole network. Hence: one tx per (sender,
        nonce) — another at a pending nonce only *replaces* it, and only with a higher
        fee; a sender's pending txs are a run of nonces from its account nonce, at most
        ``MAX_PENDING_PER_SENDER`` long; and the run with ``tx`` in it must apply in order
        on the head's state (``Chain.dry_run``, the pending-state overlay; a tx appended to
        the run is judged on the entries the run leaves, ``overlays``, not by replaying
        it), so the balance covers every pending amount and fee and a tx ahead of the
        account's nonce passes its rule before it is admitted or gossiped. (``tx_hash``:
        the caller's ``tx.tx_hash()``, when it has it, saves computing it again.)"""
        h = tx_hash if tx_hash is not None else tx.tx_hash()
        if h in self.entries:
            return None
        current = self.chain.nonce(tx.sender)
        if tx.nonce < current:
            return f"bad nonce: {tx.nonce} is used, the next is {current}"
        pending = self.by_sender.get(tx.sender, {})
        run = [self.entries[pending[n]][0]
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
        if old is None and len(self.entries) >= self.max_size:
            return "mempool full"
        head = self.chain.head_hash
        memo = self.overlays.get(tx.sender)
        if i == len(run) and (i == 0 or (memo is not None and memo[0] == head
                                         and memo[1] == pending[current + i - 1])):
            bad, after = self.chain.dry_run([tx], memo[2] if i and memo else None)
            if bad is not None:
                return bad[1]
        else:
            bad, after = self.chain.dry_run([*run[:i], tx, *run[i + 1:]])
        if bad is not None:
            j, reason = bad
            if j < i:  # an older pending tx no longer applies (the head moved): drop it on
                for t in run[j:]:
                    self.remove(t)
                return f"pending tx at nonce {current + j} no longer applies: {reason}"
            return reason
        if old is not None:
            self.remove(old)
        self.entries[h] = (tx, self.clock.monotonic())
        by_nonce = self.by_sender.setdefault(tx.sender, {})
        by_nonce[tx.nonce] = h
        last = current + max(len(run), i + 1) - 1  # the new run's last nonce
        self.overlays[tx.sender] = (head, by_nonce[last], after)
        return None

    def remove(self, tx: Tx, tx_hash: bytes | None = None) -> None:
        """Drop ``tx`` (whose hash is ``tx_hash``, when the caller has it) from the mempool
        and its sender index."""
        h = tx_hash if tx_hash is not None else tx.tx_hash()
        self.entries.pop(h, None)
        by_nonce = self.by_sender.get(tx.sender, {})
        if by_nonce.get(tx.nonce) == h:
            del by_nonce[tx.nonce]
            self.overlays.pop(tx.sender, None)
            if not by_nonce:
                del self.by_sender[tx.sender]

    def block_txs(self) -> list[Tx]:
        """Txs for a block: senders in arrival order, each sender's by nonce."""
        first: dict[str, int] = {}
        txs = self.txs()
        for i, t in enumerate(txs):
            first.setdefault(t.sender, i)
        txs.sort(key=lambda t: (first[t.sender], t.nonce))
        return txs[: self.max_block_txs]

    def prune(self) -> None:
        """Drop used nonces and expired txs, and a sender's txs after a gap (they can no
        longer apply), so each sender's pending txs stay a run from its account nonce."""
        now = self.clock.monotonic()
        self.overlays.clear()  # made on the previous head
        for sender, by_nonce in list(self.by_sender.items()):
            expect = self.chain.nonce(sender)
            for nonce in sorted(by_nonce):
                h = by_nonce[nonce]
                t, added = self.entries[h]
                if nonce == expect and now - added <= self.ttl:
                    expect += 1
                else:
                    self.remove(t, h)
