"""openai/types/responses/: response_create_params.py, response.py, file_search_tool.py,
response_file_search_tool_call.py, response_output_message.py, response_output_text.py,
response_usage.py (the parts this server produces)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ragtune.serve.protocol.vector_stores import Attributes, Filters


class HybridSearch(BaseModel):
    embedding_weight: float = Field(ge=0.0)
    text_weight: float = Field(ge=0.0)


class FileSearchRankingOptions(BaseModel):
    hybrid_search: HybridSearch | None = None
    ranker: Literal["auto", "default-2024-11-15"] | None = None
    score_threshold: float | None = Field(None, ge=0.0, le=1.0)


class FileSearchTool(BaseModel):
    type: Literal["file_search"] = "file_search"
    vector_store_ids: list[str]
    filters: Filters | None = None
    max_num_results: int | None = Field(None, ge=1, le=50)
    ranking_options: FileSearchRankingOptions | None = None


class ResponseCreateParams(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    tools: list[dict[str, Any]] = []
    tool_choice: Any = None
    include: list[str] | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = None
    top_p: float | None = None
    previous_response_id: str | None = None
    store: bool | None = True
    stream: bool | None = False
    metadata: dict[str, str] | None = None
    parallel_tool_calls: bool | None = None


class FileSearchResult(BaseModel):
    attributes: Attributes | None = None
    file_id: str | None = None
    filename: str | None = None
    score: float | None = None
    text: str | None = None


class ResponseFileSearchToolCall(BaseModel):
    id: str
    queries: list[str]
    status: Literal["in_progress", "searching", "completed", "incomplete", "failed"]
    type: Literal["file_search_call"] = "file_search_call"
    results: list[FileSearchResult] | None = None


class AnnotationFileCitation(BaseModel):
    file_id: str
    filename: str
    index: int
    type: Literal["file_citation"] = "file_citation"


class ResponseOutputText(BaseModel):
    annotations: list[AnnotationFileCitation]
    text: str
    type: Literal["output_text"] = "output_text"
    logprobs: list[Any] = []


class ResponseOutputMessage(BaseModel):
    id: str
    content: list[ResponseOutputText]
    role: Literal["assistant"] = "assistant"
    status: Literal["in_progress", "completed", "incomplete"]
    type: Literal["message"] = "message"


class InputTokensDetails(BaseModel):
    cache_write_tokens: int = 0
    cached_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails = InputTokensDetails()
    output_tokens: int
    output_tokens_details: OutputTokensDetails = OutputTokensDetails()
    total_tokens: int


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens"] | None = None


class Response(BaseModel):
    id: str
    created_at: float
    completed_at: float | None = None
    error: Any = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    metadata: dict[str, str] | None = None
    model: str
    object: Literal["response"] = "response"
    output: list[ResponseFileSearchToolCall | ResponseOutputMessage]
    parallel_tool_calls: bool = True
    temperature: float | None = None
    tool_choice: Any = "auto"
    tools: list[FileSearchTool]
    top_p: float | None = None
    max_output_tokens: int | None = None
    previous_response_id: str | None = None
    status: Literal["completed", "failed", "in_progress", "incomplete"]
    usage: ResponseUsage | None = None
    store: bool | None = None


class ResponseDeleted(BaseModel):
    """What ``DELETE /v1/responses/{id}`` returns (the SDK ignores the body)."""

    id: str
    deleted: bool
    object: Literal["response.deleted"] = "response.deleted"
