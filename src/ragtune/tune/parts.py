"""Building blocks of the fine-tuning recipe (:mod:`ragtune.tune.loop`): loading the model,
scoring validation data, measuring memory."""

from __future__ import annotations

import resource
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ragtune.tune.batching import collate, micro_batches
from ragtune.tune.distributed import DistInfo, all_reduce_sum, same_count
from ragtune.tune.lora import apply_lora
from ragtune.tune.loss import LabelledLoss
from ragtune.tune.tokens import TokenSequence


def evaluate(
    loss_module: LabelledLoss,
    seqs: Sequence[TokenSequence],
    max_tokens: int,
    pad_id: int,
    dev: torch.device,
    dist: DistInfo,
    fsdp: bool = False,
) -> tuple[float, float]:
    """Token-mean loss and accuracy over ``seqs``; each rank scores its share (under FSDP
    in as many forward calls as every other rank, see :func:`same_count`)."""
    was_training = loss_module.training
    loss_module.eval()
    lengths = [len(s.input_ids) for s in seqs]
    total = correct = 0.0
    micros = micro_batches(range(dist.rank, len(seqs), dist.world_size), lengths, max_tokens)
    n_real = len(micros)
    if fsdp:
        micros = same_count(micros or [[0]], dev, dist)
    with torch.no_grad():
        for k, rows in enumerate(micros):
            ids, mask, labels = collate([seqs[i] for i in rows], pad_id, dev)
            loss, n_correct = loss_module(ids, mask, labels)
            if k < n_real:
                total += loss.item()
                correct += n_correct.item()
    total, correct = all_reduce_sum([total, correct], dev, dist)
    loss_module.train(was_training)
    n = sum(s.n_targets for s in seqs)
    return total / n, correct / n


def load_model(
    base_path: Path, method: str, lora_rank: int, lora_alpha: int, lora_dropout: float, seed: int
) -> Any:
    """The base LM in float32 on the CPU, with fresh LoRA adapters for ``method="lora"``."""
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(
        str(base_path), dtype=torch.float32, attn_implementation="sdpa"
    )
    if method == "lora":
        model = apply_lora(model, lora_rank, lora_alpha, lora_dropout, seed=seed)
    return model


def copy_trainable(model: torch.nn.Module, weights: Mapping[str, torch.Tensor]) -> None:
    """Set ``model``'s trainable parameters (unsharded) to ``weights``, by name."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(weights[name])


def peak_memory(dev: torch.device) -> dict[str, Any]:
    """Peak memory so far: CUDA max allocated on GPUs, the RSS high-water mark on CPU."""
    if dev.type == "cuda":
        return {
            "peak_memory_bytes": int(torch.cuda.max_memory_allocated(dev)),
            "peak_memory_kind": "cuda",
        }
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"peak_memory_bytes": int(rss_kib) * 1024, "peak_memory_kind": "rss"}
