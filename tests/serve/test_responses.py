"""/v1/responses with and without file_search, on the tiny models; every response and stream
event parsed with the openai SDK's own types.

Where a test needs a known answer (to check which file gets cited), the engine is the tiny
one behind a scripted decoder that returns that answer: the prompt, search, citation checks
and events are the server's own."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from ragtune.serve.engine import Completion, Engine, RequestHandle, SamplingParams, TokenDelta
from ragtune.serve.routes.responses import MarkerFilter
from tests.serve.conftest import KEY_B, Served
from tests.serve.test_vector_stores import make_store

EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
QUESTION = "What is the capital of Zorbland?"


@dataclass
class ScriptedEngine:
    """The tiny engine's tokenizer, with a decoder that 'generates' ``answer`` in pieces."""

    real: Engine
    answer: list[str]
    prompts: list[str] = field(default_factory=list)

    @property
    def tokenizer(self) -> Any:
        return self.real.tokenizer

    def count_tokens(self, text: str) -> int:
        return self.real.count_tokens(text)

    def submit(self, prompt: str, params: SamplingParams, model: str | None = None):
        self.prompts.append(prompt)
        return RequestHandle(_ScriptedRun(list(self.answer)), eos=set(), logprobs=False)


@dataclass
class _ScriptedRun:
    """Stands in for the generator's own request handle: the pieces as deltas, then a result."""

    pieces: list[str]

    def __iter__(self) -> Iterator[TokenDelta]:
        for i, piece in enumerate(self.pieces):
            yield TokenDelta(text=piece, token_id=i, logprob=None)

    def result(self) -> Completion:
        return Completion("".join(self.pieces), 10, len(self.pieces), "stop")

    def cancel(self) -> None:
        pass


def scripted(s: Served, *answer: str) -> ScriptedEngine:
    service = s.client.app.state.service  # type: ignore[attr-defined]
    engine = ScriptedEngine(service.engine, list(answer))
    service.engine = engine
    return engine


def respond(s: Served, key: str | None = None, **body: object):
    return s.client.post(
        "/v1/responses",
        json={"model": "tiny_lm0", **body},
        headers=s.headers(key) if key else s.headers(),
    )


def file_search(store_id: str, **extra: object) -> list[dict[str, object]]:
    return [{"type": "file_search", "vector_store_ids": [store_id], **extra}]


def test_marker_filter_takes_markers_out_of_a_stream() -> None:
    f = MarkerFilter()
    pieces = [f.feed(p) for p in [" Vet", "rin ", "[", "1", "]", " and", " Ost [2", "]"]]
    assert "".join(pieces) == f.text() == "Vetrin and Ost"
    g = MarkerFilter()
    g.feed("[3] x [12]")
    assert g.text() == "x"


def test_file_search_cites_the_file_used(served: Served) -> None:
    store_id, ids = make_store(served)
    served.run_worker()
    engine = scripted(served, "Vet", "rin", " [1]")
    r = respond(served, input=QUESTION, tools=file_search(store_id))
    assert r.status_code == 200, r.text
    resp = Response.model_validate(r.json())
    call, message = resp.output
    assert call.type == "file_search_call" and call.status == "completed"
    assert call.queries == [QUESTION] and call.results is None  # results only when included
    assert message.type == "message" and resp.output_text == "Vetrin"
    [text] = message.content
    assert text.type == "output_text"
    [note] = text.annotations
    assert note.type == "file_citation"
    assert (note.file_id, note.filename, note.index) == (ids["zorbland.txt"], "zorbland.txt", 6)
    assert resp.status == "completed" and resp.usage is not None and resp.usage.output_tokens == 3
    prompt = engine.prompts[0]
    assert "[1]" in prompt and "Vetrin lies on the river Ost" in prompt and QUESTION in prompt


def test_unsupported_model_citation_is_replaced_by_the_supporting_file(served: Served) -> None:
    """The model cites source 2, which does not hold its answer: ragtune's verified citations
    drop it and attribute the answer to the file that holds it."""
    store_id, ids = make_store(served)
    served.run_worker()
    scripted(served, "Vetrin [2]")
    r = respond(
        served,
        input=QUESTION,
        tools=file_search(store_id),
        include=["file_search_call.results"],
    )
    resp = Response.model_validate(r.json())
    call = resp.output[0]
    assert call.type == "file_search_call" and call.results is not None
    assert call.results[0].file_id == ids["zorbland.txt"]
    assert call.results[1].file_id != ids["zorbland.txt"]
    note = resp.output[1].content[0].annotations[0]  # type: ignore[union-attr]
    assert note.file_id == ids["zorbland.txt"]  # type: ignore[union-attr]


def test_file_search_filters_weights_and_errors(served: Served) -> None:
    store_id, ids = make_store(served)
    served.run_worker()
    scripted(served, "Vetrin [1]")
    not_geo = {"type": "ne", "key": "topic", "value": "geography"}
    r = respond(
        served,
        input=QUESTION,
        tools=file_search(
            store_id,
            filters=not_geo,
            max_num_results=2,
            ranking_options={"hybrid_search": {"embedding_weight": 0.0, "text_weight": 1.0}},
        ),
        include=["file_search_call.results"],
    )
    resp = Response.model_validate(r.json())
    results = resp.output[0].results  # type: ignore[union-attr]
    assert results is not None and len(results) <= 2
    assert ids["zorbland.txt"] not in {x.file_id for x in results}
    assert resp.output[1].content[0].annotations == []  # type: ignore[union-attr]
    assert respond(served, input="x", tools=[{"type": "web_search"}]).status_code == 400
    r = respond(served, input="x", tools=file_search("vs_nope"))
    assert r.status_code == 404
    r = respond(served, KEY_B, input=QUESTION, tools=file_search(store_id))
    assert r.status_code == 404  # another key cannot search the store


def test_streaming_events(served: Served) -> None:
    store_id, ids = make_store(served)
    served.run_worker()
    scripted(served, " Vet", "rin", " [", "1]")
    with served.client.stream(
        "POST",
        "/v1/responses",
        json={
            "model": "tiny_lm0",
            "input": QUESTION,
            "tools": file_search(store_id),
            "stream": True,
        },
        headers=served.headers(),
    ) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    events = [EVENTS.validate_python(json.loads(line[6:])) for line in lines]
    kinds = [e.type for e in events]
    assert kinds[:9] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.file_search_call.in_progress",
        "response.file_search_call.searching",
        "response.file_search_call.completed",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-5:] == [
        "response.output_text.annotation.added",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == "Vetrin"
    [added] = [e for e in events if e.type == "response.output_text.annotation.added"]
    assert added.annotation is not None and added.annotation.file_id == ids["zorbland.txt"]
    final = events[-1].response
    assert final.output_text == "Vetrin" and final.status == "completed"
    stored = served.client.get(f"/v1/responses/{final.id}", headers=served.headers()).json()
    assert Response.model_validate(stored).output_text == "Vetrin"


def test_multi_turn_storage_and_deletion(served: Served) -> None:
    engine = scripted(served, "Blue.")
    r = respond(served, input="What colour is the sky?", instructions="Answer in one word.")
    first = Response.model_validate(r.json())
    assert first.output_text == "Blue." and first.instructions == "Answer in one word."
    assert "Answer in one word." in engine.prompts[0]
    engine.answer = ["Green."]
    r = respond(
        served,
        input=[{"role": "user", "content": [{"type": "input_text", "text": "And grass?"}]}],
        previous_response_id=first.id,
    )
    second = Response.model_validate(r.json())
    assert second.previous_response_id == first.id and second.output_text == "Green."
    prompt = engine.prompts[1]
    assert prompt.index("What colour is the sky?") < prompt.index("Blue.")
    assert prompt.index("Blue.") < prompt.index("And grass?")
    assert "Answer in one word." not in prompt  # instructions are not carried over
    got = served.client.get(f"/v1/responses/{first.id}", headers=served.headers())
    assert Response.model_validate(got.json()).id == first.id
    assert (
        served.client.get(f"/v1/responses/{first.id}", headers=served.headers(KEY_B)).status_code
        == 404
    )
    r = respond(served, KEY_B, input="x", previous_response_id=first.id)
    assert r.status_code == 404
    assert (
        served.client.delete(f"/v1/responses/{first.id}", headers=served.headers()).status_code
        == 200
    )
    assert (
        served.client.get(f"/v1/responses/{first.id}", headers=served.headers()).status_code == 404
    )
    r = respond(served, input="x", store=False)
    unstored = Response.model_validate(r.json()).id
    assert (
        served.client.get(f"/v1/responses/{unstored}", headers=served.headers()).status_code == 404
    )


def test_real_tiny_model_answers_with_usage(served: Served) -> None:
    r = respond(served, input="Hello", max_output_tokens=5, temperature=0)
    resp = Response.model_validate(r.json())
    assert resp.usage is not None and 1 <= resp.usage.output_tokens <= 5
    assert resp.output[0].type == "message"
    assert resp.status in ("completed", "incomplete")


@pytest.mark.parametrize("tools", [[{"type": "function", "name": "f"}], [{"type": "x"}]])
def test_chat_completions_with_tools_is_a_clear_400(served: Served, tools: list) -> None:
    r = served.client.post(
        "/v1/chat/completions",
        json={"model": "tiny_lm0", "messages": [{"role": "user", "content": "hi"}], "tools": tools},
        headers=served.headers(),
    )
    assert r.status_code == 400 and "not supported" in r.json()["error"]["message"]
