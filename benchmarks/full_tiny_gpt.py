"""tiny-gpt in the full partition: why it finds no FHE parameters and where top-1 is lost
(issue #17; SPEC C4, C6).

Why this exists: issue #17 asks for ``cerberus compile models/tiny-gpt --partition full
--fhe`` at ≤ 8-bit lookups with parameters found for every program and ≥ 90% next-token
top-1 agreement on held-out text. Neither holds today; this script measures why, so that a
fix aims at the right stage:

1. **Parameters** (concrete-python 2.11): a toy circuit ``input → 8-bit lookup y → clear
   linear of 16 inputs → rounded 8-bit lookup`` compiled at accumulator widths 14…22, and
   the same accumulator fed by the encrypted input directly. concrete encodes ``y`` at
   the accumulator's width, so the PBS producing it must output that many bits; the
   widest that compiles is ``cerberus.fhe.concrete_backend.LOOKUP_OUTPUT_LIMIT_BITS``.
2. **tiny-gpt's widths and top-1** for CLI settings (``--bits 7``: the default 8 needs
   9-bit product lookups; with and without ``--wide-bits 8 --no-per-channel``): the
   widest lookup output of the lowered graph (``lookup_output_widths``), PBS of one
   16-token window, top-1 agreement with the float model on the held-out text of
   ``squeeze_fidelity`` (validation topics of ``corpus_split()``), and with ``--concrete``
   concrete's own compile of the whole program (parameters, PBS, complexity, key bytes).
3. **Where top-1 is lost**: every lookup of one stage kind (e.g. all ``attn.max`` relu
   lookups of both layers) replaced by a near-float one (table index up to 14 bits,
   outputs 16 bits), alone ("fix one") and with every other stage near-float ("all but
   one"). The lowering is the compiler's (``lower_blocks`` + ``compose_luts`` on the
   model ``compile_model`` lowers, calibrated on its 36 calibration windows), evaluated
   by the simulator; the near-float stages exist only in this measurement (they patch
   ``Builder.lut`` while it runs).

Run::

    .venv/bin/python benchmarks/full_tiny_gpt.py [--windows 200] [--concrete]

Writes ``benchmarks/results/full_tiny_gpt.json`` and the ``full_tiny_gpt`` section of
``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import cerberus.lower as lower  # noqa: E402
from benchmarks.results import write_json, write_section  # noqa: E402
from benchmarks.squeeze_fidelity import MODEL, heldout_windows  # noqa: E402
from cerberus.compile import CompileOptions, _windows, load_source  # noqa: E402
from cerberus.fhe.concrete_backend import (  # noqa: E402
    LOOKUP_OUTPUT_LIMIT_BITS,
    compile_circuit,
    lookup_output_widths,
)
from cerberus.ir import IntGraph, evaluate  # noqa: E402
from cerberus.lower import LoweringOptions, lower_blocks  # noqa: E402
from cerberus.passes.fuse import compose_luts, fold_affine  # noqa: E402
from cerberus.passes.quantize import qmax  # noqa: E402

KEY = "full_tiny_gpt"
SEQ = 16
# CLI flags → the LoweringOptions compile_model builds from them (wide ≥ bits, key mask on)
SETTINGS: dict[str, LoweringOptions] = {
    "--bits 7": LoweringOptions(bits=7, weight_bits=7, wide_bits=12, max_lookup_bits=8,
                                key_mask=True),
    "--bits 7 --wide-bits 8 --no-per-channel": LoweringOptions(
        bits=7, weight_bits=7, wide_bits=8, max_lookup_bits=8, per_channel=False,
        key_mask=True),
}
# stage kinds, as regexes on lookup names (layer and head stripped by the regex itself)
# (not the exp lookup: its rounding is fixed by the key mask's fold, ``Builder.zero_shift``)
STAGES = ["ln1.square", "ln1.rsqrt", "ln1.cq", "ln1.out", "attn.q$", "attn.k$", "attn.v$",
          "attn.h\\d.max", "attn.h\\d.probs", "attn.h\\d.ctx", "res1.branch",
          "mlp.act", "ln2.square", "ln2.rsqrt", "ln2.cq", "ln2.out", "res2.branch"]
# lookups never made near-float: 0/1 mask bits, and the reciprocal whose table's tiny
# inputs would become huge outputs and widen what reads it
KEEP_EXACT = re.compile(r"recip|keep|pad")
PREFIX = "l0.res1.add"  # the first block's attention and its residual
# where a whole program within the limit still fails: these prefixes, in order, until one
# fails (LayerNorm, q/k/v and QKᵀ of the first head, its row max, the first attention)
BISECT = ["l0.ln1.out", "l0.attn.h0.scores", "l0.attn.h0.max.l3.max", PREFIX]


# ------------------------------------------------------------------------------ probe


def probe(acc_bits: int, from_lookup: bool) -> dict[str, Any]:
    """Compile ``[y = lookup(x)] → x @ W (acc_bits wide) → round → lookup`` in concrete."""
    from concrete import fhe

    weight = np.full((16, 1), 2 ** (acc_bits - 12), dtype=np.int64)
    ident = fhe.LookupTable([(i * 37) % 256 for i in range(128)])
    last = fhe.LookupTable([i % 7 for i in range(2 ** 8 + 1)])

    def f(x: Any) -> Any:
        y = ident[x] if from_lookup else x * 2  # 0..254 either way
        r = fhe.round_bit_pattern(y @ weight, lsbs_to_remove=acc_bits - 8)
        return last[r >> (acc_bits - 8)]

    xs = [np.random.default_rng(i).integers(0, 128, (1, 16)) for i in range(40)]
    xs.append(np.full((1, 16), 127))
    t0 = time.perf_counter()
    row: dict[str, Any] = {"acc_bits": acc_bits, "fed_by": "lookup" if from_lookup else "input"}
    try:
        c = fhe.Compiler(f, {"x": "encrypted"}).compile(xs, fhe.Configuration(
            show_progress=False))
    except RuntimeError as e:
        row["status"] = str(e).splitlines()[0][:80]
    else:
        st = c.statistics
        row.update(status="ok", max_bits=int(c.graph.maximum_integer_bit_width()),
                   complexity=float(c.complexity), pbs=int(st["programmable_bootstrap_count"]),
                   key_mb=(st["size_of_bootstrap_keys"] + st["size_of_keyswitch_keys"]) / 1e6)
    row["compile_s"] = time.perf_counter() - t0
    return row


def probe_factor(factor: int, sum_bits: int) -> dict[str, Any]:
    """Compile ``x + factor · bit(k)`` (``bit``: a 1-bit lookup, ``x`` encrypted, the sum
    ``sum_bits`` wide) rounded to an 8-bit lookup: a clear factor on a lookup's output
    grows its noise before the next PBS (the key mask's score penalty was one)."""
    from concrete import fhe

    bit = fhe.LookupTable([0, 1])
    last = fhe.LookupTable([i % 7 for i in range(2 ** 8 + 1)])

    def f(x: Any, k: Any) -> Any:
        r = fhe.round_bit_pattern(x + bit[k] * factor, lsbs_to_remove=sum_bits - 8)
        return last[r >> (sum_bits - 8)]

    rng = np.random.default_rng(0)
    xs = [(rng.integers(0, 2 ** (sum_bits - 2), 4), rng.integers(0, 2, 4)) for _ in range(30)]
    row: dict[str, Any] = {"factor": factor, "sum_bits": sum_bits}
    try:
        c = fhe.Compiler(f, {"x": "encrypted", "k": "encrypted"}).compile(
            xs, fhe.Configuration(show_progress=False))
    except RuntimeError as e:
        row["status"] = str(e).splitlines()[0][:80]
    else:
        st = c.statistics
        row.update(status="ok", max_bits=int(c.graph.maximum_integer_bit_width()),
                   key_mb=(st["size_of_bootstrap_keys"] + st["size_of_keyswitch_keys"]) / 1e6)
    return row


# ------------------------------------------------------------------------------ tiny-gpt


class TinyGpt:
    """The model compile_model lowers, its calibration embeddings and the held-out text."""

    def __init__(self, n_windows: int | None) -> None:
        torch.manual_seed(0)
        model, tok, _ = load_source(MODEL)
        win = _windows(model, tok, CompileOptions(seq_len=SEQ))
        calib = win[: max(1, int(len(win) * 0.75))]  # compile_model's split
        self.folded, _ = fold_affine(model)
        held = heldout_windows(tok, SEQ, n_windows)[:, :-1]
        with torch.no_grad():
            self.ref_top = model(held).argmax(-1)
            self.calib = self.folded.embed(calib).double().numpy()
            self.held = self.folded.embed(held).double().numpy()
        self.n_tokens = int(held.numel())

    def lower(self, opts: LoweringOptions) -> IntGraph:
        return compose_luts(lower_blocks(self.folded, self.calib, opts))[0]

    def ints(self, graph: IntGraph, x: np.ndarray) -> np.ndarray:
        """The client's encoding (``LightClient.encode_input``), every key real."""
        top = qmax(int(graph.meta["input_bits"]))
        ints = np.clip(np.floor(x / graph.meta["input_scale"] + 0.5), -top, top)
        keep = np.ones(ints.shape[:-1] + (1,))
        return np.concatenate([ints, keep], -1).astype(np.int64)

    def top1(self, graph: IntGraph) -> float:
        """Held-out next-token agreement of the integer path with the float model (ranges
        unchecked: a value past a compiled range counts as whatever it computes)."""
        y = evaluate(graph, self.ints(graph, self.held), check_ranges=False)["output"]
        with torch.no_grad():
            logits = self.folded.head(torch.tensor(y * graph.meta["output_scale"],
                                                   dtype=torch.float32))
        return float((logits.argmax(-1) == self.ref_top).double().mean())


@contextlib.contextmanager
def near_float(pattern: str | None, invert: bool) -> Iterator[None]:
    """While lowering, lookups whose name matches ``pattern`` (all others with ``invert``)
    round their index to 14 bits instead of the lookup limit and output 16 bits."""
    lut = lower.Builder.lut

    def patched(self: lower.Builder, name: str, x: lower.Val, fn: lower.Fn,
                **kw: Any) -> lower.Val:
        hit = pattern is not None and re.search(pattern, name) is not None
        if hit == invert or KEEP_EXACT.search(name):
            return lut(self, name, x, fn, **kw)
        opts = self.opts
        self.opts = replace(opts, max_lookup_bits=14)
        if (kw.get("bits") or opts.bits) < 16:
            kw["bits"] = 16
            if kw.get("zero"):
                kw["zero"] = qmax(16)
        try:
            return lut(self, name, x, fn, **kw)
        finally:
            self.opts = opts

    lower.Builder.lut = patched  # type: ignore[method-assign]
    try:
        yield
    finally:
        lower.Builder.lut = lut  # type: ignore[method-assign]


def setting_row(tg: TinyGpt, flags: str, opts: LoweringOptions,
                concrete: bool) -> dict[str, Any]:
    graph = tg.lower(opts)
    outs = lookup_output_widths(graph)
    src, (bits, where) = max(outs.items(), key=lambda kv: kv[1][0])
    row: dict[str, Any] = {
        "flags": flags, "top1": tg.top1(graph), "ir_pbs_window": graph.pbs_count(),
        "widest_lookup_output": {"bits": bits, "lookup": src, "feeds": where},
        "lookup_outputs_over_limit": sum(b > LOOKUP_OUTPUT_LIMIT_BITS for b, _ in outs.values()),
        "max_lookup_bits": max(graph.lookup_widths().values()),
    }
    if concrete:  # over the limit: the first block's attention suffices to fail, quicker
        whole = bits <= LOOKUP_OUTPUT_LIMIT_BITS
        if not whole:
            stop = [n.name for n in graph.nodes].index(PREFIX) + 1
            graph = IntGraph(graph.nodes[:stop], graph.input, PREFIX, graph.meta)
        t0 = time.perf_counter()
        try:
            c = compile_circuit(graph, list(tg.ints(graph, tg.calib)))
        except RuntimeError as e:
            row["concrete"] = {"status": str(e).splitlines()[0][:80]}
        else:
            st = c.statistics
            row["concrete"] = {
                "status": "ok", "pbs": int(st["programmable_bootstrap_count"]),
                "complexity": float(c.complexity),
                "max_bits": int(c.graph.maximum_integer_bit_width()),
                "key_mb": (st["size_of_bootstrap_keys"] + st["size_of_keyswitch_keys"]) / 1e6}
        row["concrete"]["compile_s"] = time.perf_counter() - t0
        row["concrete"]["compiled"] = "whole program" if whole else f"graph up to {PREFIX}"
        if whole and row["concrete"]["status"] != "ok":
            row["bisect"] = bisect(tg, graph)
    return row


def bisect(tg: TinyGpt, graph: IntGraph) -> list[dict[str, Any]]:
    """Compile the graph up to each of ``BISECT`` in turn until one finds no parameters."""
    names = [n.name for n in graph.nodes]
    out = []
    for stop in BISECT:
        sub = IntGraph(graph.nodes[: names.index(stop) + 1], graph.input, stop, graph.meta)
        t0 = time.perf_counter()
        try:
            c = compile_circuit(sub, list(tg.ints(sub, tg.calib)))
        except RuntimeError as e:
            out.append({"up_to": stop, "status": str(e).splitlines()[0][:80]})
            break
        st = c.statistics
        out.append({"up_to": stop, "status": "ok", "max_bits": int(
            c.graph.maximum_integer_bit_width()), "key_mb": (
            st["size_of_bootstrap_keys"] + st["size_of_keyswitch_keys"]) / 1e6,
            "compile_s": time.perf_counter() - t0})
        print(out[-1], flush=True)
    return out


def attribution(tg: TinyGpt, opts: LoweringOptions) -> dict[str, Any]:
    """top-1 with each stage near-float (fix one) and with all but it (all but one)."""
    base = tg.top1(tg.lower(opts))
    with near_float(None, invert=True):
        all_float = tg.top1(tg.lower(opts))
    with near_float(None, invert=True):
        all_float_8 = tg.top1(tg.lower(replace(opts, bits=8)))
    rows = []
    for stage in STAGES:
        pat = rf"^l\d\.{stage}"
        with near_float(pat, invert=False):
            one = tg.top1(tg.lower(opts))
        with near_float(pat, invert=True):
            but = tg.top1(tg.lower(opts))
        rows.append({"stage": stage, "fix_one": one, "all_but_one": but})
        print(rows[-1], flush=True)
    return {"base": base, "all_near_float": all_float,
            "all_near_float_products_8_bits": all_float_8, "stages": rows}


# ------------------------------------------------------------------------------ report


def _f(v: Any, nd: int = 1) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) >= 1e5 else f"{v:,.{nd}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def report(res: dict[str, Any], cmd: str) -> str:
    lines = [f"Command: `{cmd}` — {res['wall_s'] / 60:.1f} min wall on 2 shared cores. "
             f"Held-out text: {res['tokens']:,} next-token predictions ({res['windows']} "
             f"windows × {SEQ}) of `squeeze_fidelity`'s validation topics.", "",
             "### 1. What concrete-python 2.11 finds parameters for", "",
             "`input → 8-bit lookup → clear linear (16 inputs) → accumulator rounded to an "
             "8-bit lookup`, and the same accumulator fed by the encrypted input:", "",
             "| accumulator bits | fed by | status | max bits | PBS | complexity | keys MB |",
             "|---|---|---|---|---|---|---|"]
    for r in res["probe"]:
        lines.append(f"| {r['acc_bits']} | {r['fed_by']} | {r['status']} | "
                     f"{_f(r.get('max_bits'))} | {_f(r.get('pbs'))} | "
                     f"{_f(r.get('complexity'))} | {_f(r.get('key_mb'), 0)} |")
    lines += ["", "concrete encodes a value once, at the width of the widest leveled value "
              "computed from it, so a lookup feeding a wide accumulator must output "
              "ciphertexts that wide: no parameters past "
              f"{LOOKUP_OUTPUT_LIMIT_BITS} bits (`LOOKUP_OUTPUT_LIMIT_BITS`), while an "
              "encrypted input of the same width is fine. The width is not all: a clear "
              "factor on a lookup's output grows its noise before the next PBS. "
              "`x + factor · bit(k)`, the sum rounded to an 8-bit lookup:", "",
              "| factor | sum bits | status | max bits | keys MB |", "|---|---|---|---|---|"]
    for r in res["probe_factor"]:
        lines.append(f"| {r['factor']:,} | {r['sum_bits']} | {r['status']} | "
                     f"{_f(r.get('max_bits'))} | {_f(r.get('key_mb'), 0)} |")
    lines += ["",
              "### 2. tiny-gpt, `--partition full` (one 16-token window per program run)", "",
              "A generated token reruns the 16-token window (`LightClient.generate`), so PBS "
              "per window are PBS per token. concrete: the compile of the whole program, or, "
              "when a lookup output is over the limit, of the graph up to "
              f"`{PREFIX}`.", "",
              "| flags | top-1 | IR PBS / token | widest lookup output (bits: lookup → "
              "what it feeds) | lookups over the limit | concrete | compiled | PBS | "
              "complexity | keys MB | compile s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["settings"]:
        w = r["widest_lookup_output"]
        c = r.get("concrete", {"status": "not compiled (run with --concrete)"})
        lines.append(f"| `{r['flags']}` | {100 * r['top1']:.1f}% | {_f(r['ir_pbs_window'])} | "
                     f"{w['bits']}: {w['lookup']} → {w['feeds']} | "
                     f"{r['lookup_outputs_over_limit']} | {c['status']} | "
                     f"{c.get('compiled', '–')} | {_f(c.get('pbs'))} | {_f(c.get('complexity'))} "
                     f"| {_f(c.get('key_mb'), 0)} | {_f(c.get('compile_s'), 0)} |")
    for r in res["settings"]:
        if r.get("bisect"):
            steps = "; ".join(
                f"up to `{b['up_to']}`: {b['status']}" + (
                    f" ({b['max_bits']} bits, {_f(b['key_mb'], 0)} MB of keys)"
                    if b["status"] == "ok" else "") for b in r["bisect"])
            lines += ["", f"`{r['flags']}`, the whole program failing, its prefixes: {steps}."]
    a = res["attribution"]
    lines += ["", f"### 3. Where top-1 is lost (`{res['attribution_flags']}`)", "",
              f"Integer path: {100 * a['base']:.1f}%. Every lookup near-float (index ≤ 14 "
              "bits, 16-bit outputs) but the exp (its rounding is fixed by the key mask's "
              "fold), the row-sum reciprocal and the 0/1 mask bits, products keeping 7-bit "
              f"operands: "
              f"{100 * a['all_near_float']:.1f}%; with 8-bit product operands (9-bit product "
              f"lookups): {100 * a['all_near_float_products_8_bits']:.1f}%.", "",
              "| stage (both layers, every head) | this stage near-float | every stage "
              "near-float but this one |", "|---|---|---|"]
    for r in a["stages"]:
        lines.append(f"| `{r['stage']}` | {100 * r['fix_one']:.1f}% "
                     f"({100 * (r['fix_one'] - a['base']):+.1f}) | {100 * r['all_but_one']:.1f}% "
                     f"({100 * (r['all_but_one'] - a['all_near_float']):+.1f}) |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=200,
                    help="held-out windows (evenly spaced; 877 is all of them)")
    ap.add_argument("--concrete", action="store_true",
                    help="also compile each setting's whole program in concrete (minutes)")
    args = ap.parse_args(argv)
    cmd = ".venv/bin/python benchmarks/full_tiny_gpt.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    t0 = time.time()
    res: dict[str, Any] = {"probe": [probe(b, True) for b in (14, 16, 18, 19, 20, 22)]
                           + [probe(b, False) for b in (22, 27)]}
    res["probe_factor"] = [probe_factor(f, b) for f, b in ((4096, 18), (32768, 16),
                                                           (32768, 18))]
    print(res["probe"], res["probe_factor"], flush=True)
    tg = TinyGpt(args.windows)
    res.update(windows=args.windows, tokens=tg.n_tokens)
    res["settings"] = [setting_row(tg, f, o, args.concrete) for f, o in SETTINGS.items()]
    print(res["settings"], flush=True)
    res["attribution_flags"] = list(SETTINGS)[-1]
    res["attribution"] = attribution(tg, SETTINGS[res["attribution_flags"]])
    res["wall_s"] = time.time() - t0
    write_json(KEY, {**res, "command": cmd.strip()})
    write_section(KEY, "tiny-gpt in the full partition: parameters and top-1 (issue #17)",
                  report(res, cmd.strip()))


if __name__ == "__main__":
    main()
