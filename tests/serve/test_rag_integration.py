"""The RAG half of ``ragtune serve`` driven by the official openai SDK against a live server
(real Gemma 3 270M and all-MiniLM-L6-v2): vector stores from uploads, filtered search,
responses with file_search and file_citation (streaming and not, base and fine-tuned),
deletion, isolation between keys, and a worker killed during ingestion.

One server and one worker process are shared by the module: ``pytest -m integration``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import ragtune
from ragtune.retrieve.kb import KnowledgeBase, read_manifest

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.integration

KEY_A, KEY_B = "sk-rag-a", "sk-rag-b"
DOCS = {
    "lighthouse.md": "The lighthouse of Marrow Bay was designed by Ilse Brandt in 1907.",
    "kelra.txt": "Mount Kelra is a volcano in the north of Zorbland. It last erupted in 1820.",
    "baking.txt": "Sourdough bread rises because wild yeast in the starter produces gas.",
    "cats.txt": "Cats sleep for most of the day and hunt small birds at dusk.",
}
ATTRS = {
    "lighthouse.md": {"topic": "geography", "year": 2021},
    "kelra.txt": {"topic": "geography", "year": 2015},
    "baking.txt": {"topic": "food", "year": 2023},
    "cats.txt": {"topic": "animals", "year": 2019},
}
QUESTION = "Who designed the lighthouse of Marrow Bay?"


@dataclass
class Live:
    url: str
    home: Path
    env: dict[str, str]
    server: subprocess.Popen[bytes]
    worker: subprocess.Popen[bytes]
    docs: Path

    def client(self, key: str = KEY_A) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url, api_key=key, max_retries=0, timeout=300)

    def start_worker(self) -> None:
        self.worker = subprocess.Popen(
            [sys.executable, "-m", "ragtune.cli", "worker"], env=self.env
        )


def attempts(live: Live, store_id: str) -> int:
    """How many times workers took the store's (one) file for ingestion."""
    with sqlite3.connect(live.home / "serve" / "ragtune.sqlite") as db:
        row = db.execute(
            "SELECT attempts FROM vector_store_files WHERE vector_store_id = ?", (store_id,)
        ).fetchone()
    return int(row[0]) if row else 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def live(default_lm: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    home = tmp_path_factory.mktemp("rag_home")
    docs = tmp_path_factory.mktemp("rag_docs")
    for name, text in DOCS.items():
        (docs / name).write_text(text)
    port = _free_port()
    src = str(Path(ragtune.__file__).resolve().parents[1])
    env = {
        **os.environ,
        "RAGTUNE_HOME": str(home),
        "RAGTUNE_API_KEYS": f"{KEY_A},{KEY_B}",
        "RAGTUNE_SERVE_MODEL": str(default_lm),
        "RAGTUNE_SERVE_EMBED_BACKEND": "torch",
        "RAGTUNE_SERVE_DEVICE": "cpu",
        "RAGTUNE_LEASE_SECONDS": "4",
        "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "ragtune.cli", "serve", "--port", str(port), "--workers", "0"],
        env=env,
    )
    worker = subprocess.Popen([sys.executable, "-m", "ragtune.cli", "worker"], env=env)
    live = Live(f"http://127.0.0.1:{port}/v1", home, env, server, worker, docs)
    deadline = time.time() + 180
    while True:
        try:
            live.client().models.list()
            break
        except openai.APIConnectionError:
            if time.time() > deadline or server.poll() is not None:
                raise
            time.sleep(0.5)
    yield live
    for proc in (live.worker, server):
        proc.terminate()
    for proc in (live.worker, server):
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def store(live: Live) -> tuple[str, dict[str, str]]:
    """A vector store made with ``files.upload_and_poll`` and ``file_batches.upload_and_poll``."""
    client = live.client()
    vs = client.vector_stores.create(name="zorbland")
    ids = {}
    for name in ("lighthouse.md", "kelra.txt"):
        f = client.vector_stores.files.upload_and_poll(
            vector_store_id=vs.id,
            file=live.docs / name,
            attributes=ATTRS[name],  # type: ignore[arg-type]
            poll_interval_ms=200,
            max_wait_seconds=600,
        )
        assert f.status == "completed", f.last_error
        ids[name] = f.id
    with open(live.docs / "baking.txt", "rb") as a, open(live.docs / "cats.txt", "rb") as b:
        batch = client.vector_stores.file_batches.upload_and_poll(
            vs.id, files=[a, b], poll_interval_ms=200
        )
    assert batch.status == "completed" and batch.file_counts.completed == 2
    for f in client.vector_stores.file_batches.list_files(batch.id, vector_store_id=vs.id):
        name = client.files.retrieve(f.id).filename
        ids[name] = f.id
        client.vector_stores.files.update(f.id, vector_store_id=vs.id, attributes=ATTRS[name])  # type: ignore[arg-type]
    got = client.vector_stores.retrieve(vs.id)
    assert got.status == "completed" and got.file_counts.completed == 4
    return vs.id, ids


def test_search_with_a_compound_attribute_filter(live: Live, store: tuple) -> None:
    store_id, ids = store
    client = live.client()
    page = client.vector_stores.search(store_id, query="Where is the volcano Kelra?")
    assert page.data[0].file_id == ids["kelra.txt"] and page.data[0].filename == "kelra.txt"
    recent_geography = {
        "type": "and",
        "filters": [
            {"type": "eq", "key": "topic", "value": "geography"},
            {"type": "gte", "key": "year", "value": 2020},
        ],
    }
    page = client.vector_stores.search(
        store_id,
        query="Where is the volcano Kelra?",
        filters=recent_geography,  # type: ignore[arg-type]
    )
    assert [r.file_id for r in page.data] == [ids["lighthouse.md"]]
    assert page.data[0].attributes == {"topic": "geography", "year": 2021}


def test_responses_file_search_cites_the_right_file(live: Live, store: tuple) -> None:
    store_id, ids = store
    client = live.client()
    base = client.models.list().data[0].id
    tools = [{"type": "file_search", "vector_store_ids": [store_id]}]
    resp = client.responses.create(
        model=base,
        input=QUESTION,
        tools=tools,  # type: ignore[arg-type]
        include=["file_search_call.results"],
        temperature=0,
    )
    call, message = resp.output
    assert call.type == "file_search_call" and call.results
    assert call.results[0].file_id == ids["lighthouse.md"]
    assert "Brandt" in resp.output_text
    notes = message.content[0].annotations  # type: ignore[union-attr]
    assert notes and notes[0].type == "file_citation"
    assert notes[0].file_id == ids["lighthouse.md"] and notes[0].filename == "lighthouse.md"

    kinds, text, done = [], "", None
    for event in client.responses.create(
        model=base,
        input=QUESTION,
        tools=tools,  # type: ignore[arg-type]
        stream=True,
        temperature=0,
    ):
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            text += event.delta
        if event.type == "response.completed":
            done = event.response
    assert "response.file_search_call.completed" in kinds
    assert "response.output_text.annotation.added" in kinds
    assert done is not None and done.output_text == text and "Brandt" in text
    note = done.output[1].content[0].annotations[0]  # type: ignore[union-attr]
    assert note.file_id == ids["lighthouse.md"]  # type: ignore[union-attr]
    assert client.responses.retrieve(done.id).output_text == text


def test_fine_tuned_model_with_file_search_is_one_call(live: Live, store: tuple) -> None:
    store_id, ids = store
    client = live.client()
    base = client.models.list().data[0].id
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"Who wrote the play Hamlet? ({i})"},
                {"role": "assistant", "content": "William Shakespeare"},
            ]
        }
        for i in range(10)
    ]
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    training = client.files.create(file=("train.jsonl", data), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=base,
        training_file=training.id,
        suffix="rag",
        method={
            "type": "supervised",
            "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 10}},
        },
    )
    deadline = time.time() + 600
    while job.status not in ("succeeded", "failed", "cancelled"):
        assert time.time() < deadline
        time.sleep(1)
        job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model is not None
    resp = client.responses.create(
        model=job.fine_tuned_model,
        input=QUESTION,
        tools=[{"type": "file_search", "vector_store_ids": [store_id]}],
        temperature=0,
    )
    assert resp.model == job.fine_tuned_model
    notes = resp.output[1].content[0].annotations  # type: ignore[union-attr]
    assert [n.file_id for n in notes][:1] == [ids["lighthouse.md"]], resp.output_text


def test_another_key_cannot_search_the_store(live: Live, store: tuple) -> None:
    store_id, _ = store
    other = live.client(KEY_B)
    with pytest.raises(openai.NotFoundError):
        other.vector_stores.search(store_id, query="Zorbland")
    with pytest.raises(openai.NotFoundError):
        other.responses.create(
            model=other.models.list().data[0].id,
            input=QUESTION,
            tools=[{"type": "file_search", "vector_store_ids": [store_id]}],
        )


def test_worker_killed_during_ingestion_completes_the_file_once(live: Live, store: tuple) -> None:
    client = live.client()
    big = live.docs / "long.txt"
    sentences = [f"Record {i} of the Zorbland archive notes harvest {i * 7}." for i in range(6000)]
    big.write_text(" ".join(sentences))
    vs = client.vector_stores.create(
        name="big",
        chunking_strategy={
            "type": "static",
            "static": {"max_chunk_size_tokens": 100, "chunk_overlap_tokens": 0},
        },
    )
    uploaded = client.files.create(file=big, purpose="assistants")
    client.vector_stores.files.create(vector_store_id=vs.id, file_id=uploaded.id)
    deadline = time.time() + 120
    kb = live.home / "kb" / vs.id
    # The worker creates the store's tables just before it embeds the file's chunks.
    while not list(kb.glob("lance-*")):
        assert time.time() < deadline, "the worker never started ingesting"
        time.sleep(0.05)
    live.worker.send_signal(signal.SIGKILL)
    live.worker.wait()
    assert client.vector_stores.files.retrieve(uploaded.id, vector_store_id=vs.id).status == (
        "in_progress"
    )
    live.start_worker()
    f = client.vector_stores.files.poll(
        uploaded.id, vector_store_id=vs.id, poll_interval_ms=300, max_wait_seconds=900
    )
    assert f.status == "completed", f.last_error
    assert attempts(live, vs.id) == 2  # the killed attempt, and the one that completed it
    index = KnowledgeBase(vs.id, kb, read_manifest(kb, vs.id))
    docs, chunks = index.count()
    chunk_ids = index.store.keywords.chunk_ids
    assert docs == 1 and chunks > 50
    assert len(chunk_ids) == len(set(chunk_ids)) == chunks  # each chunk indexed once
    hits = client.vector_stores.search(vs.id, query="Record 4321 of the archive")
    assert hits.data and hits.data[0].file_id == uploaded.id


def test_deleted_file_is_gone_from_search(live: Live, store: tuple) -> None:
    store_id, ids = store
    client = live.client()
    client.vector_stores.files.delete(ids["cats.txt"], vector_store_id=store_id)
    page = client.vector_stores.search(store_id, query="cats hunt birds at dusk")
    assert ids["cats.txt"] not in {r.file_id for r in page.data}
    assert client.vector_stores.retrieve(store_id).file_counts.total == 3
