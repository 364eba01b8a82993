"""A comparison as a task of the worker: ``ragtune compare`` (:func:`ragtune.evaluate.compare.
run_compare`) on the service's files, reporting its stage as it goes.

The request is validated and resolved by the route (:mod:`ragtune.serve.routes.comparisons`)
into a :class:`ComparisonSpec`. The worker copies the inputs out of the object store into
the task's folder (``$RAGTUNE_HOME/serve/comparisons/ID``) under their uploaded names (so the
questions' gold document ids match the documents), runs the comparison there, and stores
``index.html`` and ``results.json`` as objects, so any server of the service can hand them
out. A comparison whose worker stopped resumes from the state ``run_compare`` saved.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from ragtune.errors import RagtuneError
from ragtune.evaluate.settings import ARMS, CompareInputs, CompareSettings
from ragtune.jobs.store import FileRecord
from ragtune.jobs.task_worker import Progress, TaskContext
from ragtune.jobs.tasks import TaskRecord

SPEC_VERSION = 1
Training = Literal["file", "fine_tuning_job", "generated"]
# The comparison settings a request may set (the rest come from the service: its base
# model, embedder, device).
REQUEST_SETTINGS = (
    "arms",
    "method",
    "epochs",
    "lr_multiplier",
    "batch_size_train",
    "k",
    "mode",
    "context_tokens",
    "max_new_tokens",
    "max_questions",
    "max_qa_pairs",
    "demonstrations",
    "freshness",
    "retention",
    "seed",
    "chunk_tokens",
    "chunk_overlap",
    "dtype",
)


@dataclass(frozen=True)
class ComparisonSpec:
    """A comparison as the route resolved it: file ids of the project, and settings."""

    questions_file: str
    document_files: tuple[str, ...] = ()
    vector_store_id: str | None = None
    training: Training = "generated"
    training_file: str | None = None  # training "file", or the fine-tuning job's file
    fine_tuning_job: str | None = None  # its run is the fine-tuned arms' model
    format_check: str | None = None
    format_instruction: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)  # REQUEST_SETTINGS only
    metadata: dict[str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["document_files"] = list(self.document_files)
        d["version"] = SPEC_VERSION
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ComparisonSpec:
        d = dict(d)
        version = d.pop("version", SPEC_VERSION)
        if version != SPEC_VERSION:
            raise RagtuneError(f"Comparison spec version {version} is not supported")
        d["document_files"] = tuple(d.get("document_files", ()))
        return cls(**d)

    def compare_settings(
        self, service_model: str, embedder: str, backend: str, device: str
    ) -> CompareSettings:
        s = dict(self.settings)
        s["arms"] = tuple(s.get("arms", ARMS))
        return CompareSettings(
            model=service_model,
            embedder=None if embedder == "default" else embedder,
            backend=backend,  # type: ignore[arg-type]
            device=device,
            **{k: v for k, v in s.items() if k in REQUEST_SETTINGS},
        )


def stage_plan(settings: CompareSettings, generated: bool) -> list[str]:
    """The stages a comparison goes through, in order (its progress is the share done)."""
    stages = ["preparing"]
    if settings.ft_arms and generated:
        stages.append("generating training data")
    if settings.rag_arms:
        stages.append("building the knowledge base")
    if settings.ft_arms:
        stages.append("fine-tuning")
    stages += [f"answering: {arm}" for arm in settings.arms]
    if settings.freshness:
        stages.append("freshness")
    return stages


def stage_of(message: str) -> str | None:
    """The stage a ``run_compare`` message starts, or None for a message within a stage."""
    if message.startswith("generating training examples"):
        return "generating training data"
    if message.startswith("building the knowledge base"):
        return "building the knowledge base"
    if message.startswith(("fine-tuning (", "fine-tuned arms: the finished run")):
        return "fine-tuning"
    if m := re.match(r"answering with arm (\w+)", message):
        return f"answering: {m.group(1)}"
    if message.startswith("freshness:"):
        return "freshness"
    return None


def work_dir(ctx: TaskContext, task_id: str) -> Path:
    return ctx.settings.home / "comparisons" / task_id


def report_keys(task_id: str) -> dict[str, str]:
    """The object keys of a finished comparison's report files."""
    return {"html": f"{task_id}.report.html", "results": f"{task_id}.results.json"}


def _safe_name(name: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).name).lstrip(".") or "file"
    out, i = base, 1
    while out in taken:
        stem, dot, ext = base.rpartition(".")
        out = f"{stem}-{i}{dot}{ext}" if dot else f"{base}-{i}"
        i += 1
    taken.add(out)
    return out


def _file(ctx: TaskContext, project: str, file_id: str) -> FileRecord:
    record = ctx.db.get_file(project, file_id)
    if record is None:
        raise RagtuneError(f"File {file_id} was deleted before the comparison started")
    return record


def _copy(ctx: TaskContext, key: str, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copyfile(ctx.objects.local_path(key), tmp)
    tmp.replace(dst)


def copy_documents(
    ctx: TaskContext, project: str, store_id: str | None, file_ids: Sequence[str], dest: Path
) -> None:
    """Copy a vector store's processed files and the given files into ``dest``, under their
    uploaded names (made safe and unique)."""
    names: set[str] = set()
    if store_id:
        files = ctx.vector_stores.store_files(project, store_id, status="completed")
        if not files:
            raise RagtuneError(
                f"Vector store {store_id} has no processed files",
                "add documents to it and wait until they are completed",
            )
        for f in files:
            _copy(ctx, f.object_key, dest / _safe_name(f.filename, names))
    for file_id in file_ids:
        record = _file(ctx, project, file_id)
        _copy(ctx, record.key, dest / _safe_name(record.filename, names))


def materialize(spec: ComparisonSpec, project: str, ctx: TaskContext, work: Path) -> CompareInputs:
    """The comparison's input files, copied out of the object store into ``work/inputs``
    (once: a resumed comparison finds them there, byte for byte the same)."""
    from ragtune.evaluate.formats import parse_format_spec
    from ragtune.jobs.run_store import open_run_store

    inputs = work / "inputs"
    done = inputs / ".complete"
    questions_record = _file(ctx, project, spec.questions_file)
    suffix = ".json" if questions_record.filename.lower().endswith(".json") else ".jsonl"
    questions = inputs / f"questions{suffix}"
    docs = inputs / "docs"
    train = inputs / "train.jsonl" if spec.training_file else None
    if not done.exists():
        shutil.rmtree(inputs, ignore_errors=True)
        _copy(ctx, questions_record.key, questions)
        copy_documents(ctx, project, spec.vector_store_id, spec.document_files, docs)
        if train is not None and spec.training_file:
            _copy(ctx, _file(ctx, project, spec.training_file).key, train)
        done.touch()
    fmt = (
        parse_format_spec(spec.format_check, spec.format_instruction) if spec.format_check else None
    )
    ft_run = ctx.settings.run_dir(spec.fine_tuning_job) if spec.fine_tuning_job else None
    runs = open_run_store()
    if ft_run is not None and runs is not None:  # trained on another host: fetched once
        runs.fetch(ft_run.name, ft_run)
    return CompareInputs(
        questions=questions,
        docs=(docs,) if docs.exists() else (),
        train=train,
        fmt=fmt,
        # A succeeded fine-tuning job: its model is the fine-tuned arms' (not retrained).
        ft_run=ft_run,
    )


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """What the API shows of a finished comparison: the verdict and each arm's figures."""
    verdict = results.get("verdict") or {}
    return {
        "verdict": verdict.get("text"),
        "n_test": results["data"]["n_test"],
        "arms": {
            arm: {k: v for k, v in m.items() if k != "prompt"} for arm, m in results["arms"].items()
        },
        "coverage": results.get("coverage"),
        "corpus": results.get("corpus"),
        "freshness": None
        if results.get("freshness") is None
        else {k: v for k, v in results["freshness"].items() if k != "changes"},
    }


def run_comparison_task(task: TaskRecord, ctx: TaskContext, progress: Progress) -> dict[str, Any]:
    """Run (or resume) the comparison of ``task``; returns the task's result."""
    from ragtune.evaluate.compare import run_compare

    spec = ComparisonSpec.from_dict(task.spec)
    s = ctx.settings
    settings = spec.compare_settings(s.base_model, s.embedder, s.embed_backend, s.device)
    work = work_dir(ctx, task.id)
    stages = stage_plan(settings, spec.training == "generated")
    progress.report("preparing", 0.0, "copying the inputs")
    inputs = materialize(spec, task.project, ctx, work)

    def say(message: str) -> None:
        stage = stage_of(message)
        fraction = stages.index(stage) / len(stages) if stage in stages else None
        progress.report(stage, fraction, message)

    results = run_compare(settings, inputs, work / "report", say=say)
    progress.report("saving the report", 1.0, "saving the report")
    keys = report_keys(task.id)
    ctx.objects.put_bytes(keys["html"], (work / "report" / "index.html").read_bytes())
    ctx.objects.put_bytes(keys["results"], (work / "report" / "results.json").read_bytes())
    return {"summary": summarize(results), "objects": keys}


def remove_work(task: TaskRecord, ctx: TaskContext) -> None:
    """Remove the task's folder and its knowledge base once the comparison has ended (the
    report is kept as objects)."""
    from ragtune.config import kb_path
    from ragtune.evaluate.prepare import kb_name_for

    work = work_dir(ctx, task.id)
    shutil.rmtree(kb_path(kb_name_for(work / "report")), ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
