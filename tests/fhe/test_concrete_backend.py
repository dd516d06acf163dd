"""The integer graph runs in concrete-python and gives the simulator's integers exactly."""

import numpy as np
import pytest
import torch
import transformers
from concrete import fhe

from cerberus.fhe.concrete_backend import _product, compile_circuit
from cerberus.frontends.huggingface import from_hf_module
from cerberus.ir import IntGraph, Node, evaluate
from cerberus.lower import LoweringOptions, lower_blocks

SMALL = LoweringOptions(bits=4, weight_bits=4, wide_bits=6, max_lookup_bits=6, mult_bits=2)


def tiny_graph(kind: str) -> tuple[IntGraph, np.ndarray]:
    """A one-layer, d=8 model lowered at 4 bits, and its calibration integers [N, 4, 8]."""
    torch.manual_seed(0)
    if kind == "bert":
        cfg = transformers.BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1,
                                      num_attention_heads=2, intermediate_size=16,
                                      max_position_embeddings=8)
        model = from_hf_module(transformers.BertModel(cfg, add_pooling_layer=False).eval())
    else:
        cfg = transformers.GPT2Config(vocab_size=50, n_positions=8, n_embd=8, n_layer=1,
                                      n_head=2)
        model = from_hf_module(transformers.GPT2LMHeadModel(cfg).eval())
    ids = torch.randint(0, 50, (24, 4), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        emb = model.embed(ids).double().numpy()
    graph = lower_blocks(model, emb, SMALL)
    top = 2 ** (graph.meta["input_bits"] - 1) - 1
    xs = np.clip(np.floor(emb / graph.meta["input_scale"] + 0.5), -top, top).astype(np.int64)
    return graph, xs


@pytest.mark.parametrize("kind", ["bert", pytest.param("gpt", marks=pytest.mark.slow)])
def test_whole_block_simulates_bit_exactly(kind) -> None:
    graph, xs = tiny_graph(kind)
    circuit = compile_circuit(graph, list(xs))
    for x in xs[:6]:
        assert np.array_equal(circuit.simulate(x), evaluate(graph, x[None])["output"][0])
    assert circuit.statistics["programmable_bootstrap_count"] > 0


@pytest.mark.parametrize("bound", [None, 15], ids=["shift", "centre"])
def test_mixed_sign_products_are_exact(bound: int | None) -> None:
    """concrete multiplies unsigned × signed wrongly; the backend's shift of the signed
    operand (no bound known) or centring of the unsigned one (its upper bound known, what
    the lowering passes) must fix it, also at the edges of the ranges."""
    rng = np.random.default_rng(0)
    p = np.concatenate([rng.integers(0, 16, (18, 3, 4)), np.full((2, 3, 4), 15)])
    v = np.concatenate([rng.integers(-8, 8, (18, 4, 2)), np.full((1, 4, 2), -8),
                        np.full((1, 4, 2), 7)])
    for op in ("matmul", "mul"):
        b = v if op == "matmul" else v[:, :3, :1]

        def product(x, y, op=op):
            return _product(op, x, y, 0, -8, bound, 7)

        compiler = fhe.Compiler(lambda x, y: product(x, y), {"x": "encrypted", "y": "encrypted"})
        circuit = compiler.compile(list(zip(p, b, strict=True)),
                                   fhe.Configuration(show_progress=False))
        for i in (0, 1, 2, 18, 19):
            expected = p[i] @ b[i] if op == "matmul" else p[i] * b[i]
            assert np.array_equal(circuit.simulate(p[i], b[i]), expected)


def test_signed_products_are_exact_and_not_widened() -> None:
    """Two signed operands multiply as they are: exact at the edges of their range, and
    QKᵀ of 4-bit values over 16 dims compiles. Shifting both to unsigned (as mixed signs
    need) widened its bootstraps past what concrete finds TFHE parameters for
    (NoParametersFound): the d_model-16 full-partition block failed there."""
    rng = np.random.default_rng(3)
    ident = np.arange(-7, 8)
    src = [
        Node("input", "input", [], -7, 7),
        Node("kT", "transpose", ["input"], -7, 7),
        Node("q", "lut", ["input"], -7, 7, attrs={"table": ident, "lsbs": 0, "offset": -7}),
        Node("neg", "lut", ["input"], -7, 7, attrs={"table": -ident, "lsbs": 0, "offset": -7}),
    ]
    products = {
        "scores": (Node("scores", "matmul", ["q", "kT"], -784, 784), lambda x: x @ x.T),
        "square": (Node("square", "mul", ["q", "neg"], -49, 0), lambda x: -(x * x)),
    }
    xs = [rng.integers(-7, 8, (4, 16)) for _ in range(20)]
    xs += [np.full((4, 16), -7), np.full((4, 16), 7)]
    for name, (node, expected) in products.items():
        graph = IntGraph([*src, node], "input", name, {"seq_len": 4, "d_model": 16})
        circuit = compile_circuit(graph, xs)
        for x in xs[-4:]:
            assert np.array_equal(circuit.simulate(x), expected(x))


def test_real_encryption_round_trip() -> None:
    """keygen → encrypt → run → decrypt on a small linear + rounded lookup graph."""
    rng = np.random.default_rng(2)
    weight = rng.integers(-7, 8, (4, 3))
    table = np.arange(-8, 8) ** 2 // 4
    nodes = [
        Node("input", "input", [], -7, 7),
        Node("lin", "linear", ["input"], -256, 255, attrs={"weight": weight, "mult": None,
                                                          "bias": None}),
        Node("sq", "lut", ["lin"], int(table.min()), int(table.max()),
             attrs={"table": table, "lsbs": 5, "offset": -8}),
    ]
    graph = IntGraph(nodes, "input", "sq", {"seq_len": 2, "d_model": 4})
    xs = [rng.integers(-7, 8, (2, 4)) for _ in range(30)]
    circuit = compile_circuit(graph, xs)
    circuit.keygen(seed=7)
    for x in xs[:2]:
        assert np.array_equal(circuit.encrypt_run_decrypt(x), evaluate(graph, x[None])["output"][0])


@pytest.mark.slow
def test_tiny_block_under_real_encryption() -> None:
    graph, xs = tiny_graph("bert")
    circuit = compile_circuit(graph, list(xs))
    circuit.keygen()
    x = xs[0]
    assert np.array_equal(circuit.encrypt_run_decrypt(x), evaluate(graph, x[None])["output"][0])


def test_products_wider_than_the_lookup_limit_are_refused() -> None:
    from cerberus.errors import CompileError
    from cerberus.fhe.concrete_backend import check_widths

    graph, _ = tiny_graph("bert")  # 4-bit operands: products need 5-bit lookups
    check_widths(graph, 6)
    with pytest.raises(CompileError, match=r"node \S+ \((mul|matmul)\) needs \d+-bit"):
        check_widths(graph, 4)
