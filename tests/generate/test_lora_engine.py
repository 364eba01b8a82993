"""Many LoRA adapters on one base in one batch (tiny model): a mixed batch equals each
adapter alone, and an unmerged adapter equals its merged model to 1e-5 in logits."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from ragtune.errors import RagtuneError
from ragtune.generate.engine import Generator, SamplingParams
from ragtune.generate.gemma import Batch
from tests.generate.loras import make_lora_run

PROMPTS = ["Question: What is the capital of France?\nAnswer:", "The quick brown fox", "Zorb"]


@pytest.fixture(scope="module")
def adapters(tiny_lm: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {
        f"a{i}": make_lora_run(tiny_lm, tmp_path_factory.mktemp(f"lora{i}"), rank, seed)
        for i, (rank, seed) in enumerate([(4, 1), (8, 2), (2, 3)])
    }


@pytest.fixture(scope="module")
def generator(tiny_lm: Path, adapters: dict[str, Path]) -> Iterator[Generator]:
    g = Generator.load(
        str(tiny_lm), device="cpu", dtype="float32", slots=6, max_seq_len=256, max_adapters=2
    )
    for name, path in adapters.items():
        g.add_adapter(name, path)  # a run folder: its adapter/ is used
    yield g
    g.close()


def tokens(g: Generator, prompt: str, adapter: str | None, n: int = 8) -> list[int]:
    h = g.submit(prompt, SamplingParams(max_tokens=n), adapter=adapter)
    h.result(timeout=60)
    return list(h._req.tokens)


def test_adapter_equals_merged_model_in_logits(
    generator: Generator, adapters: dict[str, Path]
) -> None:
    eng = generator.scheduler.engine
    tok = generator.tokenizer
    for name in ("a0", "a1"):
        merged = Generator.load(str(adapters[name] / "merged"), device="cpu", dtype="float32",
                                slots=1, max_seq_len=256)  # fmt: skip
        meng = merged.scheduler.engine
        ids = torch.tensor(tok(PROMPTS[0])["input_ids"])
        with torch.inference_mode():
            slot = eng.bank.acquire(name, adapters[name] / "adapter")
            assert slot is not None
            got = eng.logits(eng.prefill(ids, 5, slot))
            ref = meng.logits(meng.prefill(ids, 0, -1))
            torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
            # a decode step in a batch that mixes this adapter with the base
            b = Batch(torch.tensor([5, 4]), torch.tensor([len(ids)] * 2),
                      torch.tensor([slot, -1]), contiguous=False)  # fmt: skip
            eng.prefill(ids, 4, -1)
            got = eng.logits(eng.decode(torch.tensor([7, 7]), b))
            b1 = Batch(torch.tensor([0]), torch.tensor([len(ids)]), None, contiguous=True)
            ref = meng.logits(meng.decode(torch.tensor([7]), b1))
            eng.bank.release(slot)
        torch.testing.assert_close(got[:1], ref, atol=1e-5, rtol=0)
        assert not torch.allclose(got[0], got[1], atol=1e-3)  # the adapter changes things
        merged.close()


def test_mixed_batch_equals_each_adapter_alone(generator: Generator) -> None:
    jobs = [(p, a) for p in PROMPTS for a in (None, "a0", "a1")]
    expected = [tokens(generator, p, a) for p, a in jobs]
    assert expected[0] != expected[1] or expected[0] != expected[2]
    got: list[list[int] | None] = [None] * len(jobs)
    steps0 = generator.scheduler.steps

    def run(i: int) -> None:
        got[i] = tokens(generator, *jobs[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == expected
    assert generator.scheduler.steps - steps0 < 7 * len(jobs)  # rows shared steps


def test_adapters_are_evicted_lru_past_the_limit(generator: Generator) -> None:
    bank = generator.scheduler.engine.bank
    first = [tokens(generator, PROMPTS[1], a) for a in ("a0", "a1", "a2")]
    assert list(bank.loaded) == ["a1", "a2"]  # max_adapters=2: a0 was evicted
    again = [tokens(generator, PROMPTS[1], a) for a in ("a0", "a1", "a2")]
    assert again == first
    assert len(bank.loaded) == 2


def test_adapter_errors(generator: Generator, tmp_path: Path) -> None:
    with pytest.raises(RagtuneError, match="No LoRA adapter"):
        generator.add_adapter("x", tmp_path)
    generator.add_adapter("tmp", generator_adapter_path(generator))
    generator.remove_adapter("tmp")
    with pytest.raises(RagtuneError, match="No adapter named"):
        generator.submit("hi", SamplingParams(), adapter="tmp")


def generator_adapter_path(g: Generator) -> Path:
    return g._adapters["a0"]


def test_generate_with_an_adapter(generator: Generator) -> None:
    out = generator.generate(PROMPTS, max_new_tokens=5, stop=(), adapter="a1")
    assert [g.new_tokens for g in out] == [5, 5, 5]
    assert (
        out[1].text
        == generator.tokenizer.decode(
            tokens(generator, PROMPTS[1], "a1", 5), skip_special_tokens=True
        ).strip()
    )
