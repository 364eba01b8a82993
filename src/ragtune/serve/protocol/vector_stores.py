"""openai/types/vector_store*.py, vector_stores/*.py, file_chunking_strategy*.py and
shared/comparison_filter.py, compound_filter.py."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

AttributeValue = str | float | bool
Attributes = dict[str, AttributeValue]


# --- filters (shared/comparison_filter.py, shared/compound_filter.py) -------------------


class ComparisonFilter(BaseModel):
    key: str
    type: Literal["eq", "ne", "gt", "gte", "lt", "lte", "in", "nin"]
    value: str | float | bool | list[str | float]


class CompoundFilter(BaseModel):
    filters: list[ComparisonFilter | CompoundFilter]
    type: Literal["and", "or"]


Filters = ComparisonFilter | CompoundFilter


# --- chunking ------------------------------------------------------------------------------


class StaticFileChunkingStrategy(BaseModel):
    chunk_overlap_tokens: int
    max_chunk_size_tokens: int = Field(ge=100, le=4096)


class StaticFileChunkingStrategyObject(BaseModel):
    static: StaticFileChunkingStrategy
    type: Literal["static"] = "static"


class AutoFileChunkingStrategyParam(BaseModel):
    type: Literal["auto"] = "auto"


ChunkingStrategyParam = AutoFileChunkingStrategyParam | StaticFileChunkingStrategyObject


class ExpiresAfter(BaseModel):
    anchor: Literal["last_active_at"]
    days: int = Field(ge=1, le=365)


# --- requests ------------------------------------------------------------------------------


class VectorStoreCreateParams(BaseModel):
    name: str | None = None
    description: str | None = None
    file_ids: list[str] = []
    chunking_strategy: ChunkingStrategyParam | None = Field(None, discriminator="type")
    metadata: dict[str, str] | None = None
    expires_after: ExpiresAfter | None = None


class VectorStoreUpdateParams(BaseModel):
    name: str | None = None
    metadata: dict[str, str] | None = None
    expires_after: ExpiresAfter | None = None


class FileCreateParams(BaseModel):
    file_id: str
    attributes: Attributes | None = None
    chunking_strategy: ChunkingStrategyParam | None = Field(None, discriminator="type")


class BatchFile(BaseModel):
    file_id: str
    attributes: Attributes | None = None
    chunking_strategy: ChunkingStrategyParam | None = Field(None, discriminator="type")


class FileBatchCreateParams(BaseModel):
    file_ids: list[str] | None = None
    files: list[BatchFile] | None = None
    attributes: Attributes | None = None
    chunking_strategy: ChunkingStrategyParam | None = Field(None, discriminator="type")


class FileUpdateParams(BaseModel):
    attributes: Attributes | None


class HybridSearch(BaseModel):
    """The Responses API's ``ranking_options.hybrid_search``, accepted by search too."""

    embedding_weight: float = Field(ge=0.0)
    text_weight: float = Field(ge=0.0)


class RankingOptions(BaseModel):
    ranker: Literal["none", "auto", "default-2024-11-15"] | None = None
    score_threshold: float | None = Field(None, ge=0.0, le=1.0)
    hybrid_search: HybridSearch | None = None  # ragtune extension on search


class VectorStoreSearchParams(BaseModel):
    query: str | list[str]
    filters: Filters | None = None
    max_num_results: int = Field(10, ge=1, le=50)
    ranking_options: RankingOptions | None = None
    rewrite_query: bool | None = None


# --- responses -----------------------------------------------------------------------------


class FileCounts(BaseModel):
    cancelled: int
    completed: int
    failed: int
    in_progress: int
    total: int


class VectorStore(BaseModel):
    id: str
    created_at: int
    file_counts: FileCounts
    last_active_at: int | None = None
    metadata: dict[str, str] | None = None
    name: str
    object: Literal["vector_store"] = "vector_store"
    status: Literal["expired", "in_progress", "completed"]
    usage_bytes: int
    expires_after: ExpiresAfter | None = None
    expires_at: int | None = None


class VectorStoreDeleted(BaseModel):
    id: str
    deleted: bool
    object: Literal["vector_store.deleted"] = "vector_store.deleted"


class LastError(BaseModel):
    code: Literal["server_error", "unsupported_file", "invalid_file"]
    message: str


class VectorStoreFile(BaseModel):
    id: str
    created_at: int
    last_error: LastError | None = None
    object: Literal["vector_store.file"] = "vector_store.file"
    status: Literal["in_progress", "completed", "cancelled", "failed"]
    usage_bytes: int
    vector_store_id: str
    attributes: Attributes | None = None
    chunking_strategy: StaticFileChunkingStrategyObject | None = None


class VectorStoreFileDeleted(BaseModel):
    id: str
    deleted: bool
    object: Literal["vector_store.file.deleted"] = "vector_store.file.deleted"


class VectorStoreFileBatch(BaseModel):
    id: str
    created_at: int
    file_counts: FileCounts
    object: Literal["vector_store.files_batch"] = "vector_store.files_batch"
    status: Literal["in_progress", "completed", "cancelled", "failed"]
    vector_store_id: str


class Content(BaseModel):
    text: str
    type: Literal["text"] = "text"


class VectorStoreSearchResponse(BaseModel):
    attributes: Attributes | None = None
    content: list[Content]
    file_id: str
    filename: str
    score: float


class VectorStoreSearchPage(BaseModel):
    """The page ``vector_stores.search`` returns (the SDK's ``SyncPage``)."""

    object: Literal["vector_store.search_results.page"] = "vector_store.search_results.page"
    search_query: list[str]
    data: list[VectorStoreSearchResponse]
    has_more: bool = False
    next_page: str | None = None
