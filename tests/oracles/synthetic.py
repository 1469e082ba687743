"""Simulated durability cycles with known truth, for validation and benchmarks.

Each patient has a log-scale random effect b_i ~ N(0, tau^2); each cycle's true
duration is Weibull(shape, scale * exp(b_i + x'beta)). Assessments come every
`gap` days (drawn per cycle from `gaps`) after a random first offset, so the loss
of response is only known to lie between two assessments. A scheduled infusion
(or loss to follow-up) at a random day right-censors the cycle. Inspection and
censoring are independent of the duration, as the estimators assume.
"""
from __future__ import annotations

import numpy as np
import pandas as pd


def simulate_cycles(n_patients: int, *, seed: int = 0, shape: float = 1.5, scale: float = 35.0,
                    tau: float = 0.0, mean_cycles: float = 3.0, gaps=(7, 14, 21, 28),
                    censor_days=(20, 150), severe_time_ratio: float = 1.0,
                    return_truth: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n_cyc = 1 + rng.poisson(mean_cycles - 1, n_patients)
    pid = np.repeat(np.arange(n_patients), n_cyc)
    n = pid.size
    cycle_no = np.arange(n) - np.repeat(np.cumsum(n_cyc) - n_cyc, n_cyc) + 1
    b = rng.normal(0.0, tau, n_patients) if tau > 0 else np.zeros(n_patients)
    severe_p = rng.random(n_patients) < 0.4
    site_p = rng.integers(0, 3, n_patients)
    severe = severe_p[pid]
    log_scale = np.log(scale) + b[pid] + np.where(severe, np.log(severe_time_ratio), 0.0)
    true_t = np.exp(log_scale) * rng.weibull(shape, n)
    gap = np.asarray(gaps, dtype=float)[rng.integers(0, len(gaps), n)]
    offset = np.floor(rng.random(n) * gap) + 1.0
    cens = rng.integers(censor_days[0], censor_days[1] + 1, n).astype(float)
    # assessment k (k = 0, 1, ...) falls on day offset + k * gap
    k_after = np.ceil(np.maximum(true_t - offset, 0.0) / gap)
    right = offset + k_after * gap
    event = right <= cens
    left = np.where(k_after >= 1, offset + (k_after - 1) * gap, 0.0)
    # censored: last assessment on or before the censoring day
    k_cens = np.floor((cens - offset) / gap)
    left_c = np.where(k_cens >= 0, offset + k_cens * gap, 0.0)
    left = np.where(event, left, left_c)
    right = np.where(event, right, np.inf)
    reasons = np.where(rng.random(n) < 0.7, "next_infusion", "loss")
    start = pd.Timestamp("2025-01-01") + pd.to_timedelta(rng.integers(0, 365, n), unit="D")
    df = pd.DataFrame({
        "patient_id": np.char.add("P", pid.astype(str)),
        "cycle_no": cycle_no,
        "started_on": start.date,
        "left_days": left,
        "right_days": right,
        "event": event,
        "censor_reason": np.where(event, "", reasons),
        "post_induction": cycle_no == 1,
        "baseline_band": np.where(severe, "severe", "moderate"),
        "site": np.array(["north", "south", "east"])[site_p[pid]],
    })
    if return_truth:
        df["true_days"] = true_t
        df["true_log_scale"] = log_scale
    return df
