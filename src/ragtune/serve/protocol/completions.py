"""openai/types/completion_create_params.py, completion.py, completion_choice.py."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from ragtune.serve.protocol.chat import CompletionUsage, StreamOptions


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    prompt: str | list[str]
    max_tokens: int | None = 16
    n: int | None = 1
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    logprobs: int | None = None
    echo: bool | None = False


class Logprobs(BaseModel):
    text_offset: list[int] | None = None
    token_logprobs: list[float] | None = None
    tokens: list[str] | None = None
    top_logprobs: list[dict[str, float]] | None = None


class CompletionChoice(BaseModel):
    finish_reason: Literal["stop", "length", "content_filter"] | None
    index: int
    logprobs: Logprobs | None = None
    text: str


class Completion(BaseModel):
    id: str
    choices: list[CompletionChoice]
    created: int
    model: str
    object: Literal["text_completion"] = "text_completion"
    system_fingerprint: str | None = None
    usage: CompletionUsage | None = None
