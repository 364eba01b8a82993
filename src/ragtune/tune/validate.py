"""``ragtune validate``: the data checks alone, token counts, and what training would cost.

Counts follow OpenAI's cookbook (chat fine-tuning data prep): tokens per example, the
examples over the context length, and the tokens billed for the default number of epochs
(``min(length, max_length)`` per example, times epochs). The training time is an
*estimate* from tokens/s measured with ``bench/tune.py``, scaled by parameter count.
"""

from __future__ import annotations

import json
import statistics
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ragtune.models import pick_device, resolve_lm
from ragtune.tune import hparams
from ragtune.tune.data import (
    MIN_EXAMPLES,
    DataFormat,
    Problem,
    is_documents,
    iter_records,
    resolve_data,
    too_few_examples,
)
from ragtune.tune.tokens import IGNORE, bos_to_prepend, encode_example, is_document, split_sequence

MAX_REPORTED = 100  # problems of each kind (errors, warnings) reported in full

# Training tokens/s of Gemma 3 270M (fp32) measured with bench/tune.py on a 2-core AMD EPYC
# (AVX-512) VM, 8 chat examples of 64 tokens per step, about a third of them trained on:
# `python bench/tune.py --steps 12 --seq-len 64 --batch-size 8`. Scaled by parameter count.
REFERENCE_PARAMS = 268_098_176
REFERENCE_TOKENS_PER_S: dict[tuple[str, str], float] = {
    ("cpu", "lora"): 169.0,
    ("cpu", "full"): 76.0,
}


@dataclass(frozen=True)
class TokenStats:
    min: int
    mean: float
    max: int
    total: int

    @classmethod
    def of(cls, values: Sequence[int]) -> TokenStats:
        if not values:
            return cls(0, 0.0, 0, 0)
        return cls(min(values), statistics.fmean(values), max(values), sum(values))


@dataclass(frozen=True)
class Estimate:
    method: str
    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float
    steps: int
    billed_tokens: int  # tokens processed over all epochs (what OpenAI bills)
    trained_tokens: int  # tokens that carry a loss, over all epochs
    seconds: float | None  # None where there is no reference figure for the device
    basis: str


@dataclass(frozen=True)
class ValidationReport:
    path: str
    format: str
    examples: int
    sequences: int
    errors: list[Problem]
    warnings: list[Problem]
    tokens: TokenStats  # per example, in the base model's tokenizer
    trained_tokens: TokenStats  # per example: tokens that carry a loss
    max_length: int
    over_length: int
    estimates: list[Estimate] = field(default_factory=list)
    # errors/warnings hold the first MAX_REPORTED of each (and every whole-file one);
    # these count them all
    error_counts: dict[str, int] = field(default_factory=dict)
    warnings_total: int = 0

    @property
    def valid(self) -> bool:
        return not self.errors

    @property
    def errors_total(self) -> int:
        return sum(self.error_counts.values())

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["valid"] = self.valid
        d["errors"] = [p.to_dict() for p in self.errors]
        d["warnings"] = [p.to_dict() for p in self.warnings]
        d["errors_not_shown"] = self.errors_total - len(self.errors)
        d["warnings_not_shown"] = self.warnings_total - len(self.warnings)
        return d


class _Problems:
    """The first ``cap`` problems in full (whole-file ones always), the rest counted."""

    def __init__(self, cap: int) -> None:
        self.cap, self.shown, self.counts = cap, list[Problem](), Counter[str]()

    def add(self, problem: Problem) -> None:
        self.counts[problem.category] += 1
        if len(self.shown) < self.cap or problem.line == 0:
            self.shown.append(problem)


def parameter_count(model_dir: Path) -> int:
    """Parameters in a model folder's safetensors files, read from their headers."""
    total = 0
    for f in sorted(model_dir.glob("*.safetensors")):
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
        for name, info in header.items():
            if name != "__metadata__":
                count = 1
                for dim in info["shape"]:
                    count *= dim
                total += count
    return total


def validate_file(
    path: str | Path,
    base: str = "default",
    data_format: DataFormat | None = None,
    max_length: int = 2048,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr_multiplier: float | None = None,
    device: str = "auto",
) -> ValidationReport:
    """Run every check on a data file and count its tokens with ``base``'s tokenizer.

    The file is read one record at a time and only counts are kept per example (4 bytes
    each), so memory stays flat whatever its size; problems past the first
    ``MAX_REPORTED`` of each kind are counted, not kept.
    """
    from transformers import AutoTokenizer

    p, fmt = resolve_data(path, data_format)
    model_dir = resolve_lm(base)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    bos = bos_to_prepend(tokenizer)
    errors, warnings = _Problems(MAX_REPORTED), _Problems(MAX_REPORTED)
    lengths, trained = array("l"), array("l")  # per example
    over = bad_lines = 0
    n_seqs = per_epoch = targets = 0
    for record in iter_records(p, fmt):
        for problem in record.errors:
            errors.add(problem)
        for problem in record.warnings:
            warnings.add(problem)
        bad_lines += bool(record.errors and record.line)
        ex = record.example
        if ex is None:
            continue
        i = len(lengths)
        ids, labels = encode_example(ex, tokenizer, bos)
        lengths.append(len(ids))
        trained.append(sum(1 for t in labels if t != IGNORE))
        for seq in split_sequence(i, ex, ids, labels, bos, max_length):
            if seq.n_targets > 0:  # as encode(): sequences with nothing to train are dropped
                n_seqs += 1
                per_epoch += len(seq.input_ids)
                targets += seq.n_targets
        if len(ids) > max_length:
            over += 1
            what = (
                f"split into {-(-len(ids) // max_length)} windows"
                if is_document(ex)
                else "truncated at the end"
            )
            too_long = f"{len(ids)} tokens > {max_length}; will be {what}"
            warnings.add(Problem(record.source, record.line, "too_long", too_long))
    few = too_few_examples(str(p), len(lengths), bad_lines, MIN_EXAMPLES)
    if not is_documents(p, fmt) and few is not None:
        errors.add(few)
    estimates: list[Estimate] = []
    if n_seqs:
        params = parameter_count(model_dir)
        dev = pick_device(device).type
        for method in hparams.METHODS:
            hp = hparams.resolve(method, n_seqs, epochs, batch_size, lr_multiplier)
            ref = REFERENCE_TOKENS_PER_S.get((dev, method))
            billed = per_epoch * hp.n_epochs
            if ref is not None and params:
                tps = ref * REFERENCE_PARAMS / params
                seconds: float | None = billed / tps
                basis = (
                    f"estimate: {tps:.0f} tokens/s, scaled from Gemma 3 270M on a 2-core CPU "
                    "(bench/tune.py)"
                )
            else:
                seconds = None
                basis = f"no reference speed for {dev}; time a short run to estimate"
            estimates.append(
                Estimate(
                    method=method,
                    n_epochs=hp.n_epochs,
                    batch_size=hp.batch_size,
                    learning_rate_multiplier=hp.learning_rate_multiplier,
                    steps=hp.n_epochs * -(-n_seqs // hp.batch_size),
                    billed_tokens=billed,
                    trained_tokens=targets * hp.n_epochs,
                    seconds=seconds,
                    basis=basis,
                )
            )
    return ValidationReport(
        path=str(p),
        format="text" if is_documents(p, fmt) else fmt,
        examples=len(lengths),
        sequences=n_seqs,
        errors=errors.shown,
        warnings=warnings.shown,
        tokens=TokenStats.of(lengths),
        trained_tokens=TokenStats.of(trained),
        max_length=max_length,
        over_length=over,
        estimates=estimates,
        error_counts=dict(sorted(errors.counts.items())),
        warnings_total=sum(warnings.counts.values()),
    )
