"""What the routes share, owned by the app's lifespan, and the dependencies that hand it
out: the service state and the caller's project (the one place keys are checked)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Header, Request

from ragtune.jobs.backend import Database
from ragtune.jobs.keys import KeyRing
from ragtune.jobs.run_store import RunStore, SnapshotDamaged, is_finished
from ragtune.jobs.settings import ServiceSettings
from ragtune.jobs.store import JobRecord, ObjectStore
from ragtune.serve.engine import Engine
from ragtune.serve.errors import APIError

NO_KEYS_PROJECT = "default"  # the only project when the server runs without keys


@dataclass
class Service:
    settings: ServiceSettings
    db: Database
    objects: ObjectStore
    engine: Engine
    keys: KeyRing
    runs: RunStore | None = None  # run folders in the artefact store (RAGTUNE_ARTIFACTS)
    _embedder: Any = None
    _embed_lock: threading.Lock = field(default_factory=threading.Lock)

    def run_dir(self, job: JobRecord) -> Path:
        """The job's run folder on this host. A succeeded job's is fetched from the artefact
        store first when this host does not hold it (another host trained it)."""
        run_dir = self.settings.run_dir(job.id)
        if self.runs is not None and job.status == "succeeded":
            try:
                self.runs.fetch(job.id, run_dir)
            except (SnapshotDamaged, OSError) as exc:
                raise APIError(
                    503,
                    f"The model of fine-tuning job {job.id} could not be fetched from the "
                    f"artefact store ({exc}); check RAGTUNE_ARTIFACTS on this host",
                    code="model_unavailable",
                ) from None
        return run_dir

    def published(self, job: JobRecord) -> dict[str, Any] | None:
        """The marker of the job's run in the artefact store when this host does not hold
        the finished run (its manifest and checkpoints, read without downloading the model)."""
        if self.runs is None or job.status != "succeeded":
            return None
        if is_finished(self.settings.run_dir(job.id)):
            return None
        return self.runs.published(job.id)

    def embedder(self) -> Any:
        """The embedding model, loaded on first use."""
        with self._embed_lock:
            if self._embedder is None:
                from ragtune.retrieve.dense import load_embedder

                self._embedder = load_embedder(
                    self.settings.embedder,
                    backend=self.settings.embed_backend,  # type: ignore[arg-type]
                    device=self.settings.device,
                )
            return self._embedder


def get_service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


def current_project(
    service: Annotated[Service, Depends(get_service)],
    authorization: Annotated[str | None, Header()] = None,
) -> str:
    """The project of the request's key (401 for a missing or unknown key)."""
    if not service.keys.enabled:
        return NO_KEYS_PROJECT
    scheme, _, key = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise APIError(
            401,
            "You didn't provide an API key. Send it as 'Authorization: Bearer KEY'.",
            code="missing_api_key",
        )
    project = service.keys.project(key.strip())
    if project is None:
        raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")
    return project


ServiceDep = Annotated[Service, Depends(get_service)]
ProjectDep = Annotated[str, Depends(current_project)]
