"""Durability of response estimated from the scores themselves: the underlying trend
crossing the response line, with the score noise estimated from the data.

Why: a questionnaire total is a noisy measurement (PHQ-9 about 2 points either way
from week to week). Reading each score literally (in or out of response, loss at
two consecutive scores out) dates losses early when a score near the line crosses
it by chance, and late when a slow return hovers around the line; a clinic that
re-doses when a score is out turns every such crossing into a loss. How far off the
literal figure is, and in which direction, depends on the clinic (docs/durability.md
gives measured figures). This estimator models the measurement instead.

The model (all cohort parameters by maximum marginal likelihood):

* Scores in a cycle are relative to the patient's response line h (the score above
  which a score no longer meets response; h = baseline/2 for a 50% fall):
  v(t) = latent score / h. Right after the infusion v = v0 (the patient's depth of
  response, below 1), and symptoms return toward the baseline (v = 2):

      v(t) = 2 - (2 - v0) * exp(-ln(2 - v0) * (t / T) ** kappa)

  so v(T) = 1: the latent score crosses the response line at T, the cycle's true
  durability. kappa, the shape of the return, is estimated: 1 is an exponential
  return (fast at first), 2 holds then fades, large values are sharp. A fifth
  depth, "no response after the dose" (v0 = 1.15, benefit halving over T), lets
  the model recognise cycles that never truly started in response instead of
  counting them as very short ones.
* Observed score = round(h * v(t) + e), e ~ N(0, sigma^2), clipped to the scale
  (0 and the maximum are censored observations). sigma is estimated.
* T varies from cycle to cycle around the patient's own median: log T ~
  N(mu_i, within_sd^2); patients differ: mu_i ~ N(mu0, between_sd^2) (a shared
  frailty: one patient's cycles are correlated). Depth v0 is per patient, from a
  discrete distribution estimated with the rest.

Integrals are sums over fixed grids (T, mu_i, v0). The noise, shape and
within-patient spread are fitted on a random subset of patients (`fit_patients`,
400 by default: thousands of scores pin them down); the cohort centre, the
between-patient spread and the depth distribution then by EM over every patient.
The cohort curve S(t) = P(T > t) among cycles that started in response, each
patient weighted once (patients with many short cycles do not dominate it: with
the dosing depending on the patient, cycle-weighted figures are biased).

Confidence intervals: delta method with a patient-clustered (sandwich) variance of
(mu0, between_sd, within_sd); sigma and kappa are held at their estimates.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import glob
import math
import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import optimize, sparse, special, stats

from .arrays import Scratch as _Scratch
from .arrays import sparse_product as _sparse_product
from .arrays import subnormals_flushed

REQUIRED = ("patient_id", "cycle_no", "days", "total", "line")
T_GRID = np.exp(np.linspace(math.log(1.0), math.log(730.0), 36))   # cycle durability, days
LOG_T = np.log(T_GRID)
MU_GRID = np.linspace(math.log(3.0), math.log(500.0), 44)          # a patient's median, log days
DEPTHS = np.r_[np.linspace(0.1, 0.95, 8), 1.15]             # v0; the last: no response after the dose
NO_RESPONSE = len(DEPTHS) - 1
MIN_REPEATED_CYCLES = 50   # cycles with 2+ scores needed to see the trend and its noise
CHUNK_CELLS = 1_000_000   # scores x T x depth cells per chunk (~4 MB of float32: a chunk's steps stay in the cache)
FIT_THREADS = max(1, min(2, os.cpu_count() or 1))   # chunks worked on at once (see _patient_loglik)
SPLIT_CHUNKS = 2   # a pass is cut into at least this many chunks once there is enough work to share: fixed, not
# FIT_THREADS, because the chunks' float32 products differ in their last bits with the chunk sizes, and the
# fit must give the same numbers on any number of cores
MIN_CHUNK_SCORES = 2_000   # fewer scores than this are not worth a thread
CELL_BLOCK_ROWS = 512      # scores per block of _trend_cells' steps (512 x 324 float32 cells: 0.66 MB)
MARGINAL_BLOCK_PATIENTS = 8192   # patients per block of _Marginal's exp (8192 x 44 x 9 float64 cells: 26 MB)
EM_BLOCK_PATIENTS = 1024  # patients per block of an EM step over a large clinic (_Marginal._blocked: 1024 x 44 x 9
# float64 cells, 3.2 MB, stay in the cache between the step's two reads of them)
TREND_BLOCK_CYCLES = 4096  # cycles per block of trend_tests' depth sums (4096 x 9 x 36 float64: 10.6 MB)
EM_THREADS = 1   # the blocks on one thread: two measured no faster on this shared machine (more CPU; same numbers)
LOG_SPACE_DEPTH = 450.0   # a patient with a cell this far (natural log) below their maximum may need log space:
# their exact log-likelihoods are kept (_Marginal(own=True)); exp(-450) = 1e-196, above the 1e-200 where it starts
DISTINCT_DAYS_SHARE = 0.5  # the exp cells are made once per distinct day when there are at most this share of
# distinct days among the scores (100,000 patients: 39,688 distinct days among 1.3 M scores), else per score


@functools.cache
def _numpy_openblas():
    """(get, set) of the thread count of the OpenBLAS bundled with numpy's wheels, or None (another BLAS)."""
    for path in glob.glob(os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs", "*openblas*")):
        try:
            lib = ctypes.CDLL(path)   # already loaded by numpy: the same library
        except OSError:
            continue
        for get_name, set_name in (("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
                                   ("scipy_openblas_get_num_threads", "scipy_openblas_set_num_threads"),
                                   ("openblas_get_num_threads", "openblas_set_num_threads")):
            get, put = getattr(lib, get_name, None), getattr(lib, set_name, None)
            if get is not None and put is not None:
                get.restype, put.argtypes = ctypes.c_int, [ctypes.c_int]
                return get, put
    return None


_BLAS_LOCK = threading.Lock()
_BLAS_HELD = {"users": 0, "before": None}


@contextlib.contextmanager
def one_blas_thread():
    """numpy's OpenBLAS on one thread while the model works (also a decorator). Its matrix products here
    are small (a chunk's cells times the 36 x 44 weights; EM's products over the patients' likelihoods):
    OpenBLAS's second thread waits spinning for each, so under load it added CPU (100,000 patients: the
    fit 20.3 -> 17.2 s of CPU) and no speed; and the fit's sums no longer depend on how many cores the
    machine has. The fit's own chunk threads (FIT_THREADS) are unchanged. Held by a count: while any
    fit or suggestion run holds it, every numpy matrix product of the process is on one thread."""
    blas = _numpy_openblas()
    if blas is None:
        yield
        return
    get, put = blas
    with _BLAS_LOCK:
        if _BLAS_HELD["users"] == 0:
            _BLAS_HELD["before"] = get()
            put(1)
        _BLAS_HELD["users"] += 1
    try:
        yield
    finally:
        with _BLAS_LOCK:
            _BLAS_HELD["users"] -= 1
            if _BLAS_HELD["users"] == 0:
                put(_BLAS_HELD["before"])


# exp(-x * RATE[d]) is the share of the depth d's distance to the baseline not yet returned
RATE = np.where(DEPTHS < 1.0, np.log(2.0 - np.minimum(DEPTHS, 0.999)), math.log(2.0)).astype(np.float32)


class _Workspaces:
    """The scratch arrays of one fit: one _Scratch lent to each chunk's work at a time (as many as run at
    once) and `shared`, the pass's own (the distinct days' table). Dropped with the fit: nothing is kept."""

    def __init__(self):
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        self.shared = _Scratch()

    @contextlib.contextmanager
    def lend(self):
        try:
            scratch = self._free.get_nowait()
        except queue.Empty:
            scratch = _Scratch()
        try:
            yield scratch
        finally:
            self._free.put(scratch)


def _days_k(days, kappa: float) -> np.ndarray:
    """days^kappa (float32), as every score's cells read it."""
    return np.exp(kappa * np.log(np.maximum(days, 1e-3))).astype(np.float32)


def _neg_per_cell(kappa: float) -> np.ndarray:
    """-(rate / T^kappa) of each (depth, T) cell, float32: exp(days^kappa x this) is the share not yet returned."""
    return -(RATE.astype(float)[:, None] * np.exp(-kappa * LOG_T)[None, :]).ravel().astype(np.float32)


def _returned_table(data: "_Data", kappa: float, scratch: _Scratch | None = None):
    """(table, codes): exp(days^kappa x _neg_per_cell) for each distinct day of `data` (float32, one row
    a distinct day) and each score's row of it; None when the days are not much fewer than the scores
    (e.g. times recorded to the minute). The same element-wise operations as _trend_cells' direct path
    on the same values: a score's row is bitwise its direct cells."""
    days, codes = data.distinct_days
    if len(days) > DISTINCT_DAYS_SHARE * len(data.days):
        return None
    out = None if scratch is None else scratch.get("returned", (len(days), len(DEPTHS) * len(T_GRID)))
    table = np.multiply(_days_k(days, kappa)[:, None], _neg_per_cell(kappa)[None, :], out=out)
    np.exp(table, out=table)
    return table, codes


def _trend_cells(days, total, line, sigma: float, kappa: float, scale_max: float,
                 returned: tuple | None = None, scratch: _Scratch | None = None) -> np.ndarray:
    """-(log P(score | T, depth)) + the Gaussian constant, (n_scores, n_depth * n_T) float32, built in
    place: for an inner score that is ((total - latent) / (sigma' sqrt 2))^2 with latent = line *
    (2 - (2 - depth) exp(-x rate)), x = (days / T)^kappa (rounding folded into the variance,
    Sheppard); a score at 0 or the scale's maximum is censored there. Summed over a cycle's scores
    and subtracted from the constant times their number, this is the cycle's log-likelihood.
    `returned`: (table, codes) of _returned_table for these scores (codes: each score's row): the
    exp(-x rate) cells are then read from the table, made once per distinct day (the same values).
    `scratch`: the arrays are then its (the result too: valid until its next use)."""
    scratch = scratch or _Scratch()
    s2 = sigma * sigma + 1.0 / 12.0
    a = math.sqrt(0.5 / s2)
    n, n_depth, n_t = len(days), len(DEPTHS), len(T_GRID)
    # x rate = days^kappa * (rate / T^kappa): one product per cell, no power or exp per (score, T)
    days_k = _days_k(days, kappa) if returned is None else None
    neg_per_cell = _neg_per_cell(kappa)
    # total - latent = (total - 2 line) + line (2 - depth) exp(-x rate)
    scale = (line[:, None] * (2.0 - DEPTHS)[None, :] * a).astype(np.float32)
    shift = ((total - 2.0 * line) * a).astype(np.float32)
    cells = scratch.get("cells", (n, n_depth * n_t))
    # a block of rows at a time through every step, so it stays in the core's cache (the same
    # element-wise operations on each cell as on the whole array at once: the same values)
    for b in range(0, n, CELL_BLOCK_ROWS):
        e = min(n, b + CELL_BLOCK_ROWS)
        block = cells[b:e]
        if returned is None:
            np.multiply(days_k[b:e, None], neg_per_cell[None, :], out=block)
            np.exp(block, out=block)                                  # exp(-x rate): the share not yet returned
        else:
            np.take(returned[0], returned[1][b:e], axis=0, out=block, mode="clip")   # (valid rows: unbuffered)
        by_depth = block.reshape(e - b, n_depth, n_t)
        by_depth *= scale[b:e, :, None]
        block += shift[b:e, None]
        np.square(block, out=block)
    edge = np.flatnonzero((total <= 0) | (total >= scale_max))
    if len(edge):
        low = total[edge] <= 0
        rows, take = edge, np.arange(len(edge))
        if returned is not None and len(edge) > 1:
            # a censored score's cells depend only on its day, line and side: each distinct one is worked
            # out once and copied to its scores (100,000 patients: 50,113 of 105,673 censored scores)
            key = np.column_stack([returned[1][edge].astype(float), line[edge], low])
            _, first, take = np.unique(key, axis=0, return_index=True, return_inverse=True)
            rows, low, take = edge[first], low[first], take.reshape(-1)
        # the rows censored at 0 first, then those at the maximum: each side's steps on one slice, in place
        side = np.r_[np.flatnonzero(low), np.flatnonzero(~low)]
        place = np.empty_like(side)
        place[side] = np.arange(len(side))
        rows, take, k = rows[side], place[take], int(low.sum())
        back = scratch.get("edge32", (len(rows), n_depth * n_t))
        if returned is None:
            np.multiply(days_k[rows, None], neg_per_cell[None, :], out=back)
            np.exp(back, out=back)
        else:
            np.take(returned[0], returned[1][rows], axis=0, out=back)
        s = math.sqrt(s2)
        # u = line (2 - (2 - depth) exp(-x rate)) in float64, then log P(censored there)
        u = scratch.get("edge64", back.shape, np.float64)
        np.copyto(u, back)
        np.multiply(np.repeat(2.0 - DEPTHS, n_t)[None, :], u, out=u)
        np.subtract(2.0, u, out=u)
        np.multiply(line[rows, None], u, out=u)
        at_low, at_top = u[:k], u[k:]
        np.subtract(0.5, at_low, out=at_low)
        np.divide(at_low, s, out=at_low)
        special.log_ndtr(at_low, out=at_low)
        np.subtract(at_top, scale_max, out=at_top)
        np.add(at_top, 0.5, out=at_top)
        np.divide(at_top, s, out=at_top)
        special.log_ndtr(at_top, out=at_top)
        np.subtract(-0.5 * math.log(2 * math.pi * s2), u, out=u)
        np.copyto(back, u)   # to float32 (as assigning into the cells would)
        cells[edge] = np.take(back, take, axis=0, out=scratch.get("edge_rows", (len(edge), n_depth * n_t)))
    return cells


def _threshold_cells(days, total, line, sigma) -> np.ndarray:
    """log P(score's side of the line | T): (n_scores, n_T), float64."""
    s = math.sqrt(sigma * sigma + 1.0 / 12.0)
    d = (line - total) / s
    before = days[:, None] < T_GRID[None, :]                         # still in response at the score
    return np.where(before, special.log_ndtr(d)[:, None], special.log_ndtr(-d)[:, None])


def _within_weights(within_sd: float) -> np.ndarray:
    """P(T in each grid cell | mu) for every mu on the grid: (n_mu, n_T)."""
    step = np.gradient(LOG_T)
    w = np.exp(-0.5 * ((LOG_T[None, :] - MU_GRID[:, None]) / within_sd) ** 2) * step[None, :]
    return w / w.sum(axis=1, keepdims=True)


def _prior_mu(mu0: float, between_sd: float) -> np.ndarray:
    w = np.exp(-0.5 * ((MU_GRID - mu0) / max(between_sd, 1e-3)) ** 2)
    return w / w.sum()


def _sums(group_start: np.ndarray, n_rows: int, dtype) -> sparse.csr_matrix:
    """The (groups x rows) matrix that sums each group's consecutive rows (rows sorted by group)."""
    return sparse.csr_matrix((np.ones(n_rows, dtype=dtype), np.arange(n_rows), np.r_[group_start, n_rows]),
                             shape=(len(group_start), n_rows))


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The concatenation of arange(start, start + length) for each pair."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    first = np.r_[0, np.cumsum(lengths)[:-1]]
    step = np.ones(total, dtype=np.int64)
    keep = lengths > 0
    step[first[keep]] = np.asarray(starts, dtype=np.int64)[keep] - np.r_[0, (np.asarray(starts)[keep] + lengths[keep] - 1)[:-1]]
    return np.cumsum(step)


@dataclass
class _Chunk:
    """Whole patients [p, q), their cycles [c0, c1) and scores [s0, s1), with the matrices that sum
    scores into cycles and cycles into patients."""
    p: int
    q: int
    c0: int
    c1: int
    s0: int
    s1: int
    scores_to_cycles: sparse.csr_matrix
    cycles_to_patients: sparse.csr_matrix
    scores_per_cycle: np.ndarray

    @functools.cached_property
    def cycles_to_patients32(self) -> sparse.csr_matrix:
        return self.cycles_to_patients.astype(np.float32)


@dataclass
class _Data:
    days: np.ndarray
    total: np.ndarray
    line: np.ndarray
    cycle_start: np.ndarray     # first score of each cycle
    cycle_patient: np.ndarray   # patient code of each cycle
    patient_start: np.ndarray   # first cycle of each patient
    patient_ids: np.ndarray

    @property
    def n_patients(self) -> int:
        return len(self.patient_ids)

    @functools.cached_property
    def distinct_days(self) -> tuple[np.ndarray, np.ndarray]:
        """(the distinct days, each score's index among them)."""
        if np.isnan(self.days).any():
            days, codes = np.unique(self.days, return_inverse=True)
            return days, codes.reshape(-1)
        # what np.unique gives (the sorted distinct days and each score's index among them), by hashing
        # instead of sorting every score: 1.3 M scores at 100,000 patients, 0.12 s of CPU against 0.26
        codes, days = pd.factorize(self.days, sort=True)
        return np.asarray(days, dtype=self.days.dtype), codes

    @functools.cached_property
    def chunks(self) -> list:
        """Whole patients per chunk, about CHUNK_CELLS score x grid cells each (what does not depend
        on the model's parameters, made once per data)."""
        s_end = np.r_[self.cycle_start[1:], len(self.days)]
        c_end = np.r_[self.patient_start[1:], len(self.cycle_start)]
        per_score = len(T_GRID) * len(DEPTHS)
        # at least SPLIT_CHUNKS chunks once there is enough work to share (the search's subsample too)
        scores_per_chunk = max(min(CHUNK_CELLS // per_score, -(-len(self.days) // SPLIT_CHUNKS)), MIN_CHUNK_SCORES)
        patient_end = s_end[c_end - 1]   # one past each patient's last score (non-decreasing)
        out, p = [], 0
        while p < self.n_patients:
            first_score = self.cycle_start[self.patient_start[p]]
            limit = first_score + scores_per_chunk
            # the patients after p that end within the limit join the chunk (one search, not a step per patient)
            q = max(p + 1, int(np.searchsorted(patient_end, limit, side="right")))
            c0, c1 = self.patient_start[p], c_end[q - 1]
            s0, s1 = self.cycle_start[c0], s_end[c1 - 1]
            out.append(_Chunk(p, q, c0, c1, s0, s1, _sums(self.cycle_start[c0:c1] - s0, s1 - s0, np.float32),
                              _sums(self.patient_start[p:q] - c0, c1 - c0, np.float64),
                              np.diff(np.r_[self.cycle_start[c0:c1], s1]).astype(np.float32)))
            p = q
        return out

    def subset(self, patients: np.ndarray) -> "_Data":
        """The rows of these patient codes (sorted)."""
        patients = np.sort(patients)
        c_end = np.r_[self.patient_start[1:], len(self.cycle_start)]
        n_cycles = c_end[patients] - self.patient_start[patients]
        cycles = _ranges(self.patient_start[patients], n_cycles)
        s_end = np.r_[self.cycle_start[1:], len(self.days)]
        n_scores = s_end[cycles] - self.cycle_start[cycles]
        scores = _ranges(self.cycle_start[cycles], n_scores)
        return _Data(self.days[scores], self.total[scores], self.line[scores],
                     np.r_[0, np.cumsum(n_scores)[:-1]], np.repeat(np.arange(len(patients)), n_cycles),
                     np.r_[0, np.cumsum(n_cycles)[:-1]], self.patient_ids[patients])


def _prepare(scores: pd.DataFrame) -> _Data:
    """The scores sorted by patient, cycle and day, ties in their given order. The distinct patient
    ids are sorted once and the rows by their integer codes (the same order as sorting the rows by
    the ids themselves, without comparing ids row by row)."""
    codes, ids = pd.factorize(scores["patient_id"], sort=True, use_na_sentinel=False)
    ids = pd.Series(ids).astype(str).to_numpy()
    cyc = scores["cycle_no"].to_numpy()
    days = scores["days"].to_numpy(dtype=float)
    if _in_order(codes, cyc, days):
        # already sorted (course.cycle_scores gives them so): the stable sort would keep every row where it
        # is; checking costs a few passes, sorting 1.3 M rows half a second
        order = slice(None)
        days = days.copy()
    else:
        order = np.lexsort((days, cyc, codes))     # stable: rows equal in all three keep their order
        codes, cyc, days = codes[order], cyc[order], days[order]
    new_cycle = np.r_[True, (codes[1:] != codes[:-1]) | (cyc[1:] != cyc[:-1])] if len(codes) else np.zeros(0, dtype=bool)
    cycle_start = np.flatnonzero(new_cycle)
    c_code = codes[cycle_start]
    new_patient = np.r_[True, c_code[1:] != c_code[:-1]] if len(c_code) else np.zeros(0, dtype=bool)
    patient_start = np.flatnonzero(new_patient)
    return _Data(days, np.array(scores["total"].to_numpy(dtype=float)[order]),
                 np.array(scores["line"].to_numpy(dtype=float)[order]),
                 cycle_start, np.cumsum(new_patient) - 1, patient_start,
                 ids[c_code[patient_start]])


def _in_order(codes: np.ndarray, cycles: np.ndarray, days: np.ndarray) -> bool:
    """Are the rows sorted by patient code, cycle and day (ties allowed; a missing day never is)?"""
    if len(codes) < 2:
        return True
    patient = np.diff(codes)
    cycle = np.diff(cycles)
    return bool(np.all((patient > 0) | ((patient == 0) & ((cycle > 0) | ((cycle == 0) & (days[1:] >= days[:-1]))))))


def _chunk_cycle_terms(data: _Data, ch: _Chunk, sigma: float, kappa: float, scale_max: float,
                       mode: str, returned: tuple | None = None,
                       scratch: _Scratch | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(base, neg) with log P(cycle's scores | T, depth) = base[:, None, None] - neg for the chunk's
    cycles: neg (cycles, n_depth, n_T), float32 for the trend (float64, one depth, for the
    threshold form: it does not depend on the depth). `returned`: _returned_table of `data` (or None).
    `scratch`: neg is then its array (valid until the scratch's next use)."""
    sl = slice(ch.s0, ch.s1)
    if mode == "threshold":
        neg = ch.scores_to_cycles.astype(np.float64) @ -_threshold_cells(data.days[sl], data.total[sl], data.line[sl], sigma)
        return np.zeros(len(neg)), neg[:, None, :]
    cells = _trend_cells(data.days[sl], data.total[sl], data.line[sl], sigma, kappa, scale_max,
                         None if returned is None else (returned[0], returned[1][sl]), scratch)
    neg = ch.scores_to_cycles @ cells if scratch is None else \
        _sparse_product(ch.scores_to_cycles, cells, scratch.get("neg", (ch.c1 - ch.c0, cells.shape[1])))
    const = -0.5 * math.log(2 * math.pi * (sigma * sigma + 1.0 / 12.0))
    return (ch.scores_per_cycle * np.float32(const)), neg.reshape(-1, len(DEPTHS), len(T_GRID))


def _chunk_cycle_grid(data: _Data, ch: _Chunk, sigma: float, kappa: float, scale_max: float,
                      mode: str, returned: tuple | None = None) -> np.ndarray:
    """log P(cycle's scores | T, depth) for the chunk's cycles: (cycles, n_depth, n_T), float32 for
    the trend (float64, one depth, for the threshold form)."""
    base, neg = _chunk_cycle_terms(data, ch, sigma, kappa, scale_max, mode, returned)
    return np.subtract(base[:, None, None].astype(neg.dtype), neg, out=neg)


def _flushed_product():
    """subnormals_flushed() for a matrix product on the calling thread: only where the model can hold numpy's BLAS
    at one thread (one_blas_thread), so the product runs where the setting is (with another BLAS its own threads
    would work without it, and the sums would differ with how the rows were shared among them)."""
    return subnormals_flushed() if _numpy_openblas() is not None else contextlib.nullcontext()


def _each_chunk(work, n_chunks: int) -> list:
    """[work(0), ..., work(n_chunks - 1)], FIT_THREADS chunks at a time when there are several: numpy and
    scipy let go of the GIL in their array loops, and chunks are whole patients (each result its own)."""
    workers = min(FIT_THREADS, n_chunks)
    if workers <= 1:
        return [work(i) for i in range(n_chunks)]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(work, range(n_chunks)))


def _patient_loglik(data: _Data, sigma: float, kappa: float, within_sd: float, scale_max: float,
                    mode: str = "trend", terms: list | None = None, spaces: _Workspaces | None = None) -> np.ndarray:
    """log P(patient's scores | mu, depth): (n_patients, n_mu, n_depth), or (n_patients, n_mu, 1)
    in the threshold form (the same for every depth); the depth is the patient's (their doses
    bring them to a similar level each time). T is integrated out on its grid. `terms`: the
    chunks' _chunk_cycle_terms when already at hand (the threshold form's do not change with
    within_sd; they are not changed here). `spaces`: the scratch arrays to reuse (a fit's search passes
    share them); by default the pass's own."""
    spaces = spaces or _Workspaces()
    W = _within_weights(within_sd).T
    n_depth = 1 if mode == "threshold" else len(DEPTHS)
    out = np.empty((data.n_patients, len(MU_GRID), n_depth))   # each chunk writes its rows in this order: no copy
    returned = _returned_table(data, kappa, spaces.shared) if terms is None and mode == "trend" else None

    def one(i: int) -> None:
        with spaces.lend() as scratch:
            ch = data.chunks[i]
            base, neg = terms[i] if terms is not None else _chunk_cycle_terms(data, ch, sigma, kappa, scale_max, mode,
                                                                              returned, scratch)
            # the largest cell over T of each cycle and depth is taken out before the exp (and added back)
            least = np.min(neg, axis=2, keepdims=True, out=scratch.get("least", neg.shape[:2] + (1,), neg.dtype))
            e = np.subtract(least, neg, out=neg if terms is None else scratch.get("e", neg.shape, neg.dtype))
            np.exp(e, out=e)
            with _flushed_product():   # the weights' far tails: ~8 times faster, the same sums (arrays.py)
                L = np.matmul(e.reshape(-1, len(T_GRID)), W.astype(e.dtype),
                              out=scratch.get("L", (e.shape[0] * e.shape[1], len(MU_GRID)), e.dtype))
            np.maximum(L, 1e-30, out=L)
            np.log(L, out=L)
            top = base[:, None] - least[:, :, 0]                               # (cycles, n_depth)
            # log L is within [-69, 0] here: summed in its own precision (float32 for the trend: a
            # float64 copy of the whole array cost more than the rest); the large part, top, in float64
            to_patients = ch.cycles_to_patients if L.dtype == np.float64 else ch.cycles_to_patients32
            L = L.reshape(len(neg), -1)
            P = out[ch.p:ch.q]
            summed = _sparse_product(to_patients, L, scratch.get("P", (ch.q - ch.p, L.shape[1]), L.dtype))
            np.copyto(P, summed.reshape(-1, n_depth, len(MU_GRID)).transpose(0, 2, 1))   # to float64, (mu, depth)
            P += (ch.cycles_to_patients @ top.astype(np.float64))[:, None, :]

    # chunks write their own patients' rows: several at a time in the pass over a large clinic (same numbers)
    _each_chunk(one, len(data.chunks))
    return out


class _Marginal:
    """The per-patient likelihoods P (n, n_mu, n_depth) held as exp(P - max) per patient, so a
    patient's marginal likelihood under a prior (over mu) x (over depth) is two products instead of
    an exp over the whole array: EM, the covariance and the posteriors reuse it. A patient whose
    marginal would underflow there (the prior's mass where their likelihood is negligible) is
    computed in log space instead."""

    def __init__(self, P: np.ndarray, own: bool = False):
        """`own`: P is the caller's to give up (the fit's pass over everyone): exp(P - max) is made in P's own
        array, and only the rows log space can ever need are kept as they were (`_log_rows`): a patient whose
        cells all lie within LOG_SPACE_DEPTH of their maximum cannot underflow in stats (their marginal is at
        least their smallest cell's exp, the priors and depth weights summing to one). 100,000 patients: no
        second array of P's size (150 MB) at the fit's peak."""
        self.n, self.n_mu, self.n_depth = P.shape
        self.top = np.empty(self.n)
        self.E = P if own else np.empty_like(P)
        self.P = None if own else P
        starts = np.arange(0, self.n, MARGINAL_BLOCK_PATIENTS)
        kept: list = [None] * len(starts)

        def one(i: int) -> None:
            # patient by patient, element by element: the same values whatever the blocks and threads
            rows = slice(starts[i], starts[i] + MARGINAL_BLOCK_PATIENTS)
            block = P[rows]
            block.max(axis=(1, 2), out=self.top[rows])
            if own:
                deep = np.flatnonzero(block.min(axis=(1, 2)) - self.top[rows] < -LOG_SPACE_DEPTH)
                kept[i] = (starts[i] + deep, block[deep].copy())   # before their cells are overwritten
            E = np.subtract(block, self.top[rows, None, None], out=self.E[rows])
            np.exp(E, out=E)   # in place: no second array of E's size

        # the exp of every cell (19 M at 100,000 patients), blocks of patients on FIT_THREADS threads
        _each_chunk(one, len(starts))
        if own:
            self._log_rows = (np.concatenate([k[0] for k in kept]) if kept else np.zeros(0, dtype=np.int64),
                              np.concatenate([k[1] for k in kept]) if kept else np.zeros((0,) + P.shape[1:]))
        self._mixed_for = None   # (depth weights, E summed over depth with them): the covariance and the
        # posteriors ask for the same weights many times, EM for new ones each step

    def _P(self, rows: np.ndarray) -> np.ndarray:
        """The log-likelihoods of these patients (sorted rows) as they were given."""
        if self.P is not None:
            return self.P[rows]
        where, values = self._log_rows
        at = np.minimum(np.searchsorted(where, rows), max(len(where) - 1, 0))
        found = where[at] == rows if len(where) else np.zeros(len(rows), dtype=bool)
        with np.errstate(divide="ignore"):
            # a row not kept cannot be asked for (see __init__); were it, its cells are within rounding of P
            out = np.log(self.E[rows]) + self.top[rows, None, None]
        out[found] = values[at[found]]
        return out

    def _mixed(self, q: np.ndarray) -> np.ndarray:
        """E summed over depth with weights q: (n, n_mu)."""
        if self._mixed_for is None or not np.array_equal(self._mixed_for[0], q):
            self._mixed_for = (q.copy(), (self.E.reshape(-1, self.n_depth) @ q).reshape(self.n, self.n_mu))
        return self._mixed_for[1]

    def _depth(self, depth_w: np.ndarray) -> np.ndarray:
        # the threshold form holds one depth for all: the weights sum to 1
        return np.asarray(depth_w, dtype=float) if self.n_depth > 1 else np.ones(1)

    def stats(self, prior: np.ndarray, depth_w: np.ndarray, depth: bool = False):
        """Per patient: log marginal likelihood, posterior over mu (n, n_mu); with `depth` also the
        mean over patients of the posterior over depth."""
        q = self._depth(depth_w)
        mean_depth = None
        if depth and self.n > EM_BLOCK_PATIENTS:
            ll, post, bad, G = self._blocked(prior, q)
            mean_depth = (prior @ G) * q
        else:
            R = self._mixed(q) * prior[None, :]
            norm = R.sum(axis=1)
            bad = ~(norm > 1e-200)
            with np.errstate(divide="ignore"):
                ll = np.log(norm) + self.top
            post = R / np.where(bad, 1.0, norm)[:, None]
            if depth:
                inv = np.where(bad, 0.0, 1.0 / np.where(bad, 1.0, norm))
                G = (inv @ self.E.reshape(self.n, -1)).reshape(self.n_mu, self.n_depth)
                mean_depth = (prior @ G) * q
        if bad.any():
            rows = np.flatnonzero(bad)
            ll_b, post_b = _log_posterior(self._P(rows), prior, q)
            ll[rows] = ll_b
            post[rows] = post_b.sum(axis=2)
            if depth:
                mean_depth = mean_depth + post_b.sum(axis=1).sum(axis=0)
        if depth:
            mean_depth = mean_depth / self.n
        return ll, post, mean_depth

    def _blocked(self, prior: np.ndarray, q: np.ndarray):
        """stats(depth=True)'s arrays a block of EM_BLOCK_PATIENTS patients at a time: a block's E (3.2 MB) is
        read for its marginals and read again for the depth sums while it is in the cache (EM read the whole E,
        150 MB at 100,000 patients, twice a step: 21 steps there took 1.14-1.35 s of CPU, blocked 0.79-0.89 s).
        (ll, post, bad, G): every patient's figures are what the one-pass products give (the same row by row);
        G, the depth sums, is the sum of the blocks' sums in block order, so it differs from the one product's
        in the last bits only (the depth weights by ~4e-15 relative), and is the same on any number of threads
        (EM_THREADS)."""
        n, n_mu, n_depth = self.n, self.n_mu, self.n_depth
        starts = np.arange(0, n, EM_BLOCK_PATIENTS)
        ll, post, bad = np.empty(n), np.empty((n, n_mu)), np.empty(n, dtype=bool)
        G = np.empty((len(starts), n_mu * n_depth))
        flat = self.E.reshape(n, -1)

        def one(i: int) -> None:
            a = starts[i]
            b = min(n, a + EM_BLOCK_PATIENTS)
            R = (self.E[a:b].reshape(-1, n_depth) @ q).reshape(b - a, n_mu)
            R *= prior[None, :]
            norm = R.sum(axis=1)
            no = ~(norm > 1e-200)
            bad[a:b] = no
            with np.errstate(divide="ignore"):
                np.add(np.log(norm), self.top[a:b], out=ll[a:b])
            np.divide(R, np.where(no, 1.0, norm)[:, None], out=post[a:b])
            inv = np.where(no, 0.0, 1.0 / np.where(no, 1.0, norm))
            np.matmul(inv, flat[a:b], out=G[i])

        if EM_THREADS > 1:
            _each_chunk(one, len(starts))
        else:
            for i in range(len(starts)):
                one(i)
        return ll, post, bad, G.sum(axis=0).reshape(n_mu, n_depth)


def _log_posterior(P: np.ndarray, prior_mu: np.ndarray, depth_w: np.ndarray):
    """Per patient: log marginal likelihood and the posterior over (mu, depth), in log space."""
    with np.errstate(divide="ignore"):
        prior = np.log(prior_mu)[:, None] + np.log(np.maximum(depth_w, 1e-300))[None, :]
    w = P + prior[None]     # one array of P's size, worked on in place
    top = w.max(axis=(1, 2), keepdims=True)
    w -= top
    np.exp(w, out=w)
    norm = w.sum(axis=(1, 2), keepdims=True)
    w /= norm
    return np.log(norm[:, 0, 0]) + top[:, 0, 0], w


def _em(P, mu0: float, between_sd: float, depth_w: np.ndarray, iters: int = 400,
        tol: float = 1e-8, fit_depth: bool = True):
    """EM for the cohort centre, the between-patient SD and (fit_depth) the depth distribution,
    the per-patient likelihoods P (an array or its _Marginal) held fixed. The SD is floored at the
    grid spacing: the between-patient variance can never come out negative or zero."""
    M = P if isinstance(P, _Marginal) else _Marginal(P)
    ll_old = -np.inf
    floor = MU_GRID[1] - MU_GRID[0]
    for _ in range(iters):
        ll, pm, mean_depth = M.stats(_prior_mu(mu0, between_sd), depth_w, depth=fit_depth)
        m1 = pm @ MU_GRID
        m2 = pm @ (MU_GRID ** 2)
        mu0 = float(m1.mean())
        between_sd = float(math.sqrt(max(m2.mean() - mu0 ** 2, floor ** 2)))
        if fit_depth:
            depth_w = np.maximum(mean_depth, 1e-6)
            depth_w = depth_w / depth_w.sum()
        del pm  # not held while the next iteration makes its own
        total = float(ll.sum())
        if total - ll_old < tol * max(1.0, abs(total)):
            break
        ll_old = total
    return mu0, between_sd, depth_w, float(M.stats(_prior_mu(mu0, between_sd), depth_w)[0].sum())


def _logsumexp_depth(g: np.ndarray, log_depth: np.ndarray) -> np.ndarray:
    """log sum over depth of exp(g + log weight): (cycles, n_depth, n_T) -> (cycles, n_T), float64 (the
    threshold form's single depth stands for all of them: its weights sum to one)."""
    if g.shape[1] == 1:
        return g[:, 0, :].astype(float) + special.logsumexp(log_depth)
    a = g + log_depth[None, :, None]
    top = a.max(axis=1, keepdims=True)
    a -= top
    np.exp(a, out=a)
    return np.log(a.sum(axis=1)) + top[:, 0, :]


class MeasuredDurability:
    """Cohort and per-patient durability from the scores (see the module docstring).

    fit(scores, scale_max=27) with scores = course.cycle_scores(...): patient_id, cycle_no,
    days, total, line. Results are attributes ending in "_".

    noise_sd: fix the score noise instead of estimating it. registry_noise_sd: the scale's
    published standard error of measurement, used (and said so in `noise_source_`) only when
    the data cannot tell the noise apart from real change: when most cycles hold a single
    score (e.g. MADRS only at visits). Such data are then read with the threshold form of the
    model (mode_ "threshold": only which side of the line each score is on, with that noise),
    since a trend within a cycle cannot be seen.
    """

    def __init__(self, *, fit_patients: int = 250, seed: int = 0, noise_sd: float | None = None,
                 registry_noise_sd: float | None = None):
        if fit_patients < 20:
            raise ValueError("fit_patients must be at least 20")
        for name, v in (("noise_sd", noise_sd), ("registry_noise_sd", registry_noise_sd)):
            if v is not None and not (0 < v < 50):
                raise ValueError(f"{name} must be a positive number of scale points")
        self.fit_patients = int(fit_patients)
        self.seed = int(seed)
        self.noise_sd = noise_sd
        self.registry_noise_sd = registry_noise_sd

    # -- fitting --------------------------------------------------------------------------
    @one_blas_thread()
    def fit(self, scores: pd.DataFrame, *, scale_max: float) -> "MeasuredDurability":
        missing = [c for c in REQUIRED if c not in scores.columns]
        if missing:
            raise ValueError(f"MeasuredDurability.fit: the scores lack column(s) {missing}")
        if not scale_max > 0:
            raise ValueError("MeasuredDurability.fit: scale_max must be positive")
        # no copy of the scores where they are already numbers and all usable (the fit starts beside other
        # work on the same clinic: 1.3 M scores at 100,000 patients, ~60 MB a copy)
        s = scores[list(REQUIRED)]
        for c in ("days", "total", "line"):
            if not pd.api.types.is_float_dtype(s[c].dtype):
                s = s.assign(**{c: pd.to_numeric(s[c], errors="coerce")})
        bad = (s["days"].isna() | s["total"].isna() | s["line"].isna() | (s["days"] < 0) | (s["line"] <= 0)
               | s["patient_id"].isna()).to_numpy()
        if bad.any():
            s = s[~bad]
        self.n_excluded_scores_ = int(bad.sum())
        self.scale_max_ = float(scale_max)
        data = _prepare(s)
        self.n_patients_ = data.n_patients
        self.n_cycles_ = len(data.cycle_start)
        self.n_scores_ = len(data.days)
        if self.n_patients_ < 10 or self.n_scores_ < 30:
            raise ValueError("too few patients or scores to model durability (need at least 10 patients "
                             "and 30 scores in response cycles)")
        # the trend (and the noise around it) shows only in cycles with repeated scores
        per_cycle = np.diff(np.r_[data.cycle_start, len(data.days)])
        repeated = int((per_cycle >= 2).sum())
        self.mode_ = "trend" if repeated >= max(MIN_REPEATED_CYCLES, 0.1 * len(per_cycle)) else "threshold"
        fixed_sigma = self.noise_sd
        self.noise_source_ = "fixed" if fixed_sigma is not None else "estimated from the scores"
        if fixed_sigma is None and self.mode_ == "threshold":
            if self.registry_noise_sd is None:
                raise ValueError("most cycles hold a single score: the score noise cannot be estimated from "
                                 "these data; give registry_noise_sd (the scale's standard error of measurement)")
            fixed_sigma = self.registry_noise_sd
            self.noise_source_ = "the scale's published standard error of measurement"
        rng = np.random.default_rng(self.seed)
        sub = data.subset(rng.choice(data.n_patients, self.fit_patients, replace=False)) \
            if data.n_patients > self.fit_patients else data
        state = {"inner": (math.log(40.0), 0.7, np.full(len(DEPTHS), 1.0 / len(DEPTHS)))}
        spaces = _Workspaces()   # the search's passes and the pass over everyone reuse one set of arrays
        mode = self.mode_
        # the threshold form's cycle grids depend on neither the shape nor the within-patient spread,
        # and its noise is fixed: made once for the whole search
        terms = [_chunk_cycle_terms(sub, ch, fixed_sigma, 1.0, self.scale_max_, mode) for ch in sub.chunks] \
            if mode == "threshold" else None

        def objective(sigma, kappa, within_sd):
            if not (0.2 <= kappa <= 12 and 0.05 <= within_sd <= 2.0 and 0.2 <= sigma <= 20):
                return 1e30
            P = _patient_loglik(sub, sigma, kappa, within_sd, self.scale_max_, mode, terms, spaces)
            mu0, bsd, dw, ll = _em(P, *state["inner"], iters=200, tol=1e-7, fit_depth=mode == "trend")
            state["inner"] = (mu0, bsd, dw)
            return -ll

        if mode == "threshold":
            # only the within-patient spread is left to the outer search (shape and depth play no part)
            res = optimize.minimize_scalar(lambda lw: objective(fixed_sigma, 1.0, math.exp(lw)),
                                           bounds=(math.log(0.08), math.log(1.5)), method="bounded",
                                           options={"xatol": 0.01})
            sigma, kappa, within_sd = fixed_sigma, float("nan"), math.exp(res.x)
            self.converged_ = bool(res.success)
        else:
            if fixed_sigma is None:
                f = lambda th: objective(math.exp(th[0]), math.exp(th[1]), math.exp(th[2]))  # noqa: E731
                theta0 = np.log([2.0, 1.5, 0.4])
            else:
                f = lambda th: objective(fixed_sigma, math.exp(th[0]), math.exp(th[1]))  # noqa: E731
                theta0 = np.log([1.5, 0.4])
            k = len(theta0)
            simplex = theta0 + np.vstack([np.zeros(k), np.diag(np.full(k, 0.3))])
            res = optimize.minimize(f, theta0, method="Nelder-Mead",
                                    options={"xatol": 0.01, "fatol": 0.05, "maxiter": 40 * k, "initial_simplex": simplex})
            th = np.exp(res.x)
            sigma, kappa, within_sd = (th[0], th[1], th[2]) if fixed_sigma is None else (fixed_sigma, th[0], th[1])
            self.converged_ = bool(res.success)
        self.noise_sd_, self.shape_, self.within_sd_ = float(sigma), float(kappa), float(within_sd)
        # everyone, with the measurement parameters fixed
        P = _patient_loglik(data, self.noise_sd_, 1.0 if mode == "threshold" else self.shape_, self.within_sd_,
                            self.scale_max_, mode, spaces=spaces)
        del spaces   # before _Marginal's arrays are made: the scratch is not held beside them
        self._lik = _Marginal(P, own=True)   # P's array becomes the marginal's
        del P
        mu0, bsd, dw, ll = _em(self._lik, *state["inner"], fit_depth=mode == "trend")
        self.log_median_, self.between_sd_, self.depth_weights_, self.loglik_ = mu0, bsd, dw, ll
        self.responder_share_ = float(1.0 - dw[NO_RESPONSE]) if mode == "trend" else 1.0
        self._covariance()
        _, post_mu, _ = self._lik.stats(self.prior_mu(), self.depth_weights_)
        self.patient_ids_ = data.patient_ids
        self._post_mu = post_mu
        del self._lik   # the per-patient posteriors are all that is needed from here on
        return self

    def _covariance(self) -> None:
        """Sandwich covariance of (mu0, log between_sd), patients as clusters (the measurement
        parameters and within-patient SD held at their estimates)."""
        theta = np.array([self.log_median_, math.log(self.between_sd_)])

        def per_patient(th):
            return self._lik.stats(_prior_mu(th[0], math.exp(th[1])), self.depth_weights_)[0]

        h = np.array([0.01, 0.02])
        G = np.column_stack([(per_patient(theta + np.eye(2)[j] * h[j]) - per_patient(theta - np.eye(2)[j] * h[j]))
                             / (2 * h[j]) for j in range(2)])
        H = np.zeros((2, 2))
        for j in range(2):
            for k in range(2):
                ej, ek = np.eye(2)[j] * h[j], np.eye(2)[k] * h[k]
                H[j, k] = (per_patient(theta + ej + ek).sum() - per_patient(theta + ej - ek).sum()
                           - per_patient(theta - ej + ek).sum() + per_patient(theta - ej - ek).sum()) / (4 * h[j] * h[k])
        try:
            Hinv = np.linalg.inv(-(H + H.T) / 2)
            n = G.shape[0]
            self.covariance_ = Hinv @ (G.T @ G) @ Hinv * (n / max(n - 1, 1))
        except np.linalg.LinAlgError:
            self.covariance_ = np.full((2, 2), np.nan)

    # -- the cohort curve ----------------------------------------------------------------------
    @property
    def total_sd_(self) -> float:
        return math.sqrt(self.within_sd_ ** 2 + self.between_sd_ ** 2)

    def survival(self, days) -> np.ndarray:
        """P(a cycle that started in response still holds at `days`), patients weighted equally."""
        t = np.maximum(np.asarray(days, dtype=float), 1e-9)
        return stats.norm.sf((np.log(t) - self.log_median_) / self.total_sd_)

    def quantile(self, p: float) -> float:
        """Day by which a share p of cycles have lost response (p = 0.5: the median)."""
        return float(math.exp(self.log_median_ + self.total_sd_ * stats.norm.ppf(p)))

    @property
    def median_days_(self) -> float:
        return math.exp(self.log_median_)

    def _draws(self, n: int = 4000, seed: int = 1) -> np.ndarray:
        cov = self.covariance_
        theta = np.array([self.log_median_, math.log(self.between_sd_)])
        d = theta[None, :] if not np.all(np.isfinite(cov)) else np.random.default_rng(seed).multivariate_normal(
            theta, cov, size=n, check_valid="ignore")
        return np.column_stack([d, np.full(len(d), math.log(self.within_sd_))])

    def survival_ci(self, days, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        t = np.maximum(np.asarray(days, dtype=float), 1e-9)
        d = self._draws()
        sd = np.sqrt(np.exp(d[:, 1]) ** 2 + np.exp(d[:, 2]) ** 2)
        s = stats.norm.sf((np.log(t)[None, :] - d[:, [0]]) / sd[:, None])
        a = (1 - level) / 2
        return np.quantile(s, a, axis=0), np.quantile(s, 1 - a, axis=0)

    def quantile_ci(self, p: float, level: float = 0.95) -> tuple[float, float]:
        d = self._draws()
        sd = np.sqrt(np.exp(d[:, 1]) ** 2 + np.exp(d[:, 2]) ** 2)
        q = np.exp(d[:, 0] + sd * stats.norm.ppf(p))
        a = (1 - level) / 2
        return float(np.quantile(q, a)), float(np.quantile(q, 1 - a))

    # -- patients ---------------------------------------------------------------------------------
    def patient_posteriors(self) -> tuple[np.ndarray, np.ndarray]:
        """(patient ids, posterior over MU_GRID (n, n_mu)) for every fitted patient."""
        return self.patient_ids_, self._post_mu

    @one_blas_thread()
    def posteriors_for(self, scores: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(patient ids, posterior over MU_GRID) for new scores (same columns as fit) under this
        fit's cohort parameters, e.g. patients deciding their next interval in a simulation."""
        s = scores[list(REQUIRED)]
        s = s[s["line"].to_numpy(dtype=float) > 0]
        if s.empty:
            return np.zeros(0, dtype=object), np.zeros((0, len(MU_GRID)))
        data = _prepare(s)
        P = _patient_loglik(data, self.noise_sd_, 1.0 if self.mode_ == "threshold" else self.shape_,
                            self.within_sd_, self.scale_max_, self.mode_)
        return data.patient_ids, _Marginal(P).stats(self.prior_mu(), self.depth_weights_)[1]

    def _group_posteriors(self, patient_ids) -> np.ndarray:
        """Each listed patient's posterior over MU_GRID (the cohort's for a patient without
        scores in a cycle): (n distinct patients, n_mu)."""
        row = pd.Index(self.patient_ids_).get_indexer(pd.Index(pd.Series(patient_ids, dtype=object).astype(str).unique()))
        return np.where((row >= 0)[:, None], self._post_mu[np.maximum(row, 0)], self.prior_mu()[None, :])

    def _curve_matrix(self, days) -> np.ndarray:
        """P(T > day | mu) for each day and grid mu: (n_days, n_mu)."""
        t = np.log(np.maximum(np.asarray(days, dtype=float), 1e-9))
        return stats.norm.sf((t[:, None] - MU_GRID[None, :]) / self.within_sd_)

    @one_blas_thread()
    def trend_tests(self, scores: pd.DataFrame, min_cycles: int = 6, max_slope: float = 0.25) -> pd.DataFrame:
        """Is each patient's durability changing from cycle to cycle? Per patient with at least
        `min_cycles` cycles in `scores` (same columns as fit): log T of their k-th cycle is taken as
        mu + slope x (k - mean k) with the within-patient spread of this fit around it, the patient's
        mu from the cohort's distribution; the likelihood of their scores (every cycle, censored or
        lost, read through this fit's noise, shape and depths) is maximised over slope in
        [0, max_slope] and compared with slope 0: one-sided likelihood-ratio test, p from the
        chi-bar-square (half chi-square 1) distribution. Returns patient_id, trend_cycles,
        slope_per_cycle (log days), trend_p."""
        s = scores[list(REQUIRED)]
        s = s[s["line"].to_numpy(dtype=float) > 0]   # _prepare sorts them
        columns = {"patient_id": pd.Series(dtype=object), "trend_cycles": pd.Series(dtype=int),
                   "slope_per_cycle": pd.Series(dtype=float), "trend_p": pd.Series(dtype=float)}
        if s.empty:
            return pd.DataFrame(columns)
        data = _prepare(s)
        n_cycles = np.diff(np.r_[data.patient_start, len(data.cycle_start)])
        tested = np.flatnonzero(n_cycles >= min_cycles)
        if not len(tested):
            return pd.DataFrame(columns)
        data = data.subset(tested)
        kappa = 1.0 if self.mode_ == "threshold" else self.shape_
        log_depth = np.log(np.maximum(self.depth_weights_, 1e-300))
        returned = _returned_table(data, kappa) if self.mode_ == "trend" else None
        # each cycle's log-likelihood over the T grid, depth summed out with the cohort's weights; each chunk
        # writes its own cycles' rows (no list of pieces and their concatenation beside each other)
        lc = np.empty((len(data.cycle_start), len(T_GRID)))

        def cycle_grid(i: int) -> None:
            ch = data.chunks[i]
            g = _chunk_cycle_grid(data, ch, self.noise_sd_, kappa, self.scale_max_, self.mode_, returned)
            for a in range(0, len(g), TREND_BLOCK_CYCLES):   # its float64 working copies a block of cycles at a time
                b = min(a + TREND_BLOCK_CYCLES, len(g))
                lc[ch.c0 + a:ch.c0 + b] = _logsumexp_depth(g[a:b], log_depth)
        _each_chunk(cycle_grid, len(data.chunks))
        # G[c, j]: log P(cycle c's scores | its median is FINE[j]), T integrated on its grid, made for a batch
        # of cycles at a time from exp(lc - top) (the whole G, cycles x 138 float64, was 243 MB at 100,000
        # patients and set the suggestions' peak; the rows are the same values made whole or in batches)
        step = float(MU_GRID[1] - MU_GRID[0]) / 2
        fine = np.arange(MU_GRID[0] - 1.5, MU_GRID[-1] + 1.5 + step, step)
        w = np.exp(-0.5 * ((LOG_T[None, :] - fine[:, None]) / self.within_sd_) ** 2) * np.gradient(LOG_T)[None, :]
        w /= w.sum(axis=1, keepdims=True)
        cycle_top = lc.max(axis=1, keepdims=True)
        lc -= cycle_top
        np.exp(lc, out=lc)

        def g_rows(rows: np.ndarray) -> np.ndarray:
            g = lc[rows] @ w.T          # (rows, n_fine)
            np.maximum(g, 1e-300, out=g)
            np.log(g, out=g)
            g += cycle_top[rows]
            return g
        slopes = np.linspace(0.0, max_slope, 26)
        log_prior = np.log(self.prior_mu())
        n_cyc = np.diff(np.r_[data.patient_start, len(data.cycle_start)])
        best_slope = np.zeros(data.n_patients)
        p_value = np.ones(data.n_patients)
        # patients with the same number of cycles share the (mu, slope, cycle) grid of medians and so the
        # interpolation on the fine grid: a sparse matrix summing, for each (mu, slope), the interpolated
        # G of every cycle; a batch of patients at a time
        n_fine = len(fine)
        for n in np.unique(n_cyc):
            k = np.arange(n, dtype=float)
            k -= k.mean()
            m = MU_GRID[:, None, None] + slopes[None, :, None] * k[None, None, :]   # (mu, slope, cycle)
            x = np.clip((m - fine[0]) / step, 0, len(fine) - 1.000001)
            lo = np.floor(x).astype(int)
            frac = x - lo
            column = np.arange(n)[None, None, :] * n_fine + lo
            rows = np.broadcast_to(np.arange(m.shape[0] * m.shape[1]).reshape(m.shape[:2])[:, :, None], m.shape)
            interp = sparse.csr_matrix((np.r_[(1 - frac).ravel(), frac.ravel()],
                                        (np.r_[rows.ravel(), rows.ravel()], np.r_[column.ravel(), column.ravel() + 1])),
                                       shape=(m.shape[0] * m.shape[1], n * n_fine))
            same = np.flatnonzero(n_cyc == n)
            for batch in np.array_split(same, -(-len(same) * n // 4000)):
                g = g_rows((data.patient_start[batch][:, None] + np.arange(n)[None, :]).ravel()).reshape(len(batch), -1)
                summed = np.asarray(interp @ g.T).T.reshape(len(batch), m.shape[0], m.shape[1])  # (patients, mu, slope)
                summed += log_prior[None, :, None]
                top = summed.max(axis=1, keepdims=True)
                ll = np.log(np.exp(summed - top).sum(axis=1)) + top[:, 0, :]      # (patients, slope)
                best = np.argmax(ll, axis=1)
                stat = np.maximum(2.0 * (ll[np.arange(len(batch)), best] - ll[:, 0]), 0.0)
                tested = (best > 0) & (stat > 0)
                p_value[batch] = np.where(tested, 0.5 * stats.chi2.sf(stat, 1), 1.0)
                best_slope[batch] = slopes[best]
        return pd.DataFrame({"patient_id": data.patient_ids, "trend_cycles": n_cyc, "slope_per_cycle": best_slope,
                             "trend_p": p_value})

    def survival_of(self, patient_ids, days) -> np.ndarray:
        """The curve of a group of patients (a caseload, a subgroup): the mean of their own
        predictive curves (patients without scores in a cycle count with the cohort's)."""
        post = self._group_posteriors(patient_ids)
        if len(post) == 0:
            return np.full(np.shape(days), np.nan)
        return self._curve_matrix(days) @ post.mean(axis=0)

    def survival_of_draws(self, patient_ids, days, n_boot: int = 200, seed: int = 0) -> np.ndarray:
        """The group's curve with its patients resampled (n_boot, n_days): a bootstrap over the
        group's patients, each keeping their own posterior (the cohort parameters held at their
        estimates). For intervals of a group's figures; None-free, NaN for an empty group."""
        post = self._group_posteriors(patient_ids)
        if len(post) == 0 or n_boot <= 0:
            return np.full((max(n_boot, 0), np.size(days)), np.nan)
        n = len(post)
        weights = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=n_boot) / n
        return (weights @ post) @ self._curve_matrix(days).T

    def prior_mu(self) -> np.ndarray:
        """The cohort's distribution of a patient's log median on MU_GRID (a patient with no scores)."""
        return _prior_mu(self.log_median_, self.between_sd_)

    def summary(self) -> dict:
        return {"mode": self.mode_, "noise_sd": round(self.noise_sd_, 3), "noise_source": self.noise_source_,
                "return_shape": None if math.isnan(self.shape_) else round(self.shape_, 3), "within_patient_sd": round(self.within_sd_, 3),
                "between_patient_sd": round(self.between_sd_, 3), "responder_share": round(self.responder_share_, 3),
                "n_patients": self.n_patients_, "n_cycles": self.n_cycles_, "n_scores": self.n_scores_,
                "converged": self.converged_}
