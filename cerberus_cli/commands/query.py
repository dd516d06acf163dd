"""``cerberus query --miner HOST:PORT "prompt"``: private generation through a miner."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cerberus.errors import CLIError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", help="text to continue")
    p.add_argument("--miner", required=True, metavar="HOST:PORT", help="miner address")
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

    if args.max_tokens < 1:
        raise CLIError("--max-tokens must be at least 1")
    with MinerClient(args.miner, artefact=args.artefact, expected_sha256=args.expect_sha256,
                     cache_dir=args.cache or DEFAULT_CACHE, seed=args.key_seed,
                     timeout=args.timeout) as client:
        tok = client.tokenizer
        if tok is None:
            raise CLIError("the served artefact has no tokenizer; use the SDK with token ids")
        ids = tok(args.prompt).input_ids
        if not ids:
            raise CLIError("the prompt is empty")
        client.keygen()
        client.upload_keys()
        err = sys.stderr
        print(args.prompt, end="", flush=True)
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
              f"{out.bytes_received / 1e6:.1f} MB received, all encrypted]", file=err)
    return 0
