"""Leaf file helpers every stage may import: atomic writes and content hashes.

An atomic write goes to a temporary file in the target's folder, is flushed and fsynced,
then renamed over the target with ``os.replace`` (atomic on POSIX within one file
system), and the folder is fsynced so the rename itself survives a power cut. A crash at
any point leaves either the old file or the new one, never a half-written file; the
temporary file is removed when the write fails.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, NoReturn


def fsync_dir(folder: Path) -> None:
    """fsync a folder so a rename inside it is durable (a no-op where folders can't be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if need be) for the block: processes and
    threads on this host that take the same lock wait for one another."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def write_atomic(path: Path, data: bytes | Callable[[BinaryIO], None]) -> None:
    """Write ``data`` (bytes, or a function that writes to a binary file) to ``path``
    whole or not at all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            if isinstance(data, bytes):
                fh.write(data)
            else:
                data(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        cause = _os_error_in(e)
        if cause is not None:  # also when a library wrapped it (torch.save: RuntimeError)
            raise_naming(cause, path)
        raise
    fsync_dir(path.parent)


def _os_error_in(e: BaseException | None) -> OSError | None:
    """``e`` if it is an OSError, else the first OSError it was raised from or during."""
    seen = 0
    while e is not None and seen < 8:
        if isinstance(e, OSError):
            return e
        e, seen = e.__cause__ or e.__context__, seen + 1
    return None


def raise_naming(e: OSError, path: Path) -> NoReturn:
    """Re-raise ``e`` with ``path`` as its file name where it has none (ENOSPC from
    ``write()`` names no file), so the one-line message can say which file."""
    if e.filename is None:
        raise OSError(e.errno, e.strerror, str(path)) from e
    raise e


def append_text(path: Path, text: str) -> None:
    """Append ``text`` to ``path`` (UTF-8); an OSError names the file."""
    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(text)
    except OSError as e:
        raise_naming(e, path)


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, obj: Any, indent: int | None = 2) -> None:
    write_atomic(path, (json.dumps(obj, indent=indent, ensure_ascii=False) + "\n").encode())


def file_sha256(path: Path) -> str:
    """sha256 of a file, or of a folder's files (relative names and bytes, in sorted order),
    read in 1 MiB blocks so memory stays flat whatever the size."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            h.update(f.relative_to(path).as_posix().encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()
