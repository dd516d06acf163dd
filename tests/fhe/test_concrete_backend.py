"""The integer graph runs in concrete-python and gives the simulator's integers exactly."""

import numpy as np
import pytest
import torch
import transformers
from concrete import fhe

from cerberus.fhe.concrete_backend import compile_circuit, narrowing_roundings
from cerberus.frontends.huggingface import from_hf_module
from cerberus.ir import IntGraph, Node, evaluate
from cerberus.lower import LoweringOptions, lower_blocks
from cerberus.ops import _product

SMALL = LoweringOptions(bits=4, weight_bits=4, wide_bits=6, max_lookup_bits=6, mult_bits=2)


def tiny_graph(kind: str, seq_len: int | None = None) -> tuple[IntGraph, np.ndarray]:
    """A one-layer, d=8 model lowered at 4 bits, and its calibration integers [24, T, 8].

    BERT uses ``initializer_range=0.5`` (T=2 unless told): with the default 0.02 every
    residual-branch table is constant, concrete folds attention and MLP away and only the
    LayerNorms are left to check (issue #5). GPT keeps its default init (T=4).
    """
    torch.manual_seed(0)
    if kind == "bert":
        cfg = transformers.BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1,
                                      num_attention_heads=2, intermediate_size=16,
                                      max_position_embeddings=8, initializer_range=0.5)
        model = from_hf_module(transformers.BertModel(cfg, add_pooling_layer=False).eval())
    else:
        cfg = transformers.GPT2Config(vocab_size=50, n_positions=8, n_embd=8, n_layer=1,
                                      n_head=2)
        model = from_hf_module(transformers.GPT2LMHeadModel(cfg).eval())
    seq_len = seq_len or (2 if kind == "bert" else 4)
    ids = torch.randint(0, 50, (24, seq_len), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        emb = model.embed(ids).double().numpy()
    graph = lower_blocks(model, emb, SMALL)
    top = 2 ** (graph.meta["input_bits"] - 1) - 1
    xs = np.clip(np.floor(emb / graph.meta["input_scale"] + 0.5), -top, top).astype(np.int64)
    return graph, xs


SIMULATE_ONLY = fhe.Configuration(show_progress=False, fhe_simulation=True, fhe_execution=False)


@pytest.mark.parametrize("kind,seq_len", [
    ("bert", 2),  # ~30 s
    pytest.param("bert", 4, marks=pytest.mark.slow),  # ~3 min
    pytest.param("gpt", 4, marks=pytest.mark.slow),
], ids=["bert", "bert-t4", "gpt"])
def test_whole_block_simulates_bit_exactly(kind: str, seq_len: int) -> None:
    graph, xs = tiny_graph(kind, seq_len)
    if kind == "bert":
        # the whole block runs: attention's products and the MLP's lookup are live (no
        # constant table folds them away), and some rounding narrows its input's range,
        # the case concrete got wrong without the backend's fix (issue #5)
        by_node = graph.pbs_by_node()
        assert all(by_node.get(n.name, 0) > 0 for n in graph.nodes if n.op == "matmul")
        assert by_node["l0.mlp.act"] > 0 and by_node["l0.res2.branch"] > 0
        assert narrowing_roundings(graph, list(xs))
    circuit = compile_circuit(graph, list(xs), SIMULATE_ONLY)
    for x in xs:
        assert np.array_equal(circuit.simulate(x), evaluate(graph, x[None])["output"][0])


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


def test_rounding_that_narrows_the_range_is_exact() -> None:
    """Rounding may make a range narrower: a signed minimum just below −2**k rounds to
    −2**k (−67 → −64 at 4 bits: 8 → 7 bits). concrete 2.11 takes any change of width for an
    overflow and, with its overflow protection on, read the next table at half the step
    (the BERT block's row max, issue #5); the backend drops the protection there. The
    widening case (max 60 → 64: 7 → 8 bits) needs it, and both must be exact."""
    index = np.arange(-4, 5)
    relu = np.maximum(index, 0) * 16
    nodes = [
        Node("input", "input", [], -67, 45),
        Node("narrow", "lut", ["input"], 0, 64, attrs={"table": relu, "lsbs": 4, "offset": -4}),
        Node("up", "add_const", ["input"], -52, 60, attrs={"const": np.array([15])}),
        Node("widen", "lut", ["up"], -3, 4,
             attrs={"table": np.arange(-3, 5), "lsbs": 4, "offset": -3}),
        Node("out", "concat", ["narrow", "widen"], -3, 64),
    ]
    graph = IntGraph(nodes, "input", "out", {"seq_len": 1, "d_model": 8})
    values = np.arange(-67, 46)
    xs = [np.resize(np.roll(values, -8 * i), (1, 8)) for i in range(len(values) // 8 + 1)]
    assert narrowing_roundings(graph, xs) == {"narrow"}
    circuit = compile_circuit(graph, xs)
    for x in xs:
        assert np.array_equal(circuit.simulate(x), evaluate(graph, x[None])["output"][0])


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


def lookup_into_linear(acc_bits: int) -> IntGraph:
    """input → 7-bit-index lookup ``y`` (0..255) → clear linear ``acc`` of 16 inputs whose
    accumulator is ``acc_bits`` wide → a rounded 8-bit lookup ``out``."""
    from cerberus.ops import round_lsbs, width

    weight = np.full((16, 1), 2 ** (acc_bits - 12), dtype=np.int64)
    hi = 255 * int(weight.sum())
    assert width(0, hi) == acc_bits
    lsbs = acc_bits - 8
    top = int(round_lsbs(np.int64(hi), lsbs))
    nodes = [
        Node("input", "input", [], 0, 127),
        Node("y", "lut", ["input"], 0, 255,
             attrs={"table": (np.arange(128) * 37) % 256, "lsbs": 0, "offset": 0}),
        Node("acc", "linear", ["y"], 0, hi, attrs={"weight": weight, "mult": None,
                                                   "bias": None}),
        Node("out", "lut", ["acc"], 0, 6,
             attrs={"table": np.arange(top + 1) % 7, "lsbs": lsbs, "offset": 0}),
    ]
    return IntGraph(nodes, "input", "out", {"seq_len": 1, "d_model": 16})


def test_lookup_output_width_is_the_widest_leveled_value_it_feeds() -> None:
    """A lookup feeding a clear linear must output the accumulator's width; the next
    lookup stops the walk; the encrypted input is no PBS output."""
    from cerberus.fhe.concrete_backend import lookup_output_widths

    assert lookup_output_widths(lookup_into_linear(21)) == {"y": (21, "acc"), "out": (3, "out")}
    graph, _ = tiny_graph("gpt")
    widths = lookup_output_widths(graph)
    assert "input" not in widths
    # the first LayerNorm's output feeds the query projection's wider accumulator
    assert widths["l0.ln1.out"][0] >= graph["l0.attn.q.lin"].bits > graph["l0.ln1.out"].bits


def test_no_parameters_names_the_lookup_feeding_a_wide_accumulator() -> None:
    """concrete-python finds parameters for a lookup output feeding an 18-bit accumulator
    and none at 19 bits (``LOOKUP_OUTPUT_LIMIT_BITS``); the compile error then names the
    lookup and the accumulator (tiny-gpt's full partition failed this way, issue #17)."""
    from cerberus.errors import CompileError
    from cerberus.fhe.concrete_backend import LOOKUP_OUTPUT_LIMIT_BITS
    from cerberus.fhe.program import compile_programs

    xs = [np.random.default_rng(i).integers(0, 128, (1, 16)) for i in range(40)]
    ok = lookup_into_linear(LOOKUP_OUTPUT_LIMIT_BITS)
    assert compile_programs({"p": ok}, {"p": xs})["p"].graph.maximum_integer_bit_width() \
        == LOOKUP_OUTPUT_LIMIT_BITS
    wide = LOOKUP_OUTPUT_LIMIT_BITS + 1
    with pytest.raises(CompileError, match=f"NoParametersFound.*node y must output {wide}-bit "
                                           "ciphertexts \\(it feeds node acc\\)"):
        compile_programs({"p": lookup_into_linear(wide)}, {"p": xs})
