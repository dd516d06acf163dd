"""concrete-ml side of ``benchmarks/fhe_latency.py`` (issue #5); runs in ``.venv-cml`` only.

Why a separate script: concrete-ml 1.9.0 pins torch 2.3.1 and friends that clash with the
main venv, so ``fhe_latency.py`` starts this file with ``.venv-cml/bin/python`` and the two
exchange plain files in a temp folder: ``inputs.npz`` (weights, calibration set, the
benchmark inputs, settings) in, ``cml.npz`` (outputs) and ``cml.json`` (timings) out. It
imports nothing from ``cerberus`` so it runs without the main venv.

Usage: ``.venv-cml/bin/python benchmarks/_cml_side.py TMPDIR``
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn


class Attention(nn.Module):
    """1-head self-attention, d_model → d_model; softmax as exp / sum.

    concrete-ml 1.9.0 has no Softmax or ReduceMax operator, so the softmax is written as
    ``exp(s) / sum(exp(s))`` without subtracting the row maximum (FHE_NOTES).
    """

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.q = nn.Linear(d_model, d_model)
        self.k = nn.Linear(d_model, d_model)
        self.v = nn.Linear(d_model, d_model)
        self.o = nn.Linear(d_model, d_model)
        self.scale = 1.0 / math.sqrt(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.q(x), self.k(x), self.v(x)
        e = torch.exp(q @ k.transpose(-1, -2) * self.scale)
        p = e / e.sum(dim=-1, keepdim=True)
        return self.o(p @ v)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over samples of the cosine between flattened outputs (the fidelity metric)."""
    a2, b2 = a.reshape(len(a), -1), b.reshape(len(b), -1)
    num = (a2 * b2).sum(1)
    den = np.linalg.norm(a2, axis=1) * np.linalg.norm(b2, axis=1) + 1e-12
    return float(np.mean(num / den))


def main(tmp: Path) -> None:
    from concrete.ml.torch.compile import compile_torch_model

    z = np.load(tmp / "inputs.npz")
    d = int(z["d_model"])
    model = Attention(d).eval()
    with torch.no_grad():
        for name in ("q", "k", "v", "o"):
            getattr(model, name).weight.copy_(torch.tensor(z[f"w{name}"]))
            getattr(model, name).bias.copy_(torch.tensor(z[f"b{name}"]))
    inputset = z["calib"].astype(np.float32)
    xs = z["inputs"].astype(np.float32)
    n_fhe = int(z["n_fhe"])
    n_bits, rtb = int(z["n_bits"]), int(z["rounding_threshold_bits"])
    with torch.no_grad():
        ref = model(torch.tensor(xs)).numpy()

    res: dict = {"n_bits": n_bits, "rounding_threshold_bits": rtb, "n_fhe_samples": n_fhe,
                 "torch": torch.__version__}
    t0 = time.perf_counter()
    try:
        qm = compile_torch_model(model, inputset, n_bits=n_bits, rounding_threshold_bits=rtb)
    except Exception as e:  # noqa: BLE001 — NoParametersFound etc. are results, not crashes
        first = (str(e).splitlines() or [""])[0][:200]
        res.update(status=f"compile failed: {type(e).__name__}: {first}",
                   compile_s=time.perf_counter() - t0)
        (tmp / "cml.json").write_text(json.dumps(res, indent=2))
        return
    res["compile_s"] = time.perf_counter() - t0
    circuit = qm.fhe_circuit
    res["pbs"] = int(circuit.statistics["programmable_bootstrap_count"])
    res["complexity"] = float(circuit.complexity)
    res["max_bits"] = int(circuit.graph.maximum_integer_bit_width())
    # what keygen will allocate, known before it runs
    res["bootstrap_keys_mb"] = circuit.statistics["size_of_bootstrap_keys"] / 1e6
    res["keyswitch_keys_mb"] = circuit.statistics["size_of_keyswitch_keys"] / 1e6
    sim = qm.forward(xs, fhe="simulate")
    res["cosine_simulate"] = cosine(sim, ref)
    np.savez(tmp / "cml.npz", ref=ref, simulate=sim)
    if n_fhe == 0:  # compile-only smoke run: no keygen, no encrypted execution
        res["status"] = "ok (simulate only)"
        (tmp / "cml.json").write_text(json.dumps(res, indent=2))
        return
    # written before each heavy stage: a process killed there (out of memory) still
    # leaves its compile figures and the stage it died in
    res["stage"] = "keygen"
    (tmp / "cml.json").write_text(json.dumps(res, indent=2))

    t0 = time.perf_counter()
    circuit.keygen()
    res["keygen_s"] = time.perf_counter() - t0
    res["eval_key_mb"] = len(circuit.client.evaluation_keys.serialize()) / 1e6
    res["stage"] = "encrypted run"
    (tmp / "cml.json").write_text(json.dumps(res, indent=2))
    outs, secs = [], []
    for x in xs[:n_fhe]:
        t0 = time.perf_counter()  # quantize + encrypt + run + decrypt + dequantize
        outs.append(qm.forward(x[None], fhe="execute")[0])
        secs.append(time.perf_counter() - t0)
    enc = np.stack(outs)
    res["fhe_s_per_sample"] = float(np.mean(secs))
    res["fhe_s_all"] = secs
    res["cosine_fhe"] = cosine(enc, ref[:n_fhe])
    res["fhe_equals_simulate"] = bool(np.allclose(enc, sim[:n_fhe], atol=1e-6))
    res["status"] = "ok"
    del res["stage"]
    np.savez(tmp / "cml.npz", ref=ref, simulate=sim, fhe=enc)
    (tmp / "cml.json").write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
