"""Run folders in the artefact store (RAGTUNE_ARTIFACTS): checkpoints mirrored and restored,
the finished run published and fetched, never half-visible -- on a shared path (file://) and
on a remote-like filesystem (fsspec's in-memory one stands in for s3://). Fake run folders:
the store copies files, it does not read checkpoints."""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path

import pytest

from ragtune.io import file_sha256, write_json_atomic
from ragtune.jobs.run_store import RunStore, is_finished
from ragtune.tune.events import RUN_KIND, read_manifest

JOB = "ftjob-abc"


@pytest.fixture(params=["file", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> RunStore:
    if request.param == "file":
        return RunStore((tmp_path / "shared").as_uri())
    return RunStore(f"memory://ragtune-{uuid.uuid4().hex}")


def fake_run(run_dir: Path, steps: list[int], status: str = "running") -> Path:
    """A run folder as ``ragtune.tune.loop.train`` leaves it (bytes stand in for weights)."""
    manifest = {
        "format_version": 1,
        "kind": RUN_KIND,
        "status": status,
        "hyperparameters": {"total_steps": 10, "n_epochs": 2},
    }
    if status == "succeeded":
        manifest |= {"result": {"trained_tokens": 5}, "outputs": {"merged": "merged"}}
        (run_dir / "merged").mkdir(parents=True, exist_ok=True)
        (run_dir / "merged" / "model.safetensors").write_bytes(b"weights" * 100)
        (run_dir / "adapter").mkdir(exist_ok=True)
        (run_dir / "adapter" / "adapter_model.safetensors").write_bytes(b"lora")
        (run_dir / ".merged.tmp-1").mkdir()  # a temporary folder: never published
        (run_dir / ".merged.tmp-1" / "x").write_bytes(b"half")
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    for step in steps:
        (run_dir / "checkpoints" / f"step-{step:08d}.pt").write_bytes(f"state {step}".encode())
    events = [{"type": "metrics", "step": s, "train_loss": 1.0 / s, "time": s} for s in steps]
    (run_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    write_json_atomic(run_dir / "manifest.json", manifest)
    return run_dir


def test_checkpoints_mirrored_then_restored_on_another_host(
    store: RunStore, tmp_path: Path
) -> None:
    a = fake_run(tmp_path / "a" / JOB, [2, 4])
    assert store.mirror_checkpoints(JOB, a) == [2, 4]
    assert store.mirror_checkpoints(JOB, a) == []  # each checkpoint once
    assert store.checkpoint_steps(JOB) == [2, 4]
    b = tmp_path / "b" / JOB
    assert store.restore_checkpoint(JOB, b) == 4
    assert (b / "checkpoints" / "step-00000004.pt").read_bytes() == b"state 4"
    assert (b / "events.jsonl").read_bytes() == (a / "events.jsonl").read_bytes()
    assert read_manifest(b) == read_manifest(a)
    assert [p.name for p in b.parent.iterdir()] == [JOB]  # no staging folder left
    assert store.restore_checkpoint(JOB, b) is None  # nothing newer than its own


def test_pruned_checkpoints_leave_the_store_and_a_finished_run_resumes_as_running(
    store: RunStore, tmp_path: Path
) -> None:
    a = fake_run(tmp_path / "a" / JOB, [2, 4])
    store.mirror_checkpoints(JOB, a)
    (a / "checkpoints" / "step-00000002.pt").unlink()  # the loop keeps the newest few
    fake_run(a, [6], status="succeeded")
    assert store.mirror_checkpoints(JOB, a) == [6]
    assert store.checkpoint_steps(JOB) == [4, 6]
    marker = store.checkpoint(JOB, 6)
    assert marker is not None
    assert marker["manifest"]["status"] == "running" and "result" not in marker["manifest"]
    stored = [
        p.rsplit("/", 1)[-1] for p in store.fs.ls(f"{store.root}/{JOB}/checkpoints", detail=False)
    ]
    assert not any(name.startswith("step-00000002") for name in stored)


def test_a_partial_or_damaged_checkpoint_is_ignored(store: RunStore, tmp_path: Path) -> None:
    a = fake_run(tmp_path / "a" / JOB, [2, 4])
    store.mirror_checkpoints(JOB, a)
    job = f"{store.root}/{JOB}/checkpoints"
    # step 6: its files uploaded, its marker never written (the uploader was killed)
    store.fs.makedirs(f"{job}/step-00000006-dead", exist_ok=True)
    store.fs.pipe_file(f"{job}/step-00000006-dead/step-00000006.pt", b"state 6")
    # step 8: a marker whose checkpoint file is cut short
    marker = store.checkpoint(JOB, 4)
    assert marker is not None
    info = marker["files"]["checkpoints/step-00000004.pt"]
    store.fs.makedirs(f"{job}/step-00000008-torn", exist_ok=True)
    store.fs.pipe_file(f"{job}/step-00000008-torn/step-00000008.pt", b"sta")
    files = {
        "checkpoints/step-00000008.pt": {
            **info,
            "key": "checkpoints/step-00000008-torn/step-00000008.pt",
        }
    }
    store.fs.pipe_file(
        f"{job}/step-00000008.json", json.dumps({**marker, "step": 8, "files": files}).encode()
    )
    assert store.checkpoint_steps(JOB) == [2, 4, 8]
    b = tmp_path / "b" / JOB
    assert store.restore_checkpoint(JOB, b) == 4
    assert [p.name for p in (b / "checkpoints").iterdir()] == ["step-00000004.pt"]


def test_published_run_fetched_once_whole_and_concurrently(store: RunStore, tmp_path: Path) -> None:
    a = fake_run(tmp_path / "a" / JOB, [5, 10], status="succeeded")
    with pytest.raises(ValueError):
        store.publish(JOB, fake_run(tmp_path / "x" / JOB, [1]))
    assert store.published(JOB) is None
    store.publish(JOB, a)
    published = RunStore(store.url).published(JOB)  # a reader on another host
    assert published is not None
    assert [c["step"] for c in published["checkpoints"]] == [10, 5]
    assert published["checkpoints"][0]["metrics"]["train_loss"] == 0.1
    assert sorted(published["files"]) == [
        "adapter/adapter_model.safetensors",
        "checkpoints/step-00000005.pt",
        "checkpoints/step-00000010.pt",
        "events.jsonl",
        "manifest.json",
        "merged/model.safetensors",
    ]
    # a stale, unfinished folder on host b (it trained the job before losing it) and
    # four requests fetching at once: one download, renamed into place whole
    b = fake_run(tmp_path / "b" / JOB, [5])
    results: list[bool] = []
    threads = [
        threading.Thread(target=lambda: results.append(store.fetch(JOB, b))) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * 4 and is_finished(b)
    for rel in published["files"]:
        assert file_sha256(b / rel) == file_sha256(a / rel), rel
    assert not (b / ".merged.tmp-1").exists()
    assert sorted(p.name for p in b.parent.iterdir() if not p.name.endswith(".lock")) == [JOB]
    assert dict(store.stored_files(JOB)) == {
        rel: file_sha256(a / rel) for rel in published["files"]
    }
    assert not store.fetch("ftjob-other", tmp_path / "b" / "ftjob-other")


def publish_tampered(store: RunStore, tmp_path: Path) -> None:
    """Publish a finished run, then overwrite one of its stored files."""
    a = fake_run(tmp_path / "a" / JOB, [5], status="succeeded")
    store.publish(JOB, a)
    published = store.published(JOB)
    assert published is not None
    key = published["files"]["merged/model.safetensors"]["key"]
    store.fs.pipe_file(f"{store.root}/{JOB}/{key}", b"tampered")


def test_a_fetch_that_fails_leaves_nothing(store: RunStore, tmp_path: Path) -> None:
    publish_tampered(store, tmp_path)
    b = tmp_path / "b" / JOB
    with pytest.raises(Exception, match="differs"):
        store.fetch(JOB, b)
    assert not b.exists()
    assert [p.name for p in b.parent.iterdir()] == [f".{JOB}.lock"]


def test_a_damaged_run_is_a_clear_api_error(store: RunStore, tmp_path: Path) -> None:
    """A server asked for a model whose stored files are damaged answers 503 with a message
    naming the job and the store, not a bare 500."""
    from types import SimpleNamespace
    from typing import Any, cast

    from ragtune.serve.errors import APIError
    from ragtune.serve.state import Service

    publish_tampered(store, tmp_path)
    settings = SimpleNamespace(run_dir=lambda job_id: tmp_path / "b" / job_id)
    none = cast(Any, None)
    service = Service(cast(Any, settings), none, none, none, none, runs=store)
    with pytest.raises(APIError) as err:
        service.run_dir(cast(Any, SimpleNamespace(id=JOB, status="succeeded")))
    assert err.value.status == 503
    assert JOB in err.value.message and "differs" in err.value.message
