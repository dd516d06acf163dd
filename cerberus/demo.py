"""``make demo``: the main job end to end, as far as it is built.

Today: load the shipped tiny GPT-2 offline and generate text in the clear. Later issues
extend this script step by step to compile → serve → encrypted query → network.
"""

from __future__ import annotations

import json
import logging
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from cerberus.paths import shipped_model

PROMPTS = ("The for statement is used to", "A class definition")


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log = logging.getLogger("demo")
    path = shipped_model()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    report = json.loads((path / "training.json").read_text())
    n_params = sum(p.numel() for p in model.parameters())
    log.info("== Cerberus demo ==")
    log.info(
        "model %s: %d layers, %d heads, d_model %d, %d params; held-out perplexity %.2f "
        "(unigram baseline %.2f)",
        path.name, model.config.n_layer, model.config.n_head, model.config.n_embd, n_params,
        report["val_perplexity"], report["unigram_val_perplexity"],
    )
    torch.manual_seed(0)
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=24, do_sample=False,
                                 pad_token_id=tokenizer.eos_token_id)
        dt = time.perf_counter() - t0
        text = tokenizer.decode(out[0], skip_special_tokens=True)
        log.info("plaintext generation (%.0f ms): %r", dt * 1000, text)
    log.info("next: `cerberus compile` (issue #4) turns this model into an FHE artefact")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
