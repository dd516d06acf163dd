"""Folded attention (issue #17; SPEC C4, C6): the output projection inside P·V′, one bias.

The fold changes the dataflow, not the maths: its float path must be the model's blocks
(a wrong transpose of W_o·W_v or a bias left out shows here at once), and its integers
must track the floats as the unfolded lowering's do.
"""

import copy

import numpy as np
import pytest
import torch

from cerberus.errors import CompileError
from cerberus.ir import evaluate
from cerberus.lower import LoweringOptions, clipped_scale, lower_attention, lower_blocks

from .conftest import embedded, to_int
from .test_lower import assert_float_path_is_the_model, run_blocks

FOLD = LoweringOptions(bits=8, max_lookup_bits=8, fold_attention=True)


@pytest.mark.parametrize("which", ["gpt", "bert"])
def test_folded_float_path_is_the_model(which, tiny_gpt, tiny_bert) -> None:
    model = copy.deepcopy(tiny_gpt[0] if which == "gpt" else tiny_bert)
    ids = torch.randint(0, 100, (4, 8), generator=torch.Generator().manual_seed(1))
    x = embedded(model, ids)
    g = lower_blocks(model, x, FOLD)
    assert any(n.name.endswith(".vo.lin") for n in g.nodes)
    assert not any(n.name.endswith("attn.o") for n in g.nodes)  # no output projection left
    assert_float_path_is_the_model(model, x, g.calibration_ref)


def test_folded_integers_track_the_floats(tiny_gpt, gpt_windows) -> None:
    model, _ = tiny_gpt
    calib, test = gpt_windows
    g = lower_blocks(model, embedded(model, calib), FOLD)
    x = embedded(model, test)
    out = evaluate(g, to_int(g, x))["output"] * g.meta["output_scale"]
    ref = run_blocks(model, x)
    cos = (out * ref).sum(-1) / (np.linalg.norm(out, axis=-1) * np.linalg.norm(ref, axis=-1))
    assert cos.mean() > 0.95


def test_attention_alone_is_the_blocks_attention(tiny_bert) -> None:
    """``lower_attention`` on z = LN(x): the block's attention update, floats and integers."""
    model = copy.deepcopy(tiny_bert).double()
    ids = torch.randint(0, 100, (16, 8), generator=torch.Generator().manual_seed(3))
    blk = model.blocks[0]
    with torch.no_grad():
        z = torch.tensor(embedded(model, ids))
        want = blk.attention(z, model.attention_mask(8)).numpy()
    g = lower_attention(blk, z.numpy(), LoweringOptions(bits=7, wide_bits=8, max_lookup_bits=8))
    assert np.abs(g.calibration_ref - want).max() < 1e-9 * np.abs(want).max()
    got = evaluate(g, to_int(g, z.numpy()))["output"] * g.meta["output_scale"]
    cos = (got * want).sum(-1) / (np.linalg.norm(got, axis=-1) * np.linalg.norm(want, axis=-1))
    assert cos.mean() > 0.98
    with pytest.raises(CompileError, match="key mask"):
        lower_attention(blk, z.numpy(), LoweringOptions(key_mask=True))


def test_clipped_scale_beats_the_peak_on_heavy_tails() -> None:
    """One outlier among Gaussian values: clipping it costs less than coarsening the rest."""
    ref = np.random.default_rng(0).normal(size=4096)
    ref[0] = 40.0
    peak = 40.0 / 7

    def err(scale: float) -> float:
        return float(np.square(np.clip(np.floor(ref / scale + 0.5), -7, 7) * scale - ref).sum())

    best = clipped_scale(ref, peak, -7, 7)
    assert best < peak and err(best) < err(peak)
    flat = np.linspace(-1, 1, 15)  # values on the grid already: the peak's scale is exact
    assert clipped_scale(flat, 1 / 7, -7, 7) == pytest.approx(1 / 7)
