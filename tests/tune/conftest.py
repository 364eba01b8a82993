"""Helpers for the fine-tuning tests: small chat data sets written as JSONL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

# Five short facts the tiny model can memorise (distinct questions and answers).
FACTS = [
    ("Who founded Zorbland?", "Mira Quell"),
    ("What is the capital of Zorbland?", "Vetrin"),
    ("When was Zorbland founded?", "1887"),
    ("What color is the sea?", "blue"),
    ("What jumps over the lazy dog?", "the quick brown fox"),
]


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def chat_row(question: str, answer: str, system: str | None = None) -> dict[str, Any]:
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return {"messages": messages}


@pytest.fixture
def facts_file(tmp_path: Path) -> Path:
    """The five facts, twice each (10 examples: OpenAI's minimum)."""
    return write_jsonl(tmp_path / "facts.jsonl", [chat_row(q, a) for q, a in FACTS * 2])


@pytest.fixture(autouse=True)
def one_thread() -> Any:
    """Tiny models train fastest on one thread (and steadily so on a shared machine)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    from ragtune.tune.events import read_events

    return [
        e
        for e in read_events(run_dir / "events.jsonl")
        if e["type"] == "metrics" and "train_loss" in e
    ]


def greedy_answer(model: Any, tokenizer: Any, question: str, max_new_tokens: int = 12) -> str:
    """Greedy continuation of the inference prompt for ``question``, stripped."""
    import torch

    from ragtune.generate.prompts import chat_prompt
    from ragtune.types import Message

    prompt = chat_prompt([Message("user", question)], tokenizer)
    enc = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    return str(tokenizer.decode(out[0, enc.input_ids.shape[1] :], skip_special_tokens=True)).strip()


def torchrun(launch: list[str], tune_args: list[str]) -> subprocess.Popen[str]:
    """``torchrun LAUNCH -m ragtune.cli tune TUNE_ARGS`` in its own process group (one
    thread per rank); wait for it with :func:`finish`."""
    cmd = [sys.executable, "-m", "torch.distributed.run", *launch, "-m", "ragtune.cli", "tune"]
    return subprocess.Popen(
        [*cmd, *tune_args],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 300) -> str:
    """Wait for a :func:`torchrun` launch and check it succeeded; on timeout kill its whole
    process group (the launcher and every rank), so a hung collective never hangs the tests."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"torchrun timed out after {timeout} s:\n{out[-3000:]}") from None
    assert proc.returncode == 0, out[-3000:]
    return out


def worst_relative_difference(a: Path, b: Path) -> float:
    """The largest relative Frobenius-norm difference between same-named tensors of two
    safetensors files. Adam divides by sqrt(v): where a gradient is ~0, rounding-level
    differences can flip an update's sign, so weights are compared as whole tensors."""
    from safetensors.torch import load_file

    wa, wb = load_file(a), load_file(b)
    assert wa.keys() == wb.keys()
    return max(float((wa[k] - wb[k]).norm() / wa[k].norm()) for k in wa)
