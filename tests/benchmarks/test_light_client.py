"""``benchmarks/light_client.py`` in its quick configuration (issue #13; SPEC R4, C6, C8).

Why: the light client's figures in RESULTS.md (bytes, round trips and seconds per token
through a real miner, MiniLM's cosines) are only as trustworthy as the code that measures
them. These tests run the quick mode's cheap parts — tiny-gpt through a real ``cerberus
serve`` process (4 tokens), MiniLM through the simulator only — and check the JSON's
structure and that every reported equality and target flag is computed from what was
measured (recomputed here from the reported values or from the artefact on disk), never
particular timings: those depend on the machine and its load.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from tolerance import U64, gamma, roundings_approx

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import light_client as lc  # noqa: E402
from cerberus.artefact import load_artefact  # noqa: E402
from cerberus.fhe.packed import PackedParams  # noqa: E402
from cerberus.paths import minilm_path  # noqa: E402


def test_relay_counts_every_byte_both_ways() -> None:
    """The relay's counters are the bytes that crossed it, exactly, in each direction."""
    server = socket.create_server(("127.0.0.1", 0))

    def echo_twice() -> None:
        conn, _ = server.accept()
        with conn:
            data = b""
            while len(data) < 3000:
                data += conn.recv(65536)
            conn.sendall(data + data)

    threading.Thread(target=echo_twice, daemon=True).start()
    relay = lc.Relay(f"127.0.0.1:{server.getsockname()[1]}")
    host, port = relay.address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=30) as c:
            c.sendall(b"x" * 3000)
            got = b""
            while len(got) < 6000:
                got += c.recv(65536)
        assert got == b"x" * 6000
        assert relay.counts() == (3000, 6000)
    finally:
        relay.close()
        server.close()


def test_link_model_and_summary() -> None:
    # 0.5 s wall + 12.5 MB at 12.5 MB/s + 10 round trips of 20 ms = 1.7 s, within the
    # roundings of 0.02, 1.7 (decimal literals), the divide, the product and the two adds:
    # 6 roundings of non-negative terms of at most 1.7
    assert lc.link_seconds(0.5, 12_500_000, 10) == roundings_approx(1.7, 6, 1.7)
    out = lc.summary([3.0, 1.0, 2.0])
    assert (out["median"], out["min"], out["max"], out["n"]) == (2.0, 1.0, 3.0, 3)
    assert out["p95"] == float(np.percentile([1.0, 2.0, 3.0], 95))  # the same call
    assert lc.summary([])["median"] is None


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """The quick mode's tiny-gpt part through a real miner process (~30 s on 2 cores)."""
    work = tmp_path_factory.mktemp("light_client")
    res = lc.run(lc.BenchConfig.quick(parts=("tiny",), fhe=True, workdir=work))
    return res, work


def test_tiny_json_structure(tiny: tuple[dict, Path]) -> None:
    res, _ = tiny
    assert json.loads(json.dumps(res)) == res  # serialises as written to results/
    assert set(res) >= {"config", "link", "tiny_gpt", "wall_s"}
    t = res["tiny_gpt"]
    m = t["miner"]
    assert set(m) >= {"fetch", "keygen_s", "key_upload", "tokens", "tokens_equal_simulator",
                      "prefill", "per_token", "tokens_detail", "total_bytes", "targets"}
    assert t["new_tokens"] == len(m["tokens"]) == len(m["tokens_detail"]) == 4
    assert t["programs"] == 8 and t["linears"] == 12  # 2 blocks: qkv fused, o, fc1, fc2
    md = lc.to_markdown(res)
    assert "s/token" in md and "Prefill" in md and "392 MB" in md


def test_tiny_tokens_equal_the_simulator_by_comparison(tiny: tuple[dict, Path]) -> None:
    res, work = tiny
    t, m = res["tiny_gpt"], res["tiny_gpt"]["miner"]
    # the flag is the comparison of the two reported lists …
    assert m["tokens_equal_simulator"] == (m["tokens"] == t["simulator"]["tokens"])
    # … the simulator's list is what the artefact on disk generates …
    art = load_artefact(work / "tiny-gpt-8.cerb")
    ids = art.tokenizer(t["prompt"]).input_ids
    assert len(ids) == t["prompt_tokens"]
    assert art.generate(ids, t["new_tokens"]) == t["simulator"]["tokens"]
    # … and the miner's tokens are the simulator's (the claim the benchmark reports)
    assert m["tokens_equal_simulator"] is True


def test_tiny_per_token_figures_follow_from_the_measurements(tiny: tuple[dict, Path]) -> None:
    res, work = tiny
    t, m = res["tiny_gpt"], res["tiny_gpt"]["miner"]
    rows = m["tokens_detail"]
    decode = rows[1:]
    assert m["prefill"] == rows[0]
    for r in rows:
        assert r["bytes"] == r["bytes_up"] + r["bytes_down"]
        # the wire carries the ciphertexts plus gRPC framing and headers
        assert r["bytes_up"] > r["ciphertext_bytes_up"] > 0
        assert r["bytes_down"] > r["ciphertext_bytes_down"] > 0
        # one request per program: the prompt's rows and each token's row fit one request
        assert r["round_trips"] == t["programs"]
        assert r["miner_ms"] > 0 and r["wall_s"] > 0
        # the same function on the same values: the same bits
        assert r["s_link"] == lc.link_seconds(r["wall_s"], r["bytes"], r["round_trips"])
    # KV cache: every token sends one row per program, the prefill the prompt's rows. The
    # programs are packed (auto): a reply's size is exact, a message's at most its bound
    fhe = load_artefact(work / "tiny-gpt-8.cerb").manifest["fhe"]
    params = [PackedParams.from_dict(d["packed"]) for d in fhe.values()]
    assert {d["backend"] for d in fhe.values()} == {"packed"}
    for r, n in [(rows[0], t["prompt_tokens"])] + [(r, 1) for r in decode]:
        assert r["ciphertext_bytes_down"] == sum(p.output_bytes(n) for p in params)
        assert r["ciphertext_bytes_up"] <= sum(p.input_bytes(n) for p in params)
    for key, stats in m["per_token"].items():
        assert stats == lc.summary([r[key] for r in decode]), key  # same call, same bits
    assert m["total_bytes"] == sum(r["bytes"] for r in rows)
    assert m["targets"]["bytes_met"] == (max(r["bytes"] for r in decode)
                                         <= lc.TARGET_TOKEN_BYTES)
    assert m["targets"]["s_met"] == (m["per_token"]["s_link"]["median"] <= lc.TARGET_TOKEN_S)
    # the client half came over the wire, no miner file with it; the keys went up once
    f = m["fetch"]
    assert f["miner_files_received"] == []
    assert 0 < f["client_half_bytes"] <= f["bytes_down"]
    assert f["client_half_bytes"] < f["miner_half_bytes"]
    assert m["key_upload"]["evaluation_key_bytes"] == 0  # packed: no evaluation keys
    assert m["key_upload"]["bytes_up"] > 0  # the UploadKeys call itself, for the key id


@pytest.mark.slow  # compiles all-MiniLM-L6-v2 (~1 min on 2 busy cores)
def test_minilm_cosines_are_computed(tmp_path: Path) -> None:
    res = lc.run(lc.BenchConfig.quick(parts=("minilm",), workdir=tmp_path))
    assert json.loads(json.dumps(res)) == res
    n = res["minilm"]
    assert n["miner"] is None  # quick: simulator only
    assert n["programs"] == 24 and n["linears"] == 36  # 6 blocks: qkv fused, o, fc1, fc2
    s = n["simulator"]
    cos = [r["cosine"] for r in s["per_sentence"]]
    assert len(cos) == s["sentences"] == 4
    assert s["cosine_min"] == min(cos)  # a selected entry
    assert s["cosine_mean"] == float(np.mean(cos))  # the same call on the same values
    assert s["target_met"] == (min(cos) >= lc.TARGET_COSINE)
    # recomputed from the artefact on disk and the reference: the same operations on the
    # same values give the same bits
    art = load_artefact(tmp_path / "minilm-8.cerb")
    b = art.tokenizer(lc.load_sentences(4), padding=True, return_tensors="pt")
    ref = lc.reference_embeddings(minilm_path(), b.input_ids, b.attention_mask)
    assert lc.cosines(art.sentence_embedding(b.input_ids, b.attention_mask), ref) == cos
    assert [r["tokens"] for r in s["per_sentence"]] == b.attention_mask.sum(1).tolist()
    # |cos| ≤ 1 (Cauchy–Schwarz) up to float64 rounding: a d-long dot product and two norms
    top = 1.0 + gamma(2 * 384 + 4, U64)
    assert all(-top <= c <= top for c in cos)
    assert "all-MiniLM-L6-v2" in lc.to_markdown(res)
