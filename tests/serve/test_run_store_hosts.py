"""Two hosts -- two RAGTUNE_HOME folders -- sharing one job table and one artefact store
(RAGTUNE_ARTIFACTS=file:///…), nothing else: a model trained on host A is served on host B,
and a training worker killed with SIGKILL on host A is finished on host B from the checkpoint
A left in the store. SQLite here (host A's database file is a link to host B's, as one
machine can share it); tests/postgres/test_processes.py runs the same with PostgreSQL."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ragtune.io import file_sha256
from ragtune.jobs.backend import open_objects
from ragtune.jobs.run_store import RunStore, is_finished
from ragtune.jobs.sqlite import SqliteDB
from ragtune.jobs.worker import Worker
from tests.serve.conftest import Served, chat_rows, jsonl, serving

SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.fixture
def host_b(
    tiny_lm: Path,
    tiny_embedder: Path,
    ragtune_home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Served]:
    """Host B: the server (and an in-process worker) on RAGTUNE_HOME."""
    monkeypatch.setenv("RAGTUNE_ARTIFACTS", (tmp_path / "artifacts").as_uri())
    with serving(tiny_lm, tiny_embedder, ragtune_home) as served:
        yield served


def create_job(b: Served, epochs: int, batch: int) -> str:
    f = b.client.post(
        "/v1/files",
        files={"file": ("t.jsonl", jsonl(chat_rows()))},
        data={"purpose": "fine-tune"},
        headers=b.headers(),
    ).json()
    body = {
        "model": "tiny_lm0",
        "training_file": f["id"],
        "seed": 1,
        "method": {
            "type": "supervised",
            "supervised": {"hyperparameters": {"n_epochs": epochs, "batch_size": batch}},
        },
    }
    job = b.client.post("/v1/fine_tuning/jobs", json=body, headers=b.headers())
    assert job.status_code == 200, job.text
    return str(job.json()["id"])


def get(b: Served, path: str) -> Any:
    r = b.client.get(f"/v1{path}", headers=b.headers())
    assert r.status_code == 200, r.text
    return r.json()


def chat(b: Served, model: str) -> None:
    r = b.client.post(
        "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3},
        headers=b.headers(),
    )
    assert r.status_code == 200, r.text


def test_a_model_trained_on_host_a_is_served_on_host_b(host_b: Served, tmp_path: Path) -> None:
    b = host_b
    settings_a = dataclasses.replace(b.settings, home=tmp_path / "home-a" / "serve")
    worker_a = Worker(settings_a, SqliteDB(b.settings.database), open_objects(settings_a))
    job_id = create_job(b, epochs=2, batch=5)  # 4 steps, a checkpoint at 2 and 4
    for _ in range(10):
        if not worker_a.run_one():
            break
    run_a, run_b = settings_a.run_dir(job_id), b.settings.run_dir(job_id)
    assert is_finished(run_a) and not run_b.exists()

    # what the job shows needs no download: the store's record of the run answers
    job = get(b, f"/fine_tuning/jobs/{job_id}")
    assert job["status"] == "succeeded"
    assert job["hyperparameters"] == {
        "n_epochs": 2,
        "batch_size": 5,
        "learning_rate_multiplier": 0.1,  # "auto" resolved: read from the store
    }
    model = str(job["fine_tuned_model"])
    ckpts = get(b, f"/fine_tuning/jobs/{job_id}/checkpoints")["data"]
    assert [c["step_number"] for c in ckpts] == [4, 2]
    assert all(c["metrics"]["train_loss"] > 0 for c in ckpts)
    models = {m["id"] for m in get(b, "/models")["data"]}
    assert {model, *(c["fine_tuned_model_checkpoint"] for c in ckpts)} <= models
    assert not run_b.exists()

    chat(b, model)  # fetched into host B's run folder, once, then loaded as ever
    assert is_finished(run_b)
    for rel in ("merged/model.safetensors", "adapter/adapter_model.safetensors", "events.jsonl"):
        assert file_sha256(run_b / rel) == file_sha256(run_a / rel), rel
    chat(b, str(ckpts[1]["fine_tuned_model_checkpoint"]))
    events = get(b, f"/fine_tuning/jobs/{job_id}/events?limit=100")["data"]
    steps = [e["data"]["step"] for e in events if e["type"] == "metrics"]
    assert steps == [4, 3, 2, 1]


def test_kill_9_on_host_a_is_finished_on_host_b_from_the_checkpoint(
    host_b: Served, tmp_path: Path, tiny_lm: Path, tiny_embedder: Path
) -> None:
    b = host_b
    home_a = tmp_path / "home-a"
    (home_a / "serve").mkdir(parents=True)
    (home_a / "serve" / "ragtune.sqlite").symlink_to(b.settings.database)
    env = {
        **os.environ,
        "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "RAGTUNE_HOME": str(home_a),
        "RAGTUNE_SERVE_MODEL": str(tiny_lm),
        "RAGTUNE_SERVE_EMBEDDER": str(tiny_embedder),
        "RAGTUNE_SERVE_EMBED_BACKEND": "torch",
        "RAGTUNE_SERVE_DEVICE": "cpu",
        "RAGTUNE_LEASE_SECONDS": "3",
    }
    job_id = create_job(b, epochs=20, batch=1)  # 200 steps, a checkpoint every 10
    store = RunStore(os.environ["RAGTUNE_ARTIFACTS"])
    worker_a = subprocess.Popen([sys.executable, "-m", "ragtune.cli", "worker"], env=env)
    try:
        deadline = time.time() + 180
        while not store.checkpoint_steps(job_id):
            assert time.time() < deadline, "no checkpoint reached the store"
            assert worker_a.poll() is None, "worker A exited"
            time.sleep(0.05)
    finally:
        worker_a.send_signal(signal.SIGKILL)
        worker_a.wait(timeout=30)
    assert get(b, f"/fine_tuning/jobs/{job_id}")["status"] == "running", "finished before the kill"
    assert not b.settings.run_dir(job_id).exists()

    deadline = time.time() + 240  # host B's worker claims it once A's lease has run out
    while get(b, f"/fine_tuning/jobs/{job_id}")["status"] == "running":
        assert time.time() < deadline, "host B never finished the job"
        if not b.worker.run_one():
            time.sleep(0.5)
    assert get(b, f"/fine_tuning/jobs/{job_id}")["status"] == "succeeded"

    run_b = b.settings.run_dir(job_id)
    log = [json.loads(line) for line in (run_b / "events.jsonl").read_text().splitlines()]
    resumed = [int(e["step"]) for e in log if str(e.get("message")).startswith("Resumed from")]
    assert len(resumed) == 1 and resumed[0] >= 10, resumed  # continued, not restarted
    assert sorted({int(e["step"]) for e in log if e["type"] == "metrics"}) == list(
        range(1, 201)
    )  # steps up to the checkpoint trained on A, the rest on B
    messages = [e.message for e in b.worker.db.list_events(job_id)]
    assert f"Restored the checkpoint of step {resumed[0]} from the store" in messages
    assert messages.count("The job has successfully completed") == 1
    assert RunStore(store.url).published(job_id) is not None
