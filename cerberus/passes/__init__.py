"""Compiler passes: each ``(graph, options…) → (graph, report)``, one module each.

The graph is the canonical float model (``CanonicalTransformer``) before lowering and the
integer graph (``IntGraph``) after it. A pass returns a new graph and never modifies its
input; its report says what it did, and ``to_dict`` is the JSON the artefact manifest
keeps. ``Pass`` and ``PassReport`` state that contract; ``cerberus.compile`` runs the
passes in order and tests/cerberus/test_passes.py holds every entry point to it.

=============================  ==============================  ============================
pass (module.entry point)      graph                           report
=============================  ==============================  ============================
``significance.significance``  model, returned unchanged       ``SignificanceReport``
``squeeze.squeeze``            model → model with fewer heads  ``SqueezeReport``
``qat.qat_finetune``           model → fine-tuned model        ``QATReport``
``fuse.fold_affine``           model → folded model            ``FuseReport`` (the folds)
``fuse.compose_luts``          ``IntGraph`` → ``IntGraph``     ``FuseReport`` (the chains)
=============================  ==============================  ============================

Significance is an analysis: it measures the heads and changes nothing, so as a pass it
hands the same model back with the scores as its report, and squeezing consumes both.

The other modules are not passes but the quantization primitives (SPEC C4) that passes
and lowerings build on: ``quantize`` (integer quantizers, the FHE-side linears),
``observers`` (activation calibration), ``fake_quant`` (the float simulation of the
integer graph, trained through by QAT) and ``adaptive`` (the paper's §5 client-side
quantizer). They map a model to integer parameters or to a simulation of itself; turning
a model into an ``IntGraph`` is lowering (``cerberus.lower``, ``cerberus.hybrid``).
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar, runtime_checkable

G = TypeVar("G")
R_co = TypeVar("R_co", bound="PassReport", covariant=True)


@runtime_checkable
class PassReport(Protocol):
    """What a pass did, for the manifest: ``to_dict`` must be JSON-serialisable."""

    def to_dict(self) -> dict[str, Any]: ...


class Pass(Protocol[G, R_co]):
    """A compiler pass: the graph first, its options after, a new graph and a report back."""

    def __call__(self, graph: G, /, *args: Any, **kwargs: Any) -> tuple[G, R_co]: ...


__all__ = ["Pass", "PassReport"]
