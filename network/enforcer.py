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

Every node checks the report's integer rule while applying the block (``ledger.tft_report``);
:func:`reproduce` is how any node re-derives the float part (skills and checkpoint) from the
public blocks, off the block-apply path, and :class:`Auditor` is the loop a validator runs
for it (``cerberus join --role validator`` audits every report that lands and says whether it
reproduced).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ledger.block import Block
from ledger.genesis import Genesis
from ledger.keys import Wallet
from ledger.series import miner_series, series_of_blocks
from ledger.tft import enforcer_skill
from ledger.tft_report import RECIPE, Recipe, bounded_accuracy, verified_bps
from ledger.tx import Tx, make_tx

log = logging.getLogger("network.enforcer")
RETRIES = 3  # submissions per epoch (a weight row landing meanwhile changes the bound)


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

    A mismatch cannot be refused on chain (see ``ledger.tft_report``); the auditor makes it
    public: each outcome is said and kept. Bounded: each :meth:`step` reads only the blocks
    since the last one (at most ``max_blocks``) and reproduces at most ``max_reports``.
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
