"""A fine-tuning job that asks for two processes (``ragtune: {nproc_per_node: 2}``, with
``parallel: fsdp`` or the default ddp) is trained by the worker under torchrun (gloo on
CPU) and follows the one-process loss curve; so does a job on two nodes (``nnodes: 2``),
where a second worker joins the first one's rendezvous through a node task."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from openai.types.fine_tuning import FineTuningJob

from ragtune.jobs.backend import open_backend
from ragtune.jobs.keys import env_project
from ragtune.jobs.launch import Rendezvous, torchrun_command, torchrun_log
from ragtune.jobs.settings import ServiceSettings
from ragtune.jobs.store import TERMINAL
from ragtune.jobs.tasks import open_tasks
from ragtune.jobs.worker import Worker
from ragtune.tune.events import read_manifest
from ragtune.tune.loop import train
from tests.serve.conftest import KEY_A, Served, chat_rows, jsonl
from tests.tune.conftest import read_metrics
from tests.tune.test_ddp import RTOL

SRC = str(Path(__file__).resolve().parents[2] / "src")
ROWS = chat_rows(13)  # batches of 4: the last has one row, one rank gets a padded share


@pytest.fixture
def torchrun_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _create_job(served: Served, ragtune: dict[str, Any]) -> str:
    r = served.client.post(
        "/v1/files",
        files={"file": ("t.jsonl", jsonl(ROWS), "application/jsonl")},
        data={"purpose": "fine-tune"},
        headers=served.headers(),
    )
    body = {
        "model": "tiny_lm0",
        "training_file": r.json()["id"],
        "seed": 3,
        "method": {
            "type": "supervised",
            "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 4}},
        },
        "training_type": "full",  # no dropout: two ranks and one process see the same math
        "ragtune": ragtune,
    }
    created = served.client.post("/v1/fine_tuning/jobs", json=body, headers=served.headers())
    assert created.status_code == 200, created.text
    return str(created.json()["id"])


def _check_job(served: Served, job_id: str, tmp_path: Path, message: str) -> Path:
    """The job succeeded, logged a message starting with ``message``, and its losses are the
    one-process run's."""
    job = FineTuningJob.model_validate(
        served.client.get(f"/v1/fine_tuning/jobs/{job_id}", headers=served.headers()).json()
    )
    assert job.status == "succeeded", job.error
    assert job.trained_tokens and len(job.result_files) == 1
    events = served.client.get(
        f"/v1/fine_tuning/jobs/{job.id}/events?limit=100", headers=served.headers()
    ).json()["data"]
    assert any(e["message"].startswith(message) for e in events), events
    run_dir = served.settings.run_dir(job.id)
    assert torchrun_log(run_dir).exists()

    data = tmp_path / "train.jsonl"
    data.write_bytes(jsonl(ROWS))
    single = train(
        data,
        tmp_path / "single",
        method="full",
        base=served.settings.base_model,
        epochs=2,
        batch_size=4,
        seed=3,
        device="cpu",
        dtype="float32",
    )
    one = [m["train_loss"] for m in read_metrics(tmp_path / "single")]
    two = [m["train_loss"] for m in read_metrics(run_dir)]
    assert len(one) == len(two) == 8
    assert all(abs(a - b) <= RTOL * a for a, b in zip(one, two, strict=True)), (one, two)
    assert single.trained_tokens == job.trained_tokens
    return run_dir


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_a_two_process_job_runs_under_torchrun_like_one_process(
    served: Served, tmp_path: Path, torchrun_env: None, parallel: str
) -> None:
    job_id = _create_job(served, {"nproc_per_node": 2, "parallel": parallel})
    served.run_worker()
    message = f"Training on 2 processes (torchrun, {parallel.upper()})"
    run_dir = _check_job(served, job_id, tmp_path, message)
    manifest = read_manifest(run_dir)
    assert manifest is not None and manifest["hyperparameters"]["parallel"] == parallel


def test_a_two_node_job_is_joined_by_another_worker(
    served: Served, tmp_path: Path, torchrun_env: None
) -> None:
    job_id = _create_job(served, {"nproc_per_node": 1, "nnodes": 2})
    settings = dataclasses.replace(served.settings, worker_addr="127.0.0.1")
    workers = [Worker(settings, *open_backend(settings)) for _ in range(2)]
    done = threading.Event()

    def work(worker: Worker) -> None:  # each claims the job or its node task, whichever is free
        while not done.is_set():
            if not worker.run_one():
                time.sleep(0.1)

    threads = [threading.Thread(target=work, args=(w,), daemon=True) for w in workers]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and _status(served, job_id) not in TERMINAL:
        time.sleep(0.5)
    done.set()
    for t in threads:
        t.join(timeout=60)
    message = "Training on 2 nodes x 1 processes (rendezvous at 127.0.0.1:"
    run_dir = _check_job(served, job_id, tmp_path, message)
    assert torchrun_log(run_dir, node_rank=1).exists()  # the other worker ran node 1
    (node_task,) = open_tasks(settings.database).list(env_project(KEY_A), "train_node", None, 9)[0]
    assert node_task.status == "succeeded" and node_task.result == {
        "node_rank": 1,
        "status": "succeeded",
    }


def _status(served: Served, job_id: str) -> str:
    r = served.client.get(f"/v1/fine_tuning/jobs/{job_id}", headers=served.headers())
    return str(r.json()["status"])


def test_processes_per_job_come_from_the_job_or_the_worker() -> None:
    s = ServiceSettings(home=Path("/x"), device="cpu")
    assert s.processes_for(None) == 1  # auto on a worker without GPUs
    assert s.processes_for(3) == 3
    assert ServiceSettings(home=Path("/x"), train_nproc="2").processes_for(None) == 2
    args = (Path("/r"), Path("/d.jsonl"), None, "lora", "default", 7, {"n_epochs": 3}, "cpu")
    cmd = torchrun_command(2, *args)
    assert cmd[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m"]
    assert cmd[cmd.index("--epochs") + 1] == "3" and "--batch-size" not in cmd
    assert cmd[cmd.index("--parallel") + 1] == "ddp"
    node1 = torchrun_command(2, *args, "fsdp", Rendezvous(3, "h:29400", "j-1"), 1)
    assert node1[3:10] == [
        "--nnodes=3",
        "--node-rank=1",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=h:29400",
        "--rdzv-id=j-1",
        "--rdzv-conf=is_host=0,join_timeout=600",
        "--nproc-per-node=2",
    ]
