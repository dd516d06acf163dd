"""ONNX export of the integer graph (SPEC C8): onnxruntime must reproduce ``evaluate`` bit
for bit — the artefact's ONNX file is only useful to an auditor if it is the same circuit.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import transformers

from cerberus.errors import CompileError
from cerberus.frontends.huggingface import from_hf_module, load_pretrained
from cerberus.ir import IntGraph, Node, evaluate
from cerberus.lower import LoweringOptions, lower_blocks
from cerberus.onnx_export import export_onnx, read_meta, run_onnx


def _quantize(graph: IntGraph, emb: np.ndarray) -> np.ndarray:
    q = 2 ** (graph.meta["input_bits"] - 1) - 1
    return np.clip(np.floor(emb / graph.meta["input_scale"] + 0.5), -q, q).astype(np.int64)


@pytest.fixture(scope="module")
def tiny_gpt():
    model, _ = load_pretrained("models/tiny-gpt")
    c = from_hf_module(model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        calib = c.embed(torch.randint(0, 512, (8, 8), generator=gen)).double().numpy()
        held = c.embed(torch.randint(0, 512, (4, 8), generator=gen)).double().numpy()
    return c, calib, held


@pytest.fixture(scope="module")
def random_bert():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=64,
                                  max_position_embeddings=32)
    c = from_hf_module(transformers.BertModel(cfg, add_pooling_layer=False).eval())
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        calib = c.embed(torch.randint(0, 100, (8, 8), generator=gen)).double().numpy()
        held = c.embed(torch.randint(0, 100, (4, 8), generator=gen)).double().numpy()
    return c, calib, held


def _with_extremes(calib: np.ndarray) -> np.ndarray:
    """Calibration set plus samples at the ends of the input range.

    Lowering sizes every compiled range from its calibration set (as concrete-python does
    from an input set), so extreme inputs are only defined for a graph calibrated on
    them: one all-``+peak`` and one all-``−peak`` sample, and two with a single ``±peak``
    spike. The input scale maps ``peak`` to exactly ``±qmax``.
    """
    peak = float(np.abs(calib).max())
    spikes = calib[:2].copy()
    spikes[0, 3, 5] = peak
    spikes[1, 6, 1] = -peak
    full = np.full((1, *calib.shape[1:]), peak)
    return np.concatenate([calib, full, -full, spikes])


def _inputs(graph: IntGraph, calib_ext: np.ndarray, held: np.ndarray) -> dict[str, np.ndarray]:
    x = _quantize(graph, calib_ext)
    n = x.shape[0] - 4
    q = 2 ** (graph.meta["input_bits"] - 1) - 1
    assert (x[n] == q).all() and (x[n + 1] == -q).all()  # really the ends of the range
    return {
        "calib": x,
        "max": x[n : n + 1],
        "min": x[n + 1 : n + 2],
        "spikes": x[n + 2 :],
        "one": x[:1],
        "held": _quantize(graph, held),
        "negated": -x[:n],
    }


def _check_bit_exact(graph: IntGraph, path: Path, inputs: dict[str, np.ndarray]) -> set[str]:
    """Compare onnxruntime with ``evaluate``; returns the names of the inputs compared.

    Inputs the graph was not calibrated for may leave its compiled ranges, where the
    circuit is undefined and ``evaluate`` raises: those are skipped (and reported by the
    return value), the others must agree bit for bit.
    """
    checked = set()
    for name, x in inputs.items():
        try:
            want = evaluate(graph, x)["output"]
        except ValueError:
            continue
        got = run_onnx(path, x)
        assert got.dtype == np.int64
        assert np.array_equal(got, want), f"{name}: {int((got != want).sum())} values differ"
        checked.add(name)
    return checked


REQUIRED = {"calib", "max", "min", "spikes", "one"}


def _rounds_negatives(graph: IntGraph) -> bool:
    """Some lookup drops low bits of an input that can be negative (the tricky rounding)."""
    return any(n.op == "lut" and n.attrs["lsbs"] > 0 and graph[n.inputs[0]].lo < 0
               for n in graph.nodes)


@pytest.mark.parametrize("bits", [8, 4])
def test_tiny_gpt_onnx_is_bit_exact(tiny_gpt, tmp_path: Path, bits: int) -> None:
    c, calib, held = tiny_gpt
    calib_ext = _with_extremes(calib)
    graph = lower_blocks(c, calib_ext, LoweringOptions(bits=bits))
    path = export_onnx(graph, tmp_path / "g.onnx")
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    assert _check_bit_exact(graph, path, _inputs(graph, calib_ext, held)) >= REQUIRED
    assert _rounds_negatives(graph)


def test_random_bert_onnx_is_bit_exact(random_bert, tmp_path: Path) -> None:
    c, calib, held = random_bert
    calib_ext = _with_extremes(calib)
    graph = lower_blocks(c, calib_ext)
    path = export_onnx(graph, tmp_path / "bert.onnx")
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    assert _check_bit_exact(graph, path, _inputs(graph, calib_ext, held)) >= REQUIRED
    assert _rounds_negatives(graph)


def test_fused_graph_is_bit_exact(tiny_gpt, tmp_path: Path) -> None:
    """The artefact carries the graph after fusion (folded LayerNorms, composed lookups)."""
    from cerberus.passes.fuse import compose_luts, fold_affine

    c, _, held = tiny_gpt
    folded, _ = fold_affine(c)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        calib = folded.embed(torch.randint(0, 512, (8, 8), generator=gen)).double().numpy()
    calib_ext = _with_extremes(calib)
    graph, report = compose_luts(lower_blocks(folded, calib_ext, LoweringOptions(bits=6)))
    assert report.composed  # some lookups really were composed
    path = export_onnx(graph, tmp_path / "fused.onnx")
    assert _check_bit_exact(graph, path, _inputs(graph, calib_ext, held)) >= REQUIRED


def test_metadata_and_interface(tiny_gpt, tmp_path: Path) -> None:
    c, calib, _ = tiny_gpt
    graph = lower_blocks(c, calib)
    path = export_onnx(graph, tmp_path / "g.onnx")
    assert read_meta(path) == json.loads(json.dumps(graph.meta))
    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["cerberus.input_scale"]) == graph.meta["input_scale"]
    assert props["cerberus.graph_digest"] == graph.digest()
    assert json.loads(props["cerberus.meta"]) == read_meta(path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    assert inp.name == "x" and inp.type == "tensor(int64)"
    assert inp.shape[1:] == [graph.meta["seq_len"], graph.meta["d_model"]]
    assert not isinstance(inp.shape[0], int)  # dynamic batch
    with pytest.raises(CompileError, match="seq_len"):
        export_onnx(graph, tmp_path / "other.onnx", seq_len=graph.meta["seq_len"] + 1)


def _toy_graph(nodes: list[Node], out: str) -> IntGraph:
    return IntGraph([Node("input", "input", [], -1000, 1000), *nodes], "input", out,
                    {"seq_len": 3, "d_model": 4})


def test_lookup_rounding_matches_numpy_on_negative_ties(tmp_path: Path) -> None:
    """``(x + 2**(l-1)) >> l`` floors: ONNX integer ``Div`` truncates, which would round
    every negative non-multiple of ``2**l`` (ties included) one index too high."""
    for lsbs in (1, 3, 5):
        offset = int((-1000 + (1 << (lsbs - 1))) >> lsbs)
        top = int((1000 + (1 << (lsbs - 1))) >> lsbs)
        table = np.arange(top - offset + 1, dtype=np.int64) * 7 - 3
        lut = Node("lut", "lut", ["input"], -10**6, 10**6,
                   attrs={"table": table, "lsbs": lsbs, "offset": offset})
        graph = _toy_graph([lut], "lut")
        path = export_onnx(graph, tmp_path / f"lut{lsbs}.onnx")
        x = np.arange(-996, 1000, dtype=np.int64)[: (1996 // 12) * 12].reshape(-1, 3, 4)
        assert np.array_equal(run_onnx(path, x), evaluate(graph, x)["output"])


def test_every_op_of_the_ir(tmp_path: Path) -> None:
    """One small graph using each IR op once, with broadcasting constants."""
    rng = np.random.default_rng(3)
    big = 2**62
    nodes = [
        Node("lin", "linear", ["input"], -big, big, attrs={
            "weight": rng.integers(-9, 9, (4, 6)), "mult": rng.integers(1, 5, 6),
            "bias": rng.integers(-50, 50, 6)}),
        Node("lin2", "linear", ["input"], -big, big, attrs={
            "weight": rng.integers(-9, 9, (4, 4)), "mult": None, "bias": None}),
        Node("mc", "mul_const", ["lin2"], -big, big, attrs={"const": rng.integers(0, 2, (3, 4))}),
        Node("ac", "add_const", ["mc"], -big, big, attrs={"const": rng.integers(-5, 5, 4)}),
        Node("s1", "slice", ["lin"], -big, big, attrs={"start": 1, "stop": 5}),
        Node("add", "add", ["s1", "ac"], -big, big),
        Node("sub", "sub", ["add", "input"], -big, big),
        Node("mul", "mul", ["sub", "input"], -big, big),
        Node("tr", "transpose", ["mul"], -big, big),
        Node("mm", "matmul", ["sub", "tr"], -big, big),
        Node("sum", "sum", ["mm"], -big, big),
        Node("cat", "concat", ["mm", "sum", "s1"], -big, big),
    ]
    graph = _toy_graph(nodes, "cat")
    path = export_onnx(graph, tmp_path / "ops.onnx")
    x = rng.integers(-1000, 1001, (5, 3, 4))
    want = evaluate(graph, x)["output"]
    assert want.shape == (5, 3, 3 + 1 + 4)
    assert np.array_equal(run_onnx(path, x), want)


def test_unknown_op_is_a_clear_error(tmp_path: Path) -> None:
    graph = _toy_graph([Node("weird.node", "frobnicate", ["input"], 0, 1)], "weird.node")
    with pytest.raises(CompileError, match=r"unsupported op 'frobnicate' at node weird\.node"):
        export_onnx(graph, tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists()
