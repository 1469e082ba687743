"""Arrays an estimator's loop reuses instead of making afresh each step.

Why: `memory.tune_allocator` fixes glibc's mmap threshold at 4 MiB, and glibc then gives a freed block back to
the system as soon as more than 128 KiB are free at the top of its heap. An array of a few MB made and freed at
every step of a loop (a chunk of the measurement model's cells, a bootstrap batch's (replicates x observations)
temporaries) is therefore faulted in page by page each time: at 100,000 patients that was a third of the fit's
CPU and of the bootstrap's (docs/performance.md, wave 8). Reusing one array per purpose does the same
arithmetic on the same values.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import math
import platform
import sys

import numpy as np
from scipy import sparse
from scipy.sparse import _sparsetools


class Scratch:
    """Named arrays kept for reuse (one owner at a time). `get` gives the first cells of the named array, grown
    when too small, shaped as asked; not zeroed: a caller writes every cell it reads."""

    def __init__(self):
        self._arrays: dict = {}

    def get(self, name: str, shape: tuple, dtype=np.float32) -> np.ndarray:
        n = math.prod(shape)
        a = self._arrays.get(name)
        if a is None or a.dtype != np.dtype(dtype) or a.size < n:
            a = np.empty(n, dtype=dtype)
            self._arrays[name] = a
        return a[:n].reshape(shape)


def sparse_product(A: sparse.csr_matrix, X: np.ndarray, out: np.ndarray) -> np.ndarray:
    """A @ X written into `out` (A's rows x X's columns, of A's and X's common dtype): scipy's own kernel
    for a sparse matrix times a dense one (csr_matvecs: what `A @ X` calls), the same sums in the same
    order, without a new result array each time."""
    assert A.format == "csr" and A.dtype == X.dtype == out.dtype and X.ndim == out.ndim == 2
    assert out.shape == (A.shape[0], X.shape[1]) and X.shape[0] == A.shape[1] and out.flags.c_contiguous
    out[...] = 0
    _sparsetools.csr_matvecs(A.shape[0], A.shape[1], X.shape[1], A.indptr, A.indices, A.data,
                             np.ascontiguousarray(X).ravel(), out.ravel())
    return out


class _X86Env(ctypes.Structure):
    """glibc's fenv_t on x86-64: the x87 environment (28 bytes), then the SSE control and status register."""
    _fields_ = [("x87", ctypes.c_ushort * 14), ("mxcsr", ctypes.c_uint)]


class _Arm64Env(ctypes.Structure):
    """glibc's fenv_t on AArch64: the floating-point control and status registers."""
    _fields_ = [("fpcr", ctypes.c_uint), ("fpsr", ctypes.c_uint)]


# (environment type, its control field, the bits that flush subnormals to zero): x86-64's MXCSR FTZ (results)
# and DAZ (inputs); AArch64's FPCR FZ (both)
_FLUSH = {"x86_64": (_X86Env, "mxcsr", 0x8040), "amd64": (_X86Env, "mxcsr", 0x8040),
          "aarch64": (_Arm64Env, "fpcr", 1 << 24), "arm64": (_Arm64Env, "fpcr", 1 << 24)}


@functools.cache
def _libm():
    """(libm, environment type, control field, flush bits) where this machine's can be set, else None."""
    spec = _FLUSH.get(platform.machine().lower())
    # (the machine name is the kernel's: a 32-bit Python on a 64-bit kernel has another fenv_t)
    if spec is None or not sys.platform.startswith("linux") or ctypes.sizeof(ctypes.c_void_p) != 8:
        return None
    try:
        libm = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
        env = spec[0]()
        if libm.fegetenv(ctypes.byref(env)) != 0:
            return None
    except (OSError, AttributeError):
        return None
    return (libm, *spec)


@contextlib.contextmanager
def subnormals_flushed():
    """The calling thread's floating point flushes subnormal numbers (below 1.2e-38 in float32) to zero, as
    inputs and as results, until the block ends (the thread's own setting is put back; other threads are not
    touched). Why: the measurement model's product of a chunk's cells with the within-patient weights meets
    subnormal weights and products (the far tails of the Gaussian weights), and the CPU works those out in
    microcode, ~100 times slower: at 100,000 patients that product took 45% of the pass over every patient at
    8 times its cost with them flushed. A term below 1.2e-38 is lost against a sum the model floors at 1e-30:
    at most a few units in the last place of a cell just above that floor (bitwise the same figures at 100,000
    patients and on the tests' scores; docs/performance.md, wave 13). Only the flush bits are put back, not
    the exception flags raised meanwhile. Nothing is changed where the machine's setting cannot be reached."""
    spec = _libm()
    if spec is None:
        yield
        return
    libm, env_type, field, bits = spec
    env = env_type()
    libm.fegetenv(ctypes.byref(env))
    before = getattr(env, field) & bits
    try:
        setattr(env, field, getattr(env, field) | bits)
        libm.fesetenv(ctypes.byref(env))
        yield
    finally:
        libm.fegetenv(ctypes.byref(env))
        setattr(env, field, (getattr(env, field) & ~bits) | before)
        libm.fesetenv(ctypes.byref(env))
