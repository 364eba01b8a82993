"""What a fine-tuning job's run folder tells the API: events, checkpoints and the CSV of
step metrics, read from the files ``ragtune.tune.loop.train`` writes (``events.jsonl``,
``manifest.json``, ``checkpoints/step-N.pt``)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragtune.jobs.store import JobEvent
from ragtune.tune.checkpoint import list_checkpoints
from ragtune.tune.events import read_events, read_manifest

# Columns of the result CSV OpenAI attaches to a finished job.
RESULT_COLUMNS = ("step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy")
_METRIC_NAMES = (
    "step",
    "train_loss",
    "train_mean_token_accuracy",
    "valid_loss",
    "valid_mean_token_accuracy",
    "full_valid_loss",
    "full_valid_mean_token_accuracy",
)


@dataclass(frozen=True)
class RunCheckpoint:
    step: int
    created_at: int
    metrics: dict[str, float]
    path: Path


def _events(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "events.jsonl"
    return read_events(path) if path.exists() else []


def total_steps(run_dir: Path) -> int | None:
    try:
        manifest = read_manifest(run_dir)
    except Exception:
        return None
    return int(manifest["hyperparameters"]["total_steps"]) if manifest else None


def run_events(job_id: str, run_dir: Path) -> list[JobEvent]:
    """The run's messages and per-step metrics as job events, oldest first."""
    total = total_steps(run_dir)
    out = []
    for e in _events(run_dir):
        digest = hashlib.sha1(f"{job_id}{json.dumps(e, sort_keys=True)}".encode()).hexdigest()
        at = float(e.get("time", 0.0))
        created = int(at)
        if e.get("type") == "metrics" and "train_loss" in e:
            data = {k: e.get(k) for k in _METRIC_NAMES if e.get(k) is not None}
            data["total_steps"] = total
            msg = f"Step {e['step']}/{total}: training loss={e['train_loss']:.4f}"
            if e.get("valid_loss") is not None:
                msg += f", validation loss={e['valid_loss']:.4f}"
            out.append(
                JobEvent(
                    f"ftevent-{digest[:24]}", job_id, created, "info", msg, "metrics", data, at
                )
            )
        elif e.get("type") == "message":
            level = e.get("level", "info")
            out.append(
                JobEvent(
                    f"ftevent-{digest[:24]}",
                    job_id,
                    created,
                    level if level in ("info", "warn", "error") else "info",
                    str(e.get("message", "")),
                    at=at,
                )
            )
    return out


def step_metrics(run_dir: Path) -> dict[int, dict[str, float]]:
    """The last metrics event of each step (a resumed run may have logged a step twice)."""
    by_step: dict[int, dict[str, float]] = {}
    for e in _events(run_dir):
        if e.get("type") == "metrics" and "step" in e:
            values = {k: float(e[k]) for k in _METRIC_NAMES if e.get(k) is not None}
            by_step.setdefault(int(e["step"]), {}).update(values)
    return by_step


def checkpoints(run_dir: Path) -> list[RunCheckpoint]:
    """Saved checkpoints of the run, newest first, with the metrics of their step."""
    metrics = step_metrics(run_dir)
    found = []
    for path in list_checkpoints(run_dir / "checkpoints"):
        step = int(path.stem.split("-")[1])
        found.append(RunCheckpoint(step, int(path.stat().st_mtime), metrics.get(step, {}), path))
    return sorted(found, key=lambda c: -c.step)


def results_csv(run_dir: Path) -> bytes:
    """The step metrics as OpenAI's result file: one row per step."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(RESULT_COLUMNS)
    for step, m in sorted(step_metrics(run_dir).items()):
        if "train_loss" not in m:
            continue
        writer.writerow(
            [
                step,
                m.get("train_loss", ""),
                m.get("train_mean_token_accuracy", ""),
                m.get("valid_loss", ""),
                m.get("valid_mean_token_accuracy", ""),
            ]
        )
    return buf.getvalue().encode()
