"""The TFT Enforcer in a live local network with a compressed year (issue #16; SPEC L7, L9).

``network.local.start`` with ``enforcer=True``: 3 validators that check every accumulator
under real FHE, 3 miners of which the first answers with replayed ciphertexts
(``--misbehave replay``), and Brain #2's owner running ``cerberus join --role enforcer``;
``blocks_per_year`` is small so that β(t) goes 0 → ramp → 1 within the run. Afterwards
the final blocks of node 0 are replayed into an in-memory chain (exact balances after every
block, the Accuracy(TFT) row in force), every landed ``tft_report`` is re-derived from each
node's blocks (``network.enforcer.reproduce``), and the cost of one retraining is timed.

Writes ``benchmarks/results/tft_enforcer.json`` and the ``tft_enforcer`` section of
RESULTS.md. Run: ``.venv/bin/python -m benchmarks.tft_enforcer [--epochs 9] [--tempo 20]
[--year 40]``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.results import write_json, write_section
from ledger.chain import Chain
from ledger.consensus import beta_schedule
from ledger.tft import enforcer_skill
from ledger.tft_report import RECIPE
from network.enforcer import ClientBlocks, landed_reports, reproduce
from network.join import fmt_based
from network.local import BRAIN, LocalNetwork, check_roots, run_epochs, start

log = logging.getLogger("benchmarks.tft_enforcer")
KEY = "tft_enforcer"


def replay(net: LocalNetwork, head: int) -> tuple[dict[int, dict[str, int]],
                                                  dict[int, list[int] | None]]:
    """Miners' balances and the Accuracy(TFT) row after every block, from node 0's blocks."""
    chain = Chain(net.genesis)
    miners = [p for p in net.procs if p.role == "miner"]
    bal: dict[int, dict[str, int]] = {0: {p.name: chain.balance(p.wallet.address)
                                          for p in miners}}
    rows: dict[int, list[int] | None] = {}
    with net.client() as c:
        for block in ClientBlocks(c).blocks(1, head):
            chain.apply_block(block)
            h = chain.height
            bal[h] = {p.name: chain.balance(p.wallet.address) for p in miners}
            entry = chain.state.get("tft", BRAIN)
            rows[h] = None if entry is None else list(entry[1])
    return bal, rows


def retrain_cost(net: LocalNetwork, head: int, repeats: int = 3) -> dict[str, Any]:
    """Seconds for one report's float part: on this run's blocks, and scoring a full Brain
    (1,792 miners) on series of the recipe's length."""
    with net.client() as c:
        rep = landed_reports(ClientBlocks(c), 1, head)
        assert rep, "no report landed"
        _, tx = rep[-1]
        src = ClientBlocks(c)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            reproduce(src, net.genesis, tx, 0)
            times.append(time.perf_counter() - t0)
    rng = np.random.default_rng(0)
    chain = rng.normal(10, 2, size=(RECIPE.blocks, 5))
    full = rng.normal(0, 1, size=(1792, RECIPE.blocks, 5))
    t0 = time.perf_counter()
    enforcer_skill(chain, full, RECIPE)
    return {"report_s_min": round(min(times), 3), "full_brain_1792_miners_s":
            round(time.perf_counter() - t0, 2)}


def run(root: Path, *, epochs: int, tempo: int, year: int) -> dict[str, Any]:
    """Start the network with the Enforcer, wait ``epochs`` epochs, then check and measure."""
    net = start(root, validators=3, miners=3, misbehave=1, tempo=tempo, enforcer=True,
                blocks_per_year=year, join_cmd=[sys.executable, "-m", "cerberus_cli", "join"])
    try:
        marks = run_epochs(net, epochs, timeout=6 * tempo + 300)
        head = marks[-1]["height"]
        roots = check_roots(net)
        bal, rows = replay(net, head)
        repro: list[dict[str, Any]] = []
        for i, p in enumerate(net.procs):
            with net.client(i) as c:
                src = ClientBlocks(c)
                for h, tx in landed_reports(src, 1, head):
                    r = reproduce(src, net.genesis, tx, h)
                    repro.append({"node": p.name, "height": h, "data_height": r.data_height,
                                  "ok": r.ok})
        with net.client() as c:
            reports = [{"height": h, "data_height": tx.payload["data_height"],
                        "skill_bps": tx.payload["skill_bps"],
                        "accuracy_bps": tx.payload["accuracy_bps"],
                        "checkpoint": tx.payload["checkpoint"]}
                       for h, tx in landed_reports(ClientBlocks(c), 1, head)]
            uid_of = {a: int(u) for u, a in (c.brain(BRAIN) or {"miners": {}})["miners"].items()}
        cost = retrain_cost(net, head)
        miners = [p for p in net.procs if p.role == "miner"]
        names = {p.name: {"uid": uid_of.get(p.wallet.address, -1), "misbehave": p.misbehave}
                 for p in miners}
    finally:
        net.stop()
    audits = {p.name: [ln for ln in p.out_path.read_text().splitlines()
                       if ln.startswith("tft_report at height")]
              for p in net.procs if p.role == "validator"}
    per_epoch = []
    first = next((h for h in sorted(rows) if rows[h] is not None), head)
    for h in range(tempo - BRAIN, head + 1, tempo):
        if h < 1 or h - 1 not in bal:
            continue
        got = {n: bal[h][n] - bal[h - 1][n] for n in bal[h]}
        per_epoch.append({"height": h, "beta": round(beta_schedule(h, year), 4),
                          "tft_row": rows[h], "earned": got,
                          "after_first_report": h >= first})
    paid = [e for e in per_epoch if sum(e["earned"].values()) > 0]
    cheat = [n for n, v in names.items() if v["misbehave"]]
    honest = [n for n in names if n not in cheat]
    return {"tempo": tempo, "blocks_per_year": year, "epochs": epochs, "head": head,
            "miners": names, "reports": reports, "reproductions": repro,
            "all_reproduced": bool(repro) and all(r["ok"] for r in repro),
            "state_roots_agree": roots["agree"], "per_epoch": per_epoch,
            "validator_audits": audits,
            "audits_reproduced": sum(ln.endswith(": reproduced") for v in audits.values()
                                     for ln in v),
            "audits_mismatch": sum("MISMATCH" in ln for v in audits.values() for ln in v),
            "cheat_earned": sum(e["earned"][n] for e in paid for n in cheat),
            "honest_earned": {n: sum(e["earned"][n] for e in paid) for n in honest},
            "recipe": {k: getattr(RECIPE, k) for k in RECIPE.__dataclass_fields__},
            "cost": cost}


def markdown(doc: dict[str, Any]) -> str:
    names = sorted(doc["miners"])
    head = " | ".join(f"{n} (uid {doc['miners'][n]['uid']}"
                      f"{', replay' if doc['miners'][n]['misbehave'] else ''})" for n in names)
    out = [f"A local network (`network.local.start(..., enforcer=True)`): 3 validators "
           f"checking every accumulator under FHE, 3 `cerberus join` miners (one replaying "
           f"old ciphertexts), Brain #2's owner as `cerberus join --role enforcer`; tempo "
           f"{doc['tempo']} blocks of 1 s, blocks_per_year = {doc['blocks_per_year']} (β = 0 "
           f"up to height {2 * doc['blocks_per_year']}, 0.9 at {4 * doc['blocks_per_year']}, "
           "then 1).", "",
           f"| epoch end | β(t) | Accuracy(TFT) row in force (bps, by uid) | {head} |",
           "|---:|---:|---|" + "---:|" * len(names)]
    for e in doc["per_epoch"]:
        out.append(f"| {e['height']} | {e['beta']:.3f} | {e['tft_row']} | "
                   + " | ".join(fmt_based(e["earned"][n]) for n in names) + " |")
    n_rep = len(doc["reports"])
    out += ["", f"{n_rep} reports landed (one per epoch once the Enforcer was up: data "
            f"heights {[r['data_height'] for r in doc['reports']]}); every node re-derived "
            f"every report's skills and checkpoint bit for bit: {doc['all_reproduced']} "
            f"({len(doc['reproductions'])} reproductions); state roots agree: "
            f"{doc['state_roots_agree']}; the validators' own audits (`Auditor`, each "
            f"epoch in `cerberus join --role validator`): {doc['audits_reproduced']} "
            f"reproduced, {doc['audits_mismatch']} mismatches; the replaying miner earned "
            f"{fmt_based(doc['cheat_earned'])} $BASED. The honest miners' split moves with "
            "the validators' speed weights (R) from epoch to epoch, which hides β's share "
            "here; `tests/network/test_enforcer_live.py` fixes the weights and checks each "
            "epoch's split against normalise(R + β(t)·A) exactly.", "",
            f"Cost of a report's float part (retrain {doc['recipe']['steps']} steps on "
            f"{doc['recipe']['blocks']} blocks + score, one thread): "
            f"{doc['cost']['report_s_min']} s for this Brain (best of 3); scoring a full "
            f"Brain of 1,792 miners: {doc['cost']['full_brain_1792_miners_s']} s.", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=9)
    ap.add_argument("--tempo", type=int, default=20)
    ap.add_argument("--year", type=int, default=40, help="blocks_per_year of the genesis")
    ap.add_argument("--dir", type=Path, help="work folder (default: a temp folder)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    root = args.dir or Path(tempfile.mkdtemp(prefix="tft-enforcer-"))
    doc = run(root, epochs=args.epochs, tempo=args.tempo, year=args.year)
    doc["command"] = "python -m benchmarks.tft_enforcer" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    write_json(KEY, doc)
    text = markdown(doc) + f"\nCommand: `{doc['command']}`.\n"
    write_section(KEY, "The TFT Enforcer in a live network, compressed year (issue #16; "
                  "SPEC L7, L9)", text)
    print(text)
    ok = doc["all_reproduced"] and doc["cheat_earned"] == 0 and doc["audits_mismatch"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
