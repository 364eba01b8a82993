"""Open the configured backend: SQLite in the data directory and a local object folder, or
PostgreSQL when ``RAGTUNE_DATABASE_URL=postgresql://…`` is set (:mod:`ragtune.jobs.postgres`),
and objects through fsspec when ``RAGTUNE_ARTIFACTS=file:///…`` or ``s3://…`` is set
(:mod:`ragtune.jobs.artifacts`)."""

from __future__ import annotations

from typing import Protocol

from ragtune.config import database_url
from ragtune.jobs.keys import KeyTable
from ragtune.jobs.objects import LocalObjectStore
from ragtune.jobs.settings import ServiceSettings
from ragtune.jobs.sqlite import SqliteDB
from ragtune.jobs.store import FileTable, JobTable, ObjectStore
from ragtune.jobs.vector_stores import VectorStoreDB


class Database(FileTable, JobTable, Protocol):
    """Everything the service persists apart from object bytes."""


def open_objects(settings: ServiceSettings) -> ObjectStore:
    import os

    url = os.environ.get("RAGTUNE_ARTIFACTS")
    if url:
        from ragtune.jobs.artifacts import FsspecObjectStore

        return FsspecObjectStore(url, settings.home / "artifact-cache")
    return LocalObjectStore(settings.objects)


def open_backend(settings: ServiceSettings) -> tuple[Database, ObjectStore]:
    url = database_url()
    if url:
        from ragtune.jobs.postgres import open_postgres

        return open_postgres(url), open_objects(settings)
    return SqliteDB(settings.database), open_objects(settings)


def open_vector_stores(settings: ServiceSettings) -> VectorStoreDB:
    """The vector store tables: beside the job table, in SQLite or PostgreSQL."""
    url = database_url()
    if url:
        from ragtune.jobs.postgres import open_postgres
        from ragtune.jobs.vector_stores_pg import PgVectorStoreDB

        open_postgres(url)  # one clear error for a bad URL or an unreachable server
        return PgVectorStoreDB(url)
    return VectorStoreDB(settings.database)


def open_key_table() -> KeyTable | None:
    """Where ``ragtune keys create`` stores keys' hashes when PostgreSQL is configured (every
    server then honours a key created on any host); None for the embedded keys file."""
    url = database_url()
    if url:
        from ragtune.jobs.postgres import PgKeyTable, open_postgres

        open_postgres(url)
        return PgKeyTable(url)
    return None
