"""/v1/chat/completions: base, fine-tuned or checkpoint models; streaming and not.

The conversation is laid out exactly as ``ragtune tune`` laid out its training data
(:func:`ragtune.generate.prompts.chat_prompt`), so a fine-tuned model is asked the way it
was taught."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from ragtune.generate.prompts import STOP_STRINGS, chat_prompt, has_chat_template
from ragtune.serve.engine import Completion, RequestHandle, SamplingParams, TokenDelta
from ragtune.serve.errors import APIError
from ragtune.serve.protocol.chat import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionTokenLogprob,
    ChoiceLogprobs,
    CompletionUsage,
    TopLogprob,
)
from ragtune.serve.routes.models import resolve_model
from ragtune.serve.state import ProjectDep, ServiceDep
from ragtune.types import Message

router = APIRouter(tags=["chat"])
DEFAULT_MAX_TOKENS = 256
MAX_N = 8
MAX_TOP_LOGPROBS = 20


def sampling(
    temperature: float | None,
    top_p: float | None,
    seed: int | None,
    max_tokens: int,
    stop: str | list[str] | None,
    logprobs: bool,
    top_logprobs: int,
    extra_stop: tuple[str, ...] = (),
) -> SamplingParams:
    """Request fields as sampling parameters (OpenAI's defaults: temperature 1, top_p 1)."""
    if max_tokens < 1:
        raise APIError(400, "max_tokens must be at least 1", "max_tokens", "invalid_value")
    t = 1.0 if temperature is None else temperature
    p = 1.0 if top_p is None else top_p
    if not 0 <= t <= 2:
        raise APIError(400, "temperature must be between 0 and 2", "temperature", "invalid_value")
    if not 0 < p <= 1:
        raise APIError(400, "top_p must be in (0, 1]", "top_p", "invalid_value")
    if not 0 <= top_logprobs <= MAX_TOP_LOGPROBS:
        raise APIError(
            400, f"top_logprobs must be 0-{MAX_TOP_LOGPROBS}", "top_logprobs", "invalid_value"
        )
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > 4:
        raise APIError(400, "stop takes at most 4 sequences", "stop", "invalid_value")
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=t,
        top_p=p,
        seed=seed,
        stop=tuple(stops) + extra_stop,
        logprobs=logprobs,
        top_logprobs=top_logprobs,
    )


def choice_count(n: int | None) -> int:
    n = 1 if n is None else n
    if not 1 <= n <= MAX_N:
        raise APIError(400, f"n must be between 1 and {MAX_N}", "n", "invalid_value")
    return n


def _messages(body: ChatCompletionRequest) -> list[Message]:
    if body.tools or body.functions:
        raise APIError(
            400,
            "Tools and functions are not supported by this server",
            "tools",
            "unsupported_parameter",
        )
    out = []
    for i, m in enumerate(body.messages):
        if m.role in ("tool", "function"):
            raise APIError(
                400, f"Messages with role {m.role!r} are not supported", f"messages.[{i}].role"
            )
        content = m.content
        if isinstance(content, list):
            if any(p.get("type") != "text" for p in content):
                raise APIError(
                    400, "Only text content parts are supported", f"messages.[{i}].content"
                )
            content = "".join(str(p.get("text", "")) for p in content)
        role = "system" if m.role == "developer" else m.role
        out.append(Message(role, content or ""))  # type: ignore[arg-type]
    if not out:
        raise APIError(400, "messages must not be empty", "messages")
    return out


def token_logprobs(deltas: list[TokenDelta]) -> ChoiceLogprobs:
    return ChoiceLogprobs(
        content=[
            ChatCompletionTokenLogprob(
                token=d.token,
                bytes=list(d.token.encode()),
                logprob=d.logprob if d.logprob is not None else 0.0,
                top_logprobs=[
                    TopLogprob(token=t, bytes=list(t.encode()), logprob=lp) for t, lp in d.top
                ],
            )
            for d in deltas
        ]
    )


@router.post("/chat/completions", response_model=None)
def create_chat_completion(
    body: ChatCompletionRequest, service: ServiceDep, project: ProjectDep
) -> dict[str, Any] | StreamingResponse:
    name = resolve_model(service, project, body.model)
    messages = _messages(body)
    tokenizer = service.engine.tokenizer
    prompt = chat_prompt(messages, tokenizer)
    params = sampling(
        body.temperature,
        body.top_p,
        body.seed,
        body.max_completion_tokens or body.max_tokens or DEFAULT_MAX_TOKENS,
        body.stop,
        bool(body.logprobs),
        body.top_logprobs or 0,
        () if has_chat_template(tokenizer) else STOP_STRINGS,
    )
    n = choice_count(body.n)
    ident, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(
            # Submitted before the response starts, so a prompt that is too long is a 400.
            _stream(
                [service.engine.submit(prompt, nth_choice(params, i), name) for i in range(n)],
                params.logprobs,
                body.model,
                ident,
                created,
                include_usage,
            ),
            media_type="text/event-stream",
        )
    results = service.engine.complete([(prompt, nth_choice(params, i)) for i in range(n)], name)
    return ChatCompletion(
        id=ident,
        created=created,
        model=body.model,
        choices=[
            {  # type: ignore[misc]
                "index": i,
                "finish_reason": r.finish_reason,
                "message": {"role": "assistant", "content": r.text.strip()},
                "logprobs": token_logprobs(r.token_logprobs)
                if r.token_logprobs is not None
                else None,
            }
            for i, r in enumerate(results)
        ],
        usage=_usage(results),
    ).model_dump()


def nth_choice(params: SamplingParams, i: int) -> SamplingParams:
    """Choice ``i`` of ``n``: a different seed per choice, reproducible when one is given."""
    if i == 0 or params.seed is None:
        return params
    from dataclasses import replace

    return replace(params, seed=params.seed + i)


def _usage(results: list[Completion]) -> CompletionUsage:
    prompt = results[0].prompt_tokens if results else 0
    completion = sum(r.completion_tokens for r in results)
    return CompletionUsage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )


def sse(obj: Any) -> str:
    return f"data: {json.dumps(obj)}\n\n"


def _stream(
    handles: list[RequestHandle],
    logprobs: bool,
    model: str,
    ident: str,
    created: int,
    include_usage: bool,
) -> Iterator[str]:
    results: list[Completion] = []

    def chunk(choices: list[dict[str, Any]], usage: CompletionUsage | None = None) -> str:
        c = ChatCompletionChunk.model_validate(
            {"id": ident, "created": created, "model": model, "choices": choices, "usage": usage}
        )
        return sse(c.model_dump(exclude_none=not include_usage))

    try:
        for i, handle in enumerate(handles):
            yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}}])
            started = False
            for d in handle:
                text = d.text if started else d.text.lstrip()
                started = started or bool(text)
                if text or d.logprob is not None:
                    lp = token_logprobs([d]) if logprobs and d.token_id >= 0 else None
                    yield chunk([{"index": i, "delta": {"content": text}, "logprobs": lp}])
            result = handle.result()
            results.append(result)
            yield chunk([{"index": i, "delta": {}, "finish_reason": result.finish_reason}])
    finally:  # the client went away: free the slots
        for handle in handles:
            handle.cancel()
    if include_usage:
        yield chunk([], _usage(results))
    yield "data: [DONE]\n\n"
