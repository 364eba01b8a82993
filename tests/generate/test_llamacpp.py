"""The optional llama.cpp backend behind the Generator API. Its errors are unit tests; the
backend itself needs llama-cpp-python and the default model's GGUF (integration, skipped
when llama-cpp-python is not installed)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ragtune.errors import RagtuneError
from ragtune.generate.engine import Generator, SamplingParams

PROMPTS = ["Question: What is the capital of France?\nAnswer:", "The quick brown fox"]


def test_backend_needs_a_gguf_file(tmp_path: Path) -> None:
    with pytest.raises(RagtuneError, match="needs a GGUF file"):
        Generator.load(str(tmp_path), backend="llamacpp")
    with pytest.raises(RagtuneError, match="as stored, on the CPU"):
        Generator.load("default", backend="llamacpp", quantize="int8")


def test_ask_backend_flag_refuses_a_model_folder(
    tiny_lm: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ragtune.cli import main

    assert main(["ask", "Why?", "--model", str(tiny_lm), "--backend", "llamacpp"]) == 2
    assert "needs a GGUF file" in capsys.readouterr().err


def test_backend_says_when_llama_cpp_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import fails as when absent
    from ragtune.generate.llamacpp import llamacpp_available, load_llama

    assert not llamacpp_available()
    with pytest.raises(RagtuneError, match="needs llama-cpp-python"):
        load_llama(gguf, 128)


@pytest.fixture(scope="module")
def llamacpp_gen(default_lm: Path, models_home: Path) -> Iterator[Generator]:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (optional extra)")
    mp = pytest.MonkeyPatch()
    mp.setenv("RAGTUNE_HOME", str(models_home))  # where default_lm converted the model
    try:
        g = Generator.load("default", backend="llamacpp", max_seq_len=512)
    finally:
        mp.undo()
    yield g
    g.close()


def _llamacpp_own_greedy(llm: object, ids: list[int], n: int) -> list[int]:
    llm.reset()  # type: ignore[attr-defined]
    out: list[int] = []
    for t in llm.generate(ids, temp=0.0):  # type: ignore[attr-defined]
        out.append(t)
        if len(out) == n:
            break
    return out


@pytest.mark.integration
def test_llamacpp_backend_greedy_equals_llamacpp_itself(llamacpp_gen: Generator) -> None:
    """Greedy tokens through the Generator API equal llama.cpp's own greedy sampler's, and
    the batch API, streaming, max_tokens and stop strings behave as with the native engine."""
    g = llamacpp_gen
    assert g.backend == "llamacpp" and g.native
    llm = g.scheduler.llm  # type: ignore[attr-defined]
    for p in PROMPTS:
        h = g.submit(p, SamplingParams(max_tokens=8))
        deltas = list(h)
        c = h.result()
        ids = list(g.tokenizer(p)["input_ids"])
        own = _llamacpp_own_greedy(llm, ids, 8)
        assert [d.token_id for d in deltas] == own[: len(deltas)]
        assert "".join(d.text for d in deltas) == c.text
        assert c.prompt_tokens == len(ids)
        if c.finish_reason == "length":
            assert c.completion_tokens == 8 and len(own) == 8
    gens = g.generate(PROMPTS, max_new_tokens=8, stop=())
    for p, gen in zip(PROMPTS, gens, strict=True):
        alone = g.submit(p, SamplingParams(max_tokens=8)).result()
        assert gen.text == alone.text.strip() and gen.new_tokens == alone.completion_tokens
    first = g.submit(PROMPTS[0], SamplingParams(max_tokens=8)).result().text
    stop = first.strip()[:2]
    cut = g.submit(PROMPTS[0], SamplingParams(max_tokens=8, stop=(stop,))).result()
    assert cut.finish_reason == "stop" and stop not in cut.text
    lp = g.submit(PROMPTS[0], SamplingParams(max_tokens=2, logprobs=True)).result()
    assert lp.token_logprobs is not None and all(v <= 0 for _, v in lp.token_logprobs)
    s1 = g.submit(PROMPTS[1], SamplingParams(max_tokens=6, temperature=1.0, seed=3)).result()
    s2 = g.submit(PROMPTS[1], SamplingParams(max_tokens=6, temperature=1.0, seed=3)).result()
    assert s1.text == s2.text
    with pytest.raises(RagtuneError, match="no LoRA adapters"):
        g.add_adapter("x", "anything")


@pytest.mark.integration
def test_ask_with_the_llamacpp_backend(
    llamacpp_gen: Generator, models_home: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    import json

    from ragtune.cli import main

    monkeypatch.setenv("RAGTUNE_HOME", str(models_home))
    args = ["ask", "What is the capital of France?", "--backend", "llamacpp", "--json"]
    assert main([*args, "--max-new-tokens", "8"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert isinstance(out["answer"], str) and out["timings"]["generate_s"] > 0
