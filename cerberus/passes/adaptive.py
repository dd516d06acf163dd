"""Adaptive dynamic quantization (SPEC C4, paper §5), the client's step before encryption.

Each sample (one token's embedding) gets its own scale: σ_i is its spread, S_i = α if
σ_i > T else 1/α, and the scaled sample is floored onto L levels between its own min and
max. Per-sample levels follow each token's range, where one per-tensor scale would waste
codes on the widest token. It runs on the client in the clear, so nothing here has to be
an integer circuit; the compiler uses the reconstruction (``x_hat``) as the embedding the
integer graph is calibrated on and fed. Defaults are the paper's: L = 256, T = 0.1, α = 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from cerberus.errors import CompileError
from cerberus.passes.quantize import as_numpy, is_int


@dataclass(frozen=True)
class AdaptiveResult:
    """Output of ``adaptive_dynamic_quantize`` (all NumPy, one row per sample).

    ``q_int`` are the level indices in ``[0, L-1]``; the paper's quantized value of the
    *scaled* sample is ``q_int·q_step + mins``; the reconstruction is that divided by ``S``.
    """

    q_int: np.ndarray  # int64 [N, M]
    x_hat: np.ndarray  # float64 [N, M]
    sigma: np.ndarray  # float64 [N]
    S: np.ndarray  # float64 [N]
    q_step: np.ndarray  # float64 [N], Q_i of the scaled sample (0 for a constant row)
    mins: np.ndarray  # float64 [N], min_i of the scaled sample


def _adaptive_torch(
    x: torch.Tensor, levels: int, threshold: float, alpha: float
) -> tuple[torch.Tensor, ...]:
    """The §5 formulas on a ``[N, M]`` tensor; one implementation for function and module.

    σ_i is the population standard deviation (1/M, as the paper writes it). The floor
    gets a 1e-9 guard so the row maximum lands on level L−1 despite float division error.
    """
    sigma = x.std(dim=1, unbiased=False)
    S = torch.where(
        sigma > threshold, torch.full_like(sigma, alpha), torch.full_like(sigma, 1 / alpha))
    xs = x * S[:, None]
    mins = xs.amin(dim=1)
    q_step = (xs.amax(dim=1) - mins) / (levels - 1)
    safe = torch.where(q_step > 0, q_step, torch.ones_like(q_step))
    t = (xs - mins[:, None]) / safe[:, None]
    q_int = torch.clamp(torch.floor(t + 1e-9), 0, levels - 1)
    q_int = torch.where(q_step[:, None] > 0, q_int, torch.zeros_like(q_int))
    q_val = q_int * q_step[:, None] + mins[:, None]
    x_hat = q_val / S[:, None]
    return q_int, x_hat, sigma, S, q_step, mins


def _check_adaptive(levels: int, threshold: float, alpha: float) -> None:
    if not is_int(levels) or levels < 2:
        raise CompileError(f"adaptive quantization needs levels >= 2, got {levels!r}")
    if alpha <= 0:
        raise CompileError(f"adaptive scaling factor alpha must be > 0, got {alpha}")
    if threshold < 0:
        raise CompileError(f"adaptive threshold T must be >= 0, got {threshold}")


def adaptive_dynamic_quantize(
    x: torch.Tensor | np.ndarray,
    *,
    levels: int = 256,
    threshold: float = 0.1,
    alpha: float = 0.5,
) -> AdaptiveResult:
    """Paper §5 exactly: σ_i → S_i → scale → floor to L levels → reconstruct.

    For each sample (row) i of ``x [N, M]``:
    σ_i = sqrt(1/M Σ_j (x_ij − μ_i)²); S_i = α if σ_i > T else 1/α; y_i = S_i·x_i;
    Q_i = (max y_i − min y_i)/(L−1); q_ij = ⌊(y_ij − min_i)/Q_i⌋·Q_i + min_i; x̂_ij = q_ij/S_i.
    A constant row has Q_i = 0; it maps to level 0 and is reconstructed exactly.

    Note (honest maths): the levels are min-max over the *scaled* row, so in exact
    arithmetic S_i cancels out of x̂ (⌊(S·x − S·m)/(S·Q)⌋ = ⌊(x − m)/Q⌋); S_i changes the
    units of the transmitted values (``q_step``, ``mins``), not the reconstruction.
    Computed in float64.
    """
    _check_adaptive(levels, threshold, alpha)
    xt = torch.as_tensor(as_numpy(x))
    if xt.ndim != 2:
        raise CompileError(f"adaptive quantization needs [N, M] input, got {tuple(xt.shape)}")
    q_int, x_hat, sigma, S, q_step, mins = _adaptive_torch(xt, int(levels), threshold, alpha)
    return AdaptiveResult(
        q_int=q_int.numpy().astype(np.int64), x_hat=x_hat.numpy(), sigma=sigma.numpy(),
        S=S.numpy(), q_step=q_step.numpy(), mins=mins.numpy(),
    )


class AdaptiveQuantizer(nn.Module):
    """The paper's SqueezingModule as a fake-quant layer with a straight-through gradient.

    Every vector along the last dimension is one sample (for ``[B, T, d]`` embeddings: one
    token). It runs on the client, on the embedding output, before encryption.
    """

    def __init__(self, levels: int = 256, threshold: float = 0.1, alpha: float = 0.5) -> None:
        super().__init__()
        _check_adaptive(levels, threshold, alpha)
        self.levels, self.threshold, self.alpha = int(levels), float(threshold), float(alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        # float64 like adaptive_dynamic_quantize, so both pick the same levels at boundaries
        x_hat = _adaptive_torch(
            flat.detach().double(), self.levels, self.threshold, self.alpha)[1]
        return x + (x_hat.reshape(x.shape).to(x.dtype) - x).detach()

    def extra_repr(self) -> str:
        return f"levels={self.levels}, threshold={self.threshold}, alpha={self.alpha}"
