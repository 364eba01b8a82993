"""Evaluation questions: reading them in three layouts, and the leakage check.

Layouts:

* ragtune JSONL: ``{"id", "question", "answers": [str, ...], "doc_id"?, "split"?,
  "group"?}`` (F1 is also reported per group);
* SQuAD-format JSON (``{"data": [{"paragraphs": [{"context", "qas": [...]}]}]}``), e.g.
  COVID-QA; its contexts can serve as the documents (:func:`squad_documents`);
* BEIR ``queries.jsonl`` plus a qrels TSV (no answers: retrieval and citation metrics only).
"""

from __future__ import annotations

import json
import random
import re
import string
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from ragtune.errors import RagtuneError
from ragtune.types import Example

Split = Literal["train", "test"]


@dataclass(frozen=True)
class Question:
    qid: str
    question: str
    answers: list[str] = field(default_factory=list)
    doc_ids: list[str] = field(default_factory=list)  # gold documents, if known
    split: Split = "test"
    group: str | None = None  # scores are also reported per group, e.g. unseen_template

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise RagtuneError(f"Cannot read {path}: {e}") from None
    except json.JSONDecodeError as e:
        raise RagtuneError(f"{path} is not valid JSON: {e}") from None


def load_questions(path: Path, qrels: Path | None = None) -> list[Question]:
    """Read questions from JSONL (ragtune or BEIR layout) or SQuAD-format JSON."""
    if not path.is_file():
        raise RagtuneError(f"Questions file not found: {path}")
    if path.suffix == ".json":
        return squad_questions(_read_json(path), path)
    questions: list[Question] = []
    gold = _read_qrels(qrels) if qrels else {}
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise RagtuneError(f"{path}:{n}: invalid JSON ({e.msg})") from None
            if not isinstance(rec, dict):
                raise RagtuneError(f"{path}:{n}: expected a JSON object")
            if "question" in rec:
                answers = rec.get("answers", [])
                if isinstance(answers, str):
                    answers = [answers]
                doc = rec.get("doc_id")
                split = rec.get("split", "test")
                if split not in ("train", "test"):
                    raise RagtuneError(
                        f"{path}:{n}: split must be 'train' or 'test', not {split!r}"
                    )
                questions.append(
                    Question(
                        qid=str(rec.get("id", n)),
                        question=str(rec["question"]),
                        answers=[str(a) for a in answers],
                        doc_ids=[str(d) for d in (doc if isinstance(doc, list) else [doc])]
                        if doc
                        else [],
                        split=split,
                        group=str(rec["group"]) if rec.get("group") else None,
                    )
                )
            elif "_id" in rec and "text" in rec:  # BEIR query
                qid = str(rec["_id"])
                questions.append(
                    Question(qid=qid, question=str(rec["text"]), doc_ids=sorted(gold.get(qid, [])))
                )
            else:
                raise RagtuneError(
                    f"{path}:{n}: expected {{'question', 'answers', ...}} or a BEIR query "
                    "{'_id', 'text'}"
                )
    if not questions:
        raise RagtuneError(f"No questions in {path}")
    return questions


def _read_qrels(path: Path) -> dict[str, list[str]]:
    from ragtune.evaluate.retrieval import read_qrels

    return {q: [d for d, g in docs.items() if g > 0] for q, docs in read_qrels(path).items()}


def squad_questions(data: Any, path: Path) -> list[Question]:
    """Questions of a SQuAD-format file; the gold document is the paragraph's ``document_id``
    (or the article title, or its position)."""
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise RagtuneError(f"{path} is not SQuAD-format JSON (no 'data' list)")
    out: list[Question] = []
    for a, article in enumerate(data["data"]):
        for p, para in enumerate(article.get("paragraphs", [])):
            doc_id = _squad_doc_id(article, para, a, p)
            for qa in para.get("qas", []):
                if qa.get("is_impossible"):
                    continue
                answers = list(dict.fromkeys(str(x["text"]) for x in qa.get("answers", [])))
                out.append(Question(str(qa["id"]), str(qa["question"]), answers, [doc_id]))
    if not out:
        raise RagtuneError(f"No answerable questions in {path}")
    return out


def _squad_doc_id(article: dict[str, Any], para: dict[str, Any], a: int, p: int) -> str:
    if "document_id" in para:
        return f"{para['document_id']}.txt"
    title = article.get("title")
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", str(title)) if title else f"article-{a}"
    return f"{base}-{p}.txt" if len(article.get("paragraphs", [])) > 1 else f"{base}.txt"


def write_squad_documents(data: Any, folder: Path, doc_ids: set[str] | None = None) -> list[Path]:
    """Write the SQuAD contexts as text files named by their doc ids (all, or ``doc_ids``)."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for a, article in enumerate(data["data"]):
        for p, para in enumerate(article.get("paragraphs", [])):
            doc_id = _squad_doc_id(article, para, a, p)
            if doc_ids is not None and doc_id not in doc_ids:
                continue
            path = folder / doc_id
            path.write_text(para["context"], encoding="utf-8")
            written.append(path)
    return written


def select_test(questions: Sequence[Question], limit: int | None, seed: int) -> list[Question]:
    """The scored questions: test split only, optionally a seeded random subset of ``limit``."""
    test = [q for q in questions if q.split == "test"]
    if limit is not None and limit < len(test):
        rng = random.Random(seed)
        keep = set(rng.sample(range(len(test)), limit))
        test = [q for i, q in enumerate(test) if i in keep]
    return test


_PUNCT = str.maketrans("", "", string.punctuation)


def _norm(text: str) -> str:
    return " ".join(text.lower().translate(_PUNCT).split())


def _leak_pairs(
    test: Sequence[Question], examples: Sequence[Example]
) -> Iterator[tuple[Question, int]]:
    """(test question, example index) for every example whose prompt or answer contains the
    question's text (normalised: case, punctuation, spacing; whole text, or inside a longer
    one when the question is over 20 characters)."""
    texts = [(i, _norm(m.content)) for i, ex in enumerate(examples) for m in ex.messages]
    for q in test:
        nq = _norm(q.question)
        if nq:
            for i, t in texts:
                if nq == t or (len(nq) > 20 and nq in t):
                    yield q, i


def find_leaks(test: Sequence[Question], examples: Sequence[Example]) -> list[str]:
    """Test questions that appear in a training example — training on the test questions
    is leakage."""
    return list(dict.fromkeys(f"{q.qid}: {q.question}" for q, _ in _leak_pairs(test, examples)))


def leaking_examples(test: Sequence[Question], examples: Sequence[Example]) -> set[int]:
    """Indices of the examples that contain a test question (see :func:`find_leaks`)."""
    return {i for _, i in _leak_pairs(test, examples)}
