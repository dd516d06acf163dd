"""A whole GPT block under real encryption in the fast suite (issue #17; SPEC C6, C7).

keygen → encrypt → run → decrypt of one pre-LN block of a one-layer GPT (d_model 8,
seq 4, one head): both LayerNorms, the causal softmax (row max, exp, reciprocal) and GELU
all run under FHE, lowered with the full partition (``lower_blocks``, attention folded:
``LoweringOptions.fold_attention``). The outputs must be the simulator's integers bit for
bit on a calibration-like window and on windows at the ends of the declared input range,
where a table or a rounding that is off by one would show first.

Why these widths: the test must run on every change (2 cores, keygen included), so the
block is lowered at 3-bit products, 2-bit weights, 3-bit residual stream and 5-bit
lookups; fidelity is not what it checks, exactness is (the lowering is the same code at
any width). The random init is 0.5, not GPT-2's 0.02, so that no residual branch folds
to a constant table and concrete runs the whole block (checked below).
"""

import numpy as np
import torch
import transformers

from cerberus.fhe.concrete_backend import compile_circuit
from cerberus.frontends.huggingface import from_hf_module
from cerberus.ir import evaluate
from cerberus.lower import LoweringOptions, lower_blocks

T, D = 4, 8
OPTS = LoweringOptions(bits=3, weight_bits=2, wide_bits=3, max_lookup_bits=5,
                       per_channel=False, fold_attention=True)


def gpt_block() -> tuple:
    """(graph, integer inputs [N, T, D]); the last input is the one run encrypted.

    Calibrated on 16 random windows and on two windows at the ends of the input range
    (every embedding at ±the peak, in alternating signs) and on the window run under
    encryption: its first two positions are real tokens, its last two at the range's
    ends with both signs in every channel, so one encrypted run checks calibration-like
    rows and rows at the extremes (the causal rows 0–1 see only the real tokens). Every
    value's range, and concrete's, holds for all of them."""
    cfg = transformers.GPT2Config(vocab_size=50, n_positions=8, n_embd=D, n_layer=1, n_head=1,
                                  n_inner=D, initializer_range=0.5)
    torch.manual_seed(0)
    model = from_hf_module(transformers.GPT2LMHeadModel(cfg).eval())
    ids = torch.randint(0, 50, (16, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        emb = model.embed(ids).double().numpy()
    peak = float(np.abs(emb).max())
    signs = np.array([1.0, -1.0])[(np.arange(T)[:, None] + np.arange(D)[None, :]) % 2]
    mixed = np.concatenate([emb[0, :2], peak * signs[2:]])
    calib = np.concatenate([emb, peak * np.stack([signs, -signs, mixed / peak])])
    graph = lower_blocks(model, calib, OPTS)
    top = 2 ** (OPTS.wide_bits - 1) - 1
    xs = np.clip(np.floor(calib / graph.meta["input_scale"] + 0.5), -top, top).astype(np.int64)
    edge = xs[-1, 2:]
    assert edge.min() == -top and edge.max() == top  # both ends of the declared range
    return graph, xs


def test_gpt_block_under_real_encryption_is_the_simulator() -> None:
    graph, xs = gpt_block()
    by_node = graph.pbs_by_node()
    for part in ("ln1.rsqrt", "ln2.rsqrt", "attn.h0.exp", "attn.h0.recip", "attn.h0.scores",
                 "attn.h0.pv.u", "mlp.act"):  # every non-linear part is live under FHE
        assert by_node.get(f"l0.{part}", 0) > 0, part
    circuit = compile_circuit(graph, list(xs))
    assert circuit.statistics["programmable_bootstrap_count"] == graph.pbs_count()
    circuit.keygen(seed=17)
    want = evaluate(graph, xs[-1:])["output"][0]
    assert np.array_equal(circuit.encrypt_run_decrypt(xs[-1]), want)
