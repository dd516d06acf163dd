"""concrete-ml 1.9's ``HybridFHEModel`` on one linear, for ``benchmarks/packed_linear.py``
(issue #14); runs in ``.venv-cml`` only (``benchmarks/fhe_latency.py --setup``, plus
``pip install --no-deps concrete-ml-extensions`` for its GLWE path).

Why a separate script: concrete-ml pins clash with the main venv (see ``_cml_side.py``).
It imports nothing from ``cerberus``. The linear ``y = x @ W`` gets the same integer
weights as the other backends (8-bit signed, seed 0, as floats: concrete-ml quantizes them
again at ``n_bits=8``), is wrapped as the one private module of a ``HybridFHEModel``,
compiled on random calibration rows, and run in local ``execute`` mode on one row. Like
concrete-ml's own deployment, a layer with both dimensions ≥ 512 goes to its GLWE executor
(concrete-ml-extensions), a smaller one to a concrete-python circuit. Local mode sends no
bytes, so only times, key size and error are reported; error is against the float product,
relative to its largest value, and against concrete-ml's own quantized clear forward
(``disable`` mode), in the units of its output quantizer.

Usage: ``.venv-cml/bin/python benchmarks/_cml_hybrid_side.py N_IN N_OUT OUTPUTS`` prints one
JSON line (``OUTPUTS``: the columns of W used: a concrete-python circuit of a full 3072-wide
layer takes too long to compile here, so small layers are cut like the lwe rows are).
"""

from __future__ import annotations

import json
import sys
import time
from importlib.metadata import version

import numpy as np
import torch
from torch import nn


class One(nn.Module):
    def __init__(self, w: np.ndarray) -> None:
        super().__init__()
        self.lin = nn.Linear(w.shape[0], w.shape[1], bias=False)
        with torch.no_grad():
            self.lin.weight.copy_(torch.tensor(w.T, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


def main(n_in: int, n_out: int, outputs: int) -> dict:
    from concrete.ml.torch.hybrid_model import HybridFHEModel

    rng = np.random.default_rng(0)
    w = rng.integers(-128, 128, (n_in, n_out))[:, :outputs].astype(np.float32)
    x = rng.integers(-128, 128, (1, n_in)).astype(np.float32)
    calib = torch.tensor(rng.integers(-128, 128, (64, n_in)).astype(np.float32))
    model = One(w)
    hybrid = HybridFHEModel(model, ["lin"])
    t0 = time.perf_counter()
    hybrid.compile_model(calib, n_bits=8)
    compile_s = time.perf_counter() - t0
    glwe = hybrid.executor is not None
    hybrid.set_fhe_mode("disable")
    with torch.no_grad():
        clear = model(torch.tensor(x)).numpy()
    t0 = time.perf_counter()
    hybrid.set_fhe_mode("execute")  # generates the keys
    keygen_s = time.perf_counter() - t0
    runs = []
    for _ in range(2):  # the first call may include one-time work
        t0 = time.perf_counter()
        with torch.no_grad():
            y = model(torch.tensor(x)).numpy()
        runs.append(time.perf_counter() - t0)
    exact = x @ w
    out: dict = {"path": "glwe (concrete-ml-extensions)" if glwe else "concrete-python circuit",
                 "shape": [n_in, n_out], "measured_outputs": outputs, "compile_s": compile_s,
                 "keygen_s": keygen_s, "first_s": runs[0], "s": runs[1],
                 "ms_per_output": 1e3 * runs[1] / outputs,
                 "rel_error_vs_float": float(np.abs(y - exact).max() / np.abs(exact).max()),
                 "max_abs_diff_vs_quantized_clear": float(np.abs(y - clear).max()),
                 "quantized_clear_rel_error": float(np.abs(clear - exact).max()
                                                    / np.abs(exact).max()),
                 "concrete_ml": version("concrete-ml")}
    if glwe and hybrid.executor is not None and hybrid.executor.compression_key is not None:
        out["eval_key_bytes"] = len(hybrid.executor.compression_key.serialize())
    return out


if __name__ == "__main__":
    print(json.dumps(main(*map(int, sys.argv[1:4]))))
