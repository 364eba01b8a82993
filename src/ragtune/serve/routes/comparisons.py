"""/v1/comparisons — ragtune's own extension beside the OpenAI endpoints: ``ragtune compare``
as a job of the worker. Create (every parameter checked before the job exists, each error
naming its parameter), list, retrieve (status, progress, summary), cancel, and the report:
``/report`` (the HTML page) and ``/results`` (results.json). Every query is scoped to the
key's project."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from ragtune.errors import RagtuneError
from ragtune.jobs.comparisons import ComparisonSpec
from ragtune.jobs.store import FileRecord
from ragtune.jobs.tasks import TaskDB, TaskKind, TaskRecord, new_task_id, open_tasks
from ragtune.serve.errors import APIError, not_found
from ragtune.serve.protocol.common import list_page
from ragtune.serve.protocol.comparisons import Comparison, ComparisonCreateParams, Documents
from ragtune.serve.protocol.fine_tuning import Error
from ragtune.serve.state import ProjectDep, Service, ServiceDep

router = APIRouter(tags=["comparisons"])
# The report is a self-contained page (inline CSS and SVG, no scripts): it may load nothing.
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'"


def task_db(request: Request) -> TaskDB:
    """The task table of this app (opened on first use)."""
    state = request.app.state
    if getattr(state, "task_db", None) is None:
        service: Service = state.service
        state.task_db = open_tasks(service.settings.database)
    db: TaskDB = state.task_db
    return db


def comparison_object(task: TaskRecord) -> dict[str, Any]:
    done = task.status == "succeeded" and task.result is not None
    return Comparison(
        id=task.id,
        created_at=task.created_at,
        status=task.status,
        progress=task.progress if task.status == "running" else None,  # type: ignore[arg-type]
        finished_at=task.finished_at,
        error=None if task.error is None else Error(**task.error.__dict__),
        request={k: v for k, v in task.spec.items() if k not in ("version", "metadata")},
        summary=task.result["summary"] if done and task.result else None,
        report_url=f"/v1/comparisons/{task.id}/report" if done else None,
        results_url=f"/v1/comparisons/{task.id}/results" if done else None,
        metadata=task.spec.get("metadata"),
    ).model_dump()


def _file(
    service: Service, project: str, file_id: str, param: str, purposes: tuple[str, ...]
) -> FileRecord:
    record = service.db.get_file(project, file_id)
    if record is None:
        raise APIError(
            400, f"Invalid file ID: {file_id!r} does not exist", param, "invalid_file_id"
        )
    if record.purpose not in purposes:
        raise APIError(
            400,
            f"File {file_id} has purpose {record.purpose!r}; upload it with purpose "
            + " or ".join(repr(p) for p in purposes),
            param,
            "invalid_file_purpose",
        )
    return record


def _check_questions(service: Service, record: FileRecord, body: ComparisonCreateParams) -> None:
    """Read the questions file now, so a bad one is refused before the job exists."""
    from ragtune.evaluate.questions import load_questions, select_test

    with tempfile.TemporaryDirectory() as tmp:
        # SQuAD JSON is recognised by its suffix, as `ragtune compare` does
        path = Path(tmp) / (
            "questions.json" if record.filename.lower().endswith(".json") else "questions.jsonl"
        )
        shutil.copyfile(service.objects.local_path(record.key), path)
        try:
            questions = load_questions(path)
        except RagtuneError as e:
            message = str(e).replace(str(path), record.id).replace("\n  hint:", "; hint:")
            raise APIError(400, message, "questions.file_id", "invalid_questions_file") from None
    if not select_test(questions, body.max_questions, body.seed):
        raise APIError(
            400,
            f"File {record.id} has no test-split questions to score; mark some with "
            '"split": "test"',
            "questions.file_id",
            "invalid_questions_file",
        )


def check_documents(
    request: Request, service: Service, project: str, docs: Documents
) -> tuple[tuple[str, ...], str | None]:
    """The documents' file ids and vector store id, each checked to be the project's."""
    if (docs.file_ids is None) == (docs.vector_store_id is None):
        raise APIError(
            400,
            "Give documents as either file_ids or vector_store_id",
            "documents",
            "invalid_value",
        )
    for i, file_id in enumerate(docs.file_ids or []):
        _file(service, project, file_id, f"documents.file_ids[{i}]", ("assistants", "user_data"))
    if docs.vector_store_id is not None:
        from ragtune.serve.routes.vector_stores import vector_store_db

        vs = vector_store_db(request)
        if vs.get_store(project, docs.vector_store_id) is None:
            raise not_found("vector store", docs.vector_store_id, "documents.vector_store_id")
        if not vs.store_files(project, docs.vector_store_id):
            raise APIError(
                400,
                f"Vector store {docs.vector_store_id} has no files",
                "documents.vector_store_id",
                "invalid_value",
            )
    return tuple(docs.file_ids or ()), docs.vector_store_id


def _resolve(
    request: Request, service: Service, project: str, body: ComparisonCreateParams
) -> ComparisonSpec:
    """Check every parameter against the project's objects; the resolved spec."""
    from ragtune.evaluate.formats import parse_format_spec

    if body.model not in (None, "default", service.settings.base_model_id):
        raise APIError(
            400,
            f"Model {body.model!r} is not available; comparisons use the service's base "
            f"model {service.settings.base_model_id!r}",
            "model",
            "model_not_available",
        )
    if len(set(body.arms)) != len(body.arms):
        raise APIError(400, "An arm is listed twice", "arms", "invalid_value")
    rag = any(a in ("rag", "ft_rag") for a in body.arms)
    ft = any(a in ("ft", "ft_rag") for a in body.arms)
    questions = _file(
        service,
        project,
        body.questions.file_id,
        "questions.file_id",
        ("assistants", "user_data"),
    )
    _check_questions(service, questions, body)
    squad = questions.filename.lower().endswith(".json")

    docs = body.documents
    files, store_id = check_documents(request, service, project, docs) if docs else ((), None)
    training = body.training
    if docs is None and not squad and (rag or (ft and training.type == "generated")):
        raise APIError(
            400,
            "These arms need documents (the knowledge base, or make-qa's source); "
            "give documents.file_ids or documents.vector_store_id",
            "documents",
            "missing_required_parameter",
        )

    settings: dict[str, Any] = {
        "arms": list(body.arms),
        "freshness": body.freshness,
        "retention": body.retention,
        "max_questions": body.max_questions,
        "seed": body.seed,
        "k": body.k,
        "mode": body.mode,
        "context_tokens": body.context_tokens,
        "max_new_tokens": body.max_new_tokens,
        "demonstrations": body.demonstrations,
        "chunk_tokens": body.chunk_tokens,
        "chunk_overlap": body.chunk_overlap,
        "dtype": body.dtype,
    }
    if (
        body.chunk_tokens
        and body.chunk_overlap is not None
        and body.chunk_overlap >= body.chunk_tokens
    ):
        raise APIError(
            400, "chunk_overlap must be smaller than chunk_tokens", "chunk_overlap", "invalid_value"
        )
    hp: dict[str, Any] = {}
    training_file = job_id = None
    method = body.method
    if training.type == "file":
        if training.file_id is None:
            raise APIError(
                400,
                "training.file_id is required for training type 'file'",
                "training.file_id",
                "missing_required_parameter",
            )
        training_file = _file(
            service, project, training.file_id, "training.file_id", ("fine-tune",)
        ).id
    elif training.type == "fine_tuning_job":
        if training.fine_tuning_job_id is None:
            raise APIError(
                400,
                "training.fine_tuning_job_id is required for training type 'fine_tuning_job'",
                "training.fine_tuning_job_id",
                "missing_required_parameter",
            )
        job = service.db.get_job(project, training.fine_tuning_job_id)
        if job is None:
            raise not_found(
                "fine-tuning job", training.fine_tuning_job_id, "training.fine_tuning_job_id"
            )
        if job.status != "succeeded":
            raise APIError(
                400,
                f"fine-tuning job {job.id} is {job.status}; a comparison uses a succeeded "
                "job's model",
                "training.fine_tuning_job_id",
                "invalid_value",
            )
        trained = job.spec.get("training_type", "lora")
        if method is not None and method != trained:
            raise APIError(
                400,
                f"fine-tuning job {job.id} trained {trained}, not {method}",
                "method",
                "invalid_value",
            )
        # The fine-tuned arms use the job's model as it is (no training); its
        # hyperparameters are recorded, and used again only by the freshness step.
        job_id, training_file, method = job.id, job.training_file, trained
        hp = dict(job.spec.get("hyperparameters", {}))  # the job's, unless given below
    elif training.max_pairs is not None:
        settings["max_qa_pairs"] = training.max_pairs
    if training.type != "generated" and training.max_pairs is not None:
        raise APIError(
            400,
            "training.max_pairs applies to generated training data only",
            "training.max_pairs",
            "invalid_value",
        )
    if body.hyperparameters is not None:
        hp.update({k: v for k, v in body.hyperparameters.model_dump().items() if v is not None})
    for name, value in hp.items():
        if value not in (None, "auto") and (isinstance(value, bool) or value <= 0):
            raise APIError(
                400, f"{name} must be positive", f"hyperparameters.{name}", "invalid_value"
            )
    auto = {k: None if v in (None, "auto") else v for k, v in hp.items()}
    settings.update(
        method=method or "lora",
        epochs=auto.get("n_epochs"),
        batch_size_train=auto.get("batch_size"),
        lr_multiplier=auto.get("learning_rate_multiplier"),
    )
    if body.format_check is not None:
        if body.format_check.startswith("json-schema:") and not body.format_check[
            12:
        ].lstrip().startswith("{"):
            raise APIError(
                400,
                "format_check json-schema must be inline: json-schema:{...}",
                "format_check",
                "invalid_value",
            )
        try:
            parse_format_spec(body.format_check, body.format_instruction)
        except RagtuneError as e:
            raise APIError(
                400, str(e).replace("\n  hint:", "; hint:"), "format_check", "invalid_value"
            ) from None
    return ComparisonSpec(
        questions_file=questions.id,
        document_files=files,
        vector_store_id=store_id,
        training=training.type,
        training_file=training_file,
        fine_tuning_job=job_id,
        format_check=body.format_check,
        format_instruction=body.format_instruction,
        settings=settings,
        metadata=body.metadata,
    )


@router.post("/comparisons")
def create_comparison(
    body: ComparisonCreateParams, request: Request, service: ServiceDep, project: ProjectDep
) -> dict[str, Any]:
    spec = _resolve(request, service, project, body)
    return comparison_object(queue_task(request, service, project, "comparison", spec.to_dict()))


def _task(request: Request, project: str, comparison_id: str) -> TaskRecord:
    return get_task(request, project, "comparison", comparison_id)


def get_task(request: Request, project: str, kind: TaskKind, task_id: str) -> TaskRecord:
    task = task_db(request).get(project, kind, task_id)
    if task is None:
        what = "comparison" if kind == "comparison" else "qa generation"
        raise not_found(what, task_id, f"{what.replace(' ', '_')}_id")
    return task


def cancel_task(request: Request, project: str, kind: TaskKind, task_id: str) -> TaskRecord:
    """Cancel a task of the project (409 once it has ended)."""
    task = get_task(request, project, kind, task_id)
    if task.status in ("succeeded", "failed", "cancelled"):
        raise APIError(
            409,
            f"{task_id} has already {task.status}; it cannot be cancelled",
            code=f"{kind}_finished",
        )
    return task_db(request).request_cancel(project, kind, task_id) or task


def queue_task(
    request: Request, service: Service, project: str, kind: TaskKind, spec: dict[str, Any]
) -> TaskRecord:
    """Add a task of the project to the queue (429 when too many wait)."""
    tasks = task_db(request)
    if tasks.count_waiting() >= service.settings.max_waiting_jobs:
        raise APIError(429, "Too many tasks are waiting; try again later", code="queue_full")
    task = TaskRecord(
        id=new_task_id(kind), project=project, kind=kind, created_at=int(time.time()), spec=spec
    )
    tasks.add(task)
    return task


@router.get("/comparisons")
def list_comparisons(
    request: Request,
    project: ProjectDep,
    after: str | None = None,
    limit: int = Query(20, ge=1, le=100),
) -> dict[str, Any]:
    tasks, more = task_db(request).list(project, "comparison", after, limit)
    return list_page([comparison_object(t) for t in tasks], more)


@router.get("/comparisons/{comparison_id}")
def retrieve_comparison(
    comparison_id: str, request: Request, project: ProjectDep
) -> dict[str, Any]:
    return comparison_object(_task(request, project, comparison_id))


@router.post("/comparisons/{comparison_id}/cancel")
def cancel_comparison(comparison_id: str, request: Request, project: ProjectDep) -> dict[str, Any]:
    return comparison_object(cancel_task(request, project, "comparison", comparison_id))


def _report_bytes(service: Service, task: TaskRecord, which: str) -> bytes:
    if task.status != "succeeded" or not task.result:
        raise APIError(
            409,
            f"Comparison {task.id} is {task.status}; its report exists once it has succeeded",
            code="comparison_not_finished",
        )
    return b"".join(service.objects.open(task.result["objects"][which]))


@router.get("/comparisons/{comparison_id}/report")
def comparison_report(
    comparison_id: str, request: Request, service: ServiceDep, project: ProjectDep
) -> Response:
    data = _report_bytes(service, _task(request, project, comparison_id), "html")
    return Response(
        data,
        media_type="text/html; charset=utf-8",
        headers={"Content-Security-Policy": REPORT_CSP, "X-Content-Type-Options": "nosniff"},
    )


@router.get("/comparisons/{comparison_id}/results")
def comparison_results(
    comparison_id: str, request: Request, service: ServiceDep, project: ProjectDep
) -> dict[str, Any]:
    data = _report_bytes(service, _task(request, project, comparison_id), "results")
    results: dict[str, Any] = json.loads(data)
    return results
