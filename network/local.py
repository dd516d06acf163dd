"""``cerberus network up``: a whole network on 127.0.0.1 for demos and tests (SPEC N1–N4).

Everything is a real process talking gRPC on loopback:

1. a genesis whose authorities are the validators (so block 1 can be proposed before
   anyone has staked) and which funds every participant;
2. each validator and miner is a ``cerberus join`` process (node + role); the operator
   sets Brain #1's task to the artefact's sha256 by a signed tx;
3. the orchestrator watches the chain through ``network.client.NodeClient`` and, after
   the requested number of epochs, prints who earned what, checks every node's state root
   at one height, optionally routes an encrypted query to a miner (``network.routing``),
   writes a JSON summary and stops the processes (SIGTERM, then SIGKILL if needed).

``--misbehave K`` makes the first K miners lazy (``--misbehave replay``): they answer with
old ciphertexts, which validators catch, so they should earn (almost) nothing.

``enforcer=True`` also starts the TFT Enforcer (``cerberus join --role enforcer`` with the
operator's wallet: the operator owns Brain #2), which posts a ``tft_report`` for Brain #1
each epoch (``network.enforcer``); ``blocks_per_year`` compresses the year so that β(t)
moves within a run (SPEC L7). Both are off by default.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cerberus.errors import CerberusError
from ledger.genesis import Genesis
from ledger.keys import Wallet
from ledger.tx import make_tx
from ledger.units import BASED
from network.join import fmt_based
from network.wallet import load_or_create

log = logging.getLogger("cerberus.network.local")
BRAIN = 1  # reserved Brains #0–#6 belong to the operator at genesis
CHAIN_ID = "cerberus-local"
FUNDS = 1_000 * BASED


@dataclass
class Proc:
    """One ``cerberus join`` child process."""

    name: str
    role: str
    wallet: Wallet
    popen: subprocess.Popen
    log_path: Path
    node: str = ""  # host:port of its node
    misbehave: bool = False

    @property
    def out_path(self) -> Path:
        return self.log_path.with_name("join.out")

    def first_line(self, timeout: float) -> str:
        """The first stdout line (``node ADDRESS on HOST:PORT``), bounded in time.

        Stdout goes to a file, not a pipe: a pipe nobody drains would block the process.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.out_path.read_text() if self.out_path.exists() else ""
            if text.startswith("node ") and "\n" in text:
                return text.split("\n", 1)[0].strip()
            if self.popen.poll() is not None:
                break
            time.sleep(0.2)
        tail = self.log_path.read_text()[-1500:] if self.log_path.exists() else ""
        raise CerberusError(f"{self.name} did not start: {tail}")


@dataclass
class LocalNetwork:
    """The processes of a local network and what the orchestrator learned about them."""

    root: Path
    genesis: Genesis
    artefact: Path
    operator: Wallet
    procs: list[Proc] = field(default_factory=list)

    def client(self, i: int = 0):
        from network.client import NodeClient

        return NodeClient(self.procs[i].node, timeout=10)

    def stop(self) -> None:
        for p in self.procs:
            if p.popen.poll() is None:
                p.popen.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait(timeout=10)


def ensure_artefact(root: Path, given: Path | None = None) -> Path:
    """``given``, or models/tiny-gpt compiled with --fhe (8-token window) under ``root``."""
    if given is not None:
        return given
    out = root / "tiny.cerb"
    if not (out / "manifest.json").exists():
        from cerberus.compile import CompileOptions, compile_model
        from cerberus.paths import shipped_model

        log.info("compiling models/tiny-gpt with --fhe into %s", out)
        compile_model(shipped_model(), out, CompileOptions(seq_len=8, fhe=True))
    return out


def start(root: Path, *, validators: int = 3, miners: int = 3, misbehave: int = 0,
          artefact: Path | None = None, tempo: int = 20, tokens: int = 4,
          start_timeout: float = 180.0, join_cmd: Sequence[str], enforcer: bool = False,
          blocks_per_year: int | None = None) -> LocalNetwork:
    """Create wallets and genesis under ``root``, start every participant, wait for all of
    them to be registered and every miner to be announced; then the Enforcer if asked.

    ``join_cmd`` is the command line that starts one participant (``cerberus join``: the
    application shell's, e.g. ``[python, "-m", "cerberus_cli", "join"]``). The caller
    passes it because this package sits below the shell and must not name it.
    """
    if validators < 1 or miners < 1:
        raise CerberusError("a network needs at least one validator and one miner")
    if not 0 <= misbehave <= miners:
        raise CerberusError("--misbehave must be between 0 and the number of miners")
    root.mkdir(parents=True, exist_ok=True)
    artefact = ensure_artefact(root, artefact)
    from cerberus.artefact import load_artefact

    sha = load_artefact(artefact).sha256
    operator = load_or_create(root / "operator.key")
    wallets = {f"validator-{i}": load_or_create(root / f"validator-{i}" / "wallet.key")
               for i in range(validators)}
    wallets |= {f"miner-{i}": load_or_create(root / f"miner-{i}" / "wallet.key")
                for i in range(miners)}
    genesis_file = root / "genesis.json"
    if genesis_file.exists():
        genesis = Genesis.from_dict(json.loads(genesis_file.read_text()))
    else:
        vals = [wallets[f"validator-{i}"].address for i in range(validators)]
        year = {} if blocks_per_year is None else {"blocks_per_year": blocks_per_year}
        genesis = Genesis(chain_id=CHAIN_ID, operator=operator.address,
                          bridge=operator.address,
                          balances={operator.address: 1_000_000 * BASED,
                                    **{w.address: FUNDS for w in wallets.values()}},
                          time=int(time.time()) - 1, block_time=1, tempo=tempo,
                          authorities=tuple(vals), **year)
        genesis_file.write_text(json.dumps(genesis.to_dict(), indent=1))
    net = LocalNetwork(root, genesis, artefact, operator)
    try:
        for name, wallet in wallets.items():
            role = name.split("-")[0]
            bad = role == "miner" and int(name.split("-")[1]) < misbehave
            boot = [net.procs[0].node] if net.procs else []
            cmd = [*join_cmd, "--brain", str(BRAIN),
                   "--role", role, "--genesis", str(genesis_file), "--data",
                   str(root / name / "data"), "--wallet", str(root / name / "wallet.key"),
                   "--artefact", str(artefact), "--block-interval", "1",
                   "--round-timeout", "2", "--tokens", str(tokens), "--progress-every", "5"]
            if role == "validator":
                cmd += ["--stake", "100"]
            if boot:
                cmd += ["--bootstrap", *boot]
            if bad:
                cmd += ["--misbehave", "replay"]
            log_path = root / name / "join.log"
            with open(log_path.with_name("join.out"), "w") as out, open(log_path, "ab") as err:
                popen = subprocess.Popen(cmd, stdout=out, stderr=err, text=True,
                                         env=dict(os.environ, PYTHONUNBUFFERED="1"))
            proc = Proc(name, role, wallet, popen, log_path, misbehave=bad)
            net.procs.append(proc)
            proc.node = proc.first_line(start_timeout).rsplit(" ", 1)[1]
            log.info("%s %s: node %s", name, wallet.address[:16], proc.node)
            if len(net.procs) == 1:
                _set_task(net, sha)
        _wait_registered(net, validators, miners, start_timeout)
        if enforcer:
            _start_enforcer(net, genesis_file, join_cmd, start_timeout)
    except BaseException:
        net.stop()
        raise
    return net


def _start_enforcer(net: LocalNetwork, genesis_file: Path, join_cmd: Sequence[str],
                    timeout: float) -> None:
    """``cerberus join --role enforcer`` with the operator's key (Brain #2's owner); started
    after the operator's own txs so that the two never race for a nonce."""
    name = "enforcer"
    (net.root / name).mkdir(exist_ok=True)
    cmd = [*join_cmd, "--brain", str(BRAIN), "--role", "enforcer", "--genesis",
           str(genesis_file), "--data", str(net.root / name / "data"), "--wallet",
           str(net.root / "operator.key"), "--block-interval", "1", "--round-timeout", "2",
           "--progress-every", "5", "--bootstrap", net.procs[0].node]
    log_path = net.root / name / "join.log"
    with open(log_path.with_name("join.out"), "w") as out, open(log_path, "ab") as err:
        popen = subprocess.Popen(cmd, stdout=out, stderr=err, text=True,
                                 env=dict(os.environ, PYTHONUNBUFFERED="1"))
    proc = Proc(name, "enforcer", net.operator, popen, log_path)
    net.procs.append(proc)
    proc.node = proc.first_line(timeout).rsplit(" ", 1)[1]
    log.info("enforcer %s: node %s", net.operator.address[:16], proc.node)


def _set_task(net: LocalNetwork, sha: str) -> None:
    """The operator points Brain #1 at the artefact (a signed ``brain_config`` tx)."""
    with net.client() as c:
        c.wait_until(lambda s: s["height"] >= 0, 60)
        tx = make_tx(net.operator, "brain_config", c.nonce(net.operator.address),
                     net.genesis.chain_id, brain=BRAIN, key="task", value=sha)
        reason = c.submit(tx)
        if reason is not None:
            raise CerberusError(f"setting Brain {BRAIN}'s task failed: {reason}")


def _wait_registered(net: LocalNetwork, validators: int, miners: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with net.client() as c:
        while True:
            info = c.brain(BRAIN) or {"validators": {}, "miners": {}}
            announced = c.directory(BRAIN)
            if (len(info["validators"]) == validators and len(info["miners"]) == miners
                    and len(announced) == miners):
                return
            for p in net.procs:
                if p.popen.poll() is not None:
                    raise CerberusError(f"{p.name} exited: {p.log_path.read_text()[-1500:]}")
            if time.monotonic() > deadline:
                raise CerberusError(f"participants not all registered after {timeout:.0f} s: "
                                    f"{len(info['validators'])} validators, "
                                    f"{len(info['miners'])} miners, {len(announced)} announced")
            time.sleep(0.5)


def balances(net: LocalNetwork) -> dict[str, int]:
    with net.client() as c:
        return {p.name: c.balance(p.wallet.address) for p in net.procs} | {
            "operator": c.balance(net.operator.address)}


def latest_weights(c: Any, brain: int, lo: int, hi: int) -> dict[str, dict[int, int]]:
    """Each sender's latest ``set_weights`` row for ``brain`` (uid → weight) in final
    blocks ``lo..hi``, read 128 blocks a call."""
    latest: dict[str, dict[int, int]] = {}
    for start in range(lo, hi + 1, 128):
        for block, _ in c.blocks(start, min(hi, start + 127)):
            for tx in block.txs:
                if tx.kind == "set_weights" and tx.payload["brain"] == brain:
                    latest[tx.sender] = dict(zip(tx.payload["uids"], tx.payload["weights"],
                                                 strict=True))
    return latest


def wait_scored(net: LocalNetwork, timeout: float) -> int:
    """Wait until every validator's weights on chain cover every miner of Brain #1; the
    height where the last of them landed.

    A Brain earns emission only once an epoch found it performing (``ledger.economics``
    ``brain_scores``: stake × performance), and that epoch pays what accumulated before
    it — nothing, for a Brain whose miners were never scored. So earnings show from the
    second epoch boundary after this height; counting epochs from the start instead made
    a slow start (a loaded machine, cold caches) look like honest miners earning nothing.
    """
    validators = {p.wallet.address for p in net.procs if p.role == "validator"}
    deadline = time.monotonic() + timeout
    latest: dict[str, dict[int, int]] = {}  # validator → its latest weights
    seen = 0
    with net.client() as c:
        while True:
            uids = {int(u) for u in (c.brain(BRAIN) or {"miners": {}})["miners"]}
            head = int(c.status()["height"])
            latest |= latest_weights(c, BRAIN, seen + 1, head)
            seen = max(seen, head)
            if uids and all(uids <= set(latest.get(v, {})) for v in validators):
                return head
            if time.monotonic() > deadline:
                raise CerberusError(f"validators had not scored every miner after "
                                    f"{timeout:.0f} s (height {head})")
            time.sleep(0.5)


def run_epochs(net: LocalNetwork, epochs: int, timeout: float) -> list[dict[str, Any]]:
    """Wait until the validators have scored every miner, then for ``epochs`` of Brain
    #1's epoch boundaries; balances at each one."""
    out = []
    wait_scored(net, timeout)
    with net.client() as c:
        h = int(c.status()["height"])
        for _ in range(epochs):
            tempo = int(c.status()["params"]["tempo"])  # live: governance may change it
            boundary = h + 1 + (-(h + 1 + BRAIN)) % tempo  # the next one strictly after h
            c.wait_until(lambda s, b=boundary: s["height"] >= b, timeout)
            h = boundary
            out.append({"height": boundary, "balances": balances(net)})
            log.info("epoch boundary at height %d", boundary)
    return out


def check_roots(net: LocalNetwork, timeout: float = 60) -> dict[str, Any]:
    """Every node's state root at one height all have reached: they must agree."""
    clients = [net.client(i) for i in range(len(net.procs))]
    try:
        height = min(int(c.status()["height"]) for c in clients)
        roots = {}
        for p, c in zip(net.procs, clients, strict=True):
            blocks = c.blocks(height, height)
            roots[p.name] = blocks[0][0].header.state_root if blocks else None
        return {"height": height, "roots": roots, "agree": len(set(roots.values())) == 1}
    finally:
        for c in clients:
            c.close()


def trusted_endpoints(c: Any, brain: int, lookback: int) -> dict[str, int]:
    """Announced miners with the stake-weighted weight validators gave them lately.

    Read from public chain data only: the ``set_weights`` txs of the last ``lookback``
    blocks (each validator's latest counts, scaled by its stake). A client routes to
    miners the validators vouch for; zero-weight miners (wrong or absent answers) are
    left out unless nobody has any weight yet.
    """
    status = c.status()
    stake = status["validators"]
    info = c.brain(brain) or {"miners": {}}
    head = int(status["height"])
    latest = latest_weights(c, brain, max(1, head - lookback + 1), head)
    score: dict[str, int] = {}
    endpoints = c.directory(brain)
    for uid, addr in info["miners"].items():
        if addr in endpoints:
            score[endpoints[addr]] = sum(int(stake.get(v, 0)) * w.get(uid, 0)
                                         for v, w in latest.items())
    return score


def route_query(net: LocalNetwork, prompt: str, tokens: int) -> dict[str, Any]:
    """An encrypted query, routed by embedding radius (N3) among the miners validators
    vouch for (``trusted_endpoints``), falling back to the next one on failure."""
    from cerberus.artefact import load_artefact
    from network.routing import Router, embed_query
    from runtime.client import MinerClient

    art = load_artefact(net.artefact)
    with net.client() as c:
        scores = trusted_endpoints(c, BRAIN, 2 * int(c.status()["params"]["tempo"]))
    endpoints = sorted(e for e, v in scores.items() if v > 0) or sorted(scores)
    router = Router(endpoints)
    emb = embed_query(art, prompt)

    def call(endpoint: str) -> Any:
        with MinerClient(endpoint, artefact=net.artefact, expected_sha256=art.sha256,
                         cache_dir=net.root / "client-cache", timeout=120) as mc:
            return mc.generate(art.tokenizer(prompt).input_ids, tokens)

    t0 = time.perf_counter()
    miner, out = router.route(emb, call)
    return {"prompt": prompt, "miner": miner, "trusted": endpoints, "scores": scores,
            "answer": art.tokenizer.decode(out.ids),
            "tokens": out.ids, "seconds": round(time.perf_counter() - t0, 2),
            "equals_simulator": out.ids == art.generate(art.tokenizer(prompt).input_ids,
                                                        tokens)}


def summary(net: LocalNetwork, epochs: list[dict[str, Any]], start_bal: dict[str, int]
            ) -> dict[str, Any]:
    """Earnings since all registered, per participant and per epoch."""
    final = epochs[-1]["balances"] if epochs else balances(net)
    parts = []
    for p in net.procs:
        parts.append({"name": p.name, "role": p.role, "address": p.wallet.address,
                      "node": p.node, "misbehave": p.misbehave,
                      "earned": final[p.name] - start_bal[p.name]})
    per_epoch = []
    prev = start_bal
    for e in epochs:
        per_epoch.append({"height": e["height"],
                          "emitted_to_participants": sum(e["balances"][k] - prev[k]
                                                         for k in e["balances"]),
                          "by_name": {k: e["balances"][k] - prev[k] for k in e["balances"]}})
        prev = e["balances"]
    return {"chain_id": net.genesis.chain_id, "brain": BRAIN, "participants": parts,
            "epochs": per_epoch, "operator_earned": final["operator"] - start_bal["operator"]}


def print_summary(s: dict[str, Any]) -> None:
    print(f"{'participant':<13} {'role':<10} {'earned $BASED':>15}  address")
    for p in s["participants"]:
        tag = "  (misbehaving)" if p["misbehave"] else ""
        print(f"{p['name']:<13} {p['role']:<10} {fmt_based(p['earned']):>15}  "
              f"{p['address'][:16]}…{tag}")
    print(f"{'operator':<13} {'owner':<10} {fmt_based(s['operator_earned']):>15}")
    for i, e in enumerate(s["epochs"]):
        print(f"epoch {i + 1} (height {e['height']}): {fmt_based(e['emitted_to_participants'])}"
              " $BASED paid out")
