"""Open the configured backend: today SQLite in the data directory and a local object
folder. The one place a PostgreSQL backend would be chosen."""

from __future__ import annotations

from typing import Protocol

from ragtune.jobs.objects import LocalObjectStore
from ragtune.jobs.settings import ServiceSettings
from ragtune.jobs.sqlite import SqliteDB
from ragtune.jobs.store import FileTable, JobTable, ObjectStore


class Database(FileTable, JobTable, Protocol):
    """Everything the service persists apart from object bytes."""


def open_backend(settings: ServiceSettings) -> tuple[Database, ObjectStore]:
    return SqliteDB(settings.database), LocalObjectStore(settings.objects)
