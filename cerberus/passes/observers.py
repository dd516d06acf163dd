"""Activation calibration: per-tensor scales observed on calibration data (SPEC C4).

Weights are known at compile time and quantized directly (``quantize``); activations are
not, so their scales come from running the float model on calibration batches and
observing |x| at every quantization point: the input of each FHE-side ``nn.Linear`` and
of each block (the encrypted residual stream). An observer keeps what the three scale
methods need — ``maxabs``, ``percentile`` of |x| and the ``mse``-optimal clipping ratio —
in bounded memory, so calibrating a big model on much data stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import nn

from cerberus.errors import CompileError
from cerberus.frontends.canonical import Block, CanonicalTransformer
from cerberus.passes.quantize import CLIP_RATIOS, as_numpy, check_bits, check_canonical, qmax

#: Cap on stored |x| values per observer (deterministic strided subsampling beyond it).
_OBSERVER_CAP = 1_000_000


class ActivationObserver:
    """Accumulates |x| statistics of one tensor over calibration batches.

    Keeps the running max-abs exactly and a bounded, deterministically strided sample of
    |x| for the percentile method (so memory stays bounded on big models).
    """

    def __init__(self, cap: int = _OBSERVER_CAP) -> None:
        self.cap = cap
        self.max_abs = 0.0
        self.count = 0
        self._samples: list[np.ndarray] = []
        self._stored = 0

    def update(self, x: torch.Tensor | np.ndarray) -> None:
        a = np.abs(as_numpy(x)).ravel()
        if a.size == 0:
            return
        self.max_abs = max(self.max_abs, float(a.max()))
        self.count += a.size
        room = self.cap - self._stored
        if room <= 0:
            return
        if a.size > room:
            a = a[:: int(np.ceil(a.size / room))]
        self._samples.append(a)
        self._stored += a.size

    def scale(self, bits: int, method: str = "maxabs", percentile: float = 99.99) -> float:
        """Per-tensor symmetric scale mapping the chosen |x| statistic onto the top code."""
        bits = check_bits(bits)
        if self.count == 0:
            raise CompileError("activation observer saw no data; calibration set is empty")
        if method == "maxabs":
            amax = self.max_abs
        elif method == "percentile":
            if not 0 < percentile <= 100:
                raise CompileError(f"percentile must be in (0, 100], got {percentile}")
            amax = float(np.percentile(np.concatenate(self._samples), percentile))
        elif method == "mse":
            # Clip ratio of max-abs with the least squared error on the stored |x| sample;
            # |x| suffices because the code range is symmetric up to the one extra negative.
            a = np.concatenate(self._samples)
            best, amax = np.inf, self.max_abs
            for ratio in CLIP_RATIOS:
                s = self.max_abs * ratio / qmax(bits)
                if s <= 0:
                    break
                err = float(((np.minimum(np.rint(a / s), qmax(bits)) * s - a) ** 2).sum())
                if err < best:
                    best, amax = err, self.max_abs * ratio
        else:
            raise CompileError(
                f"unknown calibration method {method!r} (maxabs|percentile|mse)")
        return amax / qmax(bits) if amax > 0 else 1.0


def calibrate_activation(
    samples: torch.Tensor | np.ndarray | Iterable[torch.Tensor | np.ndarray],
    bits: int,
    *,
    method: str = "maxabs",
    percentile: float = 99.99,
) -> float:
    """Per-tensor symmetric scale of an activation from one tensor or a list of batches."""
    obs = ActivationObserver()
    if isinstance(samples, (torch.Tensor, np.ndarray)):
        obs.update(samples)
    else:
        for s in samples:
            obs.update(s)
    return obs.scale(bits, method, percentile)


def as_batch_list(batches: torch.Tensor | Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """Calibration data as a non-empty list of ``[B, T]`` token batches (a ``[T]`` window
    becomes a batch of one); QAT reads its training batches the same way."""
    if isinstance(batches, torch.Tensor):
        return [batches if batches.ndim == 2 else batches[None]]
    out = [b if b.ndim == 2 else b[None] for b in batches]
    if not out:
        raise CompileError("calibration set is empty")
    return out


def collect_activation_scales(
    model: CanonicalTransformer,
    batches: torch.Tensor | Iterable[torch.Tensor],
    bits: int,
    method: str = "percentile",
    *,
    percentile: float = 99.99,
) -> dict[str, float]:
    """Per-tensor scales of every ``nn.Linear`` input and every block input.

    Default method is the 99.99th percentile of |x|: on tiny-gpt at 8 bits max-abs gives
    94.8% top-1 agreement with float, percentile 96.2%, ``"mse"`` 95.5% (outliers in the
    post-GELU fc2 inputs waste codes under max-abs).

    Keys are module paths (``"blocks.0.q"``, ``"blocks.1"``, ``"lm_head"``). Runs the model in
    eval mode under ``no_grad`` with forward pre-hooks that are removed afterwards, so the
    model is not changed. ``batches`` are ``[B, T]`` token-id tensors.
    """
    bits = check_bits(bits)
    observers: dict[str, ActivationObserver] = {}

    def see(name: str, x: torch.Tensor) -> None:
        observers.setdefault(name, ActivationObserver()).update(x)

    _observe(model, batches, lambda name, mod: isinstance(mod, Block) or _reads(mod), see)
    return {k: o.scale(bits, method, percentile) for k, o in observers.items()}


def _reads(mod: nn.Module) -> bool:
    """A linear with an input to observe (a block whose heads were all pruned keeps a
    zero-width output projection: nothing to calibrate, and nothing runs under FHE)."""
    return isinstance(mod, nn.Linear) and mod.in_features > 0


def _observe(model: CanonicalTransformer, batches: torch.Tensor | Iterable[torch.Tensor],
             select: Callable[[str, nn.Module], bool],
             see: Callable[[str, torch.Tensor], None]) -> None:
    """Run ``model`` on ``batches`` (eval, no_grad) and hand ``see(name, input)`` the input
    of every module ``select`` picks; the hooks are removed and the mode restored after."""
    check_canonical(model)
    handles = [mod.register_forward_pre_hook(lambda _m, args, name=name: see(name, args[0]))
               for name, mod in model.named_modules() if select(name, mod)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for b in as_batch_list(batches):
                model(b)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


def collect_channel_absmax(
    model: CanonicalTransformer, batches: torch.Tensor | Iterable[torch.Tensor]
) -> dict[str, np.ndarray]:
    """Per-input-channel max |x| of every block ``nn.Linear``'s input (float64 ``[in]``).

    What SmoothQuant-style smoothing needs (``cerberus.hybrid``): a few channels of a
    LayerNorm's output are far larger than the rest (all-MiniLM-L6-v2: 27.7 against a
    median of 1.6 in block 2), and one scale per row wastes the codes of all the others.
    Same hooks and guarantees as ``collect_activation_scales``.
    """
    out: dict[str, np.ndarray] = {}

    def see(name: str, x: torch.Tensor) -> None:
        m = as_numpy(x.detach().abs().reshape(-1, x.shape[-1]).amax(0))
        out[name] = np.maximum(out[name], m) if name in out else m

    _observe(model, batches, lambda name, mod: _reads(mod) and name.startswith("blocks."), see)
    return out
