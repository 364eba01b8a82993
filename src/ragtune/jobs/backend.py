"""Open the configured backend: SQLite in the data directory and a local object folder, or
PostgreSQL when ``RAGTUNE_DATABASE_URL=postgresql://…`` is set (:mod:`ragtune.jobs.postgres`),
and objects through fsspec when ``RAGTUNE_ARTIFACTS=file:///…`` or ``s3://…`` is set
(:mod:`ragtune.jobs.artifacts`)."""

from __future__ import annotations

import os
from typing import Protocol

from ragtune.jobs.objects import LocalObjectStore
from ragtune.jobs.settings import ServiceSettings
from ragtune.jobs.sqlite import SqliteDB
from ragtune.jobs.store import FileTable, JobTable, ObjectStore


class Database(FileTable, JobTable, Protocol):
    """Everything the service persists apart from object bytes."""


def open_objects(settings: ServiceSettings) -> ObjectStore:
    url = os.environ.get("RAGTUNE_ARTIFACTS")
    if url:
        from ragtune.jobs.artifacts import FsspecObjectStore

        return FsspecObjectStore(url, settings.home / "artifact-cache")
    return LocalObjectStore(settings.objects)


def open_backend(settings: ServiceSettings) -> tuple[Database, ObjectStore]:
    url = os.environ.get("RAGTUNE_DATABASE_URL")
    if url:
        from ragtune.jobs.postgres import open_postgres

        return open_postgres(url), open_objects(settings)
    return SqliteDB(settings.database), open_objects(settings)
