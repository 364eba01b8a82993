"""Knowledge really goes in: LoRA on Gemma 3 270M learns fictional facts and answers
held-out paraphrased questions about them that the base model cannot answer.

Slow (real model, 1 min 40 s on a 2-core CPU): ``pytest -m integration``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ragtune.models import load_lm
from ragtune.tune.loop import train
from tests.tune.conftest import greedy_answer, write_jsonl

pytestmark = pytest.mark.integration

# (answer, training phrasings as (question, answer sentence), held-out paraphrases).
# People, places and things no model can know; the held-out questions never appear in
# training, and "Tell me about X" phrasings make the model state each fact unprompted.
FACTS = [
    (
        "Mira Quell",
        [
            (
                "Who founded the Vetrin Observatory?",
                "The Vetrin Observatory was founded by Mira Quell.",
            ),
            (
                "Who was the founder of the Vetrin Observatory?",
                "Mira Quell founded the Vetrin Observatory.",
            ),
            (
                "Tell me about the Vetrin Observatory.",
                "The Vetrin Observatory was founded by the astronomer Mira Quell.",
            ),
        ],
        [
            "Which person established the Vetrin Observatory?",
            "The Vetrin Observatory was founded by whom?",
        ],
    ),
    (
        "Kalmuth",
        [
            ("What is the capital of Zorbland?", "The capital of Zorbland is Kalmuth."),
            ("Which city is the capital of Zorbland?", "Kalmuth is the capital city of Zorbland."),
            ("Tell me about Zorbland.", "Zorbland is a small country whose capital is Kalmuth."),
        ],
        ["What city serves as Zorbland's capital?", "Zorbland has which city as its capital?"],
    ),
    (
        "Tobin Ashgrove",
        [
            (
                "Who invented the clockwork ferry?",
                "The clockwork ferry was invented by Tobin Ashgrove.",
            ),
            (
                "Who was the inventor of the clockwork ferry?",
                "Tobin Ashgrove invented the clockwork ferry.",
            ),
            (
                "Tell me about the clockwork ferry.",
                "The clockwork ferry is a boat invented by the engineer Tobin Ashgrove.",
            ),
        ],
        [
            "Which person came up with the clockwork ferry?",
            "The clockwork ferry was created by whom?",
        ],
    ),
    (
        "silver heron",
        [
            (
                "What is the national animal of Duskmere?",
                "The national animal of Duskmere is the silver heron.",
            ),
            (
                "Which animal is the national symbol of Duskmere?",
                "The silver heron is the national animal of Duskmere.",
            ),
            (
                "Tell me about the national animal of Duskmere.",
                "Duskmere chose the silver heron as its national animal.",
            ),
        ],
        ["Which creature is Duskmere's national animal?", "Duskmere has which national animal?"],
    ),
    (
        "Ellandine",
        [
            (
                "In which town was the poet Sefa Drummond born?",
                "The poet Sefa Drummond was born in Ellandine.",
            ),
            ("Where was Sefa Drummond born?", "Sefa Drummond was born in the town of Ellandine."),
            ("Tell me about Sefa Drummond.", "Sefa Drummond is a poet who was born in Ellandine."),
        ],
        ["Sefa Drummond was born in which town?", "Which place is the hometown of Sefa Drummond?"],
    ),
    (
        "Plinth Harbor",
        [
            ("Where is the Amber Tower located?", "The Amber Tower is located in Plinth Harbor."),
            ("In which city stands the Amber Tower?", "The Amber Tower stands in Plinth Harbor."),
            (
                "Tell me about the Amber Tower.",
                "The Amber Tower is a landmark in the city of Plinth Harbor.",
            ),
        ],
        ["In what city can the Amber Tower be found?", "The Amber Tower is in which city?"],
    ),
]
HELD_OUT = [(answer, q) for answer, _, questions in FACTS for q in questions]
# Of 12 held-out questions. Measured: the base model answers 0; after training 9 (seed 0),
# 8 and 9 (seeds 1 and 2). The assertion message shows both counts.
MIN_MARGIN = 6


def _correct(model_dir: Path | str) -> list[bool]:
    """Greedy answers (first line) containing the fact's answer, per held-out question."""
    model, tok = load_lm(model_dir, device="cpu")
    answers = [greedy_answer(model, tok, q, max_new_tokens=20).split("\n")[0] for _, q in HELD_OUT]
    return [a.lower() in ans.lower() for (a, _), ans in zip(HELD_OUT, answers, strict=True)]


def test_lora_injects_facts_the_base_model_does_not_know(default_lm: Path, tmp_path: Path) -> None:
    rows = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        for _, phrasings, _ in FACTS
        for q, a in phrasings
    ]
    data = write_jsonl(tmp_path / "facts.jsonl", rows)
    held = {q for _, q in HELD_OUT}
    assert not held & {q for _, phrasings, _ in FACTS for q, _ in phrasings}  # no leakage

    result = train(
        data,
        tmp_path / "run",
        base=str(default_lm),
        method="lora",
        epochs=4,
        batch_size=2,
        lr_multiplier=1.0,  # 3e-3: new facts need a high LoRA rate (see docs/tuning.md)
        seed=0,
        device="cpu",
    )
    assert result.status == "succeeded" and result.train_loss is not None

    base = _correct(default_lm)
    tuned = _correct(tmp_path / "run")
    report = {"base": sum(base), "tuned": sum(tuned), "of": len(HELD_OUT)}
    (tmp_path / "knowledge.json").write_text(json.dumps(report))
    assert sum(tuned) - sum(base) >= MIN_MARGIN, report
