"""Every pass keeps the contract of ``cerberus.passes``: (graph, …) → (graph, report).

The manifest stores each report's ``to_dict``, so it must be strict JSON; the returned
graph is of the kind the pass was given (model → model, ``IntGraph`` → ``IntGraph``).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from cerberus.lower import LoweringOptions, lower_blocks
from cerberus.passes import Pass, PassReport
from cerberus.passes.fuse import compose_luts, fold_affine
from cerberus.passes.qat import qat_finetune
from cerberus.passes.significance import significance
from cerberus.passes.squeeze import squeeze

from .conftest import embedded

Call = tuple[Pass[Any, PassReport], Any, tuple, dict]
PASSES = ("significance", "squeeze", "qat_finetune", "fold_affine", "compose_luts")


@pytest.fixture(scope="module")
def calls(tiny_gpt, gpt_windows) -> dict[str, Call]:
    """Each pass entry point with a small input graph and its options."""
    model, _ = tiny_gpt
    batches = [gpt_windows[0][:4]]
    _, sig = significance(model, batches, method="ablation")
    graph = lower_blocks(model, embedded(model, gpt_windows[0]), LoweringOptions(fuse=False))
    return {
        "significance": (significance, model, (batches,), {"method": "ablation"}),
        "squeeze": (squeeze, model, (sig,), {"seq_len": 8, "bits": 6}),
        "qat_finetune": (qat_finetune, model, (batches,), {"bits": 6, "steps": 1}),
        "fold_affine": (fold_affine, model, (), {}),
        "compose_luts": (compose_luts, graph, (), {}),
    }


@pytest.mark.parametrize("name", PASSES)
def test_pass_returns_its_graph_and_a_json_report(calls: dict[str, Call], name: str) -> None:
    run, graph, args, kwargs = calls[name]
    out = run(graph, *args, **kwargs)
    assert isinstance(out, tuple) and len(out) == 2
    new, report = out
    assert type(new) is type(graph)
    # significance is an analysis: the same model back; every other pass builds a new graph
    assert (new is graph) == (name == "significance")
    assert isinstance(report, PassReport)
    d = report.to_dict()
    assert isinstance(d, dict) and d
    json.dumps(d, allow_nan=False)  # strict JSON, or it raises
