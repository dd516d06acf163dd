"""The CLI skeleton: every command is listed, unbuilt ones fail loudly in one line."""

import subprocess
import sys

import pytest

from cerberus.cli import build_parser, main

COMMANDS = ("compile", "serve", "query", "bench", "join")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cerberus", *args], capture_output=True, text=True, timeout=120
    )


def test_help_lists_every_command() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for command in COMMANDS:
        assert command in result.stdout


def test_parser_knows_every_command() -> None:
    parser = build_parser()
    for command in COMMANDS:
        args = {"compile": [command, "MODEL"], "serve": [command, "A.cerb"],
                "query": [command, "--miner", "127.0.0.1:1", "hi"],
                "bench": [command, "A.cerb"]}.get(command, [command])
        assert parser.parse_args(args).command == command


@pytest.mark.parametrize("command", ["join"])
def test_unbuilt_command_fails_with_one_line(command: str, capsys: pytest.CaptureFixture) -> None:
    code = main([command])
    err = capsys.readouterr().err
    assert code != 0
    assert err.count("\n") == 1 and err.startswith("cerberus:")
    assert "not built yet" in err


def test_unknown_command_is_an_error() -> None:
    result = run_cli("frobnicate")
    assert result.returncode != 0
