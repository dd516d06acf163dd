"""Hugging Face frontend: GPT-2-style causal LMs and BERT-style encoders → canonical form.

It loads local folders; ``compile.load_source`` first turns a Hub id into one
(``frontends.hub.resolve_model``: the cache, a download, or the cache only offline).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from cerberus.errors import CompileError
from cerberus.frontends.canonical import CanonicalTransformer, TransformerConfig


def _copy_linear(dst: nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    dst.weight.data.copy_(weight)
    if bias is not None:
        dst.bias.data.copy_(bias)
    else:
        dst.bias.data.zero_()


def _copy_ln(dst: nn.LayerNorm, src: nn.LayerNorm) -> None:
    dst.weight.data.copy_(src.weight.data)
    dst.bias.data.copy_(src.bias.data)


def from_gpt2(model: nn.Module) -> CanonicalTransformer:
    """Convert ``GPT2LMHeadModel`` or ``GPT2Model`` (Conv1D weights are stored transposed)."""
    c = model.config
    tr = model.transformer if hasattr(model, "transformer") else model
    act = c.activation_function if c.activation_function in ("gelu_new", "gelu", "relu") else None
    if act is None:
        raise CompileError(f"unsupported op: activation {c.activation_function!r} in GPT-2 MLP")
    cfg = TransformerConfig(
        kind="causal-lm" if hasattr(model, "lm_head") else "encoder",
        vocab_size=c.vocab_size, n_positions=c.n_positions, d_model=c.n_embd,
        n_layer=c.n_layer, n_head=c.n_head, d_ff=c.n_inner or 4 * c.n_embd,
        activation=act, ln_eps=c.layer_norm_epsilon, pre_ln=True,
    )
    if cfg.kind == "encoder":
        cfg.kind = "causal-lm"  # a bare GPT2Model is still causal; it just has no LM head
    out = CanonicalTransformer(cfg)
    if not hasattr(model, "lm_head"):
        out.lm_head = None
    d = c.n_embd
    with torch.no_grad():
        out.tok_emb.weight.copy_(tr.wte.weight)
        out.pos_emb.weight.copy_(tr.wpe.weight)
        for blk, src in zip(out.blocks, tr.h, strict=True):
            w, b = src.attn.c_attn.weight, src.attn.c_attn.bias  # [d, 3d], [3d]
            for i, lin in enumerate((blk.q, blk.k, blk.v)):
                _copy_linear(lin, w[:, i * d : (i + 1) * d].T, b[i * d : (i + 1) * d])
            _copy_linear(blk.o, src.attn.c_proj.weight.T, src.attn.c_proj.bias)
            _copy_linear(blk.fc1, src.mlp.c_fc.weight.T, src.mlp.c_fc.bias)
            _copy_linear(blk.fc2, src.mlp.c_proj.weight.T, src.mlp.c_proj.bias)
            _copy_ln(blk.ln1, src.ln_1)
            _copy_ln(blk.ln2, src.ln_2)
        _copy_ln(out.ln_f, tr.ln_f)
        if out.lm_head is not None:
            out.lm_head.weight.copy_(model.lm_head.weight)
    return out.eval()


def from_bert(model: nn.Module) -> CanonicalTransformer:
    """Convert ``BertModel`` (post-LN encoder, erf GELU); the pooler is not part of it."""
    c = model.config
    bert = model.bert if hasattr(model, "bert") else model
    act = {"gelu": "gelu", "relu": "relu", "gelu_new": "gelu_new"}.get(c.hidden_act)
    if act is None:
        raise CompileError(f"unsupported op: activation {c.hidden_act!r} in BERT intermediate")
    cfg = TransformerConfig(
        kind="encoder", vocab_size=c.vocab_size, n_positions=c.max_position_embeddings,
        d_model=c.hidden_size, n_layer=c.num_hidden_layers, n_head=c.num_attention_heads,
        d_ff=c.intermediate_size, activation=act, ln_eps=c.layer_norm_eps, pre_ln=False,
        type_vocab_size=c.type_vocab_size,
    )
    out = CanonicalTransformer(cfg)
    emb = bert.embeddings
    with torch.no_grad():
        out.tok_emb.weight.copy_(emb.word_embeddings.weight)
        out.pos_emb.weight.copy_(emb.position_embeddings.weight)
        out.type_emb.weight.copy_(emb.token_type_embeddings.weight)
        _copy_ln(out.emb_ln, emb.LayerNorm)
        for blk, src in zip(out.blocks, bert.encoder.layer, strict=True):
            att = src.attention
            _copy_linear(blk.q, att.self.query.weight, att.self.query.bias)
            _copy_linear(blk.k, att.self.key.weight, att.self.key.bias)
            _copy_linear(blk.v, att.self.value.weight, att.self.value.bias)
            _copy_linear(blk.o, att.output.dense.weight, att.output.dense.bias)
            _copy_ln(blk.ln1, att.output.LayerNorm)
            _copy_linear(blk.fc1, src.intermediate.dense.weight, src.intermediate.dense.bias)
            _copy_linear(blk.fc2, src.output.dense.weight, src.output.dense.bias)
            _copy_ln(blk.ln2, src.output.LayerNorm)
    return out.eval()


def sentence_pooling(folder: Path) -> tuple[str, bool]:
    """``(pooling, normalize)`` of a sentence-transformers folder (``modules.json`` lists a
    ``Pooling`` module with its config and, for normalised embeddings, a ``Normalize``
    module); ``("none", False)`` for a plain Hugging Face folder."""
    try:
        modules = json.loads((folder / "modules.json").read_text())
    except FileNotFoundError:
        return "none", False
    pooling, normalize = "none", False
    for mod in modules:
        kind = str(mod.get("type", "")).rsplit(".", 1)[-1]
        if kind == "Normalize":
            normalize = True
        elif kind == "Pooling":
            conf = json.loads((folder / mod["path"] / "config.json").read_text())
            modes = sorted(k for k, v in conf.items() if k.startswith("pooling_mode") and v)
            pooling = {("pooling_mode_mean_tokens",): "mean",
                       ("pooling_mode_cls_token",): "cls"}.get(tuple(modes), "")
            if not pooling:
                raise CompileError(f"{folder}: unsupported sentence-transformers pooling "
                                   f"{modes}; Cerberus pools by mean or CLS token")
    return pooling, normalize


def from_hf_module(model: nn.Module) -> CanonicalTransformer:
    """Dispatch on the Hugging Face architecture; anything else is a clear error.

    A model loaded from a sentence-transformers folder keeps its pooling and normalisation
    in the config (``sentence_embedding`` then computes what sentence-transformers does).
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    convert = {"gpt2": from_gpt2, "bert": from_bert}.get(model_type)
    if convert is not None:
        out = convert(model)
        name = getattr(model, "name_or_path", "")
        if name and Path(name).is_dir():
            out.cfg.pooling, out.cfg.normalize = sentence_pooling(Path(name))
        return out
    raise CompileError(
        f"unsupported architecture {model_type or type(model).__name__!r}: "
        "Cerberus compiles GPT-2-style causal LMs and BERT-style encoders"
    )


def load_pretrained(name_or_path: str):
    """Load model and tokenizer from a local model folder (a Hub id is resolved first)."""
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as e:
        raise CompileError(
            f"cannot load model {name_or_path!r}: not a Hugging Face model folder with a "
            "readable config.json"
        ) from e
    cls = (
        transformers.AutoModelForCausalLM
        if config.model_type == "gpt2"
        else transformers.AutoModel
    )
    model = cls.from_pretrained(name_or_path).eval()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError, TypeError):
        tokenizer = None
    return model, tokenizer
