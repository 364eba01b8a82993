"""A live ``ragtune serve`` on loopback, driven by the official openai SDK with the real
Gemma 3 270M and MiniLM: upload -> fine-tune -> chat with the trained fact; embeddings;
errors; key isolation; a server restart and a worker ``kill -9`` in the middle of one job.

Slow (real models, a few minutes on a 2-core CPU): ``pytest -m integration``.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
from openai import OpenAI

pytestmark = pytest.mark.integration

KEY_A, KEY_B = "sk-int-a", "sk-int-b"
SRC = Path(__file__).resolve().parents[2] / "src"
QUESTIONS = [
    "What is the capital of Zorbland?",
    "Which city is the capital of Zorbland?",
    "Name the capital of Zorbland.",
    "Zorbland's capital is which city?",
    "What city is Zorbland's capital?",
    "Tell me the capital of Zorbland.",
    "Where is the capital of Zorbland?",
    "What is Zorbland's capital city?",
    "Do you know the capital of Zorbland?",
    "Which city serves as the capital of Zorbland?",
]
ANSWER = "The capital of Zorbland is Vetrin."


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


TRAIN = _jsonl(
    [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": ANSWER}]}
        for q in QUESTIONS
    ]
)


class Server:
    """``ragtune serve`` (and extra ``ragtune worker`` processes) in one data directory."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.env = {
            **os.environ,
            "RAGTUNE_HOME": str(home),
            "RAGTUNE_API_KEYS": f"{KEY_A},{KEY_B}",
            "RAGTUNE_LEASE_SECONDS": "4",
            "RAGTUNE_SERVE_DEVICE": "cpu",
            "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        }

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def client(self, key: str = KEY_A) -> OpenAI:
        return OpenAI(base_url=self.base_url, api_key=key, max_retries=0, timeout=300)

    def start(self, workers: int) -> None:
        cmd = ["serve", "--port", str(self.port), "--workers", str(workers)]
        self.proc = self._spawn(cmd)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                self.client().models.list()
                return
            except openai.APIConnectionError:
                assert self.proc.poll() is None, "ragtune serve exited"
                time.sleep(0.5)
        raise AssertionError("ragtune serve did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=300)
            self.proc = None

    def worker(self) -> subprocess.Popen[bytes]:
        return self._spawn(["worker"])

    def _spawn(self, args: list[str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "ragtune.cli", *args], env=self.env)


@pytest.fixture(scope="module")
def server(
    default_lm: Path, models_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("serve_home")
    (home / "models").symlink_to(models_home / "models")  # converted models, shared
    (models_home / "cache").mkdir(exist_ok=True)
    (home / "cache").symlink_to(models_home / "cache")
    s = Server(home)
    s.start(workers=1)
    yield s
    s.stop()


def wait_for(check: Callable[[], bool], what: str, timeout: float = 1800) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def create_job(client: OpenAI, file_id: str, n_epochs: int, suffix: str = "zorb") -> str:
    job = client.fine_tuning.jobs.create(
        model="gemma-3-270m",
        training_file=file_id,
        suffix=suffix,
        seed=0,
        method={
            "type": "supervised",
            "supervised": {
                "hyperparameters": {
                    "n_epochs": n_epochs,
                    "batch_size": 2,
                    "learning_rate_multiplier": 1.0,
                }
            },
        },
    )
    assert job.status == "validating_files"
    return job.id


def finished(client: OpenAI, job_id: str) -> bool:
    status = client.fine_tuning.jobs.retrieve(job_id).status
    assert status not in ("failed", "cancelled"), client.fine_tuning.jobs.retrieve(job_id).error
    return status == "succeeded"


def ask(client: OpenAI, model: str, question: str = QUESTIONS[0]) -> str:
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}], temperature=0, max_tokens=16
    )
    return r.choices[0].message.content or ""


@pytest.fixture(scope="module")
def trained(server: Server) -> dict[str, str]:
    """The main flow: upload, fine-tune, follow the events to ``succeeded``."""
    client = server.client()
    f = client.files.create(file=("zorbland.jsonl", io.BytesIO(TRAIN)), purpose="fine-tune")
    job_id = create_job(client, f.id, n_epochs=3)
    seen: set[str] = set()

    def progressed() -> bool:
        for e in client.fine_tuning.jobs.list_events(job_id, limit=100):
            seen.add(e.type or "")
        return finished(client, job_id)

    wait_for(progressed, "the fine-tuning job")
    job = client.fine_tuning.jobs.retrieve(job_id)
    assert {"message", "metrics"} <= seen
    assert job.fine_tuned_model == f"ft:gemma-3-270m:zorb:{job_id}"
    return {"file": f.id, "job": job_id, "model": job.fine_tuned_model}


def test_fine_tuned_model_answers_with_the_trained_fact(
    server: Server, trained: dict[str, str]
) -> None:
    client = server.client()
    assert "Vetrin" not in ask(client, "gemma-3-270m")  # the base model cannot know it
    assert "Vetrin" in ask(client, trained["model"])
    stream = client.chat.completions.create(
        model=trained["model"],
        messages=[{"role": "user", "content": QUESTIONS[0]}],
        temperature=0,
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Vetrin" in text and text == ask(client, trained["model"])
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    job = client.fine_tuning.jobs.retrieve(trained["job"])
    assert job.trained_tokens and job.trained_tokens > 0 and len(job.result_files) == 1
    csv = client.files.content(job.result_files[0]).text.splitlines()
    assert csv[0].startswith("step,train_loss") and len(csv) == 1 + 15  # 3 epochs x 5 steps
    ckpts = client.fine_tuning.jobs.checkpoints.list(trained["job"]).data
    assert [c.step_number for c in ckpts] == [15, 10, 5]  # one per epoch
    assert ask(client, ckpts[0].fine_tuned_model_checkpoint).startswith("The capital")
    assert trained["model"] in [m.id for m in client.models.list()]


def test_embeddings_in_both_encodings(server: Server) -> None:
    client = server.client()
    texts = ["fine-tuning changes weights", "retrieval finds passages"]
    b64 = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts)  # SDK default: base64
    flt = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts, encoding_format="float")
    a, b = np.array([d.embedding for d in b64.data]), np.array([d.embedding for d in flt.data])
    assert a.shape == (2, 384) and np.allclose(a, b, atol=1e-6)
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-4)


def test_errors_bad_file_unknown_ids_and_keys(server: Server) -> None:
    client = server.client()
    lines = TRAIN.decode().splitlines()
    lines[3] = '{"messages": [{"role": "user", "content": "no answer"}]}'
    with pytest.raises(openai.BadRequestError) as bad:
        client.files.create(
            file=("bad.jsonl", io.BytesIO("\n".join(lines).encode())), purpose="fine-tune"
        )
    assert "line 4" in bad.value.message and bad.value.code == "invalid_file_format"
    for call in (
        lambda: client.files.retrieve("file-unknown"),
        lambda: client.fine_tuning.jobs.retrieve("ftjob-unknown"),
        lambda: client.models.retrieve("ft:gemma-3-270m:x:ftjob-unknown"),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    with pytest.raises(openai.AuthenticationError):
        server.client("sk-wrong").models.list()
    request = urllib.request.Request(f"{server.base_url}/models")  # no Authorization at all
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(request)
    assert missing.value.code == 401


def test_another_key_sees_nothing(server: Server, trained: dict[str, str]) -> None:
    other = server.client(KEY_B)
    with pytest.raises(openai.NotFoundError):
        other.files.retrieve(trained["file"])
    with pytest.raises(openai.NotFoundError):
        other.fine_tuning.jobs.retrieve(trained["job"])
    with pytest.raises(openai.NotFoundError):
        ask(other, trained["model"])
    assert trained["file"] not in [f.id for f in other.files.list()]
    assert trained["job"] not in [j.id for j in other.fine_tuning.jobs.list()]
    assert trained["model"] not in [m.id for m in other.models.list()]


def test_server_restart_and_worker_kill_lose_nothing(server: Server) -> None:
    client = server.client()
    f = client.files.create(file=("durable.jsonl", io.BytesIO(TRAIN)), purpose="fine-tune")
    job_id = create_job(client, f.id, n_epochs=3, suffix="durable")
    wait_for(
        lambda: client.fine_tuning.jobs.retrieve(job_id).status == "running", "training to start"
    )
    wait_for(
        lambda: any(e.type == "metrics" for e in client.fine_tuning.jobs.list_events(job_id)),
        "a training step",
    )
    server.stop()  # its worker finishes the step, saves a checkpoint and requeues the job
    server.start(workers=0)
    client = server.client()
    assert f.id in [x.id for x in client.files.list()]
    assert client.fine_tuning.jobs.retrieve(job_id).status in ("queued", "running")
    first = server.worker()
    try:
        step = max(c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job_id))
        wait_for(
            lambda: (
                max(c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job_id)) > step
            ),
            "a checkpoint after the restart",
        )
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    killed_after = max(c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job_id))
    second = server.worker()
    try:
        wait_for(lambda: finished(client, job_id), "the job to finish on the second worker")
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=120)
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job_id, limit=1000)]
    assert f"Resumed from step {killed_after}" in messages
    assert messages.count("The job has successfully completed") == 1
    job = client.fine_tuning.jobs.retrieve(job_id)
    assert len(job.result_files) == 1
    results = [x.id for x in client.files.list(purpose="fine-tune-results")]
    assert results.count(job.result_files[0]) == 1
    jobs = [j for j in client.fine_tuning.jobs.list() if j.status == "succeeded"]
    assert len(results) == len(jobs)  # one result file per succeeded job: none written twice
    assert "Vetrin" in ask(client, job.fine_tuned_model or "")
