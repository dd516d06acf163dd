"""The shipped tiny GPT-2 loads offline, generates, and learned something."""

import json
import math

import numpy as np
import pytest
import torch
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
    assert np.isclose(ppl, recorded["val_perplexity"], rtol=1e-3)
    assert np.isclose(unigram, recorded["unigram_val_perplexity"], rtol=1e-3)
