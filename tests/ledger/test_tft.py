"""Tests for the TFT Enforcer (SPEC L9). Training runs are tiny (hidden 16, ≤ 300 steps)."""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch
from tolerance import LIBM_ULPS, U64, assert_within, gamma, network_atol

from ledger.consensus import yuma_epoch
from ledger.tft import (
    QUANTILES,
    SERIES_FEATURES,
    U16_MAX,
    TFTConfig,
    TFTEnforcer,
    enforcer_skill,
    forecast_skill,
    miner_accuracy,
    quantile_loss,
    tft_accuracy,
    train_tft,
)

WINDOW = 16


def periodic_chain(blocks: int, seed: int = 0, phase: float = 0.0) -> np.ndarray:
    """Synthetic per-block chain series: daily-like cycles plus noise; emission constant."""
    rng = np.random.default_rng(seed)
    t = np.arange(blocks) + phase
    cycle = np.sin(2 * np.pi * t / 12)
    return np.stack(
        [
            100 + 30 * cycle + rng.normal(0, 3, blocks),  # txs
            10 + np.cos(2 * np.pi * t / 12) + rng.normal(0, 0.1, blocks),  # block_time
            5000 + 1000 * cycle + rng.normal(0, 100, blocks),  # bytes
            50 + 10 * np.sin(2 * np.pi * t / 6) + rng.normal(0, 1, blocks),  # active_addresses
            np.full(blocks, 10.0),  # emission per block
        ],
        axis=1,
    )


SERIES = periodic_chain(300)
TRAIN, HELD_OUT = SERIES[:220], SERIES[220 - WINDOW :]


@pytest.fixture(scope="module")
def trained() -> TFTEnforcer:
    return train_tft(TRAIN, seed=0, window=WINDOW, steps=300)


@pytest.fixture(scope="module")
def untrained() -> TFTEnforcer:
    return train_tft(TRAIN, seed=0, window=WINDOW, steps=0)


def tft_roundings(cfg: TFTConfig) -> int:
    """``N`` of tests/tolerance.py for the TFT: roundings along its longest path.

    Variable selection: the scalar embeddings, the selection GRN on the flattened F·d
    inputs, the softmax over F and the mix (F); the LSTMs: per step of window + horizon, the
    gate pre-activations (2d), sigmoid and tanh, the cell update; five GRN / gate-add-norm
    layers (three linears of d, ELU and sigmoid, a LayerNorm's 2·2d); attention (scores of
    d_head, softmax and mix over the sequence, the output of d_head); the head (d), its
    softplus and cumsum over the quantiles.
    """
    d, f, steps = cfg.hidden, cfg.n_features, cfg.window + cfg.horizon
    act, ln = 2 * LIBM_ULPS + 4, 2 * (2 * d + 2)
    grn = 3 * d + act + ln
    selection = (LIBM_ULPS + 2) + (f * d + 2 * d + act + ln) + (f + LIBM_ULPS + 2) + f
    lstm = steps * (2 * d + act + 3)
    d_head = d // cfg.heads
    attention = d + d_head + (LIBM_ULPS + steps + 1) + steps + d_head
    head = d + LIBM_ULPS + len(cfg.quantiles)
    return selection + lstm + 5 * grn + attention + head


def _standardised_windows(model: TFTEnforcer, series: np.ndarray):
    z = (series - model.mean) / model.std
    n = len(series) - WINDOW
    past = np.stack([z[i : i + WINDOW] for i in range(n)])
    target = np.stack([z[i + WINDOW : i + WINDOW + 1] for i in range(n)])
    return past, target


def test_series_features_order() -> None:
    assert SERIES_FEATURES == ("txs", "block_time", "bytes", "active_addresses", "emission")
    assert SERIES.shape[1] == len(SERIES_FEATURES)


def test_quantile_loss_by_hand() -> None:
    # y = 1, predictions 0 / 1 / 3 for q = 0.1 / 0.5 / 0.9:
    #   q=0.1: e = 1 → 0.1*1 = 0.1;  q=0.5: e = 0 → 0;  q=0.9: e = −2 → (0.9−1)(−2) = 0.2
    pred = torch.tensor([[0.0, 1.0, 3.0]])
    target = torch.tensor([1.0])
    # float32, all terms ≥ 0: q (rounded), q·e, a sum of 3 and a divide: relative ≤ γ_5
    assert float(quantile_loss(pred, target, QUANTILES)) == pytest.approx(
        (0.1 + 0 + 0.2) / 3, rel=gamma(5), abs=0)


def test_training_is_deterministic_given_seed() -> None:
    # The global torch RNG is in a different state before each run: only `seed` may matter.
    torch.manual_seed(1)
    a = train_tft(TRAIN, seed=3, window=WINDOW, steps=40)
    torch.manual_seed(2)
    b = train_tft(TRAIN, seed=3, window=WINDOW, steps=40)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
    assert a.loss_history == b.loss_history
    assert tft_accuracy(a, HELD_OUT) == tft_accuracy(b, HELD_OUT)
    # a different seed gives a different model
    c = train_tft(TRAIN, seed=4, window=WINDOW, steps=40)
    assert not all(torch.equal(sa[k], c.model.state_dict()[k]) for k in sa)


def test_training_leaves_the_global_torch_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_tft(TRAIN, seed=9, window=WINDOW, steps=2)
    assert torch.equal(torch.rand(3), expected)


def test_it_learns_held_out_loss_drops(trained: TFTEnforcer, untrained: TFTEnforcer) -> None:
    before = untrained.quantile_loss(HELD_OUT)
    after = trained.quantile_loss(HELD_OUT)
    assert after < 0.5 * before
    # the training loss went down too (first 20 vs last 20 minibatches)
    assert np.mean(trained.loss_history[-20:]) < np.mean(trained.loss_history[:20])


def test_accuracy_beats_naive_baselines(trained: TFTEnforcer, untrained: TFTEnforcer) -> None:
    acc = tft_accuracy(trained, HELD_OUT)
    assert 0.0 <= acc <= 1.0
    past, target = _standardised_windows(trained, HELD_OUT)
    # persistence: every quantile equals the last observed value
    persistence = np.repeat(past[:, -1:, :, None], len(QUANTILES), axis=-1)
    assert acc > forecast_skill(persistence, target, QUANTILES)
    # mean of the window, same for every quantile
    window_mean = np.repeat(past.mean(axis=1, keepdims=True)[..., None], len(QUANTILES), -1)
    assert acc > forecast_skill(window_mean, target, QUANTILES)
    assert acc > tft_accuracy(untrained, HELD_OUT)
    assert acc > 0.5  # clear skill over knowing only the spread of the series


def test_forecast_skill_extremes() -> None:
    rng = np.random.default_rng(0)
    target = rng.normal(size=(50, 1, 2))
    perfect = np.repeat(target[..., None], 3, axis=-1)
    assert forecast_skill(perfect, target, QUANTILES) == 1.0
    # the climatological forecaster itself has skill exactly 0
    clim = np.broadcast_to(np.quantile(target.reshape(-1, 2), QUANTILES, axis=0).T,
                           target.shape + (3,))
    # (the same expression as forecast_skill's own climatology: 1 − L/L, exactly 0)
    assert forecast_skill(clim, target, QUANTILES) == 0.0
    # nothing varies -> 0
    assert forecast_skill(np.zeros((5, 1, 2, 3)), np.ones((5, 1, 2)), QUANTILES) == 0.0


def test_quantiles_are_ordered(trained: TFTEnforcer, untrained: TFTEnforcer) -> None:
    rng = np.random.default_rng(1)
    wild = rng.normal(0, 50, size=(32, WINDOW, len(SERIES_FEATURES)))
    for model in (trained, untrained):
        q = model.predict_standardised(wild)
        assert q.shape == (32, 1, len(SERIES_FEATURES), len(QUANTILES))
        assert np.all(np.diff(q, axis=-1) >= 0)
    # in real units too, and the 80% interval brackets most held-out blocks
    fc = trained.forecast(HELD_OUT[:-1])
    assert fc.shape == (1, len(SERIES_FEATURES), len(QUANTILES))
    assert np.all(np.diff(fc, axis=-1) >= 0)


def test_held_out_interval_coverage_is_roughly_calibrated(trained: TFTEnforcer) -> None:
    past, target = _standardised_windows(trained, HELD_OUT)
    q = trained.predict_standardised(past)
    inside = (target >= q[..., 0]) & (target <= q[..., -1])
    coverage = inside[..., :4].mean()  # the four varying features
    assert 0.5 < coverage <= 1.0


def test_prediction_does_not_depend_on_batching(trained: TFTEnforcer) -> None:
    past, _ = _standardised_windows(trained, HELD_OUT)
    whole = trained.predict_standardised(past)
    # Other batch shapes may round differently in float32: each run within γ̃_N(λ)·max|y64|
    # of the model in float64 (tests/tolerance.py), so any two within twice that.
    with torch.no_grad():
        ref64 = copy.deepcopy(trained.model).double().eval()(torch.as_tensor(past)).numpy()
    atol = network_atol(ref64, tft_roundings(trained.config))
    chunked = trained.predict_standardised(past, chunk=7)
    single = trained.predict_standardised(past[5:6])
    for name, got, ref in (("whole", whole, ref64), ("chunk=7", chunked, ref64),
                           ("one window", single, ref64[5:6])):
        assert_within(got, ref, atol, f"{name} vs float64")
    assert_within(chunked, whole, 2 * atol, "chunk=7 vs whole")
    assert_within(single, whole[5:6], 2 * atol, "one window vs whole")


def test_save_load_roundtrip(trained: TFTEnforcer) -> None:
    blob = trained.to_bytes()
    loaded = TFTEnforcer.from_bytes(blob)
    assert loaded.config == trained.config
    np.testing.assert_array_equal(loaded.mean, trained.mean)
    np.testing.assert_array_equal(loaded.std, trained.std)
    past, _ = _standardised_windows(trained, HELD_OUT)
    np.testing.assert_array_equal(loaded.predict_standardised(past),
                                  trained.predict_standardised(past))
    assert tft_accuracy(loaded, HELD_OUT) == tft_accuracy(trained, HELD_OUT)


def test_miner_accuracy_ranks_honest_above_spiky_and_noise(trained: TFTEnforcer) -> None:
    rng = np.random.default_rng(5)
    honest = 0.1 * periodic_chain(120, seed=1)
    spiky = honest.copy()
    spikes = rng.random(120) < 0.2
    spiky[spikes, :4] *= 5  # fabricated bursts of activity on a fifth of the blocks
    noise = rng.normal(10, 3, size=(120, len(SERIES_FEATURES)))
    idle = np.ones((120, len(SERIES_FEATURES)))
    acc = miner_accuracy(trained, np.stack([honest, spiky, noise, idle]))
    assert acc.shape == (4,)
    assert np.all((acc >= 0) & (acc <= 1))
    assert acc[0] > acc[1] and acc[0] > acc[2]
    assert acc[3] == 0.0
    # u16 quantisation so nodes agree: acc = k/65535, and acc·65535 is k within the two
    # float64 roundings of the divide and the multiply, γ_2·65535
    assert_within(acc * U16_MAX, np.round(acc * U16_MAX), gamma(2, U64) * U16_MAX, "u16 grid")


def test_miner_accuracy_is_the_interval_coverage(trained: TFTEnforcer) -> None:
    # Recompute the documented definition independently for one miner: standardise with the
    # miner's own mean/std, forecast each block from the previous window, count the
    # (block, feature) observations inside [q0.1, q0.9] over the varying features.
    series = 0.1 * periodic_chain(WINDOW + 30, seed=4)  # 30 windows, all scored
    z = (series - series.mean(axis=0)) / np.where(series.std(axis=0) > 0, series.std(axis=0), 1)
    past = np.stack([z[i : i + WINDOW] for i in range(len(z) - WINDOW)])
    target = z[WINDOW:]
    q = trained.predict_standardised(past)[:, 0]  # (N, F, Q)
    inside = (target >= q[..., 0]) & (target <= q[..., -1])
    expected = inside[:, :4].mean()  # emission (column 4) is constant for this miner
    acc = miner_accuracy(trained, series[None])
    # the same predictions: acc is `expected` rounded to the u16 grid (half a step), up to
    # float64 rounding of the coverage mean over the 30·4 observations (γ_122)
    assert acc[0] == pytest.approx(expected, abs=0.5 / U16_MAX + gamma(122, U64), rel=0)


def test_attention_is_causal_over_the_horizon() -> None:
    model = train_tft(TRAIN, seed=0, window=8, horizon=3, steps=0)
    past = torch.as_tensor(np.random.default_rng(0).normal(size=(4, 8, 5)), dtype=torch.float32)
    q, var_weights, attn = model.model.forward_with_weights(past)
    assert q.shape == (4, 3, 5, len(QUANTILES))
    assert attn.shape == (4, 11, 11)
    assert torch.all(torch.triu(attn, diagonal=1) == 0)
    # float32 softmax rows sum to 1 within (Higham) γ_n, n: the n terms' exp (LIBM_ULPS
    # each, their rounded argument), sum and divide, then this sum of n; attention is the
    # mean over heads (+ heads roundings)
    def softmax_sum_atol(n: int, extra: int = 0) -> float:
        return gamma(2 * n + LIBM_ULPS + 4 + extra)

    assert_within(attn.sum(-1), torch.ones(4, 11), softmax_sum_atol(11, model.config.heads),
                  "attention rows")
    # variable-selection weights are a distribution over the five series
    assert_within(var_weights.sum(-1), torch.ones(4, 8), softmax_sum_atol(5), "selection rows")
    importance = model.variable_importance(TRAIN[:40])
    assert set(importance) == set(SERIES_FEATURES)
    # each importance a float32 mean over windows × steps of the selection weights:
    # within γ_{count+1}, and the five summed (to a softmax row's sum) in float64
    count = (40 - WINDOW - model.config.horizon + 1) * WINDOW
    assert sum(importance.values()) == pytest.approx(
        1.0, abs=softmax_sum_atol(5) + gamma(count + 1), rel=0)


def test_miner_accuracy_is_scale_free(trained: TFTEnforcer) -> None:
    honest = 0.1 * periodic_chain(80, seed=2)
    a = miner_accuracy(trained, honest[None])
    b = miner_accuracy(trained, (7.0 * honest + 3.0)[None])
    # the standardised series agree to float64 rounding, so the coverages do too (no
    # observation sits on an interval's edge); rounded to the u16 grid that is at most one
    # step apart
    assert_within(a, b, 1 / U16_MAX, "accuracy of a rescaled series")


def test_miner_accuracy_feeds_the_epoch(trained: TFTEnforcer) -> None:
    honest = 0.1 * periodic_chain(80, seed=3)
    noise = np.random.default_rng(0).normal(10, 3, size=(80, len(SERIES_FEATURES)))
    acc = miner_accuracy(trained, np.stack([honest, noise]))
    # validators split their weight evenly; with β = 1 the TFT term favours the honest miner
    res = yuma_epoch(np.ones((2, 2)), np.array([1, 1]), np.zeros((2, 2)), beta=1.0,
                     tft_accuracy=acc)
    assert res.incentive[0] > res.incentive[1]
    # normalised in float64: n divides and a sum of n, γ_{2n}
    assert res.incentive.sum() == pytest.approx(1.0, abs=gamma(2 * len(acc), U64), rel=0)


def test_bad_inputs_are_rejected(trained: TFTEnforcer) -> None:
    with pytest.raises(ValueError):
        train_tft(TRAIN[:10], window=WINDOW, steps=1)  # shorter than window + horizon
    with pytest.raises(ValueError):
        tft_accuracy(trained, HELD_OUT[:, :3])
    with pytest.raises(ValueError):
        miner_accuracy(trained, HELD_OUT)  # missing the miner axis


# --- the Enforcer's report numbers (issue #16) ------------------------------------------------


def test_checkpoint_hash_names_the_numbers_of_the_model(trained: TFTEnforcer) -> None:
    same = TFTEnforcer.from_bytes(trained.to_bytes())
    assert same.checkpoint_hash() == trained.checkpoint_hash()
    assert len(trained.checkpoint_hash()) == 64
    nudged = copy.deepcopy(trained)
    with torch.no_grad():
        nudged.model.head.bias[0] += 1e-6  # one weight, one float32 step or so
    assert nudged.checkpoint_hash() != trained.checkpoint_hash()
    moved = copy.deepcopy(trained)
    moved.mean = moved.mean + 1.0  # the standardisation is part of the forecasts too
    assert moved.checkpoint_hash() != trained.checkpoint_hash()


def test_enforcer_skill_is_deterministic_and_on_the_bps_grid() -> None:
    from ledger.tft_report import RECIPE

    rng = np.random.default_rng(7)
    miners = np.stack([0.1 * periodic_chain(60, seed=8),
                       rng.normal(10, 3, size=(60, len(SERIES_FEATURES))),
                       np.zeros((60, len(SERIES_FEATURES)))])
    first = enforcer_skill(SERIES[:60], miners, RECIPE)
    torch.manual_seed(123)  # the caller's RNG state does not matter
    assert enforcer_skill(SERIES[:60], miners, RECIPE) == first
    checkpoint, skill = first
    model = train_tft(SERIES[:60], seed=RECIPE.seed, window=RECIPE.window, steps=RECIPE.steps,
                      hidden=RECIPE.hidden, heads=RECIPE.heads, batch_size=RECIPE.batch_size)
    assert checkpoint == model.checkpoint_hash()
    k = np.rint(miner_accuracy(model, miners, max_windows=RECIPE.max_windows) * U16_MAX)
    assert skill == [int(x) * 10_000 // U16_MAX for x in k]
    assert skill[2] == 0  # an idle miner: nothing varies, nothing to forecast
    # another seed is another model
    assert enforcer_skill(SERIES[:60], miners, replace(RECIPE, seed=1))[0] != checkpoint


def test_miner_series_reads_only_the_weight_txs() -> None:
    from ledger.block import Block, Header
    from ledger.keys import Wallet
    from ledger.series import MINER_COLUMNS, miner_series
    from ledger.tx import make_tx

    v1, v2 = Wallet.from_seed("s-v1"), Wallet.from_seed("s-v2")

    def block(h: int, *txs: object) -> Block:
        return Block(Header(h, "00" * 32, "00" * 32, "00" * 32, h, v1.address), tuple(txs))

    def weights(v: Wallet, brain: int, uids: list[int], w: list[int]) -> object:
        return make_tx(v, "set_weights", 0, "c", brain=brain, uids=uids, weights=w)

    blocks = [block(1, weights(v1, 1, [0, 1], [65535, 0]),
                    weights(v2, 7, [0, 1], [1, 1])),  # another Brain: ignored
              block(2),
              block(3, weights(v2, 1, [1, 5], [65535, 9]))]  # uid 5 not asked for
    x = miner_series(blocks, 1, [0, 1])
    assert x.shape == (2, 3, len(MINER_COLUMNS))
    assert x[0, :, 0].tolist() == [1, 0, 0] and x[1, :, 0].tolist() == [0, 0, 1]
    assert x[0, :, 1].tolist() == [0, 1, 2] and x[1, :, 1].tolist() == [0, 1, 0]
    assert x[0, :, 2].tolist() == [1, 0, 0] and x[1, :, 2].tolist() == [0, 0, 1]
    assert x[0, :, 3].tolist() == [1, 1, 1] and x[1, :, 3].tolist() == [0, 0, 1]
    assert x[0, :, 4].tolist() == [1, 1, 1] and x[1, :, 4].tolist() == [0, 0, 1]
