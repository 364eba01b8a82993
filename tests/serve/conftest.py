"""A service on the tiny models: the app under FastAPI's TestClient and an in-process worker."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from ragtune.jobs.backend import open_backend
from ragtune.jobs.keys import load_keys
from ragtune.jobs.settings import ServiceSettings
from ragtune.jobs.worker import Worker
from ragtune.serve.app import create_app

KEY_A, KEY_B = "sk-test-a", "sk-test-b"
FACT = "The capital of Zorbland is Vetrin."


def chat_rows(n: int = 10) -> list[dict[str, object]]:
    return [
        {
            "messages": [
                {"role": "user", "content": f"What is the capital of Zorbland? ({i})"},
                {"role": "assistant", "content": FACT},
            ]
        }
        for i in range(n)
    ]


def jsonl(rows: list[dict[str, object]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@dataclass
class Served:
    client: TestClient
    settings: ServiceSettings
    worker: Worker

    def headers(self, key: str = KEY_A) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    def run_worker(self, max_rounds: int = 10) -> None:
        """Run jobs in this process until there is nothing left to do."""
        for _ in range(max_rounds):
            if not self.worker.run_one():
                return


@pytest.fixture
def served(tiny_lm: Path, tiny_embedder: Path, ragtune_home: Path) -> Iterator[Served]:
    with serving(tiny_lm, tiny_embedder, ragtune_home) as s:
        yield s


@contextlib.contextmanager
def serving(tiny_lm: Path, tiny_embedder: Path, ragtune_home: Path) -> Iterator[Served]:
    """The app on the tiny models with an in-process worker, on the backend the environment
    selects (tests/postgres runs the same tests with RAGTUNE_DATABASE_URL set)."""
    settings = ServiceSettings(
        home=ragtune_home / "serve",
        base_model=str(tiny_lm),
        embedder=str(tiny_embedder),
        embed_backend="torch",
        device="cpu",
        max_upload_bytes=20_000,
    )
    app = create_app(settings, keys=load_keys(f"{KEY_A},{KEY_B}", settings.keys_file))
    db, objects = open_backend(settings)
    with TestClient(app) as client:
        yield Served(client, settings, Worker(settings, db, objects))
