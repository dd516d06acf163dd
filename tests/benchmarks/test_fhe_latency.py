"""The Cerberus side of ``benchmarks/fhe_latency.py`` on a tiny block (issue #5).

Why: the latency table is only as trustworthy as the function that fills it. These tests
run ``measure_cerberus`` under real encryption on a tiny hybrid block (no lookups, so
keygen takes milliseconds) and check what every result must satisfy — the encrypted path
equals the simulator, the comparison block is really ``x + attn(LN(x))`` — never timings.
They need neither ``.venv-cml`` nor concrete-ml.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
from tolerance import LIBM_ULPS, U32, U64, assert_within, gamma

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import fhe_latency as fl  # noqa: E402

TINY = fl.BlockSpec(d_model=4, seq_len=3, vocab=16, d_ff=2, calib_windows=16, n_inputs=3)


def test_block_update_is_the_attention_the_baseline_computes() -> None:
    model = fl.make_model(TINY)
    parts = fl.float_parts(model, fl.input_ids(TINY))  # asserts block(x) − x == attn(LN(x))
    assert parts["z"].shape == (TINY.n_inputs, TINY.seq_len, TINY.d_model)
    # LN(x) has zero mean per token: concrete-ml receives normalised activations. In
    # float32 (gain 1, bias 0), Σ(x_i − μ̂) = d(μ − μ̂) with |μ − μ̂| ≤ γ_d·mean|x|, each
    # difference rounds once and the scaling by 1/σ (LIBM_ULPS + 1) too, and this check's
    # mean of d: |mean z| ≤ (γ_{d+1}·mean|x| + u·mean|x − μ|)/σ + γ_{d+LIBM+2}·mean|z|
    x, z, d = parts["x"], parts["z"].astype(np.float64), TINY.d_model
    mu = x.mean(-1, keepdims=True)
    sigma = np.sqrt(((x - mu) ** 2).mean(-1) + model.cfg.ln_eps)
    atol = ((gamma(d + 1) * np.abs(x).mean(-1) + U32 * np.abs(x - mu).mean(-1)) / sigma
            + gamma(d + LIBM_ULPS + 2) * np.abs(z).mean(-1))
    assert_within(parts["z"].mean(-1), np.zeros(atol.shape), atol, "mean of LN(x)")


def test_full_partition_options_leave_room_for_encrypted_products() -> None:
    full = fl.compile_options("full", 5, 4)
    hybrid = fl.compile_options("hybrid", 5, 4)
    assert (full.bits, full.max_lookup_bits) == (4, 5)
    assert hybrid.bits == 5 and hybrid.fhe and full.fhe


def test_measure_cerberus_hybrid_under_real_encryption(tmp_path: Path) -> None:
    model = fl.make_model(TINY)
    ids = fl.input_ids(TINY)
    stages: list[str] = []
    res = fl.measure_cerberus(model, "hybrid", 4, ids, n_fhe=1, workdir=tmp_path,
                              progress=stages.append)
    assert stages == ["compile", "keygen", "run"]
    assert res["status"] == "ok"
    assert res["pbs"] == 0  # hybrid linears are clear-weight matmuls, no lookup
    assert res["programs"] == 4  # qkv (fused), o, fc1, fc2
    assert res["round_trips_per_sample"] == 4  # one per program
    assert res["fhe_equals_simulator"] is True
    for key in ("compile_s", "keygen_s", "eval_key_mb", "fhe_s_per_sample"):
        assert res[key] >= 0
    # |cos| ≤ 1 (Cauchy–Schwarz) up to float64 rounding: the n-long dot product and two
    # norms (γ_{2n+4}), then the mean over the inputs (+ n_inputs); n = seq_len·d_model
    n = TINY.seq_len * TINY.d_model
    top = 1.0 + gamma(2 * n + 4 + TINY.n_inputs, U64)
    for key in ("cosine_simulator", "cosine_fhe"):
        assert -top <= res[key] <= top and not math.isnan(res[key])


def test_verdict_needs_both_speed_and_fidelity() -> None:
    cml = {"fhe_s_per_sample": 10.0, "cosine_simulate_vs_cerberus_float": 0.95}
    rows = [{"partition": "hybrid", "lookup_bits": 8, "status": "ok", "fhe_s_per_sample": 1.0,
             "cosine_simulator": 0.99},
            {"partition": "full", "lookup_bits": 4, "status": "ok", "fhe_s_per_sample": 1.0,
             "cosine_simulator": 0.90},
            {"partition": "full", "lookup_bits": 8, "status": "skipped: too slow"}]
    v = fl.verdict(cml, rows)
    assert v["goal_met_hybrid"] and not v["goal_met_full"]
    assert v["rows"][0]["speedup"] == 10.0 and v["rows"][1]["fidelity_ok"] is False
    md = fl.markdown({"status": "ok"}, rows, v, {"spec": vars(TINY) | {}, "n_fhe": 1,
                                                 "caps": {"keygen": 1, "compile": 1, "run": 1},
                                                 "wall_s": 1.0})
    assert "interactive" in md and "skipped: too slow" in md
