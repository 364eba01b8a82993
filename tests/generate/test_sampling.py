"""Sampling, seeds, stop strings, max_tokens, logprobs and streaming (tiny model)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from ragtune.generate.engine import Generator, SamplingParams
from ragtune.generate.sampling import Detokenizer, argmax_rows, first_stop, top_p_filter
from ragtune.models import load_lm

PROMPT = "Question: What is the capital of France?\nAnswer:"


@pytest.fixture(scope="module")
def generator(tiny_lm: Path) -> Iterator[Generator]:
    g = Generator.load(str(tiny_lm), device="cpu", dtype="float32", slots=4, max_seq_len=256)
    yield g
    g.close()


def test_top_p_keeps_the_smallest_nucleus() -> None:
    p = torch.tensor([0.1, 0.5, 0.3, 0.1])
    torch.testing.assert_close(top_p_filter(p, 0.7), torch.tensor([0.0, 0.625, 0.375, 0.0]))
    torch.testing.assert_close(top_p_filter(p, 0.5), torch.tensor([0.0, 1.0, 0.0, 0.0]))
    assert top_p_filter(p, 1.0) is p


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_argmax_rows_is_torchs_argmax_ties_and_nans_included(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    # coarse values: many ties within a row, and across blocks (block 16, 8 blocks a row)
    x = torch.randint(-20, 20, (64, 128), generator=gen).to(dtype)
    x[1] = 5.0  # one value everywhere: index 0
    x[2, [7, 40, 41, 127]] = 99.0  # tied maxima in several blocks: the first
    x[3, 50] = float("nan")  # a NaN is the maximum
    x[4, [90, 17]] = float("nan")  # the first NaN, also before a larger value
    x[4, 3] = float("inf")
    x[5] = float("-inf")  # nothing larger than -inf: index 0
    x[6, 33] = float("inf")
    x[6, 120] = float("inf")
    want = x.argmax(-1)
    got = argmax_rows(x, block=16)
    assert got.dtype == want.dtype
    assert torch.equal(got, want)
    assert got[:7].tolist() == [int(want[0]), 0, 7, 50, 17, 0, 33]
    for row in x[:8]:  # one row, (V,) -> a 0-d index
        assert argmax_rows(row, block=16).shape == ()
        assert int(argmax_rows(row, block=16)) == int(row.argmax())
    three = x.view(4, 16, 128)  # leading dimensions are kept
    assert torch.equal(argmax_rows(three, block=32), three.argmax(-1))
    # a vocabulary that is no multiple of the block: torch's argmax itself
    assert torch.equal(argmax_rows(x[:, :100], block=16), x[:, :100].argmax(-1))


def test_first_stop() -> None:
    assert first_stop("ab\nQ: x\n\n", ("\n\n", "\nQ:")) == 2
    assert first_stop("abc", ("x",)) == -1
    assert first_stop("a.a.", (".",), start=2) == 3


def test_seed_reproduces_a_sample_even_in_a_batch(generator: Generator) -> None:
    params = SamplingParams(max_tokens=10, temperature=1.5, seed=7)
    a = generator.submit(PROMPT, params).result().text
    others = [generator.submit("The quick", SamplingParams(max_tokens=10, temperature=1.0))
              for _ in range(2)]  # fmt: skip
    b = generator.submit(PROMPT, params).result().text
    for h in others:
        h.result()
    assert a == b
    texts = {generator.submit(PROMPT, SamplingParams(10, 1.5, seed=s)).result().text
             for s in range(6)}  # fmt: skip
    assert len(texts) > 1  # different seeds sample different continuations
    greedy = generator.submit(PROMPT, SamplingParams(max_tokens=10)).result().text
    assert generator.submit(PROMPT, SamplingParams(10, 0.0, seed=3)).result().text == greedy


def test_max_tokens_and_streaming(generator: Generator) -> None:
    h = generator.submit(PROMPT, SamplingParams(max_tokens=7))
    deltas = list(h)
    c = h.result()
    assert c.completion_tokens == 7 and c.finish_reason == "length"
    assert len(deltas) == 7
    assert "".join(d.text for d in deltas) == c.text
    assert [d.token_id for d in deltas] == h._req.tokens
    assert c.prompt_tokens == generator.count_tokens(PROMPT)


def test_stop_string_cuts_output_and_stream(generator: Generator) -> None:
    free = generator.submit(PROMPT, SamplingParams(max_tokens=12)).result().text
    stop = free[3:5]
    h = generator.submit(PROMPT, SamplingParams(max_tokens=12, stop=(stop, "never")))
    streamed = "".join(d.text for d in h)
    c = h.result()
    assert c.finish_reason == "stop"
    assert c.text == free[: free.index(stop)] == streamed
    assert c.completion_tokens < 12


def test_logprobs_are_the_models(generator: Generator, tiny_lm: Path) -> None:
    model, tok = load_lm(str(tiny_lm), device="cpu", dtype="float32")
    h = generator.submit(PROMPT, SamplingParams(max_tokens=3, logprobs=True))
    deltas = list(h)
    c = h.result()
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        ref = torch.log_softmax(model(ids).logits[0, -1], -1)
    assert deltas[0].logprob == pytest.approx(ref[deltas[0].token_id].item(), abs=1e-5)
    assert c.token_logprobs is not None and len(c.token_logprobs) == 3
    assert [lp for _, lp in c.token_logprobs] == [d.logprob for d in deltas]
    assert generator.submit(PROMPT, SamplingParams(max_tokens=2)).result().token_logprobs is None


def test_cancel_frees_the_slot(generator: Generator) -> None:
    hs = [generator.submit(PROMPT, SamplingParams(max_tokens=200)) for _ in range(6)]
    for h in hs:
        h.cancel()
    for h in hs:
        assert h.result(timeout=30).completion_tokens < 200
    assert generator.submit(PROMPT, SamplingParams(max_tokens=2)).result(timeout=30)
    assert not any(generator.scheduler.running)


class _CharTok:
    """Each id is one character; 0 is a lone UTF-8 lead byte (decodes to U+FFFD alone)."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        out, i = "", 0
        while i < len(ids):
            if ids[i] == 0:
                out += "é" if i + 1 < len(ids) and ids[i + 1] == 1 else "\ufffd"
                i += 2 if i + 1 < len(ids) and ids[i + 1] == 1 else 1
            else:
                out += chr(ids[i])
                i += 1
        return out


def test_detokenizer_holds_back_partial_characters_and_stops() -> None:
    d = Detokenizer(_CharTok(), stops=("XY",))
    assert d.add(ord("a")) == ""  # the last len("XY") - 1 characters are held back
    assert d.add(0) == ""  # an incomplete character adds no text
    assert d.add(1) == "a"  # "é" completes, and is held back in turn
    assert d.add(ord("X")) == "é"
    assert d.add(ord("Y")) == "" and d.stopped
    assert d.finish() == "" and d.text == "aé"
