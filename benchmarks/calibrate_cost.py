"""Calibrate the FHE cost model on real concrete-python circuits (SPEC C3, issue #5).

Why: the squeezing pass (``cerberus.passes.squeeze``) ranks thousands of head subsets with
``cerberus.cost`` instead of compiling each one, so its constants decide which heads survive.
They were seeded from four hand measurements in FHE_NOTES.md; this script compiles, keys and
runs a grid of tiny circuits on this machine and fits them by least squares:

* (a) univariate lookups ``fhe.univariate(f)(x)`` on n elements at input widths 3..8
  → seconds per PBS vs width, fitted as ``a · g^w`` in log space;
* (a') ``round_bit_pattern`` of a wide value before a lookup → PBS per element vs the number
  of removed lsbs (concrete 2.11 extracts the removed bits with extra bootstraps, which the
  model did not count; the fit is a proposal for the integer graph's accumulator rounding);
* (b) clear-weight linears (no PBS) of a few sizes and encrypted additions → seconds per MAC
  and per addition, fitted as ``overhead + count · s`` in linear space;
* (c) encrypted × encrypted products, element-wise and as a tiny matmul → PBS per product
  and the extra bits of their lookups (effective width from the fitted time law).

Times are medians of ``circuit.run`` (server side, what the miner pays). The fit uses its
process CPU time — the unit cost.py prices in, and robust to the other workers sharing this
2-core machine, which inflate wall-clock 2–3× at times; wall-clock and the load average are
recorded beside it, as are the deterministic statistics (PBS count, complexity, key sizes).

The fitted table goes to ``cerberus/cost_table.json`` (loaded by ``cerberus.cost``) and the
tables to RESULTS.md (key ``calibrate_cost``)::

    .venv/bin/python -m benchmarks.calibrate_cost            # full grid, ~10 min
    .venv/bin/python -m benchmarks.calibrate_cost --quick    # widths 3–6, one size, ~2 min
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.results import machine, write_json, write_section  # noqa: E402
from cerberus.cost import CostConstants  # noqa: E402

KEY = "calibrate_cost"
TABLE_PATH = ROOT / "cerberus" / "cost_table.json"
REF_BITS = 7  # keep cost.py's reference width so old and new tables compare directly


@dataclass(frozen=True)
class Spec:
    """One grid point. ``kind``: lookup | linear | add | mul | matmul.

    lookup: ``n`` elements of ``width + lsbs`` bits, ``lsbs`` removed by round_bit_pattern,
    then a lookup on ``width`` bits. linear: (n,) @ (n, m) clear weights on ``width``-bit
    inputs. add: n encrypted + encrypted. mul: n element-wise enc×enc products of ``width``-bit
    operands. matmul: (n, k) @ (k, m), both encrypted, ``width``-bit operands.
    """

    kind: str
    width: int
    n: int
    lsbs: int = 0
    k: int = 0
    m: int = 0
    approx: bool = False  # round_bit_pattern with fhe.Exactness.APPROXIMATE


    @property
    def label(self) -> str:
        if self.kind == "lookup":
            rnd = f" −{self.lsbs}lsb" + (" approx" if self.approx else "") if self.lsbs else ""
            return f"lookup w{self.width} n{self.n}{rnd}"
        if self.kind == "linear":
            return f"linear {self.n}×{self.m} w{self.width}"
        if self.kind == "matmul":
            return f"matmul {self.n}×{self.k}@{self.k}×{self.m} w{self.width}"
        return f"{self.kind} w{self.width} n{self.n}"


def grid(quick: bool) -> list[Spec]:
    """The grid. Keygen dominates (8-bit lookup ≈ 40 s here), so widths stop at 8 and
    tensors stay tiny; ``n`` is large enough at low widths that the per-run overhead
    (~0.1 s) does not swamp the PBS time."""
    if quick:
        specs = [Spec("lookup", w, 16) for w in range(3, 7)]
        specs += [Spec("lookup", 4, 4, lsbs=r) for r in (2, 4)]
        specs += [Spec("lookup", 4, 4, lsbs=4, approx=True)]
        specs += [Spec("linear", 4, s, m=s) for s in (16, 64)]
        specs += [Spec("add", 4, 256)]
        specs += [Spec("mul", w, 8) for w in (3, 4)]
        specs += [Spec("matmul", 3, 2, k=4, m=2)]
        return specs
    specs = [Spec("lookup", w, 32 if w <= 6 else 8) for w in range(3, 9)]
    specs += [Spec("lookup", w, 8) for w in range(3, 7)]  # second size: is s/PBS size-free?
    specs += [Spec("lookup", 4, 4, lsbs=r) for r in (2, 4, 6, 8, 12)]
    specs += [Spec("lookup", 6, 4, lsbs=r) for r in (2, 4, 6)]
    # approximate rounding folds the rounding into the lookup (±1 step of error)
    specs += [Spec("lookup", 4, 4, lsbs=r, approx=True) for r in (4, 8, 12)]
    specs += [Spec("lookup", 6, 4, lsbs=r, approx=True) for r in (2, 6)]
    specs += [Spec("linear", 4, s, m=s) for s in (16, 32, 64, 128)]
    specs += [Spec("add", 4, s) for s in (64, 1024)]
    specs += [Spec("mul", w, 8) for w in (3, 4, 5)]
    specs += [Spec("matmul", w, 2, k=4, m=2) for w in (3, 4)]
    specs += [Spec("matmul", 3, 2, k=8, m=2)]  # longer dot product: wider accumulator
    return specs


def _build(spec: Spec, rng: np.random.Generator) -> tuple[Callable, dict, list, tuple, int]:
    """(function, encryption status, inputset, one sample, work count) for a spec.

    The work count is what the cost model counts for this circuit: lookups (elements),
    MACs, additions or products.
    """
    from concrete import fhe

    hi = 2**spec.width
    if spec.kind == "lookup":
        top = 2 ** (spec.width + spec.lsbs)
        lsbs = spec.lsbs
        exact = fhe.Exactness.APPROXIMATE if spec.approx else fhe.Exactness.EXACT

        def lookup(x):
            y = fhe.round_bit_pattern(x, lsbs_to_remove=lsbs, exactness=exact) if lsbs else x
            return fhe.univariate(lambda v: (v * 3) // 4)(y)  # any non-linear table

        inputset = [np.zeros(spec.n, dtype=np.int64), np.full(spec.n, top - 1)]
        inputset += [rng.integers(0, top, spec.n) for _ in range(8)]
        return lookup, {"x": "encrypted"}, inputset, (rng.integers(0, top, spec.n),), spec.n
    if spec.kind == "linear":
        w = rng.integers(-(hi // 2), hi // 2, (spec.n, spec.m))

        def linear(x):
            return x @ w

        inputset = [np.zeros(spec.n, dtype=np.int64), np.full(spec.n, hi - 1)]
        inputset += [rng.integers(0, hi, spec.n) for _ in range(8)]
        return linear, {"x": "encrypted"}, inputset, (rng.integers(0, hi, spec.n),), spec.n * spec.m
    if spec.kind in ("add", "mul"):
        shape_a = shape_b = (spec.n,)
        work = spec.n
    elif spec.kind == "matmul":
        shape_a, shape_b = (spec.n, spec.k), (spec.k, spec.m)
        work = spec.n * spec.k * spec.m
    else:
        raise ValueError(f"unknown kind {spec.kind!r}")

    def add(a, b):
        return a + b

    def mul(a, b):
        return a * b

    def matmul(a, b):
        return a @ b

    fn = {"add": add, "mul": mul, "matmul": matmul}[spec.kind]
    inputset = [(np.zeros(shape_a, dtype=np.int64), np.zeros(shape_b, dtype=np.int64)),
                (np.full(shape_a, hi - 1), np.full(shape_b, hi - 1))]
    inputset += [(rng.integers(0, hi, shape_a), rng.integers(0, hi, shape_b)) for _ in range(8)]
    sample = (rng.integers(0, hi, shape_a), rng.integers(0, hi, shape_b))
    return fn, {"a": "encrypted", "b": "encrypted"}, inputset, sample, work


def _pbs_params(circuit: Any) -> list[dict]:
    """Bootstrap-key parameters and their PBS counts: they, not the width, set the price."""
    out = []
    per = circuit.statistics.get("programmable_bootstrap_count_per_parameter", {}) or {}
    for p, count in per.items():
        row: dict[str, Any] = {"count": int(count)}
        for name in ("polynomial_size", "glwe_dimension", "input_lwe_dimension", "level"):
            v = getattr(p, name, None)
            v = v() if callable(v) else v
            if v is not None:
                row[name] = int(v)
        out.append(row)
    return out


def measure(spec: Spec, runs: int = 3, seed: int = 0) -> dict[str, Any]:
    """Compile, keygen and run one grid point; return its record (no fitting here).

    ``run_s`` is the median wall-clock of ``runs`` server-side ``circuit.run`` calls on a
    fresh encryption each time, ``run_cpu_s`` their median process CPU time (all threads);
    ``e2e_s`` the median wall-clock of encrypt + run + decrypt. ``matches_clear``
    compares the decryption of the first run with concrete's simulation of the same input
    (a PBS may fail with probability p_error; a mismatch is recorded, not raised).
    """
    from concrete import fhe

    rng = np.random.default_rng(seed)
    fn, status, inputset, sample, work = _build(spec, rng)
    t0 = time.perf_counter()
    circuit = fhe.compiler(status)(fn).compile(inputset)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    circuit.keygen(force=True)
    keygen_s = time.perf_counter() - t0
    run_times, e2e_times, cpu_times = [], [], []
    matches = True
    for i in range(runs):
        t0 = time.perf_counter()
        enc = circuit.encrypt(*sample)
        t1 = time.perf_counter()
        c0 = time.process_time()
        res = circuit.run(enc)
        cpu_times.append(time.process_time() - c0)
        t2 = time.perf_counter()
        out = circuit.decrypt(res)
        t3 = time.perf_counter()
        run_times.append(t2 - t1)
        e2e_times.append(t3 - t0)
        if i == 0:
            matches = bool(np.array_equal(np.asarray(out), np.asarray(circuit.simulate(*sample))))
    st = circuit.statistics
    pbs = int(st["programmable_bootstrap_count"])
    widths = sorted({int(w) for w in re.findall(r"eint<(\d+)>", circuit.mlir)})
    run_s = statistics.median(run_times)
    return {
        **asdict(spec),
        "label": spec.label,
        "work": work,
        "pbs": pbs,
        "pbs_per_work": pbs / work,
        "complexity": float(circuit.complexity),
        "eint_widths": widths,
        "pbs_params": _pbs_params(circuit),
        "compile_s": compile_s,
        "keygen_s": keygen_s,
        "bsk_mb": circuit.size_of_bootstrap_keys / 1e6,
        "ksk_mb": circuit.size_of_keyswitch_keys / 1e6,
        "run_s": run_s,
        "run_s_all": run_times,
        "run_cpu_s": statistics.median(cpu_times),
        "e2e_s": statistics.median(e2e_times),
        "s_per_pbs": run_s / pbs if pbs else None,
        "cpu_s_per_pbs": statistics.median(cpu_times) / pbs if pbs else None,
        "load_avg_1min": os.getloadavg()[0],
        "matches_clear": matches,
    }


# ---------------------------------------------------------------- fitting (no FHE below)


def _lstsq(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Intercept and slope of y ≈ b0 + b1·x; a single point gives slope 0 through its mean."""
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(xa) == 1 or np.ptp(xa) == 0:
        return float(ya.mean()), 0.0
    a = np.stack([np.ones_like(xa), xa], axis=1)
    (b0, b1), *_ = np.linalg.lstsq(a, ya, rcond=None)
    return float(b0), float(b1)


def fit(records: Sequence[dict[str, Any]], ref_bits: int = REF_BITS,
        time_key: str = "run_cpu_s") -> dict[str, Any]:
    """Fit CostConstants (and the rounding / overhead proposals) to measurement records.

    * per-PBS time: log(t / pbs) = log a + w·log g over the plain lookups (lsbs = 0);
      ``pbs_ref_s = a·g^ref_bits``;
    * ``clear_mac_s``, ``add_s``: slope of t vs count (intercept = per-run overhead);
    * ``mul_pbs_per_product``: median PBS per product, rounded (it is an exact count);
    * ``mul_extra_bits``: median over element-wise products of the effective lookup width
      (the width whose fitted per-PBS time matches the measured one) minus the operand width;
    * rounding: PBS per element ≈ b0 + b1·lsbs_removed over the round_bit_pattern points.

    ``time_key`` is the measured time fitted: by default the process CPU time of
    ``circuit.run`` (all threads), the unit cost.py prices in ("single-thread CPU time"), and
    far less sensitive than wall-clock to the other workers sharing the 2 cores.

    Every record gets ``predicted_s`` (what cerberus.cost with the fitted constants charges
    for that circuit) and ``ratio`` = measured / predicted.
    """
    recs = [dict(r) for r in records]
    look = [r for r in recs if r["kind"] == "lookup" and not r["lsbs"] and r["pbs"]]
    if len(look) < 2 or len({r["width"] for r in look}) < 2:
        raise ValueError("need plain lookups at two or more widths to fit the PBS law")
    log_a, log_g = _lstsq([r["width"] for r in look],
                          [math.log(r[time_key] / r["pbs"]) for r in look])
    g = math.exp(log_g)
    pbs_ref_s = math.exp(log_a + log_g * ref_bits)

    def pbs_s(w: float) -> float:
        return pbs_ref_s * g ** (w - ref_bits)

    out: dict[str, Any] = {"growth_per_bit": g, "pbs_ref_s": pbs_ref_s, "pbs_ref_bits": ref_bits}
    lin = [r for r in recs if r["kind"] == "linear"]
    adds = [r for r in recs if r["kind"] == "add"]
    overhead_mac, mac_s = (_lstsq([r["work"] for r in lin], [r[time_key] for r in lin])
                           if lin else (0.0, CostConstants().clear_mac_s))
    overhead_add, add_s = (_lstsq([r["work"] for r in adds], [r[time_key] for r in adds])
                           if adds else (0.0, CostConstants().add_s))
    if len(lin) == 1:  # one size: no intercept to separate, charge it all to the MACs
        overhead_mac, mac_s = 0.0, lin[0][time_key] / lin[0]["work"]
    if len(adds) == 1:
        overhead_add, add_s = 0.0, adds[0][time_key] / adds[0]["work"]
    out.update(clear_mac_s=max(mac_s, 0.0), add_s=max(add_s, 0.0))
    out["run_overhead_s"] = {"linear_intercept": overhead_mac, "add_intercept": overhead_add}

    prods = [r for r in recs if r["kind"] in ("mul", "matmul") and r["pbs"]]
    if prods:
        per_product = statistics.median(r["pbs"] / r["work"] for r in prods)
        out["mul_pbs_per_product"] = int(round(per_product))
        for r in prods:
            r["effective_bits"] = ref_bits + math.log(r[time_key] / r["pbs"] / pbs_ref_s) / log_g
            r["extra_bits"] = r["effective_bits"] - r["width"]
        # cost.py prices every product (element-wise or inside QKᵀ / P·V) at n + extra bits,
        # so the constant is fitted over both kinds; the per-kind medians are kept beside it.
        out["mul_extra_bits"] = int(round(statistics.median(r["extra_bits"] for r in prods)))
        out["extra_bits_by_kind"] = {
            kind: statistics.median(r["extra_bits"] for r in prods if r["kind"] == kind)
            for kind in sorted({r["kind"] for r in prods})
        }
    else:
        out["mul_pbs_per_product"] = CostConstants().mul_pbs_per_product
        out["mul_extra_bits"] = CostConstants().mul_extra_bits

    rounds = [r for r in recs if r["kind"] == "lookup" and r["lsbs"] and not r.get("approx")]
    approx = [r for r in recs if r["kind"] == "lookup" and r["lsbs"] and r.get("approx")]
    if rounds:
        b0, b1 = _lstsq([r["lsbs"] for r in rounds], [r["pbs"] / r["n"] for r in rounds])
        rel = []
        for r in rounds:  # price of one rounding PBS relative to the lookup's own PBS
            extra = r["pbs"] - r["n"]
            if extra > 0:
                r["round_pbs_s"] = (r[time_key] - r["n"] * pbs_s(r["width"])) / extra
                rel.append(r["round_pbs_s"] / pbs_s(r["width"]))
        for r in rounds:  # the proposed formula, priced at the lookup width
            r["proposed_s"] = r["n"] * (b0 + b1 * r["lsbs"]) * pbs_s(r["width"])
            r["ratio_proposed"] = r[time_key] / r["proposed_s"]
        out["rounding"] = {
            "pbs_per_element_intercept": b0,
            "pbs_per_removed_lsb": b1,
            "round_pbs_rel_price": statistics.median(rel) if rel else None,
            "formula": "per rounded element: lookup pbs_s(w) + b1·lsbs_removed rounding PBS, "
                       "each priced ≈ round_pbs_rel_price · pbs_s(w)",
        }
    if approx:
        out.setdefault("rounding", {})["approximate"] = {
            "pbs_per_element": statistics.median(r["pbs"] / r["n"] for r in approx),
            "pbs_rel_price": statistics.median(r[time_key] / r["pbs"] / pbs_s(r["width"])
                                               for r in approx),
            "note": "Exactness.APPROXIMATE: one PBS per element, result may be off by one "
                    "rounding step",
        }

    const = CostConstants(**{k: out[k] for k in (
        "pbs_ref_s", "pbs_ref_bits", "growth_per_bit", "mul_pbs_per_product", "mul_extra_bits",
        "clear_mac_s", "add_s")})
    for r in recs:
        r["predicted_s"] = predict(r, const)
        r["ratio"] = r[time_key] / r["predicted_s"] if r["predicted_s"] > 0 else None
    out["time_basis"] = time_key
    fitted = [r for r in look]
    resid = [math.log(r[time_key] / r["pbs"]) - math.log(pbs_s(r["width"])) for r in fitted]
    out["pbs_fit_log_residuals"] = {r["label"]: e for r, e in zip(fitted, resid, strict=True)}
    out["pbs_fit_rms_log_residual"] = math.sqrt(sum(e * e for e in resid) / len(resid))
    out["constants"] = {f.name: getattr(const, f.name) for f in fields(CostConstants)
                        if f.name not in ("calibrated_on", "date")}
    out["records"] = recs
    return out


def predict(record: dict[str, Any], k: CostConstants) -> float:
    """Seconds cerberus.cost charges for a grid circuit under constants ``k``.

    Rounding PBS are not priced by the model (cost.py: "the rounding itself is not priced
    separately"), so round_bit_pattern points show how much that omission misses.
    """
    kind, w, work = record["kind"], record["width"], record["work"]
    if kind == "lookup":
        return work * k.pbs_s(w)
    if kind == "linear":
        return work * k.clear_mac_s
    if kind == "add":
        return work * k.add_s
    if kind in ("mul", "matmul"):
        lut = k.mul_pbs_per_product * work * k.pbs_s(w + k.mul_extra_bits)
        return lut + 3 * work * k.add_s
    raise ValueError(f"unknown kind {kind!r}")


# ---------------------------------------------------------------- output


def render(result: dict[str, Any]) -> str:
    """Markdown: constants, then one row per grid point with the measured/predicted ratio."""
    k = result["constants"]
    lines = [
        f"Command: `{result['command']}` — {result['runtime_s']:.0f} s total; "
        f"concrete-python {result['concrete_python']}. Fitted on the median process CPU "
        "time of `circuit.run` (`cpu s`); `wall s` is its wall-clock beside it, inflated by "
        "the other workers sharing the 2 cores (load column).",
        "",
        "| constant | old default | fitted |",
        "|---|---|---|",
    ]
    old = CostConstants()
    for name, v in k.items():
        lines.append(f"| {name} | {getattr(old, name):.4g} | {v:.4g} |")
    lines += [
        "",
        f"PBS law: s/PBS = {k['pbs_ref_s']:.4g} · {k['growth_per_bit']:.3f}^(w − "
        f"{k['pbs_ref_bits']}); RMS log residual {result['pbs_fit_rms_log_residual']:.3f} "
        f"(×{math.exp(result['pbs_fit_rms_log_residual']):.2f}).",
    ]
    rd = result.get("rounding") or {}
    if "pbs_per_removed_lsb" in rd:
        rel = rd["round_pbs_rel_price"]
        lines.append(
            f"Exact rounding: PBS per element ≈ {rd['pbs_per_element_intercept']:.2f} + "
            f"{rd['pbs_per_removed_lsb']:.2f} · lsbs_removed (not priced by cost.py yet); "
            f"one rounding PBS costs ≈ {rel if rel is not None else float('nan'):.2f}× the "
            "lookup's own PBS."
        )
    if "approximate" in rd:
        ap = rd["approximate"]
        lines.append(
            f"Approximate rounding (`exactness=fhe.Exactness.APPROXIMATE`): "
            f"{ap['pbs_per_element']:.2f} PBS per element, each ≈ {ap['pbs_rel_price']:.2f}× "
            "pbs_s(lookup width); off by one rounding step at times (its `= simulate` column)."
        )
    ov = result["run_overhead_s"]
    lines += [
        f"Per-run overhead (intercepts): linear {ov['linear_intercept'] * 1e3:.1f} ms, "
        f"add {ov['add_intercept'] * 1e3:.1f} ms (not in cost.py).",
        "",
        "| circuit | eint widths | PBS | PBS/unit | keygen s | keys MB | wall s | cpu s | "
        "cpu s/PBS | predicted s | measured/predicted | load | = simulate |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["records"]:
        spp = f"{r['cpu_s_per_pbs'] * 1e3:.1f} ms" if r.get("cpu_s_per_pbs") else "–"
        ratio = f"{r['ratio']:.2f}" if r.get("ratio") else "–"
        widths = ",".join(str(w) for w in r["eint_widths"])
        lines.append(
            f"| {r['label']} | {widths} | {r['pbs']} | {r['pbs_per_work']:.2f} | "
            f"{r['keygen_s']:.1f} | {r['bsk_mb'] + r['ksk_mb']:.0f} | "
            f"{r['run_s']:.3f} | {r['run_cpu_s']:.3f} | {spp} | {r['predicted_s']:.3f} | "
            f"{ratio} | {r.get('load_avg_1min', float('nan')):.1f} | "
            f"{'yes' if r['matches_clear'] else 'NO'} |"
        )
    summary = result.get("prediction_summary") or prediction_summary(result["records"])
    lines += ["", "How well the fitted model predicts (measured/predicted CPU s per group):", "",
              "| group | points | median | min | max | RMS log |", "|---|---|---|---|---|---|"]
    lines += [f"| {g} | {v['points']} | {v['median']:.2f} | {v['min']:.2f} | {v['max']:.2f} | "
              f"{v['rms_log']:.2f} |" for g, v in summary.items()]
    prods = [r for r in result["records"] if "effective_bits" in r]
    if prods:
        lines += ["", "Products — effective lookup width from the fitted law:", ""]
        lines += [f"- {r['label']}: {r['effective_bits']:.1f} bits (operands {r['width']}, "
                  f"extra {r['extra_bits']:.1f})" for r in prods]
    return "\n".join(lines)


def table_payload(result: dict[str, Any]) -> dict[str, Any]:
    """What ships in cerberus/cost_table.json: constants plus provenance and residuals."""
    m = result.get("measured_on") or machine()
    return {
        "constants": {
            **result["constants"],
            "calibrated_on": f"{m['cpu']}, {m['cores']} cores, concrete-python "
                             f"{result['concrete_python']} (benchmarks/calibrate_cost.py"
                             f"{' --quick' if result['quick'] else ''})",
            "date": m["date"],
        },
        "machine": m,
        "concrete_python": result["concrete_python"],
        "time_basis": f"{result['time_basis']}: median process CPU time (all threads) of "
                      "circuit.run; wall-clock on the shared 2-core machine is in results/",
        "grid": [r["label"] for r in result["records"]],
        "pbs_fit_log_residuals": result["pbs_fit_log_residuals"],
        "pbs_fit_rms_log_residual": result["pbs_fit_rms_log_residual"],
        "rounding": result.get("rounding"),
        "run_overhead_s": result["run_overhead_s"],
        "extra_bits_by_kind": result.get("extra_bits_by_kind"),
        "ratios": {r["label"]: r["ratio"] for r in result["records"]},
        "prediction_summary": result.get("prediction_summary"),
    }


def _group(r: dict[str, Any]) -> str:
    if r["kind"] == "lookup":
        if not r["lsbs"]:
            return "plain lookups"
        return "approximate rounding + lookup" if r.get("approx") else "exact rounding + lookup"
    return {"mul": "enc×enc products", "matmul": "enc×enc products"}.get(r["kind"],
                                                                       "clear MACs / adds")


def prediction_summary(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Measured/predicted ratios per group of grid points: how far to trust the model."""
    groups: dict[str, list[float]] = {}
    for r in records:
        if r.get("ratio"):
            groups.setdefault(_group(r), []).append(r["ratio"])
        if r.get("ratio_proposed"):
            groups.setdefault(_group(r) + ", proposed (b0 + b1·lsbs)·pbs_s(w)", []).append(
                r["ratio_proposed"])
    return {
        g: {"points": len(v), "median": statistics.median(v), "min": min(v), "max": max(v),
            "rms_log": math.sqrt(sum(math.log(x) ** 2 for x in v) / len(v))}
        for g, v in groups.items()
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="widths 3–6, one size (a few minutes)")
    ap.add_argument("--runs", type=int, default=3, help="timed runs per circuit (median)")
    ap.add_argument("--table", type=Path, default=TABLE_PATH,
                    help="where to write the fitted table (default: the package's)")
    ap.add_argument("--no-table", action="store_true", help="do not write the fitted table")
    ap.add_argument("--from-json", type=Path, default=None, metavar="RESULTS",
                    help="refit and re-render the records of an earlier run, measuring nothing")
    args = ap.parse_args(argv)
    if args.from_json is not None:
        old = json.loads(args.from_json.read_text(encoding="utf-8"))
        result = fit(old["records"])
        result.update({k: old[k] for k in ("command", "runtime_s", "concrete_python", "quick",
                                           "grid")})
        result["measured_on"] = old.get("measured_on") or old.get("machine")
    else:
        import concrete.fhe as fhe_mod

        version = getattr(fhe_mod, "__version__", None)
        if version is None:
            from importlib.metadata import version as _v

            version = _v("concrete-python")
        start = time.perf_counter()
        records = []
        for spec in grid(args.quick):
            rec = measure(spec, runs=args.runs)
            records.append(rec)
            print(f"{rec['label']:<28} PBS {rec['pbs']:>4}  keygen {rec['keygen_s']:6.1f} s  "
                  f"run {rec['run_s']:7.3f} s  load {os.getloadavg()[0]:.1f}", flush=True)
        result = fit(records)
        result.update(
            command="python -m benchmarks.calibrate_cost" + (" --quick" if args.quick else ""),
            runtime_s=time.perf_counter() - start,
            concrete_python=version,
            quick=args.quick,
            grid=[asdict(s) for s in grid(args.quick)],
            measured_on=machine(),
        )
    result["prediction_summary"] = prediction_summary(result["records"])
    write_json(KEY, result)
    write_section(KEY, "FHE cost-model calibration (SPEC C3, issue #5)", render(result))
    if not args.no_table:
        args.table.write_text(json.dumps(table_payload(result), indent=2) + "\n",
                              encoding="utf-8")
    print(render(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
