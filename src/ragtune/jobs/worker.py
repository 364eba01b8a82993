"""The worker: claims jobs from the job table and runs them, one at a time.

A fine-tuning job is validated (``validating_files`` -> ``queued``), then trained with the
library recipe :func:`ragtune.tune.loop.train` in this process (``running``). A heartbeat
thread renews the job's lease; a worker that dies (``kill -9``) stops renewing it, and when the
lease runs out another worker claims the job and resumes the run from its last checkpoint
(``train(resume=True)``). The training loop polls :meth:`JobTable.should_stop` after every
optimizer step, so a cancellation, or the loss of the lease, stops it within one step.
Only the holder of the current attempt token can write the final status (exactly once).

With ``RAGTUNE_ARTIFACTS`` set, the run folder is also kept in the artefact store
(:mod:`ragtune.jobs.run_store`): each checkpoint is copied there once saved, a worker on another
host that takes the job over restores the newest one and resumes from it, and the finished
run is published before the job is marked succeeded, so every host can serve its model.

When no fine-tuning job waits, the worker ingests vector store files, then runs the task
table's tasks — comparisons and make-qa generations (:mod:`ragtune.jobs.task_worker`) — with
the same lease and attempt-token contract.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ragtune.errors import RagtuneError
from ragtune.jobs.backend import Database, open_vector_stores
from ragtune.jobs.ingestion import Ingester
from ragtune.jobs.launch import Rendezvous, data_paths, run_torchrun, torchrun_command
from ragtune.jobs.nodes import close_rendezvous, open_rendezvous
from ragtune.jobs.run_store import open_run_store
from ragtune.jobs.runs import results_csv
from ragtune.jobs.settings import ServiceSettings
from ragtune.jobs.sqlite import new_event
from ragtune.jobs.store import Claim, FileRecord, JobError, JobEvent, JobRecord, ObjectStore
from ragtune.jobs.task_worker import TaskRunner

log = logging.getLogger(__name__)


MIRROR_POLL_S = 1.0  # how often a training worker looks for a new checkpoint to copy


def fine_tuned_model_name(base_id: str, suffix: str | None, job_id: str) -> str:
    """OpenAI's naming: ``ft:BASE:SUFFIX:JOBID``."""
    return f"ft:{base_id}:{suffix or ''}:{job_id}"


class Worker:
    def __init__(self, settings: ServiceSettings, db: Database, objects: ObjectStore) -> None:
        self.settings = settings
        self.db = db
        self.objects = objects
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.ingester = Ingester(settings, open_vector_stores(settings), objects)
        self.tasks = TaskRunner(settings, db, objects, self.ingester.db, self.id)
        self.runs = open_run_store()

    def run(self, stop: Callable[[], bool], poll_s: float = 0.5) -> None:
        """Claim and run jobs until ``stop()`` is true."""
        while not stop():
            if not self.run_one(stop):
                time.sleep(poll_s)

    def run_one(self, stop: Callable[[], bool] = lambda: False) -> bool:
        """Claim one job and take it one stage further; False when there was nothing to do."""
        claim = self.db.claim(self.id, self.settings.lease_s)
        if claim is None:  # vector store files, then comparisons and other tasks
            return self.ingester.run_one() or self.tasks.run_one(stop)
        job = claim.job
        try:
            if job.cancel_requested:
                self._finish(claim, "cancelled", {})
                self._event(job, "Fine-tuning job cancelled")
            elif job.status == "validating_files":
                self._validate(claim)
            else:
                self._train(claim, stop)
        except RagtuneError as e:
            self._fail(claim, "invalid_request", e.message)
        except Exception as e:  # a bug or a crash in training: the job fails, the worker lives
            log.exception("job %s failed", job.id)
            self._fail(claim, "internal_error", f"{type(e).__name__}: {e}")
        return True

    # --- stages -------------------------------------------------------------------------

    def _validate(self, claim: Claim) -> None:
        from ragtune.tune.data import load_data

        job = claim.job
        for param, file_id in (
            ("training_file", job.training_file),
            ("validation_file", job.validation_file),
        ):
            if file_id is None:
                continue
            self._event(job, f"Validating {param.replace('_', ' ')}: {file_id}")
            record = self.db.get_file(job.project, file_id)
            if record is None:
                self._fail(claim, "invalid_training_file", f"File {file_id} was deleted", param)
                return
            data = load_data(
                self.objects.local_path(record.key),
                min_examples=10 if param == "training_file" else 0,
                keep=False,  # the checks only: training reads the file again
            )
            if data.errors:
                problems = "; ".join(str(p) for p in data.errors[:5])
                self._fail(claim, "invalid_training_file", f"Invalid {param}: {problems}", param)
                return
        self._finish(claim, "queued", {})
        self._event(job, "Files validated, moving job to queued state")

    def _train(self, claim: Claim, stop: Callable[[], bool]) -> None:
        from ragtune.tune.events import read_manifest
        from ragtune.tune.loop import StepInfo, train

        job, attempt = claim.job, claim.attempt
        run_dir = self.settings.run_dir(job.id)
        lost = threading.Event()
        beating = threading.Event()

        def heartbeat() -> None:
            while not beating.wait(self.settings.lease_s / 3):
                if not self.db.heartbeat(job.id, attempt, self.settings.lease_s):
                    lost.set()
                    return

        def mirror() -> None:  # each new checkpoint to the artefact store, soon after its save
            assert self.runs is not None
            while not beating.wait(MIRROR_POLL_S):
                try:
                    self.runs.mirror_checkpoints(job.id, run_dir)
                except Exception:  # a store hiccup: the next poll tries again
                    log.exception("job %s: copying checkpoints to the artefact store", job.id)

        def should_stop() -> bool:
            return lost.is_set() or stop() or self.db.should_stop(job.id, attempt)

        def on_step(info: StepInfo) -> None:
            self.db.update_running(
                job.id, attempt, {"estimated_finish": int(time.time() + info.eta_s)}
            )

        self._event(
            job,
            "Fine-tuning job started"
            if job.attempts <= 1
            else f"Fine-tuning job resumed (attempt {job.attempts})",
        )
        threads = [threading.Thread(target=heartbeat, name=f"heartbeat-{job.id}", daemon=True)]
        if self.runs is not None:
            threads.append(threading.Thread(target=mirror, name=f"mirror-{job.id}", daemon=True))
        for thread in threads:
            thread.start()
        try:
            # another host may have trained it: its published run, else its newest checkpoint
            if self.runs is not None and not self.runs.fetch(job.id, run_dir):
                step = self.runs.restore_checkpoint(job.id, run_dir)
                if step is not None:
                    self._event(job, f"Restored the checkpoint of step {step} from the store")
            manifest = read_manifest(run_dir)
            if manifest is not None and manifest.get("status") == "succeeded":
                status = "succeeded"  # finished before a crash
                trained = int(manifest["result"]["trained_tokens"])
            else:
                train_path, valid_path = data_paths(self.db, self.objects, job)
                hp = job.spec["hyperparameters"]
                nproc = self.settings.processes_for(job.spec.get("nproc_per_node"))
                if nproc > 1 or int(job.spec.get("nnodes") or 1) > 1:
                    status, trained = self._train_torchrun(
                        claim, nproc, train_path, valid_path, should_stop
                    )
                else:
                    result = train(
                        train_path,
                        run_dir,
                        method=job.spec["training_type"],
                        base=self.settings.base_model,
                        validation=valid_path,
                        epochs=_auto(hp.get("n_epochs")),
                        batch_size=_auto(hp.get("batch_size")),
                        lr_multiplier=_auto(hp.get("learning_rate_multiplier")),
                        seed=job.seed,
                        resume=True,
                        device=self.settings.device,
                        dtype="float32",
                        on_step=on_step,
                        should_stop=should_stop,
                    )
                    status, trained = result.status, result.trained_tokens
        finally:
            beating.set()
            for thread in threads:
                thread.join()
        if status != "succeeded":
            if self.runs is not None and not lost.is_set():  # the checkpoint saved on stopping
                self.runs.mirror_checkpoints(job.id, run_dir)
            self._stopped(claim, lost.is_set(), stop())
            return
        if self.runs is not None and self.runs.published(job.id) is None:
            self.runs.publish(job.id, run_dir)  # every host can get the model before it shows
        self._succeed(claim, trained)

    def _train_torchrun(
        self,
        claim: Claim,
        nproc: int,
        train_path: Path,
        valid_path: Path | None,
        should_stop: Callable[[], bool],
    ) -> tuple[str, int]:
        """Train under torchrun: ``nproc`` processes here, and on several hosts the other
        nodes joining through node tasks (:mod:`ragtune.jobs.nodes`)."""
        job = claim.job
        parallel = job.spec.get("parallel") or "ddp"
        rendezvous: Rendezvous | None = None
        node_tasks: list[str] = []
        where = f"{nproc} processes"
        if int(job.spec.get("nnodes") or 1) > 1:
            rendezvous, node_tasks = open_rendezvous(
                self.tasks.tasks, job, claim.attempt, self.settings.worker_addr, nproc
            )
            where = f"{rendezvous.nnodes} nodes x {nproc} processes (rendezvous at "
            where += f"{rendezvous.endpoint})"
        self._event(job, f"Training on {where} (torchrun, {parallel.upper()})")
        run_dir = self.settings.run_dir(job.id)
        cmd = torchrun_command(
            nproc,
            run_dir,
            train_path,
            valid_path,
            job.spec["training_type"],
            self.settings.base_model,
            job.seed,
            job.spec["hyperparameters"],
            self.settings.device,
            parallel,
            rendezvous,
        )
        try:
            return run_torchrun(cmd, run_dir, should_stop)
        finally:
            close_rendezvous(self.tasks.tasks, job.project, node_tasks)

    def _stopped(self, claim: Claim, lost: bool, shutting_down: bool) -> None:
        job = claim.job
        if lost:  # another worker holds the job now; it resumes from the checkpoint
            log.warning("job %s: lease lost, leaving it to its new holder", job.id)
        elif shutting_down:  # back to the queue; the next worker resumes from the checkpoint
            message = "Worker stopped; the job will resume from its last checkpoint"
            self._finish(claim, "queued", {}, events=[new_event(job.id, message)])
        elif not self.db.should_stop(job.id, claim.attempt):  # another node stopped the run
            message = "A node of the run stopped; the job will resume from its last checkpoint"
            self._finish(claim, "queued", {}, events=[new_event(job.id, message)])
        else:
            self._finish(
                claim, "cancelled", {}, events=[new_event(job.id, "Fine-tuning job cancelled")]
            )

    def _succeed(self, claim: Claim, trained_tokens: int) -> None:
        job = claim.job
        run_dir = self.settings.run_dir(job.id)
        result_id = f"file-{uuid.uuid4().hex[:24]}"
        key = f"{result_id}.csv"
        data = results_csv(run_dir)
        self.objects.put_bytes(key, data)
        record = FileRecord(
            id=result_id,
            project=job.project,
            filename="step_metrics.csv",
            purpose="fine-tune-results",
            bytes=len(data),
            created_at=int(time.time()),
            key=key,
        )
        name = fine_tuned_model_name(self.settings.base_model_id, job.suffix, job.id)
        values: dict[str, Any] = {
            "fine_tuned_model": name,
            "trained_tokens": trained_tokens,
            "result_files": [result_id],
            "estimated_finish": None,
        }
        events = [
            new_event(job.id, f"New fine-tuned model created: {name}"),
            new_event(job.id, "The job has successfully completed"),
        ]
        if not self._finish(claim, "succeeded", values, [record], events):
            # another attempt finished it: this one leaves no trace
            self.objects.delete(key)

    def _fail(self, claim: Claim, code: str, message: str, param: str | None = None) -> None:
        event = new_event(claim.job.id, f"Fine-tuning job failed: {message}", "error")
        self._finish(claim, "failed", {"error": JobError(code, message, param)}, events=[event])

    # --- helpers ------------------------------------------------------------------------

    def _finish(
        self,
        claim: Claim,
        status: Any,
        values: dict[str, Any],
        files: list[FileRecord] | None = None,
        events: list[JobEvent] | None = None,
    ) -> bool:
        """Finish the attempt: the status, result files and final events at once."""
        return self.db.finish(
            claim.job.id, claim.attempt, status, values, files or [], events or []
        )

    def _event(self, job: JobRecord, message: str, level: Any = "info") -> None:
        self.db.add_event(new_event(job.id, message, level))


def _auto(value: Any) -> Any:
    return None if value in (None, "auto") else value
