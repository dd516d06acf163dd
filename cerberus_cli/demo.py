"""``make demo``: the main job end to end.

1. load the shipped tiny GPT-2 offline and generate in the clear (the float reference);
2. ``cerberus compile --fhe`` it: significance, squeezing, quantization, fusion, integer
   graph, concrete-python programs, content-addressed artefact;
3. generate through the artefact's integer path in the clear (the bit-exact simulator);
4. ``cerberus serve`` the artefact as a miner on 127.0.0.1 and query it under real TFHE
   through the client SDK (the light client: it fetches only the client half, keeps its
   K/V cache, sends the prompt's rows once and then one row per program per token): the
   miner sees only ciphertexts, the answer equals step 3's; per token MB, round trips and
   s/token on the issue's link model (100 Mbit/s, 20 ms);
5. ``cerberus network up``: 3 validators and 3 miners (one of them lazy, replaying old
   answers) as separate processes; validators check miners each epoch under their own
   keys and set weights; over three epochs the ledger pays out; an encrypted query is
   routed by embedding to a miner the validators vouch for.
"""

from __future__ import annotations

import json
import logging
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from cerberus.artefact import load_artefact
from cerberus.compile import CompileOptions, compile_model
from cerberus.paths import shipped_model
from cerberus_cli import CLI, JOIN_CMD
from runtime.bench import (
    DEFAULT_LINK_MBPS,
    DEFAULT_PROMPTS,
    DEFAULT_RTT_MS,
    human_bytes,
    link_seconds,
)

PROMPTS = DEFAULT_PROMPTS
NEW_TOKENS = 12
ENCRYPTED_TOKENS = 8


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log = logging.getLogger("demo")
    path = shipped_model()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    report = json.loads((path / "training.json").read_text())
    log.info("== 1. the model ==")
    log.info("%s: %d layers, %d heads, d_model %d, %d params; held-out perplexity %.2f "
             "(unigram baseline %.2f)", path.name, model.config.n_layer, model.config.n_head,
             model.config.n_embd, sum(p.numel() for p in model.parameters()),
             report["val_perplexity"], report["unigram_val_perplexity"])

    log.info("== 2. cerberus compile ==")
    with tempfile.TemporaryDirectory() as tmp:
        out, digest, m = compile_model(path, Path(tmp) / "tiny-gpt.cerb", CompileOptions(fhe=True))
        fuse = m["fusion"]
        log.info("artefact %s  sha256 %s", out.name, digest)
        log.info("partition %s: the miner runs %s", m["partition"]["mode"],
                 ", ".join(m["partition"]["miner"]))
        log.info("top-1 agreement with the float model on held-out windows: %.1f%%",
                 100 * m["fidelity"]["top1_agreement"])
        log.info("the full-block circuit (--partition full): FHE ops %d → %d after fusion, "
                 "%d lookups, widest %d bits", fuse["before"]["fhe_ops"],
                 fuse["after"]["fhe_ops"], fuse["after"]["lookups"],
                 fuse["after"]["max_lookup_bits"])
        art = load_artefact(out)

        log.info("== 3. generation: float model vs. the compiled integer path (simulated) ==")
        for prompt in PROMPTS:
            ids = tokenizer(prompt).input_ids
            with torch.no_grad():
                ref = model.generate(torch.tensor([ids]), max_new_tokens=NEW_TOKENS,
                                     do_sample=False, pad_token_id=tokenizer.eos_token_id)
            t0 = time.perf_counter()
            got = art.generate(ids, NEW_TOKENS)
            dt = time.perf_counter() - t0
            log.info("prompt   %r", prompt)
            log.info("  float  %r", tokenizer.decode(ref[0, len(ids):]))
            log.info("  int    %r  (%.0f ms/token in the clear)", tokenizer.decode(got),
                     1000 * dt / NEW_TOKENS)
        log.info("== 4. cerberus serve + an encrypted query (real TFHE) ==")
        encrypted_query(out, art, tokenizer, Path(tmp), log)
        log.info("== 5. cerberus network up: 3 validators, 3 miners (miner-0 lazy) ==")
        local_network(Path(tmp), log)
    return 0


def local_network(tmp: Path, log: logging.Logger) -> None:
    """Three epochs of a local network, then an encrypted query routed to a vouched miner.

    Why three: a Brain earns emission only once it has a performance record (its first
    epoch with weights), and that emission is paid out at the epoch after.
    """
    from network import local

    art = local.ensure_artefact(tmp / "net")  # the network serves an 8-token-window build
    net = local.start(tmp / "net", validators=3, miners=3, misbehave=1, artefact=art, tempo=12,
                      join_cmd=JOIN_CMD)
    try:
        for p in net.procs:
            log.info("%-12s %-9s node %s%s", p.name, p.role, p.node,
                     "  (lazy: replays old answers)" if p.misbehave else "")
        start = local.balances(net)
        epochs = local.run_epochs(net, 3, timeout=300)
        summary = local.summary(net, epochs, start)
        query = local.route_query(net, PROMPTS[1], 4)
        roots = local.check_roots(net)
    finally:
        net.stop()
    local.print_summary(summary)
    log.info("state roots at height %d: %s", roots["height"],
             "equal on all 6 nodes" if roots["agree"] else "DIFFER")
    log.info("query %r → miner %s: %r (%.1f s, equals the simulator: %s)", query["prompt"],
             query["miner"], query["answer"], query["seconds"], query["equals_simulator"])


def encrypted_query(artefact: Path, art, tokenizer, tmp: Path, log: logging.Logger) -> None:
    """Start a miner process on 127.0.0.1, generate through it, compare with the simulator."""
    from runtime.client import MinerClient

    with open(tmp / "miner.log", "wb") as err:  # the child keeps its own descriptor
        miner = subprocess.Popen([*CLI, "serve", str(artefact),
                                  "--port", "0"], stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        assert miner.stdout is not None
        line = miner.stdout.readline().strip()  # "serving SHA on HOST:PORT"
        if not line:
            raise RuntimeError(f"the miner did not start: {(tmp / 'miner.log').read_text()}")
        address = line.rsplit(" ", 1)[1]
        log.info("miner %s", line)
        with MinerClient(address, cache_dir=tmp / "client-cache") as client:
            t0 = time.perf_counter()
            client.keygen()
            client.upload_keys()
            log.info("client half fetched (%s, no miner weight); keys generated and "
                     "uploaded (%s) in %.2f s", human_bytes(folder_bytes(client.artefact.path)),
                     human_bytes(client.key_bytes()), time.perf_counter() - t0)
            prompt = PROMPTS[0]
            ids = tokenizer(prompt).input_ids
            out = client.generate(ids, ENCRYPTED_TOKENS)
            log.info("prompt     %r", prompt)
            log.info("  answer   %r", tokenizer.decode(out.ids))
            # the first step carries the prompt's rows (the prefill); every later token one
            # row per miner program (KV cache on the client)
            first, later = out.steps[0], out.steps[1:]
            log.info("  prefill  %d prompt tokens: %.1f MB, %d round trips, %.2f s",
                     len(ids), (first.bytes_sent + first.bytes_received) / 1e6,
                     first.round_trips, out.token_seconds[0])
            per_mb = [(s.bytes_sent + s.bytes_received) / 1e6 for s in later]
            linked = [link_seconds(t, s.bytes_sent + s.bytes_received, s.round_trips)
                      for t, s in zip(out.token_seconds, out.steps, strict=True)]
            log.info("  per token %.1f MB of ciphertext, %d round trips (%d programs), "
                     "%.2f s loopback (miner %.2f s)", sum(per_mb) / len(per_mb),
                     later[0].round_trips, len(art.programs),
                     sum(out.token_seconds[1:]) / len(later),
                     sum(s.server_ms for s in later) / 1000 / len(later))
            log.info("  s/token on a %g Mbit/s link with %g ms round trips: median %.2f, "
                     "p95 %.2f with the prefill in the first token; after it median %.2f, "
                     "p95 %.2f", DEFAULT_LINK_MBPS, DEFAULT_RTT_MS,
                     float(np.percentile(linked, 50)), float(np.percentile(linked, 95)),
                     float(np.percentile(linked[1:], 50)),
                     float(np.percentile(linked[1:], 95)))
            same = out.ids == art.generate(ids, ENCRYPTED_TOKENS)
            log.info("  equals the simulator's tokens: %s", same)
            if not same:
                raise RuntimeError("the encrypted tokens differ from the simulator's")
    finally:
        miner.terminate()
        miner.wait(timeout=60)


if __name__ == "__main__":
    raise SystemExit(main())
