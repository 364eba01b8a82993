"""A training run's folder: what its manifest records about the data, and whether an
existing folder may be resumed (same method, base model, data and hyperparameters) and
from which checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ragtune.errors import RagtuneError
from ragtune.tune import checkpoint as ckpt
from ragtune.tune.events import read_manifest

log = logging.getLogger(__name__)


def data_record(data: Any, n_sequences: int) -> dict[str, Any]:
    return {
        "path": str(Path(data.path).resolve()),
        "sha256": data.sha256,
        "format": data.format,
        "examples": len(data.origins),
        "sequences": n_sequences,
    }


# Settings that may change between an interrupted run and its resumption: they change how
# the work is spread, not what is computed (a checkpoint is in the same format whether one
# process, DDP or FSDP wrote it).
_RESUMABLE_CHANGES = ("world_size", "parallel", "micro_batch_tokens")


def _sha(record: dict[str, Any] | None) -> str | None:
    return record["sha256"] if record else None


def open_run_dir(run_dir: Path, manifest: dict[str, Any], resume: bool) -> dict[str, Any] | None:
    """Check ``run_dir`` and return the checkpoint to resume from (None: start at step 0)."""
    existing = read_manifest(run_dir)
    if existing is None:
        if run_dir.exists() and any(run_dir.iterdir()):
            raise RagtuneError(
                f"{run_dir} exists and is not a ragtune run", "choose a new or empty --out folder"
            )
        if resume:
            log.warning("nothing to resume in %s; starting a new run", run_dir)
        return None
    if not resume:
        raise RagtuneError(
            f"{run_dir} already holds a run (status: {existing.get('status')})",
            "pass --resume to continue it, or choose another --out folder",
        )
    if existing.get("status") == "succeeded":
        raise RagtuneError(
            f"The run in {run_dir} has already finished",
            f"its model is in {run_dir / 'merged'}; choose another --out for a new run",
        )
    old_hp = {k: v for k, v in existing["hyperparameters"].items() if k not in _RESUMABLE_CHANGES}
    new_hp = {k: v for k, v in manifest["hyperparameters"].items() if k not in _RESUMABLE_CHANGES}
    differences = [
        name
        for name, a, b in (
            ("method", existing["method"], manifest["method"]),
            ("base model", existing["base_model"], manifest["base_model"]),
            (
                "training data",
                existing["data"]["train"]["sha256"],
                manifest["data"]["train"]["sha256"],
            ),
            (
                "validation data",
                _sha(existing["data"]["validation"]),
                _sha(manifest["data"]["validation"]),
            ),
            ("hyperparameters", old_hp, new_hp),
        )
        if a != b
    ]
    if differences:
        raise RagtuneError(
            f"Cannot resume {run_dir}: the {', '.join(differences)} differ from the "
            "interrupted run",
            "resume with the same command line as the original run",
        )
    manifest["created_at"] = existing.get("created_at", manifest["created_at"])
    folder = run_dir / "checkpoints"
    ckpt.clean_partial(folder)
    found = ckpt.list_checkpoints(folder)
    if not found:
        log.warning("no checkpoint in %s; starting again from step 0", folder)
        return None
    log.info("resuming from %s", found[-1])
    return ckpt.load_checkpoint(found[-1])
