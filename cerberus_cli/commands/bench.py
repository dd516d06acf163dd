"""``cerberus bench NAME.cerb``: keygen and upload apart, the prefill apart, per generated
token bytes up and down, round trips, per-program and per-layer latency, s/token on a
modelled link, and fidelity vs the float model and the unsqueezed baseline (SPEC R4).

The measuring lives in ``runtime.bench`` (tests call it directly); this module only maps
flags to it and prints. The table goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from cerberus.errors import CLIError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("artefact", type=Path, help="artefact folder compiled with --fhe")
    p.add_argument("--miner", metavar="HOST:PORT",
                   help="bench a running miner serving this artefact "
                        "(default: start one in this process on 127.0.0.1)")
    p.add_argument("--tokens", type=int, default=4, help="tokens generated per prompt (4)")
    p.add_argument("--prompts", type=Path, metavar="FILE",
                   help="prompts, one per line (default: two built-in prompts)")
    p.add_argument("--widths", type=int, nargs="+", metavar="BITS",
                   help="recompile the artefact's source at each lookup/activation width "
                        "(2..8) and bench each (default: only the artefact's own width)")
    p.add_argument("--source", type=Path,
                   help="the float source model (default: found from the manifest)")
    p.add_argument("--json", type=Path, default=Path("bench.json"), metavar="OUT",
                   help="where to write the results (default ./bench.json)")
    p.add_argument("--plot", type=Path, metavar="OUT.png",
                   help="also plot latency and fidelity vs. width as a PNG")
    p.add_argument("--link-mbps", type=float, default=100.0, metavar="MBIT",
                   help="link rate of the s/token model in Mbit/s (100: 12.5 MB/s)")
    p.add_argument("--rtt-ms", type=float, default=20.0, metavar="MS",
                   help="round-trip time of the s/token model in ms (20)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per miner call (600)")


def run(args: argparse.Namespace) -> int:
    from runtime import bench

    if args.tokens < 1:
        raise CLIError("--tokens must be at least 1")
    if args.plot is not None and args.plot.suffix.lower() != ".png":
        raise CLIError(f"--plot writes a PNG; give a .png path, not {args.plot}")
    if not args.link_mbps > 0:
        raise CLIError(f"--link-mbps must be positive, got {args.link_mbps}")
    if not args.rtt_ms >= 0:
        raise CLIError(f"--rtt-ms must be at least 0, got {args.rtt_ms}")
    widths = bench.check_widths(args.widths) if args.widths is not None else None
    prompts = bench.read_prompts(args.prompts) if args.prompts else bench.DEFAULT_PROMPTS
    # one log line per RPC of the in-process miner would drown the progress lines
    logging.getLogger("runtime.server").setLevel(logging.WARNING)
    report = bench.run_bench(args.artefact, miner=args.miner, tokens=args.tokens,
                             prompts=prompts, widths=widths, source=args.source,
                             timeout=args.timeout, link_mbps=args.link_mbps,
                             rtt_ms=args.rtt_ms)
    print(bench.table(report))
    print()
    print("per generated token after the prefill, by program (fused linear) and layer:")
    print(bench.program_table(report))
    bad = [r["width"] for r in report["runs"] if not r["equals_simulator"]]
    out = bench.write_json(report, args.json)
    print(f"results: {out}")
    if args.plot is not None:
        print(f"plot: {bench.plot(report, args.plot)}")
    if bad:
        raise CLIError(f"encrypted tokens differ from the simulator's at width(s) {bad}: "
                       f"the circuit or the runtime is wrong (see {out})")
    return 0
