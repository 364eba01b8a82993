"""The fairness rules of the comparison, one test each (tiny models, no real data)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ragtune.errors import RagtuneError
from ragtune.evaluate.compare import run_compare
from ragtune.evaluate.prepare import demonstrations, prepare_documents
from ragtune.evaluate.questions import Question, load_questions, select_test
from ragtune.evaluate.refresh import retention
from ragtune.evaluate.scoring import aggregate, score_answer
from ragtune.evaluate.settings import CompareInputs, CompareSettings, validate
from ragtune.evaluate.world import QUESTIONS, make_world, write_world


def _hit(doc: str, text: str) -> dict[str, object]:
    return {"chunk": {"doc_id": doc, "text": text, "chunk_id": f"{doc}#0"}}


def test_model_citations_and_attributed_ones_are_scored_apart() -> None:
    q = Question("1", "When was Zorbland founded?", ["1887"], ["z.md"])
    hits = [_hit("y.md", "Other text."), _hit("z.md", "Zorbland was founded in 1887.")]
    gold_cite = {"doc_id": "z.md", "text": "Zorbland was founded in 1887.", "chunk_id": "z"}
    # The model cited [1] (wrong) and [2] (right) itself.
    own = {"answer": "1887 [2]", "hits": hits, "citations": [{**gold_cite, "how": "model"}],
           "model_markers": [1, 2]}  # fmt: skip
    # The model cited nothing; ragtune attributed the answer to the right source.
    attributed = {
        "answer": "1887 [2]",
        "hits": hits,
        "citations": [{**gold_cite, "how": "attributed"}],
        "model_markers": [],
    }
    a, b = score_answer(q, own, None, rag=True), score_answer(q, attributed, None, rag=True)
    assert (a["cited"], a["attributed"], a["model_markers"], a["model_markers_correct"]) == (
        1.0, 0.0, 2, 1,
    )  # fmt: skip
    assert (b["cited"], b["attributed"], b["model_markers"], b["model_markers_correct"]) == (
        0.0, 1.0, 0, 0,
    )  # fmt: skip
    assert a["citation_correct"] == b["citation_correct"] == 1.0  # final citations: both right
    m = aggregate([a, b], seed=0)
    assert m["citations_model_precision"] == 0.5  # 1 of the model's 2 markers
    assert m["cited_share"] == 0.5 and m["attributed_share"] == 0.5
    assert aggregate([b, b], seed=0)["citations_model_precision"] is None  # never cited
    closed = aggregate([score_answer(q, {"answer": "1887"}, None, rag=False)], seed=0)
    assert closed["cited_share"] is None and closed["citations_model_precision"] is None


def _squad(path: Path) -> Path:
    data = {"data": [{"title": "T", "paragraphs": [
        {"document_id": str(i), "context": f"Context {i} says the answer is {i}{i}.",
         "qas": [{"id": f"q{i}", "question": f"What does context {i} say?",
                  "answers": [{"text": f"{i}{i}", "answer_start": 0}]}]}
        for i in range(5)
    ]}]}  # fmt: skip
    path.write_text(json.dumps(data))
    return path


def test_squad_corpus_holds_every_context_whatever_max_questions(tmp_path: Path) -> None:
    squad = _squad(tmp_path / "qa.json")
    test = select_test(load_questions(squad), limit=2, seed=0)
    assert len(test) == 2
    state = tmp_path / "state"
    state.mkdir()
    roots = prepare_documents(state, CompareInputs(questions=squad))
    files = sorted(p.name for r in roots for p in r.iterdir())
    assert files == [f"{i}.txt" for i in range(5)]  # all 5 contexts, not the 2 sampled


def test_no_test_template_appears_in_training(tmp_path: Path) -> None:
    world = make_world(seed=0)
    files = write_world(world, tmp_path)
    trained = {
        json.loads(line)["messages"][0]["content"]
        for line in files["train"].read_text().splitlines()
    }
    templates = {rel: [re.escape(t).replace(re.escape("{e}"), ".+") for t in ts]
                 for rel, ts in QUESTIONS.items()}  # fmt: skip

    def template(rel: str, question: str) -> int:
        return next(i for i, t in enumerate(templates[rel]) if re.fullmatch(t, question))

    used = {(f.relation, template(f.relation, q)) for f in world.facts for q in f.train_questions}
    assert all(q in trained for f in world.facts for q in f.train_questions)
    groups = {"seen_template": 0, "unseen_template": 0}
    for f, rec in zip(world.facts, load_questions(files["questions"]), strict=True):
        assert rec.question == f.test_question and rec.question not in trained
        seen = (f.relation, template(f.relation, f.test_question)) in used
        assert rec.group == ("seen_template" if seen else "unseen_template")
        groups[rec.group] += 1
    assert groups == {"seen_template": 28, "unseen_template": 28}


def test_demonstrations_come_from_training_examples(tmp_path: Path) -> None:
    train = tmp_path / "train.jsonl"
    rows = [
        {
            "messages": [
                {"role": "system", "content": "S"},
                {"role": "user", "content": f"Q{i}?"},
                {"role": "assistant", "content": f"A{i}"},
            ]
        }
        for i in range(10)
    ]
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    demos = demonstrations(train, 2, seed=0)
    assert len(demos) == 2 and all(d in [(f"Q{i}?", f"A{i}") for i in range(10)] for d in demos)
    assert demonstrations(train, 2, seed=0) == demos  # seeded
    assert demonstrations(train, 0, seed=0) == []
    builtin = demonstrations(None, 2, seed=0)  # no training data: the same built-in ones
    assert len(builtin) == 2 and all("[" not in a for _, a in builtin)


def test_retention_counts_only_facts_answered_before() -> None:
    assert retention([1.0, 1.0, 0.0, 1.0], [1.0, 0.0, 1.0, 1.0]) == (2 / 3, 3, 2)
    assert retention([0.0, 0.0], [1.0, 1.0]) == (None, 0, 0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"epochs": 0}, "--epochs must be positive"),
        ({"lr_multiplier": -1.0}, "--lr-multiplier must be positive"),
        ({"k": 0}, "-k must be positive"),
        ({"arms": ("base", "nope")}, "Unknown arm"),
        ({"chunk_tokens": 10, "chunk_overlap": 10}, "--chunk-overlap must be smaller"),
        ({"dtype": "float8"}, "Unknown dtype"),
        ({"qa_method": "magic"}, "Unknown make-qa method"),
    ],
)
def test_bad_settings_are_rejected(change: dict[str, object], message: str, tmp_path: Path) -> None:
    squad = _squad(tmp_path / "qa.json")
    settings = CompareSettings(**change)  # type: ignore[arg-type]
    with pytest.raises(RagtuneError, match=re.escape(message)):
        validate(settings, CompareInputs(questions=squad))


def test_bad_settings_fail_before_any_state_and_the_fix_runs(tmp_path: Path, tiny_lm: Path) -> None:
    squad = _squad(tmp_path / "qa.json")
    out = tmp_path / "report"
    inputs = CompareInputs(questions=squad)
    with pytest.raises(RagtuneError, match="--max-new-tokens must be positive"):
        run_compare(CompareSettings(model=str(tiny_lm), arms=("base",), max_new_tokens=0),
                    inputs, out)  # fmt: skip
    with pytest.raises(RagtuneError, match="--train file not found"):
        missing = CompareInputs(questions=squad, train=tmp_path / "missing.jsonl")
        run_compare(CompareSettings(model=str(tiny_lm), arms=("base",)), missing, out)
    assert not out.exists()  # nothing written
    # An unfinished run with other settings (it failed later) does not block the fix.
    (out / "state").mkdir(parents=True)
    (out / "state" / "settings.json").write_text('{"settings": "older"}')
    (out / "state" / "arm-base.json").write_text("{}")  # a stale partial result
    (out / "ft-run" / "checkpoints").mkdir(parents=True)  # a run with the other settings
    good = CompareSettings(model=str(tiny_lm), arms=("base",), max_new_tokens=4, device="cpu")
    results = run_compare(good, inputs, out)
    assert results["arms"]["base"]["n"] == 5
    assert not (out / "ft-run").exists()  # never resumed under the new settings
    # A finished report with other settings is never mixed with new results.
    with pytest.raises(RagtuneError, match="different settings"):
        run_compare(CompareSettings(model=str(tiny_lm), arms=("base",), max_new_tokens=5),
                    inputs, out)  # fmt: skip


def test_make_qa_training_data_reports_coverage(
    world_docs: Path, tmp_path: Path, tiny_lm: Path
) -> None:
    """Without --train, make-qa runs (in a child process) on the documents; what it kept
    and dropped is saved before anything is trained. The tiny model writes no usable pair,
    so the comparison stops with the reasons, and the coverage says 0 of 4 documents."""
    settings = CompareSettings(
        model=str(tiny_lm), arms=("base", "ft"), max_qa_pairs=4, qa_method="model"
    )
    questions = world_docs.parent / "questions.jsonl"
    out = tmp_path / "report"
    with pytest.raises(RagtuneError, match="make-qa produced no usable training examples"):
        run_compare(settings, CompareInputs(questions, (world_docs,)), out)
    cov = json.loads((out / "state" / "coverage.json").read_text())
    assert (cov["documents"], cov["documents_covered"], cov["pairs_kept"]) == (4, 0, 0)
    assert cov["pairs_dropped"] == cov["pairs_generated"] == sum(cov["dropped_by_reason"].values())
    assert cov["generate_s"] > 0 and cov["pairs_generated"] > 0
    assert cov["method"] == "model"


def test_template_make_qa_covers_the_documents_and_trains_on_their_text(
    world_docs: Path, tmp_path: Path, tiny_lm: Path
) -> None:
    """The default make-qa method (templates, no model) covers every document of the world;
    the passages it read are trained on too, and the coverage says so."""
    settings = CompareSettings(
        model=str(tiny_lm), arms=("ft",), max_new_tokens=4, device="cpu", epochs=1
    )
    questions = world_docs.parent / "questions.jsonl"
    results = run_compare(settings, CompareInputs(questions, (world_docs,)), tmp_path / "r")
    cov = results["coverage"]
    assert (cov["method"], cov["documents"], cov["documents_covered"]) == ("template", 4, 4)
    assert cov["pairs_kept"] + cov["pairs_dropped"] == cov["pairs_generated"]
    assert cov["document_examples"] == cov["passages"] > 0
    train = (tmp_path / "r" / "state" / "train.jsonl").read_text().splitlines()
    raw = [r for r in map(json.loads, train) if len(r["messages"]) == 1]
    assert len({r["messages"][0]["content"] for r in raw}) == cov["document_examples"]


@pytest.fixture
def world_docs(tmp_path: Path) -> Path:
    world = make_world(seed=1, n_orgs=1, n_people=2, n_places=1)
    return write_world(world, tmp_path / "world")["docs"]
