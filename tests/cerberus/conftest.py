"""Shared fixtures for compiler tests: the shipped tiny GPT-2 and a tiny random BERT."""

import numpy as np
import pytest
import torch
import transformers

from cerberus.frontends.huggingface import from_hf_module, load_pretrained
from cerberus.paths import shipped_model


def load_gpt():
    """(canonical model, tokenizer) of models/tiny-gpt, freshly loaded."""
    hf, tok = load_pretrained(str(shipped_model("tiny-gpt")))
    return from_hf_module(hf), tok


def build_bert():
    """A tiny random BERT encoder (seed 0), freshly built."""
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=64,
                                  max_position_embeddings=32)
    torch.manual_seed(0)
    return from_hf_module(transformers.BertModel(cfg, add_pooling_layer=False).eval())


@pytest.fixture(scope="session")
def tiny_gpt():
    """Shared across the session: tests must not modify it."""
    return load_gpt()


@pytest.fixture(scope="session")
def tiny_bert():
    """Shared across the session: tests must not modify it."""
    return build_bert()


@pytest.fixture(scope="module")
def gpt():
    """A private copy per test module, for tests that modify the model."""
    return load_gpt()


@pytest.fixture(scope="module")
def bert():
    """A private copy per test module, for tests that modify the model."""
    return build_bert()


def embedded(model, ids: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model.embed(ids).double().numpy()


def to_int(graph, x: np.ndarray) -> np.ndarray:
    """What the client sends: embeddings quantized to the graph's input unit and width."""
    top = 2 ** (graph.meta["input_bits"] - 1) - 1
    return np.clip(np.floor(x / graph.meta["input_scale"] + 0.5), -top, top).astype(np.int64)


@pytest.fixture(scope="session")
def gpt_windows(tiny_gpt):
    """Token windows of held-out CPython docs text: (calibration [24, 8], test [16, 8])."""
    from pydoc_data.topics import topics

    _, tok = tiny_gpt
    names = sorted(topics)
    text = " ".join(topics[n] for i, n in enumerate(names) if i % 5 == 4)
    ids = torch.tensor(tok(text).input_ids[: 8 * 40]).view(40, 8)
    return ids[:24], ids[24:]


# Text in the style of the CPython docs tiny-gpt was trained on (written for this test).
PROSE = """The for statement is used to iterate over the elements of a sequence (such as a string,
tuple or list) or other iterable object. The expression list is evaluated once; it should yield
an iterable object. An iterator is created for the result of that iterable. Each item in turn is
assigned to the target list using the standard rules for assignments, and then the suite is
executed. When the items are exhausted, the suite in the else clause, if present, is executed,
and the loop terminates. A break statement executed in the first suite terminates the loop
without executing the else clause's suite. A continue statement executed in the first suite
skips the rest of the suite and continues with the next item, or with the else clause if there
is no next item. The try statement specifies exception handlers and/or cleanup code for a group
of statements. The with statement is used to wrap the execution of a block with methods defined
by a context manager. Function definitions are executable statements. A class definition defines
a class object. Objects are Python's abstraction for data. All data in a Python program is
represented by objects or by relations between objects. Every object has an identity, a type and
a value. An object's identity never changes once it has been created; you may think of it as the
object's address in memory. The is operator compares the identity of two objects."""


@pytest.fixture(scope="module")
def gpt_text():
    """(tiny-gpt, [n, 64] token windows of ``PROSE``), a private model per test module."""
    model, tok = load_pretrained(str(shipped_model()))
    ids = torch.tensor(tok(PROSE).input_ids)
    n = len(ids) // 64
    assert n >= 6
    return from_hf_module(model), ids[: n * 64].view(n, 64)
