"""The compile pipeline: model → canonical graph → passes → integer graph → artefact.

The steps marked *pass* come from ``cerberus.passes`` and share one contract
(``cerberus.passes.Pass``): graph in, new graph and a report out, the report's ``to_dict``
going into the manifest. The other steps change representation and are not passes:

1. frontend (C1)            any source → ``CanonicalTransformer``
2. significance (C2, pass)  S(h) per layer and head on calibration text (model unchanged)
3. squeeze (C3, pass)       keep the heads that maximise S under the FHE cost budget
4. QAT (C4, pass, optional) fine-tune through fake quantization
5. fold (C5, pass)          LayerNorm affines and attention scale into linears
6. lower (C4, C6)           integer graph with calibrated scales and ≤ max-lookup-bit tables
7. compose (C5, pass)       merge chains of lookups
8. artefact (C8)            write ``NAME.cerb/`` atomically, content-addressed
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cerberus import __version__
from cerberus.artefact import (
    MANIFEST,
    adaptive_preprocess,
    adaptive_torch,
    load_artefact,
    write_artefact,
)
from cerberus.calibration import calibration_batches, random_batches
from cerberus.errors import CompileError
from cerberus.fhe.pricing import Link, choose, packed_params
from cerberus.frontends.canonical import CanonicalTransformer, TransformerConfig
from cerberus.frontends.hub import resolve_model
from cerberus.frontends.huggingface import from_hf_module, load_pretrained
from cerberus.hashing import arrays_sha256, file_sha256, folder_sha256
from cerberus.hybrid import Miner, extreme_rows, lower_hybrid
from cerberus.ir import IntGraph, RangeOverflow
from cerberus.light_client import LightClient, client_state, simulated_miner
from cerberus.lower import DEFAULT_WIDE_BITS, LoweringOptions, lower_blocks, padding_masks
from cerberus.passes.fuse import FuseReport, compose_luts, fold_affine, graph_stats
from cerberus.passes.quantize import check_bits
from cerberus.passes.significance import significance
from cerberus.passes.squeeze import squeeze

log = logging.getLogger("cerberus.compile")


PARTITIONS = ("hybrid", "full")


@dataclass
class CompileOptions:
    """Every knob of ``cerberus compile``; defaults are what a user gets with no flags."""

    bits: int = 8
    weight_bits: int | None = None  # default: same as bits
    wide_bits: int = DEFAULT_WIDE_BITS
    max_lookup_bits: int = 8
    seq_len: int = 16
    theta: float | None = None  # None: no threshold, only the budget prunes
    budget: float | None = None
    # "ablation" (masked-loss change per head) by default: on the shipped model Michel's
    # |dL/dξ| and Fisher picked worse heads than random (see README); both stay available.
    significance: str = "ablation"
    strategy: str = "significance"
    qat_steps: int = 0
    qat_lr: float = 1e-4
    adaptive: bool = False
    calibration: Path | None = None
    calibration_windows: int = 48
    seed: int = 0
    # "hybrid": only linears under FHE, the client computes norms/softmax/GELU in the clear
    # (meets the fidelity goal; one round trip per linear). "full": whole blocks under FHE.
    partition: str = "hybrid"
    fhe: bool = False  # also compile the concrete-python server programs and client specs
    # Full partition: per-channel rescaling multipliers add up to mult_bits to every clear
    # linear's accumulator; without them a d_model-16 block fits concrete (issue #5 notes).
    per_channel: bool = True
    # Hybrid: the client quantizes each row with its own max |x| ("token") or with one
    # calibrated scale per tensor ("tensor"); smooth: SmoothQuant's α (None: off; needs
    # "token"). Both change only the client's encoding and the miner's integer weights.
    act_scale: str = "token"
    smooth: float | None = 0.5
    # Hybrid + fhe: what runs each linear (cerberus.fhe.pricing): "lwe" (concrete),
    # "packed" (coefficient-encoded BFV) or "auto" (the cheapest exact one per linear,
    # priced on this link: bytes at link_mbps, one round trip of rtt_ms per call).
    linear_backend: str = "auto"
    link_mbps: float = 100.0
    rtt_ms: float = 20.0

    def validate(self) -> None:
        check_bits(self.bits)
        check_bits(self.weight_bits or self.bits)
        if not 2 <= self.max_lookup_bits <= 16:
            raise CompileError(f"max lookup bits must be in 2..16, got {self.max_lookup_bits}")
        if self.seq_len < 1:
            raise CompileError(f"seq-len must be ≥ 1, got {self.seq_len}")
        if self.partition not in PARTITIONS:
            raise CompileError(f"partition must be one of {PARTITIONS}, got {self.partition!r}")
        if self.budget is not None and self.budget <= 0:
            raise CompileError(f"budget must be > 0 seconds, got {self.budget}")
        if self.act_scale not in ("token", "tensor"):
            raise CompileError(f"act-scale must be token or tensor, got {self.act_scale!r}")
        if self.smooth is not None and not (0 <= self.smooth <= 1 and self.act_scale == "token"):
            raise CompileError("--smooth takes an α in 0..1 and needs --act-scale token")
        if self.linear_backend not in ("lwe", "packed", "auto"):
            raise CompileError(f"linear backend must be lwe, packed or auto, got "
                               f"{self.linear_backend!r}")
        if self.linear_backend == "packed" and self.partition != "hybrid":
            raise CompileError("--linear-backend packed runs the hybrid partition's linears; "
                               "the full partition's blocks need lwe")
        Link(self.link_mbps, self.rtt_ms)  # a clear error for a bad link


def load_source(source: str | Path | nn.Module) -> tuple[CanonicalTransformer, Any, dict]:
    """Frontend dispatch (C1): HF id/folder, ``.onnx`` file, or a ``torch.nn.Module``.

    A source that is no local path is a Hub id, resolved as ``from_pretrained`` would
    (cache, download, or cache only under ``HF_HUB_OFFLINE=1``: ``frontends.hub``).
    """
    if isinstance(source, CanonicalTransformer):
        return source.eval(), None, {"kind": "module", "name": type(source).__name__,
                                     "sha256": state_hash(source)}
    if isinstance(source, nn.Module):
        model = from_hf_module(source)
        return model, None, {"kind": "module", "name": type(source).__name__,
                             "sha256": state_hash(model)}
    path = Path(source)
    if path.suffix == ".onnx":
        if not path.is_file():
            raise CompileError(f"ONNX file {path} not found")
        from cerberus.frontends.onnx_import import canonical_from_onnx

        return canonical_from_onnx(path), None, {"kind": "onnx", "name": path.stem,
                                                  "sha256": file_sha256(path)}
    folder = path if path.exists() else resolve_model(str(source))  # else: a Hub id
    hf, tokenizer = load_pretrained(str(folder))
    info = {"kind": "huggingface", "name": path.name if path.exists() else str(source),
            "sha256": folder_sha256(folder) if folder.is_dir() else state_hash(hf)}
    return from_hf_module(hf), tokenizer, info


def state_hash(model: nn.Module) -> str:
    """A torch module's content address, hashed like a folder of one file per tensor."""
    return arrays_sha256({k: v.detach().cpu().contiguous().numpy().tobytes()
                          for k, v in model.state_dict().items()})


def default_output(info: dict) -> Path:
    name = "".join(c if c.isalnum() or c in "-_." else "-" for c in info["name"]) or "model"
    return Path(f"{name}.cerb")


def _windows(model: CanonicalTransformer, tokenizer: Any, opts: CompileOptions) -> torch.Tensor:
    if opts.seq_len > model.cfg.n_positions:
        raise CompileError(
            f"seq-len {opts.seq_len} exceeds the model's context of {model.cfg.n_positions}"
        )
    if tokenizer is not None:
        batches = calibration_batches(tokenizer, path=opts.calibration, seq_len=opts.seq_len,
                                      batch_size=8, max_batches=opts.calibration_windows // 8,
                                      seed=opts.seed)
    else:
        if opts.calibration is not None:
            raise CompileError("--calibration needs a model with a tokenizer")
        batches = random_batches(model.cfg.vocab_size, opts.seq_len, batch_size=8,
                                 n_batches=opts.calibration_windows // 8, seed=opts.seed)
    return torch.cat(batches)


def fidelity(reference: CanonicalTransformer, logits: Callable[[torch.Tensor], torch.Tensor],
             ids: torch.Tensor) -> dict:
    """The compiled path vs. the source float model on held-out windows.

    ``reference`` is the model as loaded, before squeezing and QAT, so every pass's loss is
    counted: top-1 next-token agreement for LMs, mean cosine of the outputs for encoders.
    A window whose values leave a compiled range (the circuit would compute garbage) is
    counted and named in the report instead of aborting the compilation.
    """
    overflows: dict[str, int] = {}
    with torch.no_grad():
        try:
            got, kept = logits(ids), ids
        except RangeOverflow:
            rows = []
            for window in ids.split(1):
                try:
                    rows.append((window, logits(window)))
                except RangeOverflow as e:
                    node = str(e).split(" ")[1]
                    overflows[node] = overflows.get(node, 0) + 1
            if not rows:
                raise CompileError("every held-out window overflowed the compiled ranges "
                                   f"({overflows}); calibrate on more data") from None
            kept = torch.cat([w for w, _ in rows])
            got = torch.cat([g for _, g in rows])
        ref = reference(kept)
    if overflows:
        log.warning("%d held-out windows left a compiled range (nodes %s): those inputs would "
                    "give wrong results under FHE", sum(overflows.values()), sorted(overflows))
    if reference.lm_head is not None:
        agree = float((got.argmax(-1) == ref.argmax(-1)).float().mean())
        out = {"top1_agreement": round(agree, 4), "tokens": int(kept.numel())}
    else:
        cos = torch.nn.functional.cosine_similarity(got.flatten(1), ref.flatten(1), dim=-1)
        out = {"cosine": round(float(cos.mean()), 4), "sequences": int(kept.shape[0])}
    if overflows:
        out["overflowed_windows"] = overflows
    return out


def compile_model(
    source: str | Path | nn.Module,
    output: Path | None = None,
    opts: CompileOptions | None = None,
    *,
    force: bool = False,
) -> tuple[Path, str, dict]:
    """Run every pass and write the artefact. Returns (path, sha256, manifest)."""
    opts = opts or CompileOptions()
    opts.validate()
    t0 = time.perf_counter()
    torch.manual_seed(opts.seed)
    model, tokenizer, info = load_source(source)
    output = Path(output) if output is not None else default_output(info)
    if output.exists() and not force:
        raise CompileError(f"output {output} already exists (use --force to replace it)")
    log.info("loaded %s: %d layers × %d heads, d_model %d", info["name"], model.cfg.n_layer,
             model.cfg.n_head, model.cfg.d_model)

    windows = _windows(model, tokenizer, opts)
    n_cal = max(1, int(len(windows) * 0.75))
    calib, held_out = windows[:n_cal], windows[n_cal:]
    if len(held_out) == 0:
        raise CompileError("calibration data too short: no windows left for the fidelity check")
    cal_batches = list(calib.split(8))

    model, sig = significance(model, cal_batches, method=opts.significance, seed=opts.seed)
    log.info("significance (%s) computed on %d windows", opts.significance, len(calib))
    theta = -math.inf if opts.theta is None else opts.theta
    squeezed, sq_report = squeeze(model, sig, theta=theta, budget=opts.budget,
                                  seq_len=opts.seq_len, bits=opts.bits, strategy=opts.strategy,
                                  seed=opts.seed)
    log.info("squeeze kept %s heads; estimated cost %.3g s → %.3g s",
             sum(len(h) for h in sq_report.heads_kept), sq_report.cost_before_s,
             sq_report.cost_after_s)
    qat_report = None
    if opts.qat_steps > 0:
        from cerberus.passes.qat import qat_finetune

        squeezed, qat_report = qat_finetune(squeezed, cal_batches, bits=opts.bits,
                                            steps=opts.qat_steps, lr=opts.qat_lr, seed=opts.seed)
        log.info("QAT: loss %.4f → %.4f", qat_report.loss_before, qat_report.loss_after)

    folded, fold_report = fold_affine(squeezed)
    lowering = LoweringOptions(bits=opts.bits, weight_bits=opts.weight_bits or opts.bits,
                               wide_bits=max(opts.wide_bits, opts.bits),
                               max_lookup_bits=opts.max_lookup_bits, fuse=True,
                               per_channel=opts.per_channel,
                               # full: the client's attention mask rides in the encrypted
                               # input (one more column; +0.6 % PBS on tiny-gpt)
                               key_mask=opts.partition == "full")
    adaptive_params = {"levels": 256, "threshold": 0.1, "alpha": 0.5}

    def embedded(m: CanonicalTransformer, ids: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            x = m.embed(ids).double().numpy()
        return adaptive_preprocess(x, adaptive_params) if opts.adaptive else x

    naive = lower_blocks(squeezed, embedded(squeezed, calib), replace(lowering, fuse=False))
    graph, compose_report = compose_luts(lower_blocks(folded, embedded(folded, calib), lowering))
    # fusion as a whole is measured against the naive lowering (no folds, requantization
    # and activation as separate lookups), which neither fusion pass sees
    fuse_report = FuseReport(folded=fold_report.folded, composed=compose_report.composed,
                             before=graph_stats(naive), after=compose_report.after)
    log.info("fusion: %d → %d FHE ops, %d → %d lookups (max %d bits)",
             fuse_report.before["fhe_ops"], fuse_report.after["fhe_ops"],
             fuse_report.before["lookups"], fuse_report.after["lookups"],
             fuse_report.after["max_lookup_bits"])

    # the client's side of the split, exactly as a loaded artefact runs it (light_client)
    quant_io = {"input_scale": graph.meta["input_scale"],
                "input_bits": int(graph.meta["input_bits"]),
                "output_scale": graph.meta["output_scale"],
                "key_mask": bool(graph.meta.get("key_mask", False))}
    prep = adaptive_torch(adaptive_params) if opts.adaptive else None
    if opts.partition == "hybrid":
        linears, programs = lower_hybrid(folded, cal_batches, opts.bits,
                                         opts.weight_bits or opts.bits,
                                         per_token=opts.act_scale == "token",
                                         smooth_alpha=opts.smooth)
    else:
        linears, programs = {}, {"blocks": graph}
    state = client_state(folded, opts.partition)

    def light(miner: Miner) -> LightClient:
        return LightClient(folded.cfg, state, partition=opts.partition, miner=miner,
                           linears=linears, io=quant_io, preprocess=prep, seq_len=opts.seq_len)

    sim = simulated_miner(programs)
    fid = fidelity(model, light(sim).logits, held_out)
    log.info("fidelity (%s partition) on %d held-out windows: %s", opts.partition,
             len(held_out), fid)
    choices = _choose_backends(opts, folded.cfg, programs)
    fhe_stats = None
    extra: list[Callable[[Path], object]] = []
    if opts.fhe:
        from cerberus.fhe.program import compile_programs, save_programs

        if opts.partition == "full":
            from cerberus.fhe.concrete_backend import check_widths

            check_widths(graph, opts.max_lookup_bits)
        fhe_stats = choices
        lwe = {n: g for n, g in programs.items() if fhe_stats[n]["backend"] == "lwe"}
        if lwe:
            inputsets = _inputsets(light, sim, calib, lwe)
            circuits = compile_programs(lwe, inputsets)
            # the programs' statistics join the manifest when the writer saves them
            extra.append(lambda root: [fhe_stats[n].update(st) for n, st in
                                       save_programs(circuits, root).items()])
    manifest = {
        "cerberus_version": __version__,
        "torch_version": torch.__version__,
        "source": info,
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
        "significance": sig.to_dict(),
        "squeeze": sq_report.to_dict(),
        "head_mask": [[int(h in kept) for h in range(model.cfg.n_head)]
                      for kept in sq_report.heads_kept],
        "qat": qat_report.to_dict() if qat_report is not None else None,
        "fusion": fuse_report.to_dict(),
        "quantization": {"bits": opts.bits, "weight_bits": opts.weight_bits or opts.bits,
                         "wide_bits": lowering.wide_bits,
                         "max_lookup_bits": opts.max_lookup_bits,
                         **quant_io,
                         "lookup_widths": graph.lookup_widths(),
                         "adaptive": opts.adaptive,
                         "adaptive_params": adaptive_params},
        # what the compiled partition costs: hybrid, priced per linear on the link; full,
        # the PBS cost model of the blocks (squeeze's own estimate)
        "cost_estimate": (_hybrid_cost(choices, folded.cfg) if opts.partition == "hybrid"
                          else dict(sq_report.cost_after, partition="full")),
        "partition": _partition(opts.partition, folded, programs),
        "fidelity": fid,
        "fhe": fhe_stats,
        "model_config": folded.cfg.to_dict(),
        "seq_len": opts.seq_len,
        "compile_seconds": round(time.perf_counter() - t0, 2),
    }
    from cerberus.onnx_export import export_onnx

    extra.append(lambda root: export_onnx(graph, root / "miner" / "model.onnx"))
    digest = write_artefact(output, manifest=manifest, cfg=folded.cfg, state=state, graph=graph,
                            programs=programs if opts.partition == "hybrid" else None,
                            linears=linears, tokenizer=tokenizer, force=force, extra=extra)
    return output, digest, json.loads((output / MANIFEST).read_text())  # as written


def _choose_backends(opts: CompileOptions, cfg: TransformerConfig,
                     programs: dict[str, IntGraph]) -> dict[str, dict]:
    """Per FHE program, its backend and every backend's predicted price (the manifest's
    ``fhe``). Priced for the call a model makes most: a token (causal LM) or a sequence."""
    if opts.partition == "full":
        return {name: {"backend": "lwe"} for name in programs}
    link = Link(opts.link_mbps, opts.rtt_ms)
    rows = 1 if cfg.kind == "causal-lm" else opts.seq_len
    out = {}
    for name, g in programs.items():
        n_in, n_out = g["linear"].attrs["weight"].shape
        wbits = opts.weight_bits or opts.bits
        backend, prices = choose(opts.linear_backend, int(n_in), int(n_out), rows, link,
                                 bits=opts.bits, weight_bits=wbits)
        out[name] = {"backend": backend, "requested": opts.linear_backend,
                     "link": {"mbps": link.mbps, "rtt_ms": link.rtt_ms},
                     "predicted": prices}
        if backend == "packed":  # the parameter set its price was for
            out[name]["packed"] = packed_params(int(n_in), int(n_out), rows, link,
                                                bits=opts.bits, weight_bits=wbits).to_dict()
    chosen = sorted({d["backend"] for d in out.values()})
    log.info("linear backends (%s, %.0f Mbit/s, %.0f ms RTT): %s", opts.linear_backend,
             link.mbps, link.rtt_ms, ", ".join(chosen))
    return out


def _hybrid_cost(choices: dict[str, dict], cfg: TransformerConfig) -> dict:
    """The hybrid partition's predicted cost of one pass (a token, or an encoder's
    sequence): every linear on its chosen backend, one round trip each."""
    chosen = {n: d["predicted"][d["backend"]] for n, d in choices.items()}
    first = next(iter(choices.values()))
    backends = first["predicted"].keys()
    return {
        "partition": "hybrid", "per": "token" if cfg.kind == "causal-lm" else "sequence",
        "rows": next(iter(chosen.values()))["rows"], "link": first["link"],
        "seconds": round(sum(p["seconds"] for p in chosen.values()), 6),
        "bytes_up": sum(p["bytes_up"] for p in chosen.values()),
        "bytes_down": sum(p["bytes_down"] for p in chosen.values()),
        "round_trips": len(chosen),
        "backends": sorted({d["backend"] for d in choices.values()}),
        "seconds_if_all": {b: round(sum(d["predicted"][b]["seconds"] for d in choices.values()
                                        if b in d["predicted"]), 6) for b in backends},
    }


def _inputsets(light: Callable[[Miner], LightClient], sim: Miner, calib: torch.Tensor,
               programs: dict[str, IntGraph]) -> dict[str, list[np.ndarray]]:
    """What each program receives on the calibration windows (recorded at the miner's
    side of the split), plus, for every hybrid linear, the inputs at the edges of its
    declared range, so concrete sizes the circuit for the extremes too."""
    seen: dict[str, list[np.ndarray]] = {name: [] for name in programs}

    def record(program: str, xs: np.ndarray) -> np.ndarray:
        seen[program].extend(xs)
        return sim(program, xs)

    light(record).logits(calib)
    if any(g.meta.get("key_mask") for g in programs.values()):
        # concrete sizes every value from what it sees: padded windows too
        light(record).logits(calib, torch.tensor(padding_masks(len(calib), calib.shape[1])))
    for name, g in programs.items():
        if g.meta.get("linear"):
            seen[name].extend(extreme_rows(g))
    return seen


def _partition(mode: str, model: CanonicalTransformer, programs: dict[str, IntGraph]) -> dict:
    """Who computes what (SPEC C6): recorded so a miner and a client agree on the split."""
    client = ["tokenizer", "embedding", "final norm", "lm head"]
    if mode == "full":
        return {"mode": mode, "client": client,
                "miner": [f"block {i}" for i in range(model.cfg.n_layer)]}
    return {"mode": mode, "client": client + ["layer norms", "attention", "softmax", "GELU",
                                              "residuals", "KV cache"],
            "miner": sorted(programs)}


__all__ = ["CompileOptions", "compile_model", "load_artefact", "load_source"]
