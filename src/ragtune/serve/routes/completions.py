"""/v1/completions: plain text continuation (the base model is a pretrained model)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from ragtune.serve.engine import Completion as EngineCompletion
from ragtune.serve.engine import RequestHandle
from ragtune.serve.errors import APIError
from ragtune.serve.protocol.chat import CompletionUsage
from ragtune.serve.protocol.completions import Completion, CompletionRequest, Logprobs
from ragtune.serve.routes.chat import choice_count, nth_choice, sampling, sse
from ragtune.serve.routes.models import resolve_model
from ragtune.serve.state import ProjectDep, ServiceDep

router = APIRouter(tags=["completions"])


def _logprobs(r: EngineCompletion, offset: int) -> Logprobs:
    deltas = r.token_logprobs or []
    offsets, pos = [], offset
    for d in deltas:
        offsets.append(pos)
        pos += len(d.token)
    return Logprobs(
        tokens=[d.token for d in deltas],
        token_logprobs=[d.logprob or 0.0 for d in deltas],
        top_logprobs=[dict(d.top) for d in deltas],
        text_offset=offsets,
    )


@router.post("/completions", response_model=None)
def create_completion(
    body: CompletionRequest, service: ServiceDep, project: ProjectDep
) -> dict[str, Any] | StreamingResponse:
    name = resolve_model(service, project, body.model)
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if not prompts:
        raise APIError(400, "prompt must not be empty", "prompt")
    n = choice_count(body.n)
    params = sampling(
        body.temperature,
        body.top_p,
        body.seed,
        body.max_tokens or 16,
        body.stop,
        body.logprobs is not None,
        body.logprobs or 0,
    )
    ident, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(
            # Submitted before the response starts, so a prompt that is too long is a 400.
            _stream(
                [
                    service.engine.submit(prompt, nth_choice(params, i), name)
                    for prompt in prompts
                    for i in range(n)
                ],
                sum(service.engine.count_tokens(p) for p in prompts),
                body.model,
                ident,
                created,
                include_usage,
            ),
            media_type="text/event-stream",
        )
    choices = []
    results = service.engine.complete(
        [(prompt, nth_choice(params, i)) for prompt in prompts for i in range(n)], name
    )
    for p_i, prompt in enumerate(prompts):
        for i in range(n):
            r = results[p_i * n + i]
            head = prompt if body.echo else ""
            choices.append(
                {
                    "index": p_i * n + i,
                    "text": head + r.text,
                    "finish_reason": r.finish_reason,
                    "logprobs": _logprobs(r, len(head)) if params.logprobs else None,
                }
            )
    prompt_tokens = sum(service.engine.count_tokens(p) for p in prompts)
    completion_tokens = sum(r.completion_tokens for r in results)
    return Completion(
        id=ident,
        created=created,
        model=body.model,
        choices=choices,  # type: ignore[arg-type]
        usage=CompletionUsage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        ),
    ).model_dump()


def _stream(
    handles: list[RequestHandle],
    prompt_tokens: int,
    model: str,
    ident: str,
    created: int,
    include_usage: bool,
) -> Iterator[str]:
    completion_tokens = 0

    def chunk(choices: list[dict[str, Any]], usage: CompletionUsage | None = None) -> str:
        body: dict[str, Any] = {
            "id": ident,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": choices,
        }
        if usage is not None:
            body["usage"] = usage.model_dump()
        return sse(body)

    def choice(index: int, text: str, finish: str | None) -> dict[str, Any]:
        return {"index": index, "text": text, "finish_reason": finish, "logprobs": None}

    try:
        for index, handle in enumerate(handles):
            for d in handle:
                if d.text:
                    yield chunk([choice(index, d.text, None)])
            r = handle.result()
            completion_tokens += r.completion_tokens
            yield chunk([choice(index, "", r.finish_reason)])
    finally:  # the client went away: free the slots
        for handle in handles:
            handle.cancel()
    if include_usage:
        yield chunk(
            [],
            CompletionUsage(
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                total_tokens=prompt_tokens + completion_tokens,
            ),
        )
    yield "data: [DONE]\n\n"
