"""ONNX frontend (SPEC C1): ONNX files become torch.fx graphs that compute what
onnxruntime computes, and Cerberus-exported transformer files round-trip to the canonical
model the compiler works on.
"""

from __future__ import annotations

import copy
import math
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import transformers
from onnx import TensorProto, helper
from tolerance import (
    LIBM_ULPS,
    U32,
    assert_within,
    gamma,
    network_atol,
    transformer_roundings,
)
from torch import fx, nn

from cerberus.errors import CompileError
from cerberus.frontends.canonical import CanonicalTransformer, TransformerConfig
from cerberus.frontends.huggingface import from_hf_module, load_pretrained
from cerberus.frontends.onnx_import import (
    canonical_from_onnx,
    export_canonical_onnx,
    import_onnx,
)


class _HFOutput(nn.Module):
    """Plain-tensor forward of an HF model, so the TorchScript exporter can trace it."""

    def __init__(self, model: nn.Module, key: str, causal: bool) -> None:
        super().__init__()
        self.model, self.key, self.causal = model, key, causal

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        kw = {"input_ids": ids, "return_dict": True}
        if self.causal:  # explicit mask/positions avoid aten::diff in HF's mask utilities
            kw.update(use_cache=False, attention_mask=torch.ones_like(ids),
                      position_ids=torch.arange(ids.shape[1]).unsqueeze(0).expand_as(ids))
        return getattr(self.model(**kw), self.key)


def _export_hf(module: nn.Module, path: Path, ids: torch.Tensor, opset: int) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (ids,), str(path), dynamo=False, opset_version=opset,
                          input_names=["input_ids"], output_names=["out"],
                          dynamic_axes={"input_ids": {0: "batch", 1: "seq"}})
    module.eval()  # the exporter restores the *wrapper's* mode recursively
    return path


def _ort(path: Path, ids: torch.Tensor) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input_ids": ids.numpy()})[0]


@pytest.fixture(scope="module")
def tiny_gpt():
    model, _ = load_pretrained("models/tiny-gpt")
    return model, from_hf_module(model)


@pytest.fixture(scope="module")
def random_bert() -> nn.Module:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=64,
                                  max_position_embeddings=32)
    return transformers.BertModel(cfg, add_pooling_layer=False).eval()


def _ids(vocab: int, batch: int, t: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, t), generator=torch.Generator().manual_seed(seed))


def _float64(module: nn.Module) -> nn.Module:
    """The reference: the same weights and input, run in float64 (a copy: fixtures are
    shared). Its own rounding error is 2**29 times below float32's."""
    return copy.deepcopy(module).double().eval()


def _atol32(ref64: torch.Tensor, d: int, d_ff: int, n_layer: int, n_head: int, t: int,
            lm_head: bool) -> float:
    """One float32 run's bound against float64: γ̃_N(λ)·max|y64| with N the roundings along
    the model's longest path (tests/tolerance.py); two float32 runs differ by ≤ twice it."""
    return network_atol(ref64, transformer_roundings(d, d_ff, n_layer, d // n_head, t,
                                                     lm_head=lm_head))


def test_canonical_tiny_gpt_fx_matches_onnxruntime(tiny_gpt, tmp_path: Path) -> None:
    _, c = tiny_gpt
    path = export_canonical_onnx(c, tmp_path / "tiny.onnx", seq_len=8)
    gm = import_onnx(path)
    assert isinstance(gm, fx.GraphModule)
    ops = {n.op for n in gm.graph.nodes}
    assert {"placeholder", "get_attr", "call_function", "output"} <= ops
    assert "blocks.0.q.weight" in gm.onnx_initializer_names  # initializers → buffers
    c64, cfg = _float64(c), c.cfg
    for t in (8, 5):  # dynamic sequence length too
        ids = _ids(512, 3, t)
        with torch.no_grad():
            got = gm(ids).numpy()
            ref = c64(ids)
        want = _ort(path, ids)
        assert got.shape == want.shape == (3, t, 512)
        atol = _atol32(ref, cfg.d_model, cfg.d_ff, cfg.n_layer, cfg.n_head, t, lm_head=True)
        assert_within(got, ref, atol, f"fx vs float64, T={t}")
        assert_within(want, ref, atol, f"onnxruntime vs float64, T={t}")
        assert_within(got, want, 2 * atol, f"fx vs onnxruntime, T={t}")


@pytest.mark.parametrize("opset", [17, 18])
def test_hf_bert_fx_matches_onnxruntime(random_bert, tmp_path: Path, opset: int) -> None:
    ids = _ids(100, 2, 8)
    wrapper = _HFOutput(random_bert, "last_hidden_state", causal=False).eval()
    path = _export_hf(wrapper, tmp_path / "bert.onnx", ids, opset)
    gm = import_onnx(path)
    wrapper64, cfg = _float64(wrapper), random_bert.config
    for t in (8, 6):
        x = ids[:, :t]
        with torch.no_grad():
            got = gm(x)
            ref = wrapper(x)
            ref64 = wrapper64(x)
        want = _ort(path, x)
        atol = _atol32(ref64, cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers,
                       cfg.num_attention_heads, t, lm_head=False)
        for name, y in (("fx", got), ("onnxruntime", want), ("transformers", ref)):
            assert_within(y, ref64, atol, f"{name} vs float64, T={t}")
        assert_within(got, want, 2 * atol, f"fx vs onnxruntime, T={t}")
        assert_within(got, ref, 2 * atol, f"fx vs transformers, T={t}")


def test_hf_gpt2_fx_matches_onnxruntime(tiny_gpt, tmp_path: Path) -> None:
    model, _ = tiny_gpt
    ids = _ids(512, 2, 8, seed=3)
    wrapper = _HFOutput(model, "logits", causal=True).eval()
    path = _export_hf(wrapper, tmp_path / "gpt2.onnx", ids, 18)
    op_types = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"Gemm", "Split", "Where", "Expand", "Range"} <= op_types  # a different op mix
    gm = import_onnx(path)
    with torch.no_grad():
        got = gm(ids)
        ref64 = _float64(wrapper)(ids)
    want = _ort(path, ids)
    cfg = model.config
    atol = _atol32(ref64, cfg.n_embd, cfg.n_inner or 4 * cfg.n_embd, cfg.n_layer, cfg.n_head,
                   ids.shape[1], lm_head=True)
    assert_within(got, ref64, atol, "fx vs float64")
    assert_within(want, ref64, atol, "onnxruntime vs float64")
    assert_within(got, want, 2 * atol, "fx vs onnxruntime")


def test_canonical_round_trip_tiny_gpt(tiny_gpt, tmp_path: Path) -> None:
    _, c = tiny_gpt
    path = export_canonical_onnx(c, tmp_path / "tiny.onnx", seq_len=8)
    back = canonical_from_onnx(path)
    assert isinstance(back, CanonicalTransformer)
    assert back.cfg == c.cfg
    ids = _ids(512, 2, 8, seed=1)
    with torch.no_grad():
        assert torch.equal(back(ids), c(ids))
        assert torch.equal(back.run_blocks(back.embed(ids)), c.run_blocks(c.embed(ids)))


def test_canonical_round_trip_bert_and_pruned(random_bert, tmp_path: Path) -> None:
    """An encoder (type embeddings, post-LN, no LM head) and a model with pruned heads."""
    enc = from_hf_module(random_bert)
    torch.manual_seed(1)
    pruned = CanonicalTransformer(TransformerConfig(
        kind="causal-lm", vocab_size=50, n_positions=16, d_model=24, n_layer=2, n_head=3,
        d_ff=48, activation="relu", heads_kept=[[0, 2], [1]])).eval()
    for name, model, vocab in (("enc", enc, 100), ("pruned", pruned, 50)):
        path = export_canonical_onnx(model, tmp_path / f"{name}.onnx", seq_len=6)
        back = canonical_from_onnx(path)
        assert back.cfg == model.cfg
        assert (back.lm_head is None) == (model.lm_head is None)
        ids = _ids(vocab, 2, 6, seed=2)
        with torch.no_grad():
            assert torch.equal(back(ids), model(ids)), name


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
def test_layer_without_heads_is_refused_not_crashed(tmp_path: Path) -> None:
    model = CanonicalTransformer(TransformerConfig(
        kind="encoder", vocab_size=50, n_positions=16, d_model=24, n_layer=2, n_head=3,
        d_ff=48, heads_kept=[[], [1]])).eval()
    with pytest.raises(CompileError, match=r"layers \[0\] keep no attention heads"):
        export_canonical_onnx(model, tmp_path / "m.onnx", seq_len=4)
    assert not (tmp_path / "m.onnx").exists()


def test_foreign_onnx_is_refused_for_compilation(random_bert, tmp_path: Path) -> None:
    ids = _ids(100, 1, 4)
    path = _export_hf(_HFOutput(random_bert, "last_hidden_state", False).eval(),
                      tmp_path / "bert.onnx", ids, 17)
    with pytest.raises(CompileError, match="only Cerberus-exported transformer ONNX files"):
        canonical_from_onnx(path)
    import_onnx(path)(ids)  # … while it still imports and runs as an fx graph


def test_edited_cerberus_file_is_refused(tiny_gpt, tmp_path: Path) -> None:
    """Metadata that no longer describes the graph must not be compiled silently."""
    _, c = tiny_gpt
    path = export_canonical_onnx(c, tmp_path / "tiny.onnx", seq_len=8)
    model = onnx.load(str(path))
    for node in model.graph.node:  # GELU's tanh becomes a sigmoid: weights stay the same
        if node.op_type == "Tanh":
            node.op_type = "Sigmoid"
    edited = tmp_path / "edited.onnx"
    onnx.save(model, str(edited))
    canonical_from_onnx(edited, verify=False)  # config and weights alone still load
    with pytest.raises(CompileError, match="does not compute what its Cerberus metadata"):
        canonical_from_onnx(edited)


def _single_node_model(op_type: str, node_name: str) -> onnx.ModelProto:
    node = helper.make_node(op_type, ["a"], ["y"], name=node_name)
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["a"], name="pre"), node], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_unsupported_op_names_op_and_node(tmp_path: Path) -> None:
    path = tmp_path / "det.onnx"
    onnx.save(_single_node_model("Det", "my_det_node"), str(path))
    with pytest.raises(CompileError, match="unsupported op Det at node my_det_node"):
        import_onnx(path)


def test_missing_or_garbage_file(tmp_path: Path) -> None:
    with pytest.raises(CompileError, match="does not exist"):
        import_onnx(tmp_path / "nope.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00garbage\xff" * 10)
    with pytest.raises(CompileError, match="not a readable ONNX model"):
        import_onnx(bad)


def test_onnx_semantics_helpers(tmp_path: Path) -> None:
    """Ops whose ONNX meaning differs from torch's defaults, checked against onnxruntime."""
    i64 = TensorProto.INT64
    f32 = TensorProto.FLOAT
    c = onnx.numpy_helper.from_array
    nodes = [
        # integer Div truncates toward zero; Reshape 0 copies a dim; Gather negative index
        helper.make_node("Div", ["n", "d"], ["q"]),
        helper.make_node("Reshape", ["x", "shape"], ["r"]),
        helper.make_node("Gather", ["r", "gi"], ["g"], axis=1),
        helper.make_node("Slice", ["x", "s0", "s1", "sax", "sst"], ["sl"]),
        helper.make_node("Split", ["x"], ["p0", "p1"], axis=2, num_outputs=2),
        helper.make_node("Expand", ["col", "eshape"], ["e"]),
        helper.make_node("ReduceMean", ["x", "rax"], ["m"], keepdims=0),
        helper.make_node("Gemm", ["ga", "gb", "gc"], ["gm"], alpha=0.5, beta=2.0, transB=1),
        helper.make_node("Trilu", ["sq", "tk"], ["tl"], upper=0),
        helper.make_node("CumSum", ["sq", "cax"], ["cs"], exclusive=1, reverse=1),
        # element-wise and axis ops the exporters emit for other models
        helper.make_node("Sub", ["x", "sq4"], ["dx"]),
        helper.make_node("Abs", ["dx"], ["ad"]),
        helper.make_node("Sqrt", ["ad"], ["sr"]),
        helper.make_node("Relu", ["x"], ["re"]),
        helper.make_node("Neg", ["re"], ["ne"]),
        helper.make_node("Unsqueeze", ["ne", "uax"], ["un"]),
        helper.make_node("Squeeze", ["un", "uax"], ["sqz"]),
        helper.make_node("Softmax", ["x"], ["sm"], axis=1),
        helper.make_node("LayerNormalization", ["x", "lns", "lnb"], ["ln"], axis=-2,
                         epsilon=1e-3),
    ]
    inits = [
        c(np.array([7, -7, 9, -9], np.int64), "n"), c(np.array([2, 2, -4, 4], np.int64), "d"),
        c(np.array([0, -1], np.int64), "shape"), c(np.array([-1, 0], np.int64), "gi"),
        c(np.array([-1], np.int64), "s0"), c(np.array([-100], np.int64), "s1"),
        c(np.array([1], np.int64), "sax"), c(np.array([-2], np.int64), "sst"),
        c(np.ones((3, 1), np.float32), "col"), c(np.array([1, 4], np.int64), "eshape"),
        c(np.array([1, -1], np.int64), "rax"),
        c(np.arange(6, dtype=np.float32).reshape(2, 3), "ga"),
        c(np.arange(12, dtype=np.float32).reshape(4, 3), "gb"),
        c(np.ones(4, np.float32), "gc"),
        c(np.arange(16, dtype=np.float32).reshape(4, 4), "sq"),
        c(np.array(1, np.int64), "tk"), c(np.array(1, np.int64), "cax"),
        c(np.linspace(-1, 1, 4, dtype=np.float32), "sq4"), c(np.array([0, -1], np.int64), "uax"),
        c(np.linspace(0.5, 2, 20, dtype=np.float32).reshape(5, 4), "lns"),
        c(np.linspace(-1, 1, 20, dtype=np.float32).reshape(5, 4), "lnb"),
    ]
    outs = [("q", i64), ("r", f32), ("g", f32), ("sl", f32), ("p0", f32), ("p1", f32),
            ("e", f32), ("m", f32), ("gm", f32), ("tl", f32), ("cs", f32), ("sr", f32),
            ("sqz", f32), ("sm", f32), ("ln", f32)]
    graph = helper.make_graph(
        nodes, "semantics", [helper.make_tensor_value_info("x", f32, [2, 5, 4])],
        [helper.make_tensor_value_info(n, t, None) for n, t in outs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    path = tmp_path / "sem.onnx"
    onnx.save(model, str(path))
    x = np.random.default_rng(0).standard_normal((2, 5, 4)).astype(np.float32)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})
    got = import_onnx(path)(torch.from_numpy(x))
    assert len(got) == len(want)
    bounds = _semantics_bounds(x.astype(np.float64))
    for (name, _), g, w in zip(outs, got, want, strict=True):
        assert tuple(g.shape) == w.shape, name
        if name in bounds:  # each implementation within its bound of the exact value
            assert_within(g, w, 2 * bounds[name], name)
        else:  # moved values, or small integers in every intermediate: exact in any order
            assert np.array_equal(g.numpy(), w), name


def _semantics_bounds(x: np.ndarray) -> dict[str, np.ndarray]:
    """Deterministic per-element bounds (Higham; tests/tolerance.py) of one float32
    implementation of the rounding outputs of ``test_onnx_semantics_helpers``, from the
    float64 input. Every other output is exact."""
    sq4 = np.linspace(-1, 1, 4, dtype=np.float32).astype(np.float64)
    # ReduceMean over 5·4 = 20: a sum of 20 and a divide, |δ| ≤ γ_21 · mean|x|
    mean_abs = np.abs(x).mean(axis=(1, 2))
    # Sqrt(Abs(x − c)): the Sub and the Sqrt round once each (Abs is exact): ≤ γ_2·|y|
    sr = gamma(2) * np.sqrt(np.abs(x - sq4))
    # Softmax over axis 1 (5 terms): exp(a), a = x − max, rounded a costs |a|·u relative,
    # exp LIBM_ULPS; the positive sum of 5 γ_4; then a divide (or reciprocal and
    # multiply): relative error ≤ γ_n, n = |a| + max|a| + 2·LIBM_ULPS + 4 + 2
    a = x - x.max(axis=1, keepdims=True)
    e = np.exp(a)
    sm = e / e.sum(axis=1, keepdims=True)
    n_sm = math.ceil(2 * np.abs(a).max()) + 2 * LIBM_ULPS + 6
    # LayerNormalization over the last two axes (20 values), eps 1e-3, scale s, bias b:
    # |δμ| ≤ γ_21·mean|x|; the variance (20 squares and a sum, or E[x²] − μ²) within
    # γ_44·(mean x² + μ²); σ = sqrt(var + eps) then within δvar/(2·var) + γ_2 relative;
    # x̂ = (x − μ)/σ within (|δμ| + u|x − μ|)/σ + |x̂|·(δσ + 2u); y = x̂·s + b within
    # |s|·δx̂ + γ_2·(|x̂·s| + |b|).
    s = np.linspace(0.5, 2, 20, dtype=np.float32).astype(np.float64).reshape(5, 4)
    b = np.linspace(-1, 1, 20, dtype=np.float32).astype(np.float64).reshape(5, 4)
    mu = x.mean(axis=(1, 2), keepdims=True)
    var = ((x - mu) ** 2).mean(axis=(1, 2), keepdims=True)
    sigma = np.sqrt(var + 1e-3)
    xhat = (x - mu) / sigma
    d_mu = gamma(21) * np.abs(x).mean(axis=(1, 2), keepdims=True)
    d_var = gamma(44) * ((x**2).mean(axis=(1, 2), keepdims=True) + mu**2)
    d_sigma = d_var / (2 * var) + gamma(2)
    d_xhat = (d_mu + U32 * np.abs(x - mu)) / sigma + np.abs(xhat) * (d_sigma + 2 * U32)
    ln = np.abs(s) * d_xhat + gamma(2) * (np.abs(xhat * s) + np.abs(b))
    return {"m": gamma(21) * mean_abs, "sr": sr, "sm": gamma(n_sm) * sm, "ln": ln}
