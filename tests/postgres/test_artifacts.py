"""The fsspec object store (RAGTUNE_ARTIFACTS): atomic, never half-visible, on a shared path
(file://) and on a remote-like filesystem (fsspec's in-memory one stands in for s3://).
Needs no PostgreSQL."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from ragtune.jobs.artifacts import FsspecObjectStore
from ragtune.jobs.objects import ObjectTooLarge


@pytest.fixture(params=["file", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> FsspecObjectStore:
    if request.param == "file":
        url = (tmp_path / "shared").as_uri()
    else:
        url = f"memory://ragtune-{uuid.uuid4().hex}"
    return FsspecObjectStore(url, tmp_path / "cache")


def names(store: FsspecObjectStore) -> list[str]:
    return sorted(str(p).rsplit("/", 1)[-1] for p in store.fs.ls(store.root, detail=False))


def test_roundtrip_local_path_and_delete(store: FsspecObjectStore) -> None:
    assert store.put_stream("file-a.jsonl", [b"ab", b"cd"], 10) == 4
    assert b"".join(store.open("file-a.jsonl")) == b"abcd"
    assert store.exists("file-a.jsonl") and not store.exists("file-b")
    assert store.local_path("file-a.jsonl").read_bytes() == b"abcd"
    store.put_bytes("file-b", b"x")
    store.delete("file-a.jsonl")
    assert not store.exists("file-a.jsonl")
    assert names(store) == ["file-b"]
    with pytest.raises(ValueError):
        store.put_bytes("../escape", b"x")


def test_failed_or_oversized_upload_never_visible(store: FsspecObjectStore) -> None:
    with pytest.raises(ObjectTooLarge):
        store.put_stream("file-big", [b"12345", b"67890"], 7)

    def broken() -> list[bytes]:
        raise RuntimeError("client went away")

    def chunks():  # type: ignore[no-untyped-def]
        yield b"half"
        broken()

    with pytest.raises(RuntimeError):
        store.put_stream("file-half", chunks(), 100)
    assert not store.exists("file-big") and not store.exists("file-half")
    assert names(store) == []  # no temporary left behind


def test_backend_selects_artifacts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ragtune.jobs.backend import open_backend
    from ragtune.jobs.settings import ServiceSettings

    monkeypatch.setenv("RAGTUNE_ARTIFACTS", (tmp_path / "art").as_uri())
    _, objects = open_backend(ServiceSettings(home=tmp_path / "home"))
    assert isinstance(objects, FsspecObjectStore)
    objects.put_bytes("file-x", b"1")
    assert (tmp_path / "art" / "file-x").read_bytes() == b"1"
