"""``Chain``: the object a node runs (SPEC L2, L10). Small API, documented in README.md.

It owns one ``State`` in memory and one ``Store``; ``apply_block`` checks a block fully,
applies it, and persists block + state changes in one store transaction. There is no
mempool here: the network layer keeps txs and hands a list to ``produce_block``.

Each chain owns a ``SigCache`` (``sigs``) and every check it runs goes through it, so a
tx's signature is checked once on its way from admission (``validate_txs``) through a
proposal's dry run (``check_block``) to ``apply_block`` (issue #16); a node's gossip
parsing uses the same cache (``with chain.sigs.active():``). It is per chain, so two
nodes in one process still each check every signature themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ledger.block import Block, Header, sign_header, tx_root
from ledger.consensus import active_stake_threshold
from ledger.genesis import Genesis, genesis_state
from ledger.keys import SigCache, Wallet
from ledger.rules import (
    Ctx,
    InvalidBlock,
    TxRejected,
    apply_block,
    apply_block_in_place,
    apply_tx,
    check_header,
    execute,
)
from ledger.state import State
from ledger.storage import MemoryStore, SqliteStore, Store
from ledger.tx import Tx

# State entries a run of txs leaves behind, (table, key) → value (``ABSENT``: deleted): what
# ``dry_run`` returns so the next tx of the same sender is judged without replaying the run
Overlay = dict[tuple[str, Any], Any]
ABSENT: Any = object()
# states after checked or produced blocks kept for apply_block, on the current head only:
# one is the usual case (one proposal per height); each is a shallow copy of every table,
# so the bound is what a large state costs in memory
MAX_CHECKED = 2


class Chain:
    """A chain of blocks over a genesis, backed by a store."""

    def __init__(self, genesis: Genesis, store: Store | None = None) -> None:
        self.genesis = genesis
        self.store: Store = store if store is not None else MemoryStore()
        self.sigs = SigCache()
        # block hash → (the block, the state after it, whether its header was checked), from
        # check_block / produce_block on the head ``_checked_on``: apply_block adopts that
        # state instead of running the block again
        self._checked: dict[str, tuple[Block, State, bool]] = {}
        self._checked_on = ""
        stored = self.store.genesis()
        if stored is None:
            self.state = genesis_state(genesis)
            self.store.init_genesis(genesis.to_dict(), dict(self.state.encoded_items()))
            self.state.take_dirty()
            self.head_hash = genesis.genesis_hash()
            return
        if Genesis.from_dict(stored).genesis_hash() != genesis.genesis_hash():
            raise ValueError("store was initialised with a different genesis")
        self.state = State.from_encoded(self.store.state_rows())
        head = self.store.head()
        self.head_hash = genesis.genesis_hash() if head is None else head[1]
        if head is not None:
            if head[0] != self.state.height:
                raise RuntimeError("store corrupt: state height differs from the last block")
            block = self.store.block(head[0])
            assert block is not None
            if block.header.state_root != self.state.state_root():
                raise RuntimeError("store corrupt: state root differs from the last header")

    @classmethod
    def open_sqlite(cls, path: str | Path, genesis: Genesis | None = None,
                    synchronous: str = "FULL") -> Chain:
        """Open (or create, when ``genesis`` is given) a chain in a SQLite file."""
        store = SqliteStore(path, synchronous=synchronous)
        stored = store.genesis()
        if genesis is None:
            if stored is None:
                raise ValueError("new database: a genesis is required")
            genesis = Genesis.from_dict(stored)
        return cls(genesis, store)

    # ---- reading ---------------------------------------------------------------------------
    @property
    def height(self) -> int:
        return self.state.height

    def state_root(self) -> str:
        return self.state.state_root()

    def block(self, height: int) -> Block | None:
        return self.store.block(height)

    def block_record(self, height: int) -> tuple[str, bytes] | None:
        """(hash, stored canonical bytes) of the block at ``height``: what a node serves to
        a syncing peer without decoding and encoding the block again."""
        return self.store.block_record(height)

    def balance(self, address: str) -> int:
        return self.state.balance(address)

    def nonce(self, address: str) -> int:
        """The nonce the account's next tx must carry."""
        return self.state.nonce(address)

    def params(self) -> dict[str, int]:
        """The governable chain parameters' live values at the head (``min_fee``, ``tempo``,
        ``registration_fee``, ``beta_start``; SPEC L8): they start at the genesis values
        and change only when a passed proposal executes, so read these, not ``genesis``."""
        return self.state.params()

    def validator_set(self) -> dict[str, int]:
        """The network's voting set (SPEC N1 by L7's rule): address → the stake delegated to
        it in each Brain where it is an *active* validator, summed over Brains.

        Per Brain, as in its epoch (L7): of the validators registered there, only those
        with stake ≥ the 70th percentile of that Brain's validator stakes (numpy's
        ``method="lower"``, ``consensus.active_stake_threshold``) are active; inactive
        validators' stake in that Brain does not count. Zero stake never counts, and a
        validator slashed for double signing (table ``tomb``) is out for good. For the
        network's proposer rotation and 2/3 finality."""
        s = self.state
        out: dict[str, int] = {}
        for brain_id in sorted(s.tables["brain"]):
            b = s.tables["brain"][brain_id]
            regs = [a for a in b.validators if a is not None]
            stakes = [s.delegate_stake.get((brain_id, a), 0) for a in regs]
            threshold = active_stake_threshold(stakes)
            for addr, stake in zip(regs, stakes, strict=True):
                if stake > 0 and stake >= threshold and addr not in s.tables["tomb"]:
                    out[addr] = out.get(addr, 0) + stake
        return dict(sorted(out.items()))

    # ---- writing ---------------------------------------------------------------------------
    def validate_tx(self, tx: Tx) -> str | None:
        """None if ``tx`` would apply on top of the current head now, else the reason."""
        bad = self.validate_txs([tx])
        return None if bad is None else bad[1]

    def validate_txs(self, txs: Sequence[Tx]) -> tuple[int, str] | None:
        """The first of ``txs`` that would not apply, in order, on top of the head — its
        index and reason — or None. Each tx is judged on the state the earlier ones leave:
        a mempool's pending-state overlay (a sender's queued txs must all fit its balance,
        and a tx ahead of the account's nonce is checked on the state it will meet)."""
        return self.dry_run(txs)[0]

    def dry_run(self, txs: Sequence[Tx], overlay: Overlay | None = None
                ) -> tuple[tuple[int, str] | None, Overlay]:
        """``validate_txs`` on the head with ``overlay`` (what an earlier ``dry_run`` of the
        same sender's pending txs returned, on this same head) put first; also returns the
        overlay after ``txs`` (empty when one is refused).

        Why (issue #16): a mempool judges a sender's new tx on the state its pending run
        leaves. Replaying the run for each new tx cost O(run) executions per admission;
        putting back the run's resulting entries (a few accounts and counters) gives the
        same state at the cost of a few writes. It is exact: every entry the run changed
        is in the overlay with its value after the run, and the rest is the head."""
        state = self.state
        mark = state.checkpoint()
        ctx = Ctx(self.genesis, self.height + 1, None)
        with self.sigs.active():
            try:
                for (table, key), value in (overlay or {}).items():
                    if value is ABSENT:
                        state.delete(table, key)
                    else:
                        state.put(table, key, value)
                for i, tx in enumerate(txs):
                    try:
                        apply_tx(state, tx, ctx)
                    except TxRejected as e:
                        return (i, str(e)), {}
                # the journal since ``mark`` names every entry written (State has no public
                # view of it; both live in ledger/ and change together)
                touched = dict.fromkeys((t, k) for t, k, _ in state._journal[mark:])
                return None, {(t, k): state.tables[t].get(k, ABSENT) for t, k in touched}
            finally:
                state.rollback(mark)

    def produce_block(self, txs: list[Tx], proposer: Wallet, time: int
                      ) -> tuple[Block, list[tuple[Tx, str]]]:
        """Build and sign the next block from ``txs`` (bad ones skipped and returned with
        reasons). Does NOT apply it: call ``apply_block`` (e.g. once it is final)."""
        height = self.height + 1
        if time <= self.state.meta("time"):
            raise ValueError("block time must be after the parent's")
        after = self.state.fork()
        with self.sigs.active():
            kept, rejected = execute(after, txs, self.genesis, height, proposer.address, time,
                                     strict=False)
        root = after.state_root()
        after.commit()
        header = Header(height, self.head_hash, root, tx_root(kept), time, proposer.address)
        block = Block(sign_header(header, proposer, self.genesis.chain_id), tuple(kept))
        self._keep_checked(block, after, header_checked=False)
        return block, rejected

    def check_block(self, block: Block) -> None:
        """Dry run: raise ``InvalidBlock`` unless ``block`` applies on the head. The head's
        state is left as it was; the state after the block is kept (a few, per head), so
        ``apply_block`` of this block, once it is final, needs no second run of its txs."""
        with self.sigs.active():
            after = apply_block(self.state, block, self.genesis, self.head_hash)
        self._keep_checked(block, after, header_checked=True)

    def _keep_checked(self, block: Block, after: State, header_checked: bool) -> None:
        """Remember the state after ``block`` on the current head (bounded)."""
        if self._checked_on != self.head_hash:
            self._checked, self._checked_on = {}, self.head_hash
        self._checked[block.block_hash()] = (block, after, header_checked)
        while len(self._checked) > MAX_CHECKED:
            del self._checked[next(iter(self._checked))]

    def apply_block(self, block: Block) -> None:
        """Validate and apply ``block``, then persist it atomically; raises ``InvalidBlock``
        (state and store unchanged) if anything is wrong.

        A block this chain checked or produced on this head (``check_block``,
        ``produce_block``) is not run again: the state after it, computed then by the same
        rules from the same state, is adopted — after the header checks (signature, size,
        tx root, …) for a block this chain produced, which nothing checked yet (issue #16:
        every node ran each block's txs twice, once to vote and once to apply)."""
        bh = block.block_hash()
        checked = self._checked.pop(bh, None) if self._checked_on == self.head_hash else None
        # the hash covers the header only: the txs must be the very ones checked too
        if checked is not None and (checked[0] is block or checked[0] == block):
            _, after, header_checked = checked
            if not header_checked:
                with self.sigs.active():
                    check_header(self.state, block, self.genesis, self.head_hash)
            upserts, deletes = after.take_dirty()
            self.store.commit_block(block, upserts, deletes)  # raises: nothing changed
            # take over its contents, not the object: callers hold ``chain.state``
            self.state.__dict__.update(after.__dict__)
            self.head_hash, self._checked = bh, {}
            return
        mark = self.state.checkpoint()
        with self.sigs.active():
            apply_block_in_place(self.state, block, self.genesis, self.head_hash)
        upserts, deletes = self.state.take_dirty()
        try:
            self.store.commit_block(block, upserts, deletes)
        except BaseException:
            self.state.rollback(mark)
            self.state.take_dirty()
            raise
        self.state.commit()
        self.head_hash, self._checked = bh, {}

    def close(self) -> None:
        close = getattr(self.store, "close", None)
        if close is not None:
            close()


__all__ = ["Chain", "InvalidBlock", "TxRejected"]
