"""``cerberus join``: become a miner or validator of a Brain (SPEC N4)."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from cerberus.errors import CLIError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--brain", type=int, required=True, help="Brain id to join")
    p.add_argument("--role", choices=("miner", "validator", "enforcer"), required=True,
                   help="enforcer: Brain #2's owner posting the TFT Enforcer's reports")
    p.add_argument("--stake", default="0", help="$BASED to stake (validators: on themselves)")
    p.add_argument("--bootstrap", nargs="*", default=[], metavar="HOST:PORT",
                   help="peers to sync from (none: this is the first node)")
    p.add_argument("--genesis", type=Path, help="genesis JSON (default DATA/../genesis.json)")
    p.add_argument("--data", type=Path, default=Path("cerberus-node"),
                   help="node data folder: chain.db, node.db, caches (default ./cerberus-node)")
    p.add_argument("--wallet", type=Path,
                   help="ed25519 key file, created 0600 if absent (default DATA/wallet.key)")
    p.add_argument("--artefact", type=Path,
                   help="the Brain's compiled artefact, both halves (miners: required; "
                        "validators: default, the folder whose sha256 is the Brain's task "
                        "under --artefacts, next to DATA or in the cache)")
    p.add_argument("--artefacts", type=Path, nargs="*", default=[], metavar="DIR",
                   help="validators: folders to look in for the Brain's artefact by its "
                        "sha256 when --artefact is not given")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="node port (default: any free)")
    p.add_argument("--miner-port", type=int, default=0, help="miner gRPC port (default: any)")
    p.add_argument("--misbehave", metavar="KIND",
                   help="miners only, for testing validators: replay, lazy, random, "
                        "zero-small, first-token, honest-to:IP[,IP...], other:ARTEFACT "
                        "(runtime/server.py)")
    p.add_argument("--tokens", type=int, default=4,
                   help="validators: at most this many new tokens per challenge (2..N are "
                        "drawn; default 4)")
    p.add_argument("--challenge-from", nargs="*", default=[], metavar="IP",
                   help="validators: source addresses challenges leave from (drawn per "
                        "check; default this node's --host)")
    p.add_argument("--challenge-spread", type=float, metavar="S",
                   help="validators: seconds of an epoch over which checks start at random "
                        "(default half an epoch)")
    p.add_argument("--block-interval", type=float, help="seconds between blocks")
    p.add_argument("--round-timeout", type=float, default=3.0,
                   help="seconds before the next proposer may step in (default 3)")
    p.add_argument("--progress-every", type=float, default=5.0,
                   help="seconds between progress lines (default 5)")


def run(args: argparse.Namespace) -> int:
    from network.join import JoinOptions, Participant, parse_based

    genesis = args.genesis or args.data.parent / "genesis.json"
    if args.misbehave and args.role != "miner":
        raise CLIError("--misbehave is for miners")
    if args.misbehave:
        from runtime.server import parse_misbehave

        parse_misbehave(args.misbehave)  # a clear error before anything starts
    opts = JoinOptions(
        brain=args.brain, role=args.role, genesis=genesis, data=args.data,
        wallet=args.wallet or args.data / "wallet.key", stake=parse_based(args.stake),
        bootstrap=list(args.bootstrap), artefact=args.artefact, host=args.host,
        port=args.port, miner_port=args.miner_port, misbehave=args.misbehave,
        tokens=args.tokens, challenge_from=tuple(args.challenge_from),
        challenge_spread=args.challenge_spread, artefacts=tuple(args.artefacts),
        block_interval=args.block_interval,
        round_timeout=args.round_timeout, progress_every=args.progress_every)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    Participant(opts, say=lambda line: print(line, flush=True)).run(stop)
    return 0
