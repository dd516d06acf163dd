"""The CLI: every command is listed and parses; errors are one line and a non-zero exit."""

import subprocess
import sys

import pytest

from cerberus_cli.main import build_parser, main

COMMANDS = ("compile", "serve", "query", "bench", "join", "network")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cerberus_cli", *args], capture_output=True, text=True, timeout=120
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
                "bench": [command, "A.cerb"], "join": [command, "--brain", "1", "--role", "miner"],
                "network": [command, "up"]}[command]
        assert parser.parse_args(args).command == command


def test_join_without_a_genesis_is_one_line(tmp_path, capsys: pytest.CaptureFixture) -> None:
    code = main(["join", "--brain", "1", "--role", "miner", "--data", str(tmp_path / "d")])
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("cerberus:") and "genesis" in err


def test_bad_amount_is_one_line(tmp_path, capsys: pytest.CaptureFixture) -> None:
    code = main(["join", "--brain", "1", "--role", "validator", "--stake", "1e-12",
                 "--data", str(tmp_path / "d")])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "base unit" in err


def test_unknown_command_is_an_error() -> None:
    result = run_cli("frobnicate")
    assert result.returncode != 0
