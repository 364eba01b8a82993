"""Routes on the tiny models; every response parsed with the openai SDK's own types."""

from __future__ import annotations

import base64
import json

import numpy as np
from openai.types import Completion, CreateEmbeddingResponse, FileDeleted, FileObject, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.fine_tuning import FineTuningJob, FineTuningJobEvent
from openai.types.fine_tuning.jobs import FineTuningJobCheckpoint

from tests.serve.conftest import KEY_B, Served, chat_rows, jsonl


def upload(
    s: Served,
    data: bytes,
    name: str = "train.jsonl",
    purpose: str = "fine-tune",
    key: str | None = None,
):
    return s.client.post(
        "/v1/files",
        files={"file": (name, data, "application/jsonl")},
        data={"purpose": purpose},
        headers=s.headers(key) if key else s.headers(),
    )


def error(resp) -> dict:
    body = resp.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_keys_are_required(served: Served) -> None:
    r = served.client.get("/v1/models")
    assert r.status_code == 401 and error(r)["code"] == "missing_api_key"
    r = served.client.get("/v1/models", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and error(r)["code"] == "invalid_api_key"


def test_models_list_base_and_embedder(served: Served) -> None:
    r = served.client.get("/v1/models", headers=served.headers())
    ids = [Model.model_validate(m).id for m in r.json()["data"]]
    assert ids == ["tiny_lm0", "tiny_embedder0"]
    assert served.client.get("/v1/models/ft:x:y:z", headers=served.headers()).status_code == 404


def test_file_upload_list_content_delete(served: Served) -> None:
    data = jsonl(chat_rows())
    f = FileObject.model_validate(upload(served, data).json())
    assert f.bytes == len(data) and f.purpose == "fine-tune" and f.filename == "train.jsonl"
    listed = served.client.get("/v1/files", headers=served.headers()).json()
    assert [FileObject.model_validate(x).id for x in listed["data"]] == [f.id]
    assert listed["has_more"] is False
    content = served.client.get(f"/v1/files/{f.id}/content", headers=served.headers())
    assert content.content == data
    # another key sees nothing of it
    other = served.headers(KEY_B)
    assert served.client.get(f"/v1/files/{f.id}", headers=other).status_code == 404
    assert served.client.get("/v1/files", headers=other).json()["data"] == []
    gone = FileDeleted.model_validate(
        served.client.delete(f"/v1/files/{f.id}", headers=served.headers()).json()
    )
    assert gone.deleted and gone.id == f.id
    assert served.client.get(f"/v1/files/{f.id}", headers=served.headers()).status_code == 404


def test_file_pagination(served: Served) -> None:
    ids = [upload(served, b"x", f"f{i}.txt", "user_data").json()["id"] for i in range(3)]
    page = served.client.get("/v1/files?limit=2", headers=served.headers()).json()
    assert [x["id"] for x in page["data"]] == ids[::-1][:2] and page["has_more"] is True
    rest = served.client.get(
        f"/v1/files?limit=2&after={page['data'][-1]['id']}", headers=served.headers()
    ).json()
    assert [x["id"] for x in rest["data"]] == [ids[0]] and rest["has_more"] is False


def test_bad_jsonl_rejected_with_line_numbers(served: Served) -> None:
    rows = chat_rows()
    lines = jsonl(rows).decode().splitlines()
    lines[2] = '{"messages": [{"role": "user", "content": "hi"}]}'
    lines[5] = "not json"
    r = upload(served, ("\n".join(lines) + "\n").encode())
    assert r.status_code == 400
    err = error(r)
    assert err["code"] == "invalid_file_format" and err["param"] == "file"
    assert "line 3: [example_missing_assistant_message]" in err["message"]
    assert "line 6:" in err["message"]
    assert served.client.get("/v1/files", headers=served.headers()).json()["data"] == []


def test_upload_size_limit(served: Served) -> None:
    r = upload(served, b"x" * 30_000, "big.txt", "user_data")
    assert r.status_code == 413 and error(r)["code"] == "file_too_large"
    assert list((served.settings.home / "files").glob("*")) == []


def test_fine_tuning_job_end_to_end(served: Served) -> None:
    f = upload(served, jsonl(chat_rows())).json()
    body = {
        "model": "tiny_lm0",
        "training_file": f["id"],
        "suffix": "zorb",
        "seed": 3,
        "metadata": {"team": "a"},
        "method": {
            "type": "supervised",
            "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 5}},
        },
    }
    created = served.client.post("/v1/fine_tuning/jobs", json=body, headers=served.headers())
    assert created.status_code == 200, created.text
    job = FineTuningJob.model_validate(created.json())
    assert job.status == "validating_files" and job.seed == 3 and job.metadata == {"team": "a"}
    served.run_worker()
    job = FineTuningJob.model_validate(
        served.client.get(f"/v1/fine_tuning/jobs/{job.id}", headers=served.headers()).json()
    )
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model == f"ft:tiny_lm0:zorb:{job.id}"
    assert job.hyperparameters.n_epochs == 2 and job.hyperparameters.batch_size == 5
    assert job.trained_tokens and job.trained_tokens > 0
    assert len(job.result_files) == 1
    csv = served.client.get(f"/v1/files/{job.result_files[0]}/content", headers=served.headers())
    rows = csv.text.strip().splitlines()
    assert rows[0] == "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy"
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4"]

    events = served.client.get(
        f"/v1/fine_tuning/jobs/{job.id}/events?limit=100", headers=served.headers()
    ).json()["data"]
    parsed = [FineTuningJobEvent.model_validate(e) for e in events]
    assert parsed[0].message == "The job has successfully completed"
    assert [e.data["step"] for e in parsed if e.type == "metrics"] == [4, 3, 2, 1]
    messages = [e.message for e in parsed]
    assert "Files validated, moving job to queued state" in messages

    ckpts = served.client.get(
        f"/v1/fine_tuning/jobs/{job.id}/checkpoints", headers=served.headers()
    ).json()["data"]
    parsed_ckpts = [FineTuningJobCheckpoint.model_validate(c) for c in ckpts]
    assert [c.step_number for c in parsed_ckpts] == [4, 2]
    assert parsed_ckpts[0].metrics.train_loss is not None

    # the fine-tuned model and a checkpoint answer; another key cannot use or see them
    for model in (job.fine_tuned_model, parsed_ckpts[1].fine_tuned_model_checkpoint):
        r = served.client.post(
            "/v1/chat/completions",
            json={
                "model": model,
                "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": 4,
                "temperature": 0,
            },
            headers=served.headers(),
        )
        assert r.status_code == 200, r.text
        ChatCompletion.model_validate(r.json())
    r = served.client.post(
        "/v1/chat/completions",
        json={"model": job.fine_tuned_model, "messages": [{"role": "user", "content": "Hi"}]},
        headers=served.headers(KEY_B),
    )
    assert r.status_code == 404 and error(r)["code"] == "model_not_found"
    assert (
        served.client.get(
            f"/v1/fine_tuning/jobs/{job.id}", headers=served.headers(KEY_B)
        ).status_code
        == 404
    )
    models = served.client.get("/v1/models", headers=served.headers()).json()["data"]
    assert job.fine_tuned_model in [m["id"] for m in models]
    ckpts = served.client.get(
        f"/v1/fine_tuning/jobs/{job.id}/checkpoints", headers=served.headers()
    ).json()["data"]
    assert ckpts  # every saved checkpoint is listed as a model too
    assert {c["fine_tuned_model_checkpoint"] for c in ckpts} <= {m["id"] for m in models}
    assert job.fine_tuned_model not in [
        m["id"]
        for m in served.client.get("/v1/models", headers=served.headers(KEY_B)).json()["data"]
    ]
    listed = served.client.get("/v1/fine_tuning/jobs?metadata[team]=b", headers=served.headers())
    assert listed.json()["data"] == []
    assert (
        served.client.post(
            f"/v1/fine_tuning/jobs/{job.id}/cancel", headers=served.headers()
        ).status_code
        == 409
    )


def test_cancel_a_queued_job_and_unsupported_method(served: Served) -> None:
    f = upload(served, jsonl(chat_rows())).json()
    bad = served.client.post(
        "/v1/fine_tuning/jobs",
        json={"model": "tiny_lm0", "training_file": f["id"], "method": {"type": "dpo", "dpo": {}}},
        headers=served.headers(),
    )
    assert bad.status_code == 400 and error(bad)["code"] == "unsupported_method"
    missing = served.client.post(
        "/v1/fine_tuning/jobs",
        json={"model": "tiny_lm0", "training_file": "file-nope"},
        headers=served.headers(),
    )
    assert missing.status_code == 400 and error(missing)["param"] == "training_file"
    job = served.client.post(
        "/v1/fine_tuning/jobs",
        json={"model": "tiny_lm0", "training_file": f["id"]},
        headers=served.headers(),
    ).json()
    cancelled = FineTuningJob.model_validate(
        served.client.post(
            f"/v1/fine_tuning/jobs/{job['id']}/cancel", headers=served.headers()
        ).json()
    )
    assert cancelled.status == "cancelled"
    served.run_worker()
    assert (
        served.client.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=served.headers()).json()[
            "status"
        ]
        == "cancelled"
    )


def test_chat_greedy_is_deterministic_and_counts_usage(served: Served) -> None:
    body = {
        "model": "tiny_lm0",
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_completion_tokens": 5,
        "temperature": 0,
        "n": 2,
        "logprobs": True,
        "top_logprobs": 2,
    }
    r = ChatCompletion.model_validate(
        served.client.post("/v1/chat/completions", json=body, headers=served.headers()).json()
    )
    assert len(r.choices) == 2 and r.choices[0].message.content == r.choices[1].message.content
    assert r.usage is not None and r.usage.completion_tokens <= 10
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    lp = r.choices[0].logprobs
    assert lp is not None and lp.content and all(len(t.top_logprobs) == 2 for t in lp.content)
    assert all(t.logprob <= 0 for t in lp.content)


def test_chat_seeded_sampling_repeats(served: Served) -> None:
    body = {
        "model": "tiny_lm0",
        "messages": [{"role": "user", "content": "Tell me"}],
        "max_tokens": 8,
        "temperature": 1.0,
        "top_p": 0.9,
        "seed": 7,
    }
    a = served.client.post("/v1/chat/completions", json=body, headers=served.headers()).json()
    b = served.client.post("/v1/chat/completions", json=body, headers=served.headers()).json()
    assert a["choices"][0]["message"] == b["choices"][0]["message"]


def test_chat_stream_matches_non_stream(served: Served) -> None:
    body = {
        "model": "tiny_lm0",
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 6,
        "temperature": 0,
    }
    full = served.client.post("/v1/chat/completions", json=body, headers=served.headers()).json()
    stream = served.client.post(
        "/v1/chat/completions",
        json={**body, "stream": True, "stream_options": {"include_usage": True}},
        headers=served.headers(),
    )
    lines = [ln[6:] for ln in stream.text.splitlines() if ln.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    chunks = [ChatCompletionChunk.model_validate(json.loads(x)) for x in lines[:-1]]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() == full["choices"][0]["message"]["content"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == full["usage"]["completion_tokens"]


def test_chat_errors(served: Served) -> None:
    base = {"model": "tiny_lm0", "messages": [{"role": "user", "content": "x"}]}
    r = served.client.post(
        "/v1/chat/completions",
        json={**base, "tools": [{"type": "function"}]},
        headers=served.headers(),
    )
    assert r.status_code == 400 and error(r)["code"] == "unsupported_parameter"
    r = served.client.post(
        "/v1/chat/completions", json={**base, "model": "gpt-4o"}, headers=served.headers()
    )
    assert r.status_code == 404
    r = served.client.post(
        "/v1/chat/completions", json={"model": "tiny_lm0"}, headers=served.headers()
    )
    assert r.status_code == 400 and error(r)["param"] == "messages"


def test_completions(served: Served) -> None:
    body = {
        "model": "tiny_lm0",
        "prompt": ["The quick", "Paris"],
        "max_tokens": 4,
        "temperature": 0,
        "logprobs": 1,
    }
    r = Completion.model_validate(
        served.client.post("/v1/completions", json=body, headers=served.headers()).json()
    )
    assert [c.index for c in r.choices] == [0, 1]
    assert r.choices[0].logprobs is not None and r.choices[0].logprobs.tokens


def test_embeddings_float_and_base64(served: Served) -> None:
    body = {"model": "tiny_embedder0", "input": ["a sentence", "another one"]}
    flt = CreateEmbeddingResponse.model_validate(
        served.client.post(
            "/v1/embeddings", json={**body, "encoding_format": "float"}, headers=served.headers()
        ).json()
    )
    b64 = served.client.post(
        "/v1/embeddings", json={**body, "encoding_format": "base64"}, headers=served.headers()
    ).json()
    for f, b in zip(flt.data, b64["data"], strict=True):
        decoded = np.frombuffer(base64.b64decode(b["embedding"]), dtype="<f4")
        assert np.allclose(decoded, np.array(f.embedding, dtype=np.float32))
    assert flt.usage.prompt_tokens > 0


def test_cancel_stops_training_within_one_step(served: Served, monkeypatch) -> None:
    f = upload(served, jsonl(chat_rows())).json()
    body = {
        "model": "tiny_lm0",
        "training_file": f["id"],
        "hyperparameters": {"n_epochs": 3, "batch_size": 1},
    }
    job = served.client.post("/v1/fine_tuning/jobs", json=body, headers=served.headers()).json()
    db = served.worker.db
    update = db.update_running

    def cancel_during_first_step(job_id: str, attempt: str, values: dict) -> bool:
        served.client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", headers=served.headers())
        return update(job_id, attempt, values)

    monkeypatch.setattr(db, "update_running", cancel_during_first_step)
    served.run_worker()
    done = FineTuningJob.model_validate(
        served.client.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=served.headers()).json()
    )
    assert done.status == "cancelled" and done.fine_tuned_model is None
    events = served.client.get(
        f"/v1/fine_tuning/jobs/{job['id']}/events?limit=100", headers=served.headers()
    ).json()["data"]
    steps = [e["data"]["step"] for e in events if e["type"] == "metrics"]
    assert steps == [1]  # 30 steps planned; stopped after the first
    assert events[0]["message"] == "Fine-tuning job cancelled"


def test_queue_full_is_429(served: Served) -> None:
    from dataclasses import replace

    f = upload(served, jsonl(chat_rows())).json()
    served.client.app.state.service.settings = replace(served.settings, max_waiting_jobs=1)
    body = {"model": "tiny_lm0", "training_file": f["id"]}
    first = served.client.post("/v1/fine_tuning/jobs", json=body, headers=served.headers())
    assert first.status_code == 200
    second = served.client.post("/v1/fine_tuning/jobs", json=body, headers=served.headers())
    assert second.status_code == 429 and error(second)["type"] == "rate_limit_error"


def test_streams_refuse_a_prompt_too_long_before_starting(served: Served) -> None:
    long = "word " * 3000  # over the tiny model's 2048-token context
    r = served.client.post(
        "/v1/chat/completions",
        json={"model": "tiny_lm0", "messages": [{"role": "user", "content": long}], "stream": True},
        headers=served.headers(),
    )
    assert r.status_code == 400 and "context" in error(r)["message"]


def test_completions_stream(served: Served) -> None:
    body = {"model": "tiny_lm0", "prompt": "The quick", "max_tokens": 5, "temperature": 0}
    full = served.client.post("/v1/completions", json=body, headers=served.headers()).json()
    r = served.client.post(
        "/v1/completions",
        json={**body, "stream": True, "stream_options": {"include_usage": True}},
        headers=served.headers(),
    )
    lines = [ln[6:] for ln in r.text.splitlines() if ln.startswith("data: ")]
    # OpenAI streams "finish_reason": null until the last chunk of a choice; the SDK's type
    # (which it fills without validating) has no None, so only finished chunks validate.
    raw = [json.loads(x) for x in lines[:-1]]
    chunks = [
        Completion.model_validate(c)
        if all(ch["finish_reason"] for ch in c["choices"])
        else Completion.model_construct(**c)
        for c in raw
    ]
    assert any(c["choices"] and c["choices"][0]["finish_reason"] is None for c in raw)
    assert (
        "".join(c["choices"][0]["text"] for c in raw if c["choices"]) == full["choices"][0]["text"]
    )
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == full["usage"]["completion_tokens"]
