"""KV cache for incremental decoding (issue #13; SPEC C6, R2): prefill + one call per new
token computes the full-sequence forward's logits, and the context cannot overflow.

Tolerances (tests/tolerance.py): every float32 run is compared against a float64 run of the
same model on the same tokens, within γ̃_N(λ)·max|y64| with N the roundings along the
longest path of a T-token forward (``transformer_roundings``); two float64 runs (cached and
full) against each other within twice the float64 bound, since each is within one of the
exact result.
"""

import copy

import pytest
import torch
from tolerance import U64, assert_within, network_atol, transformer_roundings

from cerberus.frontends.canonical import KVCache


def _roundings(model, t: int) -> int:
    c = model.cfg
    return transformer_roundings(c.d_model, c.d_ff, c.n_layer, c.head_dim, t)


def _incremental(model, ids: torch.Tensor, prompt: int, mask: torch.Tensor | None = None):
    """Logits of every position of ``ids``: prefill ``ids[:, :prompt]``, then one token at
    a time; ``mask`` (``[B, T]``) is passed as far as each call has got."""
    cache = KVCache()
    sub = (lambda n: None) if mask is None else (lambda n: mask[:, :n])
    outs = [model(ids[:, :prompt], sub(prompt), cache=cache)]
    for i in range(prompt, ids.shape[1]):
        outs.append(model(ids[:, i : i + 1], sub(i + 1), cache=cache))
    assert cache.length == ids.shape[1]
    return torch.cat(outs, dim=1), cache


@pytest.mark.parametrize("prompt,total", [(1, 9), (7, 20), (40, 64)])  # 64 = n_positions
def test_prefill_then_steps_equal_full_forward(tiny_gpt, prompt, total):
    model, _ = tiny_gpt
    m64 = copy.deepcopy(model).double()
    assert total <= model.cfg.n_positions
    ids = torch.randint(0, model.cfg.vocab_size, (2, total),
                        generator=torch.Generator().manual_seed(total))
    with torch.no_grad():
        full64 = m64(ids)
        inc64, cache = _incremental(m64, ids, prompt)
        full32 = model(ids)
        inc32, _ = _incremental(model, ids, prompt)
    c = model.cfg
    for k, v in cache.layers:
        assert k.shape == v.shape == (2, c.n_head, total, c.head_dim)
    n = _roundings(model, total)
    assert_within(inc64, full64, 2 * network_atol(full64, n, u=U64), "cached vs full (f64)")
    atol = network_atol(full64, n)
    assert_within(full32, full64, atol, "full forward f32 vs f64")
    assert_within(inc32, full64, atol, "prefill + steps f32 vs full f64")
    # the bound sees context: a step run without its cache is far outside it
    with torch.no_grad():
        alone = model(ids[:, -1:])
    assert (alone[:, -1] - full64[:, -1]).abs().max() > 10 * atol


def test_cache_with_left_padding_equals_masked_full_forward(tiny_gpt):
    model, _ = tiny_gpt
    m64 = copy.deepcopy(model).double()
    ids = torch.randint(0, model.cfg.vocab_size, (2, 16),
                        generator=torch.Generator().manual_seed(3))
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, :5] = 0  # row 1: a shorter prompt, left-padded
    with torch.no_grad():
        full64 = m64(ids, mask)
        inc64, _ = _incremental(m64, ids, 8, mask)
        inc32, _ = _incremental(model, ids, 8, mask)
        unmasked64 = m64(ids)
    # Only real positions are compared: a padding query sees no real key (every score is
    # masked), so its output is arbitrary, in transformers as here, and nothing reads it.
    real = mask.bool()
    full64, inc64, inc32 = full64[real], inc64[real], inc32[real]
    n = _roundings(model, 16)
    assert_within(inc64, full64, 2 * network_atol(full64, n, u=U64), "cached vs full (f64)")
    atol = network_atol(full64, n)
    assert_within(inc32, full64, atol, "prefill + steps f32 vs full f64")
    # the padding is really hidden: without the mask row 1 differs far beyond the bound
    assert (unmasked64[real] - full64).abs().max() > 10 * atol


def test_context_overflow_is_a_clear_error(tiny_gpt):
    model, _ = tiny_gpt
    n = model.cfg.n_positions
    ids = torch.zeros(1, n, dtype=torch.long)
    cache = KVCache()
    with torch.no_grad():
        model(ids[:, : n - 1], cache=cache)
        model(ids[:, :1], cache=cache)  # exactly n_positions: allowed
        with pytest.raises(ValueError, match="context overflow: 64 cached \\+ 1 new"):
            model(ids[:, :1], cache=cache)
        assert cache.length == n  # a refused call leaves the cache as it was
        with pytest.raises(ValueError, match="context overflow: 0 cached \\+ 65 new"):
            model(torch.zeros(1, n + 1, dtype=torch.long), cache=KVCache())


def test_attention_mask_must_cover_past_and_new(tiny_gpt):
    model, _ = tiny_gpt
    cache = KVCache()
    ids = torch.zeros(1, 4, dtype=torch.long)
    with torch.no_grad():
        model(ids, cache=cache)
        with pytest.raises(ValueError, match=r"expected \[1, 5\]"):
            model(ids[:, :1], torch.ones(1, 1), cache=cache)


def test_encoders_refuse_a_cache(tiny_bert):
    with pytest.raises(ValueError, match="causal LMs"):
        tiny_bert(torch.zeros(1, 3, dtype=torch.long), cache=KVCache())


def test_qkv_is_the_only_place_attention_projects(tiny_gpt):
    """The hybrid client replaces ``Block.qkv`` with one fused encrypted call: attention must
    not reach ``q``, ``k``, ``v`` any other way."""
    model, _ = tiny_gpt
    m = copy.deepcopy(model)
    ids = torch.randint(0, m.cfg.vocab_size, (1, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = m(ids)
    calls = []
    for blk in m.blocks:
        q, k, v = blk.q, blk.k, blk.v

        def fused(x, q=q, k=k, v=v):
            calls.append(x.shape)
            return q(x), k(x), v(x)

        blk.qkv = fused
        blk.q = blk.k = blk.v = None  # any direct use would fail
    with torch.no_grad():
        got = m(ids)
        cache = KVCache()
        m(ids[:, :5], cache=cache)
        m(ids[:, 5:], cache=cache)
    assert torch.equal(got, want)
    assert calls == [(1, 6, m.cfg.d_model)] * 2 + [(1, 5, m.cfg.d_model)] * 2 \
        + [(1, 1, m.cfg.d_model)] * 2
