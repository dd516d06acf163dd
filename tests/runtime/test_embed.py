"""``cerberus query --embed`` (issue #13; SPEC R1, R2): an encoder's sentence embeddings
computed through a real ``cerberus serve`` process under real TFHE.

The encoder is a tiny random BERT (2 layers, d 32) with a word-piece tokenizer, compiled
with ``--partition hybrid --fhe``. The embeddings through the miner use the client's own
code (``LightClient``) on the decrypted integers, which equal the simulator's, so they
must equal ``Artefact.sentence_embedding`` exactly, padding and attention mask included.
"""

from __future__ import annotations

import json
import string
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import transformers

from cerberus.artefact import Artefact, load_artefact
from cerberus_cli import CLI

from .conftest import Miner

WORDS = ["the", "a", "cat", "dog", "runs", "fast", "hello", "world", "is", "on", "mat"]
# different lengths: the batch is padded, and the mask must keep padding out
SENTENCES = ["hello world", "the cat is on the mat", "dogs run", "a"]


def tiny_bert(folder: Path) -> Path:
    """A random BERT (seed 0) and a word-piece tokenizer (whole words, letters, pieces)."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *string.ascii_lowercase,
             *(f"##{c}" for c in string.ascii_lowercase), *string.digits, *".,;:!?'()-"]
    folder.mkdir(parents=True)
    transformers.BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(
        str(folder))
    cfg = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=64,
                                  max_position_embeddings=32)
    torch.manual_seed(0)
    transformers.BertModel(cfg, add_pooling_layer=False).eval().save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Artefact:
    from cerberus.compile import CompileOptions, compile_model

    tmp = tmp_path_factory.mktemp("encoder")
    out, _, manifest = compile_model(tiny_bert(tmp / "bert"), tmp / "bert.cerb",
                                     CompileOptions(seq_len=8, fhe=True, partition="hybrid"))
    assert manifest["model_config"]["kind"] == "encoder"
    assert manifest["partition"]["mode"] == "hybrid"
    return load_artefact(out)


@pytest.fixture(scope="module")
def encoder_miner(encoder: Artefact,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[Miner]:
    m = Miner(encoder.path, tmp_path_factory.mktemp("encoder-miner"))
    yield m
    m.stop()


def query(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "query", *args], capture_output=True, text=True, timeout=300)


def test_embed_through_the_miner_equals_the_simulator(encoder: Artefact, encoder_miner: Miner,
                                                      tmp_path: Path) -> None:
    batch = encoder.tokenizer(SENTENCES, padding=True, return_tensors="pt")
    lengths = batch.attention_mask.sum(dim=1)
    assert len(set(lengths.tolist())) == len(SENTENCES)  # padding in every row but one
    expected = encoder.sentence_embedding(batch.input_ids, batch.attention_mask)
    assert expected.shape == (len(SENTENCES), encoder.manifest["model_config"]["d_model"])
    # the mask matters: without it the padded rows' embeddings change
    unmasked = encoder.sentence_embedding(batch.input_ids)
    assert not torch.equal(unmasked, expected)

    r = query("--miner", encoder_miner.address, "--embed", *SENTENCES,
              "--cache", str(tmp_path / "c"), "--key-seed", "5")
    assert r.returncode == 0, r.stderr
    got = torch.tensor(json.loads(r.stdout))
    assert got.dtype == expected.dtype and torch.equal(got, expected)
    assert f"{len(SENTENCES)} sentence(s), {expected.shape[1]} dims" in r.stderr
    assert "all encrypted" in r.stderr

    # --json FILE: the same numbers in a file, nothing but its name on stdout
    out = tmp_path / "sub" / "emb.json"
    r = query("--miner", encoder_miner.address, "--embed", *SENTENCES[:2],
              "--cache", str(tmp_path / "c"), "--key-seed", "5", "--json", str(out))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"embeddings: {out}"
    assert torch.equal(torch.tensor(json.loads(out.read_text())),
                       encoder.sentence_embedding(*_batch(encoder, SENTENCES[:2])))


def _batch(art: Artefact, sentences: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    b = art.tokenizer(sentences, padding=True, return_tensors="pt")
    return b.input_ids, b.attention_mask


def one_line_error(r: subprocess.CompletedProcess[str], *words: str) -> None:
    """Exit 1, nothing on stdout, and the error is one line (after any progress logs)."""
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and r.stdout == "", (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    errors = [line for line in lines if line.startswith("cerberus:")]
    assert errors == lines[-1:], r.stderr
    for w in words:
        assert w in errors[0], errors[0]


def test_embed_errors_are_one_line(encoder_miner: Miner, miner: Miner,
                                   tmp_path: Path) -> None:
    cache = str(tmp_path / "c")
    # a causal LM (tiny-gpt) has no sentence embedding
    one_line_error(query("--miner", miner.address, "--embed", "hello", "--cache", cache),
                   "causal-lm", "--embed needs an encoder")
    # an encoder does not generate
    one_line_error(query("--miner", encoder_miner.address, "hello", "--cache", cache),
                   "encoder", "use --embed")
    one_line_error(query("--miner", encoder_miner.address, "--embed", "a", " ", "--cache",
                         cache), "empty")
    one_line_error(query("--miner", encoder_miner.address, "--embed",
                         " ".join(["hello"] * 40), "--cache", cache), "context is 32")
    one_line_error(query("--miner", encoder_miner.address, "a", "b", "--cache", cache),
                   "one prompt")
    one_line_error(query("--miner", encoder_miner.address, "a", "--json", "x.json",
                         "--cache", cache), "--json", "--embed")
