"""One OpenMP thread team at a time: a thread that hands work to an engine's thread, or an
engine's thread that goes idle, releases its own idle OpenMP workers.

PyTorch's CPU kernels run in OpenMP parallel regions, and GNU OpenMP (libgomp, which the
x86-64 Linux torch wheels ship) gives every thread that starts one its own team of
workers, kept for reuse. Loading a model on the main thread and decoding on the
scheduler's thread therefore leaves two teams, and once libgomp manages more threads than
there are CPUs it stops spin-waiting between parallel regions (its "throttled" spin):
every one of a decode step's ~1,000 small parallel regions then pays a sleep and a
wake-up. On this project's 2-core machine releasing the idle teams made int8 decoding
through the scheduler 1.5x faster (bench/openmp_teams.py, bench/RESULTS.md).
``omp_pause_resource_all`` (OpenMP 5.0) releases the *calling* thread's team in libgomp
and refuses inside a parallel region, so it is safe to call from any thread that is about
to wait; a team is made again the next time that thread runs a parallel kernel.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

OMP_PAUSE_SOFT = 1  # omp_pause_resource_t: free the threads, keep the runtime usable


@functools.cache
def _libgomp() -> ctypes.CDLL | None:
    """torch's own libgomp (the copy its kernels use), or None where torch has another
    OpenMP runtime (Intel's or LLVM's pause the whole runtime, not one thread's team) or
    none."""
    import torch

    libs = sorted((Path(torch.__file__).parent / "lib").glob("libgomp*.so*"))
    if not libs:
        return None
    try:
        lib = ctypes.CDLL(str(libs[0]))
        lib.omp_pause_resource_all.argtypes = [ctypes.c_int]
        lib.omp_pause_resource_all.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return lib


def release_idle_openmp_threads() -> bool:
    """Release this thread's idle OpenMP workers (libgomp only); True if it did."""
    lib = _libgomp()
    return lib is not None and lib.omp_pause_resource_all(OMP_PAUSE_SOFT) == 0
