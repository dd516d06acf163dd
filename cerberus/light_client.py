"""The client's side of the split, in one place (SPEC C6, C8, R2).

A light client holds only what it runs — tokenizer, embeddings and positions, norms, the
LM head, quantization scales, per-linear rescales and biases — and asks a *miner* for
everything that needs the model's weight matrices. The same class serves every caller, so
they cannot drift apart:

* the compiler's fidelity check and the artefact's simulator (miner = the integer graphs
  evaluated in the clear, ``simulated_miner``);
* the runtime SDK (miner = encrypt, one gRPC round trip, decrypt);
* validators, who re-run the simulator and compare bit for bit;
* the benchmarks.

Hybrid partition: every block linear is an ``EncryptedLinear`` (q, k and v as one), the
client computes norms, attention, softmax and GELU in the clear and keeps the K/V cache of
the positions it has decoded (its own data, in the clear): a prefill sends the prompt's
rows once, each new token one row per program. Full partition: the miner runs the blocks
whole on a fixed window; the client embeds and decodes, and sends padding as a key-mask
column of its one encrypted input (``encode_input``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from cerberus.errors import CerberusError
from cerberus.frontends.canonical import CanonicalTransformer, KVCache, TransformerConfig
from cerberus.hybrid import EncryptedLinear, LinearSpec, Miner, program_groups
from cerberus.ir import IntGraph, evaluate
from cerberus.passes.quantize import qmax


class ContextOverflow(CerberusError):
    """More positions than the model has (its context)."""


def simulated_miner(graphs: Mapping[str, IntGraph]) -> Miner:
    """The miner's half evaluated in the clear: bit-exact with the FHE circuits."""

    def run(program: str, xs: np.ndarray) -> np.ndarray:
        if program not in graphs:
            raise CerberusError(f"no miner program {program!r}")
        return evaluate(graphs[program], xs)["output"]

    return run


def client_state(model: CanonicalTransformer, partition: str) -> dict[str, torch.Tensor]:
    """The tensors a client of ``model`` holds: all but the miner's linears (hybrid) or
    all but the blocks (full). This is what the client half of an artefact stores."""
    skip = _miner_prefixes(model, partition)
    return {k: v.detach().contiguous() for k, v in model.state_dict().items()
            if not k.startswith(skip)}


def _miner_prefixes(model: CanonicalTransformer, partition: str) -> tuple[str, ...]:
    if partition == "full":
        return ("blocks.",)
    return tuple(f"blocks.{i}.{m}." for i, block in enumerate(model.blocks)
                 for _, members in program_groups(block) for m in members)


class LightClient:
    """The client half of a model at run time, with ``miner`` computing the rest.

    ``io`` carries the full partition's input/output scales (``input_scale``,
    ``input_bits``, ``output_scale``); ``preprocess`` the paper-§5 adaptive quantization of
    the embeddings, when the artefact was compiled with it.
    """

    def __init__(self, cfg: TransformerConfig, state: Mapping[str, torch.Tensor], *,
                 partition: str, miner: Miner, linears: Mapping[str, LinearSpec] | None = None,
                 io: Mapping[str, Any] | None = None,
                 preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 seq_len: int | None = None) -> None:
        if partition not in ("hybrid", "full"):
            raise CerberusError(f"unknown partition {partition!r}")
        self.cfg = cfg
        self.partition = partition
        self.miner = miner
        self.io = dict(io or {})
        self.seq_len = seq_len
        self.model = self._build(cfg, state, linears or {}, preprocess)

    def _build(self, cfg: TransformerConfig, state: Mapping[str, torch.Tensor],
               linears: Mapping[str, LinearSpec],
               preprocess: Callable[[torch.Tensor], torch.Tensor] | None
               ) -> CanonicalTransformer:
        model = CanonicalTransformer(cfg)
        if self.partition == "full":
            model.blocks = nn.ModuleList()  # the miner runs them whole
        else:
            for i, block in enumerate(model.blocks):
                def spec(prog: str, i: int = i) -> LinearSpec:
                    name = f"blocks.{i}.{prog}"
                    if name not in linears:
                        raise CerberusError(f"the client half has no scales for {name}")
                    return linears[name]
                for prog, members in program_groups(block):
                    if prog != "qkv":
                        setattr(block, members[0], EncryptedLinear(spec(prog), self.miner))
                        continue
                    for sub in members:
                        delattr(block, sub)
                    # Block.qkv is a method: the instance's own attribute must shadow it (a
                    # registered submodule would not), and it has no tensors to register
                    inner = block.n_kept * cfg.head_dim
                    block.__dict__["qkv"] = EncryptedLinear(spec("qkv"), self.miner,
                                                            [inner] * 3)
        missing, unexpected = model.load_state_dict(dict(state), strict=False)
        if missing or unexpected:
            raise CerberusError(f"the client half does not fit the model: missing {missing}, "
                                f"unexpected {unexpected}")
        if preprocess is not None:
            embed = model.embed
            model.embed = lambda ids, start=0: preprocess(embed(ids, start))  # type: ignore
        return model.eval()

    # -- whole sequences ---------------------------------------------------------------
    def logits(self, input_ids: torch.Tensor,
               attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (causal LM) or final hidden states (encoder) of ``[B, T]`` tokens;
        ``attention_mask`` ``[B, T]``: 1 for real tokens, 0 for padding."""
        with torch.no_grad():
            if self.partition == "hybrid":
                return self.model(input_ids, attention_mask=attention_mask)
            return self._full(input_ids, attention_mask)

    def _full(self, input_ids: torch.Tensor,
              attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.decode_output(self.miner("blocks",
                                             self.encode_input(input_ids, attention_mask)))

    def encode_input(self, input_ids: torch.Tensor,
                     attention_mask: torch.Tensor | None = None) -> np.ndarray:
        """Full partition: tokens → embeddings → the integers the miner receives
        (encrypted), one ``[T, d]`` program input per sequence.

        A program lowered with a key mask (``io["key_mask"]``, ``LoweringOptions.key_mask``)
        takes ``[T, d + 1]``: the last column is the mask, 1 for a real token and 0 for
        padding (all 1 without ``attention_mask``), encrypted with the rest, so the miner
        never sees which positions are padding.
        """
        with torch.no_grad():
            x = self.model.embed(input_ids).double().numpy()
        top = qmax(int(self.io["input_bits"]))
        ints = np.clip(np.floor(x / self.io["input_scale"] + 0.5), -top, top).astype(np.int64)
        keep = np.ones(ints.shape[:-1], dtype=np.int64)
        if attention_mask is not None:
            keep = attention_mask.detach().cpu().numpy()
            if keep.shape != ints.shape[:-1] or not np.isin(keep, (0, 1)).all():
                raise CerberusError(f"attention_mask must be 0/1 of shape "
                                    f"{list(ints.shape[:-1])} (batch, positions), got "
                                    f"{list(keep.shape)}")
        if not self.io.get("key_mask"):
            if not keep.all():
                raise CerberusError("this artefact's miner program takes no attention mask "
                                    "(compiled without one): recompile it with the key "
                                    "mask, or with --partition hybrid, for padded inputs")
            return ints
        return np.concatenate([ints, keep.astype(np.int64)[..., None]], axis=-1)

    def decode_output(self, y: np.ndarray) -> torch.Tensor:
        """Full partition: the integers back from the miner → final norm and LM head."""
        h = torch.tensor(y * self.io["output_scale"], dtype=torch.float32)
        with torch.no_grad():
            return self.model.head(h)

    def sentence_embedding(self, input_ids: torch.Tensor,
                           attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, d]`` pooled over the real tokens, as sentence-transformers computes it."""
        if self.cfg.kind != "encoder":
            raise CerberusError("sentence embeddings are for encoders")
        h = self.logits(input_ids, attention_mask)
        with torch.no_grad():
            return self.model.pool(h, attention_mask)

    # -- generation ----------------------------------------------------------------------
    def generate(self, prompt_ids: list[int], max_new_tokens: int,
                 pick: Callable[[torch.Tensor], int] | None = None,
                 on_token: Callable[[int], None] | None = None) -> list[int]:
        """Tokens after ``prompt_ids``; greedy unless ``pick(logits) -> id`` says otherwise.

        Hybrid: a KV-cached session (prefill once, then one row per program per token).
        Full: the last ``seq_len`` tokens, right-padded, recomputed per token.
        """
        if not prompt_ids:
            raise CerberusError("the prompt is empty")
        if max_new_tokens < 1:
            raise CerberusError("max_new_tokens must be at least 1")
        pick = pick or (lambda logits: int(logits.argmax()))
        out: list[int] = []
        if self.partition == "hybrid":
            session = Session(self)
            logits = session.feed(prompt_ids, reserve=max_new_tokens - 1)
            for step in range(max_new_tokens):
                out.append(pick(logits))
                if on_token is not None:
                    on_token(out[-1])
                if step + 1 < max_new_tokens:
                    logits = session.feed(out[-1:])
            return out
        ids = list(prompt_ids)
        for _ in range(max_new_tokens):
            window, pos = self.window(ids)
            out.append(pick(self.logits(window)[0, pos]))
            ids.append(out[-1])
            if on_token is not None:
                on_token(out[-1])
        return out

    def window(self, ids: list[int]) -> tuple[torch.Tensor, int]:
        """Full partition: the circuit's fixed-length input, the last ``seq_len`` tokens
        right-padded with token 0 (causal attention: padding after the last token cannot
        change its logits), and the position whose logits predict the next token."""
        t = int(self.seq_len or self.cfg.n_positions)
        ids = ids[-t:]
        return torch.tensor([ids + [0] * (t - len(ids))]), len(ids) - 1


class Session:
    """One KV-cached decoding session (hybrid partition): the client's cache, in the clear."""

    def __init__(self, client: LightClient) -> None:
        if client.partition != "hybrid" or client.cfg.kind != "causal-lm":
            raise CerberusError("KV-cached decoding needs a causal LM in the hybrid partition")
        self.client = client
        self.cache = KVCache()

    def check(self, new: int, reserve: int = 0) -> None:
        """Refuse, before any work, ``new`` positions plus ``reserve`` more still to come
        (the tokens yet to generate) that would not fit the model's context."""
        n = self.client.cfg.n_positions
        if self.cache.length + new + reserve > n:
            raise ContextOverflow(
                f"{self.cache.length + new + reserve} positions requested "
                f"({new} new, {self.cache.length} cached, {reserve} still to generate) "
                f"exceed the model's context of {n}")

    def feed(self, ids: list[int], reserve: int = 0) -> torch.Tensor:
        """Append ``ids`` (the prompt, then one token at a time); the logits after the last.
        A request that cannot finish (``check``) is refused before the miner is asked."""
        self.check(len(ids), reserve)
        with torch.no_grad():
            logits = self.client.model(torch.tensor([ids]), cache=self.cache)
        return logits[0, -1]
