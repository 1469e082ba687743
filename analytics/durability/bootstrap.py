"""Cluster bootstrap over patients for the Turnbull curve and its quantiles.

Cycles of one patient are correlated, so whole patients are resampled (with
replacement, as many as there are). Every replicate is a weight vector on the
distinct (left, right) day pairs, so the NPMLE of all replicates runs as one
batched EM, warm-started from the full-data estimate, over the full data's
Turnbull intervals (a resample's own intervals are unions of those; S at the
full data's breakpoints is the same NPMLE). Intervals are rounded outwards to
whole days first (left down, right up: the true time stays inside), which keeps
the number of distinct pairs small however many cycles there are.

Each replicate gets at most `max_em_cycles` (100) accelerated EM cycles from the
full-data estimate: replicates sit close to it, and on a real clinic extract
(11k cycles) the percentile bands matched fully converged replicates to within
0.002 in S and the quantile CI ends to within 0.5 day, at a third of the cost.

CIs are bootstrap percentiles. A quantile that more than (1 - level)/2 of the
replicates never reach has no upper bound (None).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import sparse, stats

from .turnbull import TurnbullFit, curve_points, em, make_design, quantiles_from_curves


@dataclass
class BootstrapTurnbull:
    fit: TurnbullFit
    x: np.ndarray                 # curve breakpoints (days)
    s: np.ndarray                 # S at x
    s_lo: np.ndarray | None
    s_hi: np.ndarray | None
    quantiles: dict               # p -> point estimate (None: not reached)
    quantile_ci: dict             # p -> (lo, hi) (None where unbounded / unavailable)
    n_boot: int
    n_clusters: int


def aggregate_days(left, right) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Round outwards to whole days and index distinct (left, right] pairs.
    Returns (pair_left, pair_right, pair_index_per_row)."""
    L = np.floor(np.asarray(left, dtype=float))
    R = np.ceil(np.asarray(right, dtype=float))
    R = np.where(R <= L, L + 1.0, R)   # a same-day loss still needs a one-day window
    # one integer key per pair; right-censored rows get R code -1
    r_code = np.where(np.isfinite(R), R, -1.0).astype(np.int64)
    l_int = L.astype(np.int64)
    span = int(r_code.max()) + 2 if r_code.size else 1
    codes, keys = pd.factorize(l_int * span + (r_code + 1))   # hashing: O(n), no sort
    uL = (keys // span).astype(float)
    uRc = (keys % span) - 1
    uR = np.where(uRc < 0, np.inf, uRc.astype(float))
    return uL, uR, np.asarray(codes)


def _percentile(samples: np.ndarray, q: float) -> np.ndarray:
    """Percentile along axis 0 that tolerates inf (order statistic, no interpolation)."""
    srt = np.sort(samples, axis=0)
    B = srt.shape[0]
    k = int(np.clip(np.round(q * (B - 1)), 0, B - 1))
    return srt[k]


def patient_bootstrap_weights(n_patients: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """(n_boot, n_patients) uint8: how often each patient is drawn in each replicate
    (n_patients draws with replacement). Shared by every summary of one cohort so
    subgroups and the whole use the same resamples."""
    rng = np.random.default_rng(seed)
    out = np.empty((n_boot, n_patients), dtype=np.uint8)
    step = max(1, 5_000_000 // max(n_patients, 1))
    for a in range(0, n_boot, step):
        b = min(step, n_boot - a)
        draws = rng.integers(0, n_patients, size=(b, n_patients)) + (np.arange(b) * n_patients)[:, None]
        counts = np.bincount(draws.ravel(), minlength=b * n_patients).reshape(b, n_patients)
        out[a:a + b] = np.minimum(counts, 255)   # P(a count > 255) is astronomically small
    return out


def cluster_bootstrap_turnbull(left, right, cluster, *, n_boot: int = 200, seed: int = 0,
                               probs=(0.25, 0.5, 0.75), level: float = 0.95,
                               weights: np.ndarray | None = None, ci: str = "percentile",
                               max_chunk_cells: int = 5_000_000, tol: float = 1e-5,
                               max_em_cycles: int = 100, workers: int = 1) -> BootstrapTurnbull:
    """NPMLE with cluster-bootstrap CIs.

    cluster: patient labels, or (with `weights`) integer codes indexing the columns
    of `weights` = patient_bootstrap_weights(...). ci: "percentile", or "normal"
    (estimate +/- z * bootstrap SD; used for very large cohorts, where few
    replicates suffice and the sampling distribution is close to normal).
    workers: the replicates are split into that many runs of consecutive replicates, on as many threads (numpy
    lets go of the GIL in its array loops). Each replicate's weights are drawn before (one generator, in
    replicate order) and its EM is its own row of the batch, so the result is the same for any number of
    workers and any batch size.
    """
    uL, uR, pair = aggregate_days(left, right)
    if weights is None:
        clus, _ = pd.factorize(np.asarray(cluster))
        C = int(clus.max()) + 1 if clus.size else 0
    else:
        clus = np.asarray(cluster, dtype=np.int64)
        C = weights.shape[1]
        n_boot = weights.shape[0]
    n_clusters = int(np.unique(clus).size) if weights is not None else C
    counts = np.bincount(pair, minlength=uL.size).astype(float)
    design = make_design(uL, uR)
    p_hat, it = em(design, counts, tol=1e-7, ll_tol=1e-11, max_iter=50000)
    fit = TurnbullFit(l=design.l, r=design.r, mass=p_hat[0], n=float(counts.sum()), iterations=it)
    x, s = curve_points(design.l, design.r, p_hat)
    point = {p: _none_if_inf(quantiles_from_curves(x, s, 1.0 - p)[0]) for p in probs}
    if n_boot <= 0 or n_clusters < 2:
        return BootstrapTurnbull(fit, x, s[0], None, None, point, {p: (None, None) for p in probs}, 0, n_clusters)
    if weights is None:
        weights = patient_bootstrap_weights(C, n_boot, seed)
    M = sparse.csr_matrix((np.ones(pair.size), (pair, clus)), shape=(uL.size, C))
    # replicates per batch: a (replicates x patients) float block of ~40 MB at most
    chunk = max(1, min(n_boot, max_chunk_cells // max(C, uL.size)))

    def replicates(first: int, stop: int) -> list:
        """(curves, {p: quantiles}) of each batch of replicates first..stop-1."""
        done = []
        for a in range(first, stop, chunk):
            cw = weights[a:min(a + chunk, stop)].astype(float)
            pw = np.asarray((M @ cw.T).T)
            pw[pw.sum(axis=1) == 0] = counts   # a replicate that drew none of this subset's patients
            pb, _ = em(design, pw, p0=p_hat[0], tol=tol, max_iter=max_em_cycles, ll_tol=1e-9)
            _, sb = curve_points(design.l, design.r, pb)
            done.append((sb, {p: quantiles_from_curves(x, sb, 1.0 - p) for p in probs}))
        return done

    parts = max(1, min(int(workers), n_boot))
    bounds = [n_boot * k // parts for k in range(parts + 1)]
    if parts == 1:
        batches = replicates(0, n_boot)
    else:
        with ThreadPoolExecutor(parts) as pool:
            batches = [b for run in pool.map(replicates, bounds[:-1], bounds[1:]) for b in run]
    curves = np.concatenate([sb for sb, _ in batches])
    qs = {p: [q[p] for _, q in batches] for p in probs}
    a = (1.0 - level) / 2
    q_ci = {}
    if ci == "normal":
        z = stats.norm.ppf(1 - a)
        sd = curves.std(axis=0, ddof=1)
        s_lo, s_hi = np.clip(s[0] - z * sd, 0, 1), np.clip(s[0] + z * sd, 0, 1)
        for p in probs:
            arr = np.concatenate(qs[p])
            if point[p] is None or not np.all(np.isfinite(arr)):
                q_ci[p] = (None, None) if point[p] is None else (_none_if_inf(_percentile(arr, a)), None)
            else:
                half = z * arr.std(ddof=1)
                q_ci[p] = (point[p] - half, point[p] + half)
    elif ci == "percentile":
        s_lo, s_hi = _percentile(curves, a), _percentile(curves, 1 - a)
        for p in probs:
            arr = np.concatenate(qs[p])
            q_ci[p] = (_none_if_inf(_percentile(arr, a)), _none_if_inf(_percentile(arr, 1 - a)))
    else:
        raise ValueError("cluster_bootstrap_turnbull: ci must be 'percentile' or 'normal'")
    return BootstrapTurnbull(fit, x, s[0], s_lo, s_hi, point, q_ci, n_boot, n_clusters)


def _none_if_inf(v):
    v = float(v)
    return None if not np.isfinite(v) else v
