"""Giving freed memory back to the operating system: the one place the process's allocators are tuned.

Two settings, both for cohort-sized frames (docs/performance.md):

- `tune_allocator()`, called once by each entry point (the command line, the dashboard, the
  scripts of simulate and schedules, the benchmark's generator child): glibc serves allocations
  over a threshold with mmap and returns them on free, but after such a block is freed it raises
  the threshold (up to 32 MB), so later column-sized numpy/pandas arrays come from the heap and
  stay resident after they are freed. Building the durability course for 100,000 patients left
  ~0.7 GB resident that way, under the next step's peak. Fixing the threshold at 4 MiB (a column
  of 500,000 values) keeps the peak near what is really live. Not lower: at 128 KiB the
  bootstrap's many mid-sized arrays were mapped and unmapped on every use and the durability
  estimate took 3.5x as long.
- One malloc arena for every thread (`M_ARENA_MAX` 1, in `tune_allocator`): glibc gives threads arenas of
  their own, and what a thread frees stays in its arena, out of reach of the others until a trim. The
  course's blocks are built on two threads, the model's fit runs beside the bootstrap's threads: at
  100,000 patients the suggestions' peak was ~130 MB and the durability step's ~100 MB higher with the
  arenas than with one (tools.pagesmemory, same code; CPU lower too: fewer fresh pages). Arrays over the
  mmap threshold never come from an arena, so the threads' large work does not queue on its lock.
- `release_freed()`, after a large read or before a large write: Arrow's memory pool and glibc's
  heap both keep what was freed, so without it the next step stacks on it (~550 MB after the
  cohort frames at 100,000 patients, ~200 MB after an import's blocks of 4.7 M rows).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

M_MMAP_THRESHOLD = -3  # glibc malloc.h
M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 4 * 2**20
ARENAS = 1


@functools.lru_cache(maxsize=1)
def _libc():
    # once per process: find_library runs `ldconfig -p` in a child process (~2.6 ms a call), and the
    # dashboard tunes the allocator on every page run
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def tune_allocator() -> bool:
    """Fix glibc's mmap threshold and its number of arenas; False where there is no glibc (the settings are
    then left alone)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = _libc()
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) & bool(libc.mallopt(M_ARENA_MAX, ARENAS))
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False


def release_freed() -> None:
    """Hand what Arrow's pool and glibc's heap hold freed back to the system."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    try:
        _libc().malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass
