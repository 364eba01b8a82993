"""Running the task table's tasks (:mod:`ragtune.jobs.tasks`) in the worker process.

:class:`TaskRunner` claims one task, renews its lease from a heartbeat thread while it runs,
and hands the task's function a :class:`Progress` through which it reports its stage. Each
report is also the task's stopping point: a cancellation, the loss of the lease or the
worker shutting down raises :class:`TaskStopped` there, so a task stops between its stages
(a comparison: between its preparation steps and between arms). Only the holder of the
attempt token writes the final status, once; a task whose worker shuts down goes back to
the queue and the next claim resumes it (a comparison resumes from its saved state).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ragtune.errors import RagtuneError
from ragtune.jobs.backend import Database
from ragtune.jobs.settings import ServiceSettings
from ragtune.jobs.store import JobError, ObjectStore
from ragtune.jobs.tasks import TaskClaim, TaskDB, TaskRecord, TaskStatus, open_tasks
from ragtune.jobs.vector_stores import VectorStoreDB

log = logging.getLogger(__name__)


class TaskStopped(Exception):
    """Raised at a stage boundary when the task must stop (see :class:`Progress`)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason  # "cancelled", "lost" or "shutdown"


class TaskFailed(RagtuneError):
    """A task that could not produce its result, with what it found on the way (recorded
    with the error, e.g. make-qa's coverage when every pair was dropped)."""

    def __init__(self, message: str, result: dict[str, Any], hint: str = "") -> None:
        super().__init__(message, hint)
        self.result = result


@dataclass
class Progress:
    """What a running task reports: its stage, the fraction done and a message."""

    tasks: TaskDB
    claim: TaskClaim
    lost: threading.Event
    shutting_down: Callable[[], bool]
    stage: str = "starting"
    fraction: float = 0.0

    def report(
        self, stage: str | None = None, fraction: float | None = None, message: str = ""
    ) -> None:
        """Record progress, then stop here if the task was cancelled or is no longer ours."""
        self.check()
        self.stage = stage or self.stage
        self.fraction = max(self.fraction, fraction if fraction is not None else 0.0)
        self.tasks.set_progress(
            self.claim.task.id,
            self.claim.attempt,
            {"stage": self.stage, "fraction": round(self.fraction, 4), "message": message},
        )

    def check(self) -> None:
        if self.lost.is_set():
            raise TaskStopped("lost")
        if self.shutting_down():
            raise TaskStopped("shutdown")
        if self.tasks.should_stop(self.claim.task.id, self.claim.attempt):
            raise TaskStopped("cancelled")


@dataclass(frozen=True)
class TaskContext:
    """What a task's function may use: the service's settings, files, objects and vector
    store tables (the worker's own, whichever backend it opened)."""

    settings: ServiceSettings
    db: Database
    objects: ObjectStore
    vector_stores: VectorStoreDB


TaskFunction = Callable[[TaskRecord, TaskContext, Progress], dict[str, Any]]


def task_function(kind: str) -> TaskFunction:
    """The function that runs a task of ``kind``."""
    if kind == "comparison":
        from ragtune.jobs.comparisons import run_comparison_task

        return run_comparison_task
    if kind == "make_qa":
        from ragtune.jobs.make_qa import run_make_qa_task

        return run_make_qa_task
    if kind == "train_node":
        from ragtune.jobs.nodes import run_node_task

        return run_node_task
    raise RagtuneError(f"Unknown task kind {kind!r}")


def cleanup_function(kind: str) -> Callable[[TaskRecord, TaskContext], None]:
    """What a task of ``kind`` leaves to remove once it has ended (not when it moves)."""
    if kind == "comparison":
        from ragtune.jobs.comparisons import remove_work

        return remove_work
    return lambda task, ctx: None


class TaskRunner:
    def __init__(
        self,
        settings: ServiceSettings,
        db: Database,
        objects: ObjectStore,
        vector_stores: VectorStoreDB,
        worker_id: str,
    ) -> None:
        self.ctx = TaskContext(settings, db, objects, vector_stores)
        self.tasks = open_tasks(settings.database)
        self.worker_id = worker_id

    def run_one(self, stop: Callable[[], bool] = lambda: False) -> bool:
        """Claim one task and run it to its end; False when none was waiting."""
        claim = self.tasks.claim(self.worker_id, self.ctx.settings.lease_s)
        if claim is None:
            return False
        task, attempt = claim.task, claim.attempt
        lost, beating = threading.Event(), threading.Event()
        lease_s = self.ctx.settings.lease_s

        def heartbeat() -> None:
            while not beating.wait(lease_s / 3):
                if not self.tasks.heartbeat(task.id, attempt, lease_s):
                    lost.set()
                    return

        progress = Progress(self.tasks, claim, lost, stop)
        thread = threading.Thread(target=heartbeat, name=f"heartbeat-{task.id}", daemon=True)
        thread.start()
        status: TaskStatus = "failed"
        error: JobError | None = None
        result: dict[str, Any] | None = None
        try:
            progress.report("starting", 0.0, "started" if task.attempts <= 1 else "resumed")
            result = task_function(task.kind)(task, self.ctx, progress)
            status = "succeeded"
        except TaskStopped as e:
            if e.reason == "lost":  # another worker holds it now and resumes it
                log.warning("task %s: lease lost, leaving it to its new holder", task.id)
                return True
            status = "queued" if e.reason == "shutdown" else "cancelled"
        except RagtuneError as e:
            error = JobError("invalid_request", str(e).replace("\n  hint:", "; hint:"))
            result = e.result if isinstance(e, TaskFailed) else None
        except Exception as e:  # a bug or a crash in a stage: the task fails, the worker lives
            log.exception("task %s failed", task.id)
            error = JobError("internal_error", f"{type(e).__name__}: {e}")
        finally:
            beating.set()
            thread.join()
        if self.tasks.finish(task.id, attempt, status, error, result) and status != "queued":
            cleanup_function(task.kind)(task, self.ctx)
        return True
