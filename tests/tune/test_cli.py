from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ragtune.cli import main
from tests.tune.conftest import FACTS, chat_row, read_metrics, write_jsonl


def test_validate_reports_counts_and_exit_status(
    tiny_lm: Path, facts_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", str(facts_file), "--base", str(tiny_lm), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["valid"] and report["examples"] == 10 and report["format"] == "chat"
    assert report["tokens"]["min"] <= report["tokens"]["mean"] <= report["tokens"]["max"]
    assert report["tokens"]["total"] > report["trained_tokens"]["total"] > 0
    lora = next(e for e in report["estimates"] if e["method"] == "lora")
    assert (lora["n_epochs"], lora["batch_size"], lora["steps"]) == (10, 1, 100)
    assert lora["billed_tokens"] == 10 * report["tokens"]["total"]
    assert lora["seconds"] > 0 and "estimate" in lora["basis"]

    long = chat_row("Who founded Zorbland? " * 30, "Mira Quell")
    bad = write_jsonl(tmp_path / "bad.jsonl", [chat_row(q, a) for q, a in FACTS * 2] + [long, {}])
    assert main(["validate", str(bad), "--base", str(tiny_lm), "--max-length", "64"]) == 1
    out = capsys.readouterr().out
    assert "bad.jsonl:12: [missing_messages_list]" in out
    assert "bad.jsonl:11: [too_long]" in out and "examples over 64 tokens: 1" in out


def test_tune_prints_a_json_summary(
    tiny_lm: Path, facts_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    args = ["tune", "--data", str(facts_file), "--method", "lora", "--base", str(tiny_lm)]
    code = main([*args, "--epochs", "2", "--batch-size", "auto", "--out", str(run), "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["status"] == "succeeded" and summary["epochs"] == 2 and summary["steps"] == 20
    assert summary["paths"]["adapter"] == str(run.resolve() / "adapter")
    assert summary["tokens_per_s"] > 0 and summary["peak_memory_bytes"] > 0
    assert main([*args, "--out", str(run)]) == 2  # a user mistake: one line, no traceback
    assert "already holds a run" in capsys.readouterr().err


def _tune_cmd(data: Path, tiny_lm: Path, out: Path) -> list[str]:
    return ["tune", "--data", str(data), "--base", str(tiny_lm), "--method", "lora",
            "--epochs", "20", "--batch-size", "2", "--lr-multiplier", "5",
            "--out", str(out)]  # fmt: skip


def _run_until_signal(cmd: list[str], run: Path, sig: int) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ragtune.cli", *cmd],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (run / "events.jsonl").exists() and len(read_metrics(run)) >= 3:
            proc.send_signal(sig)
            break
        time.sleep(0.05)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_sigterm_saves_a_checkpoint_and_resume_finishes_identically(
    tiny_lm: Path, facts_file: Path, tmp_path: Path
) -> None:
    cmd = _tune_cmd(facts_file, tiny_lm, tmp_path / "split")
    done = _run_until_signal(cmd, tmp_path / "split", signal.SIGTERM)
    assert done.returncode == 143, done.stderr[-2000:]
    assert "checkpoint:" in done.stderr and "--resume" in done.stderr
    stopped_at = json.loads((tmp_path / "split" / "manifest.json").read_text())["result"]["steps"]
    assert 3 <= stopped_at < 100
    assert main([*cmd, "--resume"]) == 0
    assert main(_tune_cmd(facts_file, tiny_lm, tmp_path / "whole")) == 0
    name = "adapter/adapter_model.safetensors"
    a, b = load_file(tmp_path / "whole" / name), load_file(tmp_path / "split" / name)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_ctrl_c_exits_130_with_a_checkpoint(
    tiny_lm: Path, facts_file: Path, tmp_path: Path
) -> None:
    done = _run_until_signal(
        _tune_cmd(facts_file, tiny_lm, tmp_path / "run"), tmp_path / "run", signal.SIGINT
    )
    assert done.returncode == 130, done.stderr[-2000:]
    assert list((tmp_path / "run" / "checkpoints").glob("step-*.pt"))
