"""/v1/fine_tuning/jobs: create, list, retrieve, cancel, events, checkpoints. Training itself
runs in a worker process (:mod:`ragtune.jobs.worker`), never inside a request."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

from fastapi import APIRouter, Query, Request

from ragtune.jobs.runs import run_events
from ragtune.jobs.store import JobRecord, newest_first, page
from ragtune.serve.errors import APIError, not_found
from ragtune.serve.protocol.common import list_page
from ragtune.serve.protocol.fine_tuning import (
    Error,
    FineTuningJob,
    FineTuningJobCheckpoint,
    FineTuningJobEvent,
    Hyperparameters,
    JobCreateParams,
)
from ragtune.serve.routes.models import checkpoint_model, run_checkpoints
from ragtune.serve.state import ProjectDep, Service, ServiceDep

router = APIRouter(tags=["fine_tuning"])
_SUFFIX = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_METADATA = re.compile(r"^metadata\[(.+)\]$")


def job_object(service: Service, job: JobRecord) -> dict[str, Any]:
    hp = dict(job.spec["hyperparameters"])
    resolved = _resolved_hyperparameters(service, job)
    hp.update(resolved)
    hyper = Hyperparameters(**hp)
    return FineTuningJob(
        id=job.id,
        created_at=job.created_at,
        error=None if job.error is None else Error(**job.error.__dict__),
        fine_tuned_model=job.fine_tuned_model,
        finished_at=job.finished_at,
        hyperparameters=hyper,
        model=job.model,
        organization_id=job.project,
        result_files=job.result_files,
        seed=job.seed,
        status=job.status,
        trained_tokens=job.trained_tokens,
        training_file=job.training_file,
        validation_file=job.validation_file,
        estimated_finish=job.estimated_finish,
        metadata=job.metadata,
        method={"type": "supervised", "supervised": {"hyperparameters": hyper}},  # type: ignore[arg-type]
    ).model_dump()


def _resolved_hyperparameters(service: Service, job: JobRecord) -> dict[str, Any]:
    """The values ``auto`` became, once the run has started."""
    from ragtune.tune.events import read_manifest

    published = service.published(job)  # another host's run: its manifest, no download
    try:
        manifest = (
            published["manifest"] if published else read_manifest(service.settings.run_dir(job.id))
        )
    except Exception:
        return {}
    if manifest is None:
        return {}
    hp = manifest["hyperparameters"]
    return {
        "n_epochs": hp["n_epochs"],
        "batch_size": hp["batch_size"],
        "learning_rate_multiplier": hp["learning_rate_multiplier"],
    }


def _training_file(service: Service, project: str, file_id: str | None, param: str) -> None:
    if file_id is None:
        return
    record = service.db.get_file(project, file_id)
    if record is None:
        raise APIError(
            400, f"Invalid file ID: {file_id!r} does not exist", param, "invalid_file_id"
        )
    if record.purpose != "fine-tune":
        raise APIError(
            400,
            f"File {file_id} has purpose {record.purpose!r}; upload it with purpose 'fine-tune'",
            param,
            "invalid_file_purpose",
        )


@router.post("/fine_tuning/jobs")
def create_job(body: JobCreateParams, service: ServiceDep, project: ProjectDep) -> dict[str, Any]:
    if body.model not in (service.settings.base_model_id, "default"):
        raise APIError(
            400,
            f"Model {body.model!r} is not available for fine-tuning; use "
            f"{service.settings.base_model_id!r}",
            "model",
            "model_not_available",
        )
    if body.method is not None and body.method.type != "supervised":
        raise APIError(
            400,
            f"Fine-tuning method {body.method.type!r} is not supported yet; use 'supervised'",
            "method.type",
            "unsupported_method",
        )
    if body.suffix is not None and not _SUFFIX.match(body.suffix):
        raise APIError(
            400, "suffix must be 1-64 letters, digits, '-' or '_'", "suffix", "invalid_value"
        )
    _training_file(service, project, body.training_file, "training_file")
    _training_file(service, project, body.validation_file, "validation_file")
    hp = Hyperparameters()
    if body.method is not None and body.method.supervised is not None:
        hp = body.method.supervised.hyperparameters or hp
    elif body.hyperparameters is not None:
        hp = body.hyperparameters
    for name, value in hp.model_dump().items():
        if value not in (None, "auto") and value <= 0:
            raise APIError(
                400, f"{name} must be positive", f"hyperparameters.{name}", "invalid_value"
            )
    if service.db.count_waiting() >= service.settings.max_waiting_jobs:
        raise APIError(
            429, "Too many fine-tuning jobs are waiting; try again later", code="queue_full"
        )
    job = JobRecord(
        id=f"ftjob-{uuid.uuid4().hex[:24]}",
        project=project,
        created_at=int(time.time()),
        model=service.settings.base_model_id,
        training_file=body.training_file,
        validation_file=body.validation_file,
        suffix=body.suffix,
        seed=body.seed if body.seed is not None else int(uuid.uuid4().int % 2**31),
        metadata=body.metadata,
        spec={
            "hyperparameters": {
                k: v if v is not None else "auto" for k, v in hp.model_dump().items()
            },
            "training_type": body.training_type,
            "nproc_per_node": body.ragtune.nproc_per_node if body.ragtune else None,
            "parallel": body.ragtune.parallel if body.ragtune else "ddp",
            "nnodes": body.ragtune.nnodes if body.ragtune else None,
        },
        status="validating_files",
    )
    service.db.add_job(job)
    from ragtune.jobs.sqlite import new_event

    service.db.add_event(new_event(job.id, f"Created fine-tuning job: {job.id}"))
    return job_object(service, job)


def _job(service: Service, project: str, job_id: str) -> JobRecord:
    job = service.db.get_job(project, job_id)
    if job is None:
        raise not_found("fine-tuning job", job_id, "fine_tuning_job_id")
    return job


@router.get("/fine_tuning/jobs")
def list_jobs(
    request: Request,
    service: ServiceDep,
    project: ProjectDep,
    after: str | None = None,
    limit: int = Query(20, ge=1, le=1000),
) -> dict[str, Any]:
    metadata = {m.group(1): v for k, v in request.query_params.items() if (m := _METADATA.match(k))}
    jobs, more = service.db.list_jobs(project, after, limit, metadata or None)
    return list_page([job_object(service, j) for j in jobs], more)


@router.get("/fine_tuning/jobs/{job_id}")
def retrieve_job(job_id: str, service: ServiceDep, project: ProjectDep) -> dict[str, Any]:
    return job_object(service, _job(service, project, job_id))


@router.post("/fine_tuning/jobs/{job_id}/cancel")
def cancel_job(job_id: str, service: ServiceDep, project: ProjectDep) -> dict[str, Any]:
    job = _job(service, project, job_id)
    if job.status in ("succeeded", "failed", "cancelled"):
        raise APIError(
            409,
            f"Job {job_id} has already {job.status}; it cannot be cancelled",
            code="job_finished",
        )
    job = service.db.request_cancel(project, job_id) or job
    return job_object(service, job)


@router.get("/fine_tuning/jobs/{job_id}/events")
def list_events(
    job_id: str,
    service: ServiceDep,
    project: ProjectDep,
    after: str | None = None,
    limit: int = Query(20, ge=1, le=1000),
) -> dict[str, Any]:
    job = _job(service, project, job_id)
    events = newest_first(  # as OpenAI lists them
        service.db.list_events(job.id), run_events(job.id, service.run_dir(job))
    )
    chunk, more = page(events, [e.id for e in events], after, limit)
    return list_page(
        [
            FineTuningJobEvent(
                id=e.id,
                created_at=e.created_at,
                level=e.level,
                message=e.message,
                data=e.data,
                type=e.type,
            ).model_dump()
            for e in chunk
        ],
        more,
    )


@router.get("/fine_tuning/jobs/{job_id}/checkpoints")
def list_checkpoints(
    job_id: str,
    service: ServiceDep,
    project: ProjectDep,
    after: str | None = None,
    limit: int = Query(10, ge=1, le=1000),
) -> dict[str, Any]:
    job = _job(service, project, job_id)
    items = [
        FineTuningJobCheckpoint(
            id=f"ftckpt-{job.id.removeprefix('ftjob-')}-{c.step}",
            created_at=c.created_at,
            fine_tuned_model_checkpoint=checkpoint_model(
                job, service.settings.base_model_id, c.step
            ),
            fine_tuning_job_id=job.id,
            metrics={**c.metrics, "step": c.step},  # type: ignore[arg-type]
            step_number=c.step,
        ).model_dump()
        for c in run_checkpoints(service, job)
    ]
    chunk, more = page(items, [i["id"] for i in items], after, limit)
    return list_page(chunk, more)
