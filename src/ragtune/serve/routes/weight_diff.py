"""``GET /v1/fine_tuning/jobs/{id}/diff`` — a ragtune extension beside OpenAI's API: what
fine-tuning changed, per module, exactly as ``ragtune diff RUN --json`` reports it
(:func:`ragtune.tune.diff.weight_diff`: ||W_tuned - W_base|| / ||W_base|| per module)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from ragtune.serve.errors import APIError, not_found
from ragtune.serve.state import ProjectDep, ServiceDep

router = APIRouter(tags=["fine_tuning"])


@router.get("/fine_tuning/jobs/{job_id}/diff")
async def job_weight_diff(
    job_id: str, service: ServiceDep, project: ProjectDep, top: int = 50
) -> dict[str, Any]:
    from ragtune.tune.diff import weight_diff

    job = service.db.get_job(project, job_id)
    if job is None:
        raise not_found("fine-tuning job", job_id, "fine_tuning_job_id")
    if job.status != "succeeded":
        raise APIError(
            409, f"Job {job_id} is {job.status}; the diff needs a succeeded job", "job_id"
        )
    run_dir = await run_in_threadpool(service.run_dir, job)  # fetched if another host's
    diff = (await run_in_threadpool(weight_diff, run_dir)).to_dict()
    # model names, not the server's folders
    diff.update(object="fine_tuning.job.diff", base=job.model, tuned=job.fine_tuned_model)
    diff["modules"] = diff["modules"][: max(top, 0)]
    return diff
