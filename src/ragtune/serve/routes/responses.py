"""/v1/responses: any model (base, fine-tuned, checkpoint), with the ``file_search`` tool.

With ``file_search``, the question is searched in the given vector stores (ragtune's hybrid
retrieval), the hits are numbered into ragtune's RAG prompt, and the answer's sources are
checked with :func:`ragtune.generate.answer.cite`: a source the model cited as ``[n]`` is kept
only if it supports the answer, else the answer is attributed to the source holding most of
its words. The kept sources become ``file_citation`` annotations, one per file, and the
``[n]`` markers are taken out of the text. Responses are stored per project;
``previous_response_id`` continues the stored conversation (``instructions`` are not carried
over, as in OpenAI's API).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import ValidationError

from ragtune.errors import RagtuneError
from ragtune.generate.answer import cite
from ragtune.generate.prompts import (
    RAG_FEWSHOT,
    RAG_INSTRUCTION,
    STOP_STRINGS,
    chat_prompt,
    has_chat_template,
    pack_sources,
    rag_messages,
)
from ragtune.jobs.responses import ResponseDB
from ragtune.serve.engine import Completion, RequestHandle
from ragtune.serve.errors import APIError, not_found
from ragtune.serve.protocol.responses import (
    AnnotationFileCitation,
    FileSearchResult,
    FileSearchTool,
    IncompleteDetails,
    Response,
    ResponseCreateParams,
    ResponseDeleted,
    ResponseFileSearchToolCall,
    ResponseOutputMessage,
    ResponseOutputText,
    ResponseUsage,
)
from ragtune.serve.routes.chat import sampling
from ragtune.serve.routes.models import resolve_model
from ragtune.serve.routes.vector_stores import knowledge_bases, store_hits, vector_store_db
from ragtune.serve.state import ProjectDep, Service, ServiceDep
from ragtune.serve.vector_search import StoreHit
from ragtune.types import Hit, Message

router = APIRouter(tags=["responses"])
DEFAULT_MAX_OUTPUT_TOKENS = 256
DEFAULT_MAX_RESULTS = 10
CONTEXT_TOKENS = 1024  # of numbered sources in the prompt
INCLUDE_RESULTS = "file_search_call.results"


def response_db(request: Request) -> ResponseDB:
    state = request.app.state
    if getattr(state, "response_db", None) is None:
        state.response_db = ResponseDB(state.service.settings.database)
    db: ResponseDB = state.response_db
    return db


# --- the stream filter that takes source markers out of the answer ----------------------------

_PARTIAL_MARKER = re.compile(r"\[\d{0,3}$")
_MARKER = re.compile(r"\[\d{1,3}\]")


@dataclass
class MarkerFilter:
    """Text in, text out without ``[n]`` markers, leading or trailing whitespace.

    What might still become a marker (``"[1"``) or trailing whitespace is held back until the
    next piece decides it, so streamed deltas add up to exactly the final text."""

    started: bool = False
    held: str = ""
    out: list[str] = field(default_factory=list)

    def feed(self, text: str) -> str:
        buf = self.held + text
        while True:  # drop complete markers, and the whitespace in front of each
            m = _MARKER.search(buf)
            if m is None:
                break
            buf = buf[: m.start()].rstrip() + buf[m.end() :]
        partial = _PARTIAL_MARKER.search(buf)
        cut = partial.start() if partial else len(buf)
        stable, self.held = buf[:cut], buf[cut:]
        trimmed = stable.rstrip()
        self.held = stable[len(trimmed) :] + self.held
        stable = trimmed
        if not self.started:
            stable = stable.lstrip()
            self.started = bool(stable)
        self.out.append(stable)
        return stable

    def text(self) -> str:
        return "".join(self.out)


# --- building a turn -----------------------------------------------------------------------------


def _tool(tools: list[dict[str, Any]]) -> FileSearchTool | None:
    found = None
    for i, spec in enumerate(tools):
        if spec.get("type") != "file_search":
            raise APIError(
                400,
                f"Tool type {spec.get('type')!r} is not supported; this server supports "
                "'file_search'",
                f"tools[{i}].type",
                "unsupported_parameter",
            )
        if found is not None:
            raise APIError(400, "Give at most one file_search tool", f"tools[{i}]")
        try:
            found = FileSearchTool.model_validate(spec)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise APIError(400, f"{first['msg']}: tools[{i}].{where}", f"tools[{i}]") from None
    return found


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") not in (
                "input_text",
                "output_text",
            ):
                raise APIError(400, "Only text content parts are supported", where)
            parts.append(str(part.get("text", "")))
        return "".join(parts)
    raise APIError(400, "content must be a string or a list of text parts", where)


def input_messages(value: str | list[dict[str, Any]]) -> list[Message]:
    """``input`` as messages: a string is one user message; items are messages."""
    if isinstance(value, str):
        return [Message("user", value)]
    out = []
    for i, item in enumerate(value):
        kind = item.get("type", "message")
        role = item.get("role")
        if kind != "message" or role not in ("user", "assistant", "system", "developer"):
            raise APIError(
                400,
                "Only message input items (role user, assistant, system or developer) "
                "are supported",
                f"input[{i}]",
            )
        text = _text(item.get("content"), f"input[{i}].content")
        out.append(Message("system" if role == "developer" else role, text))
    if not out:
        raise APIError(400, "input must not be empty", "input")
    return out


@dataclass
class Turn:
    ident: str
    created: int
    body: ResponseCreateParams
    tool: FileSearchTool | None
    queries: list[str]
    hits: list[StoreHit]
    used: list[Hit]  # the hits in the prompt, numbered 1..n
    history: list[dict[str, str]]  # the conversation so far, this input included
    handle: RequestHandle


def _search(
    request: Request, service: Service, project: str, tool: FileSearchTool, question: str
) -> list[StoreHit]:
    db = vector_store_db(request)
    stores = []
    for i, store_id in enumerate(tool.vector_store_ids):
        store = db.get_store(project, store_id)
        if store is None:
            raise not_found("vector store", store_id, f"tools.vector_store_ids[{i}]")
        stores.append(store)
    k = tool.max_num_results or DEFAULT_MAX_RESULTS
    ranking = tool.ranking_options
    weights = ranking.hybrid_search if ranking else None
    hits: list[StoreHit] = []
    for store in stores:
        hits += store_hits(
            service,
            db,
            knowledge_bases(request),
            store,
            [question],
            k,
            tool.filters,
            ranking.score_threshold if ranking else None,
            weights.text_weight if weights else None,
            weights.embedding_weight if weights else None,
        )
    return sorted(hits, key=lambda h: -h.score)[:k]


def prepare(body: ResponseCreateParams, request: Request, service: Service, project: str) -> Turn:
    """Check the request, search, build the prompt and queue it: every error is raised here,
    before a stream starts."""
    name = resolve_model(service, project, body.model)
    tool = _tool(body.tools)
    history: list[dict[str, str]] = []
    if body.previous_response_id:
        found = response_db(request).get(project, body.previous_response_id)
        if found is None:
            raise not_found("response", body.previous_response_id, "previous_response_id")
        history = found[1]
    turn = input_messages(body.input)
    earlier = [Message(m["role"], m["content"]) for m in history]  # type: ignore[arg-type]
    tokenizer = service.engine.tokenizer
    queries: list[str] = []
    hits: list[StoreHit] = []
    used: list[Hit] = []
    if tool is None:
        system = [Message("system", body.instructions)] if body.instructions else []
        prompt = chat_prompt([*system, *earlier, *turn], tokenizer)
    else:
        if turn[-1].role != "user" or not turn[-1].content.strip():
            raise APIError(400, "file_search needs the input to end with a user question", "input")
        question = turn[-1].content
        queries = [question]
        hits = _search(request, service, project, tool, question)
        ranked = [Hit(h.chunk, h.score, i + 1) for i, h in enumerate(hits)]
        packed = pack_sources(ranked, service.engine.count_tokens, CONTEXT_TOKENS)
        used = [h for h, _ in packed]
        instruction = f"{body.instructions}\n\n{RAG_INSTRUCTION}" if body.instructions else None
        messages = rag_messages(
            question, [block for _, block in packed], instruction or RAG_INSTRUCTION
        )
        shots = [m for q, a in RAG_FEWSHOT for m in (Message("user", q), Message("assistant", a))]
        prompt = chat_prompt([messages[0], *shots, *earlier, *turn[:-1], messages[1]], tokenizer)
    params = sampling(
        body.temperature,
        body.top_p,
        None,
        body.max_output_tokens or DEFAULT_MAX_OUTPUT_TOKENS,
        None,
        False,
        0,
        () if has_chat_template(tokenizer) else STOP_STRINGS,
    )
    try:
        handle = service.engine.submit(prompt, params, name)
    except RagtuneError as e:
        raise APIError(400, e.message, "input", "context_length_exceeded") from None
    return Turn(
        ident=f"resp_{uuid.uuid4().hex}",
        created=int(time.time()),
        body=body,
        tool=tool,
        queries=queries,
        hits=hits,
        used=used,
        history=[*history, *({"role": m.role, "content": m.content} for m in turn)],
        handle=handle,
    )


# --- running a turn as events --------------------------------------------------------------------


def _response(
    turn: Turn,
    output: list[ResponseFileSearchToolCall | ResponseOutputMessage],
    status: str,
    result: Completion | None = None,
) -> dict[str, Any]:
    b = turn.body
    incomplete = result is not None and result.finish_reason == "length" and b.max_output_tokens
    return Response(
        id=turn.ident,
        created_at=turn.created,
        completed_at=time.time() if result is not None else None,
        incomplete_details=IncompleteDetails(reason="max_output_tokens") if incomplete else None,
        instructions=b.instructions,
        metadata=b.metadata,
        model=b.model,
        output=output,
        temperature=b.temperature,
        tools=[turn.tool] if turn.tool else [],
        top_p=b.top_p,
        max_output_tokens=b.max_output_tokens,
        previous_response_id=b.previous_response_id,
        status="incomplete" if incomplete else status,  # type: ignore[arg-type]
        usage=ResponseUsage(
            input_tokens=result.prompt_tokens,
            output_tokens=result.completion_tokens,
            total_tokens=result.prompt_tokens + result.completion_tokens,
        )
        if result is not None
        else None,
        store=b.store,
    ).model_dump()


def file_citations(answer: str, turn: Turn, at: int) -> list[AnnotationFileCitation]:
    """One ``file_citation`` per file whose chunk ``cite`` kept, in citation order."""
    if not turn.used:
        return []
    files = {h.chunk.chunk_id: h.file for h in turn.hits}
    out: list[AnnotationFileCitation] = []
    for c in cite(answer, turn.used):
        f = files[c.chunk_id]
        if all(a.file_id != f.file_id for a in out):
            out.append(AnnotationFileCitation(file_id=f.file_id, filename=f.filename, index=at))
    return out


def events(turn: Turn) -> Iterator[dict[str, Any]]:
    """The turn as the Responses API's stream events; the last is ``response.completed``."""
    seq = 0

    def event(kind: str, **fields: Any) -> dict[str, Any]:
        nonlocal seq
        seq += 1
        return {"type": kind, "sequence_number": seq - 1, **fields}

    output: list[ResponseFileSearchToolCall | ResponseOutputMessage] = []
    yield event("response.created", response=_response(turn, [], "in_progress"))
    yield event("response.in_progress", response=_response(turn, [], "in_progress"))
    if turn.tool is not None:
        call = ResponseFileSearchToolCall(
            id=f"fs_{uuid.uuid4().hex}", queries=turn.queries, status="in_progress"
        )
        at = {"item_id": call.id, "output_index": 0}
        yield event("response.output_item.added", item=call.model_dump(), output_index=0)
        yield event("response.file_search_call.in_progress", **at)
        yield event("response.file_search_call.searching", **at)
        call.status = "completed"
        if INCLUDE_RESULTS in (turn.body.include or []):
            call.results = [
                FileSearchResult(
                    attributes=h.file.attributes,
                    file_id=h.file.file_id,
                    filename=h.file.filename,
                    score=h.score,
                    text=h.chunk.text,
                )
                for h in turn.hits
            ]
        yield event("response.file_search_call.completed", **at)
        yield event("response.output_item.done", item=call.model_dump(), output_index=0)
        output.append(call)
    index = len(output)
    msg_id = f"msg_{uuid.uuid4().hex}"
    at = {"item_id": msg_id, "output_index": index}
    message = ResponseOutputMessage(id=msg_id, content=[], status="in_progress")
    yield event("response.output_item.added", item=message.model_dump(), output_index=index)
    empty = ResponseOutputText(annotations=[], text="")
    yield event("response.content_part.added", **at, content_index=0, part=empty.model_dump())
    cleaner = MarkerFilter()
    raw: list[str] = []
    for delta in turn.handle:
        raw.append(delta.text)
        piece = cleaner.feed(delta.text) if turn.tool else _plain(cleaner, delta.text)
        if piece:
            yield event(
                "response.output_text.delta", **at, content_index=0, delta=piece, logprobs=[]
            )
    result = turn.handle.result()
    text = cleaner.text()
    notes = file_citations("".join(raw), turn, len(text)) if turn.tool else []
    for i, note in enumerate(notes):
        yield event(
            "response.output_text.annotation.added",
            **at,
            content_index=0,
            annotation_index=i,
            annotation=note.model_dump(),
        )
    yield event("response.output_text.done", **at, content_index=0, text=text, logprobs=[])
    part = ResponseOutputText(annotations=notes, text=text)
    yield event("response.content_part.done", **at, content_index=0, part=part.model_dump())
    message.content, message.status = [part], "completed"
    yield event("response.output_item.done", item=message.model_dump(), output_index=index)
    output.append(message)
    yield event("response.completed", response=_response(turn, output, "completed", result))


def _plain(cleaner: MarkerFilter, text: str) -> str:
    """Without file_search the text is kept as generated, only trimmed at both ends."""
    buf = cleaner.held + text
    trimmed = buf.rstrip()
    cleaner.held = buf[len(trimmed) :]
    if not cleaner.started:
        trimmed = trimmed.lstrip()
        cleaner.started = bool(trimmed)
    cleaner.out.append(trimmed)
    return trimmed


def _store(request: Request, project: str, turn: Turn, response: dict[str, Any]) -> None:
    if turn.body.store is False:
        return
    text = "".join(
        part["text"]
        for item in response["output"]
        if item["type"] == "message"
        for part in item["content"]
    )
    conversation = [*turn.history, {"role": "assistant", "content": text}]
    response_db(request).add(project, response, conversation)


@router.post("/responses", response_model=None)
def create_response(
    body: ResponseCreateParams, request: Request, service: ServiceDep, project: ProjectDep
) -> dict[str, Any] | StreamingResponse:
    turn = prepare(body, request, service, project)
    if body.stream:

        def stream() -> Iterator[str]:
            for e in events(turn):
                if e["type"] == "response.completed":
                    _store(request, project, turn, e["response"])
                yield f"event: {e['type']}\ndata: {json.dumps(e)}\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")
    last: dict[str, Any] = {}
    for e in events(turn):
        last = e
    response: dict[str, Any] = last["response"]
    _store(request, project, turn, response)
    return response


@router.get("/responses/{response_id}")
def retrieve_response(response_id: str, request: Request, project: ProjectDep) -> dict[str, Any]:
    found = response_db(request).get(project, response_id)
    if found is None:
        raise not_found("response", response_id, "response_id")
    return found[0]


@router.delete("/responses/{response_id}")
def delete_response(response_id: str, request: Request, project: ProjectDep) -> dict[str, Any]:
    if not response_db(request).delete(project, response_id):
        raise not_found("response", response_id, "response_id")
    return ResponseDeleted(id=response_id, deleted=True).model_dump()
