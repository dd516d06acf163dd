"""The canonical transformer every frontend converts to.

Why one canonical form: Hugging Face GPT-2, BERT, ONNX files and user modules all spell
the same maths differently (Conv1D vs Linear, fused QKV, post- vs pre-LayerNorm). The
compiler's passes need one structure with explicit heads: per-head gates ξ (for the
significance scores of Michel et al. 2019), per-layer lists of kept heads (squeezing), and
a forward pass that ``torch.fx.symbolic_trace`` can capture without data-dependent control
flow. The split into ``embed`` (client), ``blocks`` (miner, under FHE) and ``head``
(client) is the partition of SPEC C6.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = ("gelu_new", "gelu", "relu")
# How ``sentence_embedding`` pools the final hidden states over the real tokens. ``none``:
# the source model declares no pooling (sentence-transformers' default, the mean, is used).
POOLINGS = ("none", "mean", "cls")
# Additive score of a hidden key (future position or padding). exp(−1e4) underflows to exactly
# 0 in float32 and float64, so masked keys get weight 0 exactly as with Hugging Face's
# ``finfo(dtype).min`` while the score range stays below ~9,000; unlike finfo.min it can be
# added twice (causal and padding) and cast to any float dtype without becoming −inf, so a
# row with every key hidden (a left-padding query) still has a finite softmax.
MASKED = -1e4


@dataclass
class TransformerConfig:
    """Shape of a canonical transformer. ``kind`` is ``causal-lm`` or ``encoder``."""

    kind: str
    vocab_size: int
    n_positions: int
    d_model: int
    n_layer: int
    n_head: int
    d_ff: int
    activation: str = "gelu_new"
    ln_eps: float = 1e-5
    pre_ln: bool = True
    type_vocab_size: int = 0
    # Set by the fusion pass once 1/sqrt(head_dim) is folded into the query projection.
    attn_scale_folded: bool = False
    # Set when the final LayerNorm's β is folded into the LM head (which then has a bias).
    lm_head_bias: bool = False
    heads_kept: list[list[int]] = field(default_factory=list)
    # Sentence embeddings (sentence-transformers' ``1_Pooling`` and ``Normalize`` modules),
    # recorded by the frontend; defaults keep artefacts saved before these fields loadable.
    pooling: str = "none"
    normalize: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ("causal-lm", "encoder"):
            raise ValueError(f"unknown model kind {self.kind!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unsupported activation {self.activation!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"unsupported pooling {self.pooling!r}")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_head {self.n_head}")
        if not self.heads_kept:
            self.heads_kept = [list(range(self.n_head)) for _ in range(self.n_layer)]

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    def to_dict(self) -> dict:
        return asdict(self)


def activation(x: torch.Tensor, name: str) -> torch.Tensor:
    """The model's MLP non-linearity (GPT-2 uses the tanh GELU, BERT the erf GELU)."""
    if name == "gelu_new":
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    if name == "gelu":
        return F.gelu(x)
    return F.relu(x)


def _traced_as_none(x: object, name: str) -> bool:
    """Whether ``x`` is an optional argument left at its default ``None``.

    ``torch.fx.symbolic_trace`` turns every parameter of ``forward`` into a placeholder,
    defaults included; the compiler's passes trace the plain full-sequence forward. So a
    placeholder whose default is ``None`` counts as ``None`` — specialised as
    ``concrete_args={name: None}`` would, with a check in the graph that it stays ``None``.
    """
    if isinstance(x, torch.fx.Proxy) and x.node.op == "placeholder" and x.node.args == (None,):
        x.tracer.create_proxy("call_function", _require_none, (x, name), {})
        return True
    return x is None


def _require_none(x: object, name: str) -> None:
    if x is not None:
        raise ValueError(f"this traced graph specialised {name} to None; trace with "
                         f"concrete_args to capture a forward that takes it")


class KVCache:
    """Keys and values of the positions already decoded, for incremental decoding (SPEC R2).

    ``layers[i]`` holds block ``i``'s ``(K, V)``, each ``[B, heads_kept, length, head_dim]``;
    ``length`` is the number of past positions. An empty ``KVCache()`` is filled by the
    prefill call and extended in place by every later call, so each new token costs one row
    of every projection instead of the whole prefix again.
    """

    def __init__(self) -> None:
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.length = 0

    def extend(self, layer: int, k: torch.Tensor, v: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the new positions' ``k``, ``v`` of ``layer``; return past + new."""
        if layer < len(self.layers):
            k = torch.cat([self.layers[layer][0], k], dim=2)
            v = torch.cat([self.layers[layer][1], v], dim=2)
            self.layers[layer] = (k, v)
        elif layer == len(self.layers) and self.length == 0:
            self.layers.append((k, v))
        else:
            raise ValueError(f"KV cache holds {len(self.layers)} layers at length "
                             f"{self.length}; layer {layer} cannot be extended")
        return k, v


class Block(nn.Module):
    """One transformer block with explicit per-head projections of the kept heads.

    ``q``, ``k``, ``v`` map d_model → (kept heads × head_dim) and ``o`` maps back, so
    removing a head is slicing weights, and a pruned block costs less in FHE.
    """

    def __init__(self, cfg: TransformerConfig, layer: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.layer = layer
        n_kept = len(cfg.heads_kept[layer])
        inner = n_kept * cfg.head_dim
        self.ln1 = nn.LayerNorm(cfg.d_model, eps=cfg.ln_eps)
        self.q = nn.Linear(cfg.d_model, inner)
        self.k = nn.Linear(cfg.d_model, inner)
        self.v = nn.Linear(cfg.d_model, inner)
        self.o = nn.Linear(inner, cfg.d_model)
        self.ln2 = nn.LayerNorm(cfg.d_model, eps=cfg.ln_eps)
        self.fc1 = nn.Linear(cfg.d_model, cfg.d_ff)
        self.fc2 = nn.Linear(cfg.d_ff, cfg.d_model)
        # ξ: one gate per kept head. Fixed at 1 for inference; significance takes dL/dξ.
        self.gates = nn.Parameter(torch.ones(n_kept), requires_grad=False)

    @property
    def n_kept(self) -> int:
        return self.gates.shape[0]

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The query, key and value projections of ``x``, each ``[B, T, kept × head_dim]``.

        The only place attention computes them: the three share their input, so the hybrid
        client can replace this method with one encrypted call (one round trip, not three).
        """
        return self.q(x), self.k(x), self.v(x)

    def attention(self, x: torch.Tensor, mask: torch.Tensor,
                  cache: KVCache | None = None) -> torch.Tensor:
        """Multi-head attention of the kept heads; ``mask`` is additive, broadcast to
        ``[B, heads, T_new, T_past + T_new]``. With ``cache`` the keys and values of the
        past positions are prepended and this call's are appended to it."""
        b, t, _ = x.shape
        hd = self.cfg.head_dim
        q, k, v = (p.view(b, t, self.n_kept, hd).transpose(1, 2) for p in self.qkv(x))
        if cache is not None:
            k, v = cache.extend(self.layer, k, v)
        scores = q @ k.transpose(-1, -2)
        if not self.cfg.attn_scale_folded:
            scores = scores / math.sqrt(hd)
        scores = scores + mask
        ctx = torch.softmax(scores, dim=-1) @ v
        ctx = ctx * self.gates.view(1, -1, 1, 1)
        return self.o(ctx.transpose(1, 2).reshape(b, t, self.n_kept * hd))

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(activation(self.fc1(x), self.cfg.activation))

    def forward(self, x: torch.Tensor, mask: torch.Tensor,
                cache: KVCache | None = None) -> torch.Tensor:
        if self.cfg.pre_ln:
            x = x + self.attention(self.ln1(x), mask, cache)
            return x + self.mlp(self.ln2(x))
        x = self.ln1(x + self.attention(x, mask, cache))
        return self.ln2(x + self.mlp(x))


class CanonicalTransformer(nn.Module):
    """Embeddings (client) → blocks (miner, FHE) → final norm and LM head (client)."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.n_positions, cfg.d_model)
        self.type_emb = (
            nn.Embedding(cfg.type_vocab_size, cfg.d_model) if cfg.type_vocab_size else None
        )
        # Post-LN encoders (BERT) normalise the embeddings; pre-LN LMs (GPT-2) the output.
        self.emb_ln = None if cfg.pre_ln else nn.LayerNorm(cfg.d_model, eps=cfg.ln_eps)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model, eps=cfg.ln_eps) if cfg.pre_ln else None
        self.lm_head = (
            nn.Linear(cfg.d_model, cfg.vocab_size, bias=cfg.lm_head_bias)
            if cfg.kind == "causal-lm"
            else None
        )

    def attention_mask(self, t: int, device: torch.device | None = None) -> torch.Tensor:
        """Additive ``[T, T]`` mask: causal for LMs, all-visible for encoders."""
        if self.cfg.kind == "causal-lm":
            return torch.triu(torch.full((t, t), MASKED, device=device), diagonal=1)
        return torch.zeros(t, t, device=device)

    def scores_mask(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    past: int = 0) -> torch.Tensor:
        """The additive mask of ``x``'s rows (new positions ``past … past+T−1``) against
        keys ``0 … past+T−1``: causal for LMs (each new row sees every past key and the new
        ones up to itself), plus ``MASKED`` at the keys where ``attention_mask`` (``[B,
        past+T]``, 1 real / 0 padding, as in transformers) is 0. The client builds it from
        its own token ids; the miner never sees it.
        """
        t = x.shape[1]
        if past == 0:
            mask = self.attention_mask(t, x.device)  # the traced path (fx, ONNX) is unchanged
        elif self.cfg.kind == "causal-lm":
            mask = torch.triu(torch.full((t, past + t), MASKED, device=x.device),
                              diagonal=past + 1)
        else:
            mask = torch.zeros(t, past + t, device=x.device)
        if attention_mask is None:
            return mask
        if attention_mask.dim() != 2 or attention_mask.shape[0] != x.shape[0] \
                or attention_mask.shape[1] != past + t:
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}, expected "
                f"[{x.shape[0]}, {past + t}] (batch, past + new positions)")
        pad = (1.0 - attention_mask.to(mask.dtype)) * MASKED  # [B, past+T]
        return mask + pad[:, None, None, :]

    def embed(self, input_ids: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Token + position (+ type) embeddings; positions ``start … start+T−1``."""
        t = input_ids.shape[1]
        pos = torch.arange(t, device=input_ids.device)
        if start:  # a Python int: the traced graph of a full forward stays as it was
            pos = pos + start
        x = self.tok_emb(input_ids) + self.pos_emb(pos)
        if self.type_emb is not None:
            x = x + self.type_emb(torch.zeros_like(input_ids))
        if self.emb_ln is not None:
            x = self.emb_ln(x)
        return x

    def run_blocks(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None,
                   cache: KVCache | None = None) -> torch.Tensor:
        """The blocks (the miner's part). With ``cache``, ``x`` holds only the new
        positions; the cache's ``length`` advances by them once every block has run."""
        if cache is None:
            mask = self.scores_mask(x, attention_mask)
            for block in self.blocks:
                x = block(x, mask)
            return x
        self._check_cache(cache, x.shape[1])
        mask = self.scores_mask(x, attention_mask, cache.length)
        for block in self.blocks:
            x = block(x, mask, cache)
        cache.length += x.shape[1]
        return x

    def _check_cache(self, cache: KVCache, t: int) -> None:
        if self.cfg.kind != "causal-lm":
            raise ValueError("a KV cache is for causal LMs: an encoder's every position "
                             "attends to later ones, so past keys change with new tokens")
        if cache.length + t > self.cfg.n_positions:
            raise ValueError(
                f"context overflow: {cache.length} cached + {t} new positions exceed the "
                f"model's {self.cfg.n_positions} positions")

    def head(self, h: torch.Tensor) -> torch.Tensor:
        if self.ln_f is not None:
            h = self.ln_f(h)
        return self.lm_head(h) if self.lm_head is not None else h

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                cache: KVCache | None = None) -> torch.Tensor:
        """Logits (causal LM) or final hidden states (encoder) of ``input_ids``.

        ``attention_mask`` ``[B, T]`` (``[B, past + T]`` with a cache): 1 for real tokens, 0
        for padding. With ``cache``, ``input_ids`` are only the new tokens: positions
        continue from ``cache.length`` and the cache is extended in place (prefill = a call
        with the prompt and an empty ``KVCache()``, then one call per new token).
        """
        if _traced_as_none(attention_mask, "attention_mask"):
            attention_mask = None
        if _traced_as_none(cache, "cache"):  # subclasses' embed(ids) (fake quantization) work
            return self.head(self.run_blocks(self.embed(input_ids), attention_mask))
        self._check_cache(cache, input_ids.shape[1])
        x = self.embed(input_ids, start=cache.length)
        return self.head(self.run_blocks(x, attention_mask, cache))

    def pool(self, h: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Sentence embeddings ``[B, d]`` of final hidden states ``h`` ``[B, T, d]``, as
        sentence-transformers computes them: the mean over real tokens (or the first token
        for ``cls`` pooling), L2-normalised when the source model ends in ``Normalize``."""
        if self.cfg.pooling == "cls":
            out = h[:, 0]
        else:
            if attention_mask is None:
                attention_mask = torch.ones(h.shape[:2], device=h.device)
            m = attention_mask.to(h.dtype).unsqueeze(-1)
            out = (h * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
        return F.normalize(out, p=2, dim=1) if self.cfg.normalize else out

    def sentence_embedding(self, input_ids: torch.Tensor,
                           attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled final hidden states ``[B, d]`` (``pool``); padding neither attends nor
        is averaged. For an LM the hidden states are taken after the final norm, before
        the LM head."""
        h = self.run_blocks(self.embed(input_ids), attention_mask)
        return self.pool(h if self.ln_f is None else self.ln_f(h), attention_mask)
