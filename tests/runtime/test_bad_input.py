"""Bad input on protocol 2 (issue #13; SPEC R1, R2, C8): a client half missing a file, a
miner half offered to a client, a protocol or format version mismatch, a prompt longer
than the context, too many rows in one request. Each gets a clear error naming what is
wrong, and nothing is served wrong (no partial cache, no call reaches the miner).

The miners are real ``cerberus serve`` processes (tests/runtime/conftest.py) except where
a miner must misbehave in a way the real one cannot: then a small fake gRPC server on
127.0.0.1 plays it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest

from cerberus.artefact import FORMAT_VERSION, Artefact, load_client
from cerberus.errors import CompileError
from cerberus.hashing import folder_digests
from cerberus.ir import evaluate
from cerberus.light_client import ContextOverflow
from cerberus_cli import CLI
from runtime.client import MinerClient, MinerError, _Stream
from runtime.metrics import parse
from runtime.protos import miner_pb2 as pb
from runtime.protos import miner_pb2_grpc as pb_grpc
from runtime.server import CHUNK, PROTOCOL, PROTOCOL_HEADER

from .conftest import Miner
from .test_miner_e2e import PROMPT, stub


def calls(metrics: dict[str, float], method: str) -> float:
    """Every ``method`` call the miner counted, whatever its status."""
    prefix = f'cerberus_requests_total{{method="{method}",'
    return sum(v for k, v in metrics.items() if k.startswith(prefix))


# -- a client half missing a file ----------------------------------------------------------
def test_a_client_half_missing_a_file_is_named(miner: Miner, fhe_artefact: Artefact,
                                               tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with MinerClient(miner.address, cache_dir=cache, seed=21) as c:
        fetched = c.artefact.path  # fetched from the miner and checked against the hash
    sha = fhe_artefact.sha256
    assert fetched == cache / "artefacts" / sha
    assert not (fetched / "miner").exists()  # only digests of the miner half came
    listed = json.loads((fetched / "manifest.json").read_text())["files"]["client"]
    assert "client/linears.npz" in listed
    # a copy without one of the client's files: load_client names it
    damaged = tmp_path / "damaged"
    shutil.copytree(fetched, damaged)
    (damaged / "client" / "linears.npz").unlink()
    with pytest.raises(CompileError, match="missing 1 file") as e:
        load_client(damaged, sha256=sha)
    assert "client/linears.npz" in str(e.value)
    # the same damage in the client's own cache: the SDK refuses it, it does not run on it
    (fetched / "client" / "model.safetensors").unlink()
    with MinerClient(miner.address, cache_dir=cache, seed=21) as c, \
            pytest.raises(CompileError) as e:
        _ = c.artefact
    assert "client/model.safetensors" in str(e.value)


# -- a miner half offered to a client ------------------------------------------------------
class FakeMiner(pb_grpc.MinerServicer):
    """Serves an artefact's files the way no honest miner does: the miner half too (or
    claims another protocol version). No protocol check: it plays a foreign miner."""

    def __init__(self, path: Path, sha: str, protocol: int = PROTOCOL) -> None:
        self.path, self.sha, self.protocol = path, sha, protocol
        self.digests = dict(sorted(folder_digests(path).items()))

    def Info(self, request, context):  # noqa: N802
        return pb.InfoReply(artefact_sha256=self.sha, protocol=self.protocol,
                            format=FORMAT_VERSION, partition="hybrid", version="fake")

    def FetchClient(self, request, context) -> Iterator[pb.FileChunk]:  # noqa: N802
        for rel, digest in self.digests.items():  # every file, the miner half included
            data = (self.path / rel).read_bytes()
            yield pb.FileChunk(path=rel, sha256=digest, data=data[:CHUNK])
            for i in range(CHUNK, len(data), CHUNK):
                yield pb.FileChunk(path=rel, data=data[i:i + CHUNK])


def fake_server(servicer: FakeMiner) -> tuple[grpc.Server, str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_MinerServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


def test_a_client_refuses_a_miner_half(fhe_artefact: Artefact, tmp_path: Path) -> None:
    fake = FakeMiner(fhe_artefact.path, fhe_artefact.sha256)
    assert any(rel.startswith("miner/") for rel in fake.digests)  # it does offer them
    server, address = fake_server(fake)
    cache = tmp_path / "cache"
    try:
        with MinerClient(address, cache_dir=cache) as c:
            with pytest.raises(MinerError, match="miner half") as e:
                c._fetch(fhe_artefact.sha256)  # noqa: SLF001 - the fetch itself
            assert "miner/" in str(e.value)
            with pytest.raises(MinerError, match="miner half"):  # … and through the SDK
                _ = c.artefact
    finally:
        server.stop(grace=None)
    # nothing of it was kept: no artefact in the cache, no temporary folder left over
    assert list((cache / "artefacts").iterdir()) == []


# -- protocol and format versions -----------------------------------------------------------
@pytest.mark.parametrize("sent", [None, "1", "2", "4", "two"])
def test_a_protocol_mismatch_is_failed_precondition_naming_both(miner: Miner,
                                                                sent: str | None) -> None:
    s = stub(miner.address)
    md = () if sent is None else ((PROTOCOL_HEADER, sent),)

    def check(call) -> None:
        with pytest.raises(grpc.RpcError) as e:
            call()
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        details = e.value.details()
        assert f"speaks protocol {PROTOCOL}" in details
        assert f"the client sent {sent or 'none'}" in details

    check(lambda: s.Info(pb.InfoRequest(), metadata=md, timeout=30))
    check(lambda: s.Health(pb.HealthRequest(), metadata=md, timeout=30))
    check(lambda: list(s.FetchClient(pb.FetchClientRequest(), metadata=md, timeout=30)))
    check(lambda: s.UploadKeys(iter([pb.KeyChunk(artefact_sha256="0" * 64, program="p",
                                                 data=b"k")]), metadata=md, timeout=30))
    check(lambda: list(s.Generate(iter([pb.InferRequest(program="p", ciphertexts=[b"x"])]),
                                  metadata=md, timeout=30)))
    # the right version is answered
    info = s.Info(pb.InfoRequest(), metadata=((PROTOCOL_HEADER, str(PROTOCOL)),), timeout=30)
    assert (info.protocol, info.format) == (PROTOCOL, FORMAT_VERSION)


def test_a_client_refuses_a_miner_of_another_protocol(fhe_artefact: Artefact,
                                                      tmp_path: Path) -> None:
    server, address = fake_server(FakeMiner(fhe_artefact.path, fhe_artefact.sha256,
                                            protocol=PROTOCOL + 1))
    try:
        with MinerClient(address, cache_dir=tmp_path / "cache") as c, \
                pytest.raises(MinerError) as e:
            c.info()
    finally:
        server.stop(grace=None)
    msg = str(e.value)
    assert f"protocol {PROTOCOL + 1}" in msg and f"protocol {PROTOCOL}," in msg
    assert not (tmp_path / "cache" / "artefacts").exists()  # nothing fetched from it


def test_a_format_mismatch_is_refused_by_client_and_miner(fhe_artefact: Artefact,
                                                          tmp_path: Path) -> None:
    old = tmp_path / "old.cerb"
    shutil.copytree(fhe_artefact.path, old)
    manifest = json.loads((old / "manifest.json").read_text())
    assert manifest["format"] == FORMAT_VERSION
    manifest["format"] = 1
    (old / "manifest.json").write_text(json.dumps(manifest))
    for sha in (None, fhe_artefact.sha256):  # a local copy, or a fetched client half
        with pytest.raises(CompileError) as e:
            load_client(old, sha256=sha)
        assert f"format 1, this Cerberus reads format {FORMAT_VERSION}" in str(e.value)
    r = subprocess.run([*CLI, "serve", str(old), "--port", "0"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 1 and r.stdout == ""  # never served
    err = r.stderr.strip()
    assert err.startswith("cerberus:") and err.count("\n") == 0
    assert f"format 1, this Cerberus reads format {FORMAT_VERSION}" in err


# -- a prompt longer than the context -------------------------------------------------------
def test_a_prompt_longer_than_the_context_is_refused_before_anything_is_sent(
        miner: Miner, fhe_artefact: Artefact, tmp_path: Path) -> None:
    n = int(fhe_artefact.manifest["model_config"]["n_positions"])
    tok = fhe_artefact.tokenizer
    ids = tok(" ".join([PROMPT] * n)).input_ids[:n - 1]
    assert len(ids) == n - 1
    # the simulator: n - 1 prompt positions and 2 new tokens fit, 3 do not
    assert len(fhe_artefact.generate(ids[:n - 2], 2)) == 2
    with pytest.raises(ContextOverflow, match=f"context of {n}"):
        fhe_artefact.generate(ids, 3)
    with MinerClient(miner.address, cache_dir=tmp_path / "cache", seed=22) as c:
        before = parse(c.metrics())
        for prompt, new in ((ids, 3), (ids + ids[:2], 1)):  # too long to finish / to start
            with pytest.raises(ContextOverflow, match=f"exceed the model's context of {n}"):
                c.generate(prompt, new)
        after = parse(c.metrics())
    for method in ("Generate", "Infer", "UploadKeys"):  # nothing reached the miner
        assert calls(after, method) == calls(before, method), method


def test_too_many_rows_in_one_request_are_invalid_argument(
        miner: Miner, fhe_artefact: Artefact, tmp_path: Path) -> None:
    """A Generate step with max_rows + 1 ciphertexts is refused whole, and the stream's
    status names the limit; one row on a fresh stream is still answered right."""
    md = ((PROTOCOL_HEADER, str(PROTOCOL)),)
    with MinerClient(miner.address, cache_dir=tmp_path / "cache", seed=23) as c:
        kid = c.upload_keys()
        info = c.info()
        name = sorted(fhe_artefact.programs)[0]
        rows = {p.name: p.max_rows for p in info.programs}[name]
        x = np.ones((1, int(fhe_artefact.programs[name].meta["d_model"])), dtype=np.int64)
        ct = c._fhe.lwe.encrypt(name, x)  # noqa: SLF001
        stream = _Stream(c.stub, md, 120)
        with pytest.raises(grpc.RpcError) as e:
            stream.step(pb.InferRequest(key_id=kid, program=name, ciphertexts=[ct] * (rows + 1)))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"{rows + 1} ciphertexts" in e.value.details()
        assert f"send 1 to {rows}" in e.value.details()
        stream.close()
        assert np.array_equal(c.infer(name, x),
                              evaluate(fhe_artefact.programs[name], x)["output"])


def test_key_bytes_are_capped_per_program(fhe_artefact: Artefact) -> None:
    """The outside review: ``UploadKeys`` buffered up to the whole key cache (4 GiB by
    default) per stream, with 4 workers, while a hybrid linear's keys are a few bytes. Each
    program's upload is now capped by its own key sizes (issue #15; SPEC R3)."""
    from runtime.server import MinerService, start

    service = MinerService(fhe_artefact.path)  # the default key cache: 4 GiB
    server, port = start(service, port=0)
    try:
        program = sorted(fhe_artefact.manifest["fhe"])[0]
        chunks = [pb.KeyChunk(artefact_sha256=fhe_artefact.sha256, program=program,
                              data=b"\0" * (1 << 20)) for _ in range(2)]
        with pytest.raises(grpc.RpcError) as e:
            stub(f"127.0.0.1:{port}").UploadKeys(
                iter(chunks), metadata=((PROTOCOL_HEADER, str(PROTOCOL)),), timeout=60)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert program in e.value.details()
    finally:
        server.stop(0).wait()
        service.close()
