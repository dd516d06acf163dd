"""``cerberus bench`` (issues #6, #13; SPEC R4): real keygen, upload and encrypted
KV-cached generation through an in-process miner, at the artefact's width and at a
recompiled narrower one; keys and the prefill reported apart, per token bytes, round trips
and per-program / per-layer latency, s/token on a modelled link, fidelity vs the float
model and the unsqueezed baseline.

Wall-clock numbers are never asserted; what is asserted holds on any machine: the
encrypted tokens are the simulator's, the float predictions are the float model's, counts
are the artefact's, the link model is its formula, the fractions are fractions, and the
files are what they say they are.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tolerance import U64, gamma
from transformers import AutoModelForCausalLM

from cerberus.artefact import Artefact
from cerberus.paths import shipped_model
from cerberus_cli.main import main
from runtime.bench import (
    link_seconds,
    markdown_program_table,
    markdown_table,
    plot,
    program_table,
    run_bench,
    squeezed,
    table,
    write_json,
)

PROMPT = "The for statement is used to"
TOKENS = 2
NARROW = 4
LINK_MBPS, RTT_MS = 80.0, 30.0  # not the defaults: the flags must reach the formula


@pytest.fixture(scope="module")
def report(fhe_artefact: Artefact) -> dict:
    return run_bench(fhe_artefact.path, tokens=TOKENS, prompts=[PROMPT],
                     widths=[int(fhe_artefact.manifest["quantization"]["bits"]), NARROW],
                     link_mbps=LINK_MBPS, rtt_ms=RTT_MS)


def test_bench_measures_each_width_through_a_real_miner(
        report: dict, fhe_artefact: Artefact, tmp_path: Path) -> None:
    own = int(fhe_artefact.manifest["quantization"]["bits"])
    assert [r["width"] for r in report["runs"]] == [own, NARROW]
    assert report["artefact"]["sha256"] == fhe_artefact.sha256
    assert Path(report["source"]["path"]).resolve() == shipped_model().resolve()
    ids = fhe_artefact.tokenizer(PROMPT).input_ids
    hf = AutoModelForCausalLM.from_pretrained(shipped_model()).eval()
    programs = sorted(fhe_artefact.programs)
    layers = sorted({".".join(p.split(".")[:2]) for p in programs})
    assert report["link"] == {"link_mbps": LINK_MBPS, "rtt_ms": RTT_MS}
    for run in report["runs"]:
        assert run["tokens"] == TOKENS and run["miner"] == "in-process"
        assert run["equals_simulator"] is True
        (gen,) = run["generations"]
        assert gen["encrypted_ids"] == gen["simulator_ids"] and len(gen["encrypted_ids"]) == 2
        assert gen["prompt_tokens"] == len(ids)
        # the float reference is the source model itself, on the context the KV-cached
        # circuit sees: the whole sequence so far
        with torch.no_grad():
            want = [int(hf(torch.tensor([ids + gen["encrypted_ids"][:k]]))
                        .logits[0, -1].argmax()) for k in range(TOKENS)]
        assert gen["float_next_ids"] == want
        agree = sum(a == b for a, b in zip(gen["encrypted_ids"], want, strict=True))
        fid = run["fidelity"]
        assert fid["top1_vs_float"] == agree / TOKENS
        assert 0.0 <= fid["top1_vs_float"] <= 1.0
        assert fid["steps"] == TOKENS
        base = sum(a == b for a, b in zip(gen["encrypted_ids"], gen["unsqueezed_next_ids"],
                                          strict=True))
        assert fid["top1_vs_unsqueezed"] == base / TOKENS
        assert fid["unsqueezed_top1_vs_float"] == sum(
            a == b for a, b in zip(gen["unsqueezed_next_ids"], want, strict=True)) / TOKENS
        cfg = fhe_artefact.manifest["model_config"]  # the narrow one: the same options
        assert fid["heads_kept"] == sum(map(len, cfg["heads_kept"]))
        assert fid["heads"] == cfg["n_head"] * cfg["n_layer"]
        lat = run["latency_s"]
        assert 0 < lat["min"] <= lat["p50"] <= lat["p95"] <= lat["max"]
        assert lat["min"] <= lat["mean"] <= lat["max"]
        # n/Σt against 1/mean(t): two float64 sums of n and three divides, γ_{n+3}
        tps = 1 / lat["mean"]
        assert run["tokens_per_s"] == pytest.approx(tps, rel=gamma(TOKENS + 3, U64), abs=0)
        # keys: generated and uploaded once, reported apart from every token
        assert run["keygen_s"] > 0 and run["upload_s"] > 0 and run["key_bytes"] > 0
        assert run["upload_bytes"] == run["key_bytes"]
        assert run["server_ms_per_token"] > 0
        assert run["server_ms_per_token"] / 1000 <= lat["mean"]  # the miner's share of it
        ct = run["ciphertext_mb_per_token"]
        assert ct["sent"] > 0 and ct["received"] > 0
        # exact integer byte counts, two divides each and an add: γ_5 (non-negative)
        assert ct["total"] == pytest.approx(ct["sent"] + ct["received"], rel=gamma(5, U64),
                                            abs=0)
        assert run["programs"] == len(programs)
        # the prefill apart: the prompt's rows to every program in one round trip each;
        # then one row per program per token (q, k, v fused: 4 round trips per block)
        pre, tok = run["prefill"], run["per_token"]
        assert pre["steps"] == 1 and tok["steps"] == TOKENS - 1
        assert pre["prompt_tokens"] == len(ids)
        assert pre["round_trips"] == tok["round_trips"] == len(programs) == 4 * len(layers)
        assert run["round_trips_per_token"] == len(programs)
        assert pre["bytes_sent"] == len(ids) * tok["bytes_sent"] > 0
        assert pre["bytes_received"] == len(ids) * tok["bytes_received"] > 0
        steps = gen["steps"]
        assert [s["round_trips"] for s in steps] == [len(programs)] * TOKENS
        assert steps[0]["bytes_sent"] == pre["bytes_sent"]
        assert steps[1]["bytes_received"] == tok["bytes_received"]
        # s/token: loopback wall + bytes at the link's rate + round trips × RTT, per token
        linked = [s["wall_s"] + (s["bytes_sent"] + s["bytes_received"]) / (LINK_MBPS * 1e6 / 8)
                  + s["round_trips"] * RTT_MS / 1e3 for s in steps]
        assert [link_seconds(s["wall_s"], s["bytes_sent"] + s["bytes_received"],
                             s["round_trips"], link_mbps=LINK_MBPS, rtt_ms=RTT_MS)
                for s in steps] == linked
        assert run["s_per_token"]["p50"] == float(np.percentile(linked, 50))
        assert run["s_per_token"]["p95"] == float(np.percentile(linked, 95))
        assert all(x > s["wall_s"] for x, s in zip(linked, steps, strict=True))
        assert tok["s_link"]["p50"] == linked[1] and pre["s_link"]["p50"] == linked[0]
        # per program (fused linear) and per layer, per token after the prefill
        assert sorted(run["per_program"]) == programs
        assert sorted(run["prefill_per_program"]) == programs
        for name in programs:
            p = run["per_program"][name]
            assert (p["rows"], p["round_trips"]) == (1, 1)
            assert p["server_ms"] > 0 and p["wall_ms"] > 0
            assert run["prefill_per_program"][name]["rows"] == len(ids)
        assert sorted(run["per_layer"]) == layers
        for layer, row in run["per_layer"].items():
            mine = [run["per_program"][p] for p in programs if p.startswith(layer + ".")]
            assert row["programs"] == len(mine) == 4
            # a float64 sum of 4 non-negative terms: γ_4
            assert row["server_ms"] == pytest.approx(sum(m["server_ms"] for m in mine),
                                                     rel=gamma(4, U64), abs=0)
        # the miner's time per token is the programs' time (the same sums, regrouped)
        assert tok["server_ms"] == pytest.approx(
            sum(p["server_ms"] for p in run["per_program"].values()),
            rel=gamma(2 * len(programs), U64), abs=0)
    # this artefact kept every head: the unsqueezed baseline is the artefact itself, so its
    # predictions are the simulator's on the same sequence
    assert not squeezed(fhe_artefact)
    own_run, narrow = report["runs"]
    assert own_run["fidelity"]["unsqueezed_baseline"].startswith("the artefact itself")
    (gen,) = own_run["generations"]
    with torch.no_grad():
        sim = fhe_artefact.logits(torch.tensor([ids + gen["encrypted_ids"][:-1]]))[0]
    assert gen["unsqueezed_next_ids"] == [int(sim[len(ids) - 1 + k].argmax())
                                          for k in range(TOKENS)]
    # the artefact's own width is the artefact itself; the other was compiled for the bench
    own_run, narrow = report["runs"]
    assert own_run["artefact_sha256"] == fhe_artefact.sha256 and own_run["compile_s"] is None
    assert narrow["artefact_sha256"] != fhe_artefact.sha256 and narrow["compile_s"] > 0
    assert narrow["quantization"]["bits"] == NARROW
    # own width: the simulator check is against the loaded artefact, independently
    assert own_run["generations"][0]["encrypted_ids"] == fhe_artefact.generate(ids, TOKENS)


def test_bench_writes_json_table_and_png(report: dict, tmp_path: Path) -> None:
    out = write_json(report, tmp_path / "sub" / "bench.json")
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    text = table(report).splitlines()
    assert len(text) == 2 + len(report["runs"]) and "top-1 vs float" in text[0]
    assert "vs unsqueezed" in text[0] and "s/tok p95" in text[0] and "prefill MB" in text[0]
    assert markdown_table(report).count("\n") == 1 + len(report["runs"])
    per = sum(len(r["per_program"]) + len(r["per_layer"]) for r in report["runs"])
    assert len(program_table(report).splitlines()) == 2 + per
    assert markdown_program_table(report).count("\n") == 1 + per
    png = plot(report, tmp_path / "bench.png")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    import matplotlib.image

    img = matplotlib.image.imread(png)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert float(img[..., :3].std()) > 0  # something was drawn


@pytest.mark.parametrize(("args", "words"), [
    (["missing.cerb"], "no artefact at"),
    (["missing.cerb", "--widths", "8", "9"], "widths must be in 2..8"),
    (["missing.cerb", "--tokens", "0"], "--tokens must be at least 1"),
    (["missing.cerb", "--link-mbps", "0"], "--link-mbps must be positive"),
    (["missing.cerb", "--rtt-ms", "-1"], "--rtt-ms must be at least 0"),
])
def test_bench_bad_input_is_one_line(args: list[str], words: str, tmp_path: Path,
                                     capsys: pytest.CaptureFixture,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["bench", *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("cerberus:") and err.count("\n") == 1 and words in err
    assert not (tmp_path / "bench.json").exists()


def test_bench_an_unreachable_miner_is_one_line(
        fhe_artefact: Artefact, tmp_path: Path, capsys: pytest.CaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["bench", str(fhe_artefact.path), "--miner", "127.0.0.1:1", "--timeout",
                 "2"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("cerberus:") and "UNAVAILABLE" in err[-1]


def test_the_unsqueezed_baseline_keeps_every_head(fhe_artefact: Artefact,
                                                  tmp_path: Path) -> None:
    """A squeezed artefact's baseline is its source recompiled at its width with every
    head kept, every other option as recorded; an unsqueezed one is its own baseline."""
    from cerberus.artefact import load_artefact
    from cerberus.compile import CompileOptions, compile_model
    from runtime.bench import unsqueezed_baseline

    # the same source and seed score the heads alike: θ at the lowest score removes that
    # head (θ keeps the heads scoring above it) and every block keeps some
    scores = fhe_artefact.manifest["significance"]["scores"]
    theta = min(min(row) for row in scores)
    assert all(max(row) > theta for row in scores)
    out, _, _ = compile_model(shipped_model(), tmp_path / "sq.cerb",
                              CompileOptions(seq_len=8, bits=6, theta=theta))
    art = load_artefact(out)
    assert squeezed(art)
    base, how = unsqueezed_baseline(art, shipped_model(), tmp_path)
    assert "every head kept" in how and base.path != art.path
    cfg = base.manifest["model_config"]
    assert [sorted(h) for h in cfg["heads_kept"]] == [list(range(cfg["n_head"]))] * cfg[
        "n_layer"]
    assert not squeezed(base)
    assert base.manifest["quantization"]["bits"] == 6
    assert {k: v for k, v in base.manifest["options"].items() if k != "theta"} == {
        k: v for k, v in art.manifest["options"].items() if k != "theta"}
    assert unsqueezed_baseline(base, shipped_model(), tmp_path)[0] is base
