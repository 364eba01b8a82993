"""make-qa: candidate checks, counting, paraphrases, and the endpoint writer."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from ragtune.tune.makeqa import (
    Candidate,
    answer_spans,
    asks_for,
    check_pair,
    check_paraphrase,
    clause_with,
    make_qa,
    resolve_pronoun,
    split_passages,
    to_examples,
)
from ragtune.tune.qa_endpoint import EndpointQAWriter

DOC = (
    "Zorbland",
    "# Zorbland\n\nZorbland is a small town. It was founded in 1887 by Mira Quell, and its "
    "river is the Oss.\n\nThe town has 4,200 inhabitants.",
)


def test_split_passages_leads_with_the_title() -> None:
    assert split_passages(DOC[1], DOC[0], max_chars=80) == [
        "About Zorbland: Zorbland is a small town.",
        "About Zorbland: It was founded in 1887 by Mira Quell, and its river is the Oss.",
        "About Zorbland: The town has 4,200 inhabitants.",
    ]


def test_answer_spans_and_clauses() -> None:
    s = "Zorbland was founded in 1887 by Mira Quell, and its river is the Oss."
    assert answer_spans(s, "Zorbland") == ["1887", "Mira Quell", "Oss"]
    assert answer_spans("The town has 4,200 inhabitants.") == ["4,200"]
    assert resolve_pronoun("It was founded in 1887.", "Zorbland") == "Zorbland was founded in 1887."
    assert resolve_pronoun("Its river is the Oss.", "Zorbland") == "Zorbland's river is the Oss."
    assert clause_with(s, "Oss") == "its river is the Oss."
    assert clause_with(s, "1887") == "Zorbland was founded in 1887 by Mira Quell."


@pytest.mark.parametrize(
    ("question", "answer", "why"),
    [
        ("When was Zorbland founded?", "1887", None),
        ("When was Zorbland founded?", "in 1887", None),
        ("When was Zorbland founded?", "1901", "unsupported"),
        ("When was it founded?", "1887", "malformed"),  # names nothing from the passage
        ("When was Zorbland founded", "1887", "malformed"),  # not a question
        ("Was Zorbland founded in 1887?", "1887", "malformed"),  # answer inside the question
        ("When was Zorbland founded?", "", "malformed"),
        ("When was Zorbland ___ by Mira Quell?", "1887", "malformed"),  # the cloze blank
    ],
)
def test_check_pair(question: str, answer: str, why: str | None) -> None:
    passage = "About Zorbland: It was founded in 1887 by Mira Quell."
    assert check_pair(question, answer, passage) == why


def test_check_paraphrase() -> None:
    q = "When was Zorbland founded?"
    assert check_paraphrase(q, "In what year was Zorbland established?")
    assert not check_paraphrase(q, "when was zorbland founded?")  # the same question
    assert not check_paraphrase(q, "What is the weather like today?")  # unrelated
    assert not check_paraphrase(q, "In what year was Zorbland established")  # no "?"
    assert not check_paraphrase("Who founded Zorbland?", "Zorbland was founded in which year?")
    assert check_paraphrase("Who founded Zorbland?", "Zorbland was founded by whom?")


def test_asks_for() -> None:
    assert asks_for("How many people work at Zorbland?") == "quantity"
    assert asks_for("Zorbland was founded in which year?") == "time"
    assert asks_for("Whose idea was Zorbland?") == "person"
    assert asks_for("In which city is Zorbland?") == "place"
    assert asks_for("What does Zorbland make?") is None


class FakeWriter:
    """Canned candidates: one good, one unsupported, one inconsistent, one malformed."""

    def pairs(self, passages: Sequence[str]) -> list[list[Candidate]]:
        out: list[list[Candidate]] = [[] for _ in passages]
        out[-1] = [
            Candidate("When was Zorbland founded?", "1887", intended="1887"),
            Candidate("Who founded Zorbland?", "Tom Jones", intended="Mira Quell"),
            Candidate("Who founded Zorbland?", "Oss", intended="Mira Quell"),
            Candidate("What is it?", "a town"),
        ]
        return out

    def paraphrases(self, questions: Sequence[str], n: int) -> list[list[str]]:
        return [["In what year was Zorbland established?", q, "Nonsense"][:n] for q in questions]


def test_make_qa_counts_every_drop() -> None:
    pairs, report = make_qa([DOC], FakeWriter(), paraphrases=3)
    assert (report.passages, report.generated, report.kept) == (1, 4, 1)
    assert (report.dropped_unsupported, report.dropped_inconsistent, report.dropped_malformed) == (
        1,
        1,
        1,
    )
    assert [(p.question, p.answer, p.paraphrases) for p in pairs] == [
        ("When was Zorbland founded?", "1887", ["In what year was Zorbland established?"])
    ]
    assert report.examples == 2
    assert report.dropped_by_reason == {
        "unsupported": 1,
        "inconsistent": 1,
        "malformed": 1,
        "duplicate": 0,
        "over_budget": 0,
    }
    assert (report.documents, report.documents_covered) == (1, 1)
    assert pairs[0].doc == 0
    assert to_examples(pairs, system="Be brief.")[1] == {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "In what year was Zorbland established?"},
            {"role": "assistant", "content": "1887"},
        ]
    }


class RecordingWriter:
    """No candidates; remembers which passages it was asked about."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def pairs(self, passages: Sequence[str]) -> list[list[Candidate]]:
        self.seen = list(passages)
        return [[] for _ in passages]

    def paraphrases(self, questions: Sequence[str], n: int) -> list[list[str]]:
        return [[] for _ in questions]


def test_a_pair_budget_takes_passages_from_every_document_in_turn() -> None:
    docs = [
        (title, " ".join(f"{title} sentence number {i} is here." for i in range(20)))
        for title in ("Alpha", "Beta", "Gamma")
    ]
    writer = RecordingWriter()
    _, report = make_qa(docs, writer, max_pairs=2)
    assert report.passages == 4
    assert [p.split(":")[0] for p in writer.seen] == [
        "About Alpha",
        "About Beta",
        "About Gamma",
        "About Alpha",
    ]


@pytest.fixture
def endpoint() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            prompt = body["messages"][0]["content"]
            if "Rewrite this question" in prompt:
                content = 'Sure: ["In what year was Zorbland established?", "Zorbland dates from?"]'
            else:
                content = json.dumps([{"question": "When was Zorbland founded?", "answer": "1887"}])
            reply = {"choices": [{"message": {"role": "assistant", "content": content}}]}
            data = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()


def test_endpoint_writer(endpoint: str) -> None:
    writer = EndpointQAWriter(endpoint, "any-model")
    pairs, report = make_qa([DOC], writer, paraphrases=2)
    assert (report.passages, report.generated, report.kept) == (1, 1, 1)
    assert pairs[0].paraphrases == [
        "In what year was Zorbland established?",
        "Zorbland dates from?",
    ]


class SameQuestionWriter:
    """The same candidate for every passage."""

    def pairs(self, passages: Sequence[str]) -> list[list[Candidate]]:
        pair = Candidate("When was Zorbland founded?", "1887", intended="1887")
        return [[pair] for _ in passages]

    def paraphrases(self, questions: Sequence[str], n: int) -> list[list[str]]:
        return [[] for _ in questions]


def test_make_qa_reports_coverage_of_the_documents() -> None:
    """The candidate is supported by Zorbland's passage only: the other document is not
    covered, and the second copy of Zorbland's pair is dropped as a duplicate."""
    other = ("Velmora", "Velmora is a town of 4000 people. It lies on the Tern river bank.")
    _, report = make_qa([DOC, other, DOC], SameQuestionWriter(), paraphrases=0)
    assert (report.documents, report.documents_covered, report.passages) == (3, 1, 3)
    assert report.dropped_by_reason == {
        "unsupported": 1,
        "inconsistent": 0,
        "malformed": 0,
        "duplicate": 1,
        "over_budget": 0,
    }
    assert report.kept == 1
