"""``python -m network.cli``: run one P2P node (SPEC N1) until SIGTERM/SIGINT.

The command line lives apart from ``network.node`` (issue #15) so the node module is only
the composition of its parts; this module parses arguments, loads the genesis and wallet,
and runs a ``Node``.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path

from ledger.genesis import Genesis
from network.node import Node, NodeConfig
from network.wallet import load_or_create


def main(argv: list[str] | None = None) -> int:
    """Run one node until SIGTERM/SIGINT; prints ``node ADDRESS on HOST:PORT`` once bound."""
    ap = argparse.ArgumentParser(prog="python -m network.cli",
                                 description="Run one Cerberus P2P node (SPEC N1).")
    ap.add_argument("--data", type=Path, required=True, help="data directory")
    ap.add_argument("--genesis", type=Path, required=True, help="genesis JSON file")
    ap.add_argument("--wallet", type=Path, help="wallet key file (created 0600 if absent)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--bootstrap", nargs="*", action="extend", default=[],
                    metavar="HOST:PORT", help="peers to start from (repeatable)")
    ap.add_argument("--block-interval", type=float, default=None)
    ap.add_argument("--round-timeout", type=float, default=3.0)
    ap.add_argument("--rate", type=float, default=200.0, help="messages/s per peer")
    ap.add_argument("--burst", type=float, default=400.0)
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    genesis = Genesis.from_dict(json.loads(args.genesis.read_text()))
    wallet = load_or_create(args.wallet) if args.wallet else None
    node = Node(NodeConfig(data_dir=args.data, genesis=genesis, wallet=wallet,
                           host=args.host, port=args.port, bootstrap=list(args.bootstrap),
                           block_interval=args.block_interval,
                           round_timeout=args.round_timeout, rate=args.rate,
                           burst=args.burst))
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    port = node.start()
    print(f"node {node.address or '-'} on {args.host}:{port}", flush=True)
    done.wait()
    node.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
