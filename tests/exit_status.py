"""pytest plugin: the session ends with pytest's own exit status (cerberus.fhe.exit).

Loaded by tests/conftest.py; without it a session whose tests ran an FHE circuit exits
0 even when tests failed, and `make test` / `.ci/run` would pass."""

from __future__ import annotations

import pytest

from cerberus.fhe.exit import exit_now

_status: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _status.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    if _status:  # the last thing pytest does: every report is written by now
        exit_now(_status[-1])
