"""The cheat matrix (issue #15; SPEC N2): what each kind of cheating miner earns.

A real network on loopback, every participant a ``cerberus join`` process with its own
127.0.0.x address: 3 validators (started *without* ``--artefact``: each finds the Brain's
artefact by its task under ``--artefacts``), two honest miners and one miner per
misbehaviour of ``runtime/server.py``:

replay, lazy, random, zero-small, squeezed (``other:`` an artefact compiled with a head
budget), fewer-bits (``other:`` one compiled at 4-bit weights), first-token, and
honest-to (honest to the validators' node addresses only; the validators send challenges
from other addresses, ``--challenge-from``).

After every validator has set weights once, the balances of 3 epochs are read from the
chain; each cheat's earnings are compared with the honest miners' mean. Writes
``benchmarks/results/cheat_matrix.json`` and ``cheat_matrix.md``.

Run: ``.venv/bin/python -m benchmarks.cheat_matrix [--epochs 3] [--tempo 30]`` (about 10
minutes on 2 cores). ``tests/network/test_cheat_matrix.py`` runs it as a slow test.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.results import write_json, write_section
from cerberus.errors import CerberusError
from ledger.genesis import Genesis
from ledger.tx import make_tx
from ledger.units import BASED
from network.join import fmt_based
from network.local import LocalNetwork, Proc, balances, check_roots, run_epochs
from network.wallet import load_or_create

log = logging.getLogger("benchmarks.cheat_matrix")
BRAIN = 1
CHAIN_ID = "cerberus-cheat-matrix"
KEY = "cheat_matrix"
VALIDATORS = 3
V_HOST = "127.0.0.{}"  # validator i: 127.0.0.(10+i); miner j: 127.0.0.(30+j)
KINDS = ["honest", "honest", "replay", "lazy", "random", "zero-small", "squeezed",
         "fewer-bits", "first-token", "honest-to"]


def compile_artefacts(root: Path) -> dict[str, Path]:
    """The Brain's artefact (tiny-gpt, packed) and the two a cheat serves instead."""
    from cerberus.compile import CompileOptions, compile_model
    from cerberus.paths import shipped_model

    want = {"tiny": CompileOptions(seq_len=8, fhe=True),
            "squeezed": CompileOptions(seq_len=8, fhe=True, budget=42000),
            "fewer-bits": CompileOptions(seq_len=8, fhe=True, weight_bits=4)}
    out = {}
    for name, opts in want.items():
        path = root / f"{name}.cerb"
        if not (path / "manifest.json").exists():
            compile_model(shipped_model(), path, opts)
        out[name] = path
    return out


def misbehave_flag(kind: str, arts: dict[str, Path]) -> list[str]:
    validators = ",".join(V_HOST.format(10 + i) for i in range(VALIDATORS))
    return {"honest": [], "squeezed": ["--misbehave", f"other:{arts['squeezed']}"],
            "fewer-bits": ["--misbehave", f"other:{arts['fewer-bits']}"],
            "honest-to": ["--misbehave", f"honest-to:{validators}"]}.get(
        kind, ["--misbehave", kind])


def start(root: Path, kinds: list[str], *, tempo: int, start_timeout: float = 300
          ) -> tuple[LocalNetwork, dict[str, str]]:
    """Genesis, then every participant as a ``cerberus join`` process; returns the network
    and each miner's kind by process name."""
    from cerberus.artefact import load_artefact

    root.mkdir(parents=True, exist_ok=True)
    arts = compile_artefacts(root)
    sha = load_artefact(arts["tiny"]).sha256
    operator = load_or_create(root / "operator.key")
    names = [f"validator-{i}" for i in range(VALIDATORS)] + [f"miner-{j}"
                                                              for j in range(len(kinds))]
    wallets = {n: load_or_create(root / n / "wallet.key") for n in names}
    genesis = Genesis(chain_id=CHAIN_ID, operator=operator.address, bridge=operator.address,
                      balances={operator.address: 1_000_000 * BASED,
                                **{w.address: 1_000 * BASED for w in wallets.values()}},
                      time=int(time.time()) - 1, block_time=1, tempo=tempo,
                      authorities=tuple(wallets[f"validator-{i}"].address
                                        for i in range(VALIDATORS)))
    genesis_file = root / "genesis.json"
    genesis_file.write_text(json.dumps(genesis.to_dict(), indent=1))
    net = LocalNetwork(root, genesis, arts["tiny"], operator)
    kind_of: dict[str, str] = {}
    join = [sys.executable, "-m", "cerberus_cli", "join"]
    try:
        for name in names:
            role, i = name.split("-")
            host = V_HOST.format(10 + int(i)) if role == "validator" else V_HOST.format(
                30 + int(i))
            cmd = [*join, "--brain", str(BRAIN), "--role", role, "--genesis",
                   str(genesis_file), "--data", str(root / name / "data"), "--wallet",
                   str(root / name / "wallet.key"), "--host", host, "--block-interval", "1",
                   "--round-timeout", "2", "--progress-every", "10"]
            if net.procs:
                cmd += ["--bootstrap", net.procs[0].node]
            if role == "validator":  # no --artefact: found by the Brain's task
                cmd += ["--stake", "100", "--artefacts", str(root), "--tokens", "3",
                        "--challenge-spread", str(tempo // 3), "--challenge-from",
                        f"127.0.1.{10 + int(i)}", f"127.0.2.{10 + int(i)}"]
            else:
                kind_of[name] = kinds[int(i)]
                cmd += ["--artefact", str(arts["tiny"]),
                        *misbehave_flag(kinds[int(i)], arts)]
            log_path = root / name / "join.log"
            with open(log_path.with_name("join.out"), "w") as out, \
                    open(log_path, "ab") as err:
                popen = subprocess.Popen(cmd, stdout=out, stderr=err, text=True,
                                         env=dict(os.environ, PYTHONUNBUFFERED="1"))
            proc = Proc(name, role, wallets[name], popen, log_path,
                        misbehave=kind_of.get(name, "honest") != "honest")
            net.procs.append(proc)
            proc.node = proc.first_line(start_timeout).rsplit(" ", 1)[1]
            if len(net.procs) == 1:
                _set_task(net, sha)
        _wait(net, lambda c: _all_registered(c, VALIDATORS, len(kinds)), start_timeout,
              "every participant registered and every miner announced")
    except BaseException:
        net.stop()
        raise
    return net, kind_of


def _set_task(net: LocalNetwork, sha: str) -> None:
    with net.client() as c:
        tx = make_tx(net.operator, "brain_config", c.nonce(net.operator.address),
                     net.genesis.chain_id, brain=BRAIN, key="task", value=sha)
        reason = c.submit(tx)
        if reason is not None:
            raise CerberusError(f"setting Brain {BRAIN}'s task failed: {reason}")


def _all_registered(c: Any, validators: int, miners: int) -> bool:
    info = c.brain(BRAIN) or {"validators": {}, "miners": {}}
    return (len(info["validators"]) == validators and len(info["miners"]) == miners
            and len(c.directory(BRAIN)) == miners)


def _wait(net: LocalNetwork, ready: Any, timeout: float, what: str) -> None:
    """Poll ``ready(client)`` (bounded); a dead participant is an error at once."""
    deadline = time.monotonic() + timeout
    with net.client() as c:
        while not ready(c):
            for p in net.procs:
                if p.popen.poll() is not None:
                    raise CerberusError(f"{p.name} exited: {p.log_path.read_text()[-1500:]}")
            if time.monotonic() > deadline:
                raise CerberusError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(1.0)


def _validators_set_weights(net: LocalNetwork) -> bool:
    """Every validator printed at least one finished epoch (its weights tx was sent)."""
    return all("miners correct" in p.out_path.read_text()
               for p in net.procs if p.role == "validator")


def run(root: Path, *, epochs: int = 3, tempo: int = 30, kinds: list[str] | None = None
        ) -> dict[str, Any]:
    """Start the network, wait for the first weights, measure ``epochs`` epochs."""
    kinds = kinds or KINDS
    net, kind_of = start(root, kinds, tempo=tempo)
    try:
        _wait(net, lambda c: _validators_set_weights(net), 6 * tempo + 300,
              "every validator's first weights")
        start_bal = balances(net)
        marks = run_epochs(net, epochs, timeout=6 * tempo + 300)
        final = marks[-1]["balances"]
        roots = check_roots(net)
        outs = {p.name: p.out_path.read_text().splitlines()
                for p in net.procs if p.role == "validator"}
        with net.client() as c:
            addr_uid = {a: int(u) for u, a in (c.brain(BRAIN) or {"miners": {}})
                        ["miners"].items()}
        uid_of = {p.name: addr_uid.get(p.wallet.address, -1) for p in net.procs}
    finally:
        net.stop()
    lines = {n: [ln for ln in out if "miners correct" in ln][-epochs - 1:]
             for n, out in outs.items()}
    miners = [{"name": n, "kind": k, "earned": final[n] - start_bal[n],
               "caught_by": _reason(outs["validator-0"], uid_of[n])}
              for n, k in kind_of.items()]
    honest = [m["earned"] for m in miners if m["kind"] == "honest"]
    mean_honest = sum(honest) / len(honest) if honest else 0
    for m in miners:
        m["share_of_honest"] = round(m["earned"] / mean_honest, 4) if mean_honest else None
    return {"epochs": epochs, "tempo": tempo, "validators": VALIDATORS,
            "miners": miners, "honest_mean": mean_honest,
            "cheats_below_10pct": all(m["earned"] < 0.1 * mean_honest
                                      for m in miners if m["kind"] != "honest"),
            "honest_never_zero": all(e > 0 for e in honest),
            "state_roots_agree": roots["agree"], "validator_epochs": lines}


def _reason(out: list[str], uid: int) -> str | None:
    """A validator's last stated reason for giving ``uid`` weight 0, if any."""
    key = f": uid {uid} wrong: "
    hits = [ln.split(key, 1)[1] for ln in out if key in ln]
    return hits[-1] if hits else None


def markdown(doc: dict[str, Any]) -> str:
    out = [f"Earnings over {doc['epochs']} epochs (tempo {doc['tempo']} blocks of 1 s) of "
           f"real `cerberus join` miners, {doc['validators']} validators checking every "
           "accumulator (`benchmarks/cheat_matrix.py`):", "",
           "| miner | kind | earned $BASED | share of honest mean | validator-0's last reason |",
           "|---|---|---:|---:|---|"]
    for m in doc["miners"]:
        share = "—" if m["share_of_honest"] is None else f"{100 * m['share_of_honest']:.1f} %"
        why = (m.get("caught_by") or "").replace("|", "/")[:110]
        out.append(f"| {m['name']} | {m['kind']} | {fmt_based(m['earned'])} | {share} | "
                   f"{why} |")
    out += ["", f"Every cheat < 10 % of the honest mean: {doc['cheats_below_10pct']}; "
            f"honest miners never at 0: {doc['honest_never_zero']}; state roots agree: "
            f"{doc['state_roots_agree']}.", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--tempo", type=int, default=30)
    ap.add_argument("--dir", type=Path, help="work folder (default: a temp folder)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    root = args.dir or Path(tempfile.mkdtemp(prefix="cheat-matrix-"))
    doc = run(root, epochs=args.epochs, tempo=args.tempo)
    doc["command"] = "python benchmarks/cheat_matrix.py" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    write_json(KEY, doc)
    text = markdown(doc) + f"\n\nCommand: `{doc['command']}`.\n"
    write_section(KEY, "Cheating miners against validators that check every accumulator "
                  "(issue #15; SPEC N2)", text)
    print(text)
    return 0 if doc["cheats_below_10pct"] and doc["honest_never_zero"] else 1


if __name__ == "__main__":
    sys.exit(main())
