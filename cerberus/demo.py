"""``make demo``: the main job end to end, as far as it is built.

1. load the shipped tiny GPT-2 offline and generate in the clear (the float reference);
2. ``cerberus compile`` it: significance, squeezing, quantization, fusion, integer graph,
   content-addressed artefact;
3. generate through the artefact's integer path — the computation the miner will run
   under FHE (issue #5), here evaluated in the clear by the bit-exact simulator.
Later issues extend this to serve → encrypted query → network.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from cerberus.artefact import load_artefact
from cerberus.compile import CompileOptions, compile_model
from cerberus.paths import shipped_model

PROMPTS = ("The for statement is used to", "A class definition")
NEW_TOKENS = 12


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
        out, digest, m = compile_model(path, Path(tmp) / "tiny-gpt.cerb", CompileOptions())
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
    log.info("next: the FHE backend (issue #5) runs step 3 under real encryption")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
