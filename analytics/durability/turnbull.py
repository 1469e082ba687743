"""Turnbull's nonparametric MLE for interval-censored durations.

Each observation says the event happened in (left, right]; right = inf means
right-censored, left == right an exactly observed time. The NPMLE puts all its
mass on the Turnbull ("innermost") intervals and is found by self-consistency EM
(Turnbull 1976), accelerated by SQUAREM. Within an innermost interval the NPMLE does not say where the
mass sits; for curves and quantiles we spread it uniformly (S is drawn linearly
across the interval), which is the usual convention (e.g. R's icfit plots show
the same ambiguity as a shaded box). Mass on an interval reaching infinity is
beyond the last inspection: quantiles falling there are "not reached" (None).

The EM step runs on cumulative sums: each observation covers a contiguous run
of innermost intervals, so one iteration costs O(n + m) per replicate, and many
weight vectors (bootstrap replicates) iterate together.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import sparse

from .arrays import Scratch, sparse_product


def _as_intervals(left, right) -> tuple[np.ndarray, np.ndarray]:
    left = np.asarray(left, dtype=float)
    right = np.asarray(right, dtype=float)
    if left.shape != right.shape or left.ndim != 1 or left.size == 0:
        raise ValueError("turnbull: left and right must be non-empty 1-d arrays of the same length")
    bad = ~np.isfinite(left) | np.isnan(right) | (left < 0) | (right < left)
    if bad.any():
        i = int(np.nonzero(bad)[0][0])
        raise ValueError(f"turnbull: row {i} has an invalid interval ({left[i]}, {right[i]}]; "
                         "need 0 <= left <= right, left finite")
    # An exact time t is the degenerate interval [t, t]: widen it to (t - eps, t].
    exact = left == right
    if exact.any():
        left = left.copy()
        left[exact] = right[exact] - 1e-9 * np.maximum(1.0, np.abs(right[exact]))
    return left, right


def innermost_intervals(left, right) -> tuple[np.ndarray, np.ndarray]:
    """Turnbull intervals (l_j, r_j]: a left end immediately followed by a right end
    in the sorted list of all ends (rights sort before lefts at a tie, as (a, t] and
    (t, b] do not overlap)."""
    left, right = _as_intervals(left, right)
    ul, ur = np.unique(left), np.unique(right)
    values = np.concatenate([ur, ul])
    is_left = np.concatenate([np.zeros(ur.size, dtype=np.int8), np.ones(ul.size, dtype=np.int8)])
    order = np.lexsort((is_left, values))
    values, is_left = values[order], is_left[order]
    starts = np.nonzero((is_left[:-1] == 1) & (is_left[1:] == 0))[0]
    return values[starts], values[starts + 1]


@dataclass(frozen=True)
class Design:
    """Which innermost intervals each (aggregated) observation covers."""
    l: np.ndarray
    r: np.ndarray
    start: np.ndarray   # first covered interval, per observation
    stop: np.ndarray    # one past the last covered interval
    adder: sparse.csr_matrix   # (m x n): +1 at start, -1 at stop; M-step via cumsum

    @property
    def m(self) -> int:
        return self.l.size


def make_design(left, right) -> Design:
    left, right = _as_intervals(left, right)
    l, r = innermost_intervals(left, right)
    start = np.searchsorted(l, left, side="left")
    stop = np.searchsorted(r, right, side="right")
    if np.any(stop <= start):  # cannot happen for valid intervals; guard against float surprises
        raise ValueError("turnbull: an observation covers no innermost interval")
    n, m = left.size, l.size
    rows = np.concatenate([start, stop])
    cols = np.concatenate([np.arange(n), np.arange(n)])
    vals = np.concatenate([np.ones(n), -np.ones(n)])
    adder = sparse.csr_matrix((vals, (rows, cols)), shape=(m + 1, n))
    return Design(l=l, r=r, start=start, stop=stop, adder=adder)


def _self_consistency(design: Design, wt: np.ndarray, p: np.ndarray, want_loglik: bool = True,
                      arrays: Scratch | None = None):
    """One EM map p -> F(p), plus the log-likelihood at p (per unit weight) and the
    KKT gradient d_j = sum_i w_i [i covers j] / P_i (p is an NPMLE iff d_j <= 1
    everywhere, with equality on its support). `arrays`: the (rows x observations) temporaries are
    made in these (the same values; none of them is returned)."""
    m = design.m
    c = np.zeros((p.shape[0], m + 1))
    np.cumsum(p, axis=1, out=c[:, 1:])
    if arrays is None:
        denom = np.maximum(c[:, design.stop] - c[:, design.start], 1e-300)
        loglik = (wt * np.log(denom)).sum(axis=1) if want_loglik else None
        covered = design.adder @ (wt / denom).T
    else:
        shape = (p.shape[0], design.start.size)
        denom = np.take(c, design.stop, axis=1, out=arrays.get("denom", shape, float))
        np.subtract(denom, np.take(c, design.start, axis=1, out=arrays.get("start", shape, float)), out=denom)
        np.maximum(denom, 1e-300, out=denom)
        work = arrays.get("work", shape, float)
        loglik = None
        if want_loglik:
            np.log(denom, out=work)
            np.multiply(wt, work, out=work)
            loglik = work.sum(axis=1)
        np.divide(wt, denom, out=work)
        by_observation = arrays.get("by_observation", shape[::-1], float)
        np.copyto(by_observation, work.T)   # what `adder @ (wt / denom).T` hands scipy's kernel
        covered = sparse_product(design.adder, by_observation, arrays.get("covered", (m + 1, shape[0]), float))
    grad = np.cumsum(np.asarray(covered).T, axis=1)[:, :m]
    new = p * grad
    new /= new.sum(axis=1, keepdims=True)
    return new, loglik, grad


def em(design: Design, weights: np.ndarray, p0: np.ndarray | None = None,
       tol: float = 1e-9, max_iter: int = 20000, ll_tol: float = 1e-13) -> tuple[np.ndarray, int]:
    """Self-consistency EM accelerated by SQUAREM (Varadhan & Roland 2008), falling
    back to the plain EM step whenever the extrapolation would lower the likelihood.
    weights: (n,) or (B, n). Returns masses (B, m) and the most cycles any row used.

    A row stops when no mass moves by more than `tol` in one cycle, or when its
    log-likelihood per unit weight rises by less than `ll_tol` (the likelihood is
    very flat near the NPMLE, which is often not unique), or after max_iter cycles.
    """
    w = np.atleast_2d(np.asarray(weights, dtype=float))
    B, m = w.shape[0], design.m
    total = w.sum(axis=1, keepdims=True)
    if np.any(total <= 0):
        raise ValueError("turnbull: a weight vector sums to zero")
    if p0 is None:
        p = np.full((B, m), 1.0 / m)
    else:
        # keep every interval alive: a mass of exactly 0 can never grow under EM
        p = 0.99 * np.array(np.broadcast_to(p0, (B, m)), dtype=float) + 0.01 / m
    wt = w / total
    # a batch of bootstrap replicates: its (replicates x observations) temporaries, ~2 MB at 100,000
    # patients, are reused from step to step (made afresh, each was faulted in again: arrays.py)
    arrays = Scratch() if B > 1 else None
    active = np.arange(B)
    ll_prev = np.full(B, -np.inf)
    it = 0
    for it in range(1, max_iter + 1):
        pa = p[active]
        wa = wt[active] if arrays is None else np.take(wt, active, axis=0, out=arrays.get("wa", (active.size, wt.shape[1]), float))
        p1, _, _ = _self_consistency(design, wa, pa, want_loglik=False, arrays=arrays)
        p2, ll1, _ = _self_consistency(design, wa, p1, arrays=arrays)
        r = p1 - pa
        v = p2 - p1 - r
        nr = np.sqrt((r * r).sum(axis=1, keepdims=True))
        nv = np.sqrt((v * v).sum(axis=1, keepdims=True))
        alpha = np.minimum(-np.divide(nr, nv, out=np.ones_like(nr), where=nv > 0), -1.0)
        jump = np.clip(pa - 2 * alpha * r + alpha * alpha * v, 0.0, None)
        # A long extrapolation can clip away all the mass an observation that carries weight
        # could have its event in: the likelihood there is zero, and the EM map of such a point is
        # 0/0. Such a jump can never be accepted; take the EM point p2 in its place (one more EM
        # step, which never lowers the likelihood).
        cum = np.zeros((jump.shape[0], m + 1))
        np.cumsum(jump, axis=1, out=cum[:, 1:])
        if arrays is None:
            starved = ((cum[:, design.stop] - cum[:, design.start]) <= 0) & (wa > 0)
        else:
            shape = wa.shape
            ends = np.take(cum, design.stop, axis=1, out=arrays.get("denom", shape, float))
            np.subtract(ends, np.take(cum, design.start, axis=1, out=arrays.get("start", shape, float)), out=ends)
            starved = np.less_equal(ends, 0, out=arrays.get("starved", shape, bool))
            starved &= np.greater(wa, 0, out=arrays.get("weighted", shape, bool))
        usable = ~starved.any(axis=1)
        jump = np.where(usable[:, None], jump, p2)
        jump /= jump.sum(axis=1, keepdims=True)
        p_acc, ll_jump, _ = _self_consistency(design, wa, jump, arrays=arrays)
        # EM never lowers the likelihood, so ll(p_acc) >= ll(jump); accept the
        # extrapolation when it already beats the plain EM point p1.
        accept = ll_jump >= ll1
        new = np.where(accept[:, None], p_acc, p2)
        delta = np.max(np.abs(new - pa), axis=1)
        gain = np.where(accept, ll_jump, ll1) - ll_prev[active] if it > 1 else np.full(active.size, np.inf)
        ll_prev[active] = np.where(accept, ll_jump, ll1)
        p[active] = new
        # done when masses stop moving, or the (per-unit-weight) log-likelihood has
        # stopped rising: the NPMLE is often not unique and EM drifts along flat ridges
        active = active[(delta >= tol) & (gain >= ll_tol)]
        if active.size == 0:
            break
    return p, it


@dataclass(frozen=True)
class TurnbullFit:
    l: np.ndarray       # innermost intervals (l, r]
    r: np.ndarray
    mass: np.ndarray
    n: float            # total weight (observations)
    iterations: int

    def curve(self) -> tuple[np.ndarray, np.ndarray]:
        """Breakpoints (x, S) of the survival curve, finite x only; S is linear between."""
        return curve_points(self.l, self.r, self.mass[None, :])

    def survival_at(self, t) -> np.ndarray:
        x, s = self.curve()
        return np.interp(np.asarray(t, dtype=float), x, s[0])

    def quantile(self, p: float = 0.5) -> float | None:
        x, s = self.curve()
        q = quantiles_from_curves(x, s, 1.0 - p)[0]
        return None if not np.isfinite(q) else float(q)

    @property
    def median(self) -> float | None:
        return self.quantile(0.5)

    def support(self, min_mass: float = 1e-6) -> list[tuple[float, float, float]]:
        keep = self.mass > min_mass
        return [(float(a), float(b), float(c)) for a, b, c in zip(self.l[keep], self.r[keep], self.mass[keep])]


def curve_points(l: np.ndarray, r: np.ndarray, masses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x = [0, l1, r1, l2, r2, ...] (finite only) and S at x for each row of masses."""
    masses = np.atleast_2d(masses)
    cum = np.cumsum(masses, axis=1)
    before = 1.0 - (cum - masses)   # S at l_j
    after = 1.0 - cum               # S at r_j
    x = np.empty(2 * l.size)
    x[0::2], x[1::2] = l, r
    s = np.empty((masses.shape[0], 2 * l.size))
    s[:, 0::2], s[:, 1::2] = before, after
    finite = np.isfinite(x)
    x, s = x[finite], s[:, finite]
    x = np.concatenate([[0.0], x])
    s = np.concatenate([np.ones((s.shape[0], 1)), s], axis=1)
    return x, np.clip(s, 0.0, 1.0)


def quantiles_from_curves(x: np.ndarray, s: np.ndarray, level: float) -> np.ndarray:
    """First t where each row's piecewise-linear S(t) reaches `level`; inf if never."""
    s = np.atleast_2d(s)
    tol = 1e-12
    hit = s <= level + tol
    reached = hit.any(axis=1)
    j = np.argmax(hit, axis=1)
    out = np.full(s.shape[0], np.inf)
    rows = np.nonzero(reached)[0]
    j = j[rows]
    jp = np.maximum(j - 1, 0)
    s1, s0 = s[rows, j], s[rows, jp]
    x1, x0 = x[j], x[jp]
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(s0 - s1 > tol, (s0 - level) / (s0 - s1), 1.0)
    out[rows] = np.where(j == 0, x[0], x0 + frac * (x1 - x0))
    return out


def turnbull(left, right, weights=None, tol: float = 1e-7, max_iter: int = 50000,
             whole_days: bool = False) -> TurnbullFit:
    """NPMLE of the event-time distribution from (left, right] intervals.

    Identical intervals are pooled first (exactly; the likelihood only sees counts).
    whole_days=True rounds outwards to whole days first (left down, right up: the
    true time stays inside), which bounds the number of Turnbull intervals and makes
    very large inputs fast. tol: EM stops when no mass moves by more than tol (or the
    log-likelihood per observation gains less than tol * 1e-4); the default gives
    survival values good to about 1e-4.
    """
    left, right = _as_intervals(left, right)
    w = np.ones(left.size) if weights is None else np.asarray(weights, dtype=float)
    if w.shape != left.shape or np.any(w < 0):
        raise ValueError("turnbull: weights must be non-negative, one per interval")
    if whole_days:
        left = np.floor(left)
        right = np.where(np.ceil(right) <= left, left + 1.0, np.ceil(right))
    r_key = np.where(np.isfinite(right), right, -1.0)
    group = pd.DataFrame({"l": left, "r": r_key}).groupby(["l", "r"], sort=False).ngroup().to_numpy()
    first = np.unique(group, return_index=True)[1]
    left, right, w = left[first], right[first], np.bincount(group, weights=w)
    design = make_design(left, right)
    p, it = em(design, w, tol=tol, max_iter=max_iter, ll_tol=tol * 1e-4)
    return TurnbullFit(l=design.l, r=design.r, mass=p[0], n=float(w.sum()), iterations=it)
