"""``cerberus bench`` (issue #6, SPEC R4): real keygen, upload and encrypted generation
through an in-process miner, at the artefact's width and at a recompiled narrower one.

Wall-clock numbers are never asserted; what is asserted holds on any machine: the
encrypted tokens are the simulator's, the float predictions are the float model's, the
fractions are fractions, and the files are what they say they are.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tolerance import U64, gamma
from transformers import AutoModelForCausalLM

from cerberus.artefact import Artefact
from cerberus.paths import shipped_model
from cerberus_cli.main import main
from runtime.bench import markdown_table, plot, run_bench, table, write_json

PROMPT = "The for statement is used to"
TOKENS = 2
NARROW = 4


@pytest.fixture(scope="module")
def report(fhe_artefact: Artefact) -> dict:
    return run_bench(fhe_artefact.path, tokens=TOKENS, prompts=[PROMPT],
                     widths=[int(fhe_artefact.manifest["quantization"]["bits"]), NARROW])


def test_bench_measures_each_width_through_a_real_miner(
        report: dict, fhe_artefact: Artefact, tmp_path: Path) -> None:
    own = int(fhe_artefact.manifest["quantization"]["bits"])
    assert [r["width"] for r in report["runs"]] == [own, NARROW]
    assert report["artefact"]["sha256"] == fhe_artefact.sha256
    assert Path(report["source"]["path"]).resolve() == shipped_model().resolve()
    ids = fhe_artefact.tokenizer(PROMPT).input_ids
    hf = AutoModelForCausalLM.from_pretrained(shipped_model()).eval()
    seq_len = int(fhe_artefact.manifest["seq_len"])
    for run in report["runs"]:
        assert run["tokens"] == TOKENS and run["miner"] == "in-process"
        assert run["equals_simulator"] is True
        (gen,) = run["generations"]
        assert gen["encrypted_ids"] == gen["simulator_ids"] and len(gen["encrypted_ids"]) == 2
        # the float reference is the source model itself, on the window the circuit sees
        with torch.no_grad():
            want = [int(hf(torch.tensor([(ids + gen["encrypted_ids"][:k])[-seq_len:]]))
                        .logits[0, -1].argmax()) for k in range(TOKENS)]
        assert gen["float_next_ids"] == want
        agree = sum(a == b for a, b in zip(gen["encrypted_ids"], want, strict=True))
        assert run["fidelity"]["top1_vs_float"] == agree / TOKENS
        assert 0.0 <= run["fidelity"]["top1_vs_float"] <= 1.0
        assert run["fidelity"]["steps"] == TOKENS
        lat = run["latency_s"]
        assert 0 < lat["min"] <= lat["p50"] <= lat["p95"] <= lat["max"]
        assert lat["min"] <= lat["mean"] <= lat["max"]
        # n/Σt against 1/mean(t): two float64 sums of n and three divides, γ_{n+3}
        tps = 1 / lat["mean"]
        assert run["tokens_per_s"] == pytest.approx(tps, rel=gamma(TOKENS + 3, U64), abs=0)
        assert run["keygen_s"] > 0 and run["upload_s"] > 0 and run["key_bytes"] > 0
        assert run["server_ms_per_token"] > 0
        assert run["server_ms_per_token"] / 1000 <= lat["mean"]  # the miner's share of it
        ct = run["ciphertext_mb_per_token"]
        assert ct["sent"] > 0 and ct["received"] > 0
        # exact integer byte counts, two divides each and an add: γ_5 (non-negative)
        assert ct["total"] == pytest.approx(ct["sent"] + ct["received"], rel=gamma(5, U64),
                                            abs=0)
        assert run["programs"] == len(fhe_artefact.parts)
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
    assert markdown_table(report).count("\n") == 1 + len(report["runs"])
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
