"""The shipped tiny GPT-2 loads offline, generates, and learned something."""

import copy
import json
import math

import numpy as np
import pytest
import torch
from tolerance import (
    LIBM_ULPS,
    U64,
    gamma,
    gamma_prob,
    network_atol,
    transformer_roundings,
)
from transformers import AutoModelForCausalLM, AutoTokenizer

from cerberus.paths import shipped_model


@pytest.fixture(scope="module")
def tiny():
    path = shipped_model()
    return path, AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)


def test_architecture_is_small_gpt2(tiny) -> None:
    path, _, model = tiny
    cfg = model.config
    assert cfg.model_type == "gpt2"
    assert 2 <= cfg.n_layer <= 4 and cfg.n_head == 4 and 64 <= cfg.n_embd <= 128
    assert (path / "model.safetensors").stat().st_size < 10 * 2**20


def test_generates_new_text(tiny) -> None:
    _, tok, model = tiny
    ids = tok("The while statement", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.eos_token_id)
    assert out.shape[1] > ids.shape[1]
    assert tok.decode(out[0, ids.shape[1]:]).strip()


def test_tokenizer_round_trips_arbitrary_text(tiny) -> None:
    _, tok, _ = tiny
    text = "Zürich → λx: x**2 # ünïcode, tabs\tand newlines\n"
    assert tok.decode(tok(text).input_ids) == text


@torch.no_grad()
def _max_abs_logit(model, data: np.ndarray, ctx: int) -> float:
    """max |logit| over the windows ``model_perplexity`` scores (its scale for the bound)."""
    n = (len(data) - 1) // ctx
    x = torch.from_numpy(data[: n * ctx]).view(n, ctx)
    return max(float(model(input_ids=x[i : i + 64]).logits.abs().max()) for i in range(0, n, 64))


def _perplexity_atol(model, ppl64: float, data: np.ndarray, ctx: int) -> float:
    """Bound of float32 ``model_perplexity`` against its float64 run (tests/tolerance.py).

    ppl = exp(m), m the mean token NLL. Per token, the float32 logits are within
    a = γ̃_N(λ)·max|z64| (N the model's roundings at T = ctx), the NLL z_t − logsumexp(z) then
    within 2a, plus logsumexp's own rounding γ_{V+2·LIBM+4}·(1 + max|z|); the float32 sum over
    64 windows × ctx tokens γ̃_{64·ctx}(λ)·m. |Δppl| ≤ ppl·expm1(|Δm|).
    """
    cfg = model.config
    z = _max_abs_logit(copy.deepcopy(model).double(), data, ctx)
    n = transformer_roundings(cfg.n_embd, cfg.n_inner or 4 * cfg.n_embd, cfg.n_layer,
                              cfg.n_embd // cfg.n_head, ctx)
    d_m = (2 * network_atol(np.array(z), n) + gamma(cfg.vocab_size + 2 * LIBM_ULPS + 4) * (1 + z)
           + gamma_prob(64 * ctx) * math.log(ppl64))
    return ppl64 * math.expm1(d_m)


def test_beats_unigram_on_held_out_topics(tiny) -> None:
    """Recompute held-out perplexity and the unigram baseline from the corpus itself."""
    import importlib.util

    path, tok, model = tiny
    spec = importlib.util.spec_from_file_location("train", path.parent / "train_tiny_gpt.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    train_docs, val_docs = train.corpus_split()
    val_ids = train.encode(tok, val_docs)
    train_ids = train.encode(tok, train_docs)
    ppl = train.model_perplexity(model, val_ids, model.config.n_positions)
    unigram = train.unigram_perplexity(train_ids, val_ids, model.config.vocab_size)
    assert math.isfinite(ppl) and ppl < unigram / 4
    recorded = json.loads((path / "training.json").read_text())
    assert recorded["val_perplexity"] < recorded["unigram_val_perplexity"]
    # Against the same computation in float64: this run within its float32 bound, the
    # recorded value (float32 on another machine, rounded to 3 decimals) within that bound
    # plus half a unit of its last decimal.
    ctx = model.config.n_positions
    ppl64 = train.model_perplexity(copy.deepcopy(model).double(), val_ids, ctx)
    atol = _perplexity_atol(model, ppl64, val_ids, ctx)
    assert abs(ppl - ppl64) <= atol, (ppl, ppl64, atol)
    assert abs(recorded["val_perplexity"] - ppl64) <= atol + 0.5e-3, (ppl64, atol)
    # the unigram model is float64 throughout: the mean of n logs (γ_{n+LIBM+2} of the mean
    # NLL, log(ppl)), then exp; the record rounded to 3 decimals
    u_atol = unigram * math.expm1(gamma(len(val_ids) + 2 * LIBM_ULPS + 2, U64) * math.log(unigram))
    assert abs(unigram - recorded["unigram_val_perplexity"]) <= u_atol + 0.5e-3
