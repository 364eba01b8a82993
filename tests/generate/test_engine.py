"""The native engine with the tiny in-process Gemma 3: parity with transformers, batching,
continuous batching, the KV cache, and the batch API callers use."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest
import torch

from ragtune.errors import RagtuneError
from ragtune.generate.engine import Generator, SamplingParams, cut_at_stop
from ragtune.generate.gemma import ATTN_PAD, Batch, GemmaEngine
from ragtune.models import load_lm

PROMPTS = [
    "Question: What is the capital of France?\nAnswer:",
    "The quick brown fox",
    "Source [1]: the sea is blue. Source [2]: grass is green. Cite sources in brackets. "
    "Question: what colour is grass?\nAnswer:",
    "Zorbland",
]
# longer than the tiny model's sliding window (64), so the ring cache wraps
LONG = " ".join(PROMPTS) * 3


@pytest.fixture(scope="module")
def generator(tiny_lm: Path) -> Generator:
    g = Generator.load(str(tiny_lm), device="cpu", dtype="float32", slots=4, max_seq_len=512)
    yield g
    g.close()


@pytest.fixture(scope="module")
def hf(tiny_lm: Path) -> tuple[object, object]:
    return load_lm(str(tiny_lm), device="cpu", dtype="float32")


def alone(g: Generator, prompt: str, n: int = 8) -> list[int]:
    """The greedy tokens of ``prompt`` with nothing else running."""
    h = g.submit(prompt, SamplingParams(max_tokens=n))
    h.result()
    return list(h._req.tokens)


def test_native_engine_is_used(generator: Generator) -> None:
    assert generator.native and generator.model is None


def test_matches_transformers_generate(generator: Generator, hf: tuple) -> None:
    """Parity with the reference implementation: HF greedy generate, token for token,
    including a prompt longer than the sliding window."""
    model, tok = hf
    for prompt in [*PROMPTS, LONG]:
        ids = tok(prompt, return_tensors="pt")
        with torch.inference_mode():
            ref = model.generate(**ids, max_new_tokens=8, do_sample=False, eos_token_id=-1,
                                 pad_token_id=tok.pad_token_id)  # fmt: skip
        assert alone(generator, prompt) == ref[0, ids["input_ids"].shape[1] :].tolist()


def test_kv_cached_logits_equal_a_full_forward(generator: Generator, hf: tuple) -> None:
    """Prefill + one-token decode steps through the slot cache give the logits of a full
    forward over the whole sequence (transformers', without a cache)."""
    model, tok = hf
    eng = generator.scheduler.engine
    ids = tok(LONG, return_tensors="pt")["input_ids"][0]
    T, extra = len(ids) - 6, ids[-6:]
    with torch.inference_mode():
        ref = model(ids[None]).logits[0]  # (T+6, V)
        got = [eng.logits(eng.prefill(ids[:T], 3, -1))[0]]
        for k, t in enumerate(extra[:-1].tolist()):
            b = Batch(torch.tensor([3]), torch.tensor([T + k]), None, contiguous=False)
            got.append(eng.logits(eng.decode(torch.tensor([t]), b))[0])
    torch.testing.assert_close(torch.stack(got), ref[T - 1 : -1], atol=2e-5, rtol=1e-4)


def cached_logits(eng: GemmaEngine, ids: torch.Tensor, steps: int, slot: int) -> torch.Tensor:
    """Prefill all but the last ``steps`` tokens into ``slot``, then decode them one at a
    time: the (steps, V) logits after each fed token, from the last prompt token on."""
    T = len(ids) - steps
    with torch.inference_mode():
        got = [eng.logits(eng.prefill(ids[:T], slot, -1))[0]]
        for k, t in enumerate(ids[T:-1].tolist()):
            b = Batch(torch.tensor([slot]), torch.tensor([T + k]), None, contiguous=False)
            got.append(eng.logits(eng.decode(torch.tensor([t]), b))[0])
    return torch.stack(got).float()


def test_padded_cache_reads_change_nothing(generator: Generator) -> None:
    """Decode attention that reads the cache up to a multiple of ``pad`` positions (as in
    bf16, see ATTN_PAD) masks what it should: the logits of unpadded reads, below and past
    the sliding window, alone and in a batch."""
    eng = generator.scheduler.engine
    tok = generator.tokenizer
    ids = torch.tensor(tok(LONG)["input_ids"])
    assert eng.pad == 1  # fp32
    plain = cached_logits(eng, ids, 24, 1)
    try:
        eng.pad = 16
        padded = cached_logits(eng, ids, 24, 1)
        batched = generator.generate(PROMPTS, max_new_tokens=8, stop=(), batch_size=4)
    finally:
        eng.pad = 1
    torch.testing.assert_close(padded, plain, atol=1e-5, rtol=1e-5)
    one = [generator.generate([p], max_new_tokens=8, stop=())[0] for p in PROMPTS]
    assert [g.text for g in batched] == [g.text for g in one]


def test_bf16_decode_matches_its_prefill(tiny_lm: Path) -> None:
    """bf16 decoding (padded cache reads, scores as K @ q^T) gives the logits of a bf16
    prefill over the whole sequence, to bf16's precision."""
    g = Generator.load(str(tiny_lm), device="cpu", dtype="bfloat16", slots=2, max_seq_len=512)
    try:
        eng = g.scheduler.engine
        assert eng.pad == ATTN_PAD > 1
        ids = torch.tensor(g.tokenizer(LONG)["input_ids"])
        got = cached_logits(eng, ids, 24, 1)
        with torch.inference_mode():
            full = eng.logits(eng.prefill(ids, 0, -1, all_positions=True)).float()
    finally:
        g.close()
    want = full[len(ids) - 25 : -1]
    torch.testing.assert_close(got, want, atol=0.05, rtol=0.02)
    assert torch.equal(got.argmax(-1), want.argmax(-1))


def test_packed_prefill_equals_each_prompt_alone(generator: Generator) -> None:
    """Several prompts prefilled in one packed pass (one longer than the sliding window)
    give each prompt's own last-token logits and fill each slot's cache as alone."""
    eng = generator.scheduler.engine
    tok = generator.tokenizer
    prompts = [torch.tensor(tok(p)["input_ids"]) for p in (PROMPTS[0], LONG, PROMPTS[3])]
    with torch.inference_mode():
        alone_logits, caches = [], []
        for p in prompts:  # the positions each prompt writes: min(T, the layer's cache size)
            alone_logits.append(eng.logits(eng.prefill(p, 0, -1))[0])
            n = len(p)
            kv = zip(eng.cache.k, eng.cache.v, strict=True)
            caches.append([(k[0, :n].clone(), v[0, :n].clone()) for k, v in kv])
        packed = eng.logits(eng.prefill_many(prompts, [1, 2, 3], [-1, -1, -1]))
    torch.testing.assert_close(packed, torch.stack(alone_logits), atol=1e-5, rtol=1e-5)
    for slot, p, cache in zip([1, 2, 3], prompts, caches, strict=True):
        for layer, (k, v) in enumerate(cache):
            n = len(p)
            torch.testing.assert_close(eng.cache.k[layer][slot, :n], k, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(eng.cache.v[layer][slot, :n], v, atol=1e-5, rtol=1e-5)


def test_batched_equals_one_at_a_time(generator: Generator) -> None:
    one = [generator.generate([p], max_new_tokens=8, stop=())[0] for p in PROMPTS]
    batched = generator.generate(PROMPTS, max_new_tokens=8, stop=(), batch_size=4)
    assert [g.text for g in batched] == [g.text for g in one]
    assert [g.new_tokens for g in batched] == [8, 8, 8, 8]
    assert [g.finish for g in batched] == ["length"] * 4
    assert [g.prompt_tokens for g in batched] == [generator.count_tokens(p) for p in PROMPTS]


def test_continuous_batching_equals_alone_whatever_arrives_when(generator: Generator) -> None:
    """Requests submitted from many threads at random times, more than there are slots
    and with different lengths, each get exactly the tokens they get alone."""
    prompts = [*PROMPTS, LONG, *PROMPTS[::-1]]
    lengths = [3, 9, 5, 12, 7, 4, 10, 6, 8]
    expected = [alone(generator, p, n) for p, n in zip(prompts, lengths, strict=True)]
    steps0 = generator.scheduler.steps
    got: list[list[int] | None] = [None] * len(prompts)
    rnd = random.Random(0)
    delays = [rnd.uniform(0, 0.05) for _ in prompts]

    def client(i: int) -> None:
        time.sleep(delays[i])
        h = generator.submit(prompts[i], SamplingParams(max_tokens=lengths[i]))
        h.result(timeout=60)
        got[i] = list(h._req.tokens)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == expected
    # they really shared steps: fewer decode steps than running them one by one
    assert generator.scheduler.steps - steps0 < sum(n - 1 for n in lengths)


def test_order_is_kept_and_progress_counts(generator: Generator) -> None:
    done: list[int] = []
    out = generator.generate(
        PROMPTS * 2, max_new_tokens=4, stop=(), batch_size=3, progress=done.append
    )
    assert [g.text for g in out[:4]] == [g.text for g in out[4:]]
    assert sum(done) == 8


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
    with pytest.raises(RagtuneError, match="exceeds the model's context"):
        generator.submit("word " * 3000, SamplingParams(max_tokens=4))


def test_unknown_adapter_is_refused(generator: Generator) -> None:
    with pytest.raises(RagtuneError, match="No adapter named"):
        generator.submit("hi", SamplingParams(), adapter="nope")


def test_other_architectures_fall_back_to_transformers(tiny_lm: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(tiny_lm))
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    g = Generator.load(str(tmp_path), device="cpu", dtype="float32")
    assert not g.native
    out = g.generate(PROMPTS[:2], max_new_tokens=5, stop=())
    ids = tok(PROMPTS[0], return_tensors="pt")
    with torch.inference_mode():
        ref = model.generate(**ids, max_new_tokens=5, do_sample=False, eos_token_id=-1,
                             pad_token_id=tok.pad_token_id)  # fmt: skip
    expected = tok.decode(ref[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert out[0].text == expected.strip() and out[0].new_tokens == 5
    with pytest.raises(RagtuneError, match="need a Gemma 3 model"):
        g.submit("hi", SamplingParams())
