"""``cerberus bench``: an artefact measured end to end through a real miner (SPEC R4).

Every number comes from the path a user takes: a ``MinerClient`` generates its keys in a
fresh cache (so keygen is cold), uploads them over gRPC and generates greedily under real
encryption, KV-cached in the hybrid partition (the first step carries the prompt's rows:
the prefill; each later token one row per program). Reported apart (issue #13):

- key generation and upload (bytes and seconds), paid once per client and miner;
- the prefill: bytes up and down, round trips, seconds;
- per generated token: bytes up and down, round trips, the miner's milliseconds, and
  per program (one fused linear: q·k·v, o, fc1, fc2) and per layer the miner's and the
  round trip's milliseconds;
- **s/token** = loopback wall time + bytes ÷ link rate + round trips × RTT (default 100
  Mbit/s = 12.5 MB/s and 20 ms: ``--link-mbps``, ``--rtt-ms``), median and p95 over every
  generated token, the prefill included in the first (bytes are the ciphertexts both
  ways; gRPC framing is not counted).

Next to it, references in the clear:

- the bit-exact simulator (``Artefact.generate``): the encrypted tokens must equal its
  tokens, otherwise the circuit or the runtime is wrong (not merely imprecise);
- the float source model the artefact was compiled from: top-1 agreement of each
  encrypted next-token prediction with the float model's prediction on the same context
  (hybrid: the whole sequence so far, as the KV cache holds it; full: the circuit's window),
  i.e. what quantization and squeezing cost at this width;
- the unsqueezed baseline: the same source compiled at the same width with every head
  kept (the artefact itself when its squeeze removed none), simulated: top-1 agreement
  with it isolates what squeezing cost.

With several widths the artefact's source is recompiled at each lookup/activation width
(same options otherwise) and each gets its own in-process miner, so latency and fidelity
can be compared against width.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cerberus.artefact import Artefact, load_artefact
from cerberus.errors import CerberusError
from cerberus.paths import shipped_prompts

log = logging.getLogger("runtime.bench")

DEFAULT_PROMPTS = shipped_prompts()[:2]
MIN_BITS, MAX_BITS = 2, 8  # what CompileOptions accepts for --bits


# -- inputs ------------------------------------------------------------------------------
def open_artefact(path: Path) -> Artefact:
    """Load an artefact that can be served: it must exist, verify, and have FHE programs."""
    path = Path(path)
    if not path.is_dir():
        raise CerberusError(f"no artefact at {path}")
    art = load_artefact(path)
    if not art.manifest.get("fhe"):
        raise CerberusError(f"{path} has no FHE programs: compile it with --fhe to bench it")
    return art


def check_widths(widths: Sequence[int]) -> list[int]:
    """Widths as given, each a width the compiler accepts, none twice."""
    out = [int(w) for w in widths]
    bad = [w for w in out if not MIN_BITS <= w <= MAX_BITS]
    if bad:
        raise CerberusError(f"widths must be in {MIN_BITS}..{MAX_BITS}, got {bad}")
    if len(set(out)) != len(out):
        raise CerberusError(f"widths repeat: {out}")
    if not out:
        raise CerberusError("--widths needs at least one width")
    return out


def read_prompts(path: Path) -> list[str]:
    """One prompt per non-empty line."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise CerberusError(f"cannot read prompts from {path}: {e.strerror}") from e
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise CerberusError(f"{path} holds no prompts (one per line)")
    return prompts


def source_candidates(manifest: dict[str, Any]) -> list[Path]:
    """Where the artefact's source model may be: the manifest records its name and hash only.

    A Hugging Face folder is recorded by its folder name; it is looked for as given
    (relative to the working directory) and among the shipped models.
    """
    from cerberus.paths import MODELS_DIR

    src = manifest.get("source", {})
    name = src.get("name")
    if src.get("kind") != "huggingface" or not name:
        return []
    return [p for p in (Path(name), MODELS_DIR / name) if (p / "config.json").is_file()]


def float_reference(manifest: dict[str, Any], source: Path | None = None) -> tuple[Any, Path]:
    """The float source model (as compile loaded it, before any pass) and where it lives.

    Its hash must equal the one in the manifest: fidelity against another model would be
    meaningless. The candidates are local folders; a ``--source`` that is none is a Hub id,
    resolved as every compile source is (``cerberus.frontends.hub``).
    """
    from cerberus.compile import load_source

    want = manifest.get("source", {}).get("sha256")
    candidates = [Path(source)] if source is not None else source_candidates(manifest)
    if not candidates:
        raise CerberusError(
            f"cannot find the float source model {manifest.get('source', {}).get('name')!r} "
            "of this artefact; pass --source PATH")
    for path in candidates:
        model, _, info = load_source(path)
        if want is None or info["sha256"] == want:
            return model.eval(), path
        log.warning("%s is not this artefact's source (hash %s, want %s)", path,
                    info["sha256"][:16], want[:16])
    raise CerberusError(f"no candidate source model matches the artefact's source hash "
                        f"{want[:16]} (tried {', '.join(map(str, candidates))}); pass --source")


def recompile(art: Artefact, source: Path, bits: int, dest: Path, *, fhe: bool = True,
              squeeze: bool = True) -> Path:
    """The artefact's source compiled again at ``bits``, every other option as recorded;
    without ``squeeze`` every head is kept (no threshold, no budget)."""
    from cerberus.compile import CompileOptions, compile_model

    recorded = art.manifest.get("options", {})
    known = {f.name for f in fields(CompileOptions)}
    kw = {k: v for k, v in recorded.items() if k in known}
    if kw.get("calibration"):
        kw["calibration"] = Path(kw["calibration"])
    opts = replace(CompileOptions(**kw), bits=bits, fhe=fhe,
                   seq_len=int(art.manifest["seq_len"]), partition=art.partition)
    if not squeeze:
        opts = replace(opts, theta=None, budget=None)
    out = dest / (f"w{bits}.cerb" if squeeze else f"w{bits}-unsqueezed.cerb")
    log.info("compiling %s at %d bits (%s partition, seq_len %d) into %s", source, bits,
             opts.partition, opts.seq_len, out)
    compile_model(source, out, opts, force=True)
    return out


def squeezed(art: Artefact) -> bool:
    """Whether the artefact's squeeze removed any head."""
    return any(art.manifest.get("squeeze", {}).get("heads_removed") or [])


def unsqueezed_baseline(art: Artefact, source: Path, dest: Path) -> tuple[Artefact, str]:
    """The reference that isolates squeezing: the artefact itself when no head was removed,
    else its source recompiled at its width with every head kept (in the clear)."""
    if not squeezed(art):
        return art, "the artefact itself (its squeeze removed no head)"
    bits = int(art.manifest["quantization"]["bits"])
    path = recompile(art, source, bits, dest, fhe=False, squeeze=False)
    return load_artefact(path), f"recompiled at {bits} bits with every head kept"


# -- a miner -----------------------------------------------------------------------------
@contextmanager
def in_process_miner(path: Path) -> Iterator[str]:
    """A real gRPC miner for ``path`` on 127.0.0.1 (a free port), stopped on exit."""
    from runtime.server import MinerService, start

    service = MinerService(path)
    server, port = start(service, "127.0.0.1", 0)
    log.info("in-process miner for %s on 127.0.0.1:%d", path.name, port)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=5).wait()
        service.close()


def check_miner(address: str, art: Artefact, timeout: float) -> None:
    """The miner at ``address`` answers and serves ``art`` (else a one-line error)."""
    from runtime.client import MinerClient

    with MinerClient(address, artefact=art.path, timeout=timeout) as client:
        _ = client.artefact  # Info, then the sha256 comparison with the local copy


# -- measuring ---------------------------------------------------------------------------
DEFAULT_LINK_MBPS = 100.0  # the link: 100 Mbit/s = 12.5 MB/s …
DEFAULT_RTT_MS = 20.0  # … and 20 ms per round trip


def _summary(xs: Sequence[float]) -> dict[str, float]:
    a = np.asarray(xs, dtype=np.float64)
    return {"mean": float(a.mean()), "p50": float(np.percentile(a, 50)),
            "p95": float(np.percentile(a, 95)), "min": float(a.min()), "max": float(a.max())}


def link_seconds(wall_s: float, nbytes: int, round_trips: int, *,
                 link_mbps: float = DEFAULT_LINK_MBPS, rtt_ms: float = DEFAULT_RTT_MS) -> float:
    """Loopback wall time plus what a real link adds: bytes at ``link_mbps`` megabits per
    second and ``rtt_ms`` per round trip."""
    return wall_s + nbytes / (link_mbps * 1e6 / 8) + round_trips * rtt_ms / 1e3


def next_ids(logits: Callable[[torch.Tensor], torch.Tensor], art: Artefact, ids: list[int],
             new: list[int]) -> list[int]:
    """The next token ``logits`` predicts after ``ids + new[:k]`` for each k, on the context
    the circuit sees: hybrid, the whole sequence so far (the KV cache; one causal pass
    gives every position); full, the circuit's fixed window."""
    with torch.no_grad():
        if art.partition == "hybrid":
            seq = logits(torch.tensor([ids + new[:-1]]))[0]
            return [int(seq[len(ids) - 1 + k].argmax()) for k in range(len(new))]
        out = []
        for k in range(len(new)):
            window, pos = art.window(ids + new[:k])
            out.append(int(logits(window)[0, pos].argmax()))
        return out


def float_next(reference: Any, art: Artefact, ids: list[int]) -> int:
    """The float model's next token after ``ids``, on the context the circuit sees."""
    return next_ids(reference, art, ids, [0])[0]


def _layer(program: str) -> str:
    """``blocks.3.fc1`` → ``blocks.3``; the full partition's one program is every layer."""
    parts = program.split(".")
    return ".".join(parts[:2]) if len(parts) >= 3 and parts[0] == "blocks" else program


def _per_program(steps: Sequence[Any]) -> dict[str, dict[str, float]]:
    """Per program, the mean over ``steps`` of its rows, round trips, the miner's ms and the
    round trips' wall ms (send to reply) in one step."""
    if not steps:
        return {}
    names = sorted({p for s in steps for p in s.programs})
    out = {}
    for name in names:
        calls = [s.programs.get(name, []) for s in steps]
        out[name] = {"rows": sum(r for c in calls for r, _, _ in c) / len(steps),
                     "round_trips": sum(len(c) for c in calls) / len(steps),
                     "server_ms": sum(m for c in calls for _, m, _ in c) / len(steps),
                     "wall_ms": sum(w for c in calls for _, _, w in c) / len(steps)}
    return out


def _per_layer(per_program: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name, row in per_program.items():
        acc = out.setdefault(_layer(name), {"server_ms": 0.0, "wall_ms": 0.0, "programs": 0})
        acc["server_ms"] += row["server_ms"]
        acc["wall_ms"] += row["wall_ms"]
        acc["programs"] += 1
    return out


def _traffic(steps: Sequence[Any], seconds: Sequence[float]) -> dict[str, Any] | None:
    """Means per step of bytes, round trips, miner ms and wall seconds (None: no step)."""
    if not steps:
        return None
    n = len(steps)
    return {"steps": n,
            "bytes_sent": sum(s.bytes_sent for s in steps) / n,
            "bytes_received": sum(s.bytes_received for s in steps) / n,
            "mb": sum(s.bytes_sent + s.bytes_received for s in steps) / n / 1e6,
            "round_trips": sum(s.round_trips for s in steps) / n,
            "server_ms": sum(s.server_ms for s in steps) / n,
            "wall_s": sum(seconds) / n}


def bench_one(art: Artefact, address: str, reference: Any, prompts: Sequence[str],
              tokens: int, *, timeout: float = 600.0, baseline: Artefact | None = None,
              link_mbps: float = DEFAULT_LINK_MBPS,
              rtt_ms: float = DEFAULT_RTT_MS) -> dict[str, Any]:
    """Keygen, upload and ``tokens`` encrypted tokens per prompt through the miner at
    ``address``; every token is checked against the simulator, the float model and the
    unsqueezed ``baseline`` (default: the artefact itself)."""
    from runtime.client import MinerClient

    if art.tokenizer is None:
        raise CerberusError(f"{art.path} has no tokenizer: bench needs text prompts")
    baseline = baseline if baseline is not None else art
    link = {"link_mbps": link_mbps, "rtt_ms": rtt_ms}
    with tempfile.TemporaryDirectory(prefix="cerberus-bench-keys-") as cache, \
            MinerClient(address, artefact=art.path, cache_dir=Path(cache),
                        timeout=timeout) as client:
        _ = client.artefact  # Info + sha256 check: the miner must serve this artefact
        t0 = time.perf_counter()
        client.keygen()
        keygen_s = time.perf_counter() - t0
        key_bytes = client.key_bytes()
        t0 = time.perf_counter()
        client.upload_keys()
        upload_s = time.perf_counter() - t0
        log.info("%d-bit: keygen %.2f s, upload %s in %.2f s", art.manifest[
            "quantization"]["bits"], keygen_s, human_bytes(key_bytes), upload_s)

        seconds: list[float] = []
        steps: list[Any] = []
        first_steps: list[Any] = []  # the prefill (and the first token)
        first_seconds: list[float] = []
        later_steps: list[Any] = []  # one generated token each
        later_seconds: list[float] = []
        sim_seconds = 0.0
        agree = agree_base = base_float = n_steps = 0
        generations = []
        for prompt in prompts:
            ids = art.tokenizer(prompt).input_ids
            if not ids:
                raise CerberusError(f"prompt {prompt!r} has no tokens")
            out = client.generate(ids, tokens, on_token=lambda tok, s: log.info(
                "  token %d in %.2f s", tok, s))
            t0 = time.perf_counter()
            sim = art.generate(ids, tokens)
            sim_seconds += time.perf_counter() - t0
            floats = next_ids(reference, art, ids, out.ids)
            base = next_ids(baseline.logits, baseline, ids, out.ids)
            agree += sum(int(a == b) for a, b in zip(out.ids, floats, strict=True))
            agree_base += sum(int(a == b) for a, b in zip(out.ids, base, strict=True))
            base_float += sum(int(a == b) for a, b in zip(base, floats, strict=True))
            n_steps += tokens
            seconds += out.token_seconds
            steps += out.steps
            first_steps.append(out.steps[0])
            first_seconds.append(out.token_seconds[0])
            later_steps += out.steps[1:]
            later_seconds += out.token_seconds[1:]
            generations.append({
                "prompt": prompt, "prompt_tokens": len(ids), "encrypted_ids": out.ids,
                "simulator_ids": sim, "float_next_ids": floats, "unsqueezed_next_ids": base,
                "text": art.tokenizer.decode(out.ids), "equals_simulator": out.ids == sim,
                "steps": [{"wall_s": t, "server_ms": st.server_ms,
                           "bytes_sent": st.bytes_sent, "bytes_received": st.bytes_received,
                           "round_trips": st.round_trips}
                          for t, st in zip(out.token_seconds, out.steps, strict=True)]})
    n = len(seconds)
    sent = sum(st.bytes_sent for st in steps)
    received = sum(st.bytes_received for st in steps)
    linked = [link_seconds(t, st.bytes_sent + st.bytes_received, st.round_trips, **link)
              for t, st in zip(seconds, steps, strict=True)]
    per_token = _traffic(later_steps, later_seconds)
    if per_token is not None:
        per_token["s_link"] = _summary([
            link_seconds(t, st.bytes_sent + st.bytes_received, st.round_trips, **link)
            for t, st in zip(later_seconds, later_steps, strict=True)])
    prefill = _traffic(first_steps, first_seconds)
    assert prefill is not None
    prefill["s_link"] = _summary([
        link_seconds(t, st.bytes_sent + st.bytes_received, st.round_trips, **link)
        for t, st in zip(first_seconds, first_steps, strict=True)])
    prefill["prompt_tokens"] = sum(g["prompt_tokens"] for g in generations) / len(generations)
    programs = _per_program(later_steps)
    q = art.manifest["quantization"]
    return {
        "width": int(q["bits"]),
        "artefact": str(art.path),
        "artefact_sha256": art.sha256,
        "partition": art.partition,
        "seq_len": int(art.manifest["seq_len"]),
        "context": int(art.manifest["model_config"]["n_positions"]),
        # the widths the circuit was compiled with (per-node lookup widths are the full
        # graph's; in the hybrid partition the miner runs only the linears)
        "quantization": {k: q.get(k) for k in ("bits", "weight_bits", "wide_bits",
                                               "max_lookup_bits")},
        "programs": len(art.programs),
        # paid once per client and miner, not per token
        "keygen_s": keygen_s,
        "key_bytes": key_bytes,
        "upload_s": upload_s,
        "upload_bytes": key_bytes,
        "link": link,
        "tokens": n,
        # every generated token, the first one's step carrying the prefill
        "latency_s": _summary(seconds),
        "tokens_per_s": n / sum(seconds),
        "s_per_token": _summary(linked),
        "server_ms_per_token": sum(st.server_ms for st in steps) / n,
        "round_trips_per_token": sum(st.round_trips for st in steps) / n,
        "ciphertext_mb_per_token": {"sent": sent / n / 1e6, "received": received / n / 1e6,
                                    "total": (sent + received) / n / 1e6},
        # apart: the prefill (first step) and the tokens after it (one row per program)
        "prefill": prefill,
        "per_token": per_token,
        "per_program": programs,
        "per_layer": _per_layer(programs),
        "prefill_per_program": _per_program(first_steps),
        "simulator_ms_per_token": 1000 * sim_seconds / n,
        "equals_simulator": all(g["equals_simulator"] for g in generations),
        "fidelity": {"top1_vs_float": agree / n_steps,
                     "top1_vs_unsqueezed": agree_base / n_steps,
                     "unsqueezed_top1_vs_float": base_float / n_steps,
                     "steps": n_steps,
                     "heads_kept": sum(map(len, art.manifest["model_config"]["heads_kept"])),
                     "heads": int(art.manifest["model_config"]["n_head"])
                     * int(art.manifest["model_config"]["n_layer"]),
                     "compile_held_out": art.manifest.get("fidelity")},
        "generations": generations,
    }


def run_bench(artefact: Path, *, miner: str | None = None, tokens: int = 4,
              prompts: Sequence[str] = DEFAULT_PROMPTS, widths: Sequence[int] | None = None,
              source: Path | None = None, timeout: float = 600.0,
              link_mbps: float = DEFAULT_LINK_MBPS,
              rtt_ms: float = DEFAULT_RTT_MS) -> dict[str, Any]:
    """The whole benchmark: one row per width (default: the artefact's own width).

    The artefact's own width runs on ``miner`` if given, else on an in-process miner;
    other widths are compiled into a temporary folder and served in-process.
    """
    if tokens < 1:
        raise CerberusError("--tokens must be at least 1")
    if not prompts:
        raise CerberusError("no prompts")
    if not link_mbps > 0 or not rtt_ms >= 0:
        raise CerberusError(f"the link needs --link-mbps > 0 and --rtt-ms ≥ 0, got "
                            f"{link_mbps} and {rtt_ms}")
    art = open_artefact(artefact)
    own = int(art.manifest["quantization"]["bits"])
    widths = check_widths(widths) if widths is not None else [own]
    if miner is not None and own in widths:
        check_miner(miner, art, timeout)  # before minutes of loading and compiling
    reference, source_path = float_reference(art.manifest, source)
    log.info("float reference: %s", source_path)
    rows = []
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cerberus-bench-") as tmp:
        for w in widths:
            compile_s = None
            if w == own:
                target = art
            else:
                t0 = time.perf_counter()
                target = load_artefact(recompile(art, source_path, w, Path(tmp)))
                compile_s = time.perf_counter() - t0
            baseline, how = unsqueezed_baseline(target, source_path, Path(tmp))
            log.info("benchmarking %d-bit artefact %s", w, target.sha256[:16])
            kw = {"timeout": timeout, "baseline": baseline, "link_mbps": link_mbps,
                  "rtt_ms": rtt_ms}
            if w == own and miner is not None:
                row = bench_one(target, miner, reference, prompts, tokens, **kw)
                row["miner"] = miner
            else:
                with in_process_miner(target.path) as address:
                    row = bench_one(target, address, reference, prompts, tokens, **kw)
                row["miner"] = "in-process"
            row["fidelity"]["unsqueezed_baseline"] = how
            if compile_s is not None:
                row["artefact"] = f"(recompiled at {w} bits, temporary)"
            row["compile_s"] = compile_s
            rows.append(row)
    return {
        "artefact": {"path": str(art.path), "sha256": art.sha256, "width": own,
                     "partition": art.partition, "seq_len": int(art.manifest["seq_len"])},
        "source": {**art.manifest.get("source", {}), "path": str(source_path)},
        "tokens_per_prompt": tokens,
        "prompts": list(prompts),
        "link": {"link_mbps": link_mbps, "rtt_ms": rtt_ms},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version()},
        "seconds": time.perf_counter() - t_all,
        "runs": rows,
    }


# -- reporting ---------------------------------------------------------------------------
COLUMNS = ("bits", "keygen s", "eval keys", "upload s", "prefill MB", "prefill s", "MB/tok",
           "RT/tok", "miner ms/tok", "loopback s/tok", "s/tok p50", "s/tok p95",
           "s/tok p50 after prefill", "top-1 vs float", "vs unsqueezed", "= simulator")
PROGRAM_COLUMNS = ("bits", "program", "rows/tok", "RT/tok", "miner ms/tok", "wall ms/tok")


def human_bytes(n: float) -> str:
    """768 B, 4.9 GB: key sizes span nine orders of magnitude across partitions."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _cells(report: dict[str, Any]) -> list[tuple[str, ...]]:
    """The header and one row of formatted cells per width. Per token: the generated
    tokens after the first (the first step carries the prefill, reported apart); s/tok:
    every token, the prefill in the first, on the report's link; and after the prefill."""
    rows: list[tuple[str, ...]] = [COLUMNS]
    for r in report["runs"]:
        tok = r["per_token"] or r["prefill"]  # one token per prompt: only the prefill
        fid = r["fidelity"]
        rows.append((str(r["width"]), f"{r['keygen_s']:.2f}", human_bytes(r["key_bytes"]),
                     f"{r['upload_s']:.2f}", f"{r['prefill']['mb']:.1f}",
                     f"{r['prefill']['wall_s']:.2f}", f"{tok['mb']:.2f}",
                     f"{tok['round_trips']:.0f}", f"{tok['server_ms']:.0f}",
                     f"{r['latency_s']['p50']:.2f}", f"{r['s_per_token']['p50']:.2f}",
                     f"{r['s_per_token']['p95']:.2f}", f"{tok['s_link']['p50']:.2f}",
                     f"{100 * fid['top1_vs_float']:.0f}% ({fid['steps']})",
                     f"{100 * fid['top1_vs_unsqueezed']:.0f}%",
                     "yes" if r["equals_simulator"] else "NO"))
    return rows


def _program_cells(report: dict[str, Any]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = [PROGRAM_COLUMNS]
    for r in report["runs"]:
        for name, p in r["per_program"].items():
            rows.append((str(r["width"]), name, f"{p['rows']:.0f}", f"{p['round_trips']:.0f}",
                         f"{p['server_ms']:.1f}", f"{p['wall_ms']:.1f}"))
        for name, p in r["per_layer"].items():
            rows.append((str(r["width"]), f"{name} (layer)", "", "",
                         f"{p['server_ms']:.1f}", f"{p['wall_ms']:.1f}"))
    return rows


def _text(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _markdown(rows: list[tuple[str, ...]]) -> str:
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    out += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return "\n".join(out)


def table(report: dict[str, Any]) -> str:
    """A plain-text table, one row per width."""
    return _text(_cells(report))


def program_table(report: dict[str, Any]) -> str:
    """Per program (fused linear) and per layer, per generated token after the prefill:
    rows, round trips, the miner's ms and the round trips' wall ms."""
    return _text(_program_cells(report))


def markdown_table(report: dict[str, Any]) -> str:
    """The same table in Markdown (for benchmarks/RESULTS.md)."""
    return _markdown(_cells(report))


def markdown_program_table(report: dict[str, Any]) -> str:
    return _markdown(_program_cells(report))


def write_json(report: dict[str, Any], path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def plot(report: dict[str, Any], path: Path) -> Path:
    """PNG: s/token on the report's link (median, p50–p95 band) and top-1 agreement vs.
    lookup width."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    runs = sorted(report["runs"], key=lambda r: r["width"])
    w = [r["width"] for r in runs]
    p50 = [r["s_per_token"]["p50"] for r in runs]
    p95 = [r["s_per_token"]["p95"] for r in runs]
    loop = [r["latency_s"]["p50"] for r in runs]
    link = report.get("link", {"link_mbps": DEFAULT_LINK_MBPS, "rtt_ms": DEFAULT_RTT_MS})
    fig = Figure(figsize=(6.4, 4.2), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(w, p50, "o-", color="tab:blue",
            label=f"s/token, {link['link_mbps']:g} Mbit/s + {link['rtt_ms']:g} ms RTT (p50)")
    ax.fill_between(w, p50, p95, color="tab:blue", alpha=0.2, label="p50–p95")
    ax.plot(w, loop, "^:", color="tab:green", label="loopback s/token (p50)")
    ax.set_xlabel("lookup / activation width (bits)")
    ax.set_ylabel("seconds per token (encrypted)")
    ax.set_xticks(w)
    ax.set_ylim(bottom=0)
    ax2 = ax.twinx()
    ax2.plot(w, [100 * r["fidelity"]["top1_vs_float"] for r in runs], "s--",
             color="tab:orange", label="top-1 vs float (%)")
    ax2.plot(w, [100 * r["fidelity"]["top1_vs_unsqueezed"] for r in runs], "d--",
             color="tab:red", label="top-1 vs unsqueezed (%)")
    ax2.set_ylabel("top-1 agreement (%)")
    ax2.set_ylim(0, 105)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="best", fontsize=7)
    art = report["artefact"]
    ax.set_title(f"cerberus bench: {Path(art['path']).name} ({art['partition']}, "
                 f"{report['tokens_per_prompt']} tok × {len(report['prompts'])} prompts)",
                 fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


__all__ = ["DEFAULT_LINK_MBPS", "DEFAULT_PROMPTS", "DEFAULT_RTT_MS", "bench_one",
           "check_miner", "check_widths", "float_reference", "in_process_miner",
           "link_seconds", "markdown_program_table", "markdown_table", "next_ids",
           "open_artefact", "plot", "program_table", "read_prompts", "recompile", "run_bench",
           "squeezed", "table", "unsqueezed_baseline", "write_json"]
