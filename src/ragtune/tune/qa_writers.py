"""make-qa's writers besides the model: templates over sentences, and both combined.

``--method template`` needs no model (seconds for a corpus), ``model`` is the local
model's answer-first generation (:class:`ragtune.tune.makeqa.LocalQAWriter`) or an
endpoint, ``both`` offers the candidates of each; make-qa's checks decide either way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ragtune.tune.makeqa import Candidate, QAWriter, split_title
from ragtune.tune.templateqa import QAMethod, split_sentences, template_questions


@dataclass
class TemplateQAWriter:
    """Rule-based questions (:mod:`ragtune.tune.templateqa`): for every answer phrase of
    every sentence, the first phrasing is the question and the others come with it."""

    def pairs(self, passages: Sequence[str]) -> list[list[Candidate]]:
        out: list[list[Candidate]] = []
        for passage in passages:
            title, body = split_title(passage)
            out.append(
                [
                    Candidate(phrasings[0], answer, phrasings=tuple(phrasings[1:]))
                    for sentence in split_sentences(body)
                    for answer, phrasings in template_questions(sentence, title)
                ]
            )
        return out

    def paraphrases(self, questions: Sequence[str], n: int) -> list[list[str]]:
        return [[] for _ in questions]  # its pairs come with their phrasings


@dataclass
class CombinedQAWriter:
    """The candidates of several writers for each passage; paraphrases from the first."""

    writers: Sequence[QAWriter]

    def pairs(self, passages: Sequence[str]) -> list[list[Candidate]]:
        out: list[list[Candidate]] = [[] for _ in passages]
        for writer in self.writers:
            for i, candidates in enumerate(writer.pairs(passages)):
                out[i] += candidates
        return out

    def paraphrases(self, questions: Sequence[str], n: int) -> list[list[str]]:
        return self.writers[0].paraphrases(questions, n)


def qa_writer(method: QAMethod, model_writer: Callable[[], QAWriter]) -> QAWriter:
    """The writer for ``method``; ``model_writer`` is called (a model loaded) only when the
    method needs it."""
    if method == "template":
        return TemplateQAWriter()
    if method == "model":
        return model_writer()
    if method == "both":
        return CombinedQAWriter([model_writer(), TemplateQAWriter()])
    raise ValueError(f"unknown make-qa method {method!r}")
