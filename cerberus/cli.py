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
EXIT_NOT_BUILT = 2


class CLIError(Exception):
    """An error the user can act on; printed as one line, exit code ``code``."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


def _not_built(command: str, issue: int) -> Callable[[argparse.Namespace], int]:
    def run(_: argparse.Namespace) -> int:
        raise CLIError(f"'{command}' is not built yet (tracked in issue #{issue})", EXIT_NOT_BUILT)

    return run


# Commands that exist, by module; each module has add_arguments(parser) and run(args).
BUILT = {"compile": "cerberus.cli_compile", "serve": "runtime.cli_serve",
         "query": "runtime.cli_query", "bench": "runtime.cli_bench"}


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
        ("compile", "compile a model into a NAME.cerb artefact", 4),
        ("serve", "serve an artefact as a miner (gRPC)", 6),
        ("query", "send an encrypted prompt to a miner and decrypt the answer", 6),
        ("bench", "benchmark an artefact: keygen, latency, fidelity", 6),
        ("join", "join a network as a miner or validator", 8),
    ]
    for name, help_text, issue in commands:
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name in BUILT:
            module = importlib.import_module(BUILT[name])
            module.add_arguments(p)
            p.set_defaults(func=_lazy(BUILT[name]))
        else:
            p.set_defaults(func=_not_built(name, issue))
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
