"""Train the tiny GPT-2 that Cerberus ships in ``models/tiny-gpt``.

Why this model: the compiler, the FHE backend and the network tests need a *real* causal LM
that learned something, small enough that one transformer block fits a TFHE circuit on a
2-core CPU. So: GPT-2 architecture (``GPT2LMHeadModel``), 2 layers, 4 heads, d_model 64,
a byte-level BPE tokenizer of 512 tokens, context 64.

Corpus: the English text of the Python documentation topics that ship with CPython
(``pydoc_data/topics.py``, the ``topics`` dict: language reference and library pages that
``help()`` prints). Licence: Python Software Foundation License (PSF-2.0), the same as the
interpreter. It is on every machine that has Python, so training needs no download.
The corpus is split by topic (sorted by name, every 5th topic held out for validation) so
validation text is unseen.

Run: ``.venv/bin/python models/train_tiny_gpt.py`` (about 2 minutes on 2 cores). It writes
the weights (safetensors), config, tokenizer and ``training.json`` (data hash, perplexities)
into ``models/tiny-gpt``. Deterministic given ``--seed`` on the same torch build.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import time
from pathlib import Path
from pydoc_data.topics import topics

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm import tqdm
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

log = logging.getLogger("train_tiny_gpt")
HERE = Path(__file__).resolve().parent
EOS = "<|endoftext|>"


def corpus_split() -> tuple[list[str], list[str]]:
    """Return (train, validation) documents: every 5th topic by name is held out."""
    names = sorted(topics)
    train = [topics[n] for i, n in enumerate(names) if i % 5 != 4]
    val = [topics[n] for i, n in enumerate(names) if i % 5 == 4]
    return train, val


def train_tokenizer(docs: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-2 style) so any text round-trips, with a small vocabulary."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=EOS, pad_token=EOS
    )


def encode(tokenizer: PreTrainedTokenizerFast, docs: list[str]) -> np.ndarray:
    """Concatenate documents, each followed by the end-of-text token."""
    ids: list[int] = []
    for d in docs:
        ids.extend(tokenizer(d)["input_ids"])
        ids.append(tokenizer.eos_token_id)
    return np.asarray(ids, dtype=np.int64)


def unigram_perplexity(train: np.ndarray, val: np.ndarray, vocab: int) -> float:
    """Perplexity of an add-one-smoothed unigram model: the baseline a real LM must beat."""
    counts = np.bincount(train, minlength=vocab).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(math.exp(-logp[val].mean()))


@torch.no_grad()
def model_perplexity(model: GPT2LMHeadModel, data: np.ndarray, ctx: int) -> float:
    """Token-level perplexity over non-overlapping windows of the held-out stream."""
    model.eval()
    n = (len(data) - 1) // ctx
    x = torch.from_numpy(data[: n * ctx + 1])
    nll, count = 0.0, 0
    for i in range(0, n, 64):
        rows = range(i, min(n, i + 64))
        inp = torch.stack([x[r * ctx : (r + 1) * ctx] for r in rows])
        tgt = torch.stack([x[r * ctx + 1 : (r + 1) * ctx + 1] for r in rows])
        logits = model(input_ids=inp).logits
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), reduction="sum"
        )
        nll += float(loss)
        count += tgt.numel()
    model.train()
    return math.exp(nll / count)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=HERE / "tiny-gpt")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--ctx", type=int, default=64)
    p.add_argument("--vocab", type=int, default=512)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    train_docs, val_docs = corpus_split()
    digest = hashlib.sha256("\x00".join(train_docs + val_docs).encode()).hexdigest()
    tokenizer = train_tokenizer(train_docs, args.vocab)
    train_ids, val_ids = encode(tokenizer, train_docs), encode(tokenizer, val_docs)
    log.info("corpus %s: %d train / %d val tokens", digest[:12], len(train_ids), len(val_ids))

    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=args.ctx, n_embd=64, n_layer=2, n_head=4,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )
    model = GPT2LMHeadModel(config)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps)
    data = torch.from_numpy(train_ids)
    t0 = time.time()
    for step in (bar := tqdm(range(args.steps), desc="training")):
        starts = rng.integers(0, len(train_ids) - args.ctx - 1, size=args.batch)
        x = torch.stack([data[s : s + args.ctx] for s in starts])
        y = torch.stack([data[s + 1 : s + args.ctx + 1] for s in starts])
        loss = torch.nn.functional.cross_entropy(
            model(input_ids=x).logits.reshape(-1, config.vocab_size), y.reshape(-1)
        )
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")

    ppl = model_perplexity(model, val_ids, args.ctx)
    uni = unigram_perplexity(train_ids, val_ids, config.vocab_size)
    log.info("validation perplexity %.2f (unigram baseline %.2f)", ppl, uni)
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    tokenizer.save_pretrained(args.out)
    report = {
        "corpus": "CPython pydoc_data/topics.py (PSF-2.0), every 5th topic held out",
        "corpus_sha256": digest,
        "train_tokens": int(len(train_ids)),
        "val_tokens": int(len(val_ids)),
        "params": sum(p.numel() for p in model.parameters()),
        "steps": args.steps, "batch": args.batch, "ctx": args.ctx, "lr": args.lr,
        "seed": args.seed,
        "val_perplexity": round(ppl, 3),
        "unigram_val_perplexity": round(uni, 3),
        "train_seconds": round(time.time() - t0, 1),
        "torch": torch.__version__,
    }
    (args.out / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
