"""Batched greedy generation with the tiny in-process LM."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragtune.errors import RagtuneError
from ragtune.generate.engine import Generator, cut_at_stop

PROMPTS = [
    "Question: What is the capital of France?\nAnswer:",
    "The quick brown fox",
    "Source [1]: the sea is blue. Source [2]: grass is green. Cite sources in brackets. "
    "Question: what colour is grass?\nAnswer:",
    "Zorbland",
]


@pytest.fixture(scope="module")
def generator(tiny_lm: Path) -> Generator:
    return Generator.load(str(tiny_lm), device="cpu", dtype="float32")


def test_batched_equals_one_at_a_time(generator: Generator) -> None:
    one = [generator.generate([p], max_new_tokens=8, stop=())[0] for p in PROMPTS]
    batched = generator.generate(PROMPTS, max_new_tokens=8, stop=(), batch_size=4)
    assert [g.text for g in batched] == [g.text for g in one]
    assert [g.new_tokens for g in batched] == [8, 8, 8, 8]
    assert [g.finish for g in batched] == ["length"] * 4
    assert [g.prompt_tokens for g in batched] == [generator.count_tokens(p) for p in PROMPTS]


def test_order_is_kept_across_batches(generator: Generator) -> None:
    done: list[int] = []
    out = generator.generate(
        PROMPTS * 2, max_new_tokens=4, stop=(), batch_size=3, progress=done.append
    )
    assert [g.text for g in out[:4]] == [g.text for g in out[4:]]
    assert done == [3, 3, 2]


def test_stop_strings_cut_the_text(generator: Generator) -> None:
    free = generator.generate(PROMPTS[:1], max_new_tokens=12, stop=())[0]
    assert len(free.text) > 2
    stop = free.text[1:3]  # something the model is known to produce
    cut = generator.generate(PROMPTS[:1], max_new_tokens=12, stop=(stop,))[0]
    assert cut.finish == "stop"
    assert cut.text == cut_at_stop(free.text, (stop,))[0].strip()


def test_cut_at_stop() -> None:
    assert cut_at_stop("Paris\nQuestion: x", ("\nQuestion:", "\n\n")) == ("Paris", True)
    assert cut_at_stop("a\n\nb\nQuestion:", ("\nQuestion:", "\n\n")) == ("a", True)
    assert cut_at_stop("Paris", ("\n",)) == ("Paris", False)


def test_prompt_longer_than_the_context_is_refused(generator: Generator) -> None:
    with pytest.raises(RagtuneError, match="exceeds the model's context"):
        generator.generate(["word " * 3000], max_new_tokens=4)


def test_matches_transformers_generate(generator: Generator) -> None:
    """Parity with the reference implementation: HF greedy generate, one prompt at a time."""
    import torch

    tok, model = generator.tokenizer, generator.model
    for prompt in PROMPTS:
        ids = tok(prompt, return_tensors="pt")
        with torch.inference_mode():
            ref = model.generate(**ids, max_new_tokens=8, do_sample=False, eos_token_id=-1,
                                 pad_token_id=tok.pad_token_id)  # fmt: skip
        expected = tok.decode(ref[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
        assert generator.generate([prompt], max_new_tokens=8, stop=())[0].text == expected.strip()
