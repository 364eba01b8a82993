"""LoRA through PEFT, so adapters are in PEFT's format (``peft.PeftModel.from_pretrained``, vLLM).

LoRA (Hu et al. 2021, arXiv:2106.09685) freezes W and learns ``W + (alpha / r) * B @ A``
with ``B`` initialised to zero, so training starts from the base model exactly.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ragtune.io import fsync_dir

log = logging.getLogger(__name__)

# Every attention and MLP projection of Llama-style models (Gemma, Llama, Qwen, Mistral).
# Targeting all of them, not only q/v, is what QLoRA found necessary to match full
# fine-tuning (Dettmers et al. 2023, arXiv:2305.14314).
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DEFAULT_RANK = 16
DEFAULT_ALPHA = 32
DEFAULT_DROPOUT = 0.05


def lora_targets(model: nn.Module) -> list[str] | str:
    """The standard projection names when the model has them all, else PEFT's ``all-linear``
    (every linear layer but the output head)."""
    names = {
        name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)
    }
    if all(t in names for t in LORA_TARGETS):
        return list(LORA_TARGETS)
    log.info("model lacks the usual projection names; targeting all linear layers")
    return "all-linear"


def apply_lora(
    model: nn.Module,
    rank: int = DEFAULT_RANK,
    alpha: int = DEFAULT_ALPHA,
    dropout: float = DEFAULT_DROPOUT,
    seed: int = 0,
) -> Any:
    """Wrap ``model`` in a PEFT LoRA model; only the adapter weights require gradients.

    ``A`` is drawn from torch's RNG seeded with ``seed`` here, so a run's initial adapter
    depends on its seed only.
    """
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=lora_targets(model),
        bias="none",
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(seed)
    return get_peft_model(model, config)


def _replace_dir(tmp: Path, final: Path) -> None:
    """Move a fully written folder into place (a crash leaves the old one or the new one)."""
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    fsync_dir(final.parent)


def save_outputs(model: Any, tokenizer: Any, out: Path, method: str) -> dict[str, str]:
    """Write ``adapter/`` (LoRA only) and ``merged/`` (a standalone HF model + tokenizer).

    For LoRA the adapter is merged into the base weights in place (``merge_and_unload``), so
    ``model`` must not be trained further afterwards.
    """
    paths: dict[str, str] = {}
    if method == "lora":
        tmp = out / f".adapter.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        _replace_dir(tmp, out / "adapter")
        paths["adapter"] = "adapter"
        model = model.merge_and_unload()
    tmp = out / f".merged.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    _replace_dir(tmp, out / "merged")
    paths["merged"] = "merged"
    return paths
