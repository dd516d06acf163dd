"""Attention masks and pooling of the canonical transformer (issue #13; SPEC C1, C6).

Padding must neither be attended to nor averaged: the canonical model with
``attention_mask`` computes what transformers computes with the same mask. Tolerances
(tests/tolerance.py): the float64 runs of transformers and of the canonical model are each
within γ̃_N(λ, u64)·max|y64| of the exact result, so within twice that of each other; the
float32 canonical run within γ̃_N(λ, u32)·max|y64| of the float64 one.
"""

import copy
import json

import pytest
import torch
import transformers
from tolerance import U64, assert_within, gamma, network_atol, transformer_roundings

from cerberus.errors import CompileError
from cerberus.frontends.canonical import TransformerConfig
from cerberus.frontends.huggingface import from_hf_module, load_pretrained, sentence_pooling
from cerberus.paths import shipped_model


def _roundings(model, t: int, lm_head: bool) -> int:
    c = model.cfg
    return transformer_roundings(c.d_model, c.d_ff, c.n_layer, c.head_dim, t, lm_head=lm_head)


def _check_against_hf(canon, hf64, ids, mask, real, lm_head: bool) -> None:
    m64 = copy.deepcopy(canon).double()
    with torch.no_grad():
        out = hf64(input_ids=ids, attention_mask=mask)
        want = (out.logits if lm_head else out.last_hidden_state)[real]
        got64 = m64(ids, mask)[real]
        got32 = canon(ids, mask)[real]
        unmasked = m64(ids)[real]
    n = _roundings(canon, ids.shape[1], lm_head)
    assert_within(got64, want, 2 * network_atol(want, n, u=U64), "canonical vs transformers f64")
    atol = network_atol(want, n)
    assert_within(got32, want, atol, "canonical f32 vs transformers f64")
    # the mask matters here: without it the real positions move far outside the bound
    assert (unmasked - want).abs().max() > 10 * atol


def test_encoder_padding_matches_bert():
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=64,
                                  max_position_embeddings=32)
    torch.manual_seed(0)
    hf = transformers.BertModel(cfg, add_pooling_layer=False).eval()
    canon = from_hf_module(hf)
    ids = torch.randint(1, 100, (3, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, 7:] = 0  # right padding, as a tokenizer pads a batch
    mask[2, 3:] = 0
    _check_against_hf(canon, hf.double(), ids, mask, mask.bool(), lm_head=False)


def test_causal_left_padding_matches_gpt2(tiny_gpt):
    canon, _ = tiny_gpt
    hf, _ = load_pretrained(str(shipped_model("tiny-gpt")))
    ids = torch.randint(0, 512, (2, 14), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, 14, dtype=torch.long)
    mask[1, :6] = 0  # left padding: the real tokens would otherwise attend to it
    _check_against_hf(canon, hf.double(), ids, mask, mask.bool(), lm_head=True)


def test_fx_trace_specialises_the_optional_arguments_to_none(tiny_gpt):
    model, _ = tiny_gpt
    gm = torch.fx.symbolic_trace(model)
    ids = torch.randint(0, 512, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(gm(ids), model(ids))
        with pytest.raises(ValueError, match="specialised attention_mask to None"):
            gm(ids, torch.ones(2, 9))


def test_pool_averages_real_tokens_only(tiny_bert):
    model = copy.deepcopy(tiny_bert)
    h = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [1e3, -1e3]],
                      [[5.0, 6.0], [7.0, 8.0], [9.0, 10.0]]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    # small integers and halves: every sum and quotient below is exact
    assert torch.equal(model.pool(h, mask), torch.tensor([[2.0, 3.0], [7.0, 8.0]],
                                                         dtype=torch.float64))
    model.cfg.normalize = True
    e = model.pool(h, mask)
    # normalize: 2 squares, 1 add, a sqrt and a divide; the check's norm 4 more: γ_8
    assert_within(e.norm(dim=1), torch.ones(2), gamma(8, U64), "unit norm")
    model.cfg.pooling, model.cfg.normalize = "cls", False
    assert torch.equal(model.pool(h, mask), h[:, 0])


def test_config_pooling_fields_default_for_old_artefacts():
    old = {"kind": "encoder", "vocab_size": 10, "n_positions": 8, "d_model": 8,
           "n_layer": 1, "n_head": 2, "d_ff": 16}
    cfg = TransformerConfig(**old)
    assert (cfg.pooling, cfg.normalize) == ("none", False)
    with pytest.raises(ValueError, match="unsupported pooling"):
        TransformerConfig(**old, pooling="max")


def test_sentence_pooling_reads_sentence_transformers_files(tmp_path):
    assert sentence_pooling(tmp_path) == ("none", False)
    modules = [{"idx": 0, "name": "0", "path": "",
                "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling",
                "type": "sentence_transformers.models.Pooling"}]
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    (tmp_path / "1_Pooling").mkdir()
    conf = {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(conf))
    assert sentence_pooling(tmp_path) == ("cls", False)
    modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                    "type": "sentence_transformers.models.Normalize"})
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    assert sentence_pooling(tmp_path) == ("cls", True)
    conf = {"pooling_mode_max_tokens": True, "pooling_mode_mean_tokens": False}
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(conf))
    with pytest.raises(CompileError, match="unsupported sentence-transformers pooling"):
        sentence_pooling(tmp_path)
