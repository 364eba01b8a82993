"""The demo's fictional world."""

from __future__ import annotations

import json
from pathlib import Path

from ragtune.evaluate.questions import find_leaks, load_questions
from ragtune.evaluate.world import make_world, write_world
from ragtune.tune.data import load_examples


def test_world_is_deterministic_and_consistent() -> None:
    a, b = make_world(seed=3), make_world(seed=3)
    assert a == b
    assert make_world(seed=4) != a
    assert len(a.facts) == 4 * 5 + 6 * 4 + 4 * 3
    docs = {d.doc_id: d.text for d in a.documents}
    for f in a.facts:
        assert f.value in docs[f.doc_id]  # every fact is stated in its document
        assert f.test_question not in f.train_questions


def test_written_world_has_no_leakage(tmp_path: Path) -> None:
    world = make_world(seed=0)
    files = write_world(
        world, tmp_path, answer_format='{"answer": "{answer}"}', instruction="Be JSON."
    )
    questions = load_questions(files["questions"])
    assert len(questions) == len(world.facts) and {q.split for q in questions} == {"test"}
    examples = list(load_examples(files["train"]))
    # Per fact: its 4 phrasings minus the test one and the relation's held-out template.
    assert len(examples) == sum(len(f.train_questions) for f in world.facts) == 140
    assert find_leaks(questions, examples) == []
    first = json.loads(files["train"].read_text().splitlines()[0])
    assert first["messages"][0] == {"role": "system", "content": "Be JSON."}
    assert first["messages"][2]["content"] == json.dumps({"answer": world.facts[0].value})
    assert sorted(p.relative_to(files["docs"]).as_posix() for p in files["docs"].rglob("*.md")) == (
        sorted(d.doc_id for d in world.documents)
    )
