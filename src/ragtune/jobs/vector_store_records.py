"""The records of vector stores, their files and file batches, as the service's tables
hold them and the routes and the ingestion worker pass them around."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

VSFileStatus = Literal["in_progress", "completed", "cancelled", "failed"]
Attributes = dict[str, str | float | bool]


@dataclass(frozen=True)
class VectorStoreRecord:
    id: str
    project: str
    name: str
    created_at: int
    last_active_at: int
    metadata: dict[str, str] | None
    expires_after: dict[str, Any] | None
    chunk_tokens: int
    chunk_overlap: int

    @property
    def kb_name(self) -> str:
        """The ragtune knowledge base that holds this store's chunks."""
        return self.id


@dataclass(frozen=True)
class VSFileRecord:
    vector_store_id: str
    file_id: str
    project: str
    filename: str
    object_key: str
    created_at: int
    status: VSFileStatus
    last_error: dict[str, str] | None
    usage_bytes: int
    attributes: Attributes | None
    batch_id: str | None
    doc_id: str | None
    attempts: int = 0
    deleted: bool = False


@dataclass(frozen=True)
class FileCounts:
    in_progress: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0

    @property
    def total(self) -> int:
        return self.in_progress + self.completed + self.failed + self.cancelled


@dataclass(frozen=True)
class BatchRecord:
    id: str
    vector_store_id: str
    project: str
    created_at: int
    cancelled: bool


@dataclass(frozen=True)
class IngestClaim:
    """Files of one store a worker now holds under one attempt token: waiting files to
    ingest, or (``deleted``) detached files whose chunks it removes from the index."""

    files: list[VSFileRecord]
    store: VectorStoreRecord | None
    attempt: str
    deleted: bool

    @property
    def store_id(self) -> str:
        return self.files[0].vector_store_id
