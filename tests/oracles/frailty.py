"""Per-patient durability, shrunk toward the cohort (empirical Bayes).

Model (a Weibull AFT with a log-normal frailty on the time scale):

    cycle duration T_ic ~ Weibull, log T_ic = x_i'b + u_i + sigma * W,
    u_i ~ N(0, tau^2) (patient i's own log-scale shift), W min-extreme-value.

`fit_weibull_frailty` estimates (b, sigma, tau) by maximising the marginal
likelihood of all patients' interval-censored cycles, integrating u_i out by
Gauss-Hermite quadrature. `patient_durability` then computes the posterior of
one patient's u_i on a fine grid from that patient's cycles (interval-censored
losses and right-censored cycles alike) and returns the posterior predictive
survival of the patient's next cycle,

    S_i(t) = E[ exp(-(t / exp(x_i'b + u_i))^(1/sigma)) | patient's cycles ],

with a credible range from the posterior of u_i. With no cycles the posterior is
the prior and S_i is the cohort's marginal curve; with many cycles it
concentrates on the patient's own scale. weight_personal = 1 - Var(u_i | data) /
tau^2: 0 = nothing learnt about this patient, 1 = fully personal.

Large cohorts: the fit uses at most `max_patients` randomly chosen patients
(default 3000); (b, sigma, tau) are population quantities and that many patients
estimate them to a few percent.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import optimize, sparse, special

from analytics.durability.weibull import weibull_aft

_GH_NODES, _GH_WEIGHTS = np.polynomial.hermite.hermgauss(20)
_U_GRID = np.linspace(-6.0, 6.0, 601)   # posterior grid in units of tau


def _ic_loglik(logL, logR, eta, sigma):
    """log P(L < T <= R) for the Weibull AFT; L = 0 and R = inf allowed. Broadcasts."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        eL = np.exp((logL - eta) / sigma)
        eR = np.exp((logR - eta) / sigma)
        right_open = np.isinf(logR) & (logR > 0)
        delta = np.where(right_open, 1.0, eR - eL)
        ll = np.where(right_open, -eL, -eL + np.log(-np.expm1(-delta)))
    return ll


@dataclass
class CohortWeibullFit:
    names: list[str]            # covariate names (without intercept)
    coef: np.ndarray            # intercept first, then one per name
    sigma: float
    tau: float                  # SD of the patient log-scale random effect
    n_patients: int
    n_cycles: int
    loglik: float
    converged: bool

    def linear_predictor(self, covariates: dict | pd.Series | None = None) -> float:
        """Intercept + b'x (log days). Covariates the fit used must all be given."""
        if self.names:
            given = {} if covariates is None else dict(covariates)
            lacking = [n for n in self.names if n not in given or pd.isna(given[n])]
            if lacking:
                raise ValueError(f"linear_predictor: no value for covariate(s) {lacking}")
            x = [1.0] + [float(given[n]) for n in self.names]
        else:
            x = [1.0]
        return float(np.dot(self.coef, x))

    def marginal_survival(self, t, covariates=None) -> np.ndarray:
        """The cohort's curve for a patient with these covariates (random effect integrated out)."""
        eta = self.linear_predictor(covariates)
        u = np.sqrt(2.0) * self.tau * _GH_NODES
        t = np.atleast_1d(np.asarray(t, dtype=float))
        with np.errstate(divide="ignore"):
            s = np.exp(-np.exp((np.log(t)[:, None] - eta - u[None, :]) / self.sigma))
        return s @ (_GH_WEIGHTS / np.sqrt(np.pi))


def fit_weibull_frailty(cycles: pd.DataFrame, covariates: list[str] | None = None, *,
                        max_patients: int = 3000, seed: int = 0) -> CohortWeibullFit:
    covariates = list(covariates or [])
    need = ["patient_id", "left_days", "right_days", *covariates]
    missing = [c for c in need if c not in cycles.columns]
    if missing:
        raise ValueError(f"fit_weibull_frailty: the cycles table lacks column(s) {missing}")
    d = cycles[need].dropna()
    d = d[(d["left_days"] >= 0) & (d["right_days"] > d["left_days"])]
    pid, uniq = pd.factorize(d["patient_id"])
    if uniq.size > max_patients:
        chosen = np.random.default_rng(seed).choice(uniq.size, max_patients, replace=False)
        keep = np.isin(pid, chosen)
        d, pid = d[keep], pd.factorize(pid[keep])[0]
    n_p = int(pid.max()) + 1 if pid.size else 0
    if n_p < 2 or np.isfinite(d["right_days"]).sum() < 2:
        raise ValueError("fit_weibull_frailty: need at least two patients and two observed losses")
    L, R = d["left_days"].to_numpy(float), d["right_days"].to_numpy(float)
    X = d[covariates].to_numpy(float) if covariates else np.zeros((len(d), 0))
    start = weibull_aft(L, R, X if covariates else None, names=covariates)
    with np.errstate(divide="ignore"):
        logL, logR = np.log(L)[:, None], np.log(R)[:, None]
    Xd = np.column_stack([np.ones(len(d)), X])
    by_patient = sparse.csr_matrix((np.ones(len(d)), (pid, np.arange(len(d)))), shape=(n_p, len(d)))
    log_w = np.log(_GH_WEIGHTS / np.sqrt(np.pi))
    p = Xd.shape[1]

    def negll(theta):
        b, sigma, tau = theta[:p], np.exp(theta[p]), np.exp(theta[p + 1])
        eta = (Xd @ b)[:, None] + np.sqrt(2.0) * tau * _GH_NODES[None, :]
        per_node = by_patient @ _ic_loglik(logL, logR, eta, sigma)     # (patients, nodes)
        return -float(special.logsumexp(per_node + log_w[None, :], axis=1).sum())

    theta0 = np.concatenate([start.coef, [start.log_sigma[0] - 0.1, np.log(0.3)]])
    res = optimize.minimize(negll, theta0, method="L-BFGS-B")
    if not res.success:
        res = optimize.minimize(negll, res.x, method="Nelder-Mead",
                                options={"maxiter": 4000, "xatol": 1e-6, "fatol": 1e-8})
    theta = res.x
    return CohortWeibullFit(names=covariates, coef=theta[:p], sigma=float(np.exp(theta[p])),
                            tau=float(np.exp(theta[p + 1])), n_patients=n_p, n_cycles=int(len(d)),
                            loglik=-float(res.fun), converged=bool(res.success))


@dataclass
class PatientDurability:
    n_cycles: int
    n_events: int
    weight_personal: float        # 0..1: 1 - posterior variance / prior variance of u_i
    eta: float                    # cohort linear predictor for this patient (log days)
    sigma: float
    u_grid: np.ndarray            # posterior grid for u_i
    posterior: np.ndarray         # probabilities on u_grid
    posterior_mean_log_scale: float

    def survival(self, t) -> np.ndarray:
        """Posterior predictive probability that the next cycle lasts beyond t days."""
        t = np.atleast_1d(np.asarray(t, dtype=float))
        with np.errstate(divide="ignore"):
            s = np.exp(-np.exp((np.log(t)[:, None] - self.eta - self.u_grid[None, :]) / self.sigma))
        return s @ self.posterior

    def _u_quantile(self, q: float) -> float:
        cdf = np.cumsum(self.posterior)
        return float(np.interp(q, cdf, self.u_grid))

    def time_at_survival(self, p: float = 0.5, interval: float = 0.8) -> tuple[float, float, float]:
        """(point, low, high) days at which survival falls to p: point from the
        predictive curve; low/high are the (1-interval)/2 and (1+interval)/2
        posterior quantiles of the patient's own time."""
        if not (0 < p < 1 and 0 < interval < 1):
            raise ValueError("time_at_survival: p and interval must lie strictly between 0 and 1")
        factor = (-np.log(p)) ** self.sigma
        lo_u, hi_u = self._u_quantile((1 - interval) / 2), self._u_quantile((1 + interval) / 2)
        lo, hi = np.exp(self.eta + lo_u) * factor, np.exp(self.eta + hi_u) * factor
        # predictive S is continuous and decreasing: bracket its p-crossing generously
        f = lambda logt: float(self.survival(np.exp(logt))[0]) - p
        a, b = np.log(lo) - 5 * self.sigma - 5, np.log(hi) + 5 * self.sigma + 5
        point = float(np.exp(optimize.brentq(f, a, b, xtol=1e-10)))
        return point, float(lo), float(hi)


def patient_durability(cohort_fit: CohortWeibullFit, patient_cycles: pd.DataFrame) -> PatientDurability:
    """The patient's shrunken durability distribution given their own cycles
    (columns left_days, right_days, plus the fit's covariates; may be empty)."""
    names = cohort_fit.names
    if len(patient_cycles):
        missing = [c for c in ["left_days", "right_days", *names] if c not in patient_cycles.columns]
        if missing:
            raise ValueError(f"patient_durability: patient cycles lack column(s) {missing}")
        if "patient_id" in patient_cycles.columns and patient_cycles["patient_id"].nunique() > 1:
            raise ValueError("patient_durability: cycles of more than one patient given")
        first = patient_cycles.iloc[0]
        eta = cohort_fit.linear_predictor({n: first[n] for n in names}) if names else cohort_fit.linear_predictor()
        L = patient_cycles["left_days"].to_numpy(float)
        R = patient_cycles["right_days"].to_numpy(float)
        ok = (L >= 0) & (R > L)
        L, R = L[ok], R[ok]
    else:
        if names:
            raise ValueError("patient_durability: no cycles, so no covariates to place the patient; "
                             "use cohort_fit.marginal_survival with the patient's covariates")
        eta = cohort_fit.linear_predictor()
        L = R = np.zeros(0)
    tau = max(cohort_fit.tau, 1e-8)
    u = tau * _U_GRID
    log_post = -0.5 * _U_GRID ** 2
    if L.size:
        with np.errstate(divide="ignore"):
            ll = _ic_loglik(np.log(L)[:, None], np.log(R)[:, None], eta + u[None, :], cohort_fit.sigma)
        log_post = log_post + ll.sum(axis=0)
    post = np.exp(log_post - log_post.max())
    post /= post.sum()
    mean = float(post @ u)
    var = float(post @ (u - mean) ** 2)
    prior_var = float((np.exp(-0.5 * _U_GRID ** 2) / np.exp(-0.5 * _U_GRID ** 2).sum()) @ u ** 2)
    weight = float(np.clip(1.0 - var / prior_var, 0.0, 1.0)) if L.size else 0.0
    return PatientDurability(n_cycles=int(L.size), n_events=int(np.isfinite(R).sum()),
                             weight_personal=weight, eta=float(eta), sigma=cohort_fit.sigma,
                             u_grid=u, posterior=post, posterior_mean_log_scale=float(eta + mean))
