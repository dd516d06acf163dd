"""A compiled artefact under real encryption: the hybrid path of tiny-gpt, bit for bit."""

from pathlib import Path

import numpy as np
import pytest
import torch

from cerberus.artefact import load_artefact
from cerberus.compile import CompileOptions, compile_model
from cerberus.fhe.program import FheClient, FheServer
from cerberus.hybrid import hybrid_model
from cerberus.ir import evaluate

MODEL = Path(__file__).resolve().parents[2] / "models" / "tiny-gpt"


@pytest.fixture(scope="module")
def artefact(tmp_path_factory):
    out = tmp_path_factory.mktemp("fhe") / "tiny.cerb"
    compile_model(MODEL, out, CompileOptions(seq_len=8, fhe=True))
    return load_artefact(out)


def test_artefact_holds_a_program_per_linear(artefact) -> None:
    assert set(artefact.manifest["fhe"]) == set(artefact.parts)
    assert all((artefact.path / "fhe" / n / "server.zip").is_file() for n in artefact.parts)


def test_encrypted_forward_pass_equals_the_simulator(artefact, tmp_path) -> None:
    """keygen → encrypt → run (server) → decrypt, for every linear of both layers."""
    client = FheClient(artefact.path / "fhe", key_cache=tmp_path / "keys")
    client.keygen(seed=3)
    server = FheServer(artefact.path / "fhe")
    seen: dict[str, list[tuple[np.ndarray, bytes]]] = {}

    def miner(name: str, x: np.ndarray) -> np.ndarray:
        ct = client.encrypt(name, x)
        seen.setdefault(name, []).append((x, ct))
        return client.decrypt(name, server.run(name, ct, client.evaluation_keys(name)))

    prompt = artefact.tokenizer("The for statement").input_ids
    ids, pos = artefact.window(prompt)
    with torch.no_grad():
        encrypted = hybrid_model(artefact.model, artefact.parts, miner=miner)(ids)
        simulated = artefact.logits(ids)
    assert torch.equal(encrypted, simulated)
    assert set(seen) == set(artefact.parts)
    # what the miner receives is ciphertext: the quantized activations are not in it
    for name, calls in seen.items():
        x, ct = calls[0]
        for dtype in (np.int64, np.int32, np.int8):
            assert x[0].astype(dtype).tobytes() not in ct, name


def test_programs_simulate_like_the_ir(artefact) -> None:
    """concrete's own simulation agrees with the IR evaluator."""
    from cerberus.fhe.concrete_backend import compile_circuit

    part = artefact.parts["blocks.0.fc1"]
    rng = np.random.default_rng(0)
    width = part.graph["linear"].attrs["weight"].shape[0]
    xs = [rng.integers(-127, 128, (8, width)) for _ in range(8)]
    circuit = compile_circuit(part.graph, xs)
    for x in xs[:3]:
        assert np.array_equal(circuit.simulate(x), evaluate(part.graph, x[None])["output"][0])


def test_keys_are_seeded_cached_and_sized(artefact, tmp_path) -> None:
    cache = tmp_path / "keys"
    first = FheClient(artefact.path / "fhe", key_cache=cache)
    first.keygen(seed=11)
    cached = sorted(p for p in cache.rglob("*") if p.is_file())
    assert cached, "keygen must leave the keys in the on-disk cache"
    again = FheClient(artefact.path / "fhe", key_cache=cache)
    again.keygen(seed=11)
    assert sorted(p for p in cache.rglob("*") if p.is_file()) == cached
    name = "blocks.0.q"
    assert again.evaluation_keys(name) == first.evaluation_keys(name)
    assert first.key_bytes() == sum(len(first.evaluation_keys(n)) for n in artefact.parts)
    # a result computed under the first client's keys decrypts with the cached copy
    x = np.zeros((8, 64), dtype=np.int64)
    x[0, :3] = [5, -7, 100]
    out = FheServer(artefact.path / "fhe").run(name, first.encrypt(name, x),
                                               first.evaluation_keys(name))
    assert np.array_equal(again.decrypt(name, out), evaluate(artefact.parts[name].graph,
                                                             x[None])["output"][0])


def test_keygen_prints_nothing_and_keeps_keys_private(artefact, tmp_path, capfd) -> None:
    """make demo showed concrete's C++ cache chatter ('KeySetCache: miss, regenerating')
    once per program; keygen now says nothing on the process's stdout/stderr, and the key
    files it caches (secret keys) are readable by their owner only."""
    client = FheClient(artefact.path / "fhe", key_cache=tmp_path / "keys")
    client.keygen(seed=5)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    files = list((tmp_path / "keys").iterdir())
    specs = {(artefact.path / "fhe" / n / "client.specs").read_bytes() for n in client.clients}
    assert len(files) == len(specs)  # programs with equal specs share their keys
    assert all(f.stat().st_mode & 0o077 == 0 for f in files)
