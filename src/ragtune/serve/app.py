"""The FastAPI application: one router per resource; the engine (one base generator,
fine-tuned models as adapters on it) loaded and closed by the lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from ragtune import __version__
from ragtune.jobs.backend import open_backend, open_key_table
from ragtune.jobs.keys import KeyRing, load_keys
from ragtune.jobs.run_store import open_run_store
from ragtune.jobs.settings import ServiceSettings
from ragtune.serve import errors
from ragtune.serve.engine import Engine
from ragtune.serve.routes import (
    chat,
    comparisons,
    completions,
    embeddings,
    files,
    fine_tuning,
    models,
    qa_generations,
    responses,
    vector_stores,
    weight_diff,
)
from ragtune.serve.state import Service, current_project
from ragtune.serve.webapp import mount_web


def create_app(
    settings: ServiceSettings | None = None,
    engine: Engine | None = None,
    keys: KeyRing | None = None,
    api_keys_env: str | None = None,
    on_shutdown: Callable[[], None] | None = None,
) -> FastAPI:
    """The app. ``on_shutdown`` runs when the server stops (uvicorn ends the process by
    re-raising the signal that stopped it, so code after ``uvicorn.run`` may never run)."""
    settings = settings or ServiceSettings.from_env()
    keys = keys or load_keys(api_keys_env, settings.keys_file, open_key_table())
    owned = engine is None  # an engine the caller passes in is the caller's to close
    engine = engine or Engine(settings.base_model, device=settings.device)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db, objects = open_backend(settings)
        engine.load()
        app.state.service = Service(settings, db, objects, engine, keys, open_run_store())
        try:
            yield
        finally:
            if owned:
                engine.close()  # the base generator and every full fine-tune's
            if on_shutdown is not None:
                on_shutdown()

    app = FastAPI(title="ragtune", version=__version__, lifespan=lifespan)
    errors.install(app)
    auth = [Depends(current_project)]
    for module in (
        models,
        files,
        fine_tuning,
        weight_diff,
        chat,
        completions,
        embeddings,
        vector_stores,
        responses,
        comparisons,
        qa_generations,
    ):
        app.include_router(module.router, prefix="/v1", dependencies=auth)
    mount_web(app)
    return app
