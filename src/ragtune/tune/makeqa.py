"""From documents to training examples: question/answer pairs plus paraphrases.

Ovadia et al. 2023 ("Fine-Tuning or Retrieval?") found that fine-tuning only absorbs a
fact when it sees the fact in several phrasings, so every kept question comes with
paraphrases. Pairs come from a pluggable writer — rules over sentences
(:mod:`ragtune.tune.templateqa`, the default), the local base model prompted few-shot
(:class:`LocalQAWriter`), any OpenAI-compatible chat endpoint
(:mod:`ragtune.tune.qa_endpoint`), or several (:mod:`ragtune.tune.qa_writers`) — and
every answer is checked against the passage it came from: an answer whose words are not
all in the passage is dropped and counted, as are malformed or trivial pairs (the answer
inside the question).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import zip_longest
from pathlib import Path
from typing import Any, Protocol

from ragtune.errors import RagtuneError
from ragtune.generate.engine import Generator
from ragtune.text import answer_support, normalize_answer, token_f1

MAX_ANSWER_WORDS = 12
MAX_QUESTION_WORDS = 25

# Different demonstrations per paraphrase slot give different rewrites with greedy decoding.
PARAPHRASE_SHOTS = (
    (
        ("When was the Eiffel Tower completed?", "In what year was the Eiffel Tower finished?"),
        ("Where was Marie Curie born?", "What is the birthplace of Marie Curie?"),
    ),
    (
        ("When was the Eiffel Tower completed?", "The Eiffel Tower was completed in which year?"),
        ("Where was Marie Curie born?", "Marie Curie was born in which city?"),
    ),
    (
        (
            "When was the Eiffel Tower completed?",
            "What year saw the completion of the Eiffel Tower?",
        ),
        ("Where was Marie Curie born?", "In which city did Marie Curie come into the world?"),
    ),
)


@dataclass(frozen=True)
class Candidate:
    """A generated pair; ``intended`` is the answer the question was written for, if any.
    ``phrasings`` are other wordings of the question that came with it (template
    generation); None means the writer is asked for paraphrases of the kept question."""

    question: str
    answer: str
    intended: str | None = None
    phrasings: tuple[str, ...] | None = None


@dataclass(frozen=True)
class QAPair:
    question: str
    answer: str
    passage: str
    paraphrases: list[str] = field(default_factory=list)
    doc: int = -1  # index of the document the passage came from


@dataclass
class MakeQAReport:
    """What make-qa did, including how well its pairs cover the documents: a weak
    fine-tuned arm trained on few of the documents' facts is a verdict on the data, not on
    fine-tuning."""

    method: str = "model"  # which writer made the candidates: model, template or both
    documents: int = 0
    documents_covered: int = 0  # documents with at least one kept pair
    passages: int = 0
    passages_covered: int = 0  # passages with at least one kept pair
    generated: int = 0
    kept: int = 0
    dropped_unsupported: int = 0
    dropped_inconsistent: int = 0
    dropped_malformed: int = 0
    dropped_duplicate: int = 0
    dropped_over_budget: int = 0  # past --max-pairs
    paraphrases: int = 0
    examples: int = 0  # question/answer examples (each pair and each of its phrasings)
    document_examples: int = 0  # raw-text passages added for continued pre-training
    skipped_files: list[tuple[str, str]] = field(default_factory=list)

    @property
    def dropped_by_reason(self) -> dict[str, int]:
        return {
            "unsupported": self.dropped_unsupported,
            "inconsistent": self.dropped_inconsistent,
            "malformed": self.dropped_malformed,
            "duplicate": self.dropped_duplicate,
            "over_budget": self.dropped_over_budget,
        }


class QAWriter(Protocol):
    """Writes (question, answer) candidates for each passage, and paraphrases of questions."""

    def pairs(self, passages: Sequence[str]) -> list[list[Candidate]]: ...

    def paraphrases(self, questions: Sequence[str], n: int) -> list[list[str]]: ...


# --- checks ------------------------------------------------------------------------------


def names(passage: str) -> set[str]:
    """Names and numbers of a passage: capitalised words not opening a sentence, and digits."""
    out = set()
    for m in re.finditer(r"(?<![.!?:]\s)(?<!^)\b([A-Z][\w-]+|\d[\d,.]*)", passage):
        out.add(normalize_answer(m.group(1)))
    return {n for n in out if n}


def check_pair(question: str, answer: str, passage: str) -> str | None:
    """Why a generated pair is rejected (``"unsupported"`` / ``"malformed"``), or None.

    Kept pairs end with "?", have a short answer whose every word is in the passage, do
    not contain their answer, and name something the passage names (so the question still
    makes sense without the passage: "When was Zorbland founded?", not "When was it?").
    """
    q, a = question.strip(), answer.strip()
    if not q.endswith("?") or len(q) < 8 or not a or len(a.split()) > MAX_ANSWER_WORDS:
        return "malformed"
    if "__" in q:
        return "malformed"  # the blank of the cloze prompt copied into the question
    if len(q.split()) > MAX_QUESTION_WORDS or "://" in q or q.count("(") != q.count(")"):
        return "malformed"  # a sentence with a question mark, or text around a link
    if "()" in q or ": " in q or re.search(r"\b(?:and|or|the|a|an|between)\?$|\bbetween and\b", q):
        return "malformed"  # a hole where the answer was taken out
    na = normalize_answer(a)
    if not na or na in normalize_answer(q):
        return "malformed"  # empty after normalisation, or answered by the question itself
    if answer_support(a, passage) < 1.0:
        return "unsupported"  # some answer word is not in the source passage
    passage_names = names(passage)
    asked = set(normalize_answer(re.sub(r"'s\b", "", q)).split())  # "Zor's" names Zor
    if passage_names and not passage_names & asked:
        return "malformed"  # a context-free question ("What does the company make?")
    return None


# What a question asks for, from its question words (checked in this order).
ASKS_FOR = (
    ("quantity", r"\bhow (?:many|much)\b"),
    ("time", r"\bwhen\b|\bwhat (?:year|date|time)\b|\bwhich (?:year|date|decade)\b"),
    ("person", r"\bwho(?:m|se)?\b"),
    ("place", r"\bwhere\b|\b(?:what|which) (?:city|town|country|place|region)\b"),
)


def asks_for(question: str) -> str | None:
    """``quantity``, ``time``, ``person``, ``place``, or None when the words do not say."""
    q = question.lower()
    return next((kind for kind, pattern in ASKS_FOR if re.search(pattern, q)), None)


def check_paraphrase(original: str, paraphrase: str) -> bool:
    """A usable paraphrase: a different question that keeps some of the original's words
    and asks for the same kind of thing ("Who founded X?" may not become "When was X
    founded?")."""
    p = paraphrase.strip()
    if not p.endswith("?") or normalize_answer(p) == normalize_answer(original):
        return False
    kind, new_kind = asks_for(original), asks_for(p)
    if kind is not None and new_kind is not None and kind != new_kind:
        return False
    words = set(normalize_answer(original).split())
    return bool(words) and answer_support(p, original) >= 0.3 and len(p) < 3 * len(original) + 20


# --- the local base model ------------------------------------------------------------------

CLOZE_SHOTS = (
    ("The Eiffel Tower was completed in ___.", "When was the Eiffel Tower completed?"),
    ("Marie Curie was born in ___.", "Where was Marie Curie born?"),
    ("The Golden Gate Bridge was designed by ___.", "Who designed the Golden Gate Bridge?"),
    (
        "Lake Baikal holds ___ of the world's fresh surface water.",
        "How much of the world's fresh surface water does Lake Baikal hold?",
    ),
)
READ_SHOTS = (
    (
        "The Eiffel Tower was completed in 1889 and is 330 metres tall.",
        "When was the Eiffel Tower completed?",
        "1889",
    ),
    (
        "Marie Curie was born in Warsaw and later moved to Paris to study physics.",
        "Where was Marie Curie born?",
        "Warsaw",
    ),
)


def answer_spans(sentence: str, title: str = "", limit: int = 3) -> list[str]:
    """Answer candidates in a sentence: numbers and names (runs of capitalised words),
    leaving out the title it is about and a capitalised sentence opener."""
    spans: list[str] = []
    pattern = r"\b\d[\d,.]*%?|\b[A-Z][\w-]+(?:\s+(?:of\s+|the\s+)?[A-Z][\w-]+)*"
    for m in re.finditer(pattern, sentence):
        span = m.group(0).rstrip(".,")
        if m.start() == 0 and " " not in span and not span[0].isdigit():
            continue  # a capitalised first word is usually not a name
        if normalize_answer(span) in normalize_answer(title) or span in spans:
            continue
        spans.append(span)
    return spans[:limit]


def resolve_pronoun(sentence: str, title: str) -> str:
    """Replace a sentence-opening It/He/She/They (or Its/His/Her/Their) with the title, so a
    sentence makes sense alone."""
    if not title:
        return sentence
    m = re.match(r"(It|He|She|They)\b|(Its|His|Her|Their)\b", sentence)
    if not m:
        return sentence
    return (title if m.group(1) else f"{title}'s") + sentence[m.end() :]


def clause_with(sentence: str, span: str) -> str:
    """The clause of ``sentence`` (split at ', and' / ';') that holds ``span``."""
    for clause in re.split(r",\s+and\s+|;\s+", sentence):
        if span in clause and len(clause.split()) >= 4:
            return clause.strip().rstrip(".") + "."
    return sentence


@dataclass
class LocalQAWriter:
    """A pretrained model prompted few-shot, answer first (answer-aware question generation
    with round-trip filtering, Alberti et al. 2019): names and numbers in a sentence are
    the answers; the model turns the sentence with the answer blanked out into a question,
    then answers that question from the sentence. The round-trip answer is what is kept,
    and it must agree with the blanked-out span."""

    generator: Generator
    batch_size: int = 16
    progress: Callable[[int], None] | None = None

    def _generate(self, prompts: list[str]) -> list[str]:
        gens = self.generator.generate(
            prompts,
            max_new_tokens=40,
            stop=("\n",),
            batch_size=self.batch_size,
            progress=self.progress,
        )
        return [g.text.strip() for g in gens]

    def pairs(self, passages: Sequence[str]) -> list[list[Candidate]]:
        jobs = []  # (passage index, sentence, span)
        for i, passage in enumerate(passages):
            title, body = split_title(passage)
            for sentence in re.split(r"(?<=[.!?])\s+", body):
                sentence = resolve_pronoun(sentence.strip(), title)
                jobs += [(i, sentence, span) for span in answer_spans(sentence, title)]
        write = "".join(f"Statement: {s}\nQuestion: {q}\n\n" for s, q in CLOZE_SHOTS)
        questions = self._generate(
            [
                "Turn each statement into a question about the blank.\n\n"
                f"{write}Statement: {clause_with(sentence, span).replace(span, '___', 1)}\n"
                "Question:"
                for _, sentence, span in jobs
            ]
        )
        read = "".join(f"Text: {t}\nQuestion: {q}\nAnswer: {a}\n\n" for t, q, a in READ_SHOTS)
        answers = self._generate(
            [
                f"{read}Text: {sentence}\nQuestion: {q}\nAnswer:"
                for (_, sentence, _), q in zip(jobs, questions, strict=True)
            ]
        )
        out: list[list[Candidate]] = [[] for _ in passages]
        for (i, _, span), q, a in zip(jobs, questions, answers, strict=True):
            out[i].append(Candidate(q, a, intended=span))
        return out

    def paraphrases(self, questions: Sequence[str], n: int) -> list[list[str]]:
        out: list[list[str]] = [[] for _ in questions]
        for slot in range(n):
            shots = PARAPHRASE_SHOTS[slot % len(PARAPHRASE_SHOTS)]
            demo = "".join(f"Question: {q}\nRewrite: {r}\n\n" for q, r in shots)
            rewrites = self._generate(
                [
                    f"Rewrite each question in other words.\n\n{demo}Question: {q}\nRewrite:"
                    for q in questions
                ]
            )
            for i, r in enumerate(rewrites):
                out[i].append(r)
        return out


def split_title(passage: str) -> tuple[str, str]:
    if passage.startswith("About ") and ": " in passage:
        title, body = passage[len("About ") :].split(": ", 1)
        return title, body
    return "", passage


# --- the recipe -----------------------------------------------------------------------------


def split_passages(text: str, title: str = "", max_chars: int = 200) -> list[str]:
    """Short passages of whole sentences, each led by the document's title (a small model
    writes better questions about a sentence or two than about a page, and the title
    lets it name what "it" is)."""
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+|\n\n+", text) if s.strip()]
    passages, current = [], ""
    for s in sentences:
        if s.startswith("#"):
            continue  # a heading: the title leads every passage anyway
        if current and len(current) + len(s) + 1 > max_chars:
            passages.append(current)
            current = s
        else:
            current = f"{current} {s}".strip()
    if current:
        passages.append(current)
    lead = f"About {title}: " if title else ""
    return [lead + p for p in passages if len(p.split()) >= 5]


def make_qa(
    documents: Sequence[tuple[str, str]],
    writer: QAWriter,
    paraphrases: int = 2,
    max_pairs: int | None = None,
) -> tuple[list[QAPair], MakeQAReport]:
    """Question/answer pairs from ``(title, text)`` documents, checked against their
    passages, each with paraphrases."""
    report = MakeQAReport(documents=len(documents))
    order = passage_order(documents, max_pairs)
    passages = [p for _, p in order]
    report.passages = len(passages)
    kept: list[tuple[Candidate, str, int]] = []
    seen: set[str] = set()
    for (doc, passage), candidates in zip(order, writer.pairs(passages), strict=True):
        for c in candidates:
            report.generated += 1
            why = check_pair(c.question, c.answer, passage)
            if why == "unsupported":
                report.dropped_unsupported += 1
            elif why == "malformed":
                report.dropped_malformed += 1
            elif c.intended is not None and token_f1(c.answer, [c.intended]) < 0.5:
                report.dropped_inconsistent += 1  # the model's own answer disagrees
            elif normalize_answer(c.question) in seen:
                report.dropped_duplicate += 1
            else:
                kept.append((c, passage, doc))
                seen.add(normalize_answer(c.question))
    if max_pairs is not None:
        report.dropped_over_budget = max(0, len(kept) - max_pairs)
        kept = kept[:max_pairs]
    report.kept = len(kept)
    report.documents_covered = len({d for *_, d in kept})
    report.passages_covered = len({p for _, p, _ in kept})
    ask = [c.question for c, _, _ in kept if c.phrasings is None]
    rewrites = iter(writer.paraphrases(ask, paraphrases) if paraphrases and ask else [])
    pairs = []
    for c, passage, doc in kept:
        if c.phrasings is not None:  # wordings that came with the pair: checked the same way
            offered = [p for p in c.phrasings if check_pair(p, c.answer, passage) is None]
        else:
            offered = next(rewrites, []) if paraphrases else []
        alts: list[str] = []
        for p in offered:
            fresh = all(normalize_answer(p) != normalize_answer(x) for x in alts)
            if len(alts) < paraphrases and check_paraphrase(c.question, p) and fresh:
                alts.append(p.strip())
        report.paraphrases += len(alts)
        pairs.append(QAPair(c.question, c.answer, passage, alts, doc))
    report.examples = sum(1 + len(p.paraphrases) for p in pairs)
    return pairs, report


def passage_order(
    documents: Sequence[tuple[str, str]], max_pairs: int | None = None
) -> list[tuple[int, str]]:
    """``(document index, passage)`` in the order make-qa reads them: round-robin over the
    documents, so a ``max_pairs`` budget (two passages per pair) covers all of them.
    Passages without a sentence of prose (a title line with its link, identifiers and
    licence: the first passage of every COVID-QA article) are not read."""
    from ragtune.tune.templateqa import split_sentences

    per_doc = [
        [p for p in split_passages(text, title) if split_sentences(split_title(p)[1])]
        for title, text in documents
    ]
    rows = [[(d, p) for p in passages] for d, passages in enumerate(per_doc)]
    order = [x for row in zip_longest(*rows) for x in row if x is not None]
    if max_pairs is not None:
        order = order[: max(0, max_pairs * 2)]  # some candidates will be dropped
    return order


def document_records(passages: Sequence[str]) -> list[dict[str, Any]]:
    """Raw-text training records (a lone assistant message: continued pre-training on the
    text, see ``ragtune.tune.tokens.is_document``) for the passages make-qa read — the
    knowledge-injection recipe of training on the documents together with question/answer
    pairs about them (Ovadia et al. 2023; Jiang et al. 2024, "Instruction-tuned Language
    Models are Better Knowledge Learners")."""
    return [{"messages": [{"role": "assistant", "content": p}]} for p in passages]


def to_examples(pairs: Sequence[QAPair], system: str | None = None) -> list[dict[str, Any]]:
    """OpenAI chat fine-tuning records: one per question and per paraphrase."""
    records = []
    for pair in pairs:
        for q in [pair.question, *pair.paraphrases]:
            messages = [
                {"role": "user", "content": q},
                {"role": "assistant", "content": pair.answer},
            ]
            if system:
                messages.insert(0, {"role": "system", "content": system})
            records.append({"messages": messages})
    return records


def read_documents(paths: Sequence[Path]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``(title, text)`` of every readable document under ``paths`` (files or folders, in
    discovery order), and ``(file, reason)`` for every file skipped."""
    from ragtune.ingest.loaders import SkipFile, discover, load_file

    texts: list[tuple[str, str]] = []
    skipped: list[tuple[str, str]] = []
    for file, root in discover(list(paths)):
        try:
            loaded = load_file(file, root)
        except SkipFile as e:
            skipped.append((str(file), e.reason))
            continue
        skipped.extend(loaded.skipped)
        texts.extend((d.title, d.text) for d in loaded.documents)
    return texts, skipped


def make_qa_files(
    paths: Sequence[Path],
    writer: QAWriter,
    seed: int = 0,
    paraphrases: int = 2,
    max_pairs: int | None = None,
    system: str | None = None,
    train_docs: bool = False,
    method: str = "model",
) -> tuple[list[dict[str, Any]], MakeQAReport]:
    """Training records (OpenAI chat JSONL objects) from the documents under ``paths``,
    read in a seeded order; the report counts what was kept, dropped and covered. With
    ``train_docs`` the passages read are added as raw-text records (after the pairs)."""
    texts, skipped = read_documents(paths)
    if not texts:
        raise RagtuneError("No readable documents", "pass .txt, .md, .html, .pdf files or folders")
    random.Random(seed).shuffle(texts)
    pairs, report = make_qa(texts, writer, paraphrases=paraphrases, max_pairs=max_pairs)
    report.skipped_files = skipped
    report.method = method
    records = to_examples(pairs, system=system)
    if train_docs and records:
        docs = document_records([p for _, p in passage_order(texts, max_pairs)])
        report.document_examples = len(docs)
        records += docs
    return records, report
