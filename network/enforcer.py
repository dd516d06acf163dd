"""The TFT Enforcer in the live network (SPEC L7, L9; issue #16).

Run by the owner of Brain #2 as ``cerberus join --brain N --role enforcer --wallet
OWNER.key``: a node plus this loop. Once per epoch of Brain N, half an epoch after its
boundary (validators set their weights at the boundary), the Enforcer

1. reads the last ``Recipe.blocks`` public blocks from its own node: the chain's series
   (txs, block times, bytes, active addresses, emissions: ``ledger.series.series_of_blocks``)
   and each miner's series from the validators' ``set_weights`` txs
   (``ledger.series.miner_series``) — only on-chain data, so every node has the same inputs;
2. retrains the TFT from the fixed seed, one thread (``ledger.tft.enforcer_skill``), and
   scores each miner: its forecast skill;
3. bounds each skill by the share of validator stake that verified the miner
   (``ledger.tft_report.verified_bps``, read from its node's state) and posts a signed
   ``tft_report`` carrying skills, accuracies, the checkpoint's hash and the data height.

Every node checks the report's integer rule while applying the block (``ledger.tft_report``:
deterministic, no torch). The float part (skills and checkpoint) is checked at the consensus
level instead: a node's :class:`Reproducer` re-derives it (:func:`derive`) from the node's own
blocks, on one worker thread off the node's lock, and caches the verdict by tx hash; the
mempool admits a report only once it reproduced (``network.node``), and a validator prevotes
a block holding a report only once it reproduced (``network.rounds``). So a report with
made-up skills never finalizes while more than a third of the voting stake is honest.
:class:`Auditor` is the loop a validator also runs (``cerberus join --role validator``) that
says, for every report that lands, whether it reproduced here.

torch is imported only when a report is first derived, so a node that never sees one (and
the ledger) never loads it.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ledger.block import Block
from ledger.genesis import Genesis
from ledger.keys import Wallet
from ledger.series import miner_series, series_of_blocks
from ledger.tft_report import RECIPE, Recipe, bounded_accuracy, verified_bps
from ledger.tx import Tx, make_tx

log = logging.getLogger("network.enforcer")
RETRIES = 3  # submissions per epoch (a weight row landing meanwhile changes the bound)
# One derivation at a time per process: training forks torch's global RNG and sets its
# thread count, so two at once (the Enforcer's loop and its node's Reproducer, say) would
# disturb each other's bits.
_TRAINING = threading.Lock()


class BlockSource(Protocol):
    """Final blocks by height: a node in this process, or any node over gRPC."""

    def blocks(self, lo: int, hi: int) -> list[Block]: ...


class EnforcerView(BlockSource, Protocol):
    """What the Enforcer needs from its own node."""

    chain_id: str

    def height(self) -> int: ...

    def report_basis(self, brain: int) -> dict[int, int]: ...  # uid → verified bps

    def param(self, name: str) -> int: ...  # a live chain parameter (governance, SPEC L8)

    def nonce(self, address: str) -> int: ...

    def submit(self, tx: Tx) -> str | None: ...


class ClientBlocks:
    """``BlockSource`` over a ``network.client.NodeClient`` (128 blocks per call)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def blocks(self, lo: int, hi: int) -> list[Block]:
        out: list[Block] = []
        for start in range(lo, hi + 1, 128):
            out += [b for b, _ in self.client.blocks(start, min(hi, start + 127))]
        return out


class NodeEnforcerView:
    """``EnforcerView`` over a ``network.node.Node`` in this process (reads under its lock)."""

    def __init__(self, node: Any) -> None:
        self.node = node
        self.chain_id = node.chain_id

    def height(self) -> int:
        return int(self.node.status()["height"])

    def blocks(self, lo: int, hi: int) -> list[Block]:
        def read(c: Any) -> list[Block]:
            got = [c.block(h) for h in range(lo, hi + 1)]
            if any(b is None for b in got):
                raise KeyError(f"blocks {lo}..{hi} are not all stored")
            return got

        return self.node.read(read)

    def report_basis(self, brain: int) -> dict[int, int]:
        return self.node.read(lambda c: verified_bps(c.state, brain))

    def param(self, name: str) -> int:
        return int(self.node.read(lambda c: c.state.param(name)))

    def nonce(self, address: str) -> int:
        return int(self.node.account(address)["pending_nonce"])

    def submit(self, tx: Tx) -> str | None:
        return self.node.submit(tx)


@dataclass(frozen=True)
class Numbers:
    """The float part of a report, as derived from public blocks."""

    checkpoint: str
    skill_bps: list[int]


def derive(source: BlockSource, genesis: Genesis, brain: int, uids: list[int],
           data_height: int, recipe: Recipe = RECIPE) -> Numbers:
    """Skills and checkpoint hash from the blocks up to ``data_height`` (the recipe's last
    ``recipe.blocks`` of them), for miner slots ``uids``."""
    if data_height < recipe.min_height:
        raise ValueError(f"data height {data_height} is below {recipe.min_height}")
    lo = max(1, data_height - recipe.blocks + 1)
    blocks = source.blocks(max(1, lo - 1), data_height)
    if lo > 1:
        prev_time, blocks = blocks[0].header.time, blocks[1:]
    else:
        prev_time = genesis.time
    if [b.header.height for b in blocks] != list(range(lo, data_height + 1)):
        raise ValueError(f"blocks {lo}..{data_height} are not all available")
    from ledger.tft import enforcer_skill  # torch: loaded on the first derivation only

    with _TRAINING:
        checkpoint, skill = enforcer_skill(series_of_blocks(blocks, prev_time),
                                           miner_series(blocks, brain, uids), recipe)
    return Numbers(checkpoint, skill)


@dataclass(frozen=True)
class Reproduction:
    """A report compared with what this node derives from the public blocks."""

    height: int  # of the block holding the report
    brain: int
    data_height: int
    ok: bool
    reported: Numbers
    derived: Numbers


def reproduce(source: BlockSource, genesis: Genesis, tx: Tx, height: int,
              recipe: Recipe = RECIPE) -> Reproduction:
    """Re-derive a landed ``tft_report``'s skills and checkpoint; ``ok`` when they match.

    The integer part (accuracy = skill × verified) was already checked by every node when
    the block applied; this is the part that needs the TFT.
    """
    p = tx.payload
    derived = derive(source, genesis, p["brain"], list(p["uids"]), p["data_height"], recipe)
    reported = Numbers(p["checkpoint"], list(p["skill_bps"]))
    return Reproduction(height, p["brain"], p["data_height"], derived == reported, reported,
                        derived)


def landed_reports(source: BlockSource, lo: int, hi: int) -> list[tuple[int, Tx]]:
    """``(height, tx)`` of every ``tft_report`` in blocks ``lo..hi``."""
    return [(b.header.height, tx) for b in source.blocks(lo, hi) for tx in b.txs
            if tx.kind == "tft_report"]


@dataclass(frozen=True)
class Verdict:
    """Whether a ``tft_report`` reproduced on this node; ``reason`` says why not."""

    ok: bool
    reason: str = ""


MAX_VERDICTS = 256  # verdicts kept by tx hash (an epoch brings one report per Brain)
MAX_QUEUED = 8  # reports waiting for the worker; a request beyond is refused for now


def judge(source: BlockSource, genesis: Genesis, tx: Tx, recipe: Recipe = RECIPE) -> Verdict:
    """Derive ``tx``'s skills and checkpoint from ``source``'s blocks and compare (the
    report's integer rule is the ledger's business; this is the float part)."""
    p = tx.payload
    prefix = "tft_report not reproduced: "
    try:
        derived = derive(source, genesis, p["brain"], list(p["uids"]), p["data_height"],
                         recipe)
    except (KeyError, ValueError) as e:  # blocks missing, data height out of range
        return Verdict(False, f"{prefix}{e}")
    except Exception as e:  # a peer's report must never stop the worker
        log.exception("deriving tft_report %s failed", tx.tx_hash().hex()[:12])
        return Verdict(False, f"{prefix}derivation failed: {e!r}")
    reported = Numbers(p["checkpoint"], list(p["skill_bps"]))
    if derived == reported:
        return Verdict(True)
    return Verdict(False, f"{prefix}it reports skill_bps {reported.skill_bps} and checkpoint "
                          f"{reported.checkpoint[:16]}; the blocks up to "
                          f"{p['data_height']} give skill_bps {derived.skill_bps} and "
                          f"checkpoint {derived.checkpoint[:16]}")


class Reproducer:
    """A node's verdicts on ``tft_report``s, derived on one worker thread, cached by tx hash.

    Why a worker: a derivation retrains the TFT (about a second, more on a loaded machine)
    and the node must keep voting and gossiping meanwhile, so it never runs under the node's
    lock — the worker reads the blocks it needs through ``source`` (which takes the lock
    only to read them) and trains without it. Bounded: at most ``max_queued`` reports wait
    (:meth:`request` refuses more; the caller asks again later) and at most
    ``max_verdicts`` verdicts are kept, the least recently used dropped first (one dropped
    is derived again if asked). ``on_done(tx, tx_hash, verdict)`` runs on the worker after
    each derivation. The thread starts with the first request.
    """

    def __init__(self, genesis: Genesis, source: BlockSource, *, recipe: Recipe = RECIPE,
                 max_verdicts: int = MAX_VERDICTS, max_queued: int = MAX_QUEUED,
                 on_done: Callable[[Tx, bytes, Verdict], None] | None = None) -> None:
        self.genesis, self.source, self.recipe = genesis, source, recipe
        self.max_verdicts, self.max_queued = max_verdicts, max_queued
        self.on_done = on_done
        self._cond = threading.Condition()
        self._verdicts: OrderedDict[bytes, Verdict] = OrderedDict()
        self._queue: deque[tuple[bytes, Tx]] = deque()  # the head is being derived
        self._stopped = False
        self._thread: threading.Thread | None = None
        self.derived = 0  # derivations done (a cache hit does none)

    def __len__(self) -> int:
        with self._cond:
            return len(self._verdicts)

    def verdict(self, tx_hash: bytes) -> Verdict | None:
        """The cached verdict, or None when there is none (not asked, or not done yet)."""
        with self._cond:
            v = self._verdicts.get(tx_hash)
            if v is not None:
                self._verdicts.move_to_end(tx_hash)
            return v

    def request(self, tx: Tx, tx_hash: bytes) -> bool:
        """Make sure a verdict on ``tx`` comes: True when it is cached, queued or being
        derived; False when the queue is full or the reproducer stopped (ask again later)."""
        with self._cond:
            if tx_hash in self._verdicts or any(h == tx_hash for h, _ in self._queue):
                return True
            if self._stopped or len(self._queue) >= self.max_queued:
                return False
            self._queue.append((tx_hash, tx))
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="tft-reproducer",
                                                daemon=True)
                self._thread.start()
            self._cond.notify_all()
            return True

    def wait(self, tx_hash: bytes, timeout: float) -> Verdict | None:
        """The verdict on a requested report, waiting up to ``timeout`` seconds for it."""
        with self._cond:
            self._cond.wait_for(lambda: tx_hash in self._verdicts or self._stopped
                                or not any(h == tx_hash for h, _ in self._queue), timeout)
        return self.verdict(tx_hash)

    def stop(self, timeout: float = 5.0) -> None:
        """Refuse new requests, drop the queue and wait for a derivation in progress."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _work(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._stopped)
                if self._stopped:
                    self._queue.clear()
                    self._cond.notify_all()
                    return
                tx_hash, tx = self._queue[0]
            verdict = judge(self.source, self.genesis, tx, self.recipe)
            with self._cond:
                self._queue.popleft()
                self.derived += 1
                if not self._stopped:
                    self._verdicts[tx_hash] = verdict
                    while len(self._verdicts) > self.max_verdicts:
                        self._verdicts.popitem(last=False)
                self._cond.notify_all()
            if self.on_done is not None and not self._stopped:
                try:
                    self.on_done(tx, tx_hash, verdict)
                except Exception:  # the caller's hook must not end the worker
                    log.exception("after reproducing tft_report %s", tx_hash.hex()[:12])


class Enforcer:
    """The loop's state: which epoch was reported; :meth:`step` is called every tick."""

    def __init__(self, wallet: Wallet, brain: int, genesis: Genesis, view: EnforcerView,
                 recipe: Recipe = RECIPE, say: Callable[[str], None] = print) -> None:
        self.wallet, self.brain, self.genesis = wallet, brain, genesis
        self.view, self.recipe, self.say = view, recipe, say
        self.reported_epoch = -1
        self.tries = 0
        self.reports: list[dict[str, Any]] = []

    def due(self, height: int) -> int | None:
        """The epoch to report at ``height``, or None: half an epoch after each boundary
        of the Brain (``(h + brain) % tempo == 0``), once per epoch, enough data."""
        tempo = self.view.param("tempo")  # live: governance may change it (SPEC L8)
        epoch, phase = divmod(height + self.brain, tempo)
        if epoch <= self.reported_epoch or phase < tempo // 2:
            return None
        if height < self.recipe.min_height:
            return None
        return epoch

    def build(self, height: int) -> Tx:
        """The signed report over the public blocks up to ``height``."""
        verified = self.view.report_basis(self.brain)
        uids = sorted(verified)
        nums = derive(self.view, self.genesis, self.brain, uids, height, self.recipe)
        acc = [bounded_accuracy(k, verified[u]) for u, k in zip(uids, nums.skill_bps,
                                                                  strict=True)]
        return make_tx(self.wallet, "tft_report", self.view.nonce(self.wallet.address),
                       self.genesis.chain_id, fee=self.view.param("min_fee"), brain=self.brain,
                       uids=uids, accuracy_bps=acc, skill_bps=nums.skill_bps,
                       checkpoint=nums.checkpoint, data_height=height)

    def step(self) -> dict[str, Any] | None:
        """Report if one is due; returns the report's summary when one was accepted."""
        height = self.view.height()
        epoch = self.due(height)
        if epoch is None:
            return None
        try:
            tx = self.build(height)
        except (KeyError, ValueError) as e:  # a block not stored yet: try again next tick
            log.warning("tft_report for epoch %d not built: %s", epoch, e)
            return None
        reason = self.view.submit(tx)
        if reason is not None:
            self.tries += 1
            log.warning("tft_report for epoch %d refused (%d/%d): %s", epoch, self.tries,
                        RETRIES, reason)
            if self.tries >= RETRIES:
                self.say(f"enforcer: epoch {epoch}: gave up after {RETRIES} refusals: "
                         f"{reason}")
                self.reported_epoch, self.tries = epoch, 0
            return None
        self.reported_epoch, self.tries = epoch, 0
        p = tx.payload
        summary = {"epoch": epoch, "data_height": height, "checkpoint": p["checkpoint"],
                   "uids": p["uids"], "skill_bps": p["skill_bps"],
                   "accuracy_bps": p["accuracy_bps"]}
        self.reports.append(summary)
        self.say(f"enforcer: epoch {epoch}: tft_report over blocks ..{height}, checkpoint "
                 f"{p['checkpoint'][:16]}, skill {p['skill_bps']}, accuracy "
                 f"{p['accuracy_bps']}")
        return summary


class Auditor:
    """Re-derives every ``tft_report`` that lands after it starts (a validator runs one).

    Nodes already refuse a report they cannot reproduce (mempool, prevotes: see
    :class:`Reproducer`), so a mismatch here means validators with ≥ 2/3 of the stake
    reproduced a report this machine does not (a different CPU's float rounding, say); the
    auditor makes each outcome public: said and kept. Bounded: each :meth:`step` reads only
    the blocks since the last one (at most ``max_blocks``) and reproduces at most
    ``max_reports``.
    """

    def __init__(self, genesis: Genesis, view: EnforcerView, say: Callable[[str], None] = print,
                 recipe: Recipe = RECIPE, max_blocks: int = 1024, max_reports: int = 8) -> None:
        self.genesis, self.view, self.say, self.recipe = genesis, view, say, recipe
        self.next = view.height() + 1
        self.max_blocks, self.max_reports = max_blocks, max_reports
        self.outcomes: list[Reproduction] = []

    def step(self) -> list[Reproduction]:
        """Audit the reports in the blocks that arrived since the last call."""
        head = self.view.height()
        if head < self.next:
            return []
        lo = max(self.next, head - self.max_blocks + 1)
        self.next = head + 1
        out = []
        for h, tx in landed_reports(self.view, lo, head)[-self.max_reports:]:
            try:
                rep = reproduce(self.view, self.genesis, tx, h, self.recipe)
            except (KeyError, ValueError) as e:  # blocks missing, data height out of range
                self.say(f"tft_report at height {h}: not reproducible here: {e}")
                continue
            verdict = "reproduced" if rep.ok else (
                f"MISMATCH: reported skill {rep.reported.skill_bps} checkpoint "
                f"{rep.reported.checkpoint[:16]}, derived {rep.derived.skill_bps} "
                f"{rep.derived.checkpoint[:16]}")
            self.say(f"tft_report at height {h} (data ..{rep.data_height}): {verdict}")
            out.append(rep)
        self.outcomes += out
        return out
