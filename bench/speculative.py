"""Prompt-lookup speculative decoding: ragtune and llama.cpp, each with and without it.

Decode tokens/s (after the first token, as in ``bench/generate.py``) for greedy answers to
RAG prompts (about ``--prefill-tokens`` tokens of SciFact abstracts and a question: the
answer can copy spans of its sources) and, labelled apart, for the short question prompt
of ``bench/generate.py`` (little to copy). ragtune runs ``speculate=K`` against
``speculate=0`` in bf16 (the default here), int8 and int4; llama.cpp
runs its own ``LlamaPromptLookupDecoding`` with the same n-gram size (3) and draft length
K against plain decoding, on the Q4_K_M GGUF. Engines interleaved round by round; medians.
Also the share of prompts whose speculative text equals the plain one (greedy: it should
be all of them up to rounding of the wider verification pass).

    PYTHONPATH=src python bench/speculative.py --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

import torch

from generate import QUESTION_PROMPT, load_llamacpp, rag_prompt, rt_stream  # sibling script
from ragtune.generate.engine import Generator, SamplingParams

# ragtune's precisions: the default here (bf16), int8 (fp32 activations, fbgemm's int8
# GEMM) and int4
PRECISIONS = (("bf16", "none"), ("int8", "int8"), ("int4", "int4"))


def lc_rate(llm: Any, prompt: str, n: int) -> tuple[float, str]:
    llm.reset()
    eos = llm.token_eos()
    times, text = [], []
    for chunk in llm.create_completion(prompt, max_tokens=n, temperature=0.0, stream=True,
                                       logit_bias={eos: -1e9}):  # fmt: skip
        times.append(time.perf_counter())
        text.append(chunk["choices"][0]["text"])
    rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else float("nan")
    return rate, "".join(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--speculate", type=int, default=4, help="draft tokens per step (K)")
    ap.add_argument("--rag-prompts", type=int, default=3)
    ap.add_argument("--prefill-tokens", type=int, default=1000)
    args = ap.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    k, n = args.speculate, args.tokens
    gens = {
        (prec, spec): Generator.load(
            "default",
            device="cpu",
            dtype="auto",
            quantize=quant,
            speculate=spec,  # type: ignore[arg-type]
        )
        for prec, quant in PRECISIONS
        for spec in (0, k)
    }
    tok = gens["bf16", 0].tokenizer
    prompts = {
        "question": [QUESTION_PROMPT],
        "rag": [
            rag_prompt(tok, args.prefill_tokens, offset=40 * i) for i in range(args.rag_prompts)
        ],
    }
    llm = load_llamacpp()
    llm_pld = None
    if llm is not None:
        from llama_cpp import Llama
        from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

        # n_batch = n_ctx: llama-cpp-python 0.3.36 sizes its per-token logits buffer by
        # n_batch when a draft model turns logits_all on, and fails on longer prompts
        llm_pld = Llama(
            llm.model_path,
            n_ctx=2048,
            n_threads=os.cpu_count() or 1,
            n_batch=2048,
            verbose=False,
            draft_model=LlamaPromptLookupDecoding(max_ngram_size=3, num_pred_tokens=k),
        )
    for g in gens.values():  # warm-up
        rt_stream(g, QUESTION_PROMPT, 4)
    rates: dict[str, list[float]] = {}
    same: dict[str, list[bool]] = {}
    texts: dict[tuple[str, int, str, int], str] = {}
    for rnd in range(args.rounds):
        print(f"round {rnd + 1}/{args.rounds}", file=sys.stderr, flush=True)
        for kind, ps in prompts.items():
            for i, p in enumerate(ps):
                for (prec, spec), g in gens.items():
                    h = g.submit(p, SamplingParams(max_tokens=n))
                    times = [time.perf_counter() for _ in h]
                    rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
                    name = f"ragtune_{prec}{'_speculative' if spec else ''}_{kind}"
                    rates.setdefault(name, []).append(rate)
                    texts[prec, spec, kind, i] = h.result().text
                if llm is not None and llm_pld is not None:
                    r0, t_plain = lc_rate(llm, p, n)
                    r1, t_pld = lc_rate(llm_pld, p, n)
                    rates.setdefault(f"llamacpp_{kind}", []).append(r0)
                    rates.setdefault(f"llamacpp_speculative_{kind}", []).append(r1)
                    same.setdefault("llamacpp", []).append(t_plain == t_pld)
                for prec, _ in PRECISIONS:
                    same.setdefault(f"ragtune_{prec}", []).append(
                        texts[prec, 0, kind, i] == texts[prec, k, kind, i]
                    )
    out: dict[str, Any] = {f"{key}_tokens_per_s": statistics.median(v) for key, v in rates.items()}
    for kind in prompts:
        for prec, _ in PRECISIONS:
            out[f"ragtune_{prec}_speculative_speedup_{kind}"] = (
                out[f"ragtune_{prec}_speculative_{kind}_tokens_per_s"]
                / out[f"ragtune_{prec}_{kind}_tokens_per_s"]
            )
        if llm is not None:
            out[f"llamacpp_speculative_speedup_{kind}"] = (
                out[f"llamacpp_speculative_{kind}_tokens_per_s"]
                / out[f"llamacpp_{kind}_tokens_per_s"]
            )
            for prec, _ in PRECISIONS:  # the two fair pairs: plain/plain, spec/spec
                for s in ("", "_speculative"):
                    out[f"ragtune_{prec}{s}_vs_llamacpp{s}_{kind}"] = (
                        out[f"ragtune_{prec}{s}_{kind}_tokens_per_s"]
                        / out[f"llamacpp{s}_{kind}_tokens_per_s"]
                    )
    out["same_text_share"] = {key: sum(v) / len(v) for key, v in same.items()}
    for prec, _ in PRECISIONS:
        sched = gens[prec, k].scheduler
        out[f"{prec}_drafted_accepted"] = [sched.drafted, sched.accepted]
    out.update(
        speculate=k,
        new_tokens=n,
        rounds=args.rounds,
        rag_prompt_tokens=[len(tok(p)["input_ids"]) for p in prompts["rag"]],
        raw=rates,
        load_avg_at_end=os.getloadavg(),
        torch=torch.__version__,
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    )
    for g in gens.values():
        g.close()
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print({key: round(v, 2) for key, v in out.items() if isinstance(v, float)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
