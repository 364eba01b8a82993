"""Fine-tuning jobs on several hosts (a job's ``ragtune: {nnodes: N}``).

The worker that claims the job is node 0: it hosts torchrun's c10d rendezvous on
``RAGTUNE_WORKER_ADDR:PORT`` (an address the other hosts reach) and puts N - 1 *node tasks*
in the task table (:mod:`ragtune.jobs.tasks`), one per other node. Idle workers claim them
like any task (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so each node is taken once), and
each runs the same ``ragtune tune`` under torchrun as node k of the rendezvous. The run
folder and the uploaded files must be on storage every host shares (``RAGTUNE_HOME`` on a
shared path, ``RAGTUNE_ARTIFACTS``): global rank 0 writes the run, every rank reads it.

Stopping: the ranks agree after every step whether any of them was asked to stop, so a
cancellation on node 0, or a joining worker shutting down, stops every node at the same
step with a checkpoint; the job then ends cancelled or goes back to the queue, and its next
attempt starts a new rendezvous with new node tasks. A node task of an attempt that is over
does nothing. If no worker joins, the rendezvous times out on node 0 (``JOIN_TIMEOUT_S``)
and the attempt fails.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ragtune.jobs.launch import (
    Rendezvous,
    data_paths,
    free_port,
    run_torchrun,
    torchrun_command,
)
from ragtune.jobs.store import JobRecord
from ragtune.jobs.tasks import TaskDB, TaskRecord, new_task_id

if TYPE_CHECKING:
    from ragtune.jobs.task_worker import Progress, TaskContext


def open_rendezvous(
    tasks: TaskDB, job: JobRecord, attempt: str, address: str, nproc: int
) -> tuple[Rendezvous, list[str]]:
    """Node 0's rendezvous for this attempt, and the ids of the node tasks it queued."""
    nnodes = int(job.spec["nnodes"])
    rendezvous = Rendezvous(nnodes, f"{address}:{free_port()}", f"{job.id}-{attempt}")
    ids = []
    for node_rank in range(1, nnodes):
        task = TaskRecord(
            id=new_task_id("train_node"),
            project=job.project,
            kind="train_node",
            created_at=int(time.time()),
            spec={
                "job_id": job.id,
                "attempt": attempt,
                "node_rank": node_rank,
                "nproc": nproc,
                "rendezvous": rendezvous.to_dict(),
            },
        )
        tasks.add(task)
        ids.append(task.id)
    return rendezvous, ids


def close_rendezvous(tasks: TaskDB, project: str, task_ids: list[str]) -> None:
    """Cancel the node tasks no worker took (the run is over without them)."""
    for task_id in task_ids:
        tasks.request_cancel(project, "train_node", task_id)


def run_node_task(task: TaskRecord, ctx: TaskContext, progress: Progress) -> dict[str, Any]:
    """Join a multi-node run as node ``spec.node_rank``; return when torchrun exits."""
    spec = task.spec
    job = ctx.db.get_job(task.project, spec["job_id"])
    if job is None or job.status != "running" or job.attempt != spec["attempt"]:
        return {"node_rank": spec["node_rank"], "status": "skipped: the attempt is over"}
    train_path, valid_path = data_paths(ctx.db, ctx.objects, job)
    run_dir = ctx.settings.run_dir(job.id)
    cmd = torchrun_command(
        spec["nproc"],
        run_dir,
        train_path,
        valid_path,
        job.spec["training_type"],
        ctx.settings.base_model,
        job.seed,
        job.spec["hyperparameters"],
        ctx.settings.device,
        job.spec.get("parallel") or "ddp",
        Rendezvous(**spec["rendezvous"]),
        spec["node_rank"],
    )
    progress.report("training", 0.0, f"node {spec['node_rank']} of {job.id}")

    def should_stop() -> bool:
        from ragtune.jobs.task_worker import TaskStopped

        try:
            progress.check()
        except TaskStopped:  # cancelled, lost or shutting down: every node stops
            return True
        return False

    status, _ = run_torchrun(cmd, run_dir, should_stop, node_rank=spec["node_rank"])
    return {"node_rank": spec["node_rank"], "status": status}
