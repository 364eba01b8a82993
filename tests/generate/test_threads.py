"""Releasing a thread's idle OpenMP team (ragtune.generate.threads)."""

from __future__ import annotations

import threading

import torch

from ragtune.generate.threads import _libgomp, release_idle_openmp_threads


def test_release_is_safe_and_torch_keeps_working() -> None:
    x = torch.randn(512, 512)
    before = (x @ x).sum()  # this thread's team now exists
    released = release_idle_openmp_threads()
    assert released == (_libgomp() is not None)
    assert release_idle_openmp_threads() == released  # again, with no team: still fine
    torch.testing.assert_close((x @ x).sum(), before)  # a new team where needed
    results: list[bool] = []
    t = threading.Thread(target=lambda: results.append(release_idle_openmp_threads()))
    t.start()
    t.join()
    assert results == [released]  # any thread may release its own (none here)
