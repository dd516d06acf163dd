"""Quantization-aware training, paper §7.2.2 (SPEC C4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cerberus.errors import CompileError
from cerberus.frontends.canonical import CanonicalTransformer, TransformerConfig
from cerberus.frontends.huggingface import from_hf_module, load_pretrained
from cerberus.passes.fake_quant import fake_quant, fake_quantize_model
from cerberus.passes.qat import PaperQuantizer, qat_finetune
from cerberus.passes.quantize import quantize
from cerberus.paths import shipped_model

# Written for this test in the style of the CPython docs tiny-gpt was trained on.
TEXT = """A module is a file containing Python definitions and statements. The file name is the
module name with the suffix appended. Within a module, the module's name is available as the value
of the global variable. When you run a module as a script, the code in the module will be
executed, just as if you imported it. The import statement combines two operations; it searches
for the named module, then it binds the results of that search to a name in the local scope.
A package is a way of structuring the module namespace by using dotted module names. The return
statement leaves the current function call with the expression list as return value. If an
expression list is present, it is evaluated, else None is substituted. The raise statement is
used to raise an exception. If no expressions are present, raise re-raises the exception that is
currently being handled. The pass statement is a null operation; when it is executed, nothing
happens. It is useful as a placeholder when a statement is required syntactically. The del
statement deletes names, attributes and items of a target list. The global statement is a
declaration which holds for the entire current code block. A dictionary maps keys to values and
a list is a mutable sequence. Strings are immutable sequences of Unicode code points."""


@pytest.fixture(scope="module")
def tiny() -> tuple[CanonicalTransformer, torch.Tensor]:
    model, tok = load_pretrained(str(shipped_model()))
    ids = torch.tensor(tok(TEXT).input_ids)
    n = len(ids) // 64
    assert n >= 8
    return from_hf_module(model), ids[: n * 64].view(n, 64)


def _lm_loss(model: torch.nn.Module, ids: torch.Tensor) -> float:
    with torch.no_grad():
        out = model(ids)
    return float(F.cross_entropy(out[:, :-1].reshape(-1, out.shape[-1]), ids[:, 1:].reshape(-1)))


def test_paper_formula_on_hand_numbers() -> None:
    q = PaperQuantizer(mu=1.0, sigma=0.5, q_scale=2.0, q_zero=3.0, bits=4)
    x = torch.tensor([2.2, 1.0, 0.6, 100.0])
    # (x−μ)/σ = [2.4, 0, −0.8, 198] → round [2, 0, −1, 198→clip 7]
    # Q = code·2 + 3 = [7, 3, 1, 17]; Q⁻¹ = (Q−3)/2·0.5 + 1 = [2.0, 1.0, 0.5, 4.5]
    assert q.quantize(x).tolist() == [7.0, 3.0, 1.0, 17.0]
    assert q.dequantize(q.quantize(x)).tolist() == [2.0, 1.0, 0.5, 4.5]


def test_paper_quantizer_reduces_to_symmetric_fake_quant() -> None:
    x = torch.randn(200, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    scale = 0.05
    pq = PaperQuantizer.from_symmetric(scale, 6)
    assert np.array_equal(pq.quantize(x).numpy().astype(np.int64), quantize(x, scale, 6))
    assert torch.equal(pq.fake(x), fake_quant(x, scale, 6))
    xg = x.clone().requires_grad_(True)
    g = torch.randn(200, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (pq.fake(xg) * g).sum().backward()
    assert torch.equal(xg.grad, g)  # straight-through estimator
    gen = PaperQuantizer.from_stats(x, 4)
    assert gen.mu == float(x.mean()) and gen.sigma > 0  # exact: the same torch mean of x
    with pytest.raises(CompileError):
        PaperQuantizer(mu=0, sigma=0, q_scale=1, q_zero=0, bits=4)


def test_qat_at_4_bits_lowers_held_out_fake_quant_loss_and_is_deterministic(tiny) -> None:
    model, windows = tiny
    train = [windows[i : i + 2] for i in range(0, 6, 2)]
    held = windows[6:]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out, rep = qat_finetune(model, train, bits=4, steps=30, lr=1e-4, seed=0)
    assert isinstance(out, CanonicalTransformer) and out is not model
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert rep.objective == "lm" and len(rep.history) == 30
    assert rep.loss_after < rep.loss_before
    scales = rep.act_scales
    no_qat = _lm_loss(fake_quantize_model(model, 4, scales), held)
    with_qat = _lm_loss(fake_quantize_model(out, 4, scales), held)
    assert with_qat < no_qat  # held-out windows, not trained on
    # gates frozen
    for b_out, b_in in zip(out.blocks, model.blocks, strict=True):
        assert torch.equal(b_out.gates, b_in.gates) and not b_out.gates.requires_grad
    out2, rep2 = qat_finetune(model, train, bits=4, steps=30, lr=1e-4, seed=0)
    assert rep2.history == rep.history
    assert all(torch.equal(a, b) for a, b in
               zip(out.state_dict().values(), out2.state_dict().values(), strict=True))


def test_qat_without_lm_head_minimises_distortion() -> None:
    torch.manual_seed(0)
    cfg = TransformerConfig(kind="encoder", vocab_size=50, n_positions=16, d_model=16,
                            n_layer=1, n_head=2, d_ff=32, activation="gelu", pre_ln=False)
    enc = CanonicalTransformer(cfg).eval()
    batches = [torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(i))
               for i in range(2)]
    out, rep = qat_finetune(enc, batches, bits=3, steps=15, lr=1e-3)
    assert rep.objective == "distortion" and rep.loss_float == 0.0
    assert rep.loss_after < rep.loss_before
    assert out.lm_head is None


def test_qat_rejects_bad_options(tiny) -> None:
    model, windows = tiny
    with pytest.raises(CompileError, match="bits must be in 2..8"):
        qat_finetune(model, [windows[:1]], bits=1)
    with pytest.raises(CompileError):
        qat_finetune(model, [], bits=4)
    with pytest.raises(CompileError):
        qat_finetune(torch.nn.Linear(2, 2), [windows[:1]], bits=4)
    with pytest.raises(CompileError, match="float model"):
        qat_finetune(fake_quantize_model(model, 4), [windows[:1]], bits=4)
