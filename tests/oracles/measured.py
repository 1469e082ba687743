"""The measurement model's fit written the direct way: every (score x T x depth) array built whole,
summed with reduceat, and every posterior taken in log space over the whole (patient x mu x depth)
array at each EM step. This is what analytics.durability.measured.MeasuredDurability.fit computed
before its fit was made several times cheaper (the same maths, arranged to reuse what does not change
between steps); tests/test_durability_measured_fast.py holds the product to it.

`reference_fit(scores, scale_max, ...)` returns a MeasuredDurability whose fitted attributes come from
this code, so the product's own curve, quantiles and suggestions can be read from it.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import optimize, special

from analytics.durability.measured import DEPTHS, LOG_T, MIN_REPEATED_CYCLES, MU_GRID, NO_RESPONSE, REQUIRED, T_GRID, \
    MeasuredDurability, _prepare

CHUNK_CELLS = 8_000_000


def _template(days: np.ndarray, line: np.ndarray, kappa: float) -> np.ndarray:
    """Latent score (n_scores, n_T, n_depth) at each score's day for every grid T and depth
    (float32: these arrays are the bulk of the work, and a hundredth of a point is ample)."""
    x = np.exp(kappa * (np.log(np.maximum(days, 1e-3))[:, None] - LOG_T[None, :])).astype(np.float32)
    c = np.where(DEPTHS < 1.0, np.log(2.0 - np.minimum(DEPTHS, 0.999)), math.log(2.0)).astype(np.float32)
    v = 2.0 - (2.0 - DEPTHS).astype(np.float32)[None, None, :] * np.exp(-x[:, :, None] * c[None, None, :])
    return line.astype(np.float32)[:, None, None] * v


def _score_loglik(days, total, line, sigma, kappa, scale_max, mode="trend") -> np.ndarray:
    """log P(score | T, depth) on the grid (rounding folded into the variance, Sheppard).

    mode "threshold": only the side of the line is modelled (a misclassification model: a score
    d points above the line is "in response" with probability Phi(-d / sigma)); the depth and the
    shape then play no part. For cycles with one score each (e.g. MADRS only at visits), where
    the trend within a cycle cannot be seen."""
    if mode == "threshold":
        s = math.sqrt(sigma * sigma + 1.0 / 12.0)
        before = days[:, None] < T_GRID[None, :]                         # still in response at the score
        d = ((line - total) / s)[:, None]
        ll = np.where(before, special.log_ndtr(d), special.log_ndtr(-d))
        return np.repeat(ll[:, :, None], len(DEPTHS), axis=2)  # the same for every depth
    u = _template(days, line, kappa)
    s2 = sigma * sigma + 1.0 / 12.0
    r = total.astype(np.float32)[:, None, None] - u
    ll = r * r * np.float32(-0.5 / s2) - np.float32(0.5 * math.log(2 * math.pi * s2))
    edge = (total <= 0) | (total >= scale_max)
    if edge.any():
        s = math.sqrt(s2)
        ue = u[edge]
        te = total[edge][:, None, None]
        ll[edge] = np.where(te <= 0, special.log_ndtr((0.5 - ue) / s), special.log_ndtr((ue - scale_max + 0.5) / s))
    return ll


def _within_weights(within_sd: float) -> np.ndarray:
    """P(T in each grid cell | mu) for every mu on the grid: (n_mu, n_T)."""
    step = np.gradient(LOG_T)
    w = np.exp(-0.5 * ((LOG_T[None, :] - MU_GRID[:, None]) / within_sd) ** 2) * step[None, :]
    return w / w.sum(axis=1, keepdims=True)


def _prior_mu(mu0: float, between_sd: float) -> np.ndarray:
    w = np.exp(-0.5 * ((MU_GRID - mu0) / max(between_sd, 1e-3)) ** 2)
    return w / w.sum()


def _cycle_grid_chunks(data: _Data, sigma: float, kappa: float, scale_max: float, mode: str = "trend"):
    """Per chunk of whole patients: (first patient, last patient + 1, first cycle, log P(cycle's
    scores | T, depth) as (cycles, n_T, n_depth))."""
    s_end = np.r_[data.cycle_start[1:], len(data.days)]
    c_end = np.r_[data.patient_start[1:], len(data.cycle_start)]
    per_score = len(T_GRID) * len(DEPTHS)
    p = 0
    while p < data.n_patients:
        first_score = data.cycle_start[data.patient_start[p]]
        limit = first_score + max(CHUNK_CELLS // per_score, 1)
        q = p + 1
        while q < data.n_patients and s_end[c_end[q] - 1] <= limit:
            q += 1
        c0, c1 = data.patient_start[p], c_end[q - 1]
        s0, s1 = data.cycle_start[c0], s_end[c1 - 1]
        ll = _score_loglik(data.days[s0:s1], data.total[s0:s1], data.line[s0:s1], sigma, kappa, scale_max, mode)
        yield p, q, c0, np.add.reduceat(ll, data.cycle_start[c0:c1] - s0, axis=0)
        p = q


def _cycle_loglik_chunks(data: _Data, sigma: float, kappa: float, within_sd: float, scale_max: float,
                         mode: str = "trend"):
    """Per chunk of whole patients: (first patient, last patient + 1, first cycle, log P(cycle's
    scores | mu, depth) as (cycles, n_mu, n_depth)). T is integrated out on its grid."""
    W = _within_weights(within_sd)
    for p, q, c0, cyc in _cycle_grid_chunks(data, sigma, kappa, scale_max, mode):
        top = cyc.max(axis=1, keepdims=True)
        L = np.einsum("ctd,mt->cmd", np.exp(cyc - top), W.astype(np.float32), optimize=True)
        yield p, q, c0, (np.log(np.maximum(L, 1e-30)) + top).astype(np.float64)


def _patient_loglik(data: _Data, sigma: float, kappa: float, within_sd: float, scale_max: float,
                    mode: str = "trend") -> np.ndarray:
    """log P(patient's scores | mu, depth): (n_patients, n_mu, n_depth); the depth is the
    patient's (their doses bring them to a similar level each time)."""
    out = np.empty((data.n_patients, len(MU_GRID), len(DEPTHS)))
    for p, q, c0, logL in _cycle_loglik_chunks(data, sigma, kappa, within_sd, scale_max, mode):
        out[p:q] = np.add.reduceat(logL, data.patient_start[p:q] - c0, axis=0)
    return out


def _posterior(P: np.ndarray, mu0: float, between_sd: float, depth_w: np.ndarray):
    """Per patient: log marginal likelihood and the posterior over (mu, depth)."""
    prior = np.log(_prior_mu(mu0, between_sd))[:, None] + np.log(np.maximum(depth_w, 1e-300))[None, :]
    tot = P + prior[None]
    top = tot.max(axis=(1, 2), keepdims=True)
    w = np.exp(tot - top)
    norm = w.sum(axis=(1, 2), keepdims=True)
    return np.log(norm[:, 0, 0]) + top[:, 0, 0], w / norm


def _em(P: np.ndarray, mu0: float, between_sd: float, depth_w: np.ndarray, iters: int = 400,
        tol: float = 1e-8, fit_depth: bool = True):
    """EM for the cohort centre, the between-patient SD and (fit_depth) the depth distribution,
    the per-patient likelihoods P held fixed. The SD is floored at the grid spacing: the
    between-patient variance can never come out negative or zero."""
    ll_old = -np.inf
    floor = MU_GRID[1] - MU_GRID[0]
    for _ in range(iters):
        ll, post = _posterior(P, mu0, between_sd, depth_w)
        pm = post.sum(axis=2)
        m1 = pm @ MU_GRID
        m2 = pm @ (MU_GRID ** 2)
        mu0 = float(m1.mean())
        between_sd = float(math.sqrt(max(m2.mean() - mu0 ** 2, floor ** 2)))
        if fit_depth:
            depth_w = np.maximum(post.sum(axis=1).mean(axis=0), 1e-6)
            depth_w = depth_w / depth_w.sum()
        total = float(ll.sum())
        if total - ll_old < tol * max(1.0, abs(total)):
            break
        ll_old = total
    return mu0, between_sd, depth_w, float(_posterior(P, mu0, between_sd, depth_w)[0].sum())


def _fit(self, scores: pd.DataFrame, *, scale_max: float) -> MeasuredDurability:
    missing = [c for c in REQUIRED if c not in scores.columns]
    if missing:
        raise ValueError(f"MeasuredDurability.fit: the scores lack column(s) {missing}")
    if not scale_max > 0:
        raise ValueError("MeasuredDurability.fit: scale_max must be positive")
    s = scores[list(REQUIRED)].copy()
    for c in ("days", "total", "line"):
        s[c] = pd.to_numeric(s[c], errors="coerce")
    bad = (s[["days", "total", "line"]].isna().any(axis=1) | (s["days"] < 0) | (s["line"] <= 0)
           | s["patient_id"].isna()).to_numpy()
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
    mode = self.mode_

    def objective(sigma, kappa, within_sd):
        if not (0.2 <= kappa <= 12 and 0.05 <= within_sd <= 2.0 and 0.2 <= sigma <= 20):
            return 1e30
        P = _patient_loglik(sub, sigma, kappa, within_sd, self.scale_max_, mode)
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
    self._data = data
    self._P = _patient_loglik(data, self.noise_sd_, 1.0 if mode == "threshold" else self.shape_,
                              self.within_sd_, self.scale_max_, mode)
    mu0, bsd, dw, ll = _em(self._P, *state["inner"], fit_depth=mode == "trend")
    self.log_median_, self.between_sd_, self.depth_weights_, self.loglik_ = mu0, bsd, dw, ll
    self.responder_share_ = float(1.0 - dw[NO_RESPONSE]) if mode == "trend" else 1.0
    _covariance(self)
    _, post = _posterior(self._P, self.log_median_, self.between_sd_, self.depth_weights_)
    self.patient_ids_ = data.patient_ids
    self._post_mu = post.sum(axis=2)
    del self._P, self._data   # the per-patient posteriors are all that is needed from here on
    return self


def _covariance(self) -> None:
    """Sandwich covariance of (mu0, log between_sd), patients as clusters (the measurement
    parameters and within-patient SD held at their estimates)."""
    theta = np.array([self.log_median_, math.log(self.between_sd_)])

    def per_patient(th):
        return _posterior(self._P, th[0], math.exp(th[1]), self.depth_weights_)[0]

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


def reference_fit(scores: pd.DataFrame, *, scale_max: float, fit_patients: int = 250, seed: int = 0,
                  noise_sd: float | None = None, registry_noise_sd: float | None = None) -> MeasuredDurability:
    """MeasuredDurability(...).fit(scores, scale_max=...) as it was computed before (see the module's docstring)."""
    m = MeasuredDurability(fit_patients=fit_patients, seed=seed, noise_sd=noise_sd, registry_noise_sd=registry_noise_sd)
    return _fit(m, scores, scale_max=scale_max)
