"""Fine-tuning run folders in the artefact store (``RAGTUNE_ARTIFACTS``), so that any host can
resume a job another host was training, and serve, export or compare a model it did not train.

A run folder (``RAGTUNE_HOME/serve/runs/JOB``, written by :func:`ragtune.tune.loop.train`) is
copied to ``<RAGTUNE_ARTIFACTS>/runs/JOB/`` in snapshots:

- ``checkpoints/step-N.json``: one complete checkpoint -- the ``step-N.pt`` file and the run's
  ``events.jsonl`` as they were, uploaded under ``checkpoints/step-N-TAG/``, and the run's
  manifest (inline) -- enough for :func:`ragtune.tune.rundir.open_run_dir` to resume it.
- ``run.json``: the finished run -- every file of the folder (adapter, merged model, manifest,
  events) under ``run-TAG/`` and the stored checkpoints -- published before the job is marked
  succeeded.

Never half-visible: each JSON file above (a *marker*) is written last, through a temporary
name, and lists every file of its snapshot with its key, size and SHA-256. A snapshot without
its marker, or whose files are missing or differ from it, does not exist for a reader: a
download is checked against the marker and lands in a hidden folder that is renamed into
place only when whole. ``TAG`` is new for each upload, so two workers that both wrote a
snapshot (one that lost its lease finishing its step) never mix their files: each marker
names its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from ragtune.io import file_lock
from ragtune.jobs.objects import _KEY, BLOCK
from ragtune.tune.checkpoint import list_checkpoints
from ragtune.tune.events import read_manifest

FORMAT_VERSION = 1
_MARKER = re.compile(r"^step-(\d{8})\.json$")
# What a checkpoint's manifest must not carry: the result of a run that has since finished
# (a resumed run that found "succeeded" would refuse to continue).
_FINISHED_KEYS = ("result", "outputs", "finished_at", "checkpoint")


class SnapshotDamaged(Exception):
    """A stored file is missing or differs from its marker."""


def open_run_store() -> RunStore | None:
    """The run store under ``RAGTUNE_ARTIFACTS``, or None when it is unset (run folders then
    live only under RAGTUNE_HOME)."""
    url = os.environ.get("RAGTUNE_ARTIFACTS")
    return RunStore(url) if url else None


def is_finished(run_dir: Path) -> bool:
    """The folder holds a whole succeeded run (its manifest is written last)."""
    try:
        manifest = read_manifest(run_dir)
    except Exception:
        return False
    return manifest is not None and manifest.get("status") == "succeeded"


class RunStore:
    def __init__(self, url: str) -> None:
        import fsspec

        self.url = url
        fs, root = fsspec.core.url_to_fs(url.rstrip("/"))
        self.fs: Any = fs
        self.root = f"{str(root).rstrip('/')}/runs"
        self._published: dict[str, dict[str, Any]] = {}

    # --- layout -------------------------------------------------------------------------

    def _job(self, job_id: str) -> str:
        if not _KEY.match(job_id) or ".." in job_id:
            raise ValueError(f"invalid job id {job_id!r}")
        return f"{self.root}/{job_id}"

    def _write_marker(self, job_id: str, name: str, marker: dict[str, Any]) -> None:
        folder = f"{self._job(job_id)}/{name.rpartition('/')[0]}".rstrip("/")
        self.fs.makedirs(folder, exist_ok=True)
        tmp = f"{folder}/.tmp-{uuid.uuid4().hex}.json"
        self.fs.pipe_file(tmp, json.dumps(marker, indent=1).encode())
        self.fs.mv(tmp, f"{self._job(job_id)}/{name}")

    def _read_marker(self, job_id: str, name: str) -> dict[str, Any] | None:
        try:
            marker: dict[str, Any] = json.loads(self.fs.cat_file(f"{self._job(job_id)}/{name}"))
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return marker if marker.get("format_version") == FORMAT_VERSION else None

    def _upload(self, job_id: str, path: Path, key: str) -> dict[str, Any]:
        """Stream ``path`` to ``key`` (relative to the job's folder), hashing what was sent."""
        target = f"{self._job(job_id)}/{key}"
        self.fs.makedirs(target.rpartition("/")[0], exist_ok=True)
        with open(path, "rb") as src, self.fs.open(target, "wb") as dst:
            size, sha = _copy(src, dst)
        return {"key": key, "bytes": size, "sha256": sha}

    def _download(self, job_id: str, files: dict[str, Any], dest: Path) -> None:
        """Every file of a marker into ``dest`` (relative paths kept), each checked against
        its size and SHA-256; :class:`SnapshotDamaged` when one is missing or differs."""
        for rel, info in sorted(files.items()):
            if any(p.startswith("/") or ".." in Path(p).parts for p in (rel, info["key"])):
                raise SnapshotDamaged(f"{rel}: a path outside the run")
            path = dest / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            source = f"{self._job(job_id)}/{info['key']}"
            try:
                with self.fs.open(source, "rb") as src, open(path, "wb") as dst:
                    got = _copy(src, dst)
            except FileNotFoundError:
                raise SnapshotDamaged(f"{info['key']} is missing") from None
            if got != (info["bytes"], info["sha256"]):
                raise SnapshotDamaged(f"{info['key']} differs from its marker")

    # --- checkpoints --------------------------------------------------------------------

    def checkpoint_steps(self, job_id: str) -> list[int]:
        """Steps of the stored checkpoints that have a marker, oldest first."""
        folder = f"{self._job(job_id)}/checkpoints"
        try:
            names = [p.rsplit("/", 1)[-1] for p in self.fs.ls(folder, detail=False)]
        except FileNotFoundError:
            return []
        return sorted(int(m.group(1)) for m in map(_MARKER.match, names) if m)

    def checkpoint(self, job_id: str, step: int) -> dict[str, Any] | None:
        return self._read_marker(job_id, f"checkpoints/step-{step:08d}.json")

    def mirror_checkpoints(self, job_id: str, run_dir: Path) -> list[int]:
        """Upload each complete local checkpoint the store lacks (its ``.pt`` file, the run's
        events and manifest as they are now), its marker last; then drop stored checkpoints
        the run has pruned. The steps uploaded."""
        local = {int(p.stem.split("-")[1]): p for p in list_checkpoints(run_dir / "checkpoints")}
        stored = set(self.checkpoint_steps(job_id))
        uploaded = []
        for step, path in sorted(local.items()):
            if step in stored:
                continue
            manifest = read_manifest(run_dir)
            if manifest is None:
                continue
            prefix = f"checkpoints/step-{step:08d}-{uuid.uuid4().hex[:8]}"
            name = f"checkpoints/{path.name}"
            try:
                files = {name: self._upload(job_id, path, f"{prefix}/{path.name}")}
            except FileNotFoundError:  # pruned by the training loop meanwhile
                continue
            if (run_dir / "events.jsonl").exists():
                files["events.jsonl"] = self._upload(
                    job_id, run_dir / "events.jsonl", f"{prefix}/events.jsonl"
                )
            running = {k: v for k, v in manifest.items() if k not in _FINISHED_KEYS}
            marker = {
                "format_version": FORMAT_VERSION,
                "job_id": job_id,
                "step": step,
                "created_at": int(path.stat().st_mtime) if path.exists() else 0,
                "manifest": {**running, "status": "running"},
                "files": files,
            }
            self._write_marker(job_id, f"checkpoints/step-{step:08d}.json", marker)
            uploaded.append(step)
        if local:
            for step in stored - set(local):
                if step < max(local):
                    self._delete_checkpoint(job_id, step)
        return uploaded

    def _delete_checkpoint(self, job_id: str, step: int) -> None:
        marker = self.checkpoint(job_id, step)
        self.fs.rm(f"{self._job(job_id)}/checkpoints/step-{step:08d}.json")  # invisible first
        if marker is not None:
            folder = marker["files"][f"checkpoints/step-{step:08d}.pt"]["key"].rpartition("/")[0]
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm(f"{self._job(job_id)}/{folder}", recursive=True)

    def restore_checkpoint(self, job_id: str, run_dir: Path) -> int | None:
        """Bring the newest complete stored checkpoint into ``run_dir`` when it is newer than
        the folder's own (a host taking over a job another was training); its step, or None.
        A checkpoint whose marker is missing or whose files do not match it is skipped."""
        local = [int(p.stem.split("-")[1]) for p in list_checkpoints(run_dir / "checkpoints")]
        newest_local = max(local, default=-1)
        for step in reversed(self.checkpoint_steps(job_id)):
            if step <= newest_local:
                return None
            marker = self.checkpoint(job_id, step)
            if marker is None:
                continue
            staging = run_dir.with_name(f".restore-{job_id}-{uuid.uuid4().hex[:8]}")
            try:
                self._download(job_id, marker["files"], staging)
            except SnapshotDamaged:
                continue
            else:
                (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
                name = f"checkpoints/step-{step:08d}.pt"
                os.replace(staging / name, run_dir / name)
                if (staging / "events.jsonl").exists():
                    os.replace(staging / "events.jsonl", run_dir / "events.jsonl")
                from ragtune.tune.events import write_manifest

                write_manifest(run_dir, marker["manifest"])  # last: the folder is a run now
                return step
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return None

    # --- the finished run ---------------------------------------------------------------

    def publish(self, job_id: str, run_dir: Path) -> None:
        """Upload the finished run: its checkpoints first, then every other file of the
        folder, then ``run.json`` (the manifest, the file list and the checkpoints' steps and
        metrics). Call it before marking the job succeeded."""
        from ragtune.jobs.runs import checkpoints

        self.mirror_checkpoints(job_id, run_dir)
        manifest = read_manifest(run_dir)
        if manifest is None or manifest.get("status") != "succeeded":
            raise ValueError(f"{run_dir} holds no finished run")
        prefix = f"run-{uuid.uuid4().hex[:8]}"
        files = {
            rel: self._upload(job_id, run_dir / rel, f"{prefix}/{rel}")
            for rel in model_files(run_dir)
        }
        listed = []
        for c in checkpoints(run_dir):
            marker = self.checkpoint(job_id, c.step)
            if marker is None:
                continue
            name = f"checkpoints/step-{c.step:08d}.pt"
            files[name] = marker["files"][name]
            listed.append({"step": c.step, "created_at": c.created_at, "metrics": c.metrics})
        marker = {
            "format_version": FORMAT_VERSION,
            "job_id": job_id,
            "manifest": manifest,
            "files": files,
            "checkpoints": listed,
        }
        self._write_marker(job_id, "run.json", marker)
        self._published[job_id] = marker

    def published(self, job_id: str) -> dict[str, Any] | None:
        """The finished run's marker, None when none is published (remembered once found)."""
        if job_id not in self._published:
            marker = self._read_marker(job_id, "run.json")
            if marker is None:
                return None
            self._published[job_id] = marker
        return self._published[job_id]

    def fetch(self, job_id: str, run_dir: Path) -> bool:
        """Make ``run_dir`` the published run, downloading it once: into a hidden folder beside
        it, renamed into place when whole (a stale unfinished folder is replaced). Concurrent
        callers on this host wait on one lock file and find the folder there. False when
        nothing is published."""
        if is_finished(run_dir):
            return True
        marker = self.published(job_id)
        if marker is None:
            return False
        with file_lock(run_dir.with_name(f".{job_id}.lock")):
            if is_finished(run_dir):
                return True
            staging = run_dir.with_name(f".fetch-{job_id}-{uuid.uuid4().hex[:8]}")
            try:
                self._download(job_id, marker["files"], staging)
                if run_dir.exists():
                    stale = run_dir.with_name(f".stale-{job_id}-{uuid.uuid4().hex[:8]}")
                    os.rename(run_dir, stale)
                    shutil.rmtree(stale, ignore_errors=True)
                os.rename(staging, run_dir)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return True

    def stored_files(self, job_id: str) -> Iterator[tuple[str, str]]:
        """(relative path, SHA-256 computed from the stored bytes) of the published run's
        files, or else of the newest checkpoint's (what ``ragtune migrate`` compares)."""
        marker = self.published(job_id)
        if marker is None:
            steps = self.checkpoint_steps(job_id)
            marker = self.checkpoint(job_id, steps[-1]) if steps else None
        for rel, info in sorted((marker or {}).get("files", {}).items()):
            with self.fs.open(f"{self._job(job_id)}/{info['key']}", "rb") as fh:
                yield rel, hashlib.file_digest(fh, "sha256").hexdigest()


def _copy(src: BinaryIO, dst: BinaryIO) -> tuple[int, str]:
    """Copy in blocks; the bytes copied and their SHA-256."""
    h, size = hashlib.sha256(), 0
    for block in iter(lambda: src.read(BLOCK), b""):
        h.update(block)
        dst.write(block)
        size += len(block)
    return size, h.hexdigest()


def model_files(run_dir: Path) -> list[str]:
    """A finished run's files but its checkpoints (adapter, merged model, manifest, events),
    relative to the folder; temporary files (hidden names) left out."""
    rels = (p.relative_to(run_dir) for p in sorted(run_dir.rglob("*")) if p.is_file())
    return [
        r.as_posix()
        for r in rels
        if r.parts[0] != "checkpoints" and not any(part.startswith(".") for part in r.parts)
    ]
