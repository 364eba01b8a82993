"""Training checkpoints: one file per checkpoint, written atomically, the last few kept.

A checkpoint holds everything needed to continue bit for bit: the trainable weights,
the optimizer and scheduler state, the RNG states and the position in the data. It is
written to a temporary file, fsynced and renamed with ``os.replace``, so a kill -9 in
the middle of a write never damages the previous checkpoint.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import torch

from ragtune.errors import RagtuneError
from ragtune.io import write_atomic as write_atomic
from ragtune.io import write_json_atomic as write_json_atomic

FORMAT_VERSION = 1
KEEP = 3
_NAME = re.compile(r"^step-(\d{8})\.pt$")


def rng_state() -> dict[str, Any]:
    """The RNG states a training step can consume (dropout draws from torch's)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(folder: Path, step: int, state: dict[str, Any], keep: int = KEEP) -> Path:
    """Write ``folder/step-XXXXXXXX.pt`` atomically and delete all but the newest ``keep``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{step:08d}.pt"
    payload = {"format_version": FORMAT_VERSION, "step": step, **state}
    write_atomic(path, lambda fh: torch.save(payload, fh))  # streamed: no copy in memory
    for old in list_checkpoints(folder)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary files from interrupted writes are skipped)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _NAME.match(p.name))


def clean_partial(folder: Path) -> None:
    """Remove temporary files left by a write that was killed."""
    if folder.is_dir():
        # ragtune.io.write_atomic's temporary names (".step-N.pt.XXXX.tmp"), and the older
        # ".step-N.pt.tmp-PID" form.
        for pattern in (".step-*.tmp", ".step-*.tmp-*"):
            for p in folder.glob(pattern):
                p.unlink(missing_ok=True)


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged file: torch raises several types
        raise RagtuneError(
            f"Checkpoint {path} cannot be read: {e}",
            "delete it to resume from the one before, or start a new run with another --out",
        ) from None
    if state.get("format_version") != FORMAT_VERSION:
        raise RagtuneError(
            f"Checkpoint {path} has format version {state.get('format_version')}; "
            f"this ragtune reads version {FORMAT_VERSION}",
            "resume it with the ragtune version that wrote it, or start a new run",
        )
    return state
