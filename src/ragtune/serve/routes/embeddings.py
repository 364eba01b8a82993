"""/v1/embeddings: the embedder, as ``float`` lists or the SDK's default ``base64``
(little-endian float32 bytes)."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
from fastapi import APIRouter

from ragtune.serve.errors import APIError
from ragtune.serve.protocol.embeddings import CreateEmbeddingResponse, EmbeddingCreateParams
from ragtune.serve.routes.models import embedder_id
from ragtune.serve.state import ProjectDep, ServiceDep

router = APIRouter(tags=["embeddings"])
MAX_INPUTS = 2048


@router.post("/embeddings")
def create_embeddings(
    body: EmbeddingCreateParams, service: ServiceDep, project: ProjectDep
) -> dict[str, Any]:
    if body.model not in (embedder_id(service), "default"):
        raise APIError(
            404,
            f"The model '{body.model}' does not exist; use '{embedder_id(service)}'",
            "model",
            "model_not_found",
        )
    texts = [body.input] if isinstance(body.input, str) else body.input
    if not texts or not all(isinstance(t, str) for t in texts):
        raise APIError(400, "input must be a non-empty string or list of strings", "input")
    if len(texts) > MAX_INPUTS:
        raise APIError(400, f"input takes at most {MAX_INPUTS} strings", "input")
    embedder = service.embedder()
    if body.dimensions is not None and body.dimensions != embedder.dim:
        raise APIError(400, f"This model has {embedder.dim} dimensions only", "dimensions")
    vectors = np.asarray(embedder.embed_batch(list(texts)), dtype="<f4")  # (N, D)
    tokens = sum(len(ids) for ids in embedder.tokenizer(list(texts), truncation=True)["input_ids"])
    data = [
        {
            "index": i,
            "object": "embedding",
            "embedding": base64.b64encode(v.tobytes()).decode()
            if body.encoding_format == "base64"
            else v.tolist(),
        }
        for i, v in enumerate(vectors)
    ]
    return CreateEmbeddingResponse(
        data=data,  # type: ignore[arg-type]
        model=body.model,
        usage={"prompt_tokens": tokens, "total_tokens": tokens},  # type: ignore[arg-type]
    ).model_dump()
