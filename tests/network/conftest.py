"""Fixtures for the network tests: a real FHE artefact of the tiny model and real miners.

Miners are in-process ``runtime.server`` gRPC servers on 127.0.0.1 (port 0), serving the
artefact under real TFHE; ``dead_address`` is a 127.0.0.1 port nothing listens on.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cerberus.artefact import Artefact, load_artefact
from cerberus.compile import CompileOptions, compile_model
from cerberus.paths import shipped_model

SEQ_LEN = 8  # short windows keep each encrypted token to a few seconds on 2 cores


@pytest.fixture(scope="session")
def fhe_artefact(tmp_path_factory: pytest.TempPathFactory) -> Artefact:
    """models/tiny-gpt compiled with --fhe (hybrid partition, 8 bits), loaded."""
    out = tmp_path_factory.mktemp("net-art") / "tiny.cerb"
    compile_model(shipped_model(), out, CompileOptions(seq_len=SEQ_LEN, fhe=True))
    return load_artefact(out)


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
