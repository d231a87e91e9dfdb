"""Process-wide memory settings for the pipeline's processes (the pipeline and its receiver workers)."""

from __future__ import annotations

import os
from typing import Any

import pyarrow as pa


def use_system_allocator() -> None:
    """Arrow allocates through the C library's malloc rather than its bundled mimalloc.

    Measured with bench/ingest.py: mimalloc keeps freed batch memory for reuse, so peak RSS
    stayed ~35 MiB higher in the pipeline process (and ~50 MiB in each worker) at the same
    throughput.  ``ARROW_DEFAULT_MEMORY_POOL``, when set, still decides.
    """
    if "ARROW_DEFAULT_MEMORY_POOL" not in os.environ:
        pa.set_memory_pool(pa.system_memory_pool())


_libc: Any = None  # ctypes.CDLL once loaded; False where there is no malloc_trim


def release_freed_memory() -> None:
    """Hand memory freed by a large request back to the OS (glibc keeps it in its arenas otherwise:
    measured, a worker stayed at +250 MiB after one 15 MiB request, so the memory limiter, which reads
    RSS, went on refusing long after the request was done).  A no-op where malloc_trim does not exist."""
    global _libc
    if _libc is None:
        import ctypes
        import ctypes.util

        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc.malloc_trim  # noqa: B018 - glibc only
        except (OSError, AttributeError):
            _libc = False
    if _libc:
        _libc.malloc_trim(0)
