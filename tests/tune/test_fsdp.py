"""Fully sharded training (``--parallel fsdp``, FSDP2 on 2 CPU processes over gloo) follows
the one-process run, and its checkpoints resume in one process and the other way round."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from ragtune.tune.checkpoint import list_checkpoints, load_checkpoint
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
from tests.tune.test_ddp import RTOL, WEIGHT_RTOL

TWO_RANKS = ["--standalone", "--nproc-per-node", "2"]
ADAPTER = Path("adapter", "adapter_model.safetensors")
MERGED = Path("merged", "model.safetensors")


def fsdp_data(tmp_path: Path) -> tuple[Path, Path]:
    # 13 examples in batches of 4 (the last has one row: one rank computes a zero-weighted
    # share) and micro-batches of at most 76 padded tokens: in two steps the ranks' shares
    # need 2 and 1 forward passes, which FSDP pads to the same count; the 3 validation
    # examples are split 2 / 1 between the ranks, likewise padded. (With batches of 5 these
    # few examples make training chaotic: one process and DDP differ by 0.4% after 6 steps.)
    rows = [chat_row(q + " " * i, a) for i, (q, a) in enumerate((FACTS * 3)[:13])]
    valid = [chat_row(q + "?", a) for q, a in FACTS[:3]]
    return write_jsonl(tmp_path / "train.jsonl", rows), write_jsonl(tmp_path / "v.jsonl", valid)


def tune_settings(tiny_lm: Path, method: str) -> dict[str, Any]:
    return dict(base=str(tiny_lm), method=method, epochs=2, batch_size=4, lr_multiplier=10,
                lora_dropout=0.0, micro_batch_tokens=76, dtype="float32")  # fmt: skip


def cli_flags(settings: dict[str, Any]) -> list[str]:
    flags = {"base": "--base", "method": "--method", "epochs": "--epochs",
             "batch_size": "--batch-size", "lr_multiplier": "--lr-multiplier",
             "lora_dropout": "--lora-dropout", "micro_batch_tokens": "--micro-batch-tokens",
             "dtype": "--dtype"}  # fmt: skip
    return [x for k, v in settings.items() for x in (flags[k], str(v))]


def _losses(run: Path, key: str = "train_loss") -> list[float]:
    return [m[key] for m in read_metrics(run) if m.get(key) is not None]


def _close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) > 0 and all(abs(x - y) <= RTOL * x for x, y in zip(a, b, strict=True))


def _as_interrupted(src: Path, dst: Path, keep_step: int) -> Path:
    """A copy of the finished run ``src`` as if it had been stopped after ``keep_step``: its
    later checkpoints and outputs removed, its manifest saying interrupted."""
    shutil.copytree(src, dst)
    for p in list_checkpoints(dst / "checkpoints"):
        if load_checkpoint(p)["step"] > keep_step:
            p.unlink()
    shutil.rmtree(dst / "adapter", ignore_errors=True)
    shutil.rmtree(dst / "merged")
    manifest = json.loads((dst / "manifest.json").read_text())
    (dst / "manifest.json").write_text(json.dumps({**manifest, "status": "interrupted"}))
    return dst


def test_fsdp_lora_follows_one_process_and_its_checkpoint_resumes_in_one(
    tiny_lm: Path, tmp_path: Path
) -> None:
    data, valid = fsdp_data(tmp_path)
    settings = tune_settings(tiny_lm, "lora")
    launch = torchrun(
        TWO_RANKS,
        [*cli_flags(settings), "--data", str(data), "--validation", str(valid), "--parallel",
         "fsdp", "--out", str(tmp_path / "fsdp")],
    )  # fmt: skip
    single = train(data, tmp_path / "single", validation=valid, **settings)
    finish(launch)
    fsdp = tmp_path / "fsdp"
    manifest = json.loads((fsdp / "manifest.json").read_text())
    assert manifest["status"] == "succeeded"
    assert manifest["hyperparameters"]["parallel"] == "fsdp"
    assert manifest["hyperparameters"]["world_size"] == 2
    one, two = _losses(tmp_path / "single"), _losses(fsdp)
    assert len(one) == single.steps == 8 and _close(one, two), (one, two)
    assert one[-1] < one[0]
    assert _close(_losses(tmp_path / "single", "valid_loss"), _losses(fsdp, "valid_loss"))
    assert worst_relative_difference(tmp_path / "single" / ADAPTER, fsdp / ADAPTER) < WEIGHT_RTOL

    # The checkpoint holds full tensors in the one-process format, not per-rank shards.
    mine = load_checkpoint(list_checkpoints(fsdp / "checkpoints")[0])
    ref = load_checkpoint(list_checkpoints(tmp_path / "single" / "checkpoints")[0])
    assert mine["step"] == ref["step"] == 4
    assert {k: v.shape for k, v in mine["trainable"].items()} == {
        k: v.shape for k, v in ref["trainable"].items()
    }
    for i, s in ref["optimizer"]["state"].items():
        assert {k: v.shape for k, v in mine["optimizer"]["state"][i].items()} == {
            k: v.shape for k, v in s.items()
        }
    assert all(type(v) is torch.Tensor for v in mine["optimizer"]["state"][0].values())

    # Resumed in one process from the FSDP checkpoint of step 4, it ends like the others.
    resumed = _as_interrupted(fsdp, tmp_path / "resumed", keep_step=4)
    result = train(data, resumed, validation=valid, resume=True, **settings)
    assert result.status == "succeeded" and result.steps == 8
    assert _close(one, _losses(resumed))
    assert worst_relative_difference(fsdp / ADAPTER, resumed / ADAPTER) < WEIGHT_RTOL


def test_fsdp_full_fine_tuning_resumes_a_one_process_checkpoint(
    tiny_lm: Path, tmp_path: Path
) -> None:
    data, _ = fsdp_data(tmp_path)
    settings = tune_settings(tiny_lm, "full")
    whole = train(data, tmp_path / "whole", **settings)
    steps: list[int] = []
    stopped = train(
        data,
        tmp_path / "split",
        on_step=lambda s: steps.append(s.step),
        should_stop=lambda: len(steps) >= 2,  # mid-epoch: the data position is restored too
        **settings,
    )
    assert stopped.status == "interrupted" and stopped.steps == 2
    args = [*cli_flags(settings), "--data", str(data), "--parallel", "fsdp", "--resume"]
    finish(torchrun(TWO_RANKS, [*args, "--out", str(tmp_path / "split")]))
    manifest = json.loads((tmp_path / "split" / "manifest.json").read_text())
    assert manifest["status"] == "succeeded" and manifest["result"]["steps"] == whole.steps
    assert manifest["result"]["trained_tokens"] == whole.trained_tokens
    assert _close(_losses(tmp_path / "whole"), _losses(tmp_path / "split"))
    diff = worst_relative_difference(tmp_path / "whole" / MERGED, tmp_path / "split" / MERGED)
    assert diff < WEIGHT_RTOL
