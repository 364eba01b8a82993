"""/v1/comparisons on the tiny models: every parameter checked before a job exists, tenancy,
cancellation, and a whole comparison driven with plain HTTP (httpx against a live server)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import uvicorn

from ragtune.evaluate.world import make_world, write_world
from ragtune.jobs.tasks import open_tasks
from tests.serve.conftest import KEY_A, KEY_B, Served, jsonl
from tests.serve.test_routes import error, upload


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    world = make_world(seed=1, n_orgs=1, n_people=2, n_places=1)
    return write_world(world, tmp_path_factory.mktemp("world"))


def _questions(world: dict[str, Path], flat: bool = True) -> bytes:
    """The world's questions, their gold doc ids as the uploaded file names."""
    rows = [json.loads(x) for x in world["questions"].read_text().splitlines()]
    for r in rows:
        r["doc_id"] = Path(r["doc_id"]).name if flat else r["doc_id"]
    return jsonl(rows)


def _inputs(s: Served, world: dict[str, Path], key: str = KEY_A) -> dict[str, object]:
    docs = [
        upload(s, p.read_bytes(), p.name, "assistants", key).json()["id"]
        for p in sorted(world["docs"].rglob("*.md"))
    ]
    questions = upload(s, _questions(world), "questions.jsonl", "assistants", key).json()["id"]
    train = upload(s, world["train"].read_bytes(), "train.jsonl", "fine-tune", key).json()["id"]
    return {"docs": docs, "questions": questions, "train": train}


def _create(s: Served, body: dict[str, object], key: str = KEY_A) -> Any:
    return s.client.post("/v1/comparisons", json=body, headers=s.headers(key))


def test_every_parameter_is_checked_before_a_job_exists(
    served: Served, world: dict[str, Path]
) -> None:
    ids = _inputs(served, world)
    good = {
        "questions": {"file_id": ids["questions"]},
        "documents": {"file_ids": ids["docs"]},
        "training": {"type": "file", "file_id": ids["train"]},
        "arms": ["base", "rag"],
    }
    bad_json = upload(served, b'{"question": "q"}\nnot json\n', "q.jsonl", "assistants").json()
    train_only = jsonl([{"id": "1", "question": "q", "answers": ["a"], "split": "train"}])
    no_test = upload(served, train_only, "q.jsonl", "assistants").json()
    other = _inputs(served, world, KEY_B)
    cases: list[tuple[dict[str, object], str, str]] = [
        ({"bogus": 1}, "bogus", "Extra inputs"),
        ({"arms": ["base", "nope"]}, "arms.1", "Input should be"),
        ({"arms": []}, "arms", "at least 1"),
        ({"arms": ["base", "base"]}, "arms", "listed twice"),
        ({"freshness": -1}, "freshness", "greater than or equal"),
        ({"max_questions": 0}, "max_questions", "greater than or equal"),
        ({"model": "gpt-4o"}, "model", "not available"),
        ({"questions": {"file_id": "file-nope"}}, "questions.file_id", "does not exist"),
        ({"questions": {"file_id": other["questions"]}}, "questions.file_id", "does not exist"),
        ({"questions": {"file_id": ids["train"]}}, "questions.file_id", "purpose"),
        ({"questions": {"file_id": bad_json["id"]}}, "questions.file_id", ":2: invalid JSON"),
        ({"questions": {"file_id": no_test["id"]}}, "questions.file_id", "no test-split"),
        ({"documents": None}, "documents", "need documents"),
        (
            {"documents": {"file_ids": ids["docs"], "vector_store_id": "vs_x"}},
            "documents",
            "either",
        ),
        ({"documents": {"vector_store_id": "vs_nope"}}, "documents.vector_store_id", "No such"),
        ({"documents": {"file_ids": [ids["train"]]}}, "documents.file_ids[0]", "purpose"),
        ({"training": {"type": "file"}}, "training.file_id", "required"),
        (
            {"training": {"type": "file", "file_id": ids["docs"][0]}},
            "training.file_id",
            "purpose",
        ),
        (
            {"training": {"type": "fine_tuning_job", "fine_tuning_job_id": "ftjob-x"}},
            "training.fine_tuning_job_id",
            "No such",
        ),
        ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs", "positive"),
        (
            {"training": {"type": "file", "file_id": ids["train"], "max_pairs": 5}},
            "training.max_pairs",
            "generated training data only",
        ),
        ({"format_check": "regex:("}, "format_check", "regular expression"),
        ({"format_check": "json-schema:/etc/passwd"}, "format_check", "inline"),
        ({"chunk_tokens": 10, "chunk_overlap": 10}, "chunk_overlap", "smaller"),
    ]
    for change, param, words in cases:
        r = _create(served, {**good, **change})
        assert r.status_code in (400, 404), (change, r.text)
        e = error(r)
        assert e["param"] == param and words in e["message"], (change, e)
    assert open_tasks(served.settings.database).count_waiting() == 0
    assert served.client.get("/v1/comparisons", headers=served.headers()).json()["data"] == []

    # A good request is a queued comparison with its resolved settings.
    r = _create(served, {**good, "max_questions": 3, "hyperparameters": {"n_epochs": 2}})
    assert r.status_code == 200, r.text
    c = r.json()
    assert c["object"] == "comparison" and c["status"] == "queued" and c["summary"] is None
    assert c["request"]["settings"]["arms"] == ["base", "rag"]
    assert c["request"]["settings"]["epochs"] == 2 and c["request"]["settings"]["method"] == "lora"
    assert c["request"]["document_files"] == ids["docs"] and c["report_url"] is None


def test_list_pages_tenancy_and_cancel(served: Served, world: dict[str, Path]) -> None:
    ids = _inputs(served, world)
    body = {
        "questions": {"file_id": ids["questions"]},
        "training": {"type": "file", "file_id": ids["train"]},
        "arms": ["base", "ft"],
    }
    made = [_create(served, body).json()["id"] for _ in range(3)]
    page = served.client.get("/v1/comparisons?limit=2", headers=served.headers()).json()
    assert [c["id"] for c in page["data"]] == made[::-1][:2] and page["has_more"] is True
    rest = served.client.get(
        f"/v1/comparisons?limit=2&after={page['last_id']}", headers=served.headers()
    ).json()
    assert [c["id"] for c in rest["data"]] == [made[0]] and rest["has_more"] is False

    # Another key sees none of them.
    h_b = served.headers(KEY_B)
    assert served.client.get("/v1/comparisons", headers=h_b).json()["data"] == []
    for path in ("", "/report", "/results"):
        r = served.client.get(f"/v1/comparisons/{made[0]}{path}", headers=h_b)
        assert r.status_code == 404 and error(r)["param"] == "comparison_id"
    assert served.client.post(f"/v1/comparisons/{made[0]}/cancel", headers=h_b).status_code == 404

    # No report before it has succeeded; a queued comparison is cancelled at once.
    r = served.client.get(f"/v1/comparisons/{made[0]}/report", headers=served.headers())
    assert r.status_code == 409 and error(r)["code"] == "comparison_not_finished"
    r = served.client.post(f"/v1/comparisons/{made[0]}/cancel", headers=served.headers())
    assert r.json()["status"] == "cancelled" and r.json()["finished_at"] is not None
    r = served.client.post(f"/v1/comparisons/{made[0]}/cancel", headers=served.headers())
    assert r.status_code == 409 and error(r)["code"] == "comparison_finished"

    # A running one stops at its next stage: here its worker died holding it, the lease ran
    # out, and the next worker sees the cancellation before doing any work.
    tasks = open_tasks(served.settings.database)
    claim = tasks.claim("dead-worker", lease_s=0.05)
    assert claim is not None and claim.task.id == made[1]
    r = served.client.post(f"/v1/comparisons/{made[1]}/cancel", headers=served.headers())
    assert r.json()["status"] == "running"
    time.sleep(0.1)
    assert served.worker.run_one() is True
    got = served.client.get(f"/v1/comparisons/{made[1]}", headers=served.headers()).json()
    assert got["status"] == "cancelled" and got["progress"] is None
    assert not (served.settings.home / "comparisons" / made[1]).exists()

    # A worker shutting down puts its comparison back in the queue.
    assert served.worker.run_one(stop=lambda: True) is True
    got = served.client.get(f"/v1/comparisons/{made[2]}", headers=served.headers()).json()
    assert got["status"] == "queued"
    again = tasks.get(claim.task.project, "comparison", made[2])
    assert again is not None and again.attempts == 1 and again.attempt is None


@pytest.fixture
def live(served: Served) -> Iterator[str]:
    """The same app served over loopback by uvicorn, with a worker thread running jobs."""
    config = uvicorn.Config(served.client.app, host="127.0.0.1", port=0, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    done = threading.Event()
    worker = threading.Thread(target=served.worker.run, args=(done.is_set, 0.1), daemon=True)
    worker.start()
    yield f"http://127.0.0.1:{port}"
    done.set()
    worker.join(timeout=120)
    server.should_exit = True
    thread.join(timeout=30)


def test_a_comparison_over_plain_http(live: str, served: Served, world: dict[str, Path]) -> None:
    headers = {"Authorization": f"Bearer {KEY_A}"}
    with requests.Session() as http:
        http.headers.update(headers)

        def put(path: Path | bytes, name: str, purpose: str) -> str:
            data = path if isinstance(path, bytes) else path.read_bytes()
            r = http.post(
                live + "/v1/files", files={"file": (name, data)}, data={"purpose": purpose}
            )
            assert r.status_code == 200, r.text
            return str(r.json()["id"])

        docs = [put(p, p.name, "assistants") for p in sorted(world["docs"].rglob("*.md"))]
        questions = put(_questions(world), "questions.jsonl", "assistants")
        train = put(world["train"], "train.jsonl", "fine-tune")
        r = http.post(
            live + "/v1/comparisons",
            json={
                "documents": {"file_ids": docs},
                "questions": {"file_id": questions},
                "training": {"type": "file", "file_id": train},
                "arms": ["base", "rag"],
                "max_questions": 3,
                "max_new_tokens": 4,
                "format_check": "regex:.+",
            },
        )
        assert r.status_code == 200, r.text
        cid = r.json()["id"]
        stages = set()
        deadline = time.monotonic() + 600
        while (c := http.get(live + f"/v1/comparisons/{cid}").json())["status"] in (
            "queued",
            "running",
        ):
            if c["progress"]:
                stages.add(c["progress"]["stage"])
                assert 0 <= c["progress"]["fraction"] <= 1
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert c["status"] == "succeeded", c["error"]
        assert c["finished_at"] >= c["created_at"] and stages <= {
            "starting",
            "preparing",
            "building the knowledge base",
            "answering: base",
            "answering: rag",
            "saving the report",
        }
        summary = c["summary"]
        assert summary["n_test"] == 3 and list(summary["arms"]) == ["base", "rag"]
        assert summary["arms"]["rag"]["recall_at_k"] is not None  # gold ids matched the files
        assert summary["arms"]["base"]["format_ok"] is not None and summary["verdict"]
        assert summary["corpus"]["documents"] == 4

        report = http.get(live + c["report_url"])
        assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")
        assert "default-src 'none'" in report.headers["content-security-policy"]
        assert "<title>ragtune comparison</title>" in report.text
        results = http.get(live + c["results_url"]).json()
        assert results["arms"]["rag"]["f1"] == summary["arms"]["rag"]["f1"]
        assert results["settings"]["max_questions"] == 3
        assert http.post(live + f"/v1/comparisons/{cid}/cancel").status_code == 409
        listed = http.get(live + "/v1/comparisons").json()
        assert [x["id"] for x in listed["data"]] == [cid] and listed["object"] == "list"
        assert (
            http.get(live + "/v1/comparisons", headers={"Authorization": f"Bearer {KEY_B}"}).json()[
                "data"
            ]
            == []
        )
    # The work folder (with its knowledge base) is removed by the worker once the result is
    # recorded; the report is kept as objects.
    work = served.settings.home / "comparisons" / cid
    deadline = time.monotonic() + 60
    while work.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not work.exists()


def test_a_succeeded_fine_tuning_job_is_the_fine_tuned_arms_model(
    served: Served, world: dict[str, Path]
) -> None:
    ids = _inputs(served, world)
    job_body = {
        "model": "tiny_lm0",
        "training_file": ids["train"],
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}},
    }
    job = served.client.post("/v1/fine_tuning/jobs", json=job_body, headers=served.headers())
    assert job.status_code == 200, job.text
    body = {
        "questions": {"file_id": ids["questions"]},
        "training": {"type": "fine_tuning_job", "fine_tuning_job_id": job.json()["id"]},
        "arms": ["ft"],
        "max_questions": 2,
        "max_new_tokens": 2,
    }
    e = error(_create(served, body))  # still queued: there is no model to compare yet
    assert e["param"] == "training.fine_tuning_job_id" and "succeeded" in e["message"]
    served.run_worker()
    e = error(_create(served, {**body, "method": "full"}))
    assert e["param"] == "method" and "trained lora" in e["message"]

    r = _create(served, body)
    assert r.status_code == 200, r.text
    served.run_worker()
    c = served.client.get(f"/v1/comparisons/{r.json()['id']}", headers=served.headers()).json()
    assert c["status"] == "succeeded", c["error"]
    run = served.settings.run_dir(job.json()["id"])
    manifest = json.loads((run / "manifest.json").read_text())
    # Not retrained: the arm's preparation is the job's own training time.
    assert c["summary"]["arms"]["ft"]["prep_s"] == pytest.approx(manifest["result"]["wall_time_s"])
    assert c["request"]["settings"]["method"] == "lora"
