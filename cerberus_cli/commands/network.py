"""``cerberus network up``: a local network on 127.0.0.1 for demos and tests."""

from __future__ import annotations

import argparse
import json
import signal
import tempfile
import threading
from pathlib import Path

from cerberus_cli import JOIN_CMD


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    up = sub.add_parser("up", help="start validators and miners on 127.0.0.1")
    up.add_argument("--validators", type=int, default=3)
    up.add_argument("--miners", type=int, default=3)
    up.add_argument("--misbehave", type=int, default=0, metavar="K",
                    help="the first K miners replay old answers (validators should catch it)")
    up.add_argument("--dir", type=Path, help="where wallets, chains and logs go (default: temp)")
    up.add_argument("--artefact", type=Path,
                    help="artefact to serve (default: compile models/tiny-gpt with --fhe)")
    up.add_argument("--tempo", type=int, default=20, help="blocks per epoch (default 20)")
    up.add_argument("--epochs", type=int, default=0,
                    help="stop after this many epochs (default: run until Ctrl-C)")
    up.add_argument("--query", help="then route this prompt, encrypted, to a miner")
    up.add_argument("--query-tokens", type=int, default=4)
    up.add_argument("--json", type=Path, help="write the summary here")


def run(args: argparse.Namespace) -> int:
    from network import local

    if args.dir is None:
        args.dir = Path(tempfile.mkdtemp(prefix="cerberus-net-"))
    print(f"network folder: {args.dir}", flush=True)
    net = local.start(args.dir, validators=args.validators, miners=args.miners,
                      misbehave=args.misbehave, artefact=args.artefact, tempo=args.tempo,
                      join_cmd=JOIN_CMD)
    try:
        for p in net.procs:
            print(f"{p.name:<12} {p.role:<9} node {p.node}  {p.wallet.address[:16]}…"
                  + ("  (misbehaving)" if p.misbehave else ""), flush=True)
        start_bal = local.balances(net)
        if args.epochs <= 0:
            print("running; Ctrl-C to stop (logs: */join.log)", flush=True)
            stop = threading.Event()
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: stop.set())
            stop.wait()
            epochs = []
        else:
            epochs = local.run_epochs(net, args.epochs, timeout=60 + 10 * args.tempo)
        s = local.summary(net, epochs, start_bal)
        s["roots"] = local.check_roots(net)
        if args.query:
            s["query"] = local.route_query(net, args.query, args.query_tokens)
        local.print_summary(s)
        print(f"state roots at height {s['roots']['height']}: "
              f"{'all equal' if s['roots']['agree'] else 'DIFFER'}")
        if args.query:
            q = s["query"]
            print(f"query {q['prompt']!r} → miner {q['miner']}: {q['answer']!r} "
                  f"({q['seconds']} s, equals simulator: {q['equals_simulator']})")
        if args.json:
            args.json.write_text(json.dumps(s, indent=1))
    finally:
        net.stop()
    return 0
