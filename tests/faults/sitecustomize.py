"""A full disk, simulated for a child process (put this folder on its PYTHONPATH).

With ``RAGTUNE_FAULT_DIR`` and ``RAGTUNE_FAULT_ENOSPC_AFTER`` set, files opened for
writing under that folder accept that many bytes in all, and every write past them
raises ``OSError(ENOSPC)`` as a full disk does. Python-level writes only (``open``,
``os.fdopen``, ``os.write``): native libraries writing on their own (LanceDB, safetensors)
are not affected. Without the variables, this changes nothing.
"""

from __future__ import annotations

import builtins
import errno
import io
import os
from typing import Any

_DIR = os.environ.get("RAGTUNE_FAULT_DIR")
_BUDGET = [int(os.environ.get("RAGTUNE_FAULT_ENOSPC_AFTER", "-1"))]


def _charge(n: int) -> None:
    if n > _BUDGET[0]:
        _BUDGET[0] = 0
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    _BUDGET[0] -= n


def _watched(path: Any) -> bool:
    try:
        real = os.path.realpath(os.fspath(path))
    except TypeError:
        return False
    return bool(_DIR) and (real == _DIR or real.startswith(_DIR.rstrip("/") + "/"))


class _FullFile:
    """A file object whose writes draw on the shared byte budget."""

    def __init__(self, fh: Any) -> None:
        self._fh = fh

    def write(self, data: Any) -> int:
        _charge(len(data))
        return int(self._fh.write(data))

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)

    def __enter__(self) -> _FullFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._fh.close()

    def __iter__(self) -> Any:
        return iter(self._fh)


def _writes(mode: str) -> bool:
    return any(c in mode for c in "wax+")


if _DIR and _BUDGET[0] >= 0:
    _DIR = os.path.realpath(_DIR)
    _open, _fdopen, _write = builtins.open, os.fdopen, os.write

    def _patched_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        fh = _open(file, mode, *args, **kwargs)
        return _FullFile(fh) if _writes(mode) and _watched(file) else fh

    def _patched_fdopen(fd: int, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        fh = _fdopen(fd, mode, *args, **kwargs)
        watched = _writes(mode) and _watched(os.readlink(f"/proc/self/fd/{fd}"))
        return _FullFile(fh) if watched else fh

    def _patched_write(fd: int, data: Any) -> int:
        if _watched(os.readlink(f"/proc/self/fd/{fd}")):
            _charge(len(data))
        return _write(fd, data)

    builtins.open = io.open = _patched_open  # type: ignore[assignment]
    os.fdopen = _patched_fdopen  # type: ignore[assignment]
    os.write = _patched_write
