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
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from ragtune.errors import RagtuneError
from ragtune.jobs.store import FileTable, JobRecord, ObjectStore

PR_SET_DEATHSIG = 1  # linux/prctl.h
JOIN_TIMEOUT_S = 600  # how long node 0 waits for the other nodes to join (torchrun's default)


@dataclass(frozen=True)
class Rendezvous:
    """Where the nodes of a multi-node run meet: torchrun's c10d rendezvous, whose store node
    0 hosts on ``endpoint`` (``host:port``, an address every other node reaches)."""

    nnodes: int
    endpoint: str
    run_id: str

    def torchrun_args(self, node_rank: int) -> list[str]:
        conf = f"is_host={int(node_rank == 0)},join_timeout={JOIN_TIMEOUT_S}"
        return [f"--nnodes={self.nnodes}", f"--node-rank={node_rank}", "--rdzv-backend=c10d",
                f"--rdzv-endpoint={self.endpoint}", f"--rdzv-id={self.run_id}",
                f"--rdzv-conf={conf}"]  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def free_port() -> int:
    """A TCP port nothing listens on now (the rendezvous binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def data_paths(db: FileTable, objects: ObjectStore, job: JobRecord) -> tuple[Path, Path | None]:
    """The local paths of a job's training and validation files."""
    paths: list[Path | None] = []
    for file_id in (job.training_file, job.validation_file):
        if file_id is None:
            paths.append(None)
            continue
        record = db.get_file(job.project, file_id)
        if record is None:
            raise RagtuneError(f"File {file_id} was deleted before training started")
        paths.append(objects.local_path(record.key))
    assert paths[0] is not None
    return paths[0], paths[1]


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
    rendezvous: Rendezvous | None = None,
    node_rank: int = 0,
) -> list[str]:
    """``torchrun --standalone --nproc-per-node N -m ragtune.cli tune …`` for a job; with a
    ``rendezvous``, this host's launch as node ``node_rank`` of a multi-node run."""
    cmd = [sys.executable, "-m", "torch.distributed.run"]
    cmd += rendezvous.torchrun_args(node_rank) if rendezvous else ["--standalone"]
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


def torchrun_log(run_dir: Path, node_rank: int = 0) -> Path:
    """The launcher's output, beside the run folder (``ragtune tune`` owns the folder); one
    per node of a multi-node run."""
    node = f".node{node_rank}" if node_rank else ""
    return run_dir.with_name(f"{run_dir.name}{node}.torchrun.log")


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DEATHSIG, signal.SIGTERM)


def run_torchrun(
    cmd: list[str],
    run_dir: Path,
    should_stop: Callable[[], bool],
    poll_s: float = 0.5,
    node_rank: int = 0,
) -> tuple[Literal["succeeded", "interrupted"], int]:
    """Run ``cmd`` until it exits; ("succeeded", trained tokens) when the run finished,
    ("interrupted", 0) when ``should_stop`` made us stop it or (several nodes) another
    node stopped the run after a checkpoint. Its output goes to :func:`torchrun_log`; a
    run that fails otherwise raises with the log's tail."""
    from ragtune.tune.events import read_manifest

    started = time.time()
    log_path = torchrun_log(run_dir, node_rank)
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
    # an interrupted manifest written by this run (not left by an earlier attempt): another
    # node stopped it
    stopped_elsewhere = (
        manifest is not None
        and manifest.get("status") == "interrupted"
        and (run_dir / "manifest.json").stat().st_mtime >= started
    )
    if stopping or stopped_elsewhere:
        return "interrupted", 0
    tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
    raise RuntimeError(f"torchrun exited with status {proc.returncode}: " + " | ".join(tail))
