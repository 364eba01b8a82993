"""Running a fine-tuning job on several devices: the worker launches ``torchrun`` (PyTorch's
elastic launcher) with ``ragtune tune`` as the program, one process per device
(DistributedDataParallel, or FSDP when the job asks for ``parallel: fsdp``: gloo on CPU,
NCCL with one GPU per process; see :mod:`ragtune.tune.distributed` and
:mod:`ragtune.tune.sharding`). The run folder is the same as for one process, so a
checkpoint written under torchrun resumes under torchrun or in one process alike.

Stopping: when the job is cancelled or its lease is lost the worker sends SIGTERM to
torchrun, which passes it to every rank; each finishes its current step, saves a checkpoint
and exits. If the worker itself dies, the kernel sends torchrun SIGTERM
(``PR_SET_DEATHSIG``), so no orphaned training keeps writing the run folder that the job's
next holder resumes from.
"""

from __future__ import annotations

import ctypes
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

PR_SET_DEATHSIG = 1  # linux/prctl.h


def torchrun_command(
    nproc: int,
    run_dir: Path,
    train_path: Path,
    valid_path: Path | None,
    method: str,
    base: str,
    seed: int,
    hyperparameters: dict[str, Any],
    device: str,
    parallel: str = "ddp",
) -> list[str]:
    """``torchrun --standalone --nproc-per-node N -m ragtune.cli tune …`` for a job."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc-per-node={nproc}", "-m", "ragtune.cli", "tune"]
    cmd += ["--data", str(train_path), "--out", str(run_dir), "--method", method]
    cmd += ["--base", base, "--seed", str(seed), "--device", device, "--dtype", "float32"]
    cmd += ["--parallel", parallel, "--resume"]
    if valid_path is not None:
        cmd += ["--validation", str(valid_path)]
    for flag, key in (
        ("--epochs", "n_epochs"),
        ("--batch-size", "batch_size"),
        ("--lr-multiplier", "learning_rate_multiplier"),
    ):
        value = hyperparameters.get(key)
        if value not in (None, "auto"):
            cmd += [flag, str(value)]
    return cmd


def torchrun_log(run_dir: Path) -> Path:
    """The launcher's output, beside the run folder (``ragtune tune`` owns the folder)."""
    return run_dir.with_name(run_dir.name + ".torchrun.log")


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DEATHSIG, signal.SIGTERM)


def run_torchrun(
    cmd: list[str], run_dir: Path, should_stop: Callable[[], bool], poll_s: float = 0.5
) -> tuple[Literal["succeeded", "interrupted"], int]:
    """Run ``cmd`` until it exits; ("succeeded", trained tokens) when the run finished,
    ("interrupted", 0) when ``should_stop`` made us stop it. Its output goes to
    :func:`torchrun_log`; a run that fails otherwise raises with the log's tail."""
    from ragtune.tune.events import read_manifest

    log_path = torchrun_log(run_dir)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    stopping = False
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
        )
        try:
            while proc.poll() is None:
                if not stopping and should_stop():
                    proc.send_signal(signal.SIGTERM)
                    stopping = True
                time.sleep(poll_s)
        except BaseException:
            proc.terminate()
            proc.wait()
            raise
    manifest = read_manifest(run_dir)
    if manifest is not None and manifest.get("status") == "succeeded":
        return "succeeded", int(manifest["result"]["trained_tokens"])
    if stopping:
        return "interrupted", 0
    tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
    raise RuntimeError(f"torchrun exited with status {proc.returncode}: " + " | ".join(tail))
