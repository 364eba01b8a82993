"""Preparing the arms of a comparison: the documents, the training data (given or made by
make-qa, with its coverage), the knowledge base, the fine-tuning run, and the worked
examples every arm's prompt shows.

Every step saves its result under the report's ``state/`` folder, whole or not at all, so
an interrupted comparison resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ragtune.errors import RagtuneError
from ragtune.evaluate.arm import ArmSpec
from ragtune.evaluate.questions import (
    Question,
    find_leaks,
    leaking_examples,
    write_squad_documents,
)
from ragtune.evaluate.settings import CompareInputs, CompareSettings
from ragtune.evaluate.worker import MakeQASpec, TuneSpec, run_in_child
from ragtune.generate.prompts import RAG_FEWSHOT, strip_citations
from ragtune.io import write_json_atomic, write_text_atomic
from ragtune.tune.data import load_examples, repeat_to_minimum
from ragtune.types import Example

Say = Callable[[str], None]


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def kb_name_for(out: Path) -> str:
    """The knowledge base of the comparison written to ``out`` (one per report folder)."""
    return "compare-" + hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:12]


def link_tree(src: Path, dst: Path) -> None:
    """Copy a file or folder cheaply (hard links where possible); edits replace files."""
    if dst.exists():
        return
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)

    def link(s: str, d: str) -> object:
        try:
            os.link(s, d)
            return d
        except OSError:
            return shutil.copy2(s, d)

    if src.is_dir():
        shutil.copytree(src, tmp, copy_function=link)
    else:
        tmp.mkdir(parents=True)
        link(str(src), str(tmp / src.name))
    os.replace(tmp, dst)


def prepare_documents(state: Path, inputs: CompareInputs) -> list[Path]:
    """A working copy of the documents (the freshness step edits it). For SQuAD-format
    questions without ``--docs`` it holds *every* context of the file, not only those of
    the sampled questions, so retrieval searches the whole corpus."""
    work = state / "docs"
    if not work.exists() and (inputs.docs or inputs.squad):
        tmp = state / "docs.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        if inputs.docs:
            for d in inputs.docs:
                link_tree(d, tmp / d.name)
        else:
            data = json.loads(inputs.questions.read_text(encoding="utf-8"))
            write_squad_documents(data, tmp / "squad")
        os.replace(tmp, work)
    return sorted(work.iterdir()) if work.exists() else []


def prepare_training(
    state: Path,
    inputs: CompareInputs,
    settings: CompareSettings,
    test: list[Question],
    doc_roots: Sequence[Path],
    say: Say,
) -> dict[str, Any] | None:
    """Write ``state/train.jsonl`` (``--train``, or make-qa's output from the documents) and
    refuse leakage. Returns make-qa's coverage (None for ``--train``)."""
    train_file = state / "train.jsonl"
    coverage_file = state / "coverage.json"
    if train_file.exists():
        coverage: dict[str, Any] | None = read_json(coverage_file)
        return coverage
    if inputs.train is not None:
        leaks = find_leaks(test, load_examples(inputs.train))
        if leaks:
            raise RagtuneError(
                f"{len(leaks)} test question(s) appear in the training data, e.g. {leaks[0]!r}",
                "training on the test questions is leakage: remove them from --train "
                "(paraphrases of the same facts are fine)",
            )
        shutil.copyfile(inputs.train, train_file)
        return None
    say("generating training examples from the documents (make-qa)")
    generated = state / "make-qa.jsonl"
    spec = MakeQASpec(
        docs=[str(d) for d in doc_roots],
        out=str(generated),
        base=settings.model,
        seed=settings.seed,
        max_pairs=settings.max_qa_pairs,
        device=settings.device,
        method=settings.qa_method,
        train_docs=settings.train_docs,
        lm_backend=settings.lm_backend,
    )
    result = read_json(state / "make-qa.json") or run_in_child(
        "make-qa", spec, state / "make-qa.json", state / "make-qa.job.json"
    )
    lines = [line for line in generated.read_text(encoding="utf-8").splitlines() if line.strip()]
    leaking = leaking_examples(test, [Example.from_dict(json.loads(line)) for line in lines])
    if leaking:
        say(f"dropped {len(leaking)} generated example(s) that contain a test question")
    kept = [line for i, line in enumerate(lines) if i not in leaking]
    report = result["report"]
    coverage = {
        "method": report["method"],
        "documents": report["documents"],
        "documents_covered": report["documents_covered"],
        "passages": report["passages"],
        "passages_covered": report["passages_covered"],
        "pairs_generated": report["generated"],
        "pairs_kept": report["kept"],
        "pairs_dropped": sum(report["dropped_by_reason"].values()),
        "dropped_by_reason": dict(report["dropped_by_reason"]),
        "examples": len(kept),
        "document_examples": report["document_examples"],
        "examples_dropped_test_question": len(leaking),
        "generate_s": result["generate_s"],
    }
    write_json_atomic(coverage_file, coverage)
    if not kept:
        raise RagtuneError(
            "make-qa produced no usable training examples "
            f"({report['generated']} generated, dropped: {report['dropped_by_reason']})",
            "pass --train with your own examples",
        )
    write_text_atomic(train_file, "\n".join(repeat_to_minimum(kept)) + "\n")
    return coverage


def demonstrations(train_file: Path | None, n: int, seed: int) -> list[tuple[str, str]]:
    """``n`` worked examples (question, answer) for every arm's prompt, drawn (seeded) from
    the training examples — never from the test questions, which the leakage check keeps
    out of the training data — each about a different answer. The answers are in the
    trained form, so the prompted arms see the required answer form too and only what
    training adds is measured."""
    if n == 0:
        return []
    if train_file is None or not train_file.exists():
        # No training data: the built-in examples (without their source numbers, which
        # would mean nothing to a closed-book arm), still the same for every arm.
        return [(q, strip_citations(a)) for q, a in RAG_FEWSHOT][:n]
    pairs: list[tuple[str, str]] = []
    for ex in load_examples(train_file):
        msgs = ex.messages
        last = [i for i, m in enumerate(msgs) if m.role == "assistant"]
        if last and last[-1] > 0 and msgs[last[-1] - 1].role == "user":
            pair = (msgs[last[-1] - 1].content, msgs[last[-1]].content)
            if all(pair[1] != a for _, a in pairs):  # one example per answer: other facts
                pairs.append(pair)
    rng = random.Random(seed)
    return rng.sample(pairs, min(n, len(pairs)))


def build_kb(
    state: Path, kb_name: str, doc_roots: Sequence[Path], settings: CompareSettings, say: Say
) -> dict[str, Any]:
    """Build the knowledge base (once): its seconds, size, documents and chunks."""
    done: dict[str, Any] | None = read_json(state / "kb.json")
    from ragtune.config import kb_path
    from ragtune.retrieve.kb import KnowledgeBase

    if done is not None and KnowledgeBase.exists(kb_name):
        return done
    from ragtune.ingest.pipeline import ingest

    say("building the knowledge base")
    report = ingest(
        doc_roots,
        kb_name,
        rebuild=True,
        device=settings.device,
        embedder=settings.embedder,
        backend=settings.backend,
        chunk_tokens=settings.chunk_tokens,
        chunk_overlap=settings.chunk_overlap,
    )
    done = {
        "prep_s": report.seconds,
        "documents": report.documents,
        "chunks": report.chunks,
        "mb": folder_mb(kb_path(kb_name)),
    }
    write_json_atomic(state / "kb.json", done)
    return done


def fine_tune(
    train_file: Path, run_dir: Path, settings: CompareSettings, base: str, state: Path, name: str
) -> dict[str, Any]:
    """Fine-tune ``base`` on ``train_file`` in a child process (once): seconds and size."""
    done: dict[str, Any] | None = read_json(state / f"{name}.json")
    if done is not None:
        return done
    spec = TuneSpec(
        data=str(train_file),
        out=str(run_dir),
        method=settings.method,
        base=base,
        epochs=settings.epochs,
        batch_size=settings.batch_size_train,
        lr_multiplier=settings.lr_multiplier,
        seed=settings.seed,
        device=settings.device,
        dtype=settings.dtype,
        resume=(run_dir / "checkpoints").exists(),
    )
    t0 = time.perf_counter()
    result = run_in_child("tune", spec, state / f"{name}.result.json", state / f"{name}.job.json")
    if result["status"] != "succeeded":
        raise RagtuneError(f"Fine-tuning ended {result['status']}", "run the comparison again")
    adapter = run_dir / "adapter"  # what a user keeps: the adapter, or the merged model
    done = {
        "prep_s": time.perf_counter() - t0,
        "mb": folder_mb(adapter if adapter.exists() else run_dir / "merged"),
    }
    write_json_atomic(state / f"{name}.json", done)
    return done


def finished_run(run_dir: Path) -> dict[str, Any]:
    """The cost of a run made before the comparison (``--ft-run``): its own training time,
    from its manifest, and the size of what a user keeps."""
    manifest = read_json(run_dir / "manifest.json") or {}
    adapter = run_dir / "adapter"
    return {
        "prep_s": float(manifest.get("result", {}).get("wall_time_s", 0.0)),
        "mb": folder_mb(adapter if adapter.exists() else run_dir / "merged"),
    }


def match_doc_id(gold: str, kb_ids: set[str]) -> str | None:
    """The knowledge base's id for a question's gold document id: the same id, or the one
    that ends with ``/<gold>``, or whose file name without extension is ``gold``."""
    if gold in kb_ids:
        return gold
    suffix = [d for d in kb_ids if d.endswith("/" + gold)]
    if len(suffix) == 1:
        return suffix[0]
    stem = [d for d in kb_ids if Path(d).stem == gold or Path(d).name == gold]
    return stem[0] if len(stem) == 1 else None


def map_gold_docs(test: list[Question], kb_name: str, say: Say) -> list[Question]:
    from ragtune.retrieve.kb import KnowledgeBase

    kb_ids = set(KnowledgeBase.open(kb_name).store.doc_index())
    mapped, missing = [], 0
    for q in test:
        ids = []
        for d in q.doc_ids:
            m = match_doc_id(d, kb_ids)
            missing += m is None
            ids.append(m or d)
        mapped.append(dataclasses.replace(q, doc_ids=ids))
    if missing:
        say(f"warning: {missing} gold document id(s) are not in the knowledge base")
    return mapped


@dataclasses.dataclass(frozen=True)
class ArmPrompt:
    """What every arm's prompt shares: the instruction (the required answer form, if any)
    and the worked examples. RAG arms add the RAG instruction and the numbered sources
    after the shared instruction — the only difference between a closed-book arm's prompt
    and a RAG arm's."""

    instruction: str | None
    fewshot: list[tuple[str, str]]

    def for_arm(self, rag: bool) -> str | None:
        if not rag:
            return self.instruction
        from ragtune.generate.prompts import RAG_INSTRUCTION

        return f"{self.instruction}\n\n{RAG_INSTRUCTION}" if self.instruction else RAG_INSTRUCTION


def arm_spec(
    name: str,
    questions: Sequence[str],
    settings: CompareSettings,
    prompt: ArmPrompt,
    model: str,
    kb: str | None,
    format_spec: str | None,
) -> ArmSpec:
    """The spec of one arm: every arm gets the same decoding settings and prompt parts."""
    return ArmSpec(
        arm=name,
        model=model,
        questions=list(questions),
        kb=kb,
        k=settings.k,
        mode=settings.mode,
        context_tokens=settings.context_tokens,
        max_new_tokens=settings.max_new_tokens,
        batch_size=settings.batch_size,
        instruction=prompt.for_arm(kb is not None),
        fewshot=list(prompt.fewshot),
        format_spec=format_spec,
        device=settings.device,
        dtype=settings.dtype,
        lm_backend=settings.lm_backend,
    )
