"""An :class:`~ragtune.jobs.store.ObjectStore` every host can reach, through ``fsspec``:
``RAGTUNE_ARTIFACTS=file:///shared/path`` (a shared mount) or ``s3://bucket/prefix`` (any
filesystem fsspec knows, given its package, e.g. ``s3fs``).

Never half-visible: an object is written under a temporary name beside its key and moved into
place only when complete (a rename on a local or shared filesystem; on object stores an upload
becomes visible only when it completes, and the move is a server-side copy of the finished
object). An upload over the size limit, or one that fails, is deleted and never appears.
:meth:`local_path` gives a path for code that needs a file (training data, models): the
object itself on a local filesystem, else a copy in a local cache folder.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ragtune.io import write_atomic
from ragtune.jobs.objects import _KEY, BLOCK, ObjectTooLarge


class FsspecObjectStore:
    def __init__(self, url: str, cache: Path) -> None:
        import fsspec

        self.url = url.rstrip("/")
        fs, root = fsspec.core.url_to_fs(self.url)
        self.fs: Any = fs
        self.root = str(root).rstrip("/")
        self.local = "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
        self.cache = Path(cache)
        self.fs.makedirs(self.root, exist_ok=True)

    def _path(self, key: str) -> str:
        if not _KEY.match(key) or ".." in key:
            raise ValueError(f"invalid object key {key!r}")
        return f"{self.root}/{key}"

    def put_stream(self, key: str, chunks: Iterable[bytes], limit: int) -> int:
        path = self._path(key)
        tmp = f"{self.root}/.tmp-{uuid.uuid4().hex}-{key}"
        size = 0
        try:
            with self.fs.open(tmp, "wb") as fh:
                for chunk in chunks:
                    size += len(chunk)
                    if size > limit:
                        raise ObjectTooLarge(limit)
                    fh.write(chunk)
            self.fs.mv(tmp, path)
        except BaseException:
            if self.fs.exists(tmp):
                self.fs.rm(tmp)
            raise
        return size

    def put_bytes(self, key: str, data: bytes) -> None:
        self.put_stream(key, [data], len(data))

    def open(self, key: str) -> Iterator[bytes]:
        with self.fs.open(self._path(key), "rb") as fh:
            yield from iter(lambda: fh.read(BLOCK), b"")

    def local_path(self, key: str) -> Path:
        path = self._path(key)
        if self.local:
            return Path(path)
        copy = self.cache / key
        if not copy.exists():  # objects never change once written: a cached copy stays valid
            write_atomic(copy, lambda fh: fh.writelines(self.open(key)))
        return copy

    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self._path(key)))

    def delete(self, key: str) -> None:
        path = self._path(key)
        if self.fs.exists(path):
            self.fs.rm(path)
        (self.cache / key).unlink(missing_ok=True)
