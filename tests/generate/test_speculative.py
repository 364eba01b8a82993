"""Prompt-lookup speculative decoding (tiny model, fp32): greedy tokens identical to plain
decoding, through rejected drafts (their K/V rolled back by position) and sliding-window
layers whose ring has wrapped."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ragtune.generate.engine import Generator, SamplingParams
from ragtune.generate.gemma import Batch
from ragtune.generate.quant import int8_gemm_available
from ragtune.generate.scheduler import DRAFT_ROWS, draft_length, prompt_lookup

# repeated phrases: the drafts find matches; long enough to pass the tiny model's
# 64-token sliding window, so the rings wrap while drafts are verified
PROMPTS = [
    "the cat sat on the mat. the cat sat on the mat. the cat sat on the",
    "Question: What is the capital of France?\nAnswer: Paris. " * 4 + "Question: What is",
    "one two three four five six seven eight nine ten one two three four five six seven"
    " eight nine ten one two three",
]


def test_prompt_lookup_takes_the_most_recent_longest_match() -> None:
    assert prompt_lookup([1, 2, 3, 9, 1, 2, 3, 7, 8, 1, 2, 3], k=2) == [7, 8]
    assert prompt_lookup([5, 1, 2, 6, 1, 4, 4, 2], k=3) == [6, 1, 4]  # 1-gram "2"
    assert prompt_lookup([1, 2, 3, 4], k=3) == []  # no earlier occurrence
    assert prompt_lookup([4, 5, 6, 4, 5], k=10) == [6, 4, 5]  # up to the end
    assert prompt_lookup([7], k=3) == []


def test_draft_length_keeps_a_step_within_its_rows() -> None:
    assert DRAFT_ROWS == 8
    assert [draft_length(4, n) for n in (1, 2, 3, 4, 5, 16)] == [4, 3, 1, 1, 0, 0]
    assert draft_length(2, 1) == 2 and draft_length(0, 1) == 0


@pytest.mark.skipif(not int8_gemm_available(), reason="no fbgemm in this torch")
def test_int8_speculative_equals_int8_plain(tiny_lm: Path) -> None:
    """The int8 GEMM gives each row the same result in any batch, so verifying a draft in
    one pass yields plain int8 decoding's tokens."""
    kw = dict(device="cpu", dtype="float32", quantize="int8", slots=2, max_seq_len=256)
    plain = Generator.load(str(tiny_lm), **kw)  # type: ignore[arg-type]
    spec = Generator.load(str(tiny_lm), **kw, speculate=4)  # type: ignore[arg-type]
    params = SamplingParams(max_tokens=24)
    for p in PROMPTS:
        assert spec.submit(p, params).result().text == plain.submit(p, params).result().text
    assert spec.scheduler.accepted > 0
    plain.close()
    spec.close()


@pytest.fixture(scope="module")
def generators(tiny_lm: Path) -> tuple[Generator, Generator]:
    kw = dict(device="cpu", dtype="float32", slots=4, max_seq_len=256)
    plain = Generator.load(str(tiny_lm), **kw)  # type: ignore[arg-type]
    spec = Generator.load(str(tiny_lm), **kw, speculate=4)  # type: ignore[arg-type]
    yield plain, spec
    plain.close()
    spec.close()


def test_greedy_tokens_equal_plain_decoding(generators: tuple[Generator, Generator]) -> None:
    plain, spec = generators
    assert spec.scheduler.engine.cache.ring == 64 + 4
    n = 40
    params = SamplingParams(max_tokens=n)
    ref = [plain.submit(p, params).result() for p in PROMPTS]
    sched = spec.scheduler
    steps0 = sched.steps
    alone = [spec.submit(p, params).result() for p in PROMPTS]
    batched = [h.result() for h in [spec.submit(p, params) for p in PROMPTS]]
    for a, b, c in zip(ref, alone, batched, strict=True):
        assert b.text == a.text and c.text == a.text
        assert b.completion_tokens == a.completion_tokens == c.completion_tokens
    # the drafts were used: some accepted (fewer steps than tokens), some rejected
    assert sched.accepted > 0 and sched.drafted > sched.accepted
    tokens = sum(c.completion_tokens for c in alone)
    assert sched.steps - steps0 < 2 * tokens


def test_a_verified_draft_reads_its_slot_once(generators: tuple[Generator, Generator]) -> None:
    """Rows that all sit in one slot (a request and its draft) attend to that slot's
    cache read once (``shared_slot``): the logits of the path that gathers a copy per row,
    and of decoding the same tokens one step at a time, past the sliding window."""
    _, spec = generators
    eng, tok = spec.scheduler.engine, spec.tokenizer
    ids = torch.tensor(tok(PROMPTS[1])["input_ids"])
    T, fed = len(ids) - 4, ids[-4:]
    assert eng.spec.window < T  # the ring has wrapped
    slot = 2
    pos = torch.arange(T - 1, T + 3)
    tokens = torch.cat([ids[T - 1 : T], fed[:3]])
    with torch.inference_mode():
        eng.prefill(ids[: T - 1], slot, -1)
        one_by_one = [
            eng.logits(eng.decode(t[None], Batch(torch.tensor([slot]), p[None], None, False)))
            for t, p in zip(tokens, pos, strict=True)
        ]
        rows = Batch(torch.tensor([slot] * 4), pos, None, False)
        gathered = eng.logits(eng.decode(tokens, rows))
        rows.shared_slot = slot
        shared = eng.logits(eng.decode(tokens, rows))
    torch.testing.assert_close(shared, gathered, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shared, torch.cat(one_by_one), atol=1e-5, rtol=1e-5)
    assert shared.argmax(-1).tolist() == gathered.argmax(-1).tolist()


def test_max_tokens_and_sampling_are_kept(generators: tuple[Generator, Generator]) -> None:
    plain, spec = generators
    for n in (1, 2, 5):
        out = spec.submit(PROMPTS[0], SamplingParams(max_tokens=n)).result()
        assert out.completion_tokens <= n
        assert out.text == plain.submit(PROMPTS[0], SamplingParams(max_tokens=n)).result().text
    sampled = SamplingParams(max_tokens=8, temperature=0.8, seed=3)
    drafted = spec.scheduler.drafted
    a = spec.submit(PROMPTS[1], sampled).result()
    assert spec.scheduler.drafted == drafted  # sampled requests are never drafted
    assert a.text == plain.submit(PROMPTS[1], sampled).result().text


def test_ask_with_speculate(tiny_lm: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from ragtune.cli import main

    args = ["ask", PROMPTS[0], "--model", str(tiny_lm), "--device", "cpu", "--dtype", "float32"]
    answers = []
    for extra in ([], ["--speculate", "3"]):
        assert main([*args, *extra, "--json", "--max-new-tokens", "12"]) == 0
        answers.append(json.loads(capsys.readouterr().out)["answer"])
    assert answers[0] == answers[1]
    assert main([*args, "--speculate", "-1"]) != 0
    assert "speculate must be 0" in capsys.readouterr().err
