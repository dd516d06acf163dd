"""Float tolerances derived from the computation, not from the CPU a test was written on.

Issue #12: a float32 comparison with a hand-picked ``atol=1e-5`` passed on the machine it
was written on and failed on every run elsewhere (another CPU, another thread count: other
SIMD widths, blockings and summation orders). Every float comparison in the tests takes
its tolerance from here, with the formula stated next to its use. Integer and bit-exact
paths are compared exactly and do not use this module.

The model of rounding (N. J. Higham, *Accuracy and Stability of Numerical Algorithms*,
2nd ed., 2002, §2.2 and §3.1):

* Unit roundoff ``u``: ``2**-24`` in float32 (``U32``), ``2**-53`` in float64 (``U64``).
  A correctly rounded ``+ − × / sqrt`` returns ``(x op y)(1 + δ)`` with ``|δ| ≤ u``.
* Deterministic bound: a sum or dot product of length ``K``, *in any order* (blocked,
  vectorised, split across threads — exactly what differs between machines), satisfies
  ``|fl(a·b) − a·b| ≤ γ_K Σ|a_i b_i|`` with ``γ_K = K u / (1 − K u)`` (``gamma``). It holds
  always, and is what we use for a single reduction (``dot_atol``).
* Probabilistic bound (Higham & Mary, SIAM J. Sci. Comput. 41(5), 2019, Thm 3.1): with the
  rounding errors modelled as independent and mean-zero, the same dot product satisfies
  ``|error| ≤ γ̃_K(λ) Σ|a_i b_i|``, ``γ̃_K(λ) = exp(λ √K u + K u²/(1 − u)) − 1 ≈ λ √K u``,
  except with probability at most ``2K exp(−λ²(1 − u)²/2)``. We take ``λ = 6``
  (``LAMBDA``): ≈ 6e-5 for K = 2,000. We use it where the deterministic bound is
  uselessly loose: a whole network, thousands of roundings deep.
* Library transcendental functions (exp, tanh, erf, log …, scalar libm or the vectorised
  kernels of MKL, oneDNN, MLAS, SLEEF) are not correctly rounded; each one is charged
  ``LIBM_ULPS`` roundings (their documented accuracies are within 4 ulp).

A whole network (``network_atol``): along the longest path from the input to one output,
a transformer does ``N`` roundings (``transformer_roundings``: each LayerNorm's two
reductions of length d, the projections of length d, the scores of length head_dim, the
softmax and attention-times-V over the sequence, the MLP's second projection of length
d_ff, the residual adds …). LayerNorm keeps every stage at the relative scale of its
output, so we model the rounding of the whole path as one probabilistic dot product of
length ``N`` whose ``Σ|a_i b_i|`` is the output's scale, ``max |y|`` of a float64 run of
the same model on the same input:

    |y32 − y64| ≤ γ̃_N(λ) · max|y64|

That is a model, not a theorem, which is why the tests check it against a float64 run
(the model and its inputs cast to float64, whose own error is 2**29 times smaller) and
check *each* float32 implementation against that reference. Two float32 implementations
(torch.fx vs onnxruntime) then differ by at most the sum of their two bounds. On the
machine this was written on (Intel Xeon, 1 and 2 threads) the measured float32 errors of
the tiny GPT are about 15 u·max|y| against a bound of γ̃_N ≈ 250 u·max|y|.

Other rules the tests follow:

* The same operations on the same values give the same bits: such results are compared
  exactly, and the test says why (a selected entry, a JSON number parsed twice, 1 − L/L).
* A hand-written expectation rounds too: each decimal once, each of its operations once
  (``roundings_approx``); a constant written to k decimals carries half a unit of its
  last one. Results in the subnormal range carry Higham's absolute underflow term (``ETA64``).
* Sums of non-negative terms have no cancellation, so their bound is relative (γ_n of the
  value); with cancellation it is relative to Σ|terms| (``dot_atol``).
* A statistical estimate is compared within a stated number of its own standard errors,
  computed from the data (not a float tolerance); a model's accuracy target written in the
  spec (the closed-form cost within 15 % of the exact count) stays the spec's number.
"""

from __future__ import annotations

import math

import numpy as np
import torch

U32 = 2.0**-24
U64 = 2.0**-53
#: Higham's underflow term: a result in the subnormal range is off by up to η = 2**-1075
#: absolutely, not relatively (float64); ETA64 = 2η covers two such operations.
ETA64 = float(np.finfo(np.float64).smallest_subnormal)
LAMBDA = 6.0
LIBM_ULPS = 4


def unit_roundoff(dtype) -> float:
    """``u`` of a float dtype (torch or NumPy)."""
    if isinstance(dtype, torch.dtype):
        return float(torch.finfo(dtype).eps) / 2
    return float(np.finfo(dtype).eps) / 2


def gamma(n: int, u: float = U32) -> float:
    """Higham's ``γ_n = n u / (1 − n u)``: the deterministic bound of n roundings."""
    assert n * u < 1, f"{n} roundings at u={u} give no bound"
    return n * u / (1 - n * u)


def gamma_prob(n: int, u: float = U32, lam: float = LAMBDA) -> float:
    """Higham & Mary's ``γ̃_n(λ) = exp(λ √n u + n u²/(1 − u)) − 1`` (≈ λ √n u)."""
    return math.expm1(lam * math.sqrt(n) * u + n * u * u / (1 - u))


def transformer_roundings(d_model: int, d_ff: int, n_layer: int, head_dim: int,
                          seq_len: int, lm_head: bool = True, per_linear: int = 0) -> int:
    """``N``: roundings along the longest path from the embeddings to one output.

    Per block: 2 LayerNorms (mean and variance, ``2d`` each), the q/k/v projection (d),
    the scores (head_dim), the softmax (exp + sum over T + divide) and attention × V (T),
    the output projection (d), the MLP (d, then d_ff) and its activation, two residual
    adds; then the final LayerNorm and the LM head (d) when there is one. ``per_linear``:
    further roundings in each of the path's linears (fake quantization, dequantization).
    """
    d, t, act = d_model, seq_len, LIBM_ULPS + 4
    block = 2 * (2 * d + 2) + d + head_dim + 1 + (LIBM_ULPS + t + 1) + t + d + d + act + d_ff + 2
    tail = (2 * d + 2) + d if lm_head else 0
    linears = 4 * n_layer + int(lm_head)  # q (or k, v), o, fc1, fc2 per block; the head
    # + token and position embedding add, + cast
    return 2 + n_layer * block + tail + per_linear * linears


def network_atol(ref64, n_roundings: int, u: float = U32, lam: float = LAMBDA) -> float:
    """``γ̃_N(λ) · max|y64|``: the bound of one float32 (or, with ``u=U64``, float64) run
    of a network against a float64 run of the same network, ``ref64`` its output."""
    ref = ref64.detach().double().numpy() if isinstance(ref64, torch.Tensor) else ref64
    return gamma_prob(n_roundings, u, lam) * float(np.abs(np.asarray(ref)).max())


def dot_atol(a, b, extra: int = 0, u: float = U32) -> np.ndarray:
    """Elementwise deterministic bound of ``a @ b`` (K = a.shape[-1]):
    ``γ_{K+extra} (|a| @ |b|)``; ``extra`` counts further roundings of each product or of
    the result (scalings, a bias add)."""
    a = np.abs(np.asarray(a, dtype=np.float64))
    b = np.abs(np.asarray(b, dtype=np.float64))
    return gamma(a.shape[-1] + extra, u) * (a @ b)


def cost_total_rtol(cost, u: float = U64) -> float:
    """Relative bound of a ``cerberus.cost`` total: a sum of non-negative terms (a count
    times a price c·g^(w − w_ref) through a library pow, MACs and adds times theirs) over
    its rows and widths, within γ_{n + LIBM_ULPS + 2} of its exact value, no cancellation."""
    terms = max(len(cost.rows), 1) * (len(cost.pbs_by_width) + 2)
    return gamma(terms + LIBM_ULPS + 2, u)


def roundings_approx(expected, n: int, scale, u: float = U64, extra: float = 0.0):
    """``pytest.approx(expected)`` within ``n`` roundings at unit roundoff ``u`` of operands
    of magnitude ``scale`` (a scalar or an array): ``abs = γ_n(u)·scale + extra``, no
    relative slack. ``extra`` adds a bound from outside the arithmetic (the precision a
    constant was written to)."""
    import pytest

    return pytest.approx(expected, abs=np.max(gamma(n, u) * np.asarray(scale)) + extra, rel=0)


def as_f64(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to(torch.float64).cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def assert_within(got, want, atol, what: str = "") -> None:
    """``|got − want| ≤ atol`` elementwise (``atol`` a scalar or an array), with the worst
    element's error in units of its bound in the message."""
    g, w = as_f64(got), as_f64(want)
    assert g.shape == w.shape, f"{what}: shapes {g.shape} != {w.shape}"
    err = np.abs(g - w)
    bound = np.broadcast_to(np.asarray(atol, dtype=np.float64), err.shape)
    ratio = np.where(bound > 0, err / np.where(bound > 0, bound, 1), np.where(err > 0, np.inf, 0))
    i = np.unravel_index(int(np.argmax(ratio)), ratio.shape) if ratio.size else ()
    assert np.all(err <= bound), (
        f"{what}: |got − want| = {err[i]:.3g} at {i} exceeds its derived bound "
        f"{bound[i]:.3g} ({ratio[i]:.2f}×)")
