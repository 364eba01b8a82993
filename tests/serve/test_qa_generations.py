"""/v1/qa_generations: make-qa on a project's documents as a job; the result is a training
file ready for fine-tuning, with the coverage (pairs kept and dropped by reason)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

import ragtune.tune.makeqa as makeqa
from ragtune.tune.makeqa import Candidate
from tests.serve.conftest import KEY_B, Served
from tests.serve.test_routes import error, upload

DOC = b"Zorbland was founded in 1887 by Mira Quell. The capital of Zorbland is Vetrin today."


class CannedWriter:
    """A QAWriter with known answers: one supported pair and one unsupported per passage."""

    def __init__(self, generator: object, progress: object = None) -> None:
        self.progress = progress

    def pairs(self, passages: Sequence[str]) -> list[list[Candidate]]:
        return [
            [
                Candidate(
                    f"In which year (number {i}) was Zorbland founded?", "1887", intended="1887"
                ),
                Candidate("Who founded Zorbland?", "Tom Jones", intended="Mira Quell"),
            ]
            for i, _ in enumerate(passages)
        ]

    def paraphrases(self, questions: Sequence[str], n: int) -> list[list[str]]:
        return [[] for _ in questions]


def test_generation_from_a_vector_store_makes_a_training_file(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(makeqa, "LocalQAWriter", CannedWriter)
    h = served.headers()
    store = served.client.post("/v1/vector_stores", json={"name": "s"}, headers=h).json()
    f = upload(served, DOC, "zorbland.txt", "assistants").json()
    served.client.post(
        f"/v1/vector_stores/{store['id']}/files", json={"file_id": f["id"]}, headers=h
    )
    r = served.client.post(
        "/v1/qa_generations",
        json={"documents": {"vector_store_id": store["id"]}, "paraphrases": 0},
        headers=h,
    )
    assert r.status_code == 200, r.text
    g = r.json()
    assert g["object"] == "qa_generation" and g["status"] == "queued"
    served.run_worker()  # ingests the store's file, then runs the generation
    g = served.client.get(f"/v1/qa_generations/{g['id']}", headers=h).json()
    assert g["status"] == "succeeded", g["error"]
    cov = g["coverage"]
    assert (cov["documents"], cov["documents_covered"], cov["pairs_generated"]) == (1, 1, 2)
    assert cov["pairs_kept"] == 1 and cov["dropped_by_reason"]["unsupported"] == 1
    # the training file is the project's, with purpose fine-tune, ready for a job
    file = served.client.get(f"/v1/files/{g['training_file']}", headers=h).json()
    assert file["purpose"] == "fine-tune" and file["filename"] == "make-qa.jsonl"
    text = served.client.get(f"/v1/files/{file['id']}/content", headers=h).text
    assert '"content": "1887"' in text and text.count("\n") == 1
    listed = served.client.get("/v1/qa_generations", headers=h).json()
    assert [x["id"] for x in listed["data"]] == [g["id"]]
    # another key sees none of it
    hb = served.headers(KEY_B)
    assert served.client.get("/v1/qa_generations", headers=hb).json()["data"] == []
    r = served.client.get(f"/v1/qa_generations/{g['id']}", headers=hb)
    assert r.status_code == 404 and error(r)["param"] == "qa_generation_id"
    assert served.client.get(f"/v1/files/{file['id']}", headers=hb).status_code == 404
    r = served.client.post(f"/v1/qa_generations/{g['id']}/cancel", headers=h)
    assert r.status_code == 409


def test_a_generation_that_keeps_nothing_fails_with_its_coverage(served: Served) -> None:
    """The real generator (the tiny random model) writes nothing usable: the job fails and
    says what was dropped, and no training file appears."""
    h = served.headers()
    f = upload(served, DOC, "zorbland.txt", "assistants").json()
    bad = served.client.post(
        "/v1/qa_generations", json={"documents": {"file_ids": [f["id"]]}, "max_pairs": 0}, headers=h
    )
    assert bad.status_code == 400 and error(bad)["param"] == "max_pairs"
    bad = served.client.post("/v1/qa_generations", json={"documents": {}}, headers=h)
    assert bad.status_code == 400 and error(bad)["param"] == "documents"
    g = served.client.post(
        "/v1/qa_generations",
        json={"documents": {"file_ids": [f["id"]]}, "max_pairs": 2, "paraphrases": 0},
        headers=h,
    ).json()
    served.run_worker()
    g = served.client.get(f"/v1/qa_generations/{g['id']}", headers=h).json()
    assert g["status"] == "failed" and "make-qa kept no pairs" in g["error"]["message"]
    assert g["training_file"] is None and g["coverage"]["pairs_kept"] == 0
    assert g["coverage"]["documents"] == 1 and g["coverage"]["pairs_generated"] >= 1
    files = served.client.get("/v1/files?purpose=fine-tune", headers=h).json()["data"]
    assert files == []
