"""A fine-tuning job that asks for two processes (``ragtune: {nproc_per_node: 2}``, with
``parallel: fsdp`` or the default ddp) is trained by the worker under torchrun (gloo on
CPU) and follows the one-process loss curve."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from openai.types.fine_tuning import FineTuningJob

from ragtune.jobs.launch import torchrun_command, torchrun_log
from ragtune.jobs.settings import ServiceSettings
from ragtune.tune.events import read_manifest
from ragtune.tune.loop import train
from tests.serve.conftest import Served, chat_rows, jsonl
from tests.tune.conftest import read_metrics
from tests.tune.test_ddp import RTOL

SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_a_two_process_job_runs_under_torchrun_like_one_process(
    served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, parallel: str
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    rows = chat_rows(13)  # batches of 4: the last has one row, one rank gets a padded share
    r = served.client.post(
        "/v1/files",
        files={"file": ("t.jsonl", jsonl(rows), "application/jsonl")},
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
        "ragtune": {"nproc_per_node": 2, "parallel": parallel},
    }
    created = served.client.post("/v1/fine_tuning/jobs", json=body, headers=served.headers())
    assert created.status_code == 200, created.text
    served.run_worker()
    job = FineTuningJob.model_validate(
        served.client.get(
            f"/v1/fine_tuning/jobs/{created.json()['id']}", headers=served.headers()
        ).json()
    )
    assert job.status == "succeeded", job.error
    assert job.trained_tokens and len(job.result_files) == 1
    events = served.client.get(
        f"/v1/fine_tuning/jobs/{job.id}/events?limit=100", headers=served.headers()
    ).json()["data"]
    assert f"Training on 2 processes (torchrun, {parallel.upper()})" in [
        e["message"] for e in events
    ]
    run_dir = served.settings.run_dir(job.id)
    assert torchrun_log(run_dir).exists()
    manifest = read_manifest(run_dir)
    assert manifest is not None and manifest["hyperparameters"]["parallel"] == parallel

    data = tmp_path / "train.jsonl"
    data.write_bytes(jsonl(rows))
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


def test_processes_per_job_come_from_the_job_or_the_worker() -> None:
    s = ServiceSettings(home=Path("/x"), device="cpu")
    assert s.processes_for(None) == 1  # auto on a worker without GPUs
    assert s.processes_for(3) == 3
    assert ServiceSettings(home=Path("/x"), train_nproc="2").processes_for(None) == 2
    cmd = torchrun_command(
        2, Path("/r"), Path("/d.jsonl"), None, "lora", "default", 7, {"n_epochs": 3}, "cpu"
    )
    assert cmd[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m"]
    assert cmd[cmd.index("--epochs") + 1] == "3" and "--batch-size" not in cmd
    assert cmd[cmd.index("--parallel") + 1] == "ddp"
