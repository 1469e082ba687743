"""Kaplan-Meier for right-censored durations (scipy.stats.ecdf underneath).

Confidence band: Greenwood variance on the log(-log S) scale (scipy's "log-log"),
which stays inside [0, 1]. Quantile CIs follow Brookmeyer & Crowley as R's
survfit does: the CI of the p-quantile runs from the first time the band's lower
curve drops to 1-p to the first time its upper curve does (None: not reached).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class KaplanMeier:
    times: np.ndarray        # distinct observed times (events and censorings), ascending
    survival: np.ndarray     # S(t) just after each time
    lower: np.ndarray        # 95% (or requested) pointwise band
    upper: np.ndarray
    n: int
    n_events: int

    def survival_at(self, t) -> np.ndarray:
        """S(t) as a right-continuous step function (1 before the first time)."""
        idx = np.searchsorted(self.times, np.asarray(t, dtype=float), side="right") - 1
        s = np.concatenate([[1.0], self.survival])
        return s[idx + 1]

    def quantile(self, p: float = 0.5) -> float | None:
        """Time at which S first falls to 1-p or below (R's convention: midpoint
        to the next time when S sits exactly on 1-p). None when never reached."""
        return _first_crossing(self.times, self.survival, 1.0 - p)

    def quantile_ci(self, p: float = 0.5) -> tuple[float | None, float | None]:
        return (_first_crossing(self.times, self.lower, 1.0 - p),
                _first_crossing(self.times, self.upper, 1.0 - p))

    @property
    def median(self) -> float | None:
        return self.quantile(0.5)


def _first_crossing(times: np.ndarray, curve: np.ndarray, level: float) -> float | None:
    tol = 1e-10
    below = np.nonzero(curve <= level + tol)[0]
    if below.size == 0:
        return None
    i = below[0]
    if abs(curve[i] - level) <= tol:
        # S rests exactly on the level: R takes the midpoint to the next drop.
        later = np.nonzero(curve < level - tol)[0]
        if later.size:
            return float((times[i] + times[later[0]]) / 2.0)
    return float(times[i])


def kaplan_meier(time, event, confidence_level: float = 0.95) -> KaplanMeier:
    time = np.asarray(time, dtype=float)
    event = np.asarray(event, dtype=bool)
    if time.shape != event.shape or time.size == 0:
        raise ValueError("kaplan_meier: time and event must be non-empty and the same length")
    if np.any(~np.isfinite(time)) or np.any(time < 0):
        raise ValueError("kaplan_meier: times must be finite and >= 0")
    data = stats.CensoredData.right_censored(time, ~event)
    res = stats.ecdf(data).sf
    if event.any():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # undefined where S = 0: handled below
            ci = res.confidence_interval(confidence_level, method="log-log")
        # scipy returns nan where the variance is undefined (S = 0): the band closes to 0 there.
        lower = np.nan_to_num(ci.low.probabilities, nan=0.0)
        upper = np.where(np.isnan(ci.high.probabilities), res.probabilities, ci.high.probabilities)
    else:
        lower = upper = res.probabilities
    return KaplanMeier(times=np.asarray(res.quantiles, dtype=float), survival=np.asarray(res.probabilities),
                       lower=np.asarray(lower), upper=np.asarray(upper),
                       n=int(time.size), n_events=int(event.sum()))
