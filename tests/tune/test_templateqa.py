"""make-qa's rule-based question generation: exact questions and answers on small texts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ragtune.cli import main
from ragtune.evaluate.questions import Question, leaking_examples
from ragtune.evaluate.world import QUESTIONS, make_world
from ragtune.text import normalize_answer
from ragtune.tune.makeqa import (
    check_pair,
    make_qa,
    make_qa_files,
    passage_order,
    split_passages,
    split_title,
)
from ragtune.tune.qa_writers import CombinedQAWriter, TemplateQAWriter, qa_writer
from ragtune.tune.templateqa import (
    find_spans,
    split_clauses,
    split_sentences,
    template_questions,
)
from ragtune.types import Example, Message


def test_a_year_and_a_founder_each_in_several_phrasings() -> None:
    assert template_questions(
        "It was founded in 1887 by Mira Quell, and its river is the Oss.", "Zorbland"
    ) == [
        (
            "1887",
            [
                "What year was Zorbland founded by Mira Quell?",
                "In which year was Zorbland founded by Mira Quell?",
                "Zorbland was founded in what year by Mira Quell?",
            ],
        ),
        (
            "Mira Quell",
            ["By whom was Zorbland founded in 1887?", "Zorbland was founded in 1887 by whom?"],
        ),
        ("Oss", ["What is Zorbland's river?", "Zorbland's river is what?"]),
    ]


def test_a_quantity_with_do_support_and_the_adverb_moved() -> None:
    assert template_questions("Today Zorbland employs 420 people.", "Zorbland") == [
        (
            "420",
            [
                "How many people does Zorbland employ today?",
                "What number of people does Zorbland employ today?",
                "Today Zorbland employs what number of people?",
            ],
        )
    ]


def test_a_relative_clause_becomes_two_statements() -> None:
    sentence = "Mira Quell is a cartographer who was born in 1950 in Tarn."
    assert split_clauses(sentence, "Mira Quell") == [
        "Mira Quell is a cartographer.",
        "Mira Quell was born in 1950 in Tarn.",
    ]
    assert template_questions(sentence, "Mira Quell") == [
        ("cartographer", ["What is Mira Quell?", "Mira Quell is what?"]),
        (
            "1950",
            [
                "What year was Mira Quell born in Tarn?",
                "In which year was Mira Quell born in Tarn?",
                "Mira Quell was born in what year in Tarn?",
            ],
        ),
        (
            "Tarn",
            [
                "In what place was Mira Quell born in 1950?",
                "In which place was Mira Quell born in 1950?",
                "Mira Quell was born in 1950 in what place?",
            ],
        ),
    ]


def test_names_with_their_kind_and_objects_of_a_description() -> None:
    assert template_questions("Zorbland is an independent maker of glass lenses.", "Zorbland") == [
        (
            "glass lenses",
            [
                "What is Zorbland an independent maker of?",
                "Zorbland is an independent maker of what?",
            ],
        )
    ]
    assert template_questions("The river Oss flows through its old harbour.", "Zorbland") == [
        (
            "Oss",
            [
                "What river flows through Zorbland's old harbour?",
                "What is the river that flows through Zorbland's old harbour?",
            ],
        )
    ]
    assert template_questions(
        "Every summer Zorbland hosts the Oss Festival, which draws visitors.", "Zorbland"
    ) == [
        (
            "Oss Festival",
            [
                "Which festival does Zorbland host every summer?",
                "What festival does Zorbland host every summer?",
                "Every summer Zorbland hosts what festival?",
            ],
        )
    ]


def test_places_dates_and_percentages() -> None:
    assert template_questions("The outbreak was first reported in Wuhan in December 2019.") == [
        (
            "Wuhan",
            [
                "In what place was the outbreak first reported in December 2019?",
                "In which place was the outbreak first reported in December 2019?",
                "The outbreak was first reported in what place in December 2019?",
            ],
        ),
        (
            "December 2019",
            [
                "When was the outbreak first reported in Wuhan?",
                "On what date was the outbreak first reported in Wuhan?",
                "The outbreak was first reported in Wuhan when?",
            ],
        ),
    ]
    assert template_questions("About 3.5% of patients died.") == [
        ("3.5%", ["About what percentage of patients died?"])
    ]


def test_no_question_without_a_single_answer() -> None:
    # Both ends of a range, and a number inside parentheses, have no one answer to ask for.
    assert template_questions("Five samples (1.2%) tested positive between 2011 and 2015.") == []
    # A capitalised opener is not a name; the title is what questions name, not an answer.
    assert find_spans("Visitors tour Zorbland on weekdays.", "Zorbland") == []


def test_metadata_and_section_labels_are_not_sentences() -> None:
    text = "RESULTS: Of 120 cases, 30 died. See https://x.org/a for more. Too short."
    assert split_sentences(text) == ["Of 120 cases, 30 died."]


def test_template_pairs_pass_make_qas_checks_with_their_phrasings() -> None:
    doc = (
        "Zorbland",
        "# Zorbland\n\nZorbland is a small town. It was founded in 1887 by Mira Quell.\n\n"
        "Today Zorbland employs 420 people.",
    )
    pairs, report = make_qa([doc], TemplateQAWriter(), paraphrases=2)
    assert [(p.question, p.answer, p.paraphrases) for p in pairs] == [
        ("What is Zorbland?", "small town", ["Zorbland is what?"]),
        (
            "What year was Zorbland founded by Mira Quell?",
            "1887",
            [
                "In which year was Zorbland founded by Mira Quell?",
                "Zorbland was founded in what year by Mira Quell?",
            ],
        ),
        (
            "By whom was Zorbland founded in 1887?",
            "Mira Quell",
            ["Zorbland was founded in 1887 by whom?"],
        ),
        (
            "How many people does Zorbland employ today?",
            "420",
            [
                "What number of people does Zorbland employ today?",
                "Today Zorbland employs what number of people?",
            ],
        ),
    ]
    assert (report.generated, report.kept, report.paraphrases, report.examples) == (4, 4, 6, 10)
    assert sum(report.dropped_by_reason.values()) == 0
    # The paraphrase budget caps the phrasings too.
    pairs, _ = make_qa([doc], TemplateQAWriter(), paraphrases=0)
    assert all(p.paraphrases == [] for p in pairs)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_no_question_of_the_demo_worlds_templates_and_every_fact_asked(seed: int) -> None:
    """No generated question holds one of the demo world's question templates (held-out
    test ones included), by compare's own leak rule (equal, or inside a longer text), so the
    world's unseen-template questions stay unseen; and every fact of the world has a
    question (these sentences are what the rules were written on, so this is the rules'
    best case, not a measure of their yield on real text)."""
    world = make_world(seed=seed)
    templates = [
        Question(f"{f.fact_id}:{i}", t.format(e=f.entity))
        for f in world.facts
        for i, t in enumerate(QUESTIONS[f.relation])
    ]
    passages = [p for d in world.documents for p in split_passages(d.text, d.title)]
    answers, asked = set(), []
    for passage, candidates in zip(passages, TemplateQAWriter().pairs(passages), strict=True):
        for c in candidates:
            asked += [Example([Message("user", q)]) for q in (c.question, *(c.phrasings or ()))]
            if check_pair(c.question, c.answer, passage) is None:
                answers.add(normalize_answer(c.answer))
    leaks = leaking_examples(templates, asked)
    assert not leaks, [asked[i].messages[0].content for i in sorted(leaks)]
    assert {normalize_answer(f.value) for f in world.facts} <= answers


def test_writers_for_each_method() -> None:
    loaded: list[str] = []

    def model() -> TemplateQAWriter:  # stands in for loading the generator model
        loaded.append("model")
        return TemplateQAWriter()

    assert isinstance(qa_writer("template", model), TemplateQAWriter) and loaded == []
    both = qa_writer("both", model)
    assert isinstance(both, CombinedQAWriter) and loaded == ["model"]
    passage = "About Zorbland: It was founded in 1887 by Mira Quell."
    # Both writers offer their candidates; make-qa drops the second copy as a duplicate.
    assert len(both.pairs([passage])[0]) == 2 * len(TemplateQAWriter().pairs([passage])[0])
    assert split_title(passage) == ("Zorbland", "It was founded in 1887 by Mira Quell.")


def test_make_qa_files_adds_the_passages_read_as_raw_text(tmp_path: Path) -> None:
    (tmp_path / "zorbland.md").write_text(
        "# Zorbland\n\nIt was founded in 1887 by Mira Quell.\n", encoding="utf-8"
    )
    records, report = make_qa_files([tmp_path], TemplateQAWriter(), train_docs=True,
                                    method="template")  # fmt: skip
    passage = "About Zorbland: It was founded in 1887 by Mira Quell."
    assert records[-1] == {"messages": [{"role": "assistant", "content": passage}]}
    assert (report.method, report.kept, report.document_examples) == ("template", 2, 1)
    assert len(records) == report.examples + report.document_examples == 5 + 1
    without, report = make_qa_files([tmp_path], TemplateQAWriter(), train_docs=False)
    assert without == records[:-1] and report.document_examples == 0


def test_make_qa_cli_methods(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The default method needs no model; --generator-url with the template method (which
    would ignore it) is refused."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "zorbland.md").write_text(
        "# Zorbland\n\nIt was founded in 1887 by Mira Quell.\n", encoding="utf-8"
    )
    out = tmp_path / "train.jsonl"
    assert main(["make-qa", str(tmp_path / "docs"), "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["method"], report["kept"], report["document_examples"]) == ("template", 2, 1)
    assert len(out.read_text().splitlines()) == report["examples"] + 1
    args = ["make-qa", str(tmp_path / "docs"), "--out", str(tmp_path / "x.jsonl"),
            "--method", "template", "--generator-url", "http://127.0.0.1:9/v1"]  # fmt: skip
    assert main(args) == 2
    assert "--generator-url is not used by --method template" in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists()


def test_passages_without_prose_are_not_read() -> None:
    """A COVID-QA article opens with its title, link and identifiers: not a passage."""
    header = (
        "A study of things https://www.ncbi.nlm.nih.gov/pmc/articles/PMC1/ SHA: 0a1b2c3d "
        "Authors: Ann Author, Bo Writer, Cy Scribe, Di Penman Date: 2020-01-02 "
        "DOI: 10.1000/xyz License: cc-by"
    )
    doc = ("A study", f"{header}\n\nThe outbreak was first reported in Wuhan in December 2019.")
    assert passage_order([doc]) == [
        (0, "About A study: The outbreak was first reported in Wuhan in December 2019.")
    ]
