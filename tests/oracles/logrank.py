"""k-group log-rank test for right-censored data.

scipy.stats.logrank handles two groups and reports sqrt(chi-square); this is the
usual k-group form (Mantel-Haenszel hypergeometric variance, chi-square on k-1 df),
matching R's survdiff.
"""
from __future__ import annotations

import numpy as np
from scipy import stats


def logrank_test(time, event, group, weights=None) -> dict:
    """Returns {"chisq", "df", "p", "groups", "observed", "expected"}.

    `weights` (optional, non-negative) counts each row that many times, so the
    test can run on aggregated rows.
    """
    time = np.asarray(time, dtype=float)
    event = np.asarray(event, dtype=bool)
    group = np.asarray(group)
    w = np.ones(time.size) if weights is None else np.asarray(weights, dtype=float)
    if not (time.size == event.size == group.size == w.size):
        raise ValueError("logrank_test: time, event, group (and weights) must have the same length")
    levels, g = np.unique(group, return_inverse=True)
    k = levels.size
    if k < 2:
        return {"chisq": None, "df": 0, "p": None, "groups": [_plain(v) for v in levels],
                "observed": [float(w[event].sum())], "expected": [float(w[event].sum())]}
    times, t_idx = np.unique(time, return_inverse=True)
    m = times.size
    deaths = np.zeros((m, k))
    exits = np.zeros((m, k))
    np.add.at(deaths, (t_idx[event], g[event]), w[event])
    np.add.at(exits, (t_idx, g), w)
    # at risk at time j: everyone whose time is >= times[j]
    at_risk = np.cumsum(exits[::-1], axis=0)[::-1]
    n = at_risk.sum(axis=1)
    d = deaths.sum(axis=1)
    ok = (d > 0) & (n > 0)
    n, d, at_risk, deaths = n[ok], d[ok], at_risk[ok], deaths[ok]
    expected = at_risk * (d / n)[:, None]
    o_minus_e = (deaths - expected).sum(axis=0)
    factor = np.where(n > 1, d * (n - d) / (n ** 2 * np.maximum(n - 1, 1e-300)), 0.0)
    frac = at_risk  # n_jg
    var = (np.einsum("j,jg,jh->gh", factor, frac, -frac)
           + np.diag((factor[:, None] * frac * n[:, None]).sum(axis=0)))
    u, v = o_minus_e[:-1], var[:-1, :-1]
    chisq = float(u @ np.linalg.pinv(v) @ u)
    df = int(np.linalg.matrix_rank(v))
    return {"chisq": chisq, "df": df, "p": float(stats.chi2.sf(chisq, df)) if df else None,
            "groups": [_plain(v) for v in levels],
            "observed": deaths.sum(axis=0).tolist(), "expected": expected.sum(axis=0).tolist()}


def _plain(v):
    return v.item() if hasattr(v, "item") else v
