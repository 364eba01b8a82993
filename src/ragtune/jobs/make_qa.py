"""Training data generated from documents (``ragtune make-qa``) as a task of the worker.

The documents (a vector store's processed files, or uploaded files) are copied out of the
object store; make-qa (:func:`ragtune.tune.makeqa.make_qa_files`, the service's base model
as the generator) writes question/answer chat examples, each checked against its passage;
the result is a new file of the project with purpose ``fine-tune``, ready for a fine-tuning
job. The task records the coverage — pairs generated, kept, and dropped by reason,
documents and passages covered — also when every pair was dropped (then it fails).
Cancellation is checked after every batch of generated prompts.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
import uuid
from typing import Any

from ragtune.jobs.comparisons import copy_documents
from ragtune.jobs.store import FileRecord
from ragtune.jobs.task_worker import Progress, TaskContext, TaskFailed
from ragtune.jobs.tasks import TaskRecord

SPEC_VERSION = 1


@dataclasses.dataclass(frozen=True)
class MakeQASpec:
    """A generation as the route resolved it."""

    vector_store_id: str | None = None
    document_files: tuple[str, ...] = ()
    max_pairs: int = 200
    paraphrases: int = 2
    seed: int = 0
    filename: str = "make-qa.jsonl"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {**d, "document_files": list(self.document_files), "version": SPEC_VERSION}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MakeQASpec:
        d = {k: v for k, v in d.items() if k != "version"}
        d["document_files"] = tuple(d.get("document_files", ()))
        return cls(**d)


def coverage(report: Any) -> dict[str, Any]:
    """make-qa's report as the API shows it (the same keys as a comparison's coverage)."""
    return {
        "documents": report.documents,
        "documents_covered": report.documents_covered,
        "passages": report.passages,
        "passages_covered": report.passages_covered,
        "pairs_generated": report.generated,
        "pairs_kept": report.kept,
        "pairs_dropped": sum(report.dropped_by_reason.values()),
        "dropped_by_reason": dict(report.dropped_by_reason),
        "paraphrases": report.paraphrases,
        "examples": report.examples,
        "skipped_files": [list(s) for s in report.skipped_files],
    }


def run_make_qa_task(task: TaskRecord, ctx: TaskContext, progress: Progress) -> dict[str, Any]:
    from ragtune.generate.engine import Generator
    from ragtune.tune.makeqa import LocalQAWriter, make_qa_files

    spec = MakeQASpec.from_dict(task.spec)
    work = ctx.settings.home / "make-qa" / task.id
    try:
        progress.report("copying the documents", 0.0)
        shutil.rmtree(work, ignore_errors=True)
        docs = work / "docs"
        copy_documents(ctx, task.project, spec.vector_store_id, spec.document_files, docs)
        progress.report("loading the generator", 0.05)
        generator = Generator.load(ctx.settings.base_model, device=ctx.settings.device)
        done, last = 0, 0.0

        def generated(n: int) -> None:  # as prompts finish: progress, and the stopping point
            nonlocal done, last
            done += n
            if time.monotonic() - last > 0.5:
                last = time.monotonic()
                progress.report("generating", 0.1, f"{done} prompts answered")

        writer = LocalQAWriter(generator, progress=generated)
        progress.report("generating", 0.1, "writing questions")
        records, report = make_qa_files(
            [docs], writer, seed=spec.seed, paraphrases=spec.paraphrases, max_pairs=spec.max_pairs
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    cover = coverage(report)
    if not records:
        dropped = ", ".join(f"{k} {v}" for k, v in report.dropped_by_reason.items() if v)
        raise TaskFailed(
            f"make-qa kept no pairs: {report.generated} generated"
            + (f", dropped: {dropped}" if dropped else ""),
            {"coverage": cover, "training_file": None},
            "add documents with more plain factual sentences, or upload training data",
        )
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
    progress.report("saving the training file", 0.95)
    progress.check()  # still this attempt's: the file is added once
    file_id = f"file-{uuid.uuid4().hex[:24]}"
    key = f"{file_id}.jsonl"
    ctx.objects.put_bytes(key, data)
    ctx.db.add_file(
        FileRecord(
            id=file_id,
            project=task.project,
            filename=spec.filename,
            purpose="fine-tune",
            bytes=len(data),
            created_at=int(time.time()),
            key=key,
        )
    )
    return {"coverage": cover, "training_file": file_id}
