"""Two `ragtune serve` processes and two `ragtune worker` processes sharing one PostgreSQL
database and one artefact store (RAGTUNE_ARTIFACTS) and nothing else: each has its own
RAGTUNE_HOME, as on four hosts. Every job runs exactly once; `kill -9` of the worker training a
job lets the other worker finish it from the last checkpoint in the store, and both servers
serve the model neither trained."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ragtune.jobs.run_store import RunStore
from tests.postgres.conftest import new_database
from tests.serve.conftest import chat_rows, jsonl

pytestmark = pytest.mark.postgres
KEY = "sk-shared"
SRC = str(Path(__file__).resolve().parents[2] / "src")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Cluster:
    env: dict[str, str]
    servers: list[str]  # base URLs
    workers: list[subprocess.Popen[bytes]]
    homes: list[Path]  # the two servers', then the two workers'
    url: str
    artifacts: str

    def client(self, i: int):  # type: ignore[no-untyped-def]
        from openai import OpenAI

        return OpenAI(base_url=self.servers[i], api_key=KEY, max_retries=0, timeout=60)


def wait_ready(base: str, proc: subprocess.Popen[bytes], deadline: float) -> None:
    request = urllib.request.Request(f"{base}/models", headers={"Authorization": f"Bearer {KEY}"})
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(request, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"server at {base} did not start")


@pytest.fixture(scope="module")
def cluster(
    pg_server: str, tmp_path_factory: pytest.TempPathFactory, tiny_lm: Path, tiny_embedder: Path
) -> Iterator[Cluster]:
    """Started once for this module (process start-up is the slow part); the kill test runs
    last, as it leaves one worker."""
    pg_url = new_database(pg_server)
    homes = [tmp_path_factory.mktemp(f"host-{i}") for i in range(5)]  # the last: the CLI's
    artifacts = tmp_path_factory.mktemp("artifacts").as_uri()
    env = {
        **os.environ,
        "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "RAGTUNE_HOME": str(homes[4]),
        "RAGTUNE_ARTIFACTS": artifacts,
        "RAGTUNE_DATABASE_URL": pg_url,
        "RAGTUNE_API_KEYS": KEY,
        "RAGTUNE_SERVE_MODEL": str(tiny_lm),
        "RAGTUNE_SERVE_EMBEDDER": str(tiny_embedder),
        "RAGTUNE_SERVE_EMBED_BACKEND": "torch",
        "RAGTUNE_SERVE_DEVICE": "cpu",
        "RAGTUNE_LEASE_SECONDS": "6",  # short, so the kill test waits little; beats every 2 s
    }
    cmd = [sys.executable, "-m", "ragtune.cli"]
    ports = [free_port(), free_port()]
    servers = [
        subprocess.Popen(
            [*cmd, "serve", "--workers", "0", "--port", str(p)],
            env={**env, "RAGTUNE_HOME": str(homes[i])},
        )
        for i, p in enumerate(ports)
    ]
    workers = [
        subprocess.Popen([*cmd, "worker"], env={**env, "RAGTUNE_HOME": str(homes[2 + i])})
        for i in range(2)
    ]
    try:
        bases = [f"http://127.0.0.1:{p}/v1" for p in ports]
        deadline = time.time() + 180
        for base, proc in zip(bases, servers, strict=True):
            wait_ready(base, proc, deadline)
        yield Cluster(env, bases, workers, homes[:4], pg_url, artifacts)
    finally:
        for p in [*servers, *workers]:
            if p.poll() is None:
                p.terminate()
        for p in [*servers, *workers]:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()


def create_job(c: Cluster, server: int, file_id: str, epochs: int, batch: int) -> str:
    job = c.client(server).fine_tuning.jobs.create(
        model="tiny_lm0",
        training_file=file_id,
        seed=1,
        method={
            "type": "supervised",
            "supervised": {"hyperparameters": {"n_epochs": epochs, "batch_size": batch}},
        },
    )
    return str(job.id)


def wait_terminal(c: Cluster, job_ids: list[str], timeout: float = 240) -> dict[str, str]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = {j: c.client(1).fine_tuning.jobs.retrieve(j).status for j in job_ids}
        if all(s in ("succeeded", "failed", "cancelled") for s in status.values()):
            return status
        time.sleep(0.5)
    raise AssertionError(f"jobs not finished: {status}")


def db_rows(url: str, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    import psycopg

    with psycopg.connect(url) as conn:
        return conn.execute(sql.encode(), args).fetchall()


def messages(url: str, job_id: str) -> list[str]:
    rows = db_rows(url, "SELECT message FROM job_events WHERE job_id = %s ORDER BY seq", (job_id,))
    return [str(r[0]) for r in rows]


def test_jobs_from_two_servers_run_exactly_once_on_two_workers(cluster: Cluster) -> None:
    c = cluster
    f = c.client(0).files.create(file=("t.jsonl", jsonl(chat_rows())), purpose="fine-tune")
    assert c.client(1).files.retrieve(f.id).filename == "t.jsonl"  # seen through the other
    jobs = [create_job(c, i % 2, f.id, epochs=1, batch=5) for i in range(4)]
    assert wait_terminal(c, jobs) == dict.fromkeys(jobs, "succeeded")
    for j in jobs:
        log = messages(c.url, j)
        assert log.count("Fine-tuning job started") == 1, log
        assert log.count("The job has successfully completed") == 1, log
        assert not any("resum" in m for m in log), log
        job = c.client(0).fine_tuning.jobs.retrieve(j)
        assert len(job.result_files) == 1
    attempts = db_rows(c.url, "SELECT attempts, attempt FROM jobs")
    assert sorted(attempts) == [(1, None)] * 4
    results = db_rows(c.url, "SELECT count(*) FROM files WHERE purpose = 'fine-tune-results'")
    assert results == [(4,)]


def test_a_file_added_through_one_server_is_searched_on_the_other(cluster: Cluster) -> None:
    """The vector store tables and the store's chunks are in PostgreSQL: a store and a file
    created through server 0, ingested by whichever worker claims it, are searched on
    server 1 (SDK and plain HTTP)."""
    c = cluster
    a, b = c.client(0), c.client(1)
    store = a.vector_stores.create(name="shared")
    texts = {
        "zorbland.txt": "The capital of Zorbland is Vetrin. Vetrin lies on the river Ost.",
        "volcano.txt": "Mount Kelra is a volcano that last erupted in 1820.",
    }
    ids = {}
    for name, text in texts.items():
        f = a.files.create(file=(name, text.encode()), purpose="assistants")
        a.vector_stores.files.create(vector_store_id=store.id, file_id=f.id)
        ids[name] = f.id
    deadline = time.time() + 120
    while time.time() < deadline:
        counts = b.vector_stores.retrieve(store.id).file_counts
        if counts.completed == 2:
            break
        assert counts.failed == 0, counts
        time.sleep(0.5)
    assert b.vector_stores.retrieve(store.id).file_counts.completed == 2
    hits = b.vector_stores.search(store.id, query="capital of Zorbland", max_num_results=1)
    assert [h.file_id for h in hits.data] == [ids["zorbland.txt"]]
    request = urllib.request.Request(
        f"{c.servers[1]}/vector_stores/{store.id}/search",
        data=json.dumps({"query": "volcano erupted"}).encode(),
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as r:
        found = json.loads(r.read())
    assert found["data"][0]["file_id"] == ids["volcano.txt"]
    assert db_rows(c.url, "SELECT count(*) FROM kb_manifests WHERE kb = %s", (store.id,)) == [(1,)]
    assert not any((h / "kb" / store.id).exists() for h in c.homes)  # in no host's folder


def test_a_key_created_on_one_host_is_honoured_by_both_servers(cluster: Cluster) -> None:
    from openai import AuthenticationError, NotFoundError, OpenAI

    cmd = [sys.executable, "-m", "ragtune.cli", "keys", "create", "--project", "team-x"]
    made = subprocess.run(cmd, env=cluster.env, capture_output=True, text=True, check=True)
    key = made.stdout.strip().splitlines()[-1]
    assert key.startswith("sk-rt-")
    assert db_rows(cluster.url, "SELECT project FROM api_keys") == [("team-x",)]
    assert not (Path(cluster.env["RAGTUNE_HOME"]) / "serve" / "keys.json").exists()  # in PG only
    clients = [
        OpenAI(base_url=base, api_key=key, max_retries=0, timeout=60) for base in cluster.servers
    ]
    f = clients[0].files.create(file=("x.txt", b"team x only"), purpose="assistants")
    assert clients[1].files.retrieve(f.id).filename == "x.txt"
    with pytest.raises(NotFoundError):
        cluster.client(1).files.retrieve(f.id)  # the shared key's project cannot see it
    wrong = OpenAI(base_url=cluster.servers[1], api_key=key + "x", max_retries=0)
    with pytest.raises(AuthenticationError):
        wrong.files.list()


def test_kill_9_of_the_training_worker_resumes_from_checkpoint(cluster: Cluster) -> None:
    c = cluster
    f = c.client(1).files.create(file=("t.jsonl", jsonl(chat_rows())), purpose="fine-tune")
    job_id = create_job(c, 0, f.id, epochs=12, batch=1)  # 120 steps, a checkpoint every 10
    store = RunStore(c.artifacts)
    deadline = time.time() + 180
    holder: str | None = None
    while time.time() < deadline:
        rows = db_rows(c.url, "SELECT status, worker FROM jobs WHERE id = %s", (job_id,))
        status, holder = str(rows[0][0]), rows[0][1]  # type: ignore[assignment]
        assert status not in ("succeeded", "failed", "cancelled"), "finished before the kill"
        if status == "running" and store.checkpoint_steps(job_id):  # one reached the store
            break
        time.sleep(0.05)
    assert holder is not None
    pid = int(holder.split(":")[1])
    victim = next(w for w in c.workers if w.pid == pid)
    os.kill(pid, signal.SIGKILL)
    victim.wait(timeout=30)
    assert wait_terminal(c, [job_id]) == {job_id: "succeeded"}
    log = messages(c.url, job_id)
    assert "The worker running this job stopped; resuming on another" in log
    assert log.count("The job has successfully completed") == 1
    rows = db_rows(c.url, "SELECT attempts, worker FROM jobs WHERE id = %s", (job_id,))
    attempts, finisher = rows[0]
    finisher_pid = int(str(finisher).split(":")[1])
    assert int(attempts) >= 2 and finisher_pid != pid  # type: ignore[call-overload]
    home = c.homes[2 + [w.pid for w in c.workers].index(finisher_pid)]  # its own folder
    run_events = [
        json.loads(line)
        for line in (home / "serve" / "runs" / job_id / "events.jsonl").read_text().splitlines()
    ]
    resumed = [e for e in run_events if str(e.get("message", "")).startswith("Resumed from step")]
    assert resumed and all(int(e["step"]) >= 10 for e in resumed), resumed  # not from 0
    assert f"Restored the checkpoint of step {resumed[0]['step']} from the store" in log
    job = c.client(0).fine_tuning.jobs.retrieve(job_id)
    assert len(job.result_files) == 1
    # neither server's host trained it: each fetches the run from the store, then answers
    for i in (0, 1):
        assert not (c.homes[i] / "serve" / "runs" / job_id).exists()
        reply = c.client(i).chat.completions.create(
            model=str(job.fine_tuned_model),
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=3,
        )
        assert reply.model == job.fine_tuned_model
        assert (c.homes[i] / "serve" / "runs" / job_id / "merged").is_dir()
