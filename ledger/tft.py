"""The TFT Enforcer (SPEC L9): a compact Temporal Fusion Transformer over the chain's own series.

Whitepaper §3.3.3/§3.4: the Enforcer is trained on the chain's temporal data to minimise a
quantile loss ``E[Q(y, TFT(x))]``, and its ``Accuracy(TFT)`` enters the incentive as
``I = R·C + β(t)·Accuracy(TFT)`` (see :mod:`ledger.consensus`). This module is the only part of
``ledger/`` that imports torch.

Model (Lim et al. 2021, "Temporal Fusion Transformers for interpretable multi-horizon time
series forecasting"), kept to the parts the chain needs:

* **Inputs**: a window of past per-block observations of :data:`SERIES_FEATURES`, each feature
  standardised with the training mean/std. The chain has no static covariates, and the only
  known future input is the relative time index, which is a learned embedding per horizon step.
* **Variable selection network**: each scalar feature is embedded, processed by its own gated
  residual network (GRN), and mixed with softmax weights produced by a GRN over all of them, so
  the model can say which series it relies on.
* **LSTM encoder/decoder** (sequence-to-sequence layer) with a gate-add-norm skip connection.
* **Static enrichment GRN** (no static context here) and **interpretable multi-head attention**:
  heads have their own query/key projections but share one value projection, and the head
  outputs are averaged, so the averaged attention pattern is a faithful explanation. A causal
  mask keeps the decoder from looking ahead.
* **Position-wise GRN** and a linear quantile head for quantiles (0.1, 0.5, 0.9) of every
  feature at every horizon step. Quantiles are monotone by construction (lowest quantile plus a
  cumulative sum of softplus gaps), so intervals never cross.
* **Loss**: the quantile (pinball) loss averaged over quantiles, features and horizon steps.

Training is deterministic given ``seed``: parameters are initialised under
``torch.manual_seed(seed)`` inside a forked RNG (the caller's global RNG is untouched), batches
come from ``numpy.random.default_rng(seed)``, and torch runs single-threaded while training.

Accuracy definitions (both in [0, 1]):

* :func:`tft_accuracy` — the Enforcer's **quantile skill** on a (held-out) series: for each
  feature, ``1 − L_TFT / L_clim`` where ``L`` is the mean pinball loss over all windows and
  ``L_clim`` that of a "climatological" forecaster that always predicts the empirical
  quantiles of the evaluated targets (it knows the marginal distribution but not time). The
  skill is averaged over features that vary and clipped to [0, 1]: 0 means the model knows
  nothing about the series' dynamics beyond its spread, 1 means perfect forecasts. A skill
  score rather than coverage, because coverage rewards wide intervals and cannot tell a model
  from a naive one.
* :func:`miner_accuracy` — per miner, the **80 % interval coverage** of the miner's own
  observed per-block series by the Enforcer's [q0.1, q0.9] one-step forecasts made from the
  miner's own preceding window. The per-miner series holds the same features measured for that
  miner (transactions it processed, its response time, bytes served, addresses served,
  emission received), standardised with the miner's own mean/std so that a miner is judged on
  the shape of its dynamics, not its size. Why: the whitepaper asks the Enforcer to scrutinise
  "prediction veracity against actual outcomes"; a miner whose reported activity follows the
  dynamics the chain itself exhibits lands inside the forecast interval about 80 % of the time,
  while fabricated spikes (wash activity to inflate scores) or noise land outside it. The value
  is rounded to a multiple of 1/65535 (subtensor's u16 convention) so that nodes agree on it
  despite last-bit float differences between machines.

In the live network (issue #16) :func:`enforcer_skill` retrains the Enforcer each epoch and
turns :func:`miner_accuracy` into each miner's *skill* in bps; the on-chain Accuracy(TFT) is
that skill times the share of validator stake that verified the miner
(:mod:`ledger.tft_report`), because predictability alone would reward a steady cheater.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ledger.tft_report import Recipe

SERIES_FEATURES = ("txs", "block_time", "bytes", "active_addresses", "emission")
QUANTILES = (0.1, 0.5, 0.9)
U16_MAX = 65535


@dataclass(frozen=True)
class TFTConfig:
    """Shape of the network; stored with the weights so a saved Enforcer rebuilds itself."""

    n_features: int = len(SERIES_FEATURES)
    window: int = 16
    horizon: int = 1
    hidden: int = 16
    heads: int = 4
    quantiles: tuple[float, ...] = QUANTILES


# --- building blocks (TFT paper §4) ----------------------------------------------------------


class GatedLinearUnit(nn.Module):
    """GLU(x) = σ(W₁x) ⊙ (W₂x): lets the network switch a whole block off when unneeded."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.fc = nn.Linear(d_in, 2 * d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.glu(self.fc(x), dim=-1)


class GateAddNorm(nn.Module):
    """LayerNorm(residual + GLU(x)): the gated skip connection used around each TFT stage."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.gate = GatedLinearUnit(d, d)
        self.norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.norm(residual + self.gate(x))


class GatedResidualNetwork(nn.Module):
    """GRN(a) = LayerNorm(skip(a) + GLU(W₁·ELU(W₂a + b₂) + b₁)) (TFT eq. 2-4, no context)."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int) -> None:
        super().__init__()
        self.fc2 = nn.Linear(d_in, d_hidden)
        self.fc1 = nn.Linear(d_hidden, d_hidden)
        self.skip = nn.Linear(d_in, d_out) if d_in != d_out else nn.Identity()
        self.gate = GatedLinearUnit(d_hidden, d_out)
        self.norm = nn.LayerNorm(d_out)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        eta1 = self.fc1(F.elu(self.fc2(a)))
        return self.norm(self.skip(a) + self.gate(eta1))


class VariableSelectionNetwork(nn.Module):
    """Embeds each scalar input, weighs the variables with a softmax, and mixes them (eq. 6-8)."""

    def __init__(self, n_vars: int, d: int) -> None:
        super().__init__()
        self.embed_weight = nn.Parameter(torch.randn(n_vars, d) * 0.1)
        self.embed_bias = nn.Parameter(torch.zeros(n_vars, d))
        self.var_grns = nn.ModuleList(GatedResidualNetwork(d, d, d) for _ in range(n_vars))
        self.select = GatedResidualNetwork(n_vars * d, d, n_vars)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xi = x.unsqueeze(-1) * self.embed_weight + self.embed_bias  # (B, T, n_vars, d)
        weights = torch.softmax(self.select(xi.flatten(-2)), dim=-1)  # (B, T, n_vars)
        processed = torch.stack(
            [grn(xi[..., i, :]) for i, grn in enumerate(self.var_grns)], dim=-2
        )
        return (weights.unsqueeze(-1) * processed).sum(dim=-2), weights


class InterpretableMultiHeadAttention(nn.Module):
    """Multi-head attention whose heads share the value projection and are averaged (eq. 13-16).

    Sharing V means every head attends over the same values, so the mean attention matrix is an
    exact account of what the output mixes: the interpretability the Enforcer needs.
    """

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        if d % heads:
            raise ValueError("hidden size must be divisible by the number of heads")
        self.heads, self.d_head = heads, d // heads
        self.query = nn.Linear(d, d)
        self.key = nn.Linear(d, d)
        self.value = nn.Linear(d, self.d_head)
        self.out = nn.Linear(self.d_head, d)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, t, _ = x.shape
        q = self.query(x).view(b, t, self.heads, self.d_head).transpose(1, 2)
        k = self.key(x).view(b, t, self.heads, self.d_head).transpose(1, 2)
        v = self.value(x).unsqueeze(1)  # (B, 1, T, d_head), shared by all heads
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.d_head)
        attn = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
        heads = attn @ v  # (B, H, T, d_head)
        return self.out(heads.mean(dim=1)), attn.mean(dim=1)


class TemporalFusionTransformer(nn.Module):
    """Past window (B, window, F) standardised → quantiles (B, horizon, F, Q), standardised."""

    def __init__(self, config: TFTConfig) -> None:
        super().__init__()
        self.config = config
        d = config.hidden
        self.selection = VariableSelectionNetwork(config.n_features, d)
        # Known future input: the relative time index, as a learned embedding per step.
        self.future_embedding = nn.Parameter(torch.randn(config.horizon, d) * 0.1)
        self.encoder = nn.LSTM(d, d, batch_first=True)
        self.decoder = nn.LSTM(d, d, batch_first=True)
        self.post_lstm = GateAddNorm(d)
        self.enrichment = GatedResidualNetwork(d, d, d)
        self.attention = InterpretableMultiHeadAttention(d, config.heads)
        self.post_attention = GateAddNorm(d)
        self.position_wise = GatedResidualNetwork(d, d, d)
        self.post_block = GateAddNorm(d)
        self.head = nn.Linear(d, config.n_features * len(config.quantiles))
        length = config.window + config.horizon
        self.register_buffer(
            "causal", torch.tril(torch.ones(length, length, dtype=torch.bool)), persistent=False
        )

    def forward_with_weights(
        self, past: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Quantiles plus variable-selection weights and mean attention, for explanations."""
        cfg = self.config
        b = past.shape[0]
        selected, var_weights = self.selection(past)  # (B, W, d)
        future = self.future_embedding.expand(b, -1, -1)  # (B, h, d)
        encoded, state = self.encoder(selected)
        decoded, _ = self.decoder(future, state)
        lstm_in = torch.cat([selected, future], dim=1)
        psi = self.post_lstm(torch.cat([encoded, decoded], dim=1), lstm_in)
        theta = self.enrichment(psi)
        attended, attn = self.attention(theta, self.causal)
        delta = self.post_attention(attended, theta)
        out = self.post_block(self.position_wise(delta), psi)[:, -cfg.horizon :]
        raw = self.head(out).view(b, cfg.horizon, cfg.n_features, len(cfg.quantiles))
        gaps = torch.cumsum(F.softplus(raw[..., 1:]), dim=-1)
        quantiles = torch.cat([raw[..., :1], raw[..., :1] + gaps], dim=-1)
        return quantiles, var_weights, attn

    def forward(self, past: torch.Tensor) -> torch.Tensor:
        return self.forward_with_weights(past)[0]


def quantile_loss(pred: torch.Tensor, target: torch.Tensor, quantiles: tuple[float, ...]):
    """Pinball loss ``max(q·e, (q−1)·e)``, ``e = y − ŷ``, averaged over everything.

    ``pred`` has a trailing quantile axis; ``target`` lacks it.
    """
    q = torch.tensor(quantiles, dtype=pred.dtype)
    err = target.unsqueeze(-1) - pred
    return torch.maximum(q * err, (q - 1) * err).mean()


# --- the Enforcer: model + standardisation + persistence --------------------------------------


@contextlib.contextmanager
def _deterministic_torch(seed: int | None = None) -> Iterator[None]:
    """Single-threaded torch with a private RNG: same inputs, same bits, caller's RNG untouched."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            yield
    finally:
        torch.set_num_threads(threads)


def _check_series(series: np.ndarray, n_features: int | None = None) -> np.ndarray:
    arr = np.asarray(series, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError("series must be (blocks, features)")
    if n_features is not None and arr.shape[1] != n_features:
        raise ValueError(f"series must have {n_features} features")
    if not np.all(np.isfinite(arr)):
        raise ValueError("series must be finite")
    return arr


def _windows(z: np.ndarray, window: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """All (past window, next horizon) pairs of a (T, F) array: (N, window, F), (N, horizon, F)."""
    n = z.shape[0] - window - horizon + 1
    if n < 1:
        raise ValueError(f"need at least window + horizon = {window + horizon} blocks")
    idx = np.arange(n)[:, None]
    return z[idx + np.arange(window)], z[idx + window + np.arange(horizon)]


@dataclass
class TFTEnforcer:
    """A trained TFT with the standardisation it was trained under."""

    config: TFTConfig
    model: TemporalFusionTransformer
    mean: np.ndarray  # (F,) training mean per feature
    std: np.ndarray  # (F,) training std per feature (1 where the feature was constant)
    loss_history: list[float] = field(default_factory=list)

    def predict_standardised(self, past: np.ndarray, *, chunk: int = 4096) -> np.ndarray:
        """Quantiles (N, horizon, F, Q) for standardised windows (N, window, F).

        Runs in chunks so that scoring a full Brain's miners keeps memory bounded. Windows are
        independent, but float32 kernels may round differently for different batch shapes
        (~1e-7), so nodes that must agree bit for bit should keep the default ``chunk``.
        """
        x = torch.as_tensor(np.asarray(past), dtype=torch.float32)
        self.model.eval()
        with _deterministic_torch(), torch.no_grad():
            parts = [self.model(x[i : i + chunk]) for i in range(0, len(x), chunk)]
        cfg = self.config
        if not parts:
            return np.zeros((0, cfg.horizon, cfg.n_features, len(cfg.quantiles)))
        return torch.cat(parts).numpy().astype(np.float64)

    def predict(self, past: np.ndarray) -> np.ndarray:
        """Quantiles (N, horizon, F, Q) in the series' own units, for raw windows (N, window, F)."""
        z = (np.asarray(past, dtype=np.float64) - self.mean) / self.std
        q = self.predict_standardised(z)
        return q * self.std[None, None, :, None] + self.mean[None, None, :, None]

    def forecast(self, series: np.ndarray) -> np.ndarray:
        """Quantiles (horizon, F, Q) of the blocks after the end of ``series``."""
        arr = _check_series(series, self.config.n_features)
        return self.predict(arr[None, -self.config.window :])[0]

    def quantile_loss(self, series: np.ndarray) -> float:
        """Mean pinball loss (standardised units) over every window of ``series``."""
        arr = _check_series(series, self.config.n_features)
        past, target = _windows((arr - self.mean) / self.std, self.config.window,
                                self.config.horizon)
        pred = torch.as_tensor(self.predict_standardised(past))
        return float(quantile_loss(pred, torch.as_tensor(target), self.config.quantiles))

    def variable_importance(self, series: np.ndarray) -> dict[str, float]:
        """Mean variable-selection weight per feature over the windows of ``series``."""
        arr = _check_series(series, self.config.n_features)
        past, _ = _windows((arr - self.mean) / self.std, self.config.window, self.config.horizon)
        self.model.eval()
        with _deterministic_torch(), torch.no_grad():
            _, weights, _ = self.model.forward_with_weights(torch.as_tensor(past).float())
        names = SERIES_FEATURES if self.config.n_features == len(SERIES_FEATURES) else tuple(
            f"f{i}" for i in range(self.config.n_features)
        )
        return dict(zip(names, weights.mean(dim=(0, 1)).tolist(), strict=True))

    def checkpoint_hash(self) -> str:
        """sha256 (hex) of config, weights and standardisation in a fixed byte layout.

        Not the hash of :meth:`to_bytes`: a ``torch.save`` archive's framing may change with
        the torch version, while this covers exactly the numbers that make the forecasts, so
        two nodes that trained the same model publish the same hash in a ``tft_report``.
        """
        h = hashlib.sha256(json.dumps(asdict(self.config), sort_keys=True).encode())
        for name, tensor in sorted(self.model.state_dict().items()):
            h.update(name.encode() + b"\0")
            h.update(tensor.detach().contiguous().numpy().astype("<f4").tobytes())
        h.update(np.asarray(self.mean, dtype="<f8").tobytes())
        h.update(np.asarray(self.std, dtype="<f8").tobytes())
        return h.hexdigest()

    def to_bytes(self) -> bytes:
        """Serialise config, weights and standardisation so a node can persist the Enforcer."""
        buf = io.BytesIO()
        cfg = asdict(self.config)
        cfg["quantiles"] = list(cfg["quantiles"])
        torch.save(
            {
                "format": 1,
                "config": cfg,
                "state_dict": self.model.state_dict(),
                "mean": torch.as_tensor(self.mean),
                "std": torch.as_tensor(self.std),
            },
            buf,
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> TFTEnforcer:
        """Inverse of :meth:`to_bytes`; loads tensors only (``weights_only``), never code."""
        blob = torch.load(io.BytesIO(data), weights_only=True)
        if blob.get("format") != 1:
            raise ValueError("unknown TFT Enforcer format")
        cfg = dict(blob["config"])
        cfg["quantiles"] = tuple(cfg["quantiles"])
        config = TFTConfig(**cfg)
        model = TemporalFusionTransformer(config)
        model.load_state_dict(blob["state_dict"])
        model.eval()
        return cls(config, model, blob["mean"].numpy(), blob["std"].numpy())


def train_tft(
    series: np.ndarray,
    *,
    seed: int = 0,
    window: int = 16,
    horizon: int = 1,
    steps: int = 300,
    hidden: int = 16,
    heads: int = 4,
    batch_size: int = 64,
    lr: float = 5e-3,
    quantiles: tuple[float, ...] = QUANTILES,
) -> TFTEnforcer:
    """Train the Enforcer on a (blocks, features) series, columns in :data:`SERIES_FEATURES` order.

    Every window of the series is training data; hold out the tail yourself to evaluate.
    ``steps = 0`` returns the seeded initial model (useful as a baseline).
    """
    arr = _check_series(series)
    if list(quantiles) != sorted(quantiles) or not all(0 < q < 1 for q in quantiles):
        raise ValueError("quantiles must be increasing and inside (0, 1)")
    config = TFTConfig(arr.shape[1], window, horizon, hidden, heads, tuple(quantiles))
    mean = arr.mean(axis=0)
    std = arr.std(axis=0)
    std = np.where(std > 1e-12, std, 1.0)  # a constant feature is only centred
    past, target = _windows((arr - mean) / std, window, horizon)
    past_t = torch.as_tensor(past, dtype=torch.float32)
    target_t = torch.as_tensor(target, dtype=torch.float32)
    rng = np.random.default_rng(seed)
    history: list[float] = []
    with _deterministic_torch(seed):
        model = TemporalFusionTransformer(config)
        optimiser = torch.optim.Adam(model.parameters(), lr=lr)
        model.train()
        for _ in range(steps):
            idx = torch.as_tensor(rng.integers(0, len(past), size=min(batch_size, len(past))))
            loss = quantile_loss(model(past_t[idx]), target_t[idx], config.quantiles)
            optimiser.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimiser.step()
            history.append(loss.item())
    model.eval()
    return TFTEnforcer(config, model, mean, std, history)


# --- Accuracy(TFT) ---------------------------------------------------------------------------


def _pinball(pred: np.ndarray, target: np.ndarray, quantiles: tuple[float, ...]) -> np.ndarray:
    """Mean pinball loss per feature: pred (N, h, F, Q), target (N, h, F) → (F,)."""
    q = np.asarray(quantiles)
    err = target[..., None] - pred
    return np.maximum(q * err, (q - 1) * err).mean(axis=(0, 1, 3))


def forecast_skill(pred: np.ndarray, target: np.ndarray, quantiles: tuple[float, ...]) -> float:
    """Quantile skill in [0, 1] of forecasts ``pred`` (N, h, F, Q) for ``target`` (N, h, F).

    Per feature ``1 − L_pred / L_clim`` with ``L_clim`` the pinball loss of always predicting
    the empirical quantiles of that feature's targets; averaged over features whose targets
    vary (a constant feature poses no forecasting problem), clipped to [0, 1]. 0 when no
    feature varies. Used for the Enforcer and, in tests, for naive baselines alike.
    """
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    flat = target.reshape(-1, target.shape[-1])
    clim_q = np.quantile(flat, quantiles, axis=0).T  # (F, Q)
    clim = np.broadcast_to(clim_q, target.shape + (len(quantiles),))
    loss_pred = _pinball(pred, target, quantiles)
    loss_clim = _pinball(clim, target, quantiles)
    varies = loss_clim > 1e-12
    if not varies.any():
        return 0.0
    skill = 1.0 - loss_pred[varies] / loss_clim[varies]
    return float(np.clip(skill.mean(), 0.0, 1.0))


def tft_accuracy(model: TFTEnforcer, series: np.ndarray) -> float:
    """Accuracy(TFT) of the Enforcer on a series it was not trained on: quantile skill in [0, 1].

    See :func:`forecast_skill`; computed in the Enforcer's standardised units over every
    (window, horizon) pair of ``series``.
    """
    cfg = model.config
    arr = _check_series(series, cfg.n_features)
    past, target = _windows((arr - model.mean) / model.std, cfg.window, cfg.horizon)
    return forecast_skill(model.predict_standardised(past), target, cfg.quantiles)


def miner_accuracy(
    model: TFTEnforcer, per_miner_series: np.ndarray, *, max_windows: int = 32
) -> np.ndarray:
    """Per-miner Accuracy(TFT) in [0, 1]: interval coverage of each miner's own series.

    ``per_miner_series``: (n_miners, blocks, features), each miner's per-block series of the
    :data:`SERIES_FEATURES` measured for that miner. Each miner's series is standardised with
    its own mean/std; the Enforcer forecasts every block from the preceding window (the last
    ``max_windows`` windows are scored) and the accuracy is the fraction of (block, feature)
    observations inside the forecast's [lowest, highest] quantile interval, over the features
    that vary for that miner. A miner with no varying feature (idle) scores 0. The result is
    rounded to a multiple of 1/65535 so nodes agree on it; it is what
    :func:`ledger.consensus.yuma_epoch` takes as ``tft_accuracy``.

    Cost: one forward pass per scored window, single-threaded for reproducibility; a full Brain
    (1792 miners × 32 windows) takes several seconds on one core, once per epoch.
    """
    cfg = model.config
    arr = np.asarray(per_miner_series, dtype=np.float64)
    if arr.ndim != 3 or arr.shape[2] != cfg.n_features:
        raise ValueError("per_miner_series must be (miners, blocks, features)")
    if not np.all(np.isfinite(arr)):
        raise ValueError("per_miner_series must be finite")
    n_miners = arr.shape[0]
    if n_miners == 0:
        return np.zeros(0)
    mean = arr.mean(axis=1, keepdims=True)
    std = arr.std(axis=1, keepdims=True)
    varies = std[:, 0, :] > 1e-12  # (miners, F)
    z = (arr - mean) / np.where(std > 1e-12, std, 1.0)
    pasts, targets = zip(*(_windows(m, cfg.window, cfg.horizon) for m in z), strict=True)
    past = np.stack(pasts)[:, -max_windows:]  # (M, N, window, F)
    target = np.stack(targets)[:, -max_windows:]  # (M, N, h, F)
    m, n = past.shape[:2]
    pred = model.predict_standardised(past.reshape(m * n, cfg.window, cfg.n_features))
    pred = pred.reshape(m, n, cfg.horizon, cfg.n_features, len(cfg.quantiles))
    inside = (target >= pred[..., 0]) & (target <= pred[..., -1])  # (M, N, h, F)
    covered = inside.mean(axis=(1, 2))  # (M, F)
    counted = varies.sum(axis=1)
    acc = np.divide((covered * varies).sum(axis=1), counted, out=np.zeros(n_miners),
                    where=counted > 0)
    return np.round(np.clip(acc, 0.0, 1.0) * U16_MAX) / U16_MAX


def enforcer_skill(chain_series: np.ndarray, per_miner_series: np.ndarray,
                   recipe: Recipe) -> tuple[str, list[int]]:
    """The float part of a ``tft_report`` (see :mod:`ledger.tft_report`): retrain, then score.

    Trains the Enforcer from ``recipe.seed`` on the chain's series (:data:`SERIES_FEATURES`
    over the report's public blocks) and scores each miner's on-chain series (five columns,
    ``ledger.series.MINER_COLUMNS``) with :func:`miner_accuracy`. Returns the checkpoint's
    hash and each miner's skill in bps (from the u16 grid value ``k``: ``k·10000 // 65535``,
    integers from there on). Deterministic for equal inputs on one machine: seeded, one
    thread, fixed batch shapes.
    """
    model = train_tft(chain_series, seed=recipe.seed, window=recipe.window,
                      steps=recipe.steps, hidden=recipe.hidden, heads=recipe.heads,
                      batch_size=recipe.batch_size)
    per_miner = np.asarray(per_miner_series, dtype=np.float64)
    if per_miner.shape[0] == 0:
        return model.checkpoint_hash(), []
    acc = miner_accuracy(model, per_miner, max_windows=recipe.max_windows)
    grid = np.rint(acc * U16_MAX).astype(np.int64)
    return model.checkpoint_hash(), [int(k) * 10_000 // U16_MAX for k in grid]
