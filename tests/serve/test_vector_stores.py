"""Vector stores, files, batches, ingestion and search on the tiny embedder; every response
parsed with the openai SDK's own types."""

from __future__ import annotations

from pathlib import Path

import pytest
from openai.types import VectorStore, VectorStoreDeleted, VectorStoreSearchResponse
from openai.types.vector_stores import (
    VectorStoreFile,
    VectorStoreFileBatch,
    VectorStoreFileDeleted,
)

from ragtune.jobs.backend import open_vector_stores
from ragtune.retrieve.kb import KnowledgeBase
from ragtune.serve.protocol.vector_stores import ComparisonFilter, CompoundFilter
from ragtune.serve.vector_search import matches
from tests.serve.conftest import KEY_B, Served

DOCS = {
    "zorbland.txt": "The capital of Zorbland is Vetrin. Vetrin lies on the river Ost.",
    "cats.md": "# Cats\n\nCats sleep for most of the day and hunt small birds at night.",
    "volcano.txt": "Mount Kelra is a volcano that last erupted in 1820 and buried a village.",
    "bread.html": "<html><body><h1>Bread</h1><p>Bread rises because yeast makes gas.</p>"
    "</body></html>",
}
ATTRS = {
    "zorbland.txt": {"topic": "geography", "year": 2020, "public": True},
    "cats.md": {"topic": "animals", "year": 2018, "public": True},
    "volcano.txt": {"topic": "geography", "year": 2010, "public": False},
    "bread.html": {"topic": "food", "year": 2024, "public": True},
}


def upload(s: Served, name: str, text: str, key: str | None = None) -> str:
    r = s.client.post(
        "/v1/files",
        files={"file": (name, text.encode(), "text/plain")},
        data={"purpose": "assistants"},
        headers=s.headers(key) if key else s.headers(),
    )
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def make_store(s: Served, docs: dict[str, str] = DOCS, **body: object) -> tuple[str, dict]:
    r = s.client.post("/v1/vector_stores", json={"name": "kb", **body}, headers=s.headers())
    store = VectorStore.model_validate(r.json())
    ids = {}
    for name, text in docs.items():
        file_id = upload(s, name, text)
        r = s.client.post(
            f"/v1/vector_stores/{store.id}/files",
            json={"file_id": file_id, "attributes": ATTRS.get(name)},
            headers=s.headers(),
        )
        f = VectorStoreFile.model_validate(r.json())
        assert f.status == "in_progress" and f.vector_store_id == store.id
        ids[name] = file_id
    return store.id, ids


def search(s: Served, store_id: str, key: str | None = None, **body: object):
    return s.client.post(
        f"/v1/vector_stores/{store_id}/search",
        json=body,
        headers=s.headers(key) if key else s.headers(),
    )


def results(resp) -> list[VectorStoreSearchResponse]:
    assert resp.status_code == 200, resp.text
    page = resp.json()
    assert page["object"] == "vector_store.search_results.page" and page["has_more"] is False
    return [VectorStoreSearchResponse.model_validate(x) for x in page["data"]]


def test_ingestion_job_completes_files_and_counts(served: Served) -> None:
    store_id, ids = make_store(served)
    store = VectorStore.model_validate(
        served.client.get(f"/v1/vector_stores/{store_id}", headers=served.headers()).json()
    )
    assert store.status == "in_progress" and store.file_counts.in_progress == 4
    assert served.worker.run_one()  # the store's waiting files go in one ingest run
    store = VectorStore.model_validate(
        served.client.get(f"/v1/vector_stores/{store_id}", headers=served.headers()).json()
    )
    assert store.status == "completed"
    assert store.file_counts.completed == store.file_counts.total == 4
    assert store.usage_bytes == sum(len(t.encode()) for t in DOCS.values())
    listed = served.client.get(
        f"/v1/vector_stores/{store_id}/files?filter=completed&order=asc", headers=served.headers()
    ).json()
    files = [VectorStoreFile.model_validate(x) for x in listed["data"]]
    assert [f.id for f in files] == list(ids.values())
    assert files[0].attributes == ATTRS["zorbland.txt"]
    assert files[0].chunking_strategy is not None
    assert files[0].chunking_strategy.type == "static"
    # the store is the knowledge base named after its id
    assert KnowledgeBase.open(store_id).count()[0] == 4


def test_unsupported_file_fails_with_last_error(served: Served) -> None:
    store_id, ids = make_store(served, {"table.csv": "a,b\n1,2\n", "empty.txt": " ", **DOCS})
    served.run_worker()
    empty = VectorStoreFile.model_validate(
        served.client.get(
            f"/v1/vector_stores/{store_id}/files/{ids['empty.txt']}", headers=served.headers()
        ).json()
    )
    assert empty.status == "failed" and empty.last_error is not None
    assert empty.last_error.code == "invalid_file"
    f = VectorStoreFile.model_validate(
        served.client.get(
            f"/v1/vector_stores/{store_id}/files/{ids['table.csv']}", headers=served.headers()
        ).json()
    )
    assert f.status == "failed" and f.last_error is not None
    assert f.last_error.code == "unsupported_file" and ".csv" in f.last_error.message
    store = VectorStore.model_validate(
        served.client.get(f"/v1/vector_stores/{store_id}", headers=served.headers()).json()
    )
    assert store.file_counts.failed == 2 and store.file_counts.completed == 4


def test_search_ranks_filters_and_thresholds(served: Served) -> None:
    store_id, ids = make_store(served)
    served.run_worker()
    hits = results(search(served, store_id, query="capital of Zorbland Vetrin"))
    assert hits[0].file_id == ids["zorbland.txt"] and hits[0].filename == "zorbland.txt"
    assert hits[0].content[0].type == "text" and "Vetrin" in hits[0].content[0].text
    assert hits[0].attributes == ATTRS["zorbland.txt"]
    assert all(0.0 <= h.score <= 1.0 for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert len(hits) == 4  # one chunk per short document

    geography_public = {
        "type": "and",
        "filters": [
            {"type": "eq", "key": "topic", "value": "geography"},
            {
                "type": "or",
                "filters": [
                    {"type": "eq", "key": "public", "value": True},
                    {"type": "gte", "key": "year", "value": 2015},
                ],
            },
        ],
    }
    hits = results(search(served, store_id, query="volcano erupted", filters=geography_public))
    assert [h.file_id for h in hits] == [ids["zorbland.txt"]]
    hits = results(
        search(
            served,
            store_id,
            query="volcano",
            filters={"type": "nin", "key": "topic", "value": ["food", "animals"]},
        )
    )
    assert {h.file_id for h in hits} == {ids["zorbland.txt"], ids["volcano.txt"]}
    hits = results(search(served, store_id, query="Zorbland", max_num_results=2))
    assert len(hits) == 2
    top = results(search(served, store_id, query="Zorbland"))[0].score
    hits = results(
        search(served, store_id, query="Zorbland", ranking_options={"score_threshold": top})
    )
    assert [h.score for h in hits] == [top]
    hits = results(search(served, store_id, query=["yeast bread", "cats hunt birds"]))
    assert {hits[0].file_id, hits[1].file_id} == {ids["bread.html"], ids["cats.md"]}
    r = search(served, store_id, query="")
    assert r.status_code == 400


def test_deleted_file_leaves_search_at_once(served: Served) -> None:
    store_id, ids = make_store(served)
    served.run_worker()
    gone = ids["zorbland.txt"]
    r = served.client.delete(f"/v1/vector_stores/{store_id}/files/{gone}", headers=served.headers())
    assert VectorStoreFileDeleted.model_validate(r.json()).deleted
    hits = results(search(served, store_id, query="capital of Zorbland Vetrin"))
    assert gone not in {h.file_id for h in hits}  # before any worker ran
    assert (
        served.client.get(
            f"/v1/vector_stores/{store_id}/files/{gone}", headers=served.headers()
        ).status_code
        == 404
    )
    served.run_worker()  # the worker removes its chunks from the index
    assert KnowledgeBase.open(store_id).count()[0] == 3
    store = VectorStore.model_validate(
        served.client.get(f"/v1/vector_stores/{store_id}", headers=served.headers()).json()
    )
    assert store.file_counts.total == 3


def test_other_key_cannot_see_or_search_the_store(served: Served) -> None:
    store_id, ids = make_store(served)
    served.run_worker()
    assert search(served, store_id, key=KEY_B, query="Zorbland").status_code == 404
    assert (
        served.client.get(
            f"/v1/vector_stores/{store_id}", headers=served.headers(KEY_B)
        ).status_code
        == 404
    )
    listed = served.client.get("/v1/vector_stores", headers=served.headers(KEY_B)).json()
    assert listed["data"] == []
    # nor attach another project's file to its own store
    r = served.client.post("/v1/vector_stores", json={}, headers=served.headers(KEY_B))
    own = r.json()["id"]
    r = served.client.post(
        f"/v1/vector_stores/{own}/files",
        json={"file_id": ids["cats.md"]},
        headers=served.headers(KEY_B),
    )
    assert r.status_code == 404


def test_store_update_list_delete(served: Served) -> None:
    store_id, _ = make_store(
        served,
        {"cats.md": DOCS["cats.md"]},
        metadata={"team": "a"},
        expires_after={"anchor": "last_active_at", "days": 7},
        chunking_strategy={
            "type": "static",
            "static": {"max_chunk_size_tokens": 200, "chunk_overlap_tokens": 50},
        },
    )
    r = served.client.post(
        f"/v1/vector_stores/{store_id}", json={"name": "renamed"}, headers=served.headers()
    )
    store = VectorStore.model_validate(r.json())
    assert store.name == "renamed" and store.metadata == {"team": "a"}
    assert store.expires_after is not None and store.expires_at is not None
    f = VectorStoreFile.model_validate(
        served.client.get(f"/v1/vector_stores/{store_id}/files", headers=served.headers()).json()[
            "data"
        ][0]
    )
    assert f.chunking_strategy is not None and f.chunking_strategy.type == "static"
    assert f.chunking_strategy.static.max_chunk_size_tokens == 200
    listed = served.client.get("/v1/vector_stores", headers=served.headers()).json()
    assert [VectorStore.model_validate(x).id for x in listed["data"]] == [store_id]
    served.run_worker()
    r = served.client.delete(f"/v1/vector_stores/{store_id}", headers=served.headers())
    assert VectorStoreDeleted.model_validate(r.json()).deleted
    assert not KnowledgeBase.exists(store_id)
    assert (
        served.client.get(f"/v1/vector_stores/{store_id}", headers=served.headers()).status_code
        == 404
    )


def test_file_attributes_update_changes_filtering(served: Served) -> None:
    store_id, ids = make_store(served)
    served.run_worker()
    only_food = {"type": "eq", "key": "topic", "value": "food"}
    assert [h.file_id for h in results(search(served, store_id, query="x", filters=only_food))] == [
        ids["bread.html"]
    ]
    r = served.client.post(
        f"/v1/vector_stores/{store_id}/files/{ids['cats.md']}",
        json={"attributes": {"topic": "food"}},
        headers=served.headers(),
    )
    assert VectorStoreFile.model_validate(r.json()).attributes == {"topic": "food"}
    hits = results(search(served, store_id, query="x", filters=only_food))
    assert {h.file_id for h in hits} == {ids["bread.html"], ids["cats.md"]}


def test_file_batches(served: Served) -> None:
    r = served.client.post("/v1/vector_stores", json={}, headers=served.headers())
    store_id = r.json()["id"]
    a, b = upload(served, "a.txt", "alpha text"), upload(served, "b.txt", "beta text")
    r = served.client.post(
        f"/v1/vector_stores/{store_id}/file_batches",
        json={"file_ids": [a, b], "attributes": {"kind": "letter"}},
        headers=served.headers(),
    )
    batch = VectorStoreFileBatch.model_validate(r.json())
    assert batch.status == "in_progress" and batch.file_counts.in_progress == 2
    served.run_worker()
    batch = VectorStoreFileBatch.model_validate(
        served.client.get(
            f"/v1/vector_stores/{store_id}/file_batches/{batch.id}", headers=served.headers()
        ).json()
    )
    assert batch.status == "completed" and batch.file_counts.completed == 2
    files = served.client.get(
        f"/v1/vector_stores/{store_id}/file_batches/{batch.id}/files", headers=served.headers()
    ).json()["data"]
    assert {VectorStoreFile.model_validate(f).id for f in files} == {a, b}
    # a batch cancelled before any worker took its files
    c = upload(served, "c.txt", "gamma text")
    r = served.client.post(
        f"/v1/vector_stores/{store_id}/file_batches",
        json={"files": [{"file_id": c}]},
        headers=served.headers(),
    )
    batch2 = r.json()["id"]
    r = served.client.post(
        f"/v1/vector_stores/{store_id}/file_batches/{batch2}/cancel", headers=served.headers()
    )
    cancelled = VectorStoreFileBatch.model_validate(r.json())
    assert cancelled.status == "cancelled" and cancelled.file_counts.cancelled == 1


def test_ingestion_completes_once_after_a_worker_dies(served: Served) -> None:
    """A worker that claimed a file and died (its lease ran out) cannot complete it; the next
    worker's attempt does, once."""
    store_id, ids = make_store(served, {"cats.md": DOCS["cats.md"]})
    db = open_vector_stores(served.settings)
    dead = db.claim_ingest(lease_s=0.0)  # claimed, then the worker died: the lease is over
    assert dead is not None and [f.file_id for f in dead.files] == [ids["cats.md"]]
    served.run_worker()
    assert not db.finish_ingest(dead, ids["cats.md"], "completed", "x", 1)  # a stale attempt
    [f] = db.store_files(dead.files[0].project, store_id)
    assert f.status == "completed" and f.attempts == 2
    assert KnowledgeBase.open(store_id).count() == (1, 1)


def test_vector_store_search_equals_ragtune_search(
    served: Served, tiny_embedder: Path, tmp_path: Path
) -> None:
    """Parity: the API ranks like ``ragtune search`` over the same documents and settings."""
    from ragtune.ingest.pipeline import ingest

    store_id, ids = make_store(served)
    served.run_worker()
    folder = tmp_path / "docs"
    folder.mkdir()
    for name, text in DOCS.items():
        (folder / name).write_text(text)
    ingest(
        [folder],
        kb="parity",
        embedder=str(tiny_embedder),
        backend="torch",
        chunk_tokens=800,
        chunk_overlap=400,
        device="cpu",
    )
    kb = KnowledgeBase.open("parity", device="cpu")
    name_of = {v: k for k, v in ids.items()}
    for query in ("capital of Zorbland", "volcano village", "yeast", "cats birds night"):
        api = results(search(served, store_id, query=query))
        cli = kb.search(query, k=10)
        assert [name_of[h.file_id] for h in api] == [
            h.chunk.doc_id.removeprefix("docs/") for h in cli
        ]
        assert [h.score for h in api] == pytest.approx([h.score / 2 for h in cli])


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ({"type": "eq", "key": "n", "value": 3}, True),
        ({"type": "ne", "key": "n", "value": 3}, False),
        ({"type": "gt", "key": "n", "value": 2.5}, True),
        ({"type": "gte", "key": "n", "value": 3}, True),
        ({"type": "lt", "key": "n", "value": 3}, False),
        ({"type": "lte", "key": "n", "value": 3}, True),
        ({"type": "in", "key": "s", "value": ["x", "y"]}, True),
        ({"type": "nin", "key": "s", "value": ["x", "y"]}, False),
        ({"type": "eq", "key": "b", "value": True}, True),
        ({"type": "eq", "key": "b", "value": 1}, False),  # a boolean is not a number
        ({"type": "gt", "key": "s", "value": 1}, False),  # strings do not order with numbers
        ({"type": "eq", "key": "missing", "value": "x"}, False),
        ({"type": "ne", "key": "missing", "value": "x"}, True),
        (
            {
                "type": "or",
                "filters": [
                    {"type": "eq", "key": "s", "value": "nope"},
                    {
                        "type": "and",
                        "filters": [
                            {"type": "lt", "key": "n", "value": 10},
                            {"type": "eq", "key": "b", "value": True},
                        ],
                    },
                ],
            },
            True,
        ),
    ],
)
def test_attribute_filters(where: dict, expected: bool) -> None:
    model = (
        CompoundFilter.model_validate(where)
        if where["type"] in ("and", "or")
        else ComparisonFilter.model_validate(where)
    )
    assert matches(model, {"n": 3, "s": "x", "b": True}) is expected
