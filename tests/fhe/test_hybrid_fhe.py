"""A compiled artefact under real encryption: the hybrid path of tiny-gpt, bit for bit."""

from pathlib import Path

import numpy as np
import pytest

from cerberus.artefact import load_artefact
from cerberus.compile import CompileOptions, compile_model
from cerberus.fhe.program import FheClient, FheServer
from cerberus.hybrid import extreme_rows
from cerberus.ir import evaluate

MODEL = Path(__file__).resolve().parents[2] / "models" / "tiny-gpt"


@pytest.fixture(scope="module")
def artefact(tmp_path_factory):
    out = tmp_path_factory.mktemp("fhe") / "tiny.cerb"
    compile_model(MODEL, out, CompileOptions(seq_len=8, fhe=True, linear_backend="lwe"))
    return load_artefact(out)


def test_artefact_holds_a_program_per_linear(artefact) -> None:
    assert set(artefact.manifest["fhe"]) == set(artefact.programs)
    for n in artefact.programs:
        assert (artefact.miner.fhe_dir / n / "server.zip").is_file()
        assert (artefact.client.fhe_dir / n / "client.specs").is_file()
        assert not (artefact.client.fhe_dir / n / "server.zip").exists()


def fhe_miner(client: FheClient, server: FheServer, seen: dict | None = None):
    """The miner of the light client, under real encryption, in process."""

    def miner(name: str, xs: np.ndarray) -> np.ndarray:
        if seen is not None:
            seen[name] = seen.get(name, 0) + len(xs)
        keys = client.evaluation_keys(name)
        return np.stack([client.decrypt(name, server.run(name, client.encrypt(name, x), keys))
                         for x in xs])

    return miner


def test_encrypted_kv_cached_generation_equals_the_simulator(artefact, tmp_path) -> None:
    """keygen → encrypt → run (server) → decrypt for every program, through the light
    client's KV-cached decoding: prefill rows, then one row per program per token."""
    client = FheClient(artefact.client.fhe_dir, key_cache=tmp_path / "keys")
    client.keygen(seed=3)
    seen: dict[str, int] = {}
    light = artefact.client.light_client(fhe_miner(client, FheServer(artefact.miner.fhe_dir),
                                                   seen))
    prompt = artefact.tokenizer("The for statement").input_ids
    tokens = 3
    assert light.generate(prompt, tokens) == artefact.generate(prompt, tokens)
    # every program saw the prompt's rows once, then one row per later token
    assert seen == {n: len(prompt) + tokens - 1 for n in artefact.programs}


def test_programs_are_bit_exact_at_the_edges_of_their_ranges(artefact, tmp_path) -> None:
    """Real encryption of the inputs that drive each program's widest output to its
    largest and smallest values, plus all-max and all-min rows."""
    client = FheClient(artefact.client.fhe_dir, key_cache=tmp_path / "keys")
    client.keygen(seed=4)
    server = FheServer(artefact.miner.fhe_dir)
    for name, graph in artefact.programs.items():
        lo, hi = graph["input"].lo, graph["input"].hi
        width = graph["linear"].attrs["weight"].shape[0]
        xs = np.concatenate([extreme_rows(graph), np.full((1, 1, width), hi),
                             np.full((1, 1, width), lo)])
        got = fhe_miner(client, server)(name, xs)
        assert np.array_equal(got, evaluate(graph, xs)["output"]), name


def test_a_reply_decrypts_only_under_its_own_key(artefact, tmp_path) -> None:
    """Privacy as decryption shows it: the miner's reply to one client is the simulator's
    integers under that client's key and something else under another client's."""
    name = "blocks.0.fc1"
    graph = artefact.programs[name]
    x = np.random.default_rng(5).integers(-100, 101, (1, graph["linear"].attrs["weight"]
                                                      .shape[0]))
    mine, other = (FheClient(artefact.client.fhe_dir, key_cache=tmp_path / f"k{i}")
                   for i in (1, 2))
    mine.keygen(seed=21)
    other.keygen(seed=22)
    out = FheServer(artefact.miner.fhe_dir).run(name, mine.encrypt(name, x),
                                                mine.evaluation_keys(name))
    want = evaluate(graph, x[None])["output"][0]
    assert np.array_equal(mine.decrypt(name, out), want)
    assert not np.array_equal(other.decrypt(name, out), want)


def test_programs_simulate_like_the_ir(artefact) -> None:
    """concrete's own simulation agrees with the IR evaluator, at the extremes too."""
    from cerberus.fhe.concrete_backend import compile_circuit

    graph = artefact.programs["blocks.0.fc1"]
    rng = np.random.default_rng(0)
    width = graph["linear"].attrs["weight"].shape[0]
    xs = [rng.integers(-127, 128, (1, width)) for _ in range(8)] + list(extreme_rows(graph))
    circuit = compile_circuit(graph, xs)
    for x in xs[:3] + xs[-2:]:
        assert np.array_equal(circuit.simulate(x), evaluate(graph, x[None])["output"][0])


def test_keys_are_seeded_cached_and_sized(artefact, tmp_path) -> None:
    cache = tmp_path / "keys"
    first = FheClient(artefact.client.fhe_dir, key_cache=cache)
    first.keygen(seed=11)
    cached = sorted(p for p in cache.rglob("*") if p.is_file())
    assert cached, "keygen must leave the keys in the on-disk cache"
    again = FheClient(artefact.client.fhe_dir, key_cache=cache)
    again.keygen(seed=11)
    assert sorted(p for p in cache.rglob("*") if p.is_file()) == cached
    name = "blocks.0.qkv"
    assert again.evaluation_keys(name) == first.evaluation_keys(name)
    assert first.key_bytes() == sum(len(first.evaluation_keys(n)) for n in artefact.programs)
    # a result computed under the first client's keys decrypts with the cached copy
    x = np.zeros((1, 64), dtype=np.int64)
    x[0, :3] = [5, -7, 100]
    out = FheServer(artefact.miner.fhe_dir).run(name, first.encrypt(name, x),
                                                first.evaluation_keys(name))
    assert np.array_equal(again.decrypt(name, out),
                          evaluate(artefact.programs[name], x[None])["output"][0])


def test_keygen_prints_nothing_and_keeps_keys_private(artefact, tmp_path, capfd) -> None:
    """make demo showed concrete's C++ cache chatter ('KeySetCache: miss, regenerating')
    once per program; keygen now says nothing on the process's stdout/stderr, and the key
    files it caches (secret keys) are readable by their owner only."""
    client = FheClient(artefact.client.fhe_dir, key_cache=tmp_path / "keys")
    client.keygen(seed=5)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    files = list((tmp_path / "keys").iterdir())
    specs = {(artefact.client.fhe_dir / n / "client.specs").read_bytes()
             for n in client.clients}
    assert len(files) == len(specs)  # programs with equal specs share their keys
    assert all(f.stat().st_mode & 0o077 == 0 for f in files)
    # … and so is the folder: nobody else may list, add or swap key files (issue #15)
    assert (tmp_path / "keys").stat().st_mode & 0o077 == 0


def test_a_ciphertext_claiming_a_huge_segment_is_refused_before_concrete(artefact,
                                                                          tmp_path) -> None:
    """Fuzzing a live miner (tests/runtime/test_fuzz_miner.py) found that one flipped bit in
    a ciphertext's Cap'n Proto segment table — a segment claiming 2^28 more words than the
    message holds — keeps concrete's deserializer busy for seconds before it fails: a
    miner's workers can be tied up by a few bytes. The miner must refuse such a message
    from its framing alone (issue #15; SPEC R3)."""
    from cerberus.errors import CerberusError

    client = FheClient(artefact.client.fhe_dir, key_cache=tmp_path / "keys")
    client.keygen(seed=3)
    server = FheServer(artefact.miner.fhe_dir)
    name = sorted(client.clients)[0]
    n = int(artefact.programs[name].meta["d_model"])
    good = client.encrypt(name, np.ones((1, n), dtype=np.int64))
    keys = client.evaluation_keys(name)
    for bad in (good[:7] + bytes([good[7] ^ 0x10]) + good[8:],  # segment 0: 2^28 words more
                good[:-8],  # a segment shorter than it claims
                good + b"\0" * 8,  # bytes after the last segment
                b"\xff\xff\xff\xff" + good[4:]):  # 2^32 segments
        with pytest.raises(CerberusError, match="framing"):
            server.run(name, bad, keys)
    with pytest.raises(CerberusError, match="framing"):
        server.run(name, good, keys[:7] + bytes([keys[7] ^ 0x10]) + keys[8:])
