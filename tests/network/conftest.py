"""Fixtures for the network tests: a real FHE artefact of the tiny model and real miners.

Miners are in-process ``runtime.server`` gRPC servers on 127.0.0.1 (port 0), serving the
artefact under real TFHE; ``dead_address`` is a 127.0.0.1 port nothing listens on.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cerberus.artefact import Artefact


@pytest.fixture()
def start_miner(fhe_artefact: Artefact) -> Iterator[Callable[..., str]]:
    """``start_miner(**MinerService options) -> "127.0.0.1:PORT"``; stopped after the test."""
    from runtime.server import MinerService, start

    servers = []

    def run(**options: object) -> str:
        service = MinerService(Path(fhe_artefact.path), **options)  # type: ignore[arg-type]
        server, port = start(service, "127.0.0.1", 0, workers=2, queue=4)
        servers.append((server, service))
        return f"127.0.0.1:{port}"

    yield run
    for server, service in servers:
        server.stop(0).wait()
        service.close()


@pytest.fixture()
def dead_address() -> str:
    """A 127.0.0.1 address that refuses connections: a port bound, then released."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"127.0.0.1:{port}"
