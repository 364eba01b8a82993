"""The small typed records that pass between ragtune's stages.

Everything that crosses a process or disk boundary has ``to_dict`` / ``from_dict``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant"]
SearchMode = Literal["hybrid", "bm25", "dense"]


@dataclass(frozen=True)
class Document:
    """One source document, as text. ``content_hash`` identifies its content for re-ingest."""

    doc_id: str
    text: str
    source: str  # file path, or "corpus.jsonl#<_id>" for corpus records
    title: str = ""
    attributes: dict[str, str] = field(default_factory=dict)
    content_hash: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Document:
        return cls(**d)


@dataclass(frozen=True)
class Chunk:
    """A span ``text == document.text[start:end]`` of one document, the unit of retrieval."""

    chunk_id: str  # "<doc_id>#<index>"
    doc_id: str
    index: int  # position of this chunk within its document
    text: str
    start: int  # character offsets into the document's text
    end: int
    source: str = ""
    title: str = ""
    attributes: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Chunk:
        return cls(**d)


@dataclass(frozen=True)
class Hit:
    """A retrieved chunk with its fused score, 1-based rank and per-retriever scores."""

    chunk: Chunk
    score: float
    rank: int
    scores: dict[str, float] = field(default_factory=dict)  # e.g. {"bm25": 7.1, "dense": 0.52}

    def to_dict(self) -> dict[str, Any]:
        return {
            "chunk": self.chunk.to_dict(),
            "score": self.score,
            "rank": self.rank,
            "scores": dict(self.scores),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Hit:
        return cls(
            chunk=Chunk.from_dict(d["chunk"]),
            score=d["score"],
            rank=d["rank"],
            scores=dict(d.get("scores", {})),
        )


@dataclass(frozen=True)
class Citation:
    """Where an answer comes from: prompt source ``[marker]``, mapped to its chunk."""

    marker: int
    chunk_id: str
    doc_id: str
    source: str
    start: int
    end: int
    text: str
    how: Literal["model", "attributed"] = "model"  # cited by the model, or attributed afterwards

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Citation:
        return cls(**d)


@dataclass(frozen=True)
class Answer:
    question: str
    text: str
    citations: list[Citation] = field(default_factory=list)
    hits: list[Hit] = field(default_factory=list)  # the context the generator saw
    timings: dict[str, float] = field(default_factory=dict)  # seconds, by stage
    model: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "question": self.question,
            "answer": self.text,
            "citations": [c.to_dict() for c in self.citations],
            "hits": [h.to_dict() for h in self.hits],
            "timings": dict(self.timings),
            "model": self.model,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Answer:
        return cls(
            question=d["question"],
            text=d["answer"],
            citations=[Citation.from_dict(c) for c in d.get("citations", [])],
            hits=[Hit.from_dict(h) for h in d.get("hits", [])],
            timings=dict(d.get("timings", {})),
            model=d.get("model", ""),
        )


@dataclass(frozen=True)
class Message:
    role: Role
    content: str
    weight: int = 1  # assistant messages only: 0 = context, not trained on

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.role == "assistant" and self.weight != 1:
            d["weight"] = self.weight
        return d


@dataclass(frozen=True)
class Example:
    """One training example: a conversation whose weighted assistant turns are the targets.

    Prompt/completion pairs become a user and an assistant message; plain documents
    (continued pre-training) become a single assistant message with no prompt.
    """

    messages: list[Message]

    def to_dict(self) -> dict[str, Any]:
        return {"messages": [m.to_dict() for m in self.messages]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Example:
        return cls(
            messages=[
                Message(role=m["role"], content=m["content"], weight=int(m.get("weight", 1)))
                for m in d["messages"]
            ]
        )
