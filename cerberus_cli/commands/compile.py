"""``cerberus compile``: flags, progress and the one-screen summary."""

from __future__ import annotations

import argparse
from pathlib import Path

from cerberus.compile import CompileOptions, compile_model

DEFAULTS = CompileOptions()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model folder, .onnx file, or Hugging Face Hub id (from the "
                                 "HF cache, else downloaded; cache only if HF_HUB_OFFLINE=1)")
    p.add_argument("-o", "--output", type=Path, help="artefact folder (default: NAME.cerb)")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.add_argument("--fhe", action="store_true",
                   help="also compile the concrete-python server programs and client specs")
    p.add_argument("--linear-backend", choices=("lwe", "packed", "auto"),
                   default=DEFAULTS.linear_backend,
                   help="hybrid --fhe: lwe (concrete, one ciphertext per value), packed "
                        "(BFV, many values per ciphertext, no evaluation keys) or auto: the "
                        "cheapest exact one per linear on the link below (default auto)")
    p.add_argument("--link-mbps", type=float, default=DEFAULTS.link_mbps,
                   help="the client's bandwidth auto prices bytes at (default 100)")
    p.add_argument("--rtt-ms", type=float, default=DEFAULTS.rtt_ms,
                   help="the round-trip time auto adds per call (default 20)")
    q = p.add_argument_group("quantization (C4)")
    q.add_argument("--partition", choices=("hybrid", "full"), default=DEFAULTS.partition,
                   help="hybrid: only linears under FHE, the client computes norms/softmax/GELU "
                        "(default); full: whole blocks under FHE")
    q.add_argument("--bits", type=int, default=DEFAULTS.bits,
                   help="width of values entering encrypted products, 2..8 (default 8)")
    q.add_argument("--weight-bits", type=int, help="weight width, 2..8 (default: --bits)")
    q.add_argument("--wide-bits", type=int, default=DEFAULTS.wide_bits,
                   help="width of lookup outputs that feed only leveled ops (default 12)")
    q.add_argument("--max-lookup-bits", type=int, default=DEFAULTS.max_lookup_bits,
                   help="widest table-lookup input after round_bit_pattern (default 8)")
    q.add_argument("--no-per-channel", dest="per_channel", action="store_false",
                   help="full partition: one rescale per tensor instead of per channel "
                        "(narrower accumulators, so larger blocks fit concrete)")
    q.add_argument("--act-scale", choices=("token", "tensor"), default=DEFAULTS.act_scale,
                   help="hybrid: the client quantizes each row with its own max |x| (token, "
                        "default) or one calibrated scale per tensor")
    q.add_argument("--smooth", type=float, default=DEFAULTS.smooth, metavar="ALPHA",
                   help="hybrid: SmoothQuant α balancing activation outlier channels into "
                        "the miner's weights (default 0.5; needs --act-scale token)")
    q.add_argument("--no-smooth", dest="smooth", action="store_const", const=None,
                   help="hybrid: no smoothing")
    q.add_argument("--adaptive", action="store_true",
                   help="paper §5 adaptive dynamic quantization of the client's input "
                        "(L=256, T=0.1, α=0.5)")
    q.add_argument("--qat-steps", type=int, default=0,
                   help="quantization-aware fine-tuning steps (paper §7.2.2; default 0 = off)")
    q.add_argument("--qat-lr", type=float, default=DEFAULTS.qat_lr, help="QAT learning rate")
    s = p.add_argument_group("squeezing (C2, C3)")
    s.add_argument("--theta", type=float, default=DEFAULTS.theta,
                   help="keep only heads with significance S(h) > θ (default: no threshold)")
    s.add_argument("--budget", type=float, metavar="C_MAX",
                   help="FHE cost budget in estimated seconds per sequence (default: none)")
    s.add_argument("--significance", choices=("gradient", "fisher", "ablation"),
                   default=DEFAULTS.significance,
                   help="head score: masked-loss change (ablation, default), Michel |dL/dξ| "
                        "(gradient) or Fisher E[(dL/dξ)²]")
    s.add_argument("--strategy", choices=("significance", "random", "magnitude"),
                   default=DEFAULTS.strategy, help="head selection (baselines for ablations)")
    c = p.add_argument_group("calibration")
    c.add_argument("--calibration", type=Path, metavar="FILE",
                   help="text file for significance and ranges (default: built-in prose)")
    c.add_argument("--seq-len", type=int, default=DEFAULTS.seq_len,
                   help="sequence length the circuit is compiled for (default 16)")
    c.add_argument("--seed", type=int, default=DEFAULTS.seed, help="seed (default 0)")


def run(args: argparse.Namespace) -> int:
    opts = CompileOptions(
        bits=args.bits, weight_bits=args.weight_bits, wide_bits=args.wide_bits,
        max_lookup_bits=args.max_lookup_bits, seq_len=args.seq_len, theta=args.theta,
        budget=args.budget, significance=args.significance, strategy=args.strategy,
        qat_steps=args.qat_steps, qat_lr=args.qat_lr, adaptive=args.adaptive,
        calibration=args.calibration, seed=args.seed, partition=args.partition, fhe=args.fhe,
        per_channel=args.per_channel, act_scale=args.act_scale, smooth=args.smooth,
        linear_backend=args.linear_backend, link_mbps=args.link_mbps, rtt_ms=args.rtt_ms,
    )
    path, digest, m = compile_model(args.model, args.output, opts, force=args.force)
    fuse = m["fusion"]
    kept = m["squeeze"]["heads_kept"]
    print(f"wrote {path}")
    print(f"  sha256         {digest}")
    cfg, sq = m["model_config"], m["squeeze"]
    print(f"  heads kept     {sum(map(len, kept))}/{cfg['n_layer'] * cfg['n_head']}  {kept}")
    cost = m["cost_estimate"]
    if cost["partition"] == "hybrid":
        others = ", ".join(f"{b} {v:.3g} s" for b, v in sorted(cost["seconds_if_all"].items()))
        print(f"  cost estimate  {cost['seconds']:.3g} s per {cost['per']} "
              f"({'+'.join(cost['backends'])}, {(cost['bytes_up'] + cost['bytes_down']) / 1e6:.2f}"
              f" MB, {cost['round_trips']} round trips at {cost['link']['mbps']:g} Mbit/s, "
              f"{cost['link']['rtt_ms']:g} ms; all on one backend: {others})")
    else:
        print(f"  cost estimate  {sq['cost_before_s']:.4g} s → {sq['cost_after_s']:.4g} s per "
              "sequence (full partition, squeezed)")
    part = m["partition"]
    print(f"  partition      {part['mode']}: the miner runs {', '.join(part['miner'])}")
    print(f"  full circuit   FHE ops {fuse['before']['fhe_ops']} → {fuse['after']['fhe_ops']} "
          f"(lookups {fuse['before']['lookups']} → {fuse['after']['lookups']}, "
          f"PBS {fuse['before']['pbs']} → {fuse['after']['pbs']})")
    print(f"  lookup widths  {fuse['after']['lookup_width_histogram']} (bits: count)")
    print(f"  fidelity       {m['fidelity']}")
    if m.get("fhe"):
        for backend in sorted({p["backend"] for p in m["fhe"].values()}):
            progs = [p for p in m["fhe"].values() if p["backend"] == backend]
            if backend == "packed":
                t_bits = max(p["packed"]["t_bits"] for p in progs)
                print(f"  FHE programs   {len(progs)} packed (BFV N="
                      f"{progs[0]['packed']['poly_degree']}, widest accumulator {t_bits} "
                      "bits, no evaluation keys)")
            else:
                pbs = sum(p.get("pbs", 0) for p in progs)
                widest = max(p.get("max_bits", 0) for p in progs)
                print(f"  FHE programs   {len(progs)} lwe in {path / 'miner' / 'fhe'} "
                      f"({pbs} PBS, widest {widest} bits)")
    return 0
