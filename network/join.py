"""``cerberus join`` (SPEC N4): one process that is a node plus a miner or a validator.

1. load (or create, mode 0600) the wallet; start the P2P node and sync from the bootstrap
   peers;
2. "memorize": register on the Brain, paying its fee, and stake if asked (validators
   delegate to themselves, miners stake on the Brain); skipped when already done, so a
   restart is harmless;
3. a miner serves the Brain's artefact (its sha256 must be the Brain's task) over gRPC and
   announces its endpoint through the network; a validator checks the Brain's miners once
   per epoch (``network.validator``), sets weights and re-derives the TFT reports that
   landed meanwhile (``network.enforcer.Auditor``, a line each); an enforcer (the owner of Brain #2,
   who registers nothing) posts the TFT Enforcer's signed ``tft_report`` for the Brain once
   per epoch (``network.enforcer``). A validator needs both halves of
   the Brain's artefact: ``--artefact``, or, without it, a folder whose id is the Brain's
   task found under ``--artefacts`` / next to the data folder / the cache
   (``locate_artefact``) — checked after syncing and *before* registering, so a validator
   that cannot work never pays the fee; it never takes the artefact from a miner;
4. every few seconds one progress line: height, peers, epoch, balance and earnings.

Amounts on the command line are $BASED (decimals allowed); everything inside is integer
base units.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from cerberus.errors import CerberusError
from cerberus.paths import CACHE_DIR
from ledger.genesis import Genesis
from ledger.keys import Wallet
from ledger.tx import Tx, make_tx
from ledger.units import BASED
from network.node import Node, NodeConfig
from network.wallet import load_or_create

log = logging.getLogger("cerberus.join")

HASH_FILE = "artefact.sha256"  # cerberus.artefact.HASH_FILE, without importing torch here


def artefact_dirs(data: Path, extra: tuple[Path, ...] = ()) -> list[Path]:
    """Where a validator looks for the Brain's artefact without ``--artefact``: the given
    folders, the data folder's parent, the working folder and the cache's artefacts."""
    out: list[Path] = []
    for d in (*extra, data.resolve().parent, Path.cwd(), CACHE_DIR / "artefacts"):
        if d not in out:
            out.append(d)
    return out


def locate_artefact(task: str, dirs: list[Path]) -> Path | None:
    """A folder holding both halves of the artefact whose id is ``task``, or None.

    Candidates are each folder itself and its children whose recorded ``artefact.sha256``
    is ``task`` and that have a ``miner/`` half (a client's fetched half has none); the
    caller loads the match with ``verify=True``, so a mislabelled folder is refused there.
    Bounded: at most 256 children per folder are looked at.
    """
    for d in dirs:
        if not d.is_dir():
            continue
        children = sorted(c for c in d.iterdir() if c.is_dir())[:256]
        for cand in (d, *children):
            rec = cand / HASH_FILE
            try:
                if rec.is_file() and rec.read_text().strip() == task \
                        and (cand / "miner").is_dir():
                    return cand
            except OSError:
                continue
    return None


def parse_based(text: str) -> int:
    """``"1.5"`` $BASED → 1_500_000_000 base units, exactly (no float on the way)."""
    try:
        value = Decimal(text) * BASED
    except InvalidOperation as e:
        raise CerberusError(f"not an amount of $BASED: {text!r}") from e
    if value < 0 or value != value.to_integral_value():
        raise CerberusError(f"{text!r} $BASED is negative or finer than one base unit")
    return int(value)


def fmt_based(units: int) -> str:
    return f"{Decimal(units) / BASED:,.4f}"


@dataclass
class JoinOptions:
    """What ``cerberus join`` was asked to do."""

    brain: int
    role: str  # "miner" | "validator" | "enforcer"
    genesis: Path
    data: Path
    wallet: Path
    stake: int = 0  # base units
    bootstrap: list[str] = field(default_factory=list)
    artefact: Path | None = None
    host: str = "127.0.0.1"
    port: int = 0
    miner_port: int = 0
    misbehave: str | None = None
    challenges: tuple[str, ...] | None = None  # a corpus to cut prompts from; None: shipped
    tokens: int = 4  # validators: at most this many new tokens per challenge (2..tokens)
    challenge_from: tuple[str, ...] = ()  # validators: source addresses for challenges
    challenge_spread: float | None = None  # seconds; None: half an epoch
    artefacts: tuple[Path, ...] = ()  # validators: where to look for the Brain's artefact
    check_timeout: float = 120.0
    block_interval: float | None = None
    round_timeout: float = 3.0
    progress_every: float = 5.0
    wait_timeout: float = 120.0


class NodeChainView:
    """``network.validator.ChainView`` over this process's node (reads under its lock)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.chain_id = node.chain_id

    def miners(self, brain: int) -> dict[int, tuple[str, str | None]]:
        info = self.node.brain_info(brain) or {"miners": {}}
        endpoints = self.node.directory(brain)
        return {int(uid): (addr, endpoints.get(addr)) for uid, addr in info["miners"].items()}

    def nonce(self, address: str) -> int:
        """The next nonce after the chain's and this node's pending txs: a set_weights
        still waiting for a block (slow blocks) must not make the next epoch's collide
        with it (the mempool keeps one tx per sender and nonce)."""
        return int(self.node.account(address)["pending_nonce"])

    def submit(self, tx: Tx) -> str | None:
        return self.node.submit(tx)

    def param(self, name: str) -> int:
        return int(self.node.read(lambda c: c.state.param(name)))


def _wait(what: str, check: Callable[[], bool], timeout: float, every: float = 0.25,
          progress: Callable[[], str] | None = None) -> None:
    """Poll ``check`` until true; a clear error after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_note = time.monotonic()
    while not check():
        if time.monotonic() > deadline:
            raise CerberusError(f"timed out after {timeout:.0f} s waiting for {what}")
        if progress is not None and time.monotonic() - last_note > 5:
            log.info("waiting for %s: %s", what, progress())
            last_note = time.monotonic()
        time.sleep(every)


class Participant:
    """A running node plus its role; ``run`` blocks until ``stop`` is set."""

    def __init__(self, opts: JoinOptions, say: Callable[[str], None] = print) -> None:
        if opts.role not in ("miner", "validator", "enforcer"):
            raise CerberusError(f"--role must be miner, validator or enforcer, not {opts.role!r}")
        if not opts.genesis.is_file():
            raise CerberusError(f"no genesis file at {opts.genesis}")
        self.opts = opts
        self.say = say
        self.genesis = Genesis.from_dict(json.loads(opts.genesis.read_text()))
        self.wallet: Wallet = load_or_create(opts.wallet)
        self.node: Node | None = None
        self.miner_server: Any = None
        self.service: Any = None
        self.validator: Any = None
        self.joined_balance = 0
        self.artefact_path: Path | None = None
        self.epochs_done: list[dict[str, Any]] = []
        self.enforcer: Any = None
        self.auditor: Any = None

    # -- steps --------------------------------------------------------------------------
    def start_node(self) -> None:
        o = self.opts
        self.node = Node(NodeConfig(data_dir=o.data, genesis=self.genesis, wallet=self.wallet,
                                    host=o.host, port=o.port, bootstrap=list(o.bootstrap),
                                    block_interval=o.block_interval,
                                    round_timeout=o.round_timeout))
        port = self.node.start()
        # the first stdout line: orchestrators (``cerberus network up``) wait for it
        self.say(f"node {self.wallet.address} on {o.host}:{port}")

    def sync(self) -> None:
        """Catch up with the bootstrap peers' height as it was when we asked."""
        from network.client import NodeClient

        target = 0
        for peer in self.opts.bootstrap:
            try:
                with NodeClient(peer) as c:
                    target = max(target, int(c.status()["height"]))
            except Exception as e:  # noqa: BLE001 - a dead bootstrap peer is reported
                log.warning("bootstrap peer %s: %s", peer, e)
        node = self.node
        assert node is not None
        _wait(f"sync to height {target}", lambda: node.status()["height"] >= target,
              self.opts.wait_timeout,
              progress=lambda: f"height {node.status()['height']}/{target}")
        log.info("synced: height %d", node.status()["height"])

    def register(self) -> None:
        """Memorize (pay the fee, take a slot) and stake; idempotent across restarts."""
        o, node, addr = self.opts, self.node, self.wallet.address
        assert node is not None
        info = node.brain_info(o.brain)
        if info is None:
            raise CerberusError(f"Brain {o.brain} does not exist on this chain")
        roles = {r["address"]: r for r in info["registrations"]}
        done_file = o.data / "joined.json"
        if addr in roles:
            if roles[addr]["role"] != o.role:
                raise CerberusError(f"{addr[:16]} is already a {roles[addr]['role']} of Brain "
                                    f"{o.brain}; one role per address")
            log.info("already registered on Brain %d as %s uid %d", o.brain, o.role,
                     roles[addr]["uid"])
        else:
            fee = int(info["registration_fee"])
            balance = int(node.account(addr)["balance"])
            need = fee + o.stake + 2 * self.param("min_fee")
            if balance < need:
                raise CerberusError(
                    f"wallet {addr} holds {fmt_based(balance)} $BASED; registering costs "
                    f"{fmt_based(fee)} and staking {fmt_based(o.stake)}: fund it first")
            self._send("register", brain=o.brain, role=o.role, max_fee=fee)
            _wait(f"registration on Brain {o.brain}",
                  lambda: any(r["address"] == addr for r in
                              (node.brain_info(o.brain) or {"registrations": []})
                              ["registrations"]), o.wait_timeout)
            uid = next(r["uid"] for r in node.brain_info(o.brain)["registrations"]
                       if r["address"] == addr)
            self.say(f"registered on Brain {o.brain} as {o.role} uid {uid} "
                     f"(fee {fmt_based(fee)} $BASED)")
        staked = json.loads(done_file.read_text()).get("staked", 0) if done_file.exists() else 0
        if o.stake > staked:
            delegate = addr if o.role == "validator" else ""
            amount = o.stake - staked
            before = self._stake_of(delegate)
            self._send("stake", brain=o.brain, delegate=delegate, amount=amount)
            _wait("the stake to land", lambda: self._stake_of(delegate) >= before + amount,
                  o.wait_timeout)
            self.say(f"staked {fmt_based(amount)} $BASED on Brain {o.brain}")
            done_file.write_text(json.dumps({"brain": o.brain, "role": o.role,
                                             "staked": o.stake}))
        elif not done_file.exists():
            done_file.write_text(json.dumps({"brain": o.brain, "role": o.role, "staked": 0}))
        self.joined_balance = int(node.account(addr)["balance"])

    def param(self, name: str) -> int:
        """A chain parameter's live value (governance changes them, SPEC L8)."""
        assert self.node is not None
        return int(self.node.read(lambda c: c.state.param(name)))

    def _stake_of(self, delegate: str) -> int:
        assert self.node is not None
        key = (self.opts.brain, delegate or self.wallet.address)
        return int(self.node.read(lambda c: c.state.delegate_stake.get(key, 0)))

    def _send(self, kind: str, **payload: Any) -> None:
        assert self.node is not None
        nonce = int(self.node.account(self.wallet.address)["nonce"])
        tx = make_tx(self.wallet, kind, nonce, self.genesis.chain_id,
                     fee=self.param("min_fee"), **payload)
        reason = self.node.submit(tx)
        if reason is not None:
            raise CerberusError(f"the network refused our {kind} tx: {reason}")

    def start_miner(self) -> None:
        from runtime.server import MinerService, start

        o, node = self.opts, self.node
        assert node is not None
        if o.artefact is None:
            raise CerberusError("a miner needs --artefact (the Brain's compiled model)")
        self.service = MinerService(o.artefact, misbehave=o.misbehave)
        task = (node.brain_info(o.brain) or {}).get("task", "")
        if task and task != self.service.sha256:
            raise CerberusError(f"Brain {o.brain}'s task is artefact {task[:16]}, but "
                                f"{o.artefact} is {self.service.sha256[:16]}")
        if not task:
            log.warning("Brain %d has no task set; serving %s anyway", o.brain,
                        self.service.sha256[:16])
        self.miner_server, port = start(self.service, o.host, o.miner_port)
        endpoint = f"{o.host}:{port}"
        node.announce(o.brain, endpoint)
        self.say(f"miner serving artefact {self.service.sha256[:16]} on {endpoint}"
                 + (f" (misbehaving: {o.misbehave})" if o.misbehave else ""))

    def prepare(self) -> None:
        """What a role needs, checked before registering: a miner its ``--artefact``, a
        validator the Brain's whole artefact (given, or located by the Brain's task)."""
        o, node = self.opts, self.node
        assert node is not None
        task = (node.brain_info(o.brain) or {}).get("task", "")
        if o.role == "miner":
            if o.artefact is None:
                raise CerberusError("a miner needs --artefact (the Brain's compiled model)")
            return
        if o.artefact is not None:
            self.artefact_path = o.artefact
            return
        if not task:  # the owner may be about to set it: wait (bounded), then say why
            def task_now() -> str:
                return str((node.brain_info(o.brain) or {}).get("task", ""))
            try:
                _wait(f"Brain {o.brain}'s task", lambda: bool(task_now()), o.wait_timeout)
            except CerberusError:
                raise CerberusError(
                    f"Brain {o.brain} has no task (artefact sha256) set after "
                    f"{o.wait_timeout:.0f} s, so there is no artefact to look for: pass "
                    "--artefact (both halves of the Brain's model)") from None
            task = task_now()
        dirs = artefact_dirs(o.data, o.artefacts)
        found = locate_artefact(task, dirs)
        if found is None:
            raise CerberusError(
                f"a validator needs the Brain's artefact {task[:16]} (both halves): none "
                f"under {', '.join(str(d) for d in dirs)}; pass --artefact or --artefacts DIR")
        log.info("found Brain %d's artefact %s at %s", o.brain, task[:16], found)
        self.artefact_path = found

    def start_validator(self) -> None:
        from network.validator import Validator

        o, node = self.opts, self.node
        assert node is not None
        if self.artefact_path is None:
            self.prepare()
        assert self.artefact_path is not None
        task = (node.brain_info(o.brain) or {}).get("task", "")
        epoch_s = self.param("tempo") * (o.block_interval or self.genesis.block_time)
        spread = o.challenge_spread if o.challenge_spread is not None else epoch_s / 2
        # default source: this node's own host (what a real validator's machine shows)
        sources = list(o.challenge_from) or (
            [o.host] if o.host not in ("", "0.0.0.0", "::", "127.0.0.1", "localhost") else [])
        self.validator = Validator(
            self.wallet, o.brain, self.artefact_path, NodeChainView(node),
            list(o.challenges) if o.challenges is not None else None, tokens=o.tokens,
            timeout=o.check_timeout, cache_dir=o.data / "validator", sources=sources,
            spread=spread)
        if task and self.validator.artefact.sha256 != task:
            raise CerberusError(f"Brain {o.brain}'s task is artefact {task[:16]}, but "
                                f"{self.artefact_path} is {self.validator.artefact.sha256[:16]}")
        from network.enforcer import Auditor, NodeEnforcerView

        self.auditor = Auditor(self.genesis, NodeEnforcerView(node), say=self.say)
        self.say(f"validator checking Brain {o.brain}'s miners each epoch with artefact "
                 f"{self.validator.artefact.sha256[:16]} (every accumulator, up to {o.tokens} "
                 f"token(s) a challenge, spread over {spread:g} s"
                 + (f", from {', '.join(sources)}" if sources else "") + ")")

    def start_enforcer(self) -> None:
        """The TFT Enforcer loop (``network.enforcer``); only Brain #2's owner may report."""
        from ledger.tft_report import TFT_BRAIN
        from network.enforcer import Enforcer, NodeEnforcerView

        node = self.node
        assert node is not None
        owner = (node.brain_info(TFT_BRAIN) or {}).get("owner")
        if owner != self.wallet.address:
            raise CerberusError(f"--role enforcer needs the wallet of Brain #{TFT_BRAIN}'s "
                                f"owner ({str(owner)[:16]}), not {self.wallet.address[:16]}")
        self.enforcer = Enforcer(self.wallet, self.opts.brain, self.genesis,
                                 NodeEnforcerView(node), say=self.say)
        self.say(f"enforcer reporting Accuracy(TFT) for Brain {self.opts.brain} each epoch")

    # -- the main loop ------------------------------------------------------------------
    def epoch_of(self, height: int) -> int:
        """Brain b's epochs end at heights h with (h + b) % tempo == 0."""
        return (height + self.opts.brain) // self.param("tempo")

    def progress(self) -> str:
        node = self.node
        assert node is not None
        st = node.status()
        h = int(st["height"])
        tempo = self.param("tempo")
        left = tempo - (h + self.opts.brain) % tempo
        bal = int(node.account(self.wallet.address)["balance"])
        line = (f"height {h} | peers {len(st['peers'])} | epoch {self.epoch_of(h)} "
                f"(next in {left} blocks) | balance {fmt_based(bal)} $BASED "
                f"(earned {fmt_based(bal - self.joined_balance)})")
        if self.service is not None:
            line += f" | served {self.service.metrics.requests('Generate')} tokens"
        if self.epochs_done:
            last = self.epochs_done[-1]
            line += f" | last weights {last['weights']}"
        return line

    def run(self, stop: threading.Event) -> None:
        """Join, then serve or validate until ``stop`` is set; always cleans up."""
        try:
            self.start_node()
            self.sync()
            if self.opts.role == "enforcer":
                self.start_enforcer()
            else:
                self.prepare()  # before paying the fee: a participant that cannot work stops
                self.register()
            if self.opts.role == "miner":
                self.start_miner()
            elif self.opts.role == "validator":
                self.start_validator()
            last_epoch = -1
            last_note = 0.0
            while not stop.is_set():
                node = self.node
                assert node is not None
                if self.validator is not None:
                    epoch = self.epoch_of(int(node.status()["height"]))
                    if epoch > last_epoch and node.directory(self.opts.brain):
                        report = self.validator.run_epoch(epoch)
                        last_epoch = epoch
                        d = report.to_dict()
                        self.epochs_done.append(d)
                        ok = sum(1 for r in report.results.values() if r.correct)
                        self.say(f"epoch {epoch}: {ok}/{len(report.results)} miners correct, "
                                 f"weights {d['weights']}"
                                 + (f", rejected: {report.rejected}" if report.rejected else ""))
                        for uid, r in sorted(report.results.items()):  # why each got 0
                            if not r.correct:
                                self.say(f"epoch {epoch}: uid {uid} wrong: "
                                         f"{(r.error or '?').splitlines()[0][:160]}")
                        self.auditor.step()  # the Enforcer's reports since the last epoch
                if self.enforcer is not None:
                    self.enforcer.step()
                if time.monotonic() - last_note >= self.opts.progress_every:
                    self.say(self.progress())
                    last_note = time.monotonic()
                stop.wait(0.5)
        finally:
            self.close()

    def close(self) -> None:
        if self.validator is not None:
            self.validator.stop.set()
        if self.miner_server is not None:
            self.miner_server.stop(5).wait(10)
            self.miner_server = None
        if self.service is not None:
            self.service.close()
            self.service = None
        if self.node is not None:
            self.node.stop()
            self.node = None
