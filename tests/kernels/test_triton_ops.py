"""Triton kernels of the simulator == the NumPy reference, bit for bit (SPEC C7, issue #5).

Runs on the CPU under ``TRITON_INTERPRET=1`` (set by tests/conftest.py); sizes are small
because the emulator is slow. Every comparison is ``np.array_equal`` against
``cerberus.ir.apply_op``/``evaluate`` with the NumPy backend.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cerberus.ir import IntGraph, Node, RangeOverflow, apply_op, evaluate, round_lsbs
from cerberus.kernels import (
    Int32FallbackWarning,
    Int32Overflow,
    fused_lookup,
    int32_fallbacks,
    int_matmul,
    int_mul,
)


def linear_node(w: np.ndarray, mult: np.ndarray | None, bias: np.ndarray | None) -> Node:
    return Node("lin", "linear", ["input"], -(2**62), 2**62,
                attrs={"weight": w, "mult": mult, "bias": bias})


def lut_node(table: np.ndarray, lsbs: int, offset: int) -> Node:
    return Node("t", "lut", ["input"], int(table.min()), int(table.max()),
                attrs={"table": table, "lsbs": lsbs, "offset": offset})


# -- int_matmul ------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 5, 7), (1, 17, 100, 9), (3, 8, 33, 70)])
@pytest.mark.parametrize("epilogue", ["none", "mult", "bias", "both"])
def test_linear_matches_numpy_on_random_ints(shape: tuple[int, int, int, int],
                                              epilogue: str) -> None:
    """K > the block and sizes off the block grid exercise the K loop and the masks."""
    batch, m, k, n = shape
    rng = np.random.default_rng(sum(shape))
    x = rng.integers(-128, 128, (batch, m, k))
    w = rng.integers(-127, 128, (k, n))
    mult = rng.integers(1, 64, n) if epilogue in ("mult", "both") else None
    bias = rng.integers(-(2**20), 2**20, n) if epilogue in ("bias", "both") else None
    got = int_matmul(x, w, mult, bias)
    want = apply_op(linear_node(w, mult, bias), [x])
    assert got.dtype == np.int64 and got.shape == want.shape
    assert np.array_equal(got, want)


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("pattern", ["all_neg", "all_pos", "min_int", "mixed"])
def test_matmul_at_the_edges_of_the_bit_range(bits: int, pattern: str) -> None:
    """All −qmax, all +qmax, the lone −2**(b−1), and alternating extremes."""
    qmax = 2 ** (bits - 1) - 1
    m, k, n = 5, 40, 6
    if pattern == "all_neg":
        x, w = np.full((2, m, k), -qmax), np.full((k, n), -qmax)
    elif pattern == "all_pos":
        x, w = np.full((2, m, k), qmax), np.full((k, n), qmax)
    elif pattern == "min_int":
        x, w = np.full((2, m, k), -qmax - 1), np.full((k, n), qmax)
    else:
        signs = np.where(np.indices((2, m, k)).sum(axis=0) % 2 == 0, 1, -1)
        x, w = signs * qmax, np.where(np.indices((k, n)).sum(axis=0) % 3 == 0, -qmax, qmax)
    mult = np.full(n, 2**6)
    bias = np.arange(n) - n // 2
    assert np.array_equal(int_matmul(x, w, mult, bias),
                          apply_op(linear_node(w, mult, bias), [x]))


def test_enc_by_enc_matmul_batched_and_broadcast() -> None:
    """The attention products: both operands encrypted, leading axes broadcast."""
    rng = np.random.default_rng(1)
    q = rng.integers(-128, 128, (2, 3, 8, 4))
    kt = rng.integers(-128, 128, (2, 3, 4, 8))
    assert np.array_equal(int_matmul(q, kt), q @ kt)
    shared = rng.integers(-128, 128, (1, 3, 4, 5))
    assert np.array_equal(int_matmul(q, shared), q @ shared)


def test_int32_guard_refuses_a_product_that_would_wrap() -> None:
    """A real overflow: int32 arithmetic gives a different answer, so the kernel refuses."""
    k = 4
    x = np.full((1, 2, k), 2**15)
    w = np.full((k, 3), 2**15)
    wrapped = x.astype(np.int32) @ w.astype(np.int32)
    assert not np.array_equal(wrapped, x @ w)  # the guard is guarding something real
    with pytest.raises(OverflowError, match=r"K=4.*2\*\*31") as info:
        int_matmul(x, w)
    assert isinstance(info.value, Int32Overflow)
    assert "1x2x4" in str(info.value) and "4x3" in str(info.value)


def test_int32_guard_counts_the_epilogue_and_the_exact_limit_passes() -> None:
    """|a|max·Σ|w| = 2**31−1−small fits; ×mult or +bias past 2**31−1 does not."""
    x = np.full((1, 1, 2), 2**15 - 1)
    w = np.full((2, 1), 2**15 - 1)
    assert np.array_equal(int_matmul(x, w), x @ w)  # 2·32767² = 2147352578 ≤ 2**31−1
    with pytest.raises(Int32Overflow):
        int_matmul(x, w, mult=np.array([2]))
    with pytest.raises(Int32Overflow):
        int_matmul(x, w, bias=np.array([2**31 - 1 - 2 * 32767**2 + 1]))
    # a compiled range wider than the data also condemns int32 (decision per graph)
    with pytest.raises(Int32Overflow):
        int_matmul(np.ones((1, 1, 2), dtype=np.int64), w, a_absmax=2**16)


def test_dispatcher_falls_back_to_int64_and_reports_the_node() -> None:
    """evaluate(backend='triton') gives the NumPy bits even for a node int32 cannot hold."""
    w = np.full((4, 2), 2**15)
    nodes = [
        Node("input", "input", [], -(2**16), 2**16),
        Node("big", "linear", ["input"], -(2**40), 2**40, attrs={"weight": w}),
        Node("small", "linear", ["input"], -(2**40), 2**40,
             attrs={"weight": np.ones((4, 2), dtype=np.int64)}),
        Node("out", "add", ["big", "small"], -(2**41), 2**41),
    ]
    g = IntGraph(nodes, "input", "out", {"seq_len": 1, "d_model": 4})
    assert set(int32_fallbacks(g)) == {"big"}
    x = np.full((1, 1, 4), 2**16)
    with pytest.warns(Int32FallbackWarning, match="node big"):
        got = evaluate(g, x, backend="triton")["output"]
    assert np.array_equal(got, evaluate(g, x)["output"])


@pytest.mark.parametrize("bits", [2, 8, 16])
def test_elementwise_mul_matches_numpy_with_broadcasting_and_edges(bits: int) -> None:
    """Random values plus ±qmax and −2**(b−1) in both operands, broadcast like attention."""
    qmax = 2 ** (bits - 1) - 1
    rng = np.random.default_rng(bits)
    a = rng.integers(-qmax - 1, qmax + 1, (2, 3, 5, 4))
    b = rng.integers(-qmax - 1, qmax + 1, (2, 1, 5, 1))
    a[0, 0, 0] = [-qmax - 1, -qmax, qmax, 0]
    b[0, 0, :, 0] = [-qmax - 1, qmax, -qmax, 1, -1]
    node = Node("m", "mul", ["a", "b"], -(2**62), 2**62)
    assert np.array_equal(int_mul(a, b), apply_op(node, [a, b]))
    assert np.array_equal(int_mul(b, a), apply_op(node, [b, a]))


def test_elementwise_mul_guard() -> None:
    a = np.array([2**16, -3])
    assert not np.array_equal(a.astype(np.int32) * a.astype(np.int32), a * a)  # would wrap
    with pytest.raises(Int32Overflow, match="int_mul"):
        int_mul(a, a)
    assert np.array_equal(int_mul(np.array([46340]), np.array([-46340])), [-(46340**2)])


# -- fused_lookup ------------------------------------------------------------------------------
@pytest.mark.parametrize("lsbs", [0, 1, 2, 3, 5, 8, 12])
@pytest.mark.parametrize("table_size", [1, 7, 256])
def test_lookup_matches_numpy_with_rounding_ties(lsbs: int, table_size: int) -> None:
    """Random inputs plus every tie ±2**(lsbs−1)·odd and the extremes of the table's reach."""
    rng = np.random.default_rng(lsbs * 1000 + table_size)
    offset = -(table_size // 2)
    step = 1 << lsbs
    half = step >> 1
    lo = offset * step - half  # smallest x that rounds to index 0
    hi = (offset + table_size - 1) * step + half - 1 if lsbs else offset + table_size - 1
    ties = np.arange(lo, hi + 1, max(step, 1))[: 200]
    neg_tie = np.array([-half]) if lo <= -half <= hi else np.empty(0, dtype=np.int64)
    x = np.concatenate([rng.integers(lo, hi + 1, 300), ties, neg_tie, [lo, hi]])
    table = rng.integers(-(2**20), 2**20, table_size)
    node = lut_node(table, lsbs, offset)
    assert np.array_equal(fused_lookup(x, lsbs, offset, table), apply_op(node, [x]))
    shaped = x[: (len(x) // 6) * 6].reshape(2, 3, -1)
    assert np.array_equal(fused_lookup(shaped, lsbs, offset, table), apply_op(node, [shaped]))


def test_negative_ties_round_up() -> None:
    """round_bit_pattern's ties go up, also below zero: −2**(l−1) → index 0, floor shift."""
    for lsbs in range(1, 13):
        half = 1 << (lsbs - 1)
        x = np.array([-half, -half - 1, half - 1, half, -3 * half])
        table = np.arange(-8, 8) * 3
        got = fused_lookup(x, lsbs, -8, table)
        assert np.array_equal(got, table[round_lsbs(x, lsbs) + 8])
        assert got[0] == table[8] and got[1] == table[7]


def test_lookup_on_wide_inputs_uses_int64_without_wrapping() -> None:
    """Inputs near the int32 edge (lsbs large): the kernel switches to int64 elements."""
    lsbs = 24
    x = np.array([2**31 - 1, -(2**31), 2**33, -(2**33) - 1])
    table = np.arange(2**11) - 2**10
    offset = -(2**10)
    node = lut_node(table, lsbs, offset)
    assert np.array_equal(fused_lookup(x, lsbs, offset, table), apply_op(node, [x]))


@pytest.mark.parametrize("where", ["below", "above", "int32_wrap"])
def test_out_of_range_lookup_raises_like_numpy(where: str) -> None:
    """Out of the table on either side; and an index that int32 would wrap back into it."""
    table = np.arange(16)
    lsbs, offset = 2, -2
    if where == "above":
        x = np.array([[0, 17, 70]])
    elif where == "below":
        x = np.array([[-11, 0, 8]])
    else:  # -2**31 - (2**31 - 1) = 1 - 2**32, which is 1 in int32: inside the table
        x, lsbs, offset = np.array([[-(2**31)]]), 0, 2**31 - 1
    node = lut_node(table, lsbs, offset)
    with pytest.raises(RangeOverflow) as want:
        apply_op(node, [x])
    with pytest.raises(RangeOverflow) as got:
        fused_lookup(x, lsbs, offset, table, name="t")
    assert str(got.value) == str(want.value)


# -- a whole graph ----------------------------------------------------------------------------
def assert_graph_bit_exact(model, ids, opts) -> None:
    """Lower ``model`` on its own embeddings of ``ids``; both backends agree at every node."""
    import torch

    from cerberus.lower import lower_blocks

    with torch.no_grad():
        emb = model.embed(ids).detach().double().numpy()
    g = lower_blocks(model, emb, opts)
    assert {"linear", "lut", "matmul"} <= set(g.op_counts())
    top = 2 ** (g.meta["input_bits"] - 1) - 1
    x = np.clip(np.floor(emb / g.meta["input_scale"] + 0.5), -top, top).astype(np.int64)
    names = [n.name for n in g.nodes]
    want = evaluate(g, x, keep=names)
    got = evaluate(g, x, keep=names, backend="triton")
    for name in ["output", *names]:
        assert np.array_equal(got[name], want[name]), name


@pytest.mark.parametrize("bits", [8, 4])
def test_tiny_bert_graph_triton_equals_numpy_at_every_node(bits: int) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from cerberus.frontends.huggingface import from_hf_module
    from cerberus.lower import LoweringOptions

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=16,
                                     max_position_embeddings=8)
    model = from_hf_module(transformers.BertModel(config, add_pooling_layer=False).eval())
    ids = torch.randint(0, 50, (4, 8))
    assert_graph_bit_exact(model, ids, LoweringOptions(bits=bits, weight_bits=bits))


def test_shipped_tiny_gpt_graph_triton_equals_numpy_at_every_node() -> None:
    """The real weights of models/tiny-gpt (every block), not just a random toy."""
    torch = pytest.importorskip("torch")
    from cerberus.frontends.huggingface import from_hf_module, load_pretrained
    from cerberus.lower import LoweringOptions

    hf, _ = load_pretrained(Path(__file__).resolve().parents[2] / "models" / "tiny-gpt")
    model = from_hf_module(hf)
    ids = torch.from_numpy(np.random.default_rng(0).integers(0, hf.config.vocab_size, (2, 8)))
    assert_graph_bit_exact(model, ids, LoweringOptions())


def test_without_a_gpu_the_emulator_is_the_default() -> None:
    """No TRITON_INTERPRET and no GPU: the triton backend still runs (emulated), same bits."""
    import os
    import subprocess
    import sys

    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the kernels compile natively")
    code = (
        "import numpy as np\n"
        "from cerberus.kernels import int_matmul\n"
        "from cerberus.kernels.triton_ops import interpreted\n"
        "a = np.arange(-6, 6).reshape(1, 3, 4); w = np.arange(8).reshape(4, 2) - 3\n"
        "assert interpreted() and np.array_equal(int_matmul(a, w), a @ w)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=root,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_unknown_backend_is_refused() -> None:
    g = IntGraph([Node("input", "input", [], 0, 1)], "input", "input",
                 {"seq_len": 1, "d_model": 1})
    with pytest.raises(ValueError, match="backend"):
        evaluate(g, np.zeros((1, 1, 1), dtype=np.int64), backend="cuda")
