"""Key masks in the full partition's lowering (issue #13, SPEC C6): padding moves nothing.

With ``LoweringOptions(key_mask=True)`` the client appends the key mask (1 = real token,
0 = padding) as one more column of its one encrypted input, and every head gives a padded
key zero weight (``cerberus.lower.Builder.attention``). What is checked, exactly where the
integers allow it:

* padding's content moves no real position's integers, bit for bit (encoder, right
  padding; causal LM, left padding): the math says a masked key has weight 0, and the
  lowering makes a padded score a constant before the max tree rounds anything;
* a causal LM's right padding hides only keys the causal mask already hides, so the
  masked integers are the unmasked ones, bit for bit;
* an all-real mask on a trained model: the key-masked graph computes the unmasked graph's
  integers, its extra PBS exactly the ``k ⊙ keep`` products and two 1-bit mask lookups;
* the lowering's float path of a padded window is the model on the unpadded sequence
  within 2·γ̃_N(λ, u64)·max|y| (tests/tolerance.py, as test_lower.py's float-path check);
* the integers of padded windows are as close to the unpadded sequence as the same
  graph's integers of unpadded windows are to the model (the bound is the graph's own
  quantization error, measured, not a float rounding), and without the mask they are not.
"""

import copy

import numpy as np
import onnx
import pytest
import torch
import transformers
from tolerance import U64, assert_within, network_atol, transformer_roundings

from cerberus.errors import CompileError
from cerberus.frontends.huggingface import from_hf_module
from cerberus.ir import IntGraph, evaluate
from cerberus.lower import LoweringOptions, lower_blocks, padding_masks
from cerberus.onnx_export import export_onnx, run_onnx

from .conftest import embedded, to_int

T = 8
KEYED = LoweringOptions(key_mask=True)


def build_peaky_bert():
    """A tiny random BERT whose attention matters (``initializer_range=0.2``: with the
    default 0.02 every head is nearly uniform, and padding barely moves the integers)."""
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=64,
                                  max_position_embeddings=32, initializer_range=0.2)
    torch.manual_seed(0)
    return from_hf_module(transformers.BertModel(cfg, add_pooling_layer=False).eval())


@pytest.fixture(scope="module")
def peaky_bert():
    return build_peaky_bert()


def ids_of(n: int, seed: int) -> torch.Tensor:
    """``[n, T]`` seeded random token ids."""
    return torch.randint(1, 100, (n, T), generator=torch.Generator().manual_seed(seed))


def keyed_input(graph: IntGraph, x: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """What the client sends: its integers and the key-mask column."""
    return np.concatenate([to_int(graph, x), keep[..., None].astype(np.int64)], -1)


def right_padded(n: int) -> np.ndarray:
    """``[n, T]`` masks of 1 … T−1 real tokens then padding, as a tokenizer pads."""
    return (np.arange(T)[None, :] < (np.arange(n) % (T - 1) + 1)[:, None]).astype(np.int64)


def left_padded(n: int) -> np.ndarray:
    return right_padded(n)[:, ::-1].copy()


def run_blocks(model, x: np.ndarray) -> np.ndarray:
    """The float blocks in double precision, on a copy (fixtures are shared)."""
    with torch.no_grad():
        return copy.deepcopy(model).double().run_blocks(torch.tensor(x)).numpy()


def _case(which: str, tiny_gpt, tiny_bert, peaky_bert):
    """(model, key masks of the test windows) of a parametrised case."""
    if which == "gpt-left":
        return tiny_gpt[0], left_padded(16)
    model = {"bert": peaky_bert, "bert-flat": tiny_bert}[which]
    return model, right_padded(16)


@pytest.fixture(scope="module")
def graphs(tiny_gpt, tiny_bert, peaky_bert) -> dict[str, IntGraph]:
    """Each model lowered with the key mask on its default calibration (every window
    unpadded and padded)."""
    out = {}
    for name, model in (("gpt", tiny_gpt[0]), ("bert", peaky_bert), ("bert-flat", tiny_bert)):
        out[name] = lower_blocks(model, embedded(model, ids_of(24, 1)), KEYED)
    return out


@pytest.mark.parametrize("which", ["bert", "bert-flat", "gpt-left"])
def test_padding_content_moves_no_real_integer(which, tiny_gpt, tiny_bert, peaky_bert,
                                               graphs) -> None:
    model, keep = _case(which, tiny_gpt, tiny_bert, peaky_bert)
    g = graphs[which.split("-left")[0]]
    ids = ids_of(16, 2)
    other = torch.where(torch.tensor(keep).bool(), ids, ids_of(16, 3))  # same real tokens
    assert not torch.equal(ids, other)
    a = evaluate(g, keyed_input(g, embedded(model, ids), keep))["output"]
    b = evaluate(g, keyed_input(g, embedded(model, other), keep))["output"]
    real = keep.astype(bool)
    assert np.array_equal(a[real], b[real])
    assert not np.array_equal(a[~real], b[~real])  # the padding's own rows did change
    # and the mask is what holds them: attending to the padding moves real positions
    ones = np.ones_like(keep)
    a1 = evaluate(g, keyed_input(g, embedded(model, ids), ones))["output"]
    b1 = evaluate(g, keyed_input(g, embedded(model, other), ones))["output"]
    assert not np.array_equal(a1[real], b1[real])


def test_right_padding_of_a_causal_lm_is_the_unpadded_window(tiny_gpt, graphs) -> None:
    """Right padding hides only future keys, hidden already: the same integers."""
    model, _ = tiny_gpt
    g = graphs["gpt"]
    x = embedded(model, ids_of(16, 4))
    keep = right_padded(16)
    padded = evaluate(g, keyed_input(g, x, keep))["output"]
    whole = evaluate(g, keyed_input(g, x, np.ones_like(keep)))["output"]
    real = keep.astype(bool)
    assert np.array_equal(padded[real], whole[real])


def test_all_real_mask_costs_only_the_key_products(tiny_gpt) -> None:
    """Trained attention reaches exp = 0 inside the exp table's range, so the mask's fold
    into the exp index costs nothing: with an all-real mask the key-masked graph computes
    the unmasked graph's integers; its extra PBS are each layer's ``k ⊙ keep`` (2 per
    element of k) and, once per graph, 1 per position for each of the two 1-bit mask
    lookups, for the rounding they share and for the keep bit's zero-point twin
    (``Builder.product``: k enters its product unsigned)."""
    model, _ = tiny_gpt
    x = embedded(model, ids_of(24, 1))
    plain = lower_blocks(model, x)
    keyed = lower_blocks(model, x, KEYED, keep=np.ones((24, T), dtype=np.int64))
    for n in plain.nodes:
        if n.name.endswith(".exp"):
            assert keyed[n.name].attrs["lsbs"] == n.attrs["lsbs"]
            assert keyed[n.name].lookup_bits == n.lookup_bits
    xt = embedded(model, ids_of(16, 2))
    assert np.array_equal(evaluate(plain, to_int(plain, xt))["output"],
                          evaluate(keyed, keyed_input(keyed, xt, np.ones((16, T))))["output"])
    cfg = model.cfg
    inner = cfg.n_head * cfg.head_dim
    extra = 4 * T + cfg.n_layer * 2 * T * inner
    assert keyed.pbs_count() - plain.pbs_count() == extra
    widths = {keyed[n].lookup_bits for n in keyed.pbs_by_node() if n not in
              {m.name for m in plain.nodes} and keyed[n].op == "lut"}
    assert widths == {1}


def test_flat_attention_takes_one_more_exp_bit(tiny_bert, graphs) -> None:
    """Nearly uniform heads: exp never reaches 0 inside its table, so a padded key goes
    just past the real range and the exp index takes one more rounding bit (checked
    correct by the padding test's "bert-flat" case)."""
    x = embedded(tiny_bert, ids_of(24, 1))
    plain = lower_blocks(tiny_bert, x)
    keyed = lower_blocks(tiny_bert, x, KEYED, keep=np.ones((24, T), dtype=np.int64))
    for n in plain.nodes:
        if n.name.endswith(".exp"):
            assert np.all(n.attrs["table"] > 0)
            assert keyed[n.name].attrs["lsbs"] == n.attrs["lsbs"] + 1
            assert keyed[n.name].lookup_bits <= KEYED.max_lookup_bits
    assert graphs["bert-flat"].meta["key_mask"] and not plain.meta["key_mask"]


@pytest.mark.parametrize("which", ["bert", "gpt-left"])
def test_float_path_is_the_unpadded_sequence(which, tiny_gpt, tiny_bert, peaky_bert) -> None:
    """The lowering's float path of a padded window, at its real positions, is the model
    on the real tokens alone (their positions kept): two float64 runs of the blocks,
    each within γ̃_N(λ, u64)·max|y| (N the blocks' roundings at T positions)."""
    model, keep = _case(which, tiny_gpt, tiny_bert, peaky_bert)
    x = embedded(model, ids_of(16, 5))
    g = lower_blocks(model, x, KEYED, keep=keep)
    c = model.cfg
    n = transformer_roundings(c.d_model, c.d_ff, c.n_layer, c.head_dim, T, lm_head=False)
    for i in range(len(x)):
        real = keep[i].astype(bool)
        want = run_blocks(model, x[i:i + 1, real])[0]
        assert_within(g.calibration_ref[i][real], want, 2 * network_atol(want, n, u=U64),
                      f"window {i}: float path vs the unpadded sequence")


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def test_padded_integers_track_the_unpadded_sequence(peaky_bert, graphs) -> None:
    """Quantization error is the graph's own, not a float rounding: the bound is what the
    same graph does on unpadded windows. Real positions of padded windows must be within
    twice its worst 1 − cosine there; attending to the padding is far outside it."""
    g, model = graphs["bert"], peaky_bert
    x = embedded(model, ids_of(16, 6))
    keep = right_padded(16)
    scale = g.meta["output_scale"]
    whole = evaluate(g, keyed_input(g, x, np.ones_like(keep)))["output"] * scale
    bound = 2 * float((1 - _cosines(whole, run_blocks(model, x))).max())
    padded = evaluate(g, keyed_input(g, x, keep))["output"] * scale
    worst = unmasked = 0.0
    for i in range(len(x)):
        real = keep[i].astype(bool)
        want = run_blocks(model, x[i:i + 1, real])[0]
        worst = max(worst, float((1 - _cosines(padded[i][real], want)).max()))
        unmasked = max(unmasked, float((1 - _cosines(whole[i][real], want)).max()))
    assert worst <= bound < unmasked


def test_padding_masks_cover_both_sides_and_every_length() -> None:
    keep = padding_masks(2 * (T - 1), T)
    lengths = keep.sum(1)
    assert sorted(set(lengths.tolist())) == list(range(1, T))
    assert keep[0, 0] == 1 and keep[0, -1] == 0  # right padding
    assert keep[1, 0] == 0 and keep[1, -1] == 1  # left padding


def test_onnx_export_takes_the_mask_column(tmp_path, graphs, peaky_bert) -> None:
    """The artefact's plaintext export has one input of d + 1 columns and the same bits."""
    g = graphs["bert"]
    path = export_onnx(g, tmp_path / "model.onnx")
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert dims[-1].dim_value == peaky_bert.cfg.d_model + 1 == g.meta["d_model"]
    xs = keyed_input(g, embedded(peaky_bert, ids_of(4, 7)), right_padded(4))
    for x in xs:
        assert np.array_equal(run_onnx(path, x[None]), evaluate(g, x[None])["output"])


def test_key_masks_are_checked(tiny_bert) -> None:
    x = embedded(tiny_bert, ids_of(4, 1))
    with pytest.raises(CompileError, match="need LoweringOptions"):
        lower_blocks(tiny_bert, x, keep=np.ones((4, T)))
    with pytest.raises(CompileError, match="0/1 of shape"):
        lower_blocks(tiny_bert, x, KEYED, keep=np.ones((4, T - 1)))
    with pytest.raises(CompileError, match="0/1 of shape"):
        lower_blocks(tiny_bert, x, KEYED, keep=np.full((4, T), 2))
