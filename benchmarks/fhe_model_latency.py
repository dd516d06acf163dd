"""Encrypted latency of the shipped tiny GPT-2 under real TFHE, per layer and per token.

Run: ``.venv/bin/python benchmarks/fhe_model_latency.py [--bits 8 6 5 4] [--seq-len 16]``

For each width: ``cerberus compile --fhe`` (hybrid partition: every q/k/v/o/fc1/fc2 linear
is one concrete program), client keygen, then one forward pass of a ``seq-len`` window
with every linear encrypted on the client, run by the server half and decrypted — the
work of one generated token. Reports keygen time, evaluation-key and ciphertext bytes,
server time per layer and per token, end-to-end time per token (encryption and the
client's clear-text work included), and whether the encrypted logits equal the
simulator's bit for bit. Writes ``benchmarks/results/fhe_model_latency.json`` and its
section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.results import write_json, write_section
from cerberus.artefact import load_artefact
from cerberus.compile import CompileOptions, compile_model
from cerberus.fhe.program import FheClient, FheServer
from cerberus.hybrid import hybrid_model
from cerberus.paths import shipped_model, shipped_prompts

MODEL = shipped_model()
PROMPT = shipped_prompts()[0]


def measure(bits: int, seq_len: int, workdir: Path) -> dict:
    """Compile at ``bits``, run one encrypted forward pass, return the measurements."""
    out = workdir / f"tiny-{bits}.cerb"
    t0 = time.perf_counter()
    compile_model(MODEL, out, CompileOptions(bits=bits, seq_len=seq_len, fhe=True), force=True)
    compile_s = time.perf_counter() - t0
    art = load_artefact(out)
    client = FheClient(out / "fhe", key_cache=None)
    t0 = time.perf_counter()
    client.keygen(seed=0)
    keygen_s = time.perf_counter() - t0
    server = FheServer(out / "fhe")
    server_s: dict[str, float] = {}
    ct_bytes = 0

    def miner(name: str, x: np.ndarray) -> np.ndarray:
        nonlocal ct_bytes
        ct = client.encrypt(name, x)
        keys = client.evaluation_keys(name)
        t = time.perf_counter()
        result = server.run(name, ct, keys)
        server_s[name] = server_s.get(name, 0.0) + time.perf_counter() - t
        ct_bytes += len(ct) + len(result)
        return client.decrypt(name, result)

    ids, _ = art.window(art.tokenizer(PROMPT).input_ids)
    t0 = time.perf_counter()
    with torch.no_grad():
        encrypted = hybrid_model(art.model, art.parts, miner=miner)(ids)
    token_s = time.perf_counter() - t0
    exact = bool(torch.equal(encrypted, art.logits(ids)))
    layers = sorted({n.split(".")[1] for n in server_s})
    return {
        "bits": bits,
        "seq_len": seq_len,
        "compile_s": round(compile_s, 2),
        "keygen_s": round(keygen_s, 3),
        "eval_key_bytes": client.key_bytes(),
        "ciphertext_bytes_per_token": ct_bytes,
        "server_s_per_layer": {f"layer {i}": round(sum(v for k, v in server_s.items()
                                                       if k.split(".")[1] == i), 3)
                               for i in layers},
        "server_s_per_token": round(sum(server_s.values()), 3),
        "end_to_end_s_per_token": round(token_s, 3),
        "pbs": sum(p["pbs"] for p in art.manifest["fhe"].values()),
        "top1_agreement": art.manifest["fidelity"]["top1_agreement"],
        "bit_exact_with_simulator": exact,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bits", type=int, nargs="+", default=[8, 6, 5, 4])
    p.add_argument("--seq-len", type=int, default=16)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(b, args.seq_len, Path(tmp)) for b in args.bits]
    write_json("fhe_model_latency", {"rows": rows})
    table = ["| bits | keygen s | eval keys B | ciphertext MB/token | server s/layer | "
             "server s/token | end-to-end s/token | PBS | top-1 vs float | bit-exact |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        per_layer = ", ".join(f"{v:.2f}" for v in r["server_s_per_layer"].values())
        table.append(
            f"| {r['bits']} | {r['keygen_s']:.2f} | {r['eval_key_bytes']} | "
            f"{r['ciphertext_bytes_per_token'] / 1e6:.1f} | {per_layer} | "
            f"{r['server_s_per_token']:.2f} | {r['end_to_end_s_per_token']:.2f} | {r['pbs']} | "
            f"{100 * r['top1_agreement']:.1f}% | {r['bit_exact_with_simulator']} |")
    write_section(
        "fhe_model_latency",
        "Encrypted latency of models/tiny-gpt (benchmarks/fhe_model_latency.py)",
        f"Command: `.venv/bin/python benchmarks/fhe_model_latency.py` (seq-len {args.seq_len}, "
        "hybrid partition: 12 linears per token under real TFHE, the client does norms, "
        "softmax and GELU in the clear; one forward pass of the window per generated token)."
        "\n\n" + "\n".join(table) + "\n\nThe linears need no programmable bootstrap, so keys "
        "are tiny and keygen is instant; the cost is ciphertext size (one LWE ciphertext per "
        "value) and the client↔miner round trip per linear.",
    )
    for r in rows:
        print(r)


if __name__ == "__main__":
    main()
