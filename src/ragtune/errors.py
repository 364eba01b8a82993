"""User-facing errors. The CLI prints these as one line plus a hint, never a traceback."""

from __future__ import annotations

import errno
import os


class RagtuneError(Exception):
    """A problem the user can fix. ``hint`` says how."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


_WHAT_TO_DO = {
    errno.EACCES: "check the permissions of that path and its folder, or choose one you can write",
    errno.EPERM: "check the permissions of that path and its folder, or choose one you can write",
    errno.EROFS: "the file system is read-only: choose a folder on a writable one",
    errno.ENOSPC: "free some space, or choose a folder on another disk",
    errno.EDQUOT: "free some space (disk quota exceeded), or choose a folder on another disk",
    errno.ENOTDIR: "a part of that path is a file, not a folder: move it, or choose another path",
    errno.EEXIST: "a file is in the way where a folder is needed: move it, or choose another path",
    errno.EISDIR: "that is a folder where a file is needed: choose another path",
    errno.ENOENT: "check the path",
    errno.ENAMETOOLONG: "choose a shorter path",
}


def os_error_line(e: OSError, home: str | None = None) -> str:
    """One line for an ``OSError``: what failed, on which path, and what to do.

    A temporary file (``.name.xxxx.tmp``, ``name.tmp-123``) is reported as its folder,
    the place the user can act on; ``home`` (the data directory) is named in the advice
    when the path lies inside it.
    """
    path = e.filename if e.filename is not None else None
    if path is not None:
        path = os.fsdecode(path)
        base = os.path.basename(path)
        if (base.startswith(".") and base.endswith(".tmp")) or ".tmp-" in base:
            path = os.path.dirname(path) or path
    reason = e.strerror or str(e)
    what = f"{reason}: {path}" if path else reason
    advice = _WHAT_TO_DO.get(e.errno or 0, "check the path and its permissions")
    if home and path and (path == home or path.startswith(home.rstrip("/") + "/")):
        advice += f"; the data folder is RAGTUNE_HOME={home}: set it to a writable folder"
    return f"{what} — {advice}"
