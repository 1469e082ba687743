"""Hand large freed arrays back to the operating system (glibc only).

glibc serves allocations over a threshold with mmap and returns them on free, but after such
a block is freed it raises the threshold (up to 32 MB), so later column-sized numpy/pandas
arrays come from the heap and stay resident after they are freed. Building the durability
course for 100,000 patients left ~0.7 GB resident that way, under the next step's peak
(docs/performance.md). Fixing the threshold at 4 MiB (a column of 500,000 values) keeps the
peak near what is really live. Not lower: at 128 KiB the bootstrap's many mid-sized arrays were
mapped and unmapped on every use and the durability estimate took 3.5x as long.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_MMAP_THRESHOLD = -3  # glibc malloc.h
MMAP_THRESHOLD_BYTES = 4 * 2**20


def return_freed_arrays_to_os() -> bool:
    """Fix glibc's mmap threshold; False where there is no glibc (the setting is then left alone)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
