"""Data-parallel training under torchrun (2 CPU processes, gloo) matches one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

from ragtune.tune.loop import train
from tests.tune.conftest import FACTS, chat_row, read_metrics, write_jsonl

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
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    proc = subprocess.run(
        [*cmd, "-m", "ragtune.cli", "tune", *args, "--out", str(tmp_path / "ddp")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
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
    w1 = load_file(tmp_path / "single" / "adapter" / "adapter_model.safetensors")
    w2 = load_file(tmp_path / "ddp" / "adapter" / "adapter_model.safetensors")
    # Adam divides by sqrt(v): where a gradient is ~0, rounding-level differences can flip
    # an update's sign, so weights are compared as whole tensors (relative Frobenius norm).
    worst = max(float((w1[k] - w2[k]).norm() / w1[k].norm()) for k in w1)
    assert worst < WEIGHT_RTOL
