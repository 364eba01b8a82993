"""The persistence protocols of the service, and the records that cross them.

Routes and workers only see :class:`FileTable`, :class:`JobTable` and :class:`ObjectStore`;
the SQLite backend (:mod:`ragtune.jobs.sqlite`) and the local object store
(:mod:`ragtune.jobs.objects`) implement them, and another backend (PostgreSQL) implements the
same methods. Every method that reads or changes a tenant's object takes its ``project``
and matches it in the query itself, so an object of another project is simply not found.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

JobStatus = Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL: tuple[JobStatus, ...] = ("succeeded", "failed", "cancelled")
FileStatus = Literal["uploaded", "processed", "error"]


@dataclass(frozen=True)
class FileRecord:
    id: str
    project: str
    filename: str
    purpose: str
    bytes: int
    created_at: int
    key: str  # the object's key in the ObjectStore
    status: FileStatus = "processed"
    status_details: str | None = None
    expires_at: int | None = None


@dataclass(frozen=True)
class JobError:
    code: str
    message: str
    param: str | None = None


@dataclass(frozen=True)
class JobRecord:
    """A fine-tuning job as stored. ``spec`` holds the request as resolved at creation
    (method, hyperparameters, the ragtune extension ``training_type``); ``attempt`` is the
    token of the worker attempt that holds the lease."""

    id: str
    project: str
    created_at: int
    model: str
    training_file: str
    validation_file: str | None
    suffix: str | None
    seed: int
    metadata: dict[str, str] | None
    spec: dict[str, Any]
    status: JobStatus
    error: JobError | None = None
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    trained_tokens: int | None = None
    estimated_finish: int | None = None
    result_files: list[str] = field(default_factory=list)
    attempt: str | None = None
    attempts: int = 0
    lease_until: float | None = None
    cancel_requested: bool = False
    model_deleted: bool = False


@dataclass(frozen=True)
class JobEvent:
    id: str
    job_id: str
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"] = "message"
    data: dict[str, Any] | None = None
    at: float = 0.0  # unix time with sub-second precision: the order of events


def newest_first(*sources: list[JobEvent]) -> list[JobEvent]:
    """Events from several sources, each oldest first, merged newest first by their
    sub-second ``at``; events with the same ``at`` keep their source's order, reversed
    (a plain ``sort(reverse=True)`` would keep ties oldest first)."""
    events = [e for source in sources for e in source]
    order = sorted(range(len(events)), key=lambda i: (events[i].at, i), reverse=True)
    return [events[i] for i in order]


@dataclass(frozen=True)
class Claim:
    """A job a worker now holds: only the holder of ``attempt`` may heartbeat or finish it."""

    job: JobRecord
    attempt: str


class FileTable(Protocol):
    def add_file(self, record: FileRecord) -> None: ...
    def get_file(self, project: str, file_id: str) -> FileRecord | None: ...
    def list_files(
        self,
        project: str,
        after: str | None,
        limit: int,
        order: Literal["asc", "desc"],
        purpose: str | None,
    ) -> tuple[list[FileRecord], bool]: ...
    def delete_file(self, project: str, file_id: str) -> FileRecord | None: ...


class JobTable(Protocol):
    def add_job(self, job: JobRecord) -> None: ...
    def get_job(self, project: str, job_id: str) -> JobRecord | None: ...
    def list_jobs(
        self, project: str, after: str | None, limit: int, metadata: dict[str, str] | None
    ) -> tuple[list[JobRecord], bool]: ...
    def count_waiting(self) -> int: ...
    def request_cancel(self, project: str, job_id: str) -> JobRecord | None: ...
    def delete_model(self, project: str, job_id: str) -> bool: ...
    def add_event(self, event: JobEvent) -> None: ...
    def list_events(self, job_id: str) -> list[JobEvent]: ...

    # --- the worker side ---
    def claim(self, worker: str, lease_s: float) -> Claim | None: ...
    def heartbeat(self, job_id: str, attempt: str, lease_s: float) -> bool: ...
    def should_stop(self, job_id: str, attempt: str) -> bool: ...
    def update_running(self, job_id: str, attempt: str, values: dict[str, Any]) -> bool: ...
    def finish(
        self,
        job_id: str,
        attempt: str,
        status: JobStatus,
        values: dict[str, Any],
        files: Iterable[FileRecord] = (),
        events: Iterable[JobEvent] = (),
    ) -> bool: ...


class ObjectStore(Protocol):
    """Bytes by key. Writes are atomic: a reader never sees half an object."""

    def put_stream(self, key: str, chunks: Iterable[bytes], limit: int) -> int: ...
    def put_bytes(self, key: str, data: bytes) -> None: ...
    def open(self, key: str) -> Iterator[bytes]: ...
    def local_path(self, key: str) -> Path: ...
    def delete(self, key: str) -> None: ...
    def exists(self, key: str) -> bool: ...


def dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True)


def loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


T = TypeVar("T")


def page(
    items: Sequence[T], ids: Sequence[str], after: str | None, limit: int
) -> tuple[list[T], bool]:
    """Cursor pagination: the ``limit`` items after the one whose id is ``after``."""
    start = 0
    if after is not None:
        start = ids.index(after) + 1 if after in ids else len(ids)
    chunk = list(items[start : start + limit])
    return chunk, start + limit < len(items)
