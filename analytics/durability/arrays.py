"""Arrays an estimator's loop reuses instead of making afresh each step.

Why: `memory.tune_allocator` fixes glibc's mmap threshold at 4 MiB, and glibc then gives a freed block back to
the system as soon as more than 128 KiB are free at the top of its heap. An array of a few MB made and freed at
every step of a loop (a chunk of the measurement model's cells, a bootstrap batch's (replicates x observations)
temporaries) is therefore faulted in page by page each time: at 100,000 patients that was a third of the fit's
CPU and of the bootstrap's (docs/performance.md, wave 8). Reusing one array per purpose does the same
arithmetic on the same values.
"""
from __future__ import annotations

import math

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
