from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ragtune.tune.loss import LabelledLoss, chunked_cross_entropy, labelled_rows
from ragtune.tune.tokens import IGNORE


@pytest.mark.parametrize("chunk_rows", [1, 3, 7, 64])
@pytest.mark.parametrize("softcap", [None, 5.0])
def test_chunked_cross_entropy_equals_full_cross_entropy(
    chunk_rows: int, softcap: float | None
) -> None:
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(13, 8, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 8, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(50, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (13,), generator=g)

    logits = hidden @ weight.T + bias  # (N, V)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    ref = F.cross_entropy(logits, targets, reduction="sum")
    ref_correct = int((logits.argmax(-1) == targets).sum())
    ref_grads = torch.autograd.grad(ref, (hidden, weight, bias))

    loss, correct = chunked_cross_entropy(
        hidden, weight, targets, bias=bias, chunk_rows=chunk_rows, softcap=softcap
    )
    grads = torch.autograd.grad(loss * 1.0, (hidden, weight, bias))
    assert torch.allclose(loss, ref, rtol=1e-12, atol=1e-12)
    assert int(correct) == ref_correct
    for got, want in zip(grads, ref_grads, strict=True):
        assert torch.allclose(got, want, rtol=1e-10, atol=1e-12)


def test_chunked_cross_entropy_scales_its_gradient_and_works_without_grad() -> None:
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(5, 4, generator=g, requires_grad=True)
    weight = torch.randn(20, 4, generator=g)  # frozen head, as in LoRA
    targets = torch.randint(0, 20, (5,), generator=g)
    loss, _ = chunked_cross_entropy(hidden, weight, targets, chunk_rows=2)
    (grad,) = torch.autograd.grad(loss * 0.25, hidden)
    ref = F.cross_entropy(hidden @ weight.T, targets, reduction="sum") * 0.25
    (ref_grad,) = torch.autograd.grad(ref, hidden)
    assert torch.allclose(grad, ref_grad, atol=1e-6)
    with torch.no_grad():
        plain, _ = chunked_cross_entropy(hidden, weight, targets, chunk_rows=2)
    assert torch.allclose(plain, loss.detach(), atol=1e-6)


def test_labelled_rows_shift_by_one() -> None:
    hidden = torch.arange(2 * 4, dtype=torch.float32).reshape(2, 4, 1)  # (B, T, D)
    labels = torch.tensor([[IGNORE, IGNORE, 7, 8], [IGNORE, 5, IGNORE, IGNORE]])
    rows, targets = labelled_rows(hidden, labels)
    # Position t predicts label t+1: rows 1, 2 of the first sequence and row 0 of the second.
    assert rows.squeeze(1).tolist() == [1.0, 2.0, 4.0]
    assert targets.tolist() == [7, 8, 5]


def test_mixed_precision_uses_bfloat16_products_and_float32_loss_and_gradients() -> None:
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(9, 16, generator=g, requires_grad=True)
    weight = torch.randn(40, 16, generator=g, requires_grad=True)
    targets = torch.randint(0, 40, (9,), generator=g)
    weight_c = weight.detach().to(torch.bfloat16)

    loss, correct = chunked_cross_entropy(hidden, weight, targets, chunk_rows=4, weight_c=weight_c)
    grads = torch.autograd.grad(loss, (hidden, weight))

    # The same computation written out: bfloat16 logits, upcast, float32 cross-entropy.
    logits = (hidden.detach().to(torch.bfloat16) @ weight_c.T).float()  # (N, V)
    ref = F.cross_entropy(logits, targets, reduction="sum")
    assert loss.dtype == torch.float32
    assert torch.allclose(loss, ref, rtol=1e-6)
    assert int(correct) == int((logits.argmax(-1) == targets).sum())
    # Gradients are float32 and agree with the full-precision ones to bfloat16 accuracy.
    full = F.cross_entropy(hidden @ weight.T, targets, reduction="sum")
    full_grads = torch.autograd.grad(full, (hidden, weight))
    for got, want in zip(grads, full_grads, strict=True):
        assert got.dtype == torch.float32
        assert torch.allclose(got, want, rtol=0.05, atol=0.05)
        assert not torch.equal(got, want)  # the products really ran in bfloat16


def test_labelled_loss_casts_the_head_once_per_weight_version(tiny_lm: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_lm), dtype=torch.float32)
    ids = torch.tensor([[1, 5, 9, 12, 7, 3]])
    labels = torch.tensor([[IGNORE, IGNORE, 9, 12, 7, 3]])
    full = LabelledLoss(model)(ids, torch.ones_like(ids), labels)[0].detach()
    mixed_module = LabelledLoss(model, compute_dtype=torch.bfloat16)
    mixed = mixed_module(ids, torch.ones_like(ids), labels)[0].detach()
    assert mixed.dtype == torch.float32
    assert abs(mixed.item() - full.item()) / full.item() < 0.02
    first = mixed_module._head_cast
    mixed_module(ids, torch.ones_like(ids), labels)
    assert mixed_module._head_cast is first  # unchanged weights: the same bfloat16 copy
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(1.0)  # an optimizer step, in place
    mixed_module(ids, torch.ones_like(ids), labels)
    assert mixed_module._head_cast is not first
