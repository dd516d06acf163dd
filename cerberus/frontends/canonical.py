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

    def __post_init__(self) -> None:
        if self.kind not in ("causal-lm", "encoder"):
            raise ValueError(f"unknown model kind {self.kind!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unsupported activation {self.activation!r}")
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

    def attention(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        hd = self.cfg.head_dim
        q = self.q(x).view(b, t, self.n_kept, hd).transpose(1, 2)
        k = self.k(x).view(b, t, self.n_kept, hd).transpose(1, 2)
        v = self.v(x).view(b, t, self.n_kept, hd).transpose(1, 2)
        scores = q @ k.transpose(-1, -2)
        if not self.cfg.attn_scale_folded:
            scores = scores / math.sqrt(hd)
        scores = scores + mask
        ctx = torch.softmax(scores, dim=-1) @ v
        ctx = ctx * self.gates.view(1, -1, 1, 1)
        return self.o(ctx.transpose(1, 2).reshape(b, t, self.n_kept * hd))

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(activation(self.fc1(x), self.cfg.activation))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.cfg.pre_ln:
            x = x + self.attention(self.ln1(x), mask)
            return x + self.mlp(self.ln2(x))
        x = self.ln1(x + self.attention(x, mask))
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
        """Additive mask: causal for LMs, all-visible for encoders."""
        if self.cfg.kind == "causal-lm":
            return torch.triu(torch.full((t, t), -1e4, device=device), diagonal=1)
        return torch.zeros(t, t, device=device)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        t = input_ids.shape[1]
        pos = torch.arange(t, device=input_ids.device)
        x = self.tok_emb(input_ids) + self.pos_emb(pos)
        if self.type_emb is not None:
            x = x + self.type_emb(torch.zeros_like(input_ids))
        if self.emb_ln is not None:
            x = self.emb_ln(x)
        return x

    def run_blocks(self, x: torch.Tensor) -> torch.Tensor:
        mask = self.attention_mask(x.shape[1], x.device)
        for block in self.blocks:
            x = block(x, mask)
        return x

    def head(self, h: torch.Tensor) -> torch.Tensor:
        if self.ln_f is not None:
            h = self.ln_f(h)
        return self.lm_head(h) if self.lm_head is not None else h

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits (causal LM) or final hidden states (encoder)."""
        return self.head(self.run_blocks(self.embed(input_ids)))
