"""Parametric Weibull accelerated-failure-time model for interval-censored data.

    log T = x'b + sigma_s * W,   W ~ standard minimum extreme value,
    S(t | x) = exp(-(t / exp(x'b)) ** (1 / sigma_s))

(the parametrisation of R's survreg(dist="weibull"); shape = 1/sigma, scale =
exp(x'b)). Each observation is an interval (L, R]: L = 0 is left-censored,
R = inf right-censored, L == R an exact time (density). Fitted by maximum
likelihood (scipy.optimize, analytic gradient). exp(b_k) is a time ratio:
durations multiply by exp(b_k) per unit of covariate k. The proportional-hazards
coefficient of the same model is -b_k / sigma.

Standard errors: inverse observed information (numerical Hessian of the analytic
gradient) and, with `cluster`, the sandwich H^-1 (sum_c g_c g_c') H^-1 * C/(C-1)
over clusters (patients), because cycles of one patient are correlated.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import optimize, stats


def _terms(logL, logR, exact, eta, sigma):
    """Per-observation log-likelihood and its derivatives in eta and log(sigma)."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        uL = (logL - eta) / sigma          # -inf when L == 0
        uR = (logR - eta) / sigma          # +inf when R == inf
        eL = np.exp(uL)
        eR = np.exp(uR)
        delta = eR - eL
        right_open = ~np.isfinite(logR)
        left_open = ~np.isfinite(logL)
        # log(S_L - S_R) = -eL + log(1 - exp(-delta))
        ll = np.where(right_open, -eL, -eL + np.log(-np.expm1(-np.where(right_open, 1.0, delta))))
        A = np.where(right_open, 1.0, 1.0 / -np.expm1(-np.where(right_open, 1.0, delta)))
        Bq = np.where(right_open, 0.0, 1.0 / np.expm1(np.where(right_open, 1.0, delta)))
        eLs = np.where(left_open, 0.0, eL)
        uLs = np.where(left_open, 0.0, uL)
        eRs = np.where(right_open, 0.0, eR)
        uRs = np.where(right_open, 0.0, uR)
        d_eta = (A * eLs - Bq * eRs) / sigma
        d_lsig = A * eLs * uLs - Bq * eRs * uRs
        if exact.any():
            u = uR[exact]
            eu = eR[exact]
            ll = ll.copy()
            ll[exact] = -np.log(sigma[exact]) - logR[exact] + u - eu
            d_eta[exact] = (eu - 1.0) / sigma[exact]
            d_lsig[exact] = -1.0 - u + u * eu
    return ll, d_eta, d_lsig


@dataclass
class WeibullAFT:
    names: list[str]                 # covariate names (first is "intercept")
    strata: list                     # stratum labels, one sigma each
    coef: np.ndarray                 # b
    log_sigma: np.ndarray            # per stratum
    cov: np.ndarray                  # covariance of (b, log_sigma)
    robust: bool
    loglik: float
    n: int
    n_events: int
    converged: bool
    extra: dict = field(default_factory=dict)

    @property
    def sigma(self) -> np.ndarray:
        return np.exp(self.log_sigma)

    @property
    def shape(self) -> np.ndarray:
        return 1.0 / self.sigma

    @property
    def se(self) -> np.ndarray:
        return np.sqrt(np.diag(self.cov))

    def time_ratios(self, level: float = 0.95) -> dict:
        z = stats.norm.ppf(0.5 + level / 2)
        out = {}
        for k, name in enumerate(self.names):
            if name == "intercept":
                continue
            b, s = self.coef[k], self.se[k]
            out[name] = {"coef": float(b), "se": float(s), "time_ratio": float(np.exp(b)),
                         "lo": float(np.exp(b - z * s)), "hi": float(np.exp(b + z * s)),
                         "p": float(2 * stats.norm.sf(abs(b / s)))}
        return out

    def survival(self, t, x=None, stratum: int = 0) -> np.ndarray:
        eta = self.coef[0] if x is None else float(np.dot(self.coef, x))
        t = np.asarray(t, dtype=float)
        with np.errstate(divide="ignore"):
            return np.exp(-np.exp((np.log(t) - eta) / self.sigma[stratum]))

    def quantile(self, p: float = 0.5, x=None, stratum: int = 0) -> float:
        eta = self.coef[0] if x is None else float(np.dot(self.coef, x))
        return float(np.exp(eta) * (-np.log1p(-p)) ** self.sigma[stratum])


def weibull_aft(left, right, X=None, *, names: list[str] | None = None, strata=None,
                weights=None, cluster=None) -> WeibullAFT:
    """Fit the interval-censored Weibull AFT. X: (n, p) covariates WITHOUT intercept
    (one is added). strata: labels giving each its own sigma. cluster: labels for
    the robust variance."""
    left = np.asarray(left, dtype=float)
    right = np.asarray(right, dtype=float)
    n = left.size
    if right.shape != left.shape or n == 0:
        raise ValueError("weibull_aft: left and right must be non-empty and the same length")
    if np.any((left < 0) | (right < left) | np.isnan(left) | np.isnan(right) | ~np.isfinite(left)):
        raise ValueError("weibull_aft: each interval needs 0 <= left <= right, left finite")
    if np.any(right == 0):
        raise ValueError("weibull_aft: right end 0 is impossible for a Weibull time")
    X0 = np.zeros((n, 0)) if X is None else np.asarray(X, dtype=float).reshape(n, -1)
    Xd = np.column_stack([np.ones(n), X0])
    names = ["intercept"] + (list(names) if names is not None else [f"x{k}" for k in range(X0.shape[1])])
    if np.linalg.matrix_rank(Xd) < Xd.shape[1]:
        raise ValueError("weibull_aft: covariates are collinear (or constant)")
    labels, s_idx = (np.array([0]), np.zeros(n, dtype=int)) if strata is None else np.unique(np.asarray(strata), return_inverse=True)
    ns = labels.size
    w_rows = np.ones(n) if weights is None else np.asarray(weights, dtype=float)
    # Fit on distinct rows (interval, covariates, stratum) with counts as weights:
    # a million cycles usually hold a few thousand distinct rows.
    key = pd.DataFrame(np.column_stack([left, np.where(np.isfinite(right), right, -1.0), s_idx, X0]))
    group = key.groupby(list(key.columns), sort=False).ngroup().to_numpy()
    first = np.unique(group, return_index=True)[1]
    w = np.bincount(group, weights=w_rows)
    rows_left, rows_right, rows_X, rows_s = left, right, Xd, s_idx
    left, right, Xd, s_idx = left[first], right[first], Xd[first], s_idx[first]
    with np.errstate(divide="ignore"):
        logL, logR = np.log(left), np.log(right)
    exact = left == right
    p = Xd.shape[1]
    total = float(w.sum())

    def negll(theta):
        b, ls = theta[:p], theta[p:]
        sig = np.exp(ls)[s_idx]
        ll, de, dl = _terms(logL, logR, exact, Xd @ b, sig)
        g = np.concatenate([Xd.T @ (w * de), np.bincount(s_idx, weights=w * dl, minlength=ns)])
        # per unit weight, so the optimiser's tolerances mean the same at any n
        return -float((w * ll).sum()) / total, -g / total

    # start: intercept at the log of a typical time, sigma 1
    mid = np.where(np.isfinite(right), (left + right) / 2, np.maximum(left, 1e-9) * 1.5)
    theta0 = np.concatenate([[np.log(np.median(np.maximum(mid, 1e-9)))], np.zeros(p - 1), np.zeros(ns)])
    res = optimize.minimize(negll, theta0, jac=True, method="BFGS", options={"gtol": 1e-9, "maxiter": 2000})
    if not res.success:
        res2 = optimize.minimize(negll, res.x, jac=True, method="L-BFGS-B", options={"maxiter": 5000})
        if res2.fun <= res.fun:
            res = res2
    theta = res.x
    k = theta.size
    H = np.zeros((k, k))
    for j in range(k):
        h = 1e-5 * max(1.0, abs(theta[j]))
        tp, tm = theta.copy(), theta.copy()
        tp[j] += h
        tm[j] -= h
        H[:, j] = (negll(tp)[1] - negll(tm)[1]) / (2 * h)
    H = (H + H.T) / 2 * total
    Hinv = np.linalg.inv(H)
    robust = cluster is not None
    if robust:
        # per-cycle scores, summed within patients
        sig = np.exp(theta[p:])[rows_s]
        with np.errstate(divide="ignore"):
            _, de, dl = _terms(np.log(rows_left), np.log(rows_right), rows_left == rows_right,
                               rows_X @ theta[:p], sig)
        scores = np.column_stack([rows_X * (w_rows * de)[:, None],
                                  np.eye(ns)[rows_s] * (w_rows * dl)[:, None]])
        c_idx = pd.factorize(np.asarray(cluster))[0]
        C = c_idx.max() + 1
        G = np.column_stack([np.bincount(c_idx, weights=scores[:, j], minlength=C) for j in range(k)])
        cov = Hinv @ (G.T @ G) @ Hinv * (C / max(C - 1, 1))
    else:
        cov = Hinv
    n_events = int((w_rows * np.isfinite(rows_right)).sum())
    return WeibullAFT(names=names, strata=[v.item() if hasattr(v, "item") else v for v in labels],
                      coef=theta[:p], log_sigma=theta[p:], cov=cov, robust=robust,
                      loglik=-float(res.fun) * total, n=n, n_events=n_events,
                      converged=bool(res.success or np.max(np.abs(res.jac)) < 1e-6))
