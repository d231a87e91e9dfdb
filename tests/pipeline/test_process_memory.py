"""The pipeline's processes' memory settings (pipeline/pdata/memory.py), each in a fresh interpreter: they act
once per process, before pyarrow is imported or allocates."""

from __future__ import annotations

import os
import subprocess
import sys


def _run(code: str, env: dict[str, str] | None = None) -> None:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr


def test_pyarrow_told_no_pandas_leaves_pandas_to_whoever_imports_it():
    code = """
import sys
from agent_sre.pipeline.pdata.memory import arrow_without_pandas
arrow_without_pandas()
import numpy as np
import pyarrow as pa
pa.array(["x"]); pa.array(np.arange(3)); pa.table({"a": [1]}).to_pylist()
assert "pandas" not in sys.modules
import pandas
assert pa.table({"a": [1, 2]}).to_pandas().shape == (2, 1)
"""
    _run(code)


def test_arrow_cpp_code_allocates_through_malloc_once_told_before_pyarrow_is_imported():
    # pyarrow's set_memory_pool reaches only pyarrow's own calls; Arrow's C++ code (compute kernels, IPC reads)
    # takes the default read from ARROW_DEFAULT_MEMORY_POOL at pyarrow's import.
    code = """
import os
from agent_sre.pipeline.pdata.memory import use_system_allocator
assert "ARROW_DEFAULT_MEMORY_POOL" not in os.environ
use_system_allocator()
import pyarrow as pa, pyarrow.compute as pc
from agent_sre.pipeline.pdata.ipc import decode_table, encode_table
t = pa.table({"a": list(range(100_000)), "b": [str(i) for i in range(100_000)]})
t = decode_table(encode_table(pc.take(t, pa.array(list(range(0, 100_000, 3)))).combine_chunks()))
assert t.num_rows == 33_334 and pc.sum(t["a"]).as_py() == sum(range(0, 100_000, 3))
assert pa.default_memory_pool().backend_name == "system"
assert pa.mimalloc_memory_pool().max_memory() == 0, pa.mimalloc_memory_pool().max_memory()
"""
    _run(code, {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"})


def test_large_blocks_are_mapped_on_their_own_whatever_was_freed_before():
    # glibc's default threshold rises to the size of each mapped block freed (up to 32 MiB), after which such
    # blocks come from the arenas and fragment them; the pipeline's processes fix it at 1 MiB.
    code = """
import ctypes
from agent_sre.pipeline.pdata.memory import use_system_allocator
use_system_allocator()
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.free(libc.malloc(8 << 20))  # mapped; freeing it would raise a dynamic threshold to 8 MiB
mapped = libc.mallinfo2().hblks
block = libc.malloc(2 << 20)
assert libc.mallinfo2().hblks == mapped + 1, "a 2 MiB block came from the arenas"
libc.free(block)
small = libc.malloc(512 << 10)
assert libc.mallinfo2().hblks == mapped, "a 512 KiB block was mapped"
libc.free(small)
"""
    _run(code, {k: v for k, v in os.environ.items() if k not in ("MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")})
