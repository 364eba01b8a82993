"""/v1/vector_stores: stores, their files and file batches, and search.

Adding a file queues it for ingestion by the workers (``in_progress`` -> ``completed`` or
``failed`` with ``last_error``); deleting one takes it out of search at once.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool

from ragtune.config import IngestConfig
from ragtune.jobs.backend import open_vector_stores
from ragtune.jobs.vector_stores import (
    BatchRecord,
    VectorStoreDB,
    VectorStoreRecord,
    VSFileRecord,
    new_id,
)
from ragtune.retrieve.kb import discard_knowledge_base
from ragtune.serve.errors import APIError, not_found
from ragtune.serve.protocol.common import list_page
from ragtune.serve.protocol.vector_stores import (
    Attributes,
    ChunkingStrategyParam,
    Content,
    FileBatchCreateParams,
    FileCounts,
    FileCreateParams,
    FileUpdateParams,
    Filters,
    LastError,
    StaticFileChunkingStrategy,
    StaticFileChunkingStrategyObject,
    VectorStore,
    VectorStoreCreateParams,
    VectorStoreDeleted,
    VectorStoreFile,
    VectorStoreFileBatch,
    VectorStoreFileDeleted,
    VectorStoreSearchPage,
    VectorStoreSearchParams,
    VectorStoreSearchResponse,
    VectorStoreUpdateParams,
)
from ragtune.serve.state import ProjectDep, Service, ServiceDep
from ragtune.serve.vector_search import KnowledgeBases, StoreHit, search_store

router = APIRouter(tags=["vector_stores"])
DAY = 86_400


def vector_store_db(request: Request) -> VectorStoreDB:
    """The vector store tables and open knowledge bases of this app (made on first use)."""
    state = request.app.state
    if getattr(state, "vector_store_db", None) is None:
        service: Service = state.service
        state.vector_store_db = open_vector_stores(service.settings)
        state.knowledge_bases = KnowledgeBases(service.settings.device)
    db: VectorStoreDB = state.vector_store_db
    return db


def knowledge_bases(request: Request) -> KnowledgeBases:
    vector_store_db(request)
    kbs: KnowledgeBases = request.app.state.knowledge_bases
    return kbs


def chunking(param: ChunkingStrategyParam | None) -> tuple[int, int]:
    """(chunk tokens, overlap) of a chunking strategy; ``auto`` is OpenAI's 800/400."""
    if param is None or param.type == "auto":
        d = IngestConfig()
        return d.chunk_tokens, d.chunk_overlap
    assert isinstance(param, StaticFileChunkingStrategyObject)
    size, overlap = param.static.max_chunk_size_tokens, param.static.chunk_overlap_tokens
    if overlap < 0 or overlap > size // 2:
        raise APIError(
            400,
            "chunk_overlap_tokens must be between 0 and half of max_chunk_size_tokens",
            "chunking_strategy",
        )
    return size, overlap


def store_object(db: VectorStoreDB, s: VectorStoreRecord) -> dict[str, Any]:
    counts, usage = db.file_counts(s.id)
    expires_at = s.last_active_at + int(s.expires_after["days"]) * DAY if s.expires_after else None
    expired = expires_at is not None and expires_at <= time.time()
    return VectorStore(
        id=s.id,
        created_at=s.created_at,
        file_counts=FileCounts(**vars(counts), total=counts.total),
        last_active_at=s.last_active_at,
        metadata=s.metadata,
        name=s.name,
        status="expired" if expired else "in_progress" if counts.in_progress else "completed",
        usage_bytes=usage,
        expires_after=s.expires_after,  # type: ignore[arg-type]
        expires_at=expires_at,
    ).model_dump()


def file_object(f: VSFileRecord, store: VectorStoreRecord) -> dict[str, Any]:
    return VectorStoreFile(
        id=f.file_id,
        created_at=f.created_at,
        last_error=LastError(**f.last_error) if f.last_error else None,  # type: ignore[arg-type]
        status=f.status,
        usage_bytes=f.usage_bytes,
        vector_store_id=f.vector_store_id,
        attributes=f.attributes,
        chunking_strategy=StaticFileChunkingStrategyObject(
            static=StaticFileChunkingStrategy(
                max_chunk_size_tokens=store.chunk_tokens, chunk_overlap_tokens=store.chunk_overlap
            )
        ),
    ).model_dump()


def _store(db: VectorStoreDB, project: str, store_id: str) -> VectorStoreRecord:
    store = db.get_store(project, store_id)
    if store is None:
        raise not_found("vector store", store_id, "vector_store_id")
    return store


def _attach(
    service: Service,
    db: VectorStoreDB,
    project: str,
    store: VectorStoreRecord,
    files: list[tuple[str, Attributes | None, ChunkingStrategyParam | None]],
    batch_id: str | None = None,
) -> list[VSFileRecord]:
    records = []
    for file_id, attributes, strategy in files:
        if strategy is not None and chunking(strategy) != (store.chunk_tokens, store.chunk_overlap):
            raise APIError(
                400,
                "Every file of a vector store is chunked alike in ragtune: set "
                "chunking_strategy when creating the vector store, not per file",
                "chunking_strategy",
            )
        upload = service.db.get_file(project, file_id)
        if upload is None:
            raise not_found("file", file_id, "file_id")
        records.append(
            VSFileRecord(
                vector_store_id=store.id,
                file_id=file_id,
                project=project,
                filename=upload.filename,
                object_key=upload.key,
                created_at=int(time.time()),
                status="in_progress",
                last_error=None,
                usage_bytes=0,
                attributes=attributes,
                batch_id=batch_id,
                doc_id=None,
            )
        )
    db.add_files(records)
    db.update_store(project, store.id, {"last_active_at": int(time.time())})
    return records


# --- stores ----------------------------------------------------------------------------------


@router.post("/vector_stores")
def create_vector_store(
    body: VectorStoreCreateParams, request: Request, service: ServiceDep, project: ProjectDep
) -> dict[str, Any]:
    db = vector_store_db(request)
    size, overlap = chunking(body.chunking_strategy)
    now = int(time.time())
    store = VectorStoreRecord(
        id=new_id("vs"),
        project=project,
        name=body.name or "",
        created_at=now,
        last_active_at=now,
        metadata=body.metadata,
        expires_after=body.expires_after.model_dump() if body.expires_after else None,
        chunk_tokens=size,
        chunk_overlap=overlap,
    )
    for file_id in body.file_ids:  # check them all before creating anything
        if service.db.get_file(project, file_id) is None:
            raise not_found("file", file_id, "file_ids")
    db.add_store(store)
    _attach(service, db, project, store, [(f, None, None) for f in body.file_ids])
    return store_object(db, store)


@router.get("/vector_stores")
def list_vector_stores(
    request: Request,
    project: ProjectDep,
    after: str | None = None,
    limit: int = Query(20, ge=1, le=100),
    order: Literal["asc", "desc"] = "desc",
) -> dict[str, Any]:
    db = vector_store_db(request)
    stores, more = db.list_stores(project, after, limit, order)
    return list_page([store_object(db, s) for s in stores], more)


@router.get("/vector_stores/{vector_store_id}")
def retrieve_vector_store(
    vector_store_id: str, request: Request, project: ProjectDep
) -> dict[str, Any]:
    db = vector_store_db(request)
    return store_object(db, _store(db, project, vector_store_id))


@router.post("/vector_stores/{vector_store_id}")
def update_vector_store(
    vector_store_id: str, body: VectorStoreUpdateParams, request: Request, project: ProjectDep
) -> dict[str, Any]:
    db = vector_store_db(request)
    _store(db, project, vector_store_id)
    values = {
        k: (v.model_dump() if k == "expires_after" and v is not None else v)
        for k, v in ((k, getattr(body, k)) for k in body.model_fields_set)
    }
    db.update_store(project, vector_store_id, values)
    return store_object(db, _store(db, project, vector_store_id))


@router.delete("/vector_stores/{vector_store_id}")
def delete_vector_store(
    vector_store_id: str, request: Request, project: ProjectDep
) -> dict[str, Any]:
    db = vector_store_db(request)
    store = _store(db, project, vector_store_id)
    if not db.delete_store(project, vector_store_id):
        raise not_found("vector store", vector_store_id, "vector_store_id")
    knowledge_bases(request).forget(store.kb_name)
    discard_knowledge_base(store.kb_name)
    return VectorStoreDeleted(id=vector_store_id, deleted=True).model_dump()


# --- files -----------------------------------------------------------------------------------


@router.post("/vector_stores/{vector_store_id}/files")
def create_vector_store_file(
    vector_store_id: str,
    body: FileCreateParams,
    request: Request,
    service: ServiceDep,
    project: ProjectDep,
) -> dict[str, Any]:
    db = vector_store_db(request)
    store = _store(db, project, vector_store_id)
    [record] = _attach(
        service, db, project, store, [(body.file_id, body.attributes, body.chunking_strategy)]
    )
    return file_object(record, store)


@router.get("/vector_stores/{vector_store_id}/files")
def list_vector_store_files(
    vector_store_id: str,
    request: Request,
    project: ProjectDep,
    after: str | None = None,
    limit: int = Query(20, ge=1, le=100),
    order: Literal["asc", "desc"] = "desc",
    filter: Literal["in_progress", "completed", "failed", "cancelled"] | None = None,
) -> dict[str, Any]:
    db = vector_store_db(request)
    store = _store(db, project, vector_store_id)
    files, more = db.list_files(project, store.id, after, limit, order, filter)
    return list_page([file_object(f, store) for f in files], more)


def _file(db: VectorStoreDB, project: str, store_id: str, file_id: str) -> VSFileRecord:
    record = db.get_file(project, store_id, file_id)
    if record is None:
        raise not_found("vector store file", file_id, "file_id")
    return record


@router.get("/vector_stores/{vector_store_id}/files/{file_id}")
def retrieve_vector_store_file(
    vector_store_id: str, file_id: str, request: Request, project: ProjectDep
) -> dict[str, Any]:
    db = vector_store_db(request)
    store = _store(db, project, vector_store_id)
    return file_object(_file(db, project, store.id, file_id), store)


@router.post("/vector_stores/{vector_store_id}/files/{file_id}")
def update_vector_store_file(
    vector_store_id: str,
    file_id: str,
    body: FileUpdateParams,
    request: Request,
    project: ProjectDep,
) -> dict[str, Any]:
    db = vector_store_db(request)
    store = _store(db, project, vector_store_id)
    if not db.update_attributes(project, store.id, file_id, body.attributes):
        raise not_found("vector store file", file_id, "file_id")
    return file_object(_file(db, project, store.id, file_id), store)


@router.delete("/vector_stores/{vector_store_id}/files/{file_id}")
def delete_vector_store_file(
    vector_store_id: str, file_id: str, request: Request, project: ProjectDep
) -> dict[str, Any]:
    db = vector_store_db(request)
    store = _store(db, project, vector_store_id)
    if not db.delete_file(project, store.id, file_id):
        raise not_found("vector store file", file_id, "file_id")
    return VectorStoreFileDeleted(id=file_id, deleted=True).model_dump()


# --- file batches ----------------------------------------------------------------------------


def batch_object(db: VectorStoreDB, b: BatchRecord) -> dict[str, Any]:
    counts, _ = db.file_counts(b.vector_store_id, b.id)
    status = (
        "cancelled"
        if b.cancelled and not counts.in_progress
        else "in_progress"
        if counts.in_progress
        else "failed"
        if counts.failed and not counts.completed
        else "completed"
    )
    return VectorStoreFileBatch(
        id=b.id,
        created_at=b.created_at,
        file_counts=FileCounts(**vars(counts), total=counts.total),
        status=status,  # type: ignore[arg-type]
        vector_store_id=b.vector_store_id,
    ).model_dump()


@router.post("/vector_stores/{vector_store_id}/file_batches")
def create_file_batch(
    vector_store_id: str,
    body: FileBatchCreateParams,
    request: Request,
    service: ServiceDep,
    project: ProjectDep,
) -> dict[str, Any]:
    db = vector_store_db(request)
    store = _store(db, project, vector_store_id)
    if body.file_ids and body.files:
        raise APIError(400, "Give file_ids or files, not both", "files")
    items = [(f, body.attributes, body.chunking_strategy) for f in body.file_ids or []] + [
        (f.file_id, f.attributes, f.chunking_strategy or body.chunking_strategy)
        for f in body.files or []
    ]
    if not items:
        raise APIError(400, "A file batch needs file_ids or files", "file_ids")
    batch = BatchRecord(new_id("vsfb"), store.id, project, int(time.time()), False)
    db.add_batch(batch)
    _attach(service, db, project, store, items, batch.id)
    return batch_object(db, batch)


def _batch(db: VectorStoreDB, project: str, store_id: str, batch_id: str) -> BatchRecord:
    batch = db.get_batch(project, store_id, batch_id)
    if batch is None:
        raise not_found("file batch", batch_id, "batch_id")
    return batch


@router.get("/vector_stores/{vector_store_id}/file_batches/{batch_id}")
def retrieve_file_batch(
    vector_store_id: str, batch_id: str, request: Request, project: ProjectDep
) -> dict[str, Any]:
    db = vector_store_db(request)
    return batch_object(db, _batch(db, project, vector_store_id, batch_id))


@router.post("/vector_stores/{vector_store_id}/file_batches/{batch_id}/cancel")
def cancel_file_batch(
    vector_store_id: str, batch_id: str, request: Request, project: ProjectDep
) -> dict[str, Any]:
    db = vector_store_db(request)
    _batch(db, project, vector_store_id, batch_id)
    db.cancel_batch(project, vector_store_id, batch_id)
    return batch_object(db, _batch(db, project, vector_store_id, batch_id))


@router.get("/vector_stores/{vector_store_id}/file_batches/{batch_id}/files")
def list_file_batch_files(
    vector_store_id: str,
    batch_id: str,
    request: Request,
    project: ProjectDep,
    after: str | None = None,
    limit: int = Query(20, ge=1, le=100),
    order: Literal["asc", "desc"] = "desc",
    filter: Literal["in_progress", "completed", "failed", "cancelled"] | None = None,
) -> dict[str, Any]:
    db = vector_store_db(request)
    store = _store(db, project, vector_store_id)
    _batch(db, project, store.id, batch_id)
    files, more = db.list_files(project, store.id, after, limit, order, filter, batch_id)
    return list_page([file_object(f, store) for f in files], more)


# --- search ----------------------------------------------------------------------------------


@router.post("/vector_stores/{vector_store_id}/search")
async def search_vector_store(
    vector_store_id: str,
    body: VectorStoreSearchParams,
    request: Request,
    service: ServiceDep,
    project: ProjectDep,
) -> dict[str, Any]:
    db = vector_store_db(request)
    store = _store(db, project, vector_store_id)
    queries = [body.query] if isinstance(body.query, str) else list(body.query)
    if not queries or not all(q.strip() for q in queries):
        raise APIError(400, "query must be a non-empty string or list of strings", "query")
    threshold = body.ranking_options.score_threshold if body.ranking_options else None
    hybrid = body.ranking_options.hybrid_search if body.ranking_options else None
    hits = await run_in_threadpool(
        store_hits,
        service,
        db,
        knowledge_bases(request),
        store,
        queries,
        body.max_num_results,
        body.filters,
        threshold,
        hybrid.text_weight if hybrid else None,
        hybrid.embedding_weight if hybrid else None,
    )
    return VectorStoreSearchPage(
        search_query=queries, data=[search_result(h) for h in hits]
    ).model_dump()


def store_hits(
    service: Service,
    db: VectorStoreDB,
    kbs: KnowledgeBases,
    store: VectorStoreRecord,
    queries: list[str],
    k: int,
    filters: Filters | None,
    score_threshold: float | None,
    bm25_weight: float | None = None,
    dense_weight: float | None = None,
) -> list[StoreHit]:
    """Search one store (also for the ``file_search`` tool of ``/v1/responses``)."""
    from ragtune.retrieve.dense import embed

    kb = kbs.get(store.kb_name)
    if kb is None:
        return []
    files = db.store_files(store.project, store.id, status="completed")
    vectors = list(embed(service.embedder(), queries))  # (Q, dim)
    hits = search_store(
        kb, files, queries, vectors, k, filters, score_threshold, bm25_weight, dense_weight
    )
    db.update_store(store.project, store.id, {"last_active_at": int(time.time())})
    return hits


def search_result(h: StoreHit) -> VectorStoreSearchResponse:
    return VectorStoreSearchResponse(
        attributes=h.file.attributes,
        content=[Content(text=h.chunk.text)],
        file_id=h.file.file_id,
        filename=h.file.filename,
        score=h.score,
    )
