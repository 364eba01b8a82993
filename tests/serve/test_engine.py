"""The service's engine on the shared generator (tiny model, runs trained by the library's
recipe): two LoRA runs served at once as adapters on one base, in one batch, give the same
greedy tokens as each run's merged model loaded alone; a LoRA checkpoint is exported to an
adapter; a full fine-tune is its own generator."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ragtune.generate.engine import Generator
from ragtune.generate.prompts import chat_prompt
from ragtune.serve.engine import Engine, SamplingParams
from ragtune.tune.loop import train
from ragtune.types import Message
from tests.tune.conftest import FACTS, chat_row, write_jsonl

QUESTIONS = [q for q, _ in FACTS[:3]]
N = 8


@pytest.fixture(scope="module")
def runs(tiny_lm: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two LoRA runs taught different answers, and a full fine-tune."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("runs")
    answers = {
        "a": [a for _, a in FACTS],
        "b": [a for _, a in reversed(FACTS)],  # each question gets another fact's answer
        "full": [a for _, a in FACTS],
    }
    out = {}
    for name, ans in answers.items():
        data = write_jsonl(
            tmp / f"{name}.jsonl",
            [chat_row(q, a) for (q, _), a in zip(FACTS, ans, strict=True)] * 2,
        )
        result = train(
            data,
            tmp / name,
            base=str(tiny_lm),
            method="full" if name == "full" else "lora",
            epochs=4,
            batch_size=5,
            lr_multiplier=30,
            seed=3,
            lora_dropout=0.0,
            device="cpu",
        )
        assert result.status == "succeeded"
        out[name] = tmp / name
    torch.set_num_threads(before)
    return out


@pytest.fixture
def engine(tiny_lm: Path) -> Iterator[Engine]:
    e = Engine(str(tiny_lm), device="cpu", slots=8).load()
    yield e
    e.close()


def _prompt(tok: Any, question: str) -> str:
    return chat_prompt([Message("user", question)], tok)


def _tokens(handle: Any) -> list[int]:
    return [d.token_id for d in handle if d.token_id >= 0]


def _alone(path: Path, prompts: list[str]) -> list[list[int]]:
    """Greedy tokens of a run's merged model, loaded alone as its own generator."""
    g = Generator.load(str(path), device="cpu", dtype="float32", slots=1, max_seq_len=512)
    try:
        return [_tokens(g.submit(p, SamplingParams(max_tokens=N))) for p in prompts]
    finally:
        g.close()


def test_two_lora_runs_share_one_base_in_one_batch(engine: Engine, runs: dict[str, Path]) -> None:
    engine.add_model("ft:a", runs["a"])
    engine.add_model("ft:b", runs["b"])
    assert engine.models == {"ft:a": "adapter", "ft:b": "adapter"}
    assert engine.base.adapters == ["ft:a", "ft:b"]  # registered on the one base generator

    sched = engine.base.scheduler
    rows: list[list[int]] = []
    decode = sched.engine.decode

    def spy(tokens: Any, batch: Any) -> Any:
        rows.append([] if batch.lora_rows is None else batch.lora_rows.tolist())
        return decode(tokens, batch)

    sched.engine.decode = spy  # type: ignore[method-assign]
    prompts = [_prompt(engine.tokenizer, q) for q in QUESTIONS]
    models: list[str | None] = ["ft:a", "ft:b", None]
    with sched.cond:  # queue every request before the scheduler takes any: one batch
        handles = [
            (m, engine.submit(p, SamplingParams(max_tokens=N), m)) for m in models for p in prompts
        ]
    got = {m: [_tokens(h) for mm, h in handles if mm == m] for m in models}
    sched.engine.decode = decode  # type: ignore[method-assign]

    assert any(len(set(r)) == 3 for r in rows)  # adapter a, adapter b and the base in a step
    assert got["ft:a"] == _alone(runs["a"], prompts)
    assert got["ft:b"] == _alone(runs["b"], prompts)
    assert got[None] == _alone(Path(engine.base_path), prompts)
    assert got["ft:a"] != got["ft:b"] != got[None]  # the runs really differ
    assert not engine._full  # no model was loaded besides the base


def test_lora_checkpoint_is_exported_once_and_served_as_an_adapter(
    engine: Engine, runs: dict[str, Path]
) -> None:
    last = sorted((runs["a"] / "checkpoints").glob("step-*.pt"))[-1]  # the final weights
    engine.add_model("ft:a", runs["a"])
    engine.add_model("ft:a:ckpt", last)
    assert engine.models["ft:a:ckpt"] == "adapter"
    exported = last.with_suffix(".adapter")
    assert (exported / "adapter_config.json").exists()
    prompt = _prompt(engine.tokenizer, QUESTIONS[0])
    params = SamplingParams(max_tokens=N, logprobs=True, top_logprobs=2)
    ckpt = engine.submit(prompt, params, "ft:a:ckpt").result()
    run = engine.submit(prompt, params, "ft:a").result()
    assert ckpt.text == run.text and ckpt.token_logprobs and run.token_logprobs
    assert [d.token_id for d in ckpt.token_logprobs] == [d.token_id for d in run.token_logprobs]
    first = ckpt.token_logprobs[0]
    assert first.token and len(first.top) == 2 and first.top[0][1] == pytest.approx(first.logprob)
    mtime = (exported / "adapter_model.safetensors").stat().st_mtime_ns
    engine.remove_model("ft:a:ckpt")
    engine.add_model("ft:a:ckpt", last)  # reuses the export
    assert (exported / "adapter_model.safetensors").stat().st_mtime_ns == mtime


def test_full_fine_tune_is_its_own_generator(engine: Engine, runs: dict[str, Path]) -> None:
    engine.add_model("ft:full", runs["full"])
    assert engine.models == {"ft:full": "full"} and engine.base.adapters == []
    prompts = [_prompt(engine.tokenizer, q) for q in QUESTIONS]
    got = [_tokens(engine.submit(p, SamplingParams(max_tokens=N), "ft:full")) for p in prompts]
    assert got == _alone(runs["full"], prompts)
    assert list(engine._full) == ["ft:full"]
    engine.remove_model("ft:full")
    assert not engine._full
