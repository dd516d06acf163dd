"""Activation calibration: observers and per-tensor scales (SPEC C4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cerberus.errors import CompileError
from cerberus.passes.observers import calibrate_activation, collect_activation_scales


def test_activation_calibration_methods() -> None:
    batches = [torch.linspace(-1, 1, 10001), torch.tensor([0.5, 8.0])]
    # exact: the same operations on the same float values (max, or NumPy's percentile of
    # the same float32 |x|, which does not depend on their order; then one float64 divide)
    assert calibrate_activation(batches, 8) == 8.0 / 127
    p = calibrate_activation(batches, 8, method="percentile", percentile=99.0)
    assert p == float(np.percentile(np.abs(torch.cat(batches).numpy()), 99.0)) / 127
    assert calibrate_activation(torch.zeros(5), 4) == 1.0
    with pytest.raises(CompileError):
        calibrate_activation(batches, 8, method="median")


def test_collect_scales_names_every_linear_and_block_and_leaves_model_alone(gpt_text) -> None:
    model, windows = gpt_text
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scales = collect_activation_scales(model, [windows[:1], windows[1:2]], 8)
    for i in range(model.cfg.n_layer):
        assert f"blocks.{i}" in scales
        for sub in ("q", "k", "v", "o", "fc1", "fc2"):
            assert scales[f"blocks.{i}.{sub}"] > 0
    assert scales["blocks.0.q"] == scales["blocks.0.k"]  # same input (ln1 output)
    assert not any(m._forward_pre_hooks for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
