"""Question files in three layouts, test selection and the leakage check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ragtune.errors import RagtuneError
from ragtune.evaluate.questions import (
    Question,
    find_leaks,
    leaking_examples,
    load_questions,
    select_test,
    write_squad_documents,
)
from ragtune.types import Example, Message

SQUAD = {
    "data": [
        {
            "paragraphs": [
                {
                    "document_id": 42,
                    "context": "Zorbland was founded in 1887.",
                    "qas": [
                        {
                            "id": 7,
                            "question": "When was Zorbland founded?",
                            "answers": [{"text": "1887", "answer_start": 24}],
                        },
                        {"id": 8, "question": "Impossible?", "answers": [], "is_impossible": True},
                    ],
                }
            ]
        }
    ]
}


def test_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text(
        '{"id": "a", "question": "Q1?", "answers": ["x", "y"], "doc_id": "d1", "split": "test"}\n'
        "\n"
        '{"id": "b", "question": "Q2?", "answers": "z", "split": "train"}\n'
    )
    assert load_questions(path) == [
        Question("a", "Q1?", ["x", "y"], ["d1"], "test"),
        Question("b", "Q2?", ["z"], [], "train"),
    ]


def test_squad(tmp_path: Path) -> None:
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(SQUAD))
    assert load_questions(path) == [
        Question("7", "When was Zorbland founded?", ["1887"], ["42.txt"])
    ]
    written = write_squad_documents(SQUAD, tmp_path / "docs")
    assert [p.name for p in written] == ["42.txt"]
    assert written[0].read_text() == "Zorbland was founded in 1887."


def test_beir_queries_with_qrels(tmp_path: Path) -> None:
    (tmp_path / "q.jsonl").write_text('{"_id": "1", "text": "a claim"}\n')
    (tmp_path / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n1\td9\t1\n1\td3\t0\n")
    assert load_questions(tmp_path / "q.jsonl", tmp_path / "qrels.tsv") == [
        Question("1", "a claim", [], ["d9"])
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{bad json\n", "invalid JSON"),
        ('{"foo": 1}\n', "expected"),
        ('{"question": "q", "split": "dev"}\n', "split must be"),
        ("", "No questions"),
    ],
)
def test_bad_question_files(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text(content)
    with pytest.raises(RagtuneError, match=message):
        load_questions(path)


def test_select_test_is_seeded() -> None:
    qs = [Question(str(i), f"q{i}", split="test" if i % 4 else "train") for i in range(20)]
    test = select_test(qs, None, 0)
    assert len(test) == 15 and all(q.split == "test" for q in test)
    sub = select_test(qs, 5, seed=1)
    assert sub == select_test(qs, 5, seed=1) and len(sub) == 5


def test_leakage_check() -> None:
    test = [
        Question("1", "When was Zorbland founded?"),
        Question("2", "Who is the founder of the Velmora Guild?"),
    ]
    train = [
        Example([Message("user", "when was zorbland  founded"), Message("assistant", "1887")]),
        Example(
            [
                Message("user", "In what year was Zorbland established?"),
                Message("assistant", "1887"),
            ]
        ),
    ]
    assert find_leaks(test, train) == ["1: When was Zorbland founded?"]
    embedded = [Example([Message("assistant", "FAQ: who is the founder of the velmora guild? X")])]
    assert find_leaks(test, embedded) == ["2: Who is the founder of the Velmora Guild?"]
    assert leaking_examples(test, train) == {0}
    assert leaking_examples(test, [*train, *embedded, train[0]]) == {0, 2, 3}
