"""The ``cerberus`` command line: compile, serve, bench, join, query.

Every command fails the same way: one line on stderr starting with ``cerberus:`` and a
non-zero exit code, so scripts and operators can rely on it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from cerberus import __version__
from cerberus.errors import CerberusError, CLIError
from cerberus.fhe.exit import exit_now
from cerberus_cli.commands import bench, join, network, query, serve
from cerberus_cli.commands import compile as compile_  # not the builtin

EXIT_ERROR = 1

# Each command module imports its heavy dependencies only inside run(), so importing them
# all here keeps `cerberus --help` fast.
COMMANDS = (
    ("compile", compile_, "compile a model into a NAME.cerb artefact"),
    ("serve", serve, "serve an artefact as a miner (gRPC)"),
    ("query", query, "send an encrypted prompt to a miner and decrypt the answer"),
    ("bench", bench, "benchmark an artefact: keygen, latency, fidelity"),
    ("join", join, "join a network as a miner or validator"),
    ("network", network, "run a local network on 127.0.0.1 (network up)"),
)


def build_parser() -> argparse.ArgumentParser:
    """The parser with every command; each subcommand module adds its own flags."""
    parser = argparse.ArgumentParser(
        prog="cerberus",
        description="Compile transformers into ZK-LLMs (TFHE) and serve them on a network.",
    )
    parser.add_argument("--version", action="version", version=f"cerberus {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module, help_text in COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(func=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # Long work (compilation) reports progress at INFO, so that is the default level.
    level = [logging.INFO, logging.DEBUG][min(args.verbose, 1)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except CLIError as e:  # before CerberusError: it is one, with its own exit code
        print(f"cerberus: {e}", file=sys.stderr)
        return e.code
    except CerberusError as e:
        print(f"cerberus: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("cerberus: interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    """The console script and ``python -m cerberus_cli``: ``main``'s status, kept even
    after a command ran FHE circuits in this process (``cerberus.fhe.exit``)."""
    exit_now(main())


if __name__ == "__main__":
    entry()
