"""Data-parallel training under torchrun (2 CPU processes, gloo) matches one process."""

from __future__ import annotations

from pathlib import Path

from ragtune.tune.loop import train
from tests.tune.conftest import (
    FACTS,
    chat_row,
    finish,
    read_metrics,
    torchrun,
    worst_relative_difference,
    write_jsonl,
)

# Two ranks sum their halves of each batch's gradient in a different order, with other
# padding, than one process does; in float32 that moves losses by ~1e-7 relative (measured:
# at most 8.6e-8 over 8 steps) and the final adapter tensors by ~3e-5 (relative Frobenius
# norm: Adam's 1/sqrt(v) amplifies rounding where gradients are ~0). The bounds are far above
# that rounding and far below any real difference (a wrong share or normalisation changes
# the loss by percents).
RTOL = 1e-5
WEIGHT_RTOL = 1e-3


def test_two_processes_follow_the_one_process_loss_curve(tiny_lm: Path, tmp_path: Path) -> None:
    # 13 examples, batches of 4: the last batch has one row, so one rank runs a
    # zero-weighted micro-batch to join the gradient all-reduce.
    rows = [chat_row(q + " " * i, a) for i, (q, a) in enumerate((FACTS * 3)[:13])]
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    args = ["--data", str(data), "--base", str(tiny_lm), "--method", "lora", "--epochs", "2",
            "--batch-size", "4", "--lr-multiplier", "10", "--lora-dropout", "0",
            "--dtype", "float32"]  # fmt: skip
    finish(
        torchrun(["--standalone", "--nproc-per-node", "2"], [*args, "--out", str(tmp_path / "ddp")])
    )
    train(
        data,
        tmp_path / "single",
        base=str(tiny_lm),
        method="lora",
        epochs=2,
        batch_size=4,
        lr_multiplier=10,
        lora_dropout=0.0,
    )
    one = [m["train_loss"] for m in read_metrics(tmp_path / "single")]
    two = [m["train_loss"] for m in read_metrics(tmp_path / "ddp")]
    assert len(one) == len(two) == 8
    assert all(abs(a - b) <= RTOL * a for a, b in zip(one, two, strict=True)), (one, two)
    assert one[-1] < one[0]
    adapter = Path("adapter", "adapter_model.safetensors")
    worst = worst_relative_difference(tmp_path / "single" / adapter, tmp_path / "ddp" / adapter)
    assert worst < WEIGHT_RTOL
