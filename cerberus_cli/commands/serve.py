"""``cerberus serve NAME.cerb``: run a miner for one artefact (SPEC R1–R4)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from cerberus.errors import CLIError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("artefact", type=Path, help="artefact folder compiled with --fhe")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=50051, help="port (default 50051; 0 = any free)")
    p.add_argument("--workers", type=int, default=4, help="RPCs computed at once (default 4)")
    p.add_argument("--queue", type=int, default=16,
                   help="RPCs that may wait for a worker; beyond: RESOURCE_EXHAUSTED (default 16)")
    p.add_argument("--per-ip-calls", type=int, default=8,
                   help="RPCs one source address may have in flight, over all its "
                        "connections (default 8)")
    p.add_argument("--per-ip-rate", type=float, default=50.0,
                   help="calls per second one source address may make, bursts of twice "
                        "that (default 50)")
    p.add_argument("--key-cache-mb", type=float, default=4096,
                   help="evaluation-key cache limit in MB, LRU (default 4096)")
    p.add_argument("--grace", type=float, default=30.0,
                   help="seconds in-flight calls get to finish on SIGTERM (default 30)")
    p.add_argument("--record-inputs", type=Path, metavar="FILE",
                   help="append every byte clients send to FILE (audits and tests: it shows "
                        "what a miner can see)")
    p.add_argument("--misbehave", choices=["replay"],
                   help="FOR TESTING VALIDATORS ONLY: 'replay' answers every program with the "
                        "first reply it computed for it (valid ciphertext, wrong answer)")


def run(args: argparse.Namespace) -> int:
    from runtime.limits import PerAddressLimiter
    from runtime.server import JsonFormatter, MinerService, serve_forever

    if args.workers < 1 or args.queue < 0:
        raise CLIError("--workers must be ≥ 1 and --queue ≥ 0")
    if args.per_ip_calls < 1 or args.per_ip_rate <= 0:
        raise CLIError("--per-ip-calls must be ≥ 1 and --per-ip-rate positive")
    if args.key_cache_mb <= 0:
        raise CLIError("--key-cache-mb must be positive")
    if not args.artefact.is_dir():
        raise CLIError(f"no artefact at {args.artefact}")
    for handler in logging.getLogger().handlers:  # structured logs for operators
        handler.setFormatter(JsonFormatter())
    service = MinerService(args.artefact, key_cache_bytes=int(args.key_cache_mb * 2**20),
                           record=args.record_inputs, misbehave=args.misbehave,
                           per_address=PerAddressLimiter(in_flight=args.per_ip_calls,
                                                         rate=args.per_ip_rate,
                                                         burst=2 * args.per_ip_rate))

    def ready(port: int) -> None:  # one plain line on stdout: scripts wait for it
        print(f"serving {service.sha256} on {args.host}:{port}", flush=True)

    serve_forever(service, args.host, args.port, workers=args.workers, queue=args.queue,
                  grace=args.grace, on_ready=ready)
    sys.stdout.flush()
    return 0
