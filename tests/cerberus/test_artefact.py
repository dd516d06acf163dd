"""The artefact: round trip, content address, corruption and atomic writes."""

import json

import numpy as np
import pytest

from cerberus.artefact import artefact_hash, load_artefact, write_artefact
from cerberus.errors import CompileError
from cerberus.lower import lower_blocks

from .conftest import embedded


@pytest.fixture(scope="module")
def parts(tiny_gpt, gpt_windows):
    model, tok = tiny_gpt
    graph = lower_blocks(model, embedded(model, gpt_windows[0]))
    return model, tok, graph


def write(tmp_path, parts, **kw):
    model, tok, graph = parts
    manifest = {"quantization": {"adaptive": False}, "note": kw.pop("note", "")}
    return write_artefact(tmp_path / "a.cerb", manifest=manifest, graph=graph, model=model,
                          tokenizer=tok, **kw)


def test_round_trip_runs_the_same_integers(tmp_path, parts, gpt_windows) -> None:
    digest = write(tmp_path, parts)
    art = load_artefact(tmp_path / "a.cerb")
    assert art.sha256 == digest == artefact_hash(tmp_path / "a.cerb")
    model, _, graph = parts
    ids = gpt_windows[1]
    x = art.encode_input(ids)
    from cerberus.ir import evaluate

    assert np.array_equal(art.run_graph(x), evaluate(graph, x)["output"])
    assert art.logits(ids).shape == (*ids.shape, model.cfg.vocab_size)
    assert art.tokenizer is not None


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
    def broken(_path):
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write(tmp_path, parts, extra={"x.bin": broken})
    assert list(tmp_path.iterdir()) == []


def test_not_an_artefact(tmp_path) -> None:
    with pytest.raises(CompileError, match="not a Cerberus artefact"):
        load_artefact(tmp_path)
