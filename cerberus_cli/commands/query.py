"""``cerberus query --miner HOST:PORT "prompt"``: private generation through a miner.

``cerberus query --miner HOST:PORT --embed "one sentence" "another"``: an encoder's
sentence embeddings (pooled over the real tokens, as sentence-transformers computes
them), computed through the miner under encryption, printed as a JSON list (or written
with ``--json FILE``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from cerberus.errors import CLIError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", nargs="+",
                   help="text to continue (one argument; quote it), or with --embed the "
                        "sentences to embed (one argument each)")
    p.add_argument("--miner", required=True, metavar="HOST:PORT", help="miner address")
    p.add_argument("--embed", action="store_true",
                   help="encoders: print the sentence embedding of each argument (a JSON list "
                        "of lists), computed through the miner")
    p.add_argument("--json", type=Path, metavar="FILE",
                   help="with --embed: write the embeddings to FILE instead of stdout")
    p.add_argument("-n", "--max-tokens", type=int, default=8, help="tokens to generate (8)")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="sampling temperature; 0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k best (0 = all)")
    p.add_argument("--sample-seed", type=int, help="seed of the sampler (reproducible runs)")
    p.add_argument("--artefact", type=Path,
                   help="local artefact folder (default: fetch the client half from the miner)")
    p.add_argument("--expect-sha256", help="refuse a miner serving any other artefact")
    p.add_argument("--key-seed", type=int,
                   help="secret-key seed (tests only; default: a random seed kept in the cache)")
    p.add_argument("--cache", type=Path, help="cache folder (default ~/.cache/cerberus)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per call (600)")


def run(args: argparse.Namespace) -> int:
    from runtime.client import DEFAULT_CACHE, MinerClient

    if args.json is not None and not args.embed:
        raise CLIError("--json writes embeddings: use it with --embed")
    if not args.embed and len(args.prompt) != 1:
        raise CLIError(f"give one prompt (quote it), not {len(args.prompt)} arguments; "
                       "several sentences are for --embed")
    if args.max_tokens < 1:
        raise CLIError("--max-tokens must be at least 1")
    with MinerClient(args.miner, artefact=args.artefact, expected_sha256=args.expect_sha256,
                     cache_dir=args.cache or DEFAULT_CACHE, seed=args.key_seed,
                     timeout=args.timeout) as client:
        tok = client.tokenizer
        if tok is None:
            raise CLIError("the served artefact has no tokenizer; use the SDK with token ids")
        kind = client.artefact.cfg.kind
        if args.embed:
            if kind != "encoder":
                raise CLIError(f"the served artefact is a {kind} model: --embed needs an "
                               "encoder (query a causal LM with a prompt, without --embed)")
            return _embed(client, tok, args)
        if kind == "encoder":
            raise CLIError("the served artefact is an encoder: it embeds, it does not "
                           "generate; use --embed")
        return _generate(client, tok, args)


def _embed(client, tok, args: argparse.Namespace) -> int:
    sentences = list(args.prompt)
    if not all(s.strip() for s in sentences):
        raise CLIError("a sentence to embed is empty")
    batch = tok(sentences, padding=True, return_tensors="pt")
    context = client.artefact.cfg.n_positions
    if batch.input_ids.shape[1] > context:
        raise CLIError(f"a sentence has {batch.input_ids.shape[1]} tokens; the model's "
                       f"context is {context}")
    client.keygen()
    client.upload_keys()
    t0 = time.perf_counter()
    emb, step = client.sentence_embedding(batch.input_ids, batch.attention_mask)
    seconds = time.perf_counter() - t0
    text = json.dumps(emb.tolist())
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n", encoding="utf-8")
        print(f"embeddings: {args.json}")
    else:
        print(text)
    print(f"[{len(sentences)} sentence(s), {emb.shape[1]} dims in {seconds:.1f} s; miner "
          f"{step.server_ms / 1000:.2f} s; {step.bytes_sent / 1e6:.1f} MB sent, "
          f"{step.bytes_received / 1e6:.1f} MB received in {step.round_trips} round trips, "
          "all encrypted]", file=sys.stderr)
    return 0


def _generate(client, tok, args: argparse.Namespace) -> int:
    prompt = args.prompt[0]
    ids = tok(prompt).input_ids
    if not ids:
        raise CLIError("the prompt is empty")
    client.keygen()
    client.upload_keys()
    err = sys.stderr
    print(prompt, end="", flush=True)
    done: list[int] = []

    def on_token(token: int, seconds: float) -> None:
        text_before = tok.decode(done)
        done.append(token)
        print(tok.decode(done)[len(text_before):], end="", flush=True)
        if err.isatty() and not sys.stdout.isatty():  # text piped away: show progress
            print(f"\r[{len(done)}/{args.max_tokens} tokens, {seconds:.1f} s/token]",
                  end="", file=err, flush=True)

    out = client.generate(ids, args.max_tokens, temperature=args.temperature,
                          top_k=args.top_k, seed=args.sample_seed, on_token=on_token)
    print()
    total = sum(out.token_seconds)
    print(f"[{len(out.ids)} tokens in {total:.1f} s, {total / len(out.ids):.2f} s/token; "
          f"miner {out.server_ms / 1000:.2f} s; {out.bytes_sent / 1e6:.1f} MB sent, "
          f"{out.bytes_received / 1e6:.1f} MB received in {out.round_trips} round trips, "
          "all encrypted]", file=err)
    return 0
