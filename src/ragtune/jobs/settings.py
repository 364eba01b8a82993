"""Where the service keeps its state and the limits it applies, read once from the
environment (so ``ragtune serve`` and the ``ragtune worker`` processes it starts agree)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from ragtune.config import ragtune_home
from ragtune.errors import RagtuneError
from ragtune.models import DEFAULT_LM_NAME

DEFAULT_MAX_UPLOAD = 512 * 2**20
DEFAULT_LEASE_S = 30.0
DEFAULT_MAX_WAITING = 64


def _number(name: str, default: float) -> float:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return float(value)
    except ValueError:
        raise RagtuneError(f"{name}={value!r} is not a number", f"unset {name} or fix it") from None


@dataclass(frozen=True)
class ServiceSettings:
    home: Path  # $RAGTUNE_HOME/serve: database, objects, runs, keys
    base_model: str = "default"  # 'default' (Gemma 3 270M) or a local model folder
    embedder: str = "default"
    embed_backend: str = "onnx"
    device: str = "auto"
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD
    lease_s: float = DEFAULT_LEASE_S
    max_waiting_jobs: int = DEFAULT_MAX_WAITING
    train_nproc: str = "auto"  # processes per training job: N, or auto (all GPUs, else 1)
    # the address other workers reach this one at (node 0 of a multi-node training job)
    worker_addr: str = field(default_factory=socket.gethostname)

    @classmethod
    def from_env(cls) -> ServiceSettings:
        env = os.environ.get
        return cls(
            home=ragtune_home() / "serve",
            base_model=env("RAGTUNE_SERVE_MODEL", "default"),
            embedder=env("RAGTUNE_SERVE_EMBEDDER", "default"),
            embed_backend=env("RAGTUNE_SERVE_EMBED_BACKEND", "onnx"),
            device=env("RAGTUNE_SERVE_DEVICE", "auto"),
            max_upload_bytes=int(_number("RAGTUNE_MAX_UPLOAD_BYTES", DEFAULT_MAX_UPLOAD)),
            lease_s=_number("RAGTUNE_LEASE_SECONDS", DEFAULT_LEASE_S),
            max_waiting_jobs=int(_number("RAGTUNE_MAX_WAITING_JOBS", DEFAULT_MAX_WAITING)),
            train_nproc=env("RAGTUNE_TRAIN_NPROC", "auto"),
            worker_addr=env("RAGTUNE_WORKER_ADDR") or socket.gethostname(),
        )

    def processes_for(self, requested: int | None) -> int:
        """How many data-parallel processes train a job: the job's own setting, else
        ``train_nproc`` (``auto``: every GPU of this worker when it has several, else 1)."""
        if requested:
            return int(requested)
        if self.train_nproc != "auto":
            if not self.train_nproc.isdigit() or int(self.train_nproc) < 1:
                raise RagtuneError(
                    f"RAGTUNE_TRAIN_NPROC={self.train_nproc!r} is not a number of processes",
                    "set it to auto or to 1 or more",
                )
            return int(self.train_nproc)
        import torch

        gpus = torch.cuda.device_count() if self.device in ("auto", "cuda") else 0
        return gpus if gpus > 1 else 1

    @property
    def base_model_id(self) -> str:
        """The base model's name in the API."""
        if self.base_model in ("default", DEFAULT_LM_NAME):
            return DEFAULT_LM_NAME
        return Path(self.base_model).name

    @property
    def database(self) -> Path:
        return self.home / "ragtune.sqlite"

    @property
    def objects(self) -> Path:
        return self.home / "files"

    @property
    def runs(self) -> Path:
        return self.home / "runs"

    @property
    def keys_file(self) -> Path:
        return self.home / "keys.json"

    def run_dir(self, job_id: str) -> Path:
        return self.runs / job_id
