"""The causal-LM loss computed only where there is something to learn.

A small LM's output head is most of its compute: Gemma 3 270M's head is 262,144 x 640
(168M of 268M parameters). Hugging Face models compute (B, T, V) logits for every position
and then ignore the ones whose label is -100. Here the decoder body runs on the whole
sequence, the hidden states of the labelled positions are gathered (shifted by one), and
the cross-entropy over the vocabulary is computed a chunk of rows at a time, with its
gradient in the same pass, so no (B, T, V) or (N, V) tensor ever exists.

Mixed precision (``compute_dtype=torch.bfloat16``): the decoder runs under
``torch.autocast``, and the head's three matrix products (logits, and the gradients of the
hidden states and of the head) take bfloat16 operands, while each chunk's logits are
upcast to float32 before the log-softmax, so the loss, its reduction and the gradients
accumulate in float32 (Micikevicius et al. 2018, arXiv:1710.03740).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ragtune.tune.tokens import IGNORE

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


def _accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """Softmax and sums run in float32 at least (float64 stays float64)."""
    return torch.promote_types(dtype, torch.float32)


def _chunk_logits(
    h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, softcap: float | None
) -> torch.Tensor:
    """``h`` (C, D) and ``weight`` (V, D) in the compute dtype -> logits (C, V) in at least
    float32 (bfloat16 products are upcast before anything else touches them)."""
    logits = (h @ weight.T).to(_accumulate_dtype(weight.dtype))  # (C, V)
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

    ``weight_c`` is ``weight`` in the compute dtype (``weight`` itself in float32): the
    products use it, and the gradients accumulate in ``weight``'s and ``hidden``'s dtypes.
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
        weight_c: torch.Tensor,  # (V, D) in the compute dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = bias is not None and ctx.needs_input_grad[2]
        mixed = weight_c.dtype != weight.dtype
        hidden_c = hidden.to(weight_c.dtype)  # (N, D)
        grad_h = torch.empty_like(hidden) if need_h else None  # (N, D)
        grad_w = torch.zeros_like(weight) if need_w else None  # (V, D)
        grad_b = torch.zeros_like(bias) if need_b and bias is not None else None  # (V,)
        loss = torch.zeros((), dtype=_accumulate_dtype(weight_c.dtype), device=hidden.device)
        correct = torch.zeros((), dtype=torch.long, device=hidden.device)
        for s in range(0, hidden.shape[0], chunk_rows):
            h = hidden_c[s : s + chunk_rows]  # (C, D)
            t = targets[s : s + chunk_rows]  # (C,)
            logits = _chunk_logits(h, weight_c, bias, softcap)  # (C, V)
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
            if grad_b is not None:
                grad_b += dlogits.sum(0)
            d = dlogits.to(weight_c.dtype)  # (C, V): bf16 operands for the two products
            del logits, dlogits
            if grad_h is not None:
                grad_h[s : s + chunk_rows] = d @ weight_c  # (C, D)
            if grad_w is not None and mixed:
                grad_w += d.T @ h  # (V, D): a bf16 product, summed over chunks in fp32
            elif grad_w is not None:
                grad_w.addmm_(d.T, h)  # (V, D)
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
        return grads[0], grads[1], grads[2], None, None, None, None


def chunked_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    chunk_rows: int | None = None,
    softcap: float | None = None,
    weight_c: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum over rows of ``CE(hidden @ weight.T + bias, targets)`` and the number of rows whose
    argmax is the target, for ``hidden`` (N, D), ``weight`` (V, D), ``targets`` (N,).

    ``weight_c``: ``weight`` cast to a lower compute dtype (bfloat16) for the products; the
    loss is still float32, and so are the gradients of ``hidden`` and ``weight``.
    """
    weight_c = weight.detach() if weight_c is None else weight_c
    rows = _chunk_rows(hidden.shape[0], weight.shape[0], chunk_rows)
    needs_grad = torch.is_grad_enabled() and (
        hidden.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    )
    if needs_grad:
        loss, correct = _ChunkedCrossEntropy.apply(
            hidden, weight, bias, targets, rows, softcap, weight_c
        )
        return loss, correct
    with torch.no_grad():
        hidden_c = hidden.to(weight_c.dtype)  # (N, D)
        loss = torch.zeros((), dtype=_accumulate_dtype(weight_c.dtype), device=hidden.device)
        correct = torch.zeros((), dtype=torch.long, device=hidden.device)
        for s in range(0, hidden.shape[0], rows):
            logits = _chunk_logits(hidden_c[s : s + rows], weight_c, bias, softcap)  # (C, V)
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

    ``compute_dtype=torch.bfloat16`` runs the decoder under ``torch.autocast`` and the head
    products in bfloat16 (the loss stays float32; see the module docstring). The head's
    bfloat16 copy is made once per weight version: once per run for a frozen head (LoRA),
    once per optimizer step for a trained one, not once per micro-batch. ``cache_head=False``
    casts it at every forward instead: under FSDP the head's full weight is all-gathered
    into a reused buffer, so its address and version do not tell when it changed.

    Wrapping this module, not the LM, in DistributedDataParallel keeps DDP's hooks on the
    forward that training actually calls.
    """

    def __init__(
        self,
        lm: nn.Module,
        chunk_rows: int | None = None,
        compute_dtype: torch.dtype = torch.float32,
        cache_head: bool = True,
    ) -> None:
        super().__init__()
        self.lm = lm
        self.chunk_rows = chunk_rows
        self.compute_dtype = compute_dtype
        self.cache_head = cache_head
        self._head_cast: tuple[tuple[int, int], torch.Tensor] | None = None

    def _head_in_compute_dtype(self, weight: torch.Tensor) -> torch.Tensor:
        if weight.dtype == self.compute_dtype:
            return weight.detach()
        if not self.cache_head:
            return weight.detach().to(self.compute_dtype)
        key = (weight.data_ptr(), weight._version)  # in-place updates bump the version
        if self._head_cast is None or self._head_cast[0] != key:
            self._head_cast = None  # free the old copy first
            self._head_cast = (key, weight.detach().to(self.compute_dtype))
        return self._head_cast[1]

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, T)
        attention_mask: torch.Tensor,  # (B, T)
        labels: torch.Tensor,  # (B, T)
    ) -> tuple[torch.Tensor, torch.Tensor]:
        lm: Any = self.lm
        causal = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
        with torch.autocast(
            input_ids.device.type,
            dtype=self.compute_dtype,
            enabled=self.compute_dtype != torch.float32,
        ):
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
            weight_c=self._head_in_compute_dtype(head.weight),
        )
