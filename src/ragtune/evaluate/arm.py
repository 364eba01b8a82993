"""One arm of a comparison, answered in its own process.

``python -m ragtune.evaluate.arm SPEC.json OUT.json`` loads the arm's model (and
knowledge base), answers every question in batches and writes the answers with their
timings and the process's peak memory. A separate process per arm gives each arm a
clean peak-memory figure and keeps a crash in one arm from losing the others.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

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


def peak_rss_mb() -> float:
    """This process's peak resident memory (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_arm(spec: ArmSpec, show_progress: bool = True) -> dict[str, Any]:
    from ragtune.evaluate.formats import parse_format_spec
    from ragtune.generate.answer import answer_questions
    from ragtune.generate.engine import Generator
    from ragtune.retrieve.kb import KnowledgeBase

    t0 = time.perf_counter()
    generator = Generator.load(spec.model, device=spec.device, dtype=spec.dtype)
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
    answers: list[Answer] = answer_questions(
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
    return {
        "arm": spec.arm,
        "answers": [a.to_dict() for a in answers],
        "retrieve_s": retrieve_s,
        "load_s": load_s,
        "generate_wall_s": generate_s,
        "new_tokens": sum(int(a.timings["new_tokens"]) for a in answers),
        "peak_rss_mb": peak_rss_mb(),
    }


def main(argv: list[str]) -> int:
    spec_path, out_path = Path(argv[0]), Path(argv[1])
    spec = ArmSpec(**json.loads(spec_path.read_text()))
    result = run_arm(spec)
    tmp = out_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    os.replace(tmp, out_path)  # an arm's result exists whole or not at all
    return 0


def spec_json(spec: ArmSpec) -> str:
    return json.dumps(asdict(spec))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
