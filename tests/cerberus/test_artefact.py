"""The artefact: two halves, round trip, content address, corruption, atomic writes, and
clear errors for a missing file, a missing half or another format (SPEC C8)."""

import json
import shutil

import numpy as np
import pytest

from cerberus.artefact import (
    FORMAT_VERSION,
    artefact_hash,
    load_artefact,
    load_client,
    load_miner,
    write_artefact,
)
from cerberus.errors import CompileError
from cerberus.ir import evaluate
from cerberus.light_client import client_state
from cerberus.lower import lower_blocks

from .conftest import embedded


@pytest.fixture(scope="module")
def parts(tiny_gpt, gpt_windows):
    model, tok = tiny_gpt
    graph = lower_blocks(model, embedded(model, gpt_windows[0]))
    return model, tok, graph


def write(tmp_path, parts, **kw):
    model, tok, graph = parts
    quant = {"adaptive": False, "input_scale": graph.meta["input_scale"],
             "input_bits": graph.meta["input_bits"], "output_scale": graph.meta["output_scale"]}
    manifest = {"quantization": quant, "partition": {"mode": "full"}, "seq_len": 16,
                "note": kw.pop("note", "")}
    return write_artefact(tmp_path / "a.cerb", manifest=manifest, cfg=model.cfg,
                          state=client_state(model, "full"), graph=graph, tokenizer=tok, **kw)


def test_round_trip_runs_the_same_integers(tmp_path, parts, gpt_windows) -> None:
    digest = write(tmp_path, parts)
    art = load_artefact(tmp_path / "a.cerb")
    assert art.sha256 == digest == artefact_hash(tmp_path / "a.cerb")
    model, _, graph = parts
    ids = gpt_windows[1]
    x = art.encode_input(ids)
    assert np.array_equal(art.run_graph(x), evaluate(graph, x)["output"])
    assert art.logits(ids).shape == (*ids.shape, model.cfg.vocab_size)
    assert art.tokenizer is not None


def test_halves_hold_what_the_manifest_lists(tmp_path, parts) -> None:
    write(tmp_path, parts)
    root = tmp_path / "a.cerb"
    files = json.loads((root / "manifest.json").read_text())["files"]
    assert all(f.startswith("client/") for f in files["client"])
    assert all(f.startswith("miner/") for f in files["miner"])
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert on_disk == set(files["client"]) | set(files["miner"]) | {"manifest.json",
                                                                     "artefact.sha256"}
    assert not any("graph" in f for f in files["client"])  # no miner graph on the client


def test_a_tied_lm_head_is_stored_once(tmp_path, parts) -> None:
    model, _, _ = parts
    write(tmp_path, parts)
    tied = bool(model.lm_head.weight.data_ptr() == model.tok_emb.weight.data_ptr()
                or np.array_equal(model.lm_head.weight.detach().numpy(),
                                  model.tok_emb.weight.detach().numpy()))
    half = load_client(tmp_path / "a.cerb")
    assert half.manifest["tied_lm_head"] is tied
    assert np.array_equal(half.state["lm_head.weight"].numpy(),
                          model.lm_head.weight.detach().numpy())


def test_any_byte_changes_the_address(tmp_path, parts) -> None:
    first = write(tmp_path, parts, note="one")
    second = write(tmp_path, parts, note="two", force=True)
    assert first != second


def test_corruption_is_detected(tmp_path, parts) -> None:
    write(tmp_path, parts)
    path = tmp_path / "a.cerb" / "manifest.json"
    doc = json.loads(path.read_text())
    doc["note"] = "tampered"
    path.write_text(json.dumps(doc))
    with pytest.raises(CompileError, match="corrupted"):
        load_artefact(tmp_path / "a.cerb")


def test_existing_output_needs_force(tmp_path, parts) -> None:
    write(tmp_path, parts)
    with pytest.raises(CompileError, match="already exists"):
        write(tmp_path, parts)


def test_failed_write_leaves_nothing_behind(tmp_path, parts) -> None:
    def broken(_root):
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write(tmp_path, parts, extra=[broken])
    assert list(tmp_path.iterdir()) == []


def test_not_an_artefact(tmp_path) -> None:
    with pytest.raises(CompileError, match="not a Cerberus artefact"):
        load_artefact(tmp_path)


def test_a_half_passed_for_the_artefact_is_named(tmp_path, parts) -> None:
    write(tmp_path, parts)
    with pytest.raises(CompileError, match="looks like one half"):
        load_client(tmp_path / "a.cerb" / "client")


@pytest.mark.parametrize("fmt", [1, FORMAT_VERSION - 1, FORMAT_VERSION + 1])
def test_another_format_is_refused(tmp_path, parts, fmt: int) -> None:
    write(tmp_path, parts)
    path = tmp_path / "a.cerb" / "manifest.json"
    doc = json.loads(path.read_text())
    doc["format"] = fmt
    path.write_text(json.dumps(doc))
    for load in (load_client, load_miner, load_artefact):
        with pytest.raises(CompileError,
                           match=f"format {fmt}, this Cerberus reads format {FORMAT_VERSION}"):
            load(tmp_path / "a.cerb")


def test_a_client_half_missing_a_file_is_named(tmp_path, parts) -> None:
    write(tmp_path, parts)
    root = tmp_path / "a.cerb"
    (root / "client" / "linears.npz").unlink()
    with pytest.raises(CompileError, match="missing 1 file.*client/linears.npz"):
        load_client(root, sha256="0" * 64)


def test_a_miner_copy_without_the_client_half_is_refused(tmp_path, parts) -> None:
    write(tmp_path, parts)
    root = tmp_path / "a.cerb"
    shutil.rmtree(root / "client")
    with pytest.raises(CompileError, match="no client half.*only the miner half"):
        load_client(root, sha256="0" * 64)
    load_miner(root)  # the miner half alone is what a miner needs
