"""/v1/models: the base model, the embedder, and the project's fine-tuned models."""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter

from ragtune.jobs.runs import RunCheckpoint, checkpoints
from ragtune.jobs.store import JobRecord
from ragtune.models import DEFAULT_EMBEDDER_NAME
from ragtune.serve.errors import APIError, not_found
from ragtune.serve.protocol.common import list_page
from ragtune.serve.protocol.models import Model, ModelDeleted
from ragtune.serve.state import ProjectDep, Service, ServiceDep

router = APIRouter(tags=["models"])
_CHECKPOINT = re.compile(r"^ckpt-step-(\d+)$")
OWNER = "ragtune"


def embedder_id(service: Service) -> str:
    e = service.settings.embedder
    return (
        DEFAULT_EMBEDDER_NAME
        if e in ("default", DEFAULT_EMBEDDER_NAME)
        else e.rstrip("/").split("/")[-1]
    )


def checkpoint_model(job: JobRecord, base_id: str, step: int) -> str:
    return f"ft:{base_id}:{job.suffix or ''}:{job.id}:ckpt-step-{step}"


def _owned_job(service: Service, project: str, model: str) -> tuple[JobRecord, int | None] | None:
    """The job behind ``ft:BASE:SUFFIX:JOBID[:ckpt-step-N]`` if it is this project's."""
    parts = model.split(":")
    if len(parts) not in (4, 5) or parts[0] != "ft" or parts[1] != service.settings.base_model_id:
        return None
    job = service.db.get_job(project, parts[3])
    if job is None or (job.suffix or "") != parts[2]:
        return None
    if len(parts) == 5:
        m = _CHECKPOINT.match(parts[4])
        return (job, int(m.group(1))) if m else None
    if job.status != "succeeded" or job.model_deleted or job.fine_tuned_model != model:
        return None
    return job, None


def resolve_model(service: Service, project: str, model: str) -> str | None:
    """The engine's name for ``model`` (None: the base model); 404 when unknown or not
    the project's."""
    if model in (service.settings.base_model_id, "default"):
        return None
    found = _owned_job(service, project, model)
    if found is not None:
        job, step = found
        run_dir = service.run_dir(job)  # fetched once from the artefact store if need be
        path = run_dir if step is None else run_dir / "checkpoints" / f"step-{step:08d}.pt"
        if path.exists():
            service.engine.add_model(model, path)
            return model
    raise APIError(
        404,
        f"The model '{model}' does not exist or you do not have access to it.",
        "model",
        "model_not_found",
    )


def run_checkpoints(service: Service, job: JobRecord) -> list[RunCheckpoint]:
    """The job's saved checkpoints, newest first: from the run folder, or from the artefact
    store's record of a run this host does not hold (read without downloading the model)."""
    published = service.published(job)
    if published is None:
        return checkpoints(service.settings.run_dir(job.id))
    folder = service.settings.run_dir(job.id) / "checkpoints"
    found = [
        RunCheckpoint(
            int(c["step"]), int(c["created_at"]), c["metrics"], folder / f"step-{c['step']:08d}.pt"
        )
        for c in published["checkpoints"]
    ]
    return sorted(found, key=lambda c: -c.step)


def _model(ident: str, created: int) -> dict[str, Any]:
    return Model(id=ident, created=created, owned_by=OWNER).model_dump()


@router.get("/models")
def list_models(service: ServiceDep, project: ProjectDep) -> dict[str, Any]:
    data = [_model(service.settings.base_model_id, 0), _model(embedder_id(service), 0)]
    jobs, _ = service.db.list_jobs(project, None, 10_000, None)
    base_id = service.settings.base_model_id
    for job in jobs:
        if job.fine_tuned_model and not job.model_deleted:
            data.append(
                Model(
                    id=job.fine_tuned_model, created=job.finished_at or 0, owned_by=project
                ).model_dump()
            )
            # Its saved checkpoints are models too (callable in chat), as in OpenAI's API.
            for c in run_checkpoints(service, job):
                ident = checkpoint_model(job, base_id, c.step)
                data.append(Model(id=ident, created=c.created_at, owned_by=project).model_dump())
    return list_page(data)


@router.get("/models/{model:path}")
def retrieve_model(model: str, service: ServiceDep, project: ProjectDep) -> dict[str, Any]:
    if model in (service.settings.base_model_id, embedder_id(service)):
        return _model(model, 0)
    found = _owned_job(service, project, model)
    if found is None:
        raise not_found("model", model, "model")
    job, _ = found
    return Model(id=model, created=job.finished_at or job.created_at, owned_by=project).model_dump()


@router.delete("/models/{model:path}")
def delete_model(model: str, service: ServiceDep, project: ProjectDep) -> dict[str, Any]:
    if model in (service.settings.base_model_id, embedder_id(service)):
        raise APIError(403, f"The model '{model}' is a base model and cannot be deleted", "model")
    found = _owned_job(service, project, model)
    if found is None or found[1] is not None:
        raise not_found("model", model, "model")
    service.db.delete_model(project, found[0].id)
    service.engine.remove_model(model)
    return ModelDeleted(id=model, deleted=True).model_dump()
