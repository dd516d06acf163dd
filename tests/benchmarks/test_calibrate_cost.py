"""The cost-model calibration benchmark (SPEC C3, issue #5): its fit and its measure function.

Why: the squeezing pass trusts whatever constants this benchmark writes, so the fit must
recover known constants from a synthetic table (no FHE, exact), and the measure function's
record must count what the cost model counts. The one real measurement (a 3-bit lookup on
4 elements, ~1 s keygen) checks structure and exact circuit statistics, never timings: those
depend on the machine and its load.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from tolerance import LIBM_ULPS, U64, gamma

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import calibrate_cost as cc  # noqa: E402
from cerberus.cost import CostConstants, load_constants  # noqa: E402

TRUE = dict(pbs_ref_s=0.03, growth_per_bit=1.7, mul_extra_bits=2, clear_mac_s=2e-6,
            add_s=5e-7, overhead=0.05, round_b0=1.0, round_b1=1.0)


def _rec(kind: str, width: int, n: int, work: int, pbs: int, run_s: float, lsbs: int = 0,
         k: int = 0, m: int = 0, approx: bool = False) -> dict:
    spec = cc.Spec(kind, width, n, lsbs=lsbs, k=k, m=m, approx=approx)
    return {"kind": kind, "width": width, "n": n, "lsbs": lsbs, "k": k, "m": m,
            "approx": approx, "label": spec.label, "work": work, "pbs": pbs, "run_s": 2 * run_s,
            "run_cpu_s": run_s}  # the fit reads CPU time; wall-clock is load-inflated


def _pbs_s(w: float) -> float:
    return TRUE["pbs_ref_s"] * TRUE["growth_per_bit"] ** (w - cc.REF_BITS)


def _synthetic(noise: float = 0.0) -> list[dict]:
    """A measurement table generated from TRUE, optionally with ±noise multiplicative error."""
    recs = []
    for i, w in enumerate(range(3, 9)):
        jitter = 1 + noise * (-1) ** i
        recs.append(_rec("lookup", w, 16, 16, 16, 16 * _pbs_s(w) * jitter))
    for lsbs in (2, 4, 6):
        pbs = 4 * int(TRUE["round_b0"] + TRUE["round_b1"] * lsbs)
        recs.append(_rec("lookup", 4, 4, 4, pbs, pbs * _pbs_s(4), lsbs=lsbs))
    # approximate rounding: one PBS per element, priced 1.5× the plain lookup's PBS
    recs.append(_rec("lookup", 4, 4, 4, 4, 4 * 1.5 * _pbs_s(4), lsbs=8, approx=True))
    for s in (16, 32, 64):
        recs.append(_rec("linear", 4, s, s * s, 0, TRUE["overhead"] + s * s * TRUE["clear_mac_s"],
                         m=s))
    for s in (64, 1024):
        recs.append(_rec("add", 4, s, s, 0, TRUE["overhead"] + s * TRUE["add_s"]))
    for w in (3, 4, 5):
        recs.append(_rec("mul", w, 8, 8, 16, 16 * _pbs_s(w + TRUE["mul_extra_bits"])))
    return recs


def _fit_rtol(records: list[dict]) -> float:
    """Relative bound of everything ``cc.fit`` derives from an exact table (float64).

    Each fit is a straight-line least-squares problem with zero residual; a backward-stable
    solver's forward error is ≤ κ(A)·γ_{c·m·n} normwise (Higham, §20.1; we take c = 2), A
    the m×2 design matrix [1, x]. The per-PBS fit works on logs of the data and returns
    exps (LIBM_ULPS each); a derived price c_ref·g^(w − w_ref) scales the slope's error
    by up to the largest width. So: (1 + max w)·max κ(A)·γ_{4m + 2·LIBM_ULPS + 4}.
    """
    groups = [
        [r["width"] for r in records if r["kind"] == "lookup" and not r["lsbs"]],
        [r["work"] for r in records if r["kind"] == "linear"],
        [r["work"] for r in records if r["kind"] == "add"],
        [r["lsbs"] for r in records if r["kind"] == "lookup" and r["lsbs"] and not r["approx"]],
    ]
    kappa = max(np.linalg.cond(np.column_stack([np.ones(len(x)), x])) for x in groups)
    m = max(len(x) for x in groups)
    widths = max(r["width"] for r in records) + TRUE["mul_extra_bits"]
    return (1 + widths) * kappa * gamma(4 * m + 2 * LIBM_ULPS + 4, U64)


def test_fit_recovers_known_constants_from_an_exact_table():
    out = cc.fit(_synthetic())
    rtol = _fit_rtol(_synthetic())
    # the exact table's log times are ≤ |log 1e-7|: the residuals' scale
    log_scale = 20.0
    k = out["constants"]
    assert k["pbs_ref_s"] == pytest.approx(TRUE["pbs_ref_s"], rel=rtol, abs=0)
    assert k["growth_per_bit"] == pytest.approx(TRUE["growth_per_bit"], rel=rtol, abs=0)
    assert k["pbs_ref_bits"] == cc.REF_BITS
    # the linear and add fits' small slopes: normwise, so relative to the intercept
    ratio = TRUE["overhead"] / min(TRUE["clear_mac_s"], TRUE["add_s"])
    assert k["clear_mac_s"] == pytest.approx(TRUE["clear_mac_s"], rel=rtol * ratio, abs=0)
    assert k["add_s"] == pytest.approx(TRUE["add_s"], rel=rtol * ratio, abs=0)
    assert out["run_overhead_s"]["linear_intercept"] == pytest.approx(TRUE["overhead"],
                                                                      rel=rtol, abs=0)
    assert k["mul_pbs_per_product"] == 2
    assert k["mul_extra_bits"] == TRUE["mul_extra_bits"]
    rounding = out["rounding"]
    assert rounding["pbs_per_removed_lsb"] == pytest.approx(TRUE["round_b1"], rel=rtol, abs=0)
    assert rounding["pbs_per_element_intercept"] == pytest.approx(TRUE["round_b0"], rel=rtol,
                                                                  abs=0)
    # synthetic rounding PBS cost what the lookup's own PBS costs
    assert out["rounding"]["round_pbs_rel_price"] == pytest.approx(1.0, rel=rtol, abs=0)
    assert out["pbs_fit_rms_log_residual"] == pytest.approx(0.0, abs=rtol * log_scale)
    for r in out["records"]:
        if r["kind"] in ("lookup", "mul") and not r["lsbs"]:
            # the model also charges a product's 3 adds, which the exact table leaves out:
            # ratio = lut / (lut + 3·work·add_s), within the fit's bound (add_s's normwise)
            lut = r["run_cpu_s"]
            extra = 3 * r["work"] * TRUE["add_s"] if r["kind"] == "mul" else 0.0
            rel = rtol * (1 + ratio * extra / lut)
            assert r["ratio"] == pytest.approx(lut / (lut + extra), rel=rel, abs=0), r["label"]
    # rounding PBS are not priced by the model: the ratio exposes exactly the missing PBS
    for r in out["records"]:  # the proposed rounding formula is exact on exact data
        if r["lsbs"] and not r["approx"]:
            assert r["ratio_proposed"] == pytest.approx(1.0, rel=rtol, abs=0)
    summary = cc.prediction_summary(out["records"])
    assert summary["plain lookups"]["points"] == 6
    assert summary["plain lookups"]["rms_log"] == pytest.approx(0.0, abs=rtol * log_scale)
    assert out["rounding"]["approximate"]["pbs_per_element"] == 1
    assert out["rounding"]["approximate"]["pbs_rel_price"] == pytest.approx(1.5, rel=rtol, abs=0)
    for r in out["records"]:
        if r["lsbs"] and not r["approx"]:
            assert r["ratio"] == pytest.approx(TRUE["round_b0"] + TRUE["round_b1"] * r["lsbs"],
                                               rel=rtol, abs=0)


def test_fit_residuals_report_noise_and_stay_close():
    out = cc.fit(_synthetic(noise=0.2))
    # log t carries ±log(1 ± 0.2); the slope moves by at most ‖pinv(A) slope row‖₁ times the
    # largest, and g = e^slope: rel ≤ expm1 of that (plus the exact fit's rounding)
    widths = [r["width"] for r in _synthetic() if r["kind"] == "lookup" and not r["lsbs"]]
    pinv = np.linalg.pinv(np.column_stack([np.ones(len(widths)), widths]))
    noise = max(abs(math.log(0.8)), abs(math.log(1.2)))
    rel = math.expm1(np.abs(pinv[1]).sum() * noise) + _fit_rtol(_synthetic())
    assert out["constants"]["growth_per_bit"] == pytest.approx(TRUE["growth_per_bit"], rel=rel,
                                                               abs=0)
    rms = out["pbs_fit_rms_log_residual"]
    assert 0.05 < rms < math.log(1.3)  # the alternating ±20 % shows up, not more
    assert set(out["pbs_fit_log_residuals"]) == {r["label"] for r in _synthetic()
                                                 if r["kind"] == "lookup" and not r["lsbs"]}


def test_fit_refuses_a_table_without_two_lookup_widths():
    with pytest.raises(ValueError, match="two or more widths"):
        cc.fit([r for r in _synthetic() if r["kind"] != "lookup" or r["width"] == 5])


def test_written_table_loads_into_the_cost_model(tmp_path: Path):
    out = cc.fit(_synthetic())
    out.update(concrete_python="test", quick=True)
    path = tmp_path / "cost_table.json"
    path.write_text(json.dumps(cc.table_payload(out)), encoding="utf-8")
    k = load_constants(path)
    assert isinstance(k, CostConstants)
    # JSON round-trips floats exactly: the fit's bound, plus the two prices' pow and product
    rtol = _fit_rtol(_synthetic())
    assert k.growth_per_bit == pytest.approx(TRUE["growth_per_bit"], rel=rtol, abs=0)
    assert k.pbs_s(5) == pytest.approx(_pbs_s(5), rel=rtol + gamma(2 * LIBM_ULPS + 4, U64), abs=0)
    assert "concrete-python test" in k.calibrated_on and k.date
    assert load_constants(tmp_path / "missing.json") == CostConstants()
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.warns(UserWarning, match="unreadable cost table"):
        assert load_constants(bad) == CostConstants()


def test_one_real_lookup_measurement_has_the_counted_structure():
    """3-bit lookup on 4 elements under real keygen and encryption (~1 s keygen)."""
    pytest.importorskip("concrete.fhe")
    rec = cc.measure(cc.Spec("lookup", 3, 4), runs=2)
    assert rec["pbs"] == rec["n"] == rec["work"] == 4  # one bootstrap per element
    assert rec["pbs_per_work"] == 1.0
    assert max(rec["eint_widths"]) == 3
    assert sum(p["count"] for p in rec["pbs_params"]) == 4
    for key in ("compile_s", "keygen_s", "run_s", "run_cpu_s", "e2e_s", "s_per_pbs",
                "cpu_s_per_pbs", "complexity", "bsk_mb"):
        assert rec[key] > 0, key
    assert len(rec["run_s_all"]) == 2 and rec["e2e_s"] >= min(rec["run_s_all"])
    assert rec["matches_clear"] is True
    json.dumps(rec)  # the record must serialise as-is into results/calibrate_cost.json
