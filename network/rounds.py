"""Rounds: the two-phase finality state machine of the P2P node (SPEC N1, issue #8, #15):
proposals, prevotes, precommits, locks, POLs, finalization and double-signing evidence.

Split out of ``network.node`` (issue #15) so the rules below and the code that follows
them sit together. ``Rounds`` owns the vote and proposal buffers; what it needs from the
rest of the node is passed in: the node's ``Chain`` and ``NodeStore`` (owned, opened and
closed by the node), its ``Mempool`` (block txs, evidence txs), a clock, and two ways to
send — ``publish`` (this node's own new message: marked seen, then gossiped) and ``send``
(a re-send of identical bytes, which peers that have them drop as duplicates). Every
method expects the node's lock to be held. Pure rules (voting set, ranking, quorums, the
vote format) are in ``network.finality``.

Apply / fork rule — **finalize, then apply** (why: no block is ever reverted, so the
ledger needs no fork choice and every applied block is final):

1. A *proposal* for height h = head + 1 is a signed block whose proposer is in the voting
   set of h (``network.finality``). Valid = the ledger's full check against the head
   passes (dry run), its time is not in the future by more than ``MAX_DRIFT`` seconds,
   and every ``tft_report`` in it reproduced on this node (SPEC L9: the skills and
   checkpoint this node derives from its own blocks, ``network.enforcer.Reproducer``).
   That last part is not the ledger's: it is decided off the lock on the reproducer's
   thread, so a block whose report is still being derived is not valid *yet* — this node
   does not prevote or precommit it until the verdict is in (usually at once: the report
   reached its mempool by gossip first), and votes for it in the round where it is.
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
   backed off and others are asked (``network.sync``).
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
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from ledger.block import Block
from ledger.chain import Chain, InvalidBlock
from ledger.encoding import canonical
from ledger.genesis import Genesis
from ledger.keys import Wallet
from ledger.tx import Tx, make_tx
from network.enforcer import Reproducer
from network.finality import (
    MAX_ROUND,
    PHASES,
    PRECOMMIT,
    PREVOTE,
    Vote,
    has_quorum,
    more_than_a_third,
    proposer_ranking,
    voting_set,
)
from network.gossip import Clock
from network.mempool import Mempool
from network.store import NodeStore

log = logging.getLogger("cerberus.network")

MAX_DRIFT = 10  # seconds a proposal's time may be ahead of this node's clock
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

Send = Callable[[str, bytes], None]  # (gossip kind, canonical payload)


class Timing(Protocol):
    """Where the round timeout is read, at every use (``NodeConfig`` is one: a test may
    change it on a node it drives)."""

    round_timeout: float


class Rounds:
    """The finality state machine at head+1 (and the buffers for heights just above it)."""

    def __init__(self, *, chain: Chain, store: NodeStore, mempool: Mempool, genesis: Genesis,
                 wallet: Wallet | None, interval: float, timing: Timing, clock: Clock,
                 publish: Send, send: Send, reproducer: Reproducer) -> None:
        self.chain, self.store, self.mempool = chain, store, mempool
        self.reproducer = reproducer
        self.genesis, self.chain_id = genesis, genesis.chain_id
        self.wallet = wallet
        self.address = wallet.address if wallet else ""
        self.interval, self.timing = interval, timing
        self.clock, self.publish, self.send = clock, publish, send
        # height → hash → block (heights head+1 .. head+VOTE_WINDOW)
        self.proposals: dict[int, dict[str, Block]] = {}
        self.validity: dict[str, str | None] = {}  # hash → None (valid) or reason
        # hash → the (tx hash, tx) of each tft_report in the block (rule 1's last part)
        self.tft_reports: dict[str, list[tuple[bytes, Tx]]] = {}
        self.by_proposer: dict[tuple[int, str], list[str]] = {}
        self.equivocators: dict[int, set[str]] = {}  # height → proposers of two blocks
        # height → (round, phase) → hash → voter → vote
        self.votes: dict[int, dict[tuple[int, str], dict[str, dict[str, Vote]]]] = {}
        # height → (round, phase, voter) → the first vote seen (double-sign detection)
        self.cast: dict[int, dict[tuple[int, str, str], Vote]] = {}
        self.peer_round: dict[int, dict[str, int]] = {}  # height → member → highest round
        # height → the highest POL seen: (round, block hash, its prevotes)
        self.valid: dict[int, tuple[int, str, list[Vote]]] = {}
        # offender → (first vote, second vote, height when submitted, evidence tx hash)
        self.reports: dict[str, tuple[dict[str, Any], dict[str, Any], int, bytes]] = {}
        # the latest round this node jumped to at head+1 (where > 1/3 of the stake is)
        self.jump: tuple[int, float] = (-1, 0.0)
        self.proposed: set[int] = set()
        self.weights_at: tuple[str, dict[str, int]] = ("", {})
        self.ranking_at: tuple[str, list[str]] = ("", [])
        self.head_since = clock.time()
        self.last_resend = 0.0
        self.resume_round()

    @property
    def round_timeout(self) -> float:
        return self.timing.round_timeout

    def restart(self) -> None:
        """On start: the anchor of round 0 is now, and rounds resume from this
        validator's own latest vote."""
        self.head_since = self.clock.time()
        self.resume_round()

    def pol_info(self) -> dict[str, Any] | None:
        """The highest POL seen at head+1, for ``status()``."""
        v = self.valid.get(self.chain.height + 1)
        return None if v is None else {"round": v[0], "hash": v[1]}

    def weights(self) -> dict[str, int]:
        """Voting set for the next height (lock held); computed once per head."""
        if self.weights_at[0] != self.chain.head_hash:
            self.weights_at = (self.chain.head_hash,
                               voting_set(self.chain.validator_set(), self.genesis))
        return self.weights_at[1]

    def ranking(self) -> list[str]:
        """Proposer ranking for the next height (lock held); computed once per head."""
        if self.ranking_at[0] != self.chain.head_hash:
            self.ranking_at = (self.chain.head_hash,
                               proposer_ranking(self.chain.head_hash, self.weights()))
        return self.ranking_at[1]

    def round_open(self, rank: int) -> float:
        """When the round of proposer rank ``rank`` opens at head+1 (wall clock)."""
        anchor = max(self.head_since, float(self.chain.state.meta("time")))
        return anchor + self.interval + rank * self.round_timeout

    def current_round(self) -> int:
        """This node's round at head+1 (lock held): the timer's, or later after a jump.
        Before round 0 opens this is 0 (a rank-0 proposal may be voted as it arrives)."""
        now = self.clock.time()
        rt = max(self.round_timeout, 1e-3)
        start = self.round_open(0)
        r = int((now - start) // rt) if now >= start else 0
        jumped, since = self.jump
        if jumped >= 0:
            r = max(r, jumped + int((now - since) // rt))
        return min(r, MAX_ROUND)

    def resume_round(self) -> None:
        """After a (re)start, continue from the round of this validator's own latest vote
        at head+1, so its rounds never go backwards (lock held or not started)."""
        last = self.store.last_round(self.chain.height + 1)
        self.jump = (last, self.clock.time()) if last is not None else (-1, 0.0)

    def my_vote_info(self, phase: str = PREVOTE) -> dict[str, Any] | None:
        """This validator's latest ``phase`` vote at head+1 (for precommits: its lock)."""
        h = self.chain.height + 1
        last = self.store.last_vote(h, phase) if self.wallet is not None else None
        return None if last is None else {"height": h, "round": last[0], "hash": last[1]}

    def on_block(self, block: Block) -> bool | None:
        """Record a signed block from a peer or ourselves: True if stored (new), False if
        not usable, None if it may be usable later (do not mark it seen)."""
        h, proposer, bh = block.height, block.header.proposer, block.block_hash()
        head = self.chain.height
        if h <= head:
            final = self.chain.block(h)
            if final is not None and final.header.proposer == proposer \
                    and final.block_hash() != bh:
                self.record_equivocation(final, block)
            return False
        if h > head + VOTE_WINDOW:
            return None
        # Only proposers of the current voting set get buffer space (else anyone with a
        # key could fill it); a set change makes a later height fall back to sync/rounds.
        if proposer not in self.weights():
            return False
        at_h = self.proposals.setdefault(h, {})
        if bh in at_h:
            return False
        mine = self.by_proposer.setdefault((h, proposer), [])
        if mine:
            # a second block by one proposer at h: evidence, and the proposer is no longer
            # anyone's free choice at h; the block is still kept (two per proposer, more
            # only once > 1/3 of the stake voted for it) because a POL may form for it
            first = at_h.get(mine[0])
            if first is not None:
                self.record_equivocation(first, block)
            self.equivocators.setdefault(h, set()).add(proposer)
            if len(mine) >= MAX_BLOCKS_PER_PROPOSER and not self.backed(h, bh):
                return None
        if len(at_h) >= MAX_HASHES_PER_HEIGHT and not self.backed(h, bh):
            return None
        mine.append(bh)
        at_h[bh] = block
        return True

    def backed(self, height: int, block_hash: str) -> bool:
        """Whether validators with > 1/3 of the stake voted for ``block_hash`` at ``height``
        (some honest one did, so the block may be needed however full the buffer is)."""
        voters = {v for (_r, _p), by_hash in self.votes.get(height, {}).items()
                  for v in by_hash.get(block_hash, {})}
        return more_than_a_third(voters, self.weights())

    def record_equivocation(self, first: Block, second: Block) -> None:
        if self.store.add_evidence(second.height, second.header.proposer, first.block_hash(),
                                   second.block_hash(),
                                   [first.to_dict()["header"], second.to_dict()["header"]]):
            log.warning("equivocation by %s at height %d", second.header.proposer,
                        second.height)

    def check_proposal(self, block: Block, ranking: list[str]) -> str | None:
        """Why this node must not vote for ``block`` at head+1, or None: the ledger's
        verdict (cached by hash), then the reproduction of its ``tft_report``s."""
        bh = block.block_hash()
        reason = self.validity[bh] if bh in self.validity else self.check_ledger(block, bh,
                                                                                 ranking)
        return reason if reason is not None else self.unreproduced(block, bh)

    def unreproduced(self, block: Block, bh: str) -> str | None:
        """Why ``block``'s ``tft_report``s do not let this node vote for it, or None: one
        did not reproduce here, or its derivation is not done — then it is started (or
        queued) now, and the block waits for it (rule 1). Not cached: the verdict comes."""
        reports = self.tft_reports.get(bh)
        if reports is None:
            reports = self.tft_reports[bh] = [(t.tx_hash(), t) for t in block.txs
                                              if t.kind == "tft_report"]
        for tx_hash, tx in reports:
            v = self.reproducer.verdict(tx_hash)
            if v is None:
                self.reproducer.request(tx, tx_hash)
                return f"tft_report {tx_hash.hex()[:12]} is being reproduced"
            if not v.ok:
                return v.reason
        return None

    def check_ledger(self, block: Block, bh: str, ranking: list[str]) -> str | None:
        """The ledger's part of rule 1 (and the voting set, the clock), cached by hash."""
        reason: str | None = None
        if block.header.proposer not in ranking:
            reason = "proposer is not in the voting set"
        elif block.header.time > self.clock.time() + MAX_DRIFT:
            reason = "block time is in the future"
        else:
            try:
                self.chain.check_block(block)
            except InvalidBlock as e:
                reason = str(e)
            except Exception as e:  # a peer's block must never stop this node voting
                log.exception("proposal %s failed its check unexpectedly", bh[:12])
                reason = f"check failed: {e!r}"
        self.validity[bh] = reason
        return reason

    def usable(self, height: int, block_hash: str) -> Block | None:
        """The block ``block_hash`` at head+1 if this node holds it and it is valid."""
        block = self.proposals.get(height, {}).get(block_hash)
        if block is None or self.check_proposal(block, self.ranking()) is not None:
            return None
        return block

    def on_vote(self, vote: Vote) -> bool | None:
        """Record a signed vote: True if new (or new double-signing evidence), False if
        useless, None if it may be usable later (not marked seen; it will be re-sent)."""
        head, h = self.chain.height, vote.height
        if h <= head:
            return False
        if h > head + VOTE_WINDOW:
            return None
        weights = self.weights()
        if vote.voter not in weights:  # same bound as for proposals
            return False
        # the round-jump rule sees every member's highest round (one int per member)
        seen_round = self.peer_round.setdefault(h, {})
        if vote.round > seen_round.get(vote.voter, -1):
            seen_round[vote.voter] = vote.round
            if h == head + 1:
                self.maybe_jump(h)
        if h == head + 1 and vote.round > self.current_round() + MAX_ROUND_AHEAD:
            return None  # far ahead of us: kept only once we get there (re-sent)
        key = (vote.round, vote.phase, vote.voter)
        cast = self.cast.setdefault(h, {})
        first = cast.get(key)
        if first is not None:
            if first.block_hash == vote.block_hash:
                return False
            # double signing: evidence — and the vote still counts where it was cast.
            # Counting both is safe: two quorums (≥ 2/3 each) share > 1/3 of the stake,
            # so an honest validator, which signs one, is in both only for one block.
            self.on_double_sign(first, vote)
        rounds = self.votes.setdefault(h, {})
        kept = {r for r, _ in rounds}
        if vote.round not in kept and len(kept) >= MAX_ROUNDS_KEPT:
            protect = self.valid.get(h, (-1, "", []))[0]
            evictable = sorted(r for r in kept if r != protect)
            if not evictable or vote.round < evictable[0]:
                return None
            self.drop_round(h, evictable[0])
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
            self.note_pol(h, vote.round, vote.block_hash)
        return True

    def drop_round(self, height: int, round_: int) -> None:
        """Forget the votes of one round at ``height`` (the vote buffer's bound)."""
        rounds = self.votes.get(height, {})
        for key in [k for k in rounds if k[0] == round_]:
            del rounds[key]
        cast = self.cast.get(height, {})
        for key in [k for k in cast if k[0] == round_]:
            del cast[key]

    def note_pol(self, height: int, round_: int, block_hash: str) -> None:
        """Remember the highest-round POL (≥ 2/3 prevotes for one block in one round) seen
        at ``height``: the block a validator locked below it must prevote (rule 4)."""
        voters = self.votes.get(height, {}).get((round_, PREVOTE), {}).get(block_hash, {})
        if round_ > self.valid.get(height, (-1, "", []))[0] \
                and has_quorum(list(voters), self.weights()):
            self.valid[height] = (round_, block_hash, list(voters.values()))

    def maybe_jump(self, height: int) -> None:
        """Join round r once validators with > 1/3 of the stake were seen in rounds ≥ r (at
        least one honest validator is there, so a Byzantine one alone cannot push this
        node ahead; Tendermint's f+1 rule)."""
        weights = self.weights()
        total, acc = sum(weights.values()), 0
        for voter, r in sorted(self.peer_round.get(height, {}).items(),
                               key=lambda item: -item[1]):
            acc += weights.get(voter, 0)
            if 3 * acc > total:
                if r > self.current_round():
                    self.jump = (r, self.clock.time())
                return

    def on_double_sign(self, first: Vote, second: Vote) -> bool:
        """Two signed votes by one validator for one (height, round, phase): record the
        pair, and as a validator put it on chain (slashing). True when it is new."""
        if not self.store.add_vote_evidence(first.to_dict(), second.to_dict()):
            return False
        log.warning("double signing by %s at height %d round %d (%s)", first.voter[:12],
                    first.height, first.round, first.phase)
        if self.wallet is not None and first.voter not in self.reports \
                and len(self.reports) < MAX_PENDING_EVIDENCE \
                and self.chain.state.get("tomb", first.voter) is None:
            self.reports[first.voter] = (first.to_dict(), second.to_dict(), -1, b"")
            self.submit_evidence(first.voter)
        return True

    def submit_evidence(self, offender: str) -> None:
        """Sign an evidence tx for ``offender``'s double signing and admit + gossip it."""
        assert self.wallet is not None
        first, second, _, _ = self.reports[offender]
        nonce = self.mempool.pending_nonce(self.address)
        tx = make_tx(self.wallet, "evidence", nonce, self.chain_id,  # live fee (SPEC L8)
                     fee=self.chain.state.param("min_fee"), first=first, second=second)
        reason = self.mempool.admit(tx)
        self.reports[offender] = (first, second, self.chain.height, tx.tx_hash())
        if reason is not None:
            log.info("evidence against %s not admitted: %s", offender[:12], reason)
            return
        payload = canonical(tx.to_dict())
        self.publish("tx", payload)
        log.info("evidence against %s submitted", offender[:12])

    def follow_up_evidence(self) -> None:
        """After each block: drop reports that landed (offender tombstoned) or are too old,
        re-submit one whose tx is gone from the mempool, and drop pending evidence txs that
        can no longer apply (lock held)."""
        state, head = self.chain.state, self.chain.height
        for offender, (first, _second, at, txh) in list(self.reports.items()):
            if state.get("tomb", offender) is not None \
                    or head - first["height"] > self.genesis.unbonding_blocks:
                del self.reports[offender]
            elif txh not in self.mempool and head >= at + EVIDENCE_RETRY:
                self.submit_evidence(offender)
        for tx in self.mempool.txs():
            if tx.kind == "evidence" and state.get("tomb", tx.payload["first"]["voter"]) \
                    is not None:
                self.mempool.remove(tx)

    def cast_vote(self, height: int, round_: int, phase: str, block_hash: str) -> None:
        assert self.wallet is not None
        if not self.store.record_my_vote(height, round_, phase, block_hash):
            return  # persisted first: never two votes for one (height, round, phase)
        vote = Vote.make(self.wallet, self.chain_id, height, block_hash, round_, phase)
        self.on_vote(vote)
        payload = canonical(vote.to_dict())
        self.publish("vote", payload)
        log.debug("%s %d round %d %s", phase, height, round_, block_hash[:12])

    def step(self) -> None:
        """Finalize, propose, prevote, precommit — as far as the view allows (lock held)."""
        for _ in range(VOTE_WINDOW):
            if not self.try_finalize():
                break
        self.maybe_propose()
        self.maybe_prevote()
        self.maybe_precommit()

    def try_finalize(self) -> bool:
        """Apply head+1 if this node holds a block with precommits from ≥ 2/3 of the
        stake in one round (rule 5)."""
        h = self.chain.height + 1
        weights = self.weights()
        for (_round, phase), by_hash in sorted(self.votes.get(h, {}).items()):
            if phase != PRECOMMIT:
                continue
            for bh, voters in by_hash.items():
                block = self.proposals.get(h, {}).get(bh)
                if block is None or not has_quorum(list(voters), weights):
                    continue
                cert = [v.to_dict() for v in voters.values() if v.voter in weights]
                self.store.put_cert(h, bh, cert)
                try:
                    self.chain.apply_block(block)
                except Exception as e:  # 2/3 signed a block this node finds invalid
                    log.error("final block %d %s does not apply here: %r", h, bh[:12], e)
                    self.proposals[h].pop(bh, None)
                    return False
                self.after_apply()
                return True
        return False

    def after_apply(self) -> None:
        head = self.chain.height
        self.head_since = self.clock.time()
        for table in (self.proposals, self.votes, self.cast, self.peer_round,
                      self.valid, self.equivocators):
            for h in [h for h in table if h <= head]:
                del table[h]
        self.by_proposer = {k: v for k, v in self.by_proposer.items() if k[0] > head}
        self.proposed = {h for h in self.proposed if h > head}
        self.validity.clear()
        self.tft_reports.clear()
        # the new height starts at round 0, or where > 1/3 of the new voting set already
        # is (peers that finalized first); POLs buffered for it count under the new set
        self.jump = (-1, 0.0)
        h = head + 1
        self.maybe_jump(h)
        for (r, phase), by_hash in sorted(self.votes.get(h, {}).items()):
            if phase == PREVOTE:
                for bh in by_hash:
                    self.note_pol(h, r, bh)
        self.follow_up_evidence()
        self.mempool.prune()
        log.debug("height %d %s", head, self.chain.head_hash[:12])

    def prevote_choice(self, height: int, round_: int) -> str | None:
        """The block to prevote in ``round_`` (rule 4), or None while there is none.

        Locked on A since round L (latest own precommit): the block of the highest POL
        seen if that POL's round is ≥ L, else A. Unlocked: the highest POL's block, else
        the lowest-ranked valid proposal whose rank ≤ round, skipping proposers caught
        proposing two blocks at this height (so a split they caused heals in a round)."""
        lock = self.store.last_vote(height, PRECOMMIT)
        pol = self.valid.get(height)
        if pol is not None and (lock is None or pol[0] >= lock[0]) \
                and self.usable(height, pol[1]) is not None:
            return pol[1]
        if lock is not None:
            return lock[1]
        ranking = self.ranking()
        bad = self.equivocators.get(height, set())
        best: tuple[int, str] | None = None
        for bh, block in self.proposals.get(height, {}).items():
            if block.header.proposer in bad or self.check_proposal(block, ranking):
                continue
            rank = ranking.index(block.header.proposer)
            # a later rank's block counts only once its round has opened here
            if rank <= round_ and (best is None or rank < best[0]):
                best = (rank, bh)
        return None if best is None else best[1]

    def maybe_prevote(self) -> None:
        if self.wallet is None:
            return
        h = self.chain.height + 1
        if self.address not in self.weights():
            return
        r = self.current_round()
        if self.store.last_round(h) is not None and self.store.last_round(h) > r:
            return  # rounds only increase (a restart resumes from the latest)
        if self.store.my_vote(h, r, PREVOTE) is not None:
            return
        choice = self.prevote_choice(h, r)
        if choice is not None:
            self.cast_vote(h, r, PREVOTE, choice)

    def maybe_precommit(self) -> None:
        """Precommit B in this round once a POL for B in this round is seen (rule 4)."""
        if self.wallet is None:
            return
        h = self.chain.height + 1
        weights = self.weights()
        if self.address not in weights:
            return
        r = self.current_round()
        if self.store.my_vote(h, r, PRECOMMIT) is not None:
            return
        for bh, voters in self.votes.get(h, {}).get((r, PREVOTE), {}).items():
            if has_quorum(list(voters), weights) and self.usable(h, bh) is not None:
                self.cast_vote(h, r, PRECOMMIT, bh)
                return

    def maybe_propose(self) -> None:
        if self.wallet is None:
            return
        h = self.chain.height + 1
        if h in self.proposed or self.store.last_round(h) is not None:
            return
        ranking = self.ranking()
        if self.address not in ranking:
            return
        rank = ranking.index(self.address)
        now = self.clock.time()
        # one proposal per height, from the moment this validator's round opens
        if now < self.round_open(0) or self.current_round() < rank:
            return
        t = max(int(now), int(self.chain.state.meta("time")) + 1)
        if t > now + 1:
            return
        block, rejected = self.chain.produce_block(self.mempool.block_txs(), self.wallet, t)
        for tx, _ in rejected:
            if tx.nonce <= self.chain.nonce(tx.sender):
                self.mempool.remove(tx)
        self.proposed.add(h)
        # valid by construction: built by running its txs on this head (the root is that
        # run's), by a proposer of the ranking, at a time within MAX_DRIFT — so no second
        # dry run of a block of thousands of txs before voting for it (issue #16)
        self.validity[block.block_hash()] = None
        self.on_block(block)
        payload = canonical(block.to_dict())
        self.publish("block", payload)
        log.debug("proposed %d %s (rank %d, %d txs)", h, block.block_hash()[:12], rank,
                  len(block.txs))

    def resend_if_stuck(self) -> None:
        """Gossip is fire-and-forget: if no block was finalized for a round timeout, send
        this validator's latest prevote and precommit, the highest POL it knows (its
        prevotes) and the blocks they are for, again (identical bytes, so peers that have
        them drop them as duplicates; a peer that missed them — restarting, starved, or on
        the other side of a partition that just healed — gets them now, and with the POL
        a validator locked in an older round can move to the block the others hold)."""
        h = self.chain.height + 1
        now = self.clock.time()
        if now - max(self.head_since, self.last_resend) < self.round_timeout:
            return
        self.last_resend = now
        out: list[tuple[str, bytes]] = []
        hashes: list[str] = []
        if self.wallet is not None:
            for phase in PHASES:
                last = self.store.last_vote(h, phase)
                if last is not None:
                    hashes.append(last[1])
                    vote = Vote.make(self.wallet, self.chain_id, h, last[1], last[0], phase)
                    out.append(("vote", canonical(vote.to_dict())))
        valid = self.valid.get(h)
        if valid is not None:
            hashes.append(valid[1])
            out += [("vote", canonical(v.to_dict())) for v in valid[2]]
        for bh in dict.fromkeys(hashes):
            block = self.proposals.get(h, {}).get(bh)
            if block is not None:
                out.insert(0, ("block", canonical(block.to_dict())))
        for kind, payload in out:
            self.send(kind, payload)

    def apply_synced(self, block: Block, votes: list[Any]) -> bool:
        """Apply a block from GetBlocks if its certificate is a quorum (lock held)."""
        h, bh = block.height, block.block_hash()
        if h != self.chain.height + 1:
            return False
        weights = self.weights()
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
        self.after_apply()
        return True

