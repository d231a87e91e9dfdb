"""Process-wide memory settings for the pipeline's processes (the pipeline and its receiver workers)."""

from __future__ import annotations

import os
import sys
from typing import Any

# No pyarrow at this module's import: use_system_allocator must run before pyarrow is imported.


def use_system_allocator() -> None:
    """Arrow allocates through the C library's malloc rather than its bundled mimalloc.

    Measured with bench/ingest.py: mimalloc keeps freed batch memory for reuse, so peak RSS
    stayed ~35 MiB higher in the pipeline process (and ~50 MiB in each worker) at the same
    throughput.  ``ARROW_DEFAULT_MEMORY_POOL``, when set, still decides.

    pyarrow's ``set_memory_pool`` changes only the pool pyarrow's own calls default to; Arrow's C++ code
    (compute kernels, IPC reads, Acero) takes the library's default, which Arrow reads from
    ``ARROW_DEFAULT_MEMORY_POOL`` once, when pyarrow is imported.  So this sets that variable too, and must
    run before the process imports pyarrow (``agent-sre run`` and each receiver worker call it first;
    the workers inherit the variable).  Measured (pipeline process at max rate, default config,
    `workers: 0`): mimalloc, started by the C++ side alone, held ~20 MiB more RssAnon (PSS median
    273 against 300 MiB) while its allocated bytes never passed 2 MiB: a heap per thread, pages kept.
    """
    if "ARROW_DEFAULT_MEMORY_POOL" not in os.environ:
        if "pyarrow" not in sys.modules:  # read at pyarrow's import; too late once it is imported
            os.environ["ARROW_DEFAULT_MEMORY_POOL"] = "system"
        import pyarrow as pa

        pa.set_memory_pool(pa.system_memory_pool())
    _limit_arenas()
    _fix_mmap_threshold()


class _NoPandas:
    """An import finder that refuses pandas, for the moment pyarrow asks (see ``arrow_without_pandas``)."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "pandas" or name.startswith("pandas."):
            raise ModuleNotFoundError("pandas: not for pyarrow's probe (pdata.memory.arrow_without_pandas)", name=name)
        return None


def arrow_without_pandas() -> None:
    """Keep pyarrow from loading pandas in this process.  pyarrow imports pandas, whenever it is installed, at
    its first ``pa.array`` (to ask whether the input is a pandas object), and pandas costs each process ~26 MiB
    of private memory (a receiver worker's imports: RSS 147 -> 113 MiB, measured); users' environments often
    have it installed.  pyarrow asks once and remembers the answer, so it is asked here with pandas refused;
    code that imports pandas itself still can (and pyarrow's to_pandas then works).  Call it before the
    process's first ``pa.array`` and after ``use_system_allocator``: the pipeline process and each receiver
    worker do, first thing."""
    import pyarrow as pa

    finder = _NoPandas()
    sys.meta_path.insert(0, finder)
    try:
        pa.array([0])
    finally:
        sys.meta_path.remove(finder)


_M_ARENA_MAX = -8  # glibc's mallopt parameter


def _limit_arenas(arenas: int = 2) -> None:
    """At most ``arenas`` glibc malloc arenas (its default: 8 per core), unless MALLOC_ARENA_MAX is set.

    Each thread that allocates gets an arena of its own up to that cap, and memory freed in one arena is
    reused only by that arena's threads: with the pipeline's dozens of threads (gRPC, receivers, the
    batch flusher, the loader, DuckDB) the freed batches of one thread sat idle while another grew.
    Measured with bench/ingest.py's max-rate phase (workers: 0, loaded box): PSS 284 against 312 MiB at
    the same CPU per span.  Threads started before the call keep their arena."""
    if "MALLOC_ARENA_MAX" not in os.environ:
        _mallopt(_M_ARENA_MAX, arenas)


_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def _fix_mmap_threshold(size: int = 1 << 20) -> None:
    """Blocks of ``size`` or more are mapped on their own and unmapped when freed, whatever was freed before,
    unless the environment sets glibc's threshold itself (MALLOC_MMAP_THRESHOLD_ or GLIBC_TUNABLES).

    glibc's threshold is dynamic by default: each freed mapped block raises it to that block's size (up to
    32 MiB), so after the first multi-MiB batches (a spool insert, an IPC stream) such blocks came from the
    arenas, and what they left between longer-lived allocations stayed there.  Measured (bench/ingest.py's
    clients at max rate, 4 interleaved rounds per A/B; the box's noise is about ±2 µs per span): default
    config, PSS median 283 · 288 · 286 against 291 · 294 · 296 MiB at 27.3 · 27.2 · 26.0 against
    26.8 · 26.6 · 26.9 µs per span; store-only 254 against 264 MiB at 19.4 against 18.6 µs.  4 MiB took
    less off (289); 192 and 128 KiB (below the bench's 237 KiB requests) no more (282, 278)."""
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ and "mmap_threshold" not in os.environ.get("GLIBC_TUNABLES", ""):
        _mallopt(_M_MMAP_THRESHOLD, size)


def _mallopt(param: int, value: int) -> None:
    """glibc's ``mallopt``; a no-op where the C library is not glibc."""
    if _load_libc():
        try:
            _libc.mallopt(param, value)
        except AttributeError:
            pass


_libc: Any = None  # ctypes.CDLL once loaded; False where there is no malloc_trim


def release_freed_memory() -> None:
    """Hand memory freed by a large request back to the OS (glibc keeps it in its arenas otherwise:
    measured, a worker stayed at +250 MiB after one 15 MiB request, so the memory limiter, which reads
    RSS, went on refusing long after the request was done).  A no-op where malloc_trim does not exist."""
    if _load_libc():
        _libc.malloc_trim(0)


def _load_libc() -> bool:
    """glibc through ctypes, once; False where it is not glibc (no malloc_trim)."""
    global _libc
    if _libc is None:
        import ctypes
        import ctypes.util

        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc.malloc_trim  # noqa: B018 - glibc only
        except (OSError, AttributeError):
            _libc = False
    return bool(_libc)
