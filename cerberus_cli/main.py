"""The ``cerberus`` command line: compile, serve, bench, join, query.

Every command fails the same way: one line on stderr starting with ``cerberus:`` and a
non-zero exit code, so scripts and operators can rely on it.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence

from cerberus import __version__
from cerberus.errors import CerberusError

log = logging.getLogger("cerberus")

EXIT_ERROR = 1


class CLIError(Exception):
    """An error the user can act on; printed as one line, exit code ``code``."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


# Every command, by module; each module has add_arguments(parser) and run(args), and
# imports its heavy dependencies only inside run(), so `cerberus --help` stays fast.
BUILT = {"compile": "cerberus.cli_compile", "serve": "runtime.cli_serve",
         "query": "runtime.cli_query", "join": "network.cli_join",
         "network": "network.cli_network", "bench": "runtime.cli_bench"}


def _lazy(module: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        return importlib.import_module(module).run(args)

    return run


def build_parser() -> argparse.ArgumentParser:
    """The parser with every command; each subcommand module adds its own flags."""
    parser = argparse.ArgumentParser(
        prog="cerberus",
        description="Compile transformers into ZK-LLMs (TFHE) and serve them on a network.",
    )
    parser.add_argument("--version", action="version", version=f"cerberus {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    commands = [
        ("compile", "compile a model into a NAME.cerb artefact"),
        ("serve", "serve an artefact as a miner (gRPC)"),
        ("query", "send an encrypted prompt to a miner and decrypt the answer"),
        ("bench", "benchmark an artefact: keygen, latency, fidelity"),
        ("join", "join a network as a miner or validator"),
        ("network", "run a local network on 127.0.0.1 (network up)"),
    ]
    for name, help_text in commands:
        p = sub.add_parser(name, help=help_text, description=help_text)
        module = importlib.import_module(BUILT[name])
        module.add_arguments(p)
        p.set_defaults(func=_lazy(BUILT[name]))
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
    except CLIError as e:
        print(f"cerberus: {e}", file=sys.stderr)
        return e.code
    except CerberusError as e:
        print(f"cerberus: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("cerberus: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
