"""The web app's files are served by the service itself, beside an unchanged /v1 API."""

from __future__ import annotations

import pytest

from ragtune.serve.routes import vector_stores as routes
from tests.serve.conftest import KEY_B, Served, chat_rows, jsonl


def test_index_and_assets_are_served_without_a_key(served: Served) -> None:
    page = served.client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert '<script type="module" src="/static/js/main.js">' in page.text
    for asset in ("app.css", "js/main.js", "js/api.js", "js/playground.js", "js/compare.js"):
        assert served.client.get(f"/static/{asset}").status_code == 200, asset
    # The comparison report's CSS, for the report shown in a frame under this page's policy.
    css = served.client.get("/static/report.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert "frame-src blob:" in page.headers["content-security-policy"]
    assert served.client.get("/static/../webapp.py").status_code == 404


def test_api_paths_still_answer_in_the_api_s_shape(served: Served) -> None:
    r = served.client.post("/v1/no-such-route", headers=served.headers(), json={})
    assert r.status_code == 404 and r.json()["error"]["message"] == "Not Found"
    assert r.json()["error"]["code"] is None  # the playground's cue that a route is missing


def test_search_accepts_hybrid_weights(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []

    def spy(*args: object) -> object:
        seen.append(args[-2:])  # (bm25_weight, dense_weight)
        return real(*args)

    real = routes.store_hits
    monkeypatch.setattr(routes, "store_hits", spy)
    store = served.client.post(
        "/v1/vector_stores", json={"name": "s"}, headers=served.headers()
    ).json()
    body = {
        "query": "x",
        "ranking_options": {"hybrid_search": {"text_weight": -1, "embedding_weight": 1}},
    }
    bad = served.client.post(
        f"/v1/vector_stores/{store['id']}/search", json=body, headers=served.headers()
    )
    assert bad.status_code == 400 and "text_weight" in bad.json()["error"]["param"]
    body["ranking_options"]["hybrid_search"]["text_weight"] = 0.5  # type: ignore[index]
    ok = served.client.post(
        f"/v1/vector_stores/{store['id']}/search", json=body, headers=served.headers()
    )
    assert ok.status_code == 200 and ok.json()["data"] == []
    assert seen == [(0.5, 1.0)]  # text weight -> BM25, embedding weight -> dense


def test_job_diff_extension(served: Served) -> None:
    f = served.client.post(
        "/v1/files",
        files={"file": ("t.jsonl", jsonl(chat_rows()), "application/jsonl")},
        data={"purpose": "fine-tune"},
        headers=served.headers(),
    ).json()
    body = {"model": "tiny_lm0", "training_file": f["id"], "hyperparameters": {"n_epochs": 1}}
    job = served.client.post("/v1/fine_tuning/jobs", json=body, headers=served.headers()).json()
    early = served.client.get(f"/v1/fine_tuning/jobs/{job['id']}/diff", headers=served.headers())
    assert early.status_code == 409
    served.run_worker()
    r = served.client.get(f"/v1/fine_tuning/jobs/{job['id']}/diff?top=3", headers=served.headers())
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["object"] == "fine_tuning.job.diff" and d["base"] == "tiny_lm0"
    assert d["tuned"].startswith("ft:tiny_lm0::") and len(d["modules"]) == 3
    assert d["changed_modules"] > 0 and 0 < d["total"]["relative_change"] < 1
    rel = [m["relative_change"] for m in d["modules"]]
    assert rel == sorted(rel, reverse=True)  # largest change first
    other = served.client.get(
        f"/v1/fine_tuning/jobs/{job['id']}/diff", headers=served.headers(KEY_B)
    )
    assert other.status_code == 404
