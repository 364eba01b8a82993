"""openai/types/embedding_create_params.py, create_embedding_response.py, embedding.py."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class EmbeddingCreateParams(BaseModel):
    model_config = ConfigDict(extra="ignore")
    input: str | list[str] | list[int] | list[list[int]]
    model: str
    dimensions: int | None = None
    encoding_format: Literal["float", "base64"] = "float"


class Embedding(BaseModel):
    embedding: list[float] | str  # a base64 string of float32 when encoding_format="base64"
    index: int
    object: Literal["embedding"] = "embedding"


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class CreateEmbeddingResponse(BaseModel):
    data: list[Embedding]
    model: str
    object: Literal["list"] = "list"
    usage: Usage
