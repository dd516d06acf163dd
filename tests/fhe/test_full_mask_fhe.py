"""A key-masked full-partition block under real encryption (issue #13 item 3, SPEC C6).

keygen → encrypt → run → decrypt of a one-layer, d_model 8, two-position encoder block
lowered with ``LoweringOptions(key_mask=True)``: the circuit's one encrypted input is
``[T, d + 1]``, the last column the key mask. (d_model 16 at T = 4 found no TFHE
parameters for its LayerNorm's equalised sum of squares, mask or not, or took over 7 min
to compile on 2 cores: tests/fhe keeps to the d_model 8 block.) Its outputs must be the
simulator's integers bit for bit, for padded, unpadded and fully padded windows and for
inputs at the ends of the declared input range; concrete's PBS count must be the IR's
(the mask's nodes included).
"""

import numpy as np
import pytest
import torch
import transformers

from cerberus.fhe.concrete_backend import compile_circuit, node_tag
from cerberus.frontends.huggingface import from_hf_module
from cerberus.ir import evaluate
from cerberus.lower import LoweringOptions, lower_blocks

T, D = 2, 8
OPTS = LoweringOptions(bits=4, weight_bits=4, wide_bits=6, max_lookup_bits=6, mult_bits=2,
                       key_mask=True)


def masked_block() -> tuple:
    """(graph, integer inputs [N, T, D + 1]) of a random one-layer BERT block, calibrated on
    every input it is then run on: its ranges, and concrete's, hold for all of them.

    The inputs: 12 random windows, each unpadded and right-padded to one real token, one
    with no real token at all, and four windows at the ends of the input range (every
    embedding at ±the peak, so ±qmax of the input width after quantization), all real,
    one real, none real."""
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=D, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=32,
                                  max_position_embeddings=8, initializer_range=0.5)
    torch.manual_seed(0)
    model = from_hf_module(transformers.BertModel(cfg, add_pooling_layer=False).eval())
    ids = torch.randint(0, 50, (12, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        emb = model.embed(ids).double().numpy()
    peak = float(np.abs(emb).max())
    signs = np.array([1.0, -1.0])[(np.arange(T)[:, None] + np.arange(D)[None, :]) % 2]
    extreme = peak * np.stack([np.ones((T, D)), -np.ones((T, D)), signs, -signs])
    real = np.arange(T)[None, :] < (np.arange(12) % (T - 1) + 1)[:, None]
    calib = np.concatenate([emb, emb, emb[:1], extreme])
    keep = np.concatenate([np.ones((12, T)), real, np.zeros((1, T)),
                           np.array([[1, 1], [1, 0], [1, 0], [0, 0]])])
    keep = keep.astype(np.int64)
    graph = lower_blocks(model, calib, OPTS, keep=keep)
    top = 2 ** (OPTS.wide_bits - 1) - 1
    xs = np.clip(np.floor(calib / graph.meta["input_scale"] + 0.5), -top, top).astype(np.int64)
    xs = np.concatenate([xs, keep[..., None]], -1)
    assert np.abs(xs[-4:, :, :D]).max() == top  # the extremes are at the declared range's ends
    return graph, xs


@pytest.mark.slow  # compile, keygen, 5 encrypted runs: 29 min on 2 cores at load 11
def test_masked_block_under_real_encryption_is_the_simulator() -> None:
    graph, xs = masked_block()
    circuit = compile_circuit(graph, list(xs))
    stats = circuit.statistics
    assert graph.pbs_count() == stats["programmable_bootstrap_count"]
    ours = {node_tag(k): v for k, v in graph.pbs_by_node().items() if v}
    assert ours == dict(stats["programmable_bootstrap_count_per_tag"])
    assert any(k.endswith("k_keys_u") for k in ours)  # the mask's products are live
    circuit.keygen(seed=11)
    # unpadded, padded, no real token, and the range's two ends (one of them padded)
    for i in (0, 12, 24, 25, 27):
        x = xs[i]
        assert np.array_equal(circuit.encrypt_run_decrypt(x),
                              evaluate(graph, x[None])["output"][0]), f"input {i}"
