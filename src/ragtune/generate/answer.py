"""Answering questions: retrieve (or not), build the prompt, generate in batches, cite.

The same function serves ``ragtune ask`` (one question) and each arm of a comparison
(hundreds): questions are retrieved for together, prompts are decoded in batches, and
every answer keeps the context it saw, so citations map to exact document spans.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ragtune.generate.engine import Generator
from ragtune.generate.prompts import (
    RAG_FEWSHOT,
    RAG_INSTRUCTION,
    chat_prompt,
    pack_sources,
    parse_citations,
    rag_messages,
    strip_citations,
)
from ragtune.text import answer_support
from ragtune.types import Answer, Citation, Hit, Message

MIN_SUPPORT = 0.5  # share of answer tokens a source must contain to be attributed


def attribute(answer: str, hits: Sequence[Hit]) -> int | None:
    """1-based index of the source that best supports ``answer`` (ties: better rank), if any."""
    best, best_support = None, MIN_SUPPORT
    for i, hit in enumerate(hits):
        s = answer_support(answer, hit.chunk.text)
        if s > best_support or (best is None and s >= best_support):
            best, best_support = i + 1, s
    return best


def cite(answer: str, hits: Sequence[Hit]) -> list[Citation]:
    """Verified citations for an answer generated from ``hits`` (numbered 1..n).

    A source the model cited as ``[n]`` is kept only if it supports the answer (contains
    at least half of its words); if none of the model's citations survive, the answer is
    attributed to the source that contains most of its words (``how="attributed"``).
    """
    claim = strip_citations(answer)
    markers = [
        n
        for n in parse_citations(answer, len(hits))
        if answer_support(claim, hits[n - 1].chunk.text) >= MIN_SUPPORT
    ]
    how = "model"
    if not markers:
        found = attribute(claim, hits)
        markers, how = ([found], "attributed") if found is not None else ([], "model")
    out = []
    for n in markers:
        c = hits[n - 1].chunk
        out.append(
            Citation(
                marker=n,
                chunk_id=c.chunk_id,
                doc_id=c.doc_id,
                source=c.source,
                start=c.start,
                end=c.end,
                text=c.text,
                how=how,  # type: ignore[arg-type]
            )
        )
    return out


def with_markers(answer: str, citations: Sequence[Citation]) -> str:
    """The answer with its verified source numbers, e.g. ``"Bram Stoker [1]"``."""
    claim = strip_citations(answer)
    marks = "".join(f"[{c.marker}]" for c in citations)
    return f"{claim} {marks}" if claim and marks else claim


def prompt_messages(
    question: str,
    sources: Sequence[str] | None,
    instruction: str | None,
    fewshot: Sequence[tuple[str, str]],
) -> list[Message]:
    """The conversation for one question: system text (``instruction``; with ``sources``,
    the RAG instruction and the numbered sources after it), the few-shot turns, then the
    question. ``sources=None`` is closed book."""
    if sources is not None:
        messages = rag_messages(question, sources, instruction or RAG_INSTRUCTION)
    else:
        messages = [Message("system", instruction)] if instruction else []
        messages.append(Message("user", question))
    shots = [m for q, a in fewshot for m in (Message("user", q), Message("assistant", a))]
    # Few-shot turns go after the system text and before the question.
    system = [m for m in messages if m.role == "system"]
    rest = [m for m in messages if m.role != "system"]
    return [*system, *shots, *rest]


def prompt_template(
    tokenizer: Any, rag: bool, instruction: str | None, fewshot: Sequence[tuple[str, str]]
) -> str:
    """The prompt an arm gives every question, with ``{question}`` and (RAG) ``{sources}``
    standing for the question and its numbered sources: what results.json reports."""
    sources = ["{sources}"] if rag else None
    return chat_prompt(prompt_messages("{question}", sources, instruction, fewshot), tokenizer)


def generate_answers(
    questions: Sequence[str],
    generator: Generator,
    contexts: Sequence[Sequence[Hit]] | None = None,
    context_tokens: int = 2048,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    instruction: str | None = None,
    fewshot: Sequence[tuple[str, str]] | None = None,
    extract: Callable[[str], str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[tuple[Answer, list[int]]]:
    """:func:`answer_questions`, each answer with the source numbers the model itself wrote
    (``[n]`` markers in its raw output, valid numbers only, before any check)."""
    if fewshot is None:
        fewshot = RAG_FEWSHOT if contexts is not None else ()
    prompts, used_hits = [], []
    for i, question in enumerate(questions):
        sources = None
        if contexts is not None:
            packed = pack_sources(contexts[i], generator.count_tokens, context_tokens)
            sources = [block for _, block in packed]
            used_hits.append([h for h, _ in packed])
        else:
            used_hits.append([])
        messages = prompt_messages(question, sources, instruction, fewshot)
        prompts.append(chat_prompt(messages, generator.tokenizer))
    gens = generator.generate(
        prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress
    )
    out = []
    for question, hits, gen in zip(questions, used_hits, gens, strict=True):
        claim = extract(gen.text) if extract else gen.text
        citations = cite(claim, hits) if hits else []
        answer = Answer(
            question=question,
            text=with_markers(gen.text, citations) if hits and not extract else gen.text,
            citations=citations,
            hits=hits,
            timings={
                "generate_s": gen.seconds,
                "prompt_tokens": float(gen.prompt_tokens),
                "new_tokens": float(gen.new_tokens),
            },
            model=generator.name,
        )
        out.append((answer, parse_citations(gen.text, len(hits)) if hits else []))
    return out


def answer_questions(
    questions: Sequence[str],
    generator: Generator,
    contexts: Sequence[Sequence[Hit]] | None = None,
    context_tokens: int = 2048,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    instruction: str | None = None,
    fewshot: Sequence[tuple[str, str]] | None = None,
    extract: Callable[[str], str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[Answer]:
    """Answer ``questions`` closed-book (``contexts=None``) or from their retrieved hits.

    The hits of each question are numbered in rank order and packed into
    ``context_tokens``. ``fewshot`` (question, answer) pairs are shown before each
    question in the same layout as training examples (default: ``RAG_FEWSHOT`` with
    context, none without); ``instruction`` replaces the default RAG instruction
    (closed-book, it is the only system text). A RAG answer's text ends with its
    verified source numbers (see :func:`cite`) — unless ``extract`` is given: answers then
    follow a required form (e.g. JSON), are left as generated, and citations are checked
    against ``extract(answer)``, the part that states the answer.
    """
    pairs = generate_answers(
        questions,
        generator,
        contexts,
        context_tokens,
        max_new_tokens,
        batch_size,
        instruction,
        fewshot,
        extract,
        progress,
    )
    return [a for a, _ in pairs]
