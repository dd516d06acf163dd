"""``cerberus bench``: an artefact measured end to end through a real miner (SPEC R4).

Every number comes from the path a user takes: a ``MinerClient`` generates its keys in a
fresh cache (so keygen is cold), uploads them over gRPC and generates greedily under real
encryption. Next to it, two references in the clear:

- the bit-exact simulator (``Artefact.generate``): the encrypted tokens must equal its
  tokens, otherwise the circuit or the runtime is wrong (not merely imprecise);
- the float source model the artefact was compiled from: top-1 agreement of each
  encrypted next-token prediction with the float model's prediction on the same window,
  i.e. what quantization and squeezing cost at this width.

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
from collections.abc import Iterator, Sequence
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
    if not (path / "fhe").is_dir():
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


def recompile(art: Artefact, source: Path, bits: int, dest: Path) -> Path:
    """The artefact's source compiled again at ``bits``, every other option as recorded."""
    from cerberus.compile import CompileOptions, compile_model

    recorded = art.manifest.get("options", {})
    known = {f.name for f in fields(CompileOptions)}
    kw = {k: v for k, v in recorded.items() if k in known}
    if kw.get("calibration"):
        kw["calibration"] = Path(kw["calibration"])
    opts = replace(CompileOptions(**kw), bits=bits, fhe=True,
                   seq_len=int(art.manifest["seq_len"]), partition=art.partition)
    out = dest / f"w{bits}.cerb"
    log.info("compiling %s at %d bits (%s partition, seq_len %d) into %s", source, bits,
             opts.partition, opts.seq_len, out)
    compile_model(source, out, opts, force=True)
    return out


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
def _summary(xs: Sequence[float]) -> dict[str, float]:
    a = np.asarray(xs, dtype=np.float64)
    return {"mean": float(a.mean()), "p50": float(np.percentile(a, 50)),
            "p95": float(np.percentile(a, 95)), "min": float(a.min()), "max": float(a.max())}


def float_next(reference: Any, art: Artefact, ids: list[int]) -> int:
    """The float model's next token after ``ids``, on the same window the circuit sees."""
    window, pos = art.window(ids)
    with torch.no_grad():
        return int(reference(window)[0, pos].argmax())


def bench_one(art: Artefact, address: str, reference: Any, prompts: Sequence[str],
              tokens: int, *, timeout: float = 600.0) -> dict[str, Any]:
    """Keygen, upload and ``tokens`` encrypted tokens per prompt through the miner at
    ``address``; every token is checked against the simulator and the float model."""
    from runtime.client import MinerClient

    if art.tokenizer is None:
        raise CerberusError(f"{art.path} has no tokenizer: bench needs text prompts")
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
        log.info("%d-bit: keygen %.1f s, upload %.1f MB in %.2f s", art.manifest[
            "quantization"]["bits"], keygen_s, key_bytes / 1e6, upload_s)

        seconds: list[float] = []
        server_ms = 0.0
        sent = received = 0
        sim_seconds = 0.0
        agree = steps = 0
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
            floats = [float_next(reference, art, ids + out.ids[:k]) for k in range(tokens)]
            agree += sum(int(a == b) for a, b in zip(out.ids, floats, strict=True))
            steps += tokens
            seconds += out.token_seconds
            server_ms += out.server_ms
            sent += out.bytes_sent
            received += out.bytes_received
            generations.append({
                "prompt": prompt, "encrypted_ids": out.ids, "simulator_ids": sim,
                "float_next_ids": floats, "text": art.tokenizer.decode(out.ids),
                "equals_simulator": out.ids == sim})
    n = len(seconds)
    q = art.manifest["quantization"]
    return {
        "width": int(q["bits"]),
        "artefact": str(art.path),
        "artefact_sha256": art.sha256,
        "partition": art.partition,
        "seq_len": int(art.manifest["seq_len"]),
        # the widths the circuit was compiled with (per-node lookup widths are the full
        # graph's; in the hybrid partition the miner runs only the linears)
        "quantization": {k: q.get(k) for k in ("bits", "weight_bits", "wide_bits",
                                               "max_lookup_bits")},
        "programs": len(list((art.path / "fhe").glob("*/server.zip"))),
        "keygen_s": keygen_s,
        "key_bytes": key_bytes,
        "upload_s": upload_s,
        "upload_bytes": key_bytes,
        "tokens": n,
        "latency_s": _summary(seconds),
        "tokens_per_s": n / sum(seconds),
        "server_ms_per_token": server_ms / n,
        "ciphertext_mb_per_token": {"sent": sent / n / 1e6, "received": received / n / 1e6,
                                    "total": (sent + received) / n / 1e6},
        "simulator_ms_per_token": 1000 * sim_seconds / n,
        "equals_simulator": all(g["equals_simulator"] for g in generations),
        "fidelity": {"top1_vs_float": agree / steps, "steps": steps,
                     "compile_held_out": art.manifest.get("fidelity")},
        "generations": generations,
    }


def run_bench(artefact: Path, *, miner: str | None = None, tokens: int = 4,
              prompts: Sequence[str] = DEFAULT_PROMPTS, widths: Sequence[int] | None = None,
              source: Path | None = None, timeout: float = 600.0) -> dict[str, Any]:
    """The whole benchmark: one row per width (default: the artefact's own width).

    The artefact's own width runs on ``miner`` if given, else on an in-process miner;
    other widths are compiled into a temporary folder and served in-process.
    """
    if tokens < 1:
        raise CerberusError("--tokens must be at least 1")
    if not prompts:
        raise CerberusError("no prompts")
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
            log.info("benchmarking %d-bit artefact %s", w, target.sha256[:16])
            if w == own and miner is not None:
                row = bench_one(target, miner, reference, prompts, tokens, timeout=timeout)
                row["miner"] = miner
            else:
                with in_process_miner(target.path) as address:
                    row = bench_one(target, address, reference, prompts, tokens,
                                    timeout=timeout)
                row["miner"] = "in-process"
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
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version()},
        "seconds": time.perf_counter() - t_all,
        "runs": rows,
    }


# -- reporting ---------------------------------------------------------------------------
COLUMNS = ("bits", "keygen s", "eval keys", "upload s", "s/token", "p50", "p95", "tok/s",
           "miner ms/tok", "ct MB/tok", "top-1 vs float", "= simulator")


def human_bytes(n: float) -> str:
    """768 B, 4.9 GB: key sizes span nine orders of magnitude across partitions."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _cells(report: dict[str, Any]) -> list[tuple[str, ...]]:
    """The header and one row of formatted cells per width."""
    rows: list[tuple[str, ...]] = [COLUMNS]
    for r in report["runs"]:
        lat = r["latency_s"]
        rows.append((str(r["width"]), f"{r['keygen_s']:.2f}", human_bytes(r["key_bytes"]),
                     f"{r['upload_s']:.2f}", f"{lat['mean']:.2f}", f"{lat['p50']:.2f}",
                     f"{lat['p95']:.2f}", f"{r['tokens_per_s']:.3f}",
                     f"{r['server_ms_per_token']:.0f}",
                     f"{r['ciphertext_mb_per_token']['total']:.2f}",
                     f"{100 * r['fidelity']['top1_vs_float']:.0f}% "
                     f"({r['fidelity']['steps']})",
                     "yes" if r["equals_simulator"] else "NO"))
    return rows


def table(report: dict[str, Any]) -> str:
    """A plain-text table, one row per width."""
    rows = _cells(report)
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(report: dict[str, Any]) -> str:
    """The same table in Markdown (for benchmarks/RESULTS.md)."""
    rows = _cells(report)
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    out += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return "\n".join(out)


def write_json(report: dict[str, Any], path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def plot(report: dict[str, Any], path: Path) -> Path:
    """PNG: per-token latency (mean, p50–p95 band) and top-1 agreement vs. lookup width."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    runs = sorted(report["runs"], key=lambda r: r["width"])
    w = [r["width"] for r in runs]
    mean = [r["latency_s"]["mean"] for r in runs]
    p50 = [r["latency_s"]["p50"] for r in runs]
    p95 = [r["latency_s"]["p95"] for r in runs]
    fig = Figure(figsize=(6.4, 4.2), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(w, mean, "o-", color="tab:blue", label="mean s/token")
    ax.fill_between(w, p50, p95, color="tab:blue", alpha=0.2, label="p50–p95")
    ax.set_xlabel("lookup / activation width (bits)")
    ax.set_ylabel("seconds per token (encrypted)")
    ax.set_xticks(w)
    ax.set_ylim(bottom=0)
    ax2 = ax.twinx()
    ax2.plot(w, [100 * r["fidelity"]["top1_vs_float"] for r in runs], "s--",
             color="tab:orange", label="top-1 vs float (%)")
    ax2.set_ylabel("top-1 agreement with float model (%)")
    ax2.set_ylim(0, 105)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="best", fontsize=8)
    art = report["artefact"]
    ax.set_title(f"cerberus bench: {Path(art['path']).name} ({art['partition']}, "
                 f"seq_len {art['seq_len']}, {report['tokens_per_prompt']} tok × "
                 f"{len(report['prompts'])} prompts)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


__all__ = ["DEFAULT_PROMPTS", "bench_one", "check_miner", "check_widths", "float_reference",
           "in_process_miner", "markdown_table", "open_artefact", "plot", "read_prompts",
           "recompile", "run_bench", "table", "write_json"]
