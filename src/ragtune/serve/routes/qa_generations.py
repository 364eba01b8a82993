"""/v1/qa_generations — a ragtune extension: ``ragtune make-qa`` on the project's documents
(a vector store's files or uploaded files) as a job of the worker. The result is a new file
with purpose ``fine-tune`` (``training_file``) and make-qa's coverage: pairs generated, kept
and dropped by reason, documents and passages covered."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request

from ragtune.jobs.make_qa import MakeQASpec
from ragtune.jobs.tasks import TaskRecord
from ragtune.serve.protocol.common import list_page
from ragtune.serve.protocol.comparisons import QAGeneration, QAGenerationCreateParams
from ragtune.serve.protocol.fine_tuning import Error
from ragtune.serve.routes.comparisons import (
    cancel_task,
    check_documents,
    get_task,
    queue_task,
    task_db,
)
from ragtune.serve.state import ProjectDep, ServiceDep

router = APIRouter(tags=["qa_generations"])


def generation_object(task: TaskRecord) -> dict[str, Any]:
    result = task.result or {}
    return QAGeneration(
        id=task.id,
        created_at=task.created_at,
        status=task.status,
        progress=task.progress if task.status == "running" else None,  # type: ignore[arg-type]
        finished_at=task.finished_at,
        error=None if task.error is None else Error(**task.error.__dict__),
        request={k: v for k, v in task.spec.items() if k != "version"},
        training_file=result.get("training_file"),
        coverage=result.get("coverage"),
    ).model_dump()


@router.post("/qa_generations")
def create_generation(
    body: QAGenerationCreateParams, request: Request, service: ServiceDep, project: ProjectDep
) -> dict[str, Any]:
    files, store_id = check_documents(request, service, project, body.documents)
    spec = MakeQASpec(
        vector_store_id=store_id,
        document_files=files,
        max_pairs=body.max_pairs,
        paraphrases=body.paraphrases,
        seed=body.seed,
        filename=body.filename,
    )
    return generation_object(queue_task(request, service, project, "make_qa", spec.to_dict()))


@router.get("/qa_generations")
def list_generations(
    request: Request,
    project: ProjectDep,
    after: str | None = None,
    limit: int = Query(20, ge=1, le=100),
) -> dict[str, Any]:
    tasks, more = task_db(request).list(project, "make_qa", after, limit)
    return list_page([generation_object(t) for t in tasks], more)


@router.get("/qa_generations/{generation_id}")
def retrieve_generation(
    generation_id: str, request: Request, project: ProjectDep
) -> dict[str, Any]:
    return generation_object(get_task(request, project, "make_qa", generation_id))


@router.post("/qa_generations/{generation_id}/cancel")
def cancel_generation(generation_id: str, request: Request, project: ProjectDep) -> dict[str, Any]:
    return generation_object(cancel_task(request, project, "make_qa", generation_id))
