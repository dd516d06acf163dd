"""``cerberus compile`` end to end, and its bad-input behaviour (one line, exit ≠ 0)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tolerance import U64, gamma

from cerberus.artefact import load_artefact
from cerberus.compile import CompileOptions, compile_model

MODEL = str(Path(__file__).resolve().parents[2] / "models" / "tiny-gpt")


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cerberus_cli", "compile", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("c") / "tiny.cerb"
    result = cli(MODEL, "-o", str(out), "--seq-len", "8", cwd=out.parent)
    assert result.returncode == 0, result.stderr
    return out, result


def test_compile_writes_a_loadable_artefact(compiled) -> None:
    out, result = compiled
    art = load_artefact(out)
    assert art.sha256 in result.stdout
    m = art.manifest
    for key in ("source", "significance", "squeeze", "head_mask", "quantization", "fusion",
                "cost_estimate", "fidelity", "cerberus_version"):
        assert key in m
    assert m["source"]["sha256"] and m["seq_len"] == 8
    assert max(m["quantization"]["lookup_widths"].values()) <= 8
    assert m["fusion"]["after"]["lookups"] < m["fusion"]["before"]["lookups"]
    assert (out / "miner" / "model.onnx").exists()
    ids = torch.randint(0, 512, (2, 8))
    assert torch.isfinite(art.logits(ids)).all()
    assert art.partition == "hybrid" and set(art.programs) == set(m["partition"]["miner"])


def test_full_partition_runs_blocks_on_the_miner(tmp_path) -> None:
    out, _, m = compile_model(MODEL, tmp_path / "full.cerb",
                              CompileOptions(seq_len=8, partition="full"))
    art = load_artefact(out)
    assert art.partition == "full" and set(art.programs) == {"blocks"}
    assert m["partition"]["miner"] == ["block 0", "block 1"]
    ids = torch.randint(0, 512, (2, 8))
    from cerberus.ir import evaluate

    x = art.encode_input(ids)
    assert torch.equal(art.logits(ids), art.decode_output(evaluate(art.graph, x)["output"]))


def test_no_per_channel_narrows_the_full_partitions_accumulators(tmp_path) -> None:
    """--no-per-channel drops the rescaling multipliers that widen every clear linear."""
    widest = {}
    for flag in ("", "--no-per-channel"):
        out = tmp_path / f"full{flag}.cerb"
        result = cli(MODEL, "-o", str(out), "--seq-len", "4", "--partition", "full",
                     *([flag] if flag else []), cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        art = load_artefact(out)
        assert art.manifest["options"]["per_channel"] == (flag == "")
        widest[flag] = max(n.bits for n in art.graph.nodes if n.op == "linear")
    assert widest["--no-per-channel"] < widest[""]


def test_compile_is_deterministic(compiled, tmp_path) -> None:
    out, _ = compiled
    again = tmp_path / "again.cerb"
    assert cli(MODEL, "-o", str(again), "--seq-len", "8", cwd=tmp_path).returncode == 0
    assert load_artefact(again).graph.digest() == load_artefact(out).graph.digest()


def test_budget_prunes_heads_and_cuts_cost(tmp_path) -> None:
    probe, _, m = compile_model(MODEL, tmp_path / "probe.cerb", CompileOptions(seq_len=8))
    cost = m["squeeze"]["cost_before"]
    per_head = [r["seconds"] for r in cost["rows"] if r.get("part") == "head"]
    budget = cost["total_s"] - 2.5 * max(per_head)
    _, _, m2 = compile_model(MODEL, tmp_path / "small.cerb",
                             CompileOptions(seq_len=8, budget=budget))
    kept = sum(map(len, m2["squeeze"]["heads_kept"]))
    assert kept < 8
    assert m2["squeeze"]["cost_after_s"] <= budget < m2["squeeze"]["cost_before_s"]
    assert m2["fusion"]["after"]["pbs"] < m["fusion"]["after"]["pbs"]
    assert json.loads((tmp_path / "small.cerb" / "manifest.json").read_text())["head_mask"]


@pytest.mark.parametrize(
    "args,message",
    [
        (["no/such-model"], "unknown model"),
        ([MODEL, "--bits", "9"], "bits must be in 2..8"),
        ([MODEL, "--budget", "0.001"], "too small to keep one head"),
        ([MODEL, "--seq-len", "999"], "exceeds the model's context"),
        ([MODEL, "--calibration", "/nonexistent/file.txt"], "calibration"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(args, message, tmp_path) -> None:
    result = cli(*args, "-o", str(tmp_path / "out.cerb"), cwd=tmp_path)
    assert result.returncode != 0
    err = [line for line in result.stderr.splitlines() if line.startswith("cerberus:")]
    assert len(err) == 1 and message in err[0], result.stderr
    assert not (tmp_path / "out.cerb").exists()
    assert not any(p.name.startswith(".out.cerb") for p in tmp_path.iterdir())


def test_existing_output_is_refused(compiled) -> None:
    out, _ = compiled
    result = cli(MODEL, "-o", str(out), cwd=out.parent)
    assert result.returncode != 0 and "already exists" in result.stderr


def test_compile_from_onnx_and_from_module(tmp_path, tiny_bert) -> None:
    """The ONNX and torch.nn.Module frontends reach the same pipeline (C1)."""
    from cerberus.frontends.onnx_import import export_canonical_onnx

    onnx_path = export_canonical_onnx(tiny_bert, tmp_path / "bert.onnx", seq_len=8)
    out, _, m = compile_model(onnx_path, tmp_path / "bert.cerb", CompileOptions(seq_len=8))
    assert m["source"]["kind"] == "onnx" and "cosine" in m["fidelity"]
    _, _, m2 = compile_model(tiny_bert, tmp_path / "mod.cerb", CompileOptions(seq_len=8))
    assert m2["source"]["kind"] == "module"
    assert load_artefact(out).graph.digest() == load_artefact(tmp_path / "mod.cerb").graph.digest()


def test_adaptive_quantization_is_applied_by_the_loaded_client(tmp_path) -> None:
    """--adaptive (paper §5) preprocesses the client's embeddings, also after reloading."""
    opts = dict(seq_len=8, partition="full")
    plain, _, _ = compile_model(MODEL, tmp_path / "p.cerb", CompileOptions(**opts))
    adapt, _, m = compile_model(MODEL, tmp_path / "a.cerb", CompileOptions(adaptive=True, **opts))
    assert m["quantization"]["adaptive"] is True
    ids = torch.randint(0, 512, (2, 8), generator=torch.Generator().manual_seed(0))
    a, p = load_artefact(adapt), load_artefact(plain)
    with torch.no_grad():  # the plain build's client has the same embeddings, unprocessed
        raw = p.simulator.model.embed(ids).double().numpy()
    from cerberus.artefact import adaptive_preprocess

    pre = adaptive_preprocess(raw, m["quantization"]["adaptive_params"])
    # it moves values by more than the float64 rounding of its own six operations could
    assert np.abs(pre - raw).max() > gamma(7, U64) * np.abs(raw).max()
    top = 2 ** (a.graph.meta["input_bits"] - 1) - 1
    expected = np.clip(np.floor(pre / a.graph.meta["input_scale"] + 0.5), -top, top)
    x = a.encode_input(ids)  # full partition: the key-mask column rides last
    assert np.array_equal(x[..., :-1], expected)
    assert (x[..., -1] == 1).all()  # no attention mask given: every position real
    assert torch.isfinite(a.logits(ids)).all() and torch.isfinite(p.logits(ids)).all()


def test_fidelity_counts_overflowing_windows_instead_of_failing(tiny_gpt) -> None:
    from cerberus.compile import fidelity
    from cerberus.ir import RangeOverflow

    model, _ = tiny_gpt
    ids = torch.randint(0, 512, (4, 8), generator=torch.Generator().manual_seed(3))

    def logits(batch: torch.Tensor) -> torch.Tensor:
        if (batch[:, 0] == ids[1, 0]).any():
            raise RangeOverflow("node l0.x (sum): value range 0..9 leaves its compiled range")
        return model(batch)

    report = fidelity(model, logits, ids)
    assert report["overflowed_windows"] == {"l0.x": 1}
    assert report["tokens"] == 3 * 8 and report["top1_agreement"] == 1.0
