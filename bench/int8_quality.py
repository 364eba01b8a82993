"""Quality of weight-only int8 and int4 against the full-precision model (Gemma 3 270M).

* Perplexity on held-out text: SciFact abstracts (never used for tuning), each up to
  ``--ppl-tokens`` tokens, for fp32, bf16 and each quantized variant.
* Answer agreement on the demo world's held-out questions, in two arms of the
  comparison: closed-book, and RAG with the fact's own document plus a distractor as
  sources (the prompts ``ragtune compare`` builds, through ``answer_questions``). The
  share of questions where int8 gives the same (normalised) answer as fp32 and as bf16,
  each precision's accuracy (the answer contains the fact's value, as ``compare``
  grades), and the share where both are graded the same.

Prints JSON (``--json``) or a summary line. The fine-tuned arms are the same two arms
run on a fine-tuned model: ``--model RUN_DIR`` (a ``ragtune tune`` run, or any model
``Generator.load`` takes), e.g. the one ``ragtune demo`` trains on this world.

    PYTHONPATH=src python bench/int8_quality.py --json
    PYTHONPATH=src python bench/int8_quality.py --json --model demo-report/runs/finetune
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import sys
import time
from pathlib import Path

import torch

from ragtune.evaluate.metrics import answer_contains
from ragtune.evaluate.world import make_world
from ragtune.generate.answer import answer_questions
from ragtune.generate.engine import Generator
from ragtune.text import normalize_answer
from ragtune.types import Chunk, Hit

ROOT = Path(__file__).resolve().parents[1]


def shared_data() -> Path:
    import os

    return Path(os.environ.get("RAGTUNE_SHARED_DATA", ROOT.parent / "shared" / "data"))


def heldout_texts(n: int) -> list[str]:
    lines = (shared_data() / "scifact" / "corpus.jsonl").read_text().splitlines()
    docs = [json.loads(line) for line in lines[:n]]
    return [f"{d['title']}\n{d['text']}" for d in docs]


def perplexity(g: Generator, texts: list[str], max_tokens: int) -> float:
    """exp(mean next-token NLL) over all predicted positions of all texts."""
    eng = g.scheduler.engine
    nll, count = 0.0, 0
    with torch.inference_mode():
        for text in texts:
            ids = torch.tensor(g.tokenizer(text)["input_ids"][:max_tokens])
            h = eng.prefill(ids, 0, -1, all_positions=True)  # (T, H)
            for a in range(0, len(ids) - 1, 128):  # the (T, V) logits in pieces
                b = min(a + 128, len(ids) - 1)
                logp = torch.log_softmax(eng.logits(h[a:b]).float(), -1)
                nll -= logp.gather(1, ids[a + 1 : b + 1, None]).sum().item()
                count += b - a
    return math.exp(nll / count)


def world_arms() -> tuple[list[str], list[list[Hit]], list[str]]:
    world = make_world(seed=0)
    docs = {d.doc_id: d for d in world.documents}
    rng = random.Random(0)

    def hit(doc_id: str, rank: int) -> Hit:
        d = docs[doc_id]
        chunk = Chunk(f"{doc_id}#0", doc_id, 0, d.text, 0, len(d.text), doc_id, d.title)
        return Hit(chunk, 1.0 / rank, rank)

    questions, contexts, golds = [], [], []
    for f in world.facts:
        golds.append(f.value)
        other = rng.choice([d for d in docs if d != f.doc_id])
        questions.append(f.test_question)
        contexts.append([hit(f.doc_id, 1), hit(other, 2)])
    return questions, contexts, golds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--ppl-docs", type=int, default=40)
    ap.add_argument("--ppl-tokens", type=int, default=256)
    ap.add_argument("--max-questions", type=int, help="only the first N world questions")
    ap.add_argument("--model", default="default", help="model or tune run to quantize")
    ap.add_argument("--refs", default="fp32,bf16", help="reference precisions")
    ap.add_argument(
        "--variants",
        default="int8",
        help="variants to check: int8 (layers and head), int8-layers (head in bf16), "
        "int4 (group-wise 4-bit layers and head)",
    )
    ap.add_argument(
        "--variant-dtype",
        default="bfloat16",
        choices=["bfloat16", "float32"],
        help="activation dtype of the quantized variants (w8a8 runs either)",
    )
    args = ap.parse_args(argv)
    texts = heldout_texts(args.ppl_docs)
    questions, contexts, golds = world_arms()
    questions, contexts = questions[: args.max_questions], contexts[: args.max_questions]
    golds = golds[: args.max_questions]
    refs = [r for r in args.refs.split(",") if r]
    variants = [v for v in args.variants.split(",") if v]
    out: dict[str, object] = {
        "machine": {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__},
        "model": args.model,
        "questions": len(questions),
        "ppl_docs": len(texts),
    }
    answers: dict[str, dict[str, list[str]]] = {}
    t0 = time.perf_counter()
    precisions = {"fp32": ("float32", "none"), "bf16": ("bfloat16", "none")}
    for name, (dtype, quant) in [
        *((r, precisions[r]) for r in refs),
        *((v, (args.variant_dtype, v)) for v in variants),
    ]:
        g = Generator.load(args.model, device="cpu", dtype=dtype, quantize=quant)  # type: ignore[arg-type]
        out[f"perplexity_{name}"] = perplexity(g, texts, args.ppl_tokens)
        answers[name] = {
            "closed_book": [a.text for a in answer_questions(questions, g)],
            "rag": [a.text for a in answer_questions(questions, g, contexts=contexts)],
        }
        g.close()
        for arm in ("closed_book", "rag"):  # the comparison's own grade: answer contains gold
            correct = [
                answer_contains(a, [gold])
                for a, gold in zip(answers[name][arm], golds, strict=True)
            ]
            out[f"accuracy_{arm}_{name}"] = sum(correct) / len(correct)
    # every variant against every reference, and bf16 against fp32 (how often two full
    # precisions already disagree: the floor any quantization is judged against)
    pairs = [(v, r) for v in variants for r in refs]
    if "bf16" in refs and "fp32" in refs:
        pairs.append(("bf16", "fp32"))
    for name, ref in pairs:
        ppl_ref = float(out[f"perplexity_{ref}"])  # type: ignore[arg-type]
        out[f"{name}_perplexity_change_vs_{ref}"] = float(out[f"perplexity_{name}"]) / ppl_ref - 1  # type: ignore[arg-type]
        for arm in ("closed_book", "rag"):
            same = [
                normalize_answer(a) == normalize_answer(b)
                for a, b in zip(answers[name][arm], answers[ref][arm], strict=True)
            ]
            out[f"{name}_same_answer_{arm}_vs_{ref}"] = sum(same) / len(same)
            verdict = [
                answer_contains(a, [gold]) == answer_contains(b, [gold])
                for a, b, gold in zip(answers[name][arm], answers[ref][arm], golds, strict=True)
            ]
            out[f"{name}_same_verdict_{arm}_vs_{ref}"] = sum(verdict) / len(verdict)
    out["seconds"] = time.perf_counter() - t0
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        ref = refs[0]
        for v in variants:
            print(
                f"{v} perplexity {out[f'perplexity_{v}']:.3f} vs {ref} "
                f"{out[f'perplexity_{ref}']:.3f} "
                f"({100 * float(out[f'{v}_perplexity_change_vs_{ref}']):+.2f}%); "  # type: ignore[arg-type]
                f"same answers vs {ref}: "
                f"closed-book {out[f'{v}_same_answer_closed_book_vs_{ref}']:.1%}, "
                f"rag {out[f'{v}_same_answer_rag_vs_{ref}']:.1%}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
