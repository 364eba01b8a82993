"""A run's observable record: ``events.jsonl`` (metrics and messages) and ``manifest.json``.

Metric names are those of OpenAI's fine-tuning checkpoints and job events: ``train_loss``,
``train_mean_token_accuracy``, ``valid_loss``, ``valid_mean_token_accuracy``,
``full_valid_loss``, ``full_valid_mean_token_accuracy``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal

from ragtune.errors import RagtuneError
from ragtune.io import append_text, write_json_atomic

MANIFEST_VERSION = 1
RUN_KIND = "ragtune-run"
Level = Literal["info", "warn", "error"]


class EventLog:
    """Appends one JSON object per line to ``events.jsonl``; a no-op where ``enabled`` is False
    (every rank but 0 under torchrun)."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled

    def write(self, event: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        append_text(self.path, json.dumps(event) + "\n")

    def message(self, message: str, level: Level = "info", step: int = 0) -> None:
        self.write(
            {
                "type": "message",
                "level": level,
                "message": message,
                "step": step,
                "time": time.time(),
            }
        )

    def metrics(self, **values: Any) -> None:
        self.write({"type": "metrics", **values, "time": time.time()})

    def drop_after(self, step: int) -> None:
        """Forget events past ``step``: a resumed run redoes those steps and logs them again."""
        if not self.enabled or not self.path.exists():
            return
        kept = [e for e in read_events(self.path) if int(e.get("step", 0)) <= step]
        write_json_lines(self.path, kept)


def write_json_lines(path: Path, events: list[dict[str, Any]]) -> None:
    from ragtune.io import write_atomic

    write_atomic(path, "".join(json.dumps(e) + "\n" for e in events).encode())


def read_events(path: Path) -> list[dict[str, Any]]:
    """Events of a run, skipping a torn last line (a process killed mid-write)."""
    events = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return events


def read_manifest(run_dir: Path) -> dict[str, Any] | None:
    """The run's manifest, or None when there is none; unknown kinds or versions are refused."""
    path = run_dir / "manifest.json"
    if not path.exists():
        return None
    try:
        manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise RagtuneError(f"{path} is not valid JSON: {e}") from None
    if manifest.get("kind") != RUN_KIND:
        raise RagtuneError(f"{path} is not a ragtune run manifest", "choose another --out folder")
    if int(manifest.get("format_version", 0)) != MANIFEST_VERSION:
        raise RagtuneError(
            f"{path} has format version {manifest.get('format_version')}; this ragtune reads "
            f"version {MANIFEST_VERSION}",
            "use the ragtune version that wrote the run",
        )
    return manifest


def write_manifest(run_dir: Path, manifest: dict[str, Any]) -> None:
    write_json_atomic(run_dir / "manifest.json", manifest)
