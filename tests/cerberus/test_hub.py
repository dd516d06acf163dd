"""Hub ids resolve as ``from_pretrained`` resolves them (issue #13, SPEC C1).

Nothing here reaches the internet: a fake Hub (``http.server`` on 127.0.0.1, in a thread)
serves models/tiny-gpt as ``cerberus-test/tiny-gpt`` through exactly the endpoints
huggingface_hub 2.x's ``snapshot_download`` calls:

- ``GET  /api/models/{id}/revision/{rev}``  repo info (``HfApi.repo_info``): ``sha``, siblings
- ``GET  /api/models/{id}/tree/{rev}``      the file listing (``list_repo_tree``, one page)
- ``HEAD /{id}/resolve/{commit}/{file}``    ``X-Repo-Commit``, ``ETag``, ``Content-Length``
- ``GET  /{id}/resolve/{commit}/{file}``    the bytes

An unknown repo answers 404 with ``X-Error-Code: RepoNotFound``, as the Hub does.
``HF_ENDPOINT``, ``HF_HUB_OFFLINE`` and ``HF_HOME`` are set per test, and since
huggingface_hub reads them once at import, ``huggingface_hub.constants`` is reloaded with
them and again after (the suite itself runs with ``HF_HUB_OFFLINE=1``, tests/conftest.py).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import torch
from huggingface_hub import constants

from cerberus.compile import load_source, state_hash
from cerberus.errors import CompileError
from cerberus.frontends.hub import resolve_model
from cerberus.paths import shipped_model

REPO_ID = "cerberus-test/tiny-gpt"
# models/tiny-gpt's files that compiling needs; training.json and prompts.txt are not fetched.
FETCHED = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
           "tokenizer_config.json"}


class FakeHub:
    """A Hub stand-in on 127.0.0.1 serving local folders as model repos (``main`` only)."""

    def __init__(self, repos: dict[str, Path]) -> None:
        self.repos = {rid: _Repo(folder) for rid, folder in repos.items()}
        self.requests: list[tuple[str, str]] = []  # (method, path): what the client asked
        hub = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 10  # a stuck client cannot hold a server thread forever

            def do_GET(self) -> None:
                hub.answer(self)

            do_HEAD = do_GET  # the same headers; _send writes no body for a HEAD

            def log_message(self, *args: object) -> None:
                pass  # pytest shows the assertions, not an access log

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.thread.is_alive():
            self.server.shutdown()
            self.thread.join(timeout=10)
        self.server.server_close()

    def answer(self, h: BaseHTTPRequestHandler) -> None:
        path = unquote(urlsplit(h.path).path)
        self.requests.append((h.command, path))
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/(revision|tree)/([^/]+)", path):
            repo = self._repo(h, m[1], m[3])
            if repo is not None:
                info = repo.info(m[1]) if m[2] == "revision" else repo.tree()
                self._send(h, 200, json.dumps(info).encode(), {})
        elif m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
            repo = self._repo(h, m[1], m[2])
            if repo is None:
                return
            if m[3] not in repo.files:
                self._send(h, 404, b"", {"X-Error-Code": "EntryNotFound",
                                         "X-Repo-Commit": repo.sha})
                return
            data = repo.files[m[3]]
            self._send(h, 200, data, {"X-Repo-Commit": repo.sha,
                                      "ETag": f'"{repo.etag(m[3])}"'})
        else:
            self._send(h, 404, b"", {})

    def _repo(self, h: BaseHTTPRequestHandler, repo_id: str, rev: str) -> _Repo | None:
        repo = self.repos.get(repo_id)
        if repo is None:
            self._send(h, 404, b'{"error":"Repository not found"}',
                       {"X-Error-Code": "RepoNotFound"})
        elif rev not in ("main", repo.sha):
            self._send(h, 404, b'{"error":"Invalid rev id"}',
                       {"X-Error-Code": "RevisionNotFound"})
            return None
        return repo

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, data: bytes,
              headers: dict[str, str]) -> None:
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(data)


class _Repo:
    """A folder's files with the hashes the Hub reports: git blob ids, LFS sha256 for weights."""

    def __init__(self, folder: Path) -> None:
        self.files = {p.relative_to(folder).as_posix(): p.read_bytes()
                      for p in sorted(folder.rglob("*")) if p.is_file()}
        digest = hashlib.sha1()
        for name, data in self.files.items():
            digest.update(name.encode() + b"\0" + data)
        self.sha = digest.hexdigest()  # a 40-hex "commit" that changes with the content

    def _lfs(self, name: str) -> bool:
        return name.endswith(".safetensors")

    def etag(self, name: str) -> str:
        data = self.files[name]
        if self._lfs(name):
            return hashlib.sha256(data).hexdigest()
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()

    def info(self, repo_id: str) -> dict:
        return {"id": repo_id, "modelId": repo_id, "sha": self.sha, "private": False,
                "siblings": [{"rfilename": n} for n in self.files]}

    def tree(self) -> list[dict]:
        out = []
        for name, data in self.files.items():
            entry = {"type": "file", "path": name, "size": len(data),
                     "oid": hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()}
            if self._lfs(name):
                entry["lfs"] = {"oid": self.etag(name), "size": len(data), "pointerSize": 134}
            out.append(entry)
        return out


def _hf_env(home: Path, endpoint: str, offline: bool) -> dict[str, str]:
    """The variables a user would set; tokens and proxies kept away from the fake Hub."""
    flag = "1" if offline else "0"
    return {"HF_HOME": str(home), "HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": flag,
            "TRANSFORMERS_OFFLINE": flag, "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1", "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}


_UNSET = ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN")


@contextmanager
def hf_env(home: Path, endpoint: str, offline: bool) -> Iterator[None]:
    """Run with these Hub settings, as if the process had started with them."""
    with pytest.MonkeyPatch.context() as mp:
        for k, v in _hf_env(home, endpoint, offline).items():
            mp.setenv(k, v)
        for k in _UNSET:
            mp.delenv(k, raising=False)
        importlib.reload(constants)
        try:
            yield
        finally:
            mp.undo()
            importlib.reload(constants)


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    server = FakeHub({REPO_ID: shipped_model()})
    yield server
    server.stop()


def test_download_gives_the_shipped_model(hub: FakeHub, tmp_path: Path) -> None:
    """Online, an id downloads into HF_HOME and loads as the same model as the local folder."""
    with hf_env(tmp_path / "hf", hub.url, offline=False):
        folder = resolve_model(REPO_ID)
        model, tok, info = load_source(REPO_ID)
    assert folder.is_relative_to(tmp_path / "hf" / "hub")
    assert {p.name for p in folder.iterdir()} == FETCHED
    for name in FETCHED:
        assert (folder / name).read_bytes() == (shipped_model() / name).read_bytes(), name
    assert not any(p.endswith(("training.json", "prompts.txt")) for _, p in hub.requests)
    # an id is hashed as its snapshot folder is: the manifest names the bytes compiled
    assert info == {**load_source(folder)[2], "name": REPO_ID}

    local, local_tok, _ = load_source(shipped_model())
    assert state_hash(model) == state_hash(local)
    ids = torch.tensor([local_tok.encode("the cat sat on the mat")])
    assert tok.encode("the cat sat on the mat") == ids[0].tolist()
    with torch.no_grad():
        assert torch.equal(model(ids), local(ids))


def test_cached_model_resolves_offline_with_the_hub_gone(hub: FakeHub, tmp_path: Path) -> None:
    """After one download, HF_HUB_OFFLINE=1 serves it from the cache without a request; online
    with the Hub unreachable also falls back to the cache, as from_pretrained does."""
    with hf_env(tmp_path / "hf", hub.url, offline=False):
        folder = resolve_model(REPO_ID)
    hub.stop()
    seen = len(hub.requests)
    with hf_env(tmp_path / "hf", hub.url, offline=True):
        assert resolve_model(REPO_ID) == folder
        model, _, _ = load_source(REPO_ID)
    assert state_hash(model) == state_hash(load_source(shipped_model())[0])
    with hf_env(tmp_path / "hf", hub.url, offline=False):
        assert resolve_model(REPO_ID) == folder
    assert len(hub.requests) == seen


def test_offline_and_not_cached_is_one_clear_line(hub: FakeHub, tmp_path: Path) -> None:
    with hf_env(tmp_path / "hf", hub.url, offline=True), pytest.raises(CompileError) as e:
        resolve_model(REPO_ID)
    msg = str(e.value)
    assert "\n" not in msg and REPO_ID in msg
    assert f"HF_HUB_OFFLINE=0 hf download {REPO_ID}" in msg
    assert hub.requests == []  # offline means offline


def test_unknown_id_is_one_clear_line(hub: FakeHub, tmp_path: Path) -> None:
    with hf_env(tmp_path / "hf", hub.url, offline=False), pytest.raises(CompileError) as e:
        load_source("cerberus-test/no-such-model")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("unknown model 'cerberus-test/no-such-model'")
    assert hub.url in msg
    assert ("GET", "/api/models/cerberus-test/no-such-model/revision/main") in hub.requests


def test_unreachable_hub_and_not_cached_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    with hf_env(tmp_path / "hf", url, offline=False), pytest.raises(CompileError) as e:
        resolve_model(REPO_ID)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"cannot download model {REPO_ID!r} from")


def test_model_without_safetensors_is_refused(tmp_path: Path) -> None:
    """Pickled weights can run code when loaded: a repo with only .bin weights is refused."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "config.json").write_bytes((shipped_model() / "config.json").read_bytes())
    (repo / "pytorch_model.bin").write_bytes(b"not fetched")
    hub = FakeHub({"cerberus-test/pickled": repo})
    try:
        with hf_env(tmp_path / "hf", hub.url, offline=False), pytest.raises(CompileError) as e:
            resolve_model("cerberus-test/pickled")
    finally:
        hub.stop()
    assert "no safetensors weights" in str(e.value) and "\n" not in str(e.value)
    assert not any(p.endswith("pytorch_model.bin") for _, p in hub.requests)


def test_cli_compiles_a_hub_id(hub: FakeHub, tmp_path: Path) -> None:
    """``cerberus compile ID`` end to end, in a process started as a user's would be: no
    HF_HUB_OFFLINE at all, so this also fails if cerberus ever defaults it to 1 again."""
    env = {k: v for k, v in os.environ.items() if k not in _UNSET}
    env.update(_hf_env(tmp_path / "hf", hub.url, offline=False))
    del env["HF_HUB_OFFLINE"], env["TRANSFORMERS_OFFLINE"]
    out = tmp_path / "tiny.cerb"
    result = subprocess.run(
        [sys.executable, "-m", "cerberus_cli", "compile", REPO_ID, "-o", str(out),
         "--seq-len", "8"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert ("GET", f"/api/models/{REPO_ID}/revision/main") in hub.requests
    with hf_env(tmp_path / "hf", hub.url, offline=True):  # what it downloaded, from the cache
        _, _, info = load_source(REPO_ID)
    assert json.loads((out / "manifest.json").read_text())["source"] == info


def test_sentence_transformers_pooling_files_are_fetched(tmp_path: Path) -> None:
    """An encoder's pooling and normalisation live in modules.json and 1_Pooling/ (the
    frontend reads them): without them a Hub MiniLM would silently lose its pooling."""
    repo = tmp_path / "repo"
    (repo / "1_Pooling").mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (repo / name).write_bytes((shipped_model() / name).read_bytes())
    (repo / "modules.json").write_text('[{"idx": 0, "path": "", "type": "x"}]')
    (repo / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    (repo / "2_Dense").mkdir()
    (repo / "2_Dense" / "config.json").write_text("{}")  # not a file the frontend reads
    hub = FakeHub({"cerberus-test/st": repo})
    try:
        with hf_env(tmp_path / "hf", hub.url, offline=False):
            folder = resolve_model("cerberus-test/st")
    finally:
        hub.stop()
    assert (folder / "modules.json").is_file() and (folder / "1_Pooling/config.json").is_file()
    assert not (folder / "2_Dense").exists()
