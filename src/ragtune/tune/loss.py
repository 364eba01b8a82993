"""The causal-LM loss computed only where there is something to learn.

A small LM's output head is most of its compute: Gemma 3 270M's head is 262,144 x 640
(168M of 268M parameters). Hugging Face models compute (B, T, V) logits for every position
and then ignore the ones whose label is -100. Here the decoder body runs on the whole
sequence, the hidden states of the labelled positions are gathered (shifted by one), and
the cross-entropy over the vocabulary is computed a chunk of rows at a time, with its
gradient in the same pass, so no (B, T, V) or (N, V) tensor ever exists.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ragtune.tune.data import IGNORE

# Logits per chunk: 256 rows of a 262k vocabulary, 256 MiB in fp32. Every chunk reads the
# whole head twice (forward and gradient), so larger chunks are faster on CPUs (measured:
# 5.4 ms per row at 256 rows, 6.2 at 128, 7.5 at 64, Gemma 3 270M, 2 cores).
CHUNK_ELEMENTS = 1 << 26


def _chunk_rows(n_rows: int, vocab: int, chunk_rows: int | None) -> int:
    """Rows per chunk: at most the budget, and as even as possible (174 rows -> 2 x 87 would
    be worse than 1 x 174, so only as many chunks as the budget forces)."""
    limit = chunk_rows or max(1, CHUNK_ELEMENTS // vocab)
    n_chunks = max(1, -(-n_rows // limit))
    return max(1, -(-n_rows // n_chunks))


def _chunk_logits(
    h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, softcap: float | None
) -> torch.Tensor:
    logits = h @ weight.T  # (C, V)
    if bias is not None:
        logits += bias
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap  # Gemma 2 style final-logit soft-capping
    return logits


def _softmax_in_place(
    logits: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed CE and correct count of one chunk; ``logits`` (C, V) becomes softmax(logits).

    One max pass (which also gives the argmax), one exp pass and one sum: fewer passes over
    the (C, V) block than logsumexp + argmax + softmax, which matters on CPUs.
    """
    top, argmax = logits.max(dim=-1)  # (C,), (C,)
    picked = logits.gather(1, targets[:, None]).squeeze(1)  # (C,)
    logits.sub_(top[:, None]).exp_()  # (C, V) exp(x - max)
    total = logits.sum(dim=-1)  # (C,)
    logits.div_(total[:, None])  # (C, V) softmax
    loss = (top + total.log() - picked).sum()  # logsumexp - target logit
    return loss, (argmax == targets).sum()


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy whose backward is computed in forward, chunk by chunk.

    d(sum CE)/d logits = softmax(logits) - onehot(target), so each chunk's logits are used
    once for the loss and once for the gradients, then freed.
    """

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,  # (N, D)
        weight: torch.Tensor,  # (V, D)
        bias: torch.Tensor | None,  # (V,)
        targets: torch.Tensor,  # (N,)
        chunk_rows: int,
        softcap: float | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = bias is not None and ctx.needs_input_grad[2]
        grad_h = torch.empty_like(hidden) if need_h else None  # (N, D)
        grad_w = torch.zeros_like(weight) if need_w else None  # (V, D)
        grad_b = torch.zeros_like(bias) if need_b and bias is not None else None  # (V,)
        loss = hidden.new_zeros(())
        correct = torch.zeros((), dtype=torch.long, device=hidden.device)
        for s in range(0, hidden.shape[0], chunk_rows):
            h = hidden[s : s + chunk_rows]  # (C, D)
            t = targets[s : s + chunk_rows]  # (C,)
            logits = _chunk_logits(h, weight, bias, softcap)  # (C, V)
            need_grad = grad_h is not None or grad_w is not None or grad_b is not None
            # chain rule through cap * tanh(x / cap): d/dx = 1 - tanh^2
            dcap = 1.0 - (logits / softcap).square() if softcap and need_grad else None  # (C, V)
            chunk_loss, chunk_correct = _softmax_in_place(logits, t)
            loss += chunk_loss
            correct += chunk_correct
            if not need_grad:
                continue
            dlogits = logits  # (C, V) now softmax(logits)
            dlogits[torch.arange(t.shape[0], device=t.device), t] -= 1.0
            if dcap is not None:
                dlogits *= dcap
            if grad_h is not None:
                grad_h[s : s + chunk_rows] = dlogits @ weight  # (C, D)
            if grad_w is not None:
                grad_w.addmm_(dlogits.T, h)  # (V, D)
            if grad_b is not None:
                grad_b += dlogits.sum(0)
        ctx.save_for_backward(
            *(g if g is not None else torch.empty(0) for g in (grad_h, grad_w, grad_b))
        )
        ctx.has = (grad_h is not None, grad_w is not None, grad_b is not None)
        ctx.mark_non_differentiable(correct)
        return loss, correct

    @staticmethod
    def backward(
        ctx: Any, grad_loss: torch.Tensor, grad_correct: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        # In place: each saved gradient is used once, and a (V, D) head gradient is large.
        saved = zip(ctx.saved_tensors, ctx.has, strict=True)
        grads = [g.mul_(grad_loss) if has else None for g, has in saved]
        return grads[0], grads[1], grads[2], None, None, None


def chunked_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    chunk_rows: int | None = None,
    softcap: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum over rows of ``CE(hidden @ weight.T + bias, targets)`` and the number of rows whose
    argmax is the target, for ``hidden`` (N, D), ``weight`` (V, D), ``targets`` (N,)."""
    rows = _chunk_rows(hidden.shape[0], weight.shape[0], chunk_rows)
    needs_grad = torch.is_grad_enabled() and (
        hidden.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    )
    if needs_grad:
        loss, correct = _ChunkedCrossEntropy.apply(hidden, weight, bias, targets, rows, softcap)
        return loss, correct
    with torch.no_grad():
        loss = hidden.new_zeros(())
        correct = torch.zeros((), dtype=torch.long, device=hidden.device)
        for s in range(0, hidden.shape[0], rows):
            logits = _chunk_logits(hidden[s : s + rows], weight, bias, softcap)  # (C, V)
            chunk_loss, chunk_correct = _softmax_in_place(logits, targets[s : s + rows])
            loss += chunk_loss
            correct += chunk_correct
    return loss, correct


def labelled_rows(hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states that predict a labelled token and those tokens: position t predicts
    t + 1. ``hidden`` (B, T, D), ``labels`` (B, T) -> (N, D), (N,)."""
    targets = labels[:, 1:]  # (B, T-1)
    keep = targets != IGNORE  # (B, T-1)
    return hidden[:, :-1][keep], targets[keep]  # (N, D), (N,)


class LabelledLoss(nn.Module):
    """A causal LM (plain or PEFT-wrapped) whose forward returns the summed token
    cross-entropy and correct-prediction count over labelled positions only.

    Wrapping this module, not the LM, in DistributedDataParallel keeps DDP's hooks on the
    forward that training actually calls.
    """

    def __init__(self, lm: nn.Module, chunk_rows: int | None = None) -> None:
        super().__init__()
        self.lm = lm
        self.chunk_rows = chunk_rows

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, T)
        attention_mask: torch.Tensor,  # (B, T)
        labels: torch.Tensor,  # (B, T)
    ) -> tuple[torch.Tensor, torch.Tensor]:
        lm: Any = self.lm
        causal = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
        out = causal.get_decoder()(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False
        )
        hidden, targets = labelled_rows(out.last_hidden_state, labels)  # (N, D), (N,)
        head = causal.get_output_embeddings()
        return chunked_cross_entropy(
            hidden,
            head.weight,
            targets,
            bias=head.bias,
            chunk_rows=self.chunk_rows,
            softcap=getattr(causal.config, "final_logit_softcapping", None),
        )
