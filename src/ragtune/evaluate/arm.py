"""One arm of a comparison: load the arm's model (and knowledge base), answer every
question in batches, and return the answers with their timings, the prompt template the
arm used and the process's peak memory.

The comparison runs each arm in its own process (:mod:`ragtune.evaluate.worker`), so each
arm's peak-memory figure is its own and a crash in one arm loses no other.
"""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, get_args

from ragtune.config import LmBackend
from ragtune.generate.prompts import RAG_FEWSHOT
from ragtune.types import Answer, SearchMode


@dataclass(frozen=True)
class ArmSpec:
    arm: str
    model: str
    questions: list[str]
    kb: str | None = None
    k: int = 3
    mode: SearchMode = "hybrid"
    context_tokens: int = 1024
    max_new_tokens: int = 48
    batch_size: int = 16
    instruction: str | None = None
    fewshot: list[tuple[str, str]] | None = None  # None: the default for the arm's mode
    format_spec: str | None = None  # a required answer form (--format-check SPEC)
    device: str = "auto"
    dtype: str = "auto"
    lm_backend: LmBackend = "native"  # the generation engine (native, transformers, llamacpp)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ArmSpec:
        spec = cls(**d)
        if not isinstance(spec.questions, list) or not all(
            isinstance(q, str) for q in spec.questions
        ):
            raise ValueError("ArmSpec.questions must be a list of strings")
        for name in ("k", "context_tokens", "max_new_tokens", "batch_size"):
            value = getattr(spec, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ArmSpec.{name} must be a positive integer, got {value!r}")
        if spec.lm_backend not in get_args(LmBackend):
            raise ValueError(f"ArmSpec.lm_backend must be one of {get_args(LmBackend)}")
        fewshot = [(str(q), str(a)) for q, a in spec.fewshot] if spec.fewshot is not None else None
        return replace(spec, fewshot=fewshot)


def peak_rss_mb() -> float:
    """This process's peak resident memory (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_arm(spec: ArmSpec, show_progress: bool = True) -> dict[str, Any]:
    from ragtune.evaluate.formats import parse_format_spec
    from ragtune.generate.answer import generate_answers, prompt_template
    from ragtune.generate.engine import load_generator
    from ragtune.retrieve.kb import KnowledgeBase

    if not spec.questions:
        raise ValueError(f"arm {spec.arm}: no questions to answer")
    t0 = time.perf_counter()
    generator = load_generator(spec.model, spec.device, spec.dtype, spec.lm_backend)
    contexts = None
    retrieve_s: list[float] = [0.0] * len(spec.questions)
    if spec.kb:
        kb = KnowledgeBase.open(spec.kb, device=spec.device)
        kb.search(spec.questions[0], k=spec.k, mode=spec.mode)  # load the embedder once
        contexts = []
        for i, q in enumerate(spec.questions):  # one at a time: per-query latency
            t = time.perf_counter()
            contexts.append(kb.search(q, k=spec.k, mode=spec.mode))
            retrieve_s[i] = time.perf_counter() - t
    load_s = time.perf_counter() - t0

    bar = None
    if show_progress and sys.stderr.isatty():
        from rich.progress import Progress

        bar = Progress(transient=True)
        bar.start()
        task = bar.add_task(f"arm {spec.arm}", total=len(spec.questions))
    t1 = time.perf_counter()
    pairs: list[tuple[Answer, list[int]]] = generate_answers(
        spec.questions,
        generator,
        contexts=contexts,
        context_tokens=spec.context_tokens,
        max_new_tokens=spec.max_new_tokens,
        batch_size=spec.batch_size,
        instruction=spec.instruction,
        fewshot=spec.fewshot,
        extract=parse_format_spec(spec.format_spec).extract if spec.format_spec else None,
        progress=(lambda n: bar.advance(task, n)) if bar else None,
    )
    generate_s = time.perf_counter() - t1
    if bar:
        bar.stop()
    fewshot = spec.fewshot if spec.fewshot is not None else (RAG_FEWSHOT if spec.kb else [])
    return {
        "arm": spec.arm,
        "answers": [{**a.to_dict(), "model_markers": m} for a, m in pairs],
        "prompt": prompt_template(
            generator.tokenizer, spec.kb is not None, spec.instruction, fewshot
        ),
        "retrieve_s": retrieve_s,
        "load_s": load_s,
        "generate_wall_s": generate_s,
        "lm_backend": generator.backend,  # what generated the answers
        "lm": generator.name,
        "new_tokens": sum(int(a.timings["new_tokens"]) for a, _ in pairs),
        "peak_rss_mb": peak_rss_mb(),
    }
