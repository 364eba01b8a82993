"""``auto`` hyperparameters and the learning-rate schedule, as small pure functions.

The ``auto`` rules follow what OpenAI documents for its fine-tuning API; the mapping from
a learning-rate *multiplier* to a learning rate is ragtune's (OpenAI multiplies the rate
the base model was pretrained with, which is not published for most open models).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

from ragtune.errors import RagtuneError

Method = Literal["lora", "full"]
METHODS: tuple[Method, ...] = ("lora", "full")

# OpenAI cookbook "Data preparation and analysis for chat model fine-tuning" (default n_epochs).
TARGET_EPOCHS = 3
MIN_TARGET_EXAMPLES = 100
MAX_TARGET_EXAMPLES = 25_000
MIN_DEFAULT_EPOCHS = 1
MAX_DEFAULT_EPOCHS = 25

# The rate that multiplier 1.0 means. Full fine-tuning: the peak pretraining rate of a GPT-3
# model of this size (350M: 3e-4, Brown et al. 2020, Table 2.1). LoRA trains a low-rank
# update from zero and takes a rate about 10x higher (Hu et al. 2021 use 2e-4 to 5e-4 where
# full fine-tuning uses 1e-5 to 1e-4), so multiplier 0.1 gives the common 3e-5 / 3e-4.
BASE_LEARNING_RATE: dict[Method, float] = {"full": 3e-4, "lora": 3e-3}


def auto_epochs(n_examples: int) -> int:
    """OpenAI's default: 3 epochs, raised so that >= 100 examples are seen (at most 25 epochs)
    or lowered so that <= 25,000 are (at least 1) (OpenAI cookbook, chat fine-tuning data prep)."""
    if n_examples <= 0:
        raise ValueError("no training examples")
    if n_examples * TARGET_EPOCHS < MIN_TARGET_EXAMPLES:
        return min(MAX_DEFAULT_EPOCHS, MIN_TARGET_EXAMPLES // n_examples)
    if n_examples * TARGET_EPOCHS > MAX_TARGET_EXAMPLES:
        return max(MIN_DEFAULT_EPOCHS, MAX_TARGET_EXAMPLES // n_examples)
    return TARGET_EPOCHS


def auto_batch_size(n_examples: int) -> int:
    """OpenAI's default: "~0.2% of the number of examples in the training set, capped at 256"
    (OpenAI fine-tunes API reference, ``batch_size``), and at least 1."""
    return max(1, min(256, round(0.002 * n_examples)))


def auto_lr_multiplier(batch_size: int) -> float:
    """OpenAI's default: "0.05, 0.1, or 0.2 depending on final batch_size (larger learning rates
    tend to perform better with larger batch sizes)" (OpenAI fine-tunes API reference).

    The thresholds are ragtune's: each 4x larger batch doubles the rate, the square-root
    scaling rule for Adam (Malladi et al. 2022, arXiv:2205.10287).
    """
    if batch_size < 4:
        return 0.05
    if batch_size < 16:
        return 0.1
    return 0.2


@dataclass(frozen=True)
class Hyperparameters:
    """The resolved values a run trains with (``auto`` lists which were chosen for the user)."""

    method: Method
    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float
    learning_rate: float
    auto: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["auto"] = list(self.auto)
        return d


def resolve(
    method: Method,
    n_examples: int,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr_multiplier: float | None = None,
) -> Hyperparameters:
    """Fill in ``None`` (auto) values from the number of training examples."""
    if method not in METHODS:
        raise RagtuneError(f"Unknown method {method!r}", "use --method lora or --method full")
    for name, value in (("--epochs", epochs), ("--batch-size", batch_size)):
        if value is not None and value < 1:
            raise RagtuneError(f"{name} must be at least 1 (got {value})", f"or pass {name} auto")
    if lr_multiplier is not None and not (0 < lr_multiplier <= 100):
        raise RagtuneError(
            f"--lr-multiplier must be positive (got {lr_multiplier})",
            "values between 0.02 and 2 are typical, or pass --lr-multiplier auto",
        )
    auto = tuple(
        name
        for name, value in (
            ("n_epochs", epochs),
            ("batch_size", batch_size),
            ("learning_rate_multiplier", lr_multiplier),
        )
        if value is None
    )
    n_epochs = epochs if epochs is not None else auto_epochs(n_examples)
    bs = batch_size if batch_size is not None else auto_batch_size(n_examples)
    mult = lr_multiplier if lr_multiplier is not None else auto_lr_multiplier(bs)
    return Hyperparameters(
        method=method,
        n_epochs=n_epochs,
        batch_size=bs,
        learning_rate_multiplier=mult,
        learning_rate=mult * BASE_LEARNING_RATE[method],
        auto=auto,
    )


def warmup_steps(total_steps: int, ratio: float = 0.03) -> int:
    """Linear warm-up over ~3% of the steps (at least one)."""
    return max(1, round(ratio * total_steps))


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Multiplier of the peak rate for optimizer step ``step`` (0-based): linear warm-up to 1
    over ``warmup`` steps, then cosine decay towards 0 (Loshchilov & Hutter 2017, SGDR)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
