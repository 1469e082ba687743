"""Per-patient durability and the suggested maintenance interval.

One model per data version, fitted on the whole clinic (`clinic_suggestions`):
durability.measured.MeasuredDurability, which reads each cycle's scores as noisy
measurements of an underlying trend that crosses the response line (the score
noise, the shape of the return of symptoms, the cycle-to-cycle and
patient-to-patient spread of durability are all estimated from the clinic's data).
Every viewer sees rows of the same fit: a clinician's caseload, a director's
cohort and `python -m analytics intervals` give one patient the same answer.

Per patient (an empirical-Bayes posterior: a short history borrows the clinic's
pattern, a long one is the patient's own):

* suggested_interval_days: the day by which, from everything known about this
  patient, there is a (1 - target) chance (20% by default) that response has been
  lost: the patient's predictive distribution of the next cycle's durability.
* interval_low_days - interval_high_days: an 80% range for that day (the 10th and
  90th posterior percentiles of the patient's own 20th-percentile durability).
  Measured coverage on the simulated clinic: docs/durability.md.
* Never past what the observed losses support: if more of the patient's cycles
  were seen to lose response by the suggested day than the target allows (a
  one-sided binomial test at 10%), the suggestion is held at the longest day the
  observed losses do support, and `estimate_source` says "own losses".

Who gets a suggestion (anyone else gets `status` and no date):
* in active care: an infusion or any score in the last ACTIVE_CARE_DAYS (90) days;
* in maintenance: an infusion given after induction, or more than
  rules.induction_max_gap_days since the last induction infusion (induction over);
* response established: rules.established_response_scores (2) consecutive scores
  of the instrument meeting response after the first infusion.
"""
from __future__ import annotations

import math
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from scipy import special, stats

from . import memory, scales
from .durability.measured import FIT_THREADS, MU_GRID, REQUIRED, MeasuredDurability, one_blas_thread
from .outcomes import DEFAULT_RULES, OutcomeRules

MIN_SUGGESTION_DAYS = 7.0   # no maintenance schedule tighter than weekly is suggested
MAX_SUGGESTION_DAYS = 182.0
MAX_RANGE_DAYS = 730.0
ACTIVE_CARE_DAYS = 90       # no infusion and no score for this long: no longer in active care
PERSONAL_WEIGHT = 0.6       # basis "personal" from this share of personal information, "cohort" below 0.25
COHORT_WEIGHT = 0.25
RANGE_LEVEL = 0.8
LOSS_TEST_ALPHA = 0.10      # observed losses contradict a suggestion when this unlikely under its target
TAPER_CYCLES = 3            # held response through this many scheduled intervals in a row ...
TAPER_MARGIN_POINTS = 2.0   # ... with pre-dose scores on average at least this far inside the response line ...
TAPER_FACTOR = 1.25         # ... and an estimated durability at least this multiple of the current interval
TREND_MIN_LOSSES = 2        # lengthening durability is tested on patients with at least this many losses
TREND_MIN_CYCLES = 6        # ... among at least this many cycles after induction
TREND_FDR = 0.10            # Benjamini-Hochberg false discovery rate over the clinic's patients

STATUS_TEXT = {
    "suggested": "suggested",
    "not_in_active_care": f"no longer in active care (no infusion and no score for {ACTIVE_CARE_DAYS} days)",
    "in_induction": "still in induction",
    "response_not_established": "response not established (needs two consecutive scores meeting response)",
    "no_scores": "no scores of this instrument since treatment began",
    "no_model": "not enough cycles in the clinic yet to estimate durability",
}


# --- who gets a suggestion -----------------------------------------------------------------

def patient_states(course, today: date, last_activity: pd.Series | None = None,
                   rules: OutcomeRules = DEFAULT_RULES) -> pd.DataFrame:
    """One row per treated patient: last_infusion_on, last_activity_on, active_care,
    in_maintenance, response_established, latest_responding, status (STATUS_TEXT keys).

    `last_activity`: per patient id, the latest assessment of any instrument (the course holds
    only one); the latest infusion counts too.
    """
    inf, sc = course.infusions, course.scores
    n_pat = len(inf["patient_id"].cat.categories) if len(inf) else 0
    ids = np.asarray(inf["patient_id"].cat.categories, dtype=object) if len(inf) else np.zeros(0, dtype=object)
    code = inf["code"].to_numpy()
    at = inf["at"].to_numpy()
    last_inf = np.full(n_pat, np.datetime64("NaT"), dtype="datetime64[us]")
    if len(inf):
        order = np.lexsort((at, code))
        last_rows = order[np.r_[code[order][1:] != code[order][:-1], True]]
        last_inf[code[last_rows]] = at[last_rows]
    post_induction = np.zeros(n_pat, dtype=bool)
    np.logical_or.at(post_induction, code, inf["phase"].to_numpy(dtype=object) != "induction")
    today_ts = pd.Timestamp(today)
    with np.errstate(invalid="ignore"):
        induction_over = (today_ts - pd.to_datetime(last_inf)) > pd.Timedelta(days=rules.induction_max_gap_days)
    in_maintenance = post_induction | np.asarray(induction_over, dtype=bool)
    # established response: a run of consecutive scores meeting response
    s_code = sc["code"].to_numpy()
    resp = sc["responding"].to_numpy(dtype=bool)
    established = np.zeros(n_pat, dtype=bool)
    latest_resp = np.zeros(n_pat, dtype=bool)
    has_scores = np.zeros(n_pat, dtype=bool)
    if len(sc):
        new = np.r_[True, s_code[1:] != s_code[:-1]]
        prev_resp = np.r_[False, resp[:-1]] & ~new
        run_start = np.maximum.accumulate(np.where(resp & ~prev_resp, np.arange(len(resp)), 0))
        run_len = np.where(resp, np.arange(len(resp)) - run_start + 1, 0)
        np.logical_or.at(established, s_code, run_len >= rules.established_response_scores)
        last = np.r_[s_code[1:] != s_code[:-1], True]
        latest_resp[s_code[last]] = resp[last]
        has_scores[s_code] = True
    frame = pd.DataFrame({"patient_id": ids, "last_infusion_on": pd.to_datetime(last_inf).normalize()})
    activity = pd.to_datetime(last_inf)
    if last_activity is not None and len(last_activity):
        other = pd.to_datetime(pd.Series(last_activity).reindex(ids)).to_numpy(dtype="datetime64[us]")
        activity = pd.to_datetime(np.where(np.isnat(other) | (other < last_inf), last_inf, other))
    frame["last_activity_on"] = pd.DatetimeIndex(activity).normalize()
    frame["active_care"] = (frame["last_activity_on"] >= today_ts.normalize() - pd.Timedelta(days=ACTIVE_CARE_DAYS)).to_numpy()
    frame["in_maintenance"] = in_maintenance
    frame["response_established"] = established
    frame["latest_responding"] = latest_resp
    status = np.full(n_pat, "suggested", dtype=object)
    status[~established] = "response_not_established"
    status[~has_scores] = "no_scores"
    status[~in_maintenance] = "in_induction"
    status[~frame["active_care"].to_numpy()] = "not_in_active_care"
    frame["status"] = status
    return frame


# --- the evidence beside a suggestion --------------------------------------------------------

def observed_evidence(cycles: pd.DataFrame) -> pd.DataFrame:
    """Per patient, from the cycle table a clinician sees: observed_cycles, observed_losses,
    observed_median_loss_days and observed_shortest_loss_days (the day each loss was first seen,
    counted from the infusion that started the cycle)."""
    if cycles.empty:
        return pd.DataFrame(columns=["patient_id", "observed_cycles", "observed_losses",
                                     "observed_median_loss_days", "observed_shortest_loss_days"])
    pid = cycles["patient_id"].astype(str)
    event = cycles["event"].to_numpy(dtype=bool)
    seen = pd.Series(np.where(event, cycles["right_days"].to_numpy(dtype=float), np.nan), index=cycles.index)
    g = seen.groupby(pid.to_numpy())
    out = pd.DataFrame({"observed_cycles": pid.groupby(pid.to_numpy()).size(),
                        "observed_losses": g.count(),
                        "observed_median_loss_days": g.median().round(1),
                        "observed_shortest_loss_days": g.min().round(1)})
    out.index.name = "patient_id"
    return out.reset_index()


def _losses_by(left: np.ndarray, right: np.ndarray, event: np.ndarray, day: float) -> tuple[int, int]:
    """(cycles seen to lose response by `day`, cycles whose state at `day` is known)."""
    lost = event & (right <= day)
    held = left >= day
    return int(lost.sum()), int((lost | held).sum())


def _losses_at(left: np.ndarray, right: np.ndarray, event: np.ndarray, days: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """_losses_by at every one of `days` at once: (lost, known) arrays."""
    d = np.asarray(days, dtype=float)[:, None]
    lost = event[None, :] & (right[None, :] <= d)
    known = lost | (left[None, :] >= d)
    return lost.sum(axis=1), known.sum(axis=1)


def _unlikely(k: np.ndarray, n: np.ndarray, target: float, alpha: float) -> np.ndarray:
    """Would k losses among n known cycles be that unlikely (below `alpha`) if only (1 - target) of
    cycles lost response by then? (One call for any number of counts.)"""
    k, n = np.asarray(k), np.asarray(n)
    out = (n > 0) & (k > 0)
    out[out] = stats.binom.sf(k[out] - 1, n[out], 1.0 - target) < alpha
    return out


def _supported_days_each(groups: list, days, target: float, alpha: float = LOSS_TEST_ALPHA) -> np.ndarray:
    """_supported_days one patient at a time (the definition; used where a cycle's loss is not after its
    last day in response, which the counts of _supported_days assume)."""
    steps, ks, ns = [], [], []
    for (left, right, event), day in zip(groups, days):
        # the loss days are where the count changes: step down through them
        candidates = np.unique(np.concatenate([right[event & np.isfinite(right)], left[left > 0]]))
        candidates = candidates[candidates < day][::-1]   # np.unique sorts them
        k, n = _losses_at(left, right, event, candidates - 1e-9)
        steps.append(candidates)
        ks.append(k)
        ns.append(n)
    supported = ~_unlikely(np.concatenate(ks or [np.zeros(0, int)]), np.concatenate(ns or [np.zeros(0, int)]),
                           target, alpha)
    out = np.zeros(len(steps))
    at = 0
    for i, candidates in enumerate(steps):
        ok = supported[at:at + len(candidates)]
        at += len(candidates)
        if ok.any():
            out[i] = float(max(candidates[np.argmax(ok)] - 1e-9, 0.0))
    return out


def _supported_days(groups: list, days, target: float, alpha: float = LOSS_TEST_ALPHA) -> np.ndarray:
    """loss_supported_day for patients whose suggested `days` the observed losses contradict: for each
    group (left, right, event), the longest of its loss days (and days last seen in response) below its
    day at which the losses are not unlikely, less 1e-9 (0 if none). Every candidate day of every
    patient at once: the counts by ranks within each patient (no loop over patients); the same days
    as stepping down through each patient's candidates (_supported_days_each)."""
    n_groups = len(groups)
    out = np.zeros(n_groups)
    if n_groups == 0:
        return out
    lengths = np.array([len(g[0]) for g in groups], dtype=np.int64)
    left = np.concatenate([np.asarray(g[0], dtype=float) for g in groups])
    right = np.concatenate([np.asarray(g[1], dtype=float) for g in groups])
    event = np.concatenate([np.asarray(g[2], dtype=bool) for g in groups])
    gid = np.repeat(np.arange(n_groups), lengths)
    day = np.asarray(days, dtype=float)
    # known = lost | (left >= q) is counted as lost + (left >= q): exact when no loss is on or before its
    # own last day in response; patients with such a cycle go the long way
    odd = event & (right <= left)
    if odd.any():
        slow = np.zeros(n_groups, dtype=bool)
        slow[gid[odd]] = True
        out[slow] = _supported_days_each([g for g, s in zip(groups, slow) if s], day[slow], target, alpha)
    # each patient's distinct candidate days below their day
    from_right = event & np.isfinite(right)
    from_left = left > 0
    cv = np.concatenate([right[from_right], left[from_left]])
    cg = np.concatenate([gid[from_right], gid[from_left]])
    keep = cv < day[cg]
    if odd.any():
        keep &= ~slow[cg]
    cv, cg = cv[keep], cg[keep]
    order = np.lexsort((cv, cg))
    cv, cg = cv[order], cg[order]
    distinct = np.r_[True, (cg[1:] != cg[:-1]) | (cv[1:] != cv[:-1])] if len(cv) else np.zeros(0, dtype=bool)
    cv, cg = cv[distinct], cg[distinct]
    if not len(cv):
        return out
    q = cv - 1e-9
    # ranks of every value compared (exact float order), then one int64 key per (patient, rank)
    lost_v = right[event & ~np.isnan(right)]
    lost_g = gid[event & ~np.isnan(right)]
    left_ok = ~np.isnan(left)
    values, inverse = np.unique(np.concatenate([lost_v, left[left_ok], q]), return_inverse=True)
    K = np.int64(len(values) + 1)
    r_lost = inverse[:len(lost_v)]
    r_left = inverse[len(lost_v):len(lost_v) + int(left_ok.sum())]
    r_q = inverse[len(lost_v) + int(left_ok.sum()):]
    keys_lost = np.sort(lost_g * K + r_lost)
    keys_left = np.sort(gid[left_ok] * K + r_left)
    at_q = cg * K + r_q
    k = np.searchsorted(keys_lost, at_q, side="right") - np.searchsorted(keys_lost, cg * K, side="left")
    held = np.searchsorted(keys_left, (cg + 1) * K, side="left") - np.searchsorted(keys_left, at_q, side="left")
    supported = ~_unlikely(k, k + held, target, alpha)
    # the longest supported candidate of each patient
    best = np.full(n_groups, -np.inf)
    np.maximum.at(best, cg[supported], cv[supported])
    found = np.isfinite(best)
    out[found] = np.maximum(best[found] - 1e-9, 0.0)
    return out


def loss_supported_day(left: np.ndarray, right: np.ndarray, event: np.ndarray, day: float,
                       target: float, alpha: float = LOSS_TEST_ALPHA) -> float:
    """The longest day up to `day` that the patient's observed losses do not contradict: at a
    contradicted day, seeing that many losses among the cycles known at that day would have
    probability below `alpha` if only (1 - target) of cycles lost response by then."""
    left, right, event = np.asarray(left, dtype=float), np.asarray(right, dtype=float), np.asarray(event, dtype=bool)
    if not _unlikely(*_losses_at(left, right, event, np.array([day])), target, alpha)[0]:
        return day
    return float(_supported_days([(left, right, event)], [day], target, alpha)[0])


# --- the suggestion from the model ---------------------------------------------------------

def _weighted_quantile_on_grid(post: np.ndarray, q: float) -> np.ndarray:
    """Per row, the q-quantile of a distribution with masses `post` on MU_GRID, each mass spread
    evenly over its grid cell (so quantiles move smoothly between grid points)."""
    step = MU_GRID[1] - MU_GRID[0]
    cdf = np.cumsum(post, axis=1)
    j = np.argmax(cdf >= q - 1e-12, axis=1)
    rows = np.arange(post.shape[0])
    before = np.where(j > 0, cdf[rows, np.maximum(j - 1, 0)], 0.0)
    frac = np.clip((q - before) / np.maximum(post[rows, j], 1e-300), 0.0, 1.0)
    return MU_GRID[j] - step / 2 + frac * step


def _predictive_day(post: np.ndarray, within_sd: float, p_lost: float) -> np.ndarray:
    """Per row, the day d with P(next cycle lost by d) = p_lost under the posterior predictive."""
    def rows(post: np.ndarray) -> np.ndarray:
        lo = np.full(post.shape[0], math.log(0.5))
        hi = np.full(post.shape[0], math.log(5000.0))
        for _ in range(40):
            mid = (lo + hi) / 2
            # special.ndtr is stats.norm.cdf without the argument checks (the same values): 40 steps
            # over every patient's grid
            F = (post * special.ndtr((mid[:, None] - MU_GRID[None, :]) / within_sd)).sum(axis=1)
            below = F < p_lost
            lo = np.where(below, mid, lo)
            hi = np.where(below, hi, mid)
        return np.exp((lo + hi) / 2)

    # each row is its own search: halves of a large clinic on two threads (numpy and scipy let go of
    # the GIL in their array loops; the same days)
    if len(post) < 20_000 or FIT_THREADS < 2:
        return rows(post)
    half = len(post) // 2
    with ThreadPoolExecutor(2) as pool:
        return np.concatenate(list(pool.map(rows, (post[:half], post[half:]))))


def baseline_uncertainty(model: MeasuredDurability, baselines: pd.DataFrame) -> pd.Series:
    """Per patient, the SD on the log-days scale that the noise of the patient's baseline adds to
    their durability: the response line is half a noisy score (or of the mean of a few), and a
    line set too low by a fraction e is crossed earlier by about e / (the trend's slope at the
    crossing) on the log scale. The fitted model cannot see this error (it is the same in every
    cycle of the patient), so the range and the predictive day carry it explicitly."""
    b = baselines.set_index(baselines["patient_id"].astype(str))
    level = b.get("baseline_mean", b["baseline_score"]).astype(float)
    n = b["baseline_n"].astype(float).clip(lower=1.0) if "baseline_n" in b else pd.Series(1.0, index=b.index)
    rel = model.noise_sd_ / np.sqrt(n) / level.where(level > 0)
    if model.mode_ == "trend":
        from .durability.measured import DEPTHS, NO_RESPONSE

        w = model.depth_weights_[:NO_RESPONSE]
        slope = model.shape_ * float((w * np.log(2.0 - DEPTHS[:NO_RESPONSE])).sum() / max(w.sum(), 1e-12))
    else:
        slope = 1.0   # the trend is not seen in single-score cycles: a moderate slope, on the cautious side
    return (rel / max(slope, 0.2)).fillna(0.0)


def model_estimates(model: MeasuredDurability, patient_ids, target: float = 0.8,
                    range_level: float = RANGE_LEVEL, extra_sd: pd.Series | None = None) -> pd.DataFrame:
    """Per patient (those without scores in any cycle get the cohort's answer): point (the
    predictive day by which response is lost with probability 1 - target), low/high (the
    range_level posterior range of the patient's own (1 - target)-quantile of durability),
    median_days, weight_personal (share of the answer that is the patient's own), has_scores."""
    if not 0 < target < 1:
        raise ValueError("target must be a probability between 0 and 1 (e.g. 0.8)")
    ids, post = model.patient_posteriors()
    wanted = pd.Index(pd.Series(patient_ids, dtype=object).astype(str).unique())
    row = pd.Index(ids).get_indexer(wanted)
    prior = model.prior_mu()
    P = np.where((row >= 0)[:, None], post[np.maximum(row, 0)], prior[None, :])
    z = stats.norm.ppf(1.0 - target)
    tail = (1.0 - range_level) / 2
    extra = np.zeros(len(wanted)) if extra_sd is None else \
        pd.Series(extra_sd).reindex(wanted).fillna(0.0).to_numpy(dtype=float)
    mu_lo = _weighted_quantile_on_grid(P, tail)
    mu_hi = _weighted_quantile_on_grid(P, 1 - tail)
    mu_med = _weighted_quantile_on_grid(P, 0.5)
    mean = P @ MU_GRID
    var = P @ (MU_GRID ** 2) - mean ** 2
    # the baseline's own noise widens the range like an independent error on the log scale
    zr = stats.norm.ppf(1 - tail)
    half_lo = np.sqrt((mu_med - mu_lo) ** 2 + (zr * extra) ** 2)
    half_hi = np.sqrt((mu_hi - mu_med) ** 2 + (zr * extra) ** 2)
    prior_var = max(model.between_sd_ ** 2, 1e-9)
    out = pd.DataFrame({
        "patient_id": np.asarray(wanted, dtype=object),
        "point": np.exp(np.log(_predictive_day(P, model.within_sd_, 1.0 - target)) + z * (
            np.sqrt(model.within_sd_ ** 2 + extra ** 2) - model.within_sd_)),
        "central": np.exp(mu_med + model.within_sd_ * z),
        "low": np.exp(mu_med - half_lo + model.within_sd_ * z),
        "high": np.exp(mu_med + half_hi + model.within_sd_ * z),
        "median_days": np.exp(mu_med),
        "weight_personal": np.clip(1.0 - var / prior_var, 0.0, 1.0),
        "has_scores": row >= 0,
    })
    return out


def _days_text(v: float) -> str:
    return f"{v:.0f} day{'s' if round(v) != 1 else ''}"


@one_blas_thread()   # its products over every patient's grid: see one_blas_thread
def suggest_intervals(model: MeasuredDurability | None, course, cycles: pd.DataFrame, *, today: date,
                      target: float = 0.8, last_activity: pd.Series | None = None,
                      instrument: str | None = None, rules: OutcomeRules = DEFAULT_RULES,
                      read_scores: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per treated patient. Patients with status "suggested" carry a suggestion; the
    others carry their status (and why) and no date. See the module docstring for the rules.
    `read_scores`: model_scores(course, rules) when already at hand (the clinic model's)."""
    if not 0 < target < 1:
        raise ValueError("target must be a probability between 0 and 1 (e.g. 0.8)")
    states = patient_states(course, today, last_activity, rules)
    evidence = observed_evidence(cycles)
    out = states.merge(evidence, on="patient_id", how="left")
    for c in ("observed_cycles", "observed_losses"):
        out[c] = out[c].fillna(0).astype(int)
    eligible = (out["status"] == "suggested").to_numpy().copy()  # pandas may hand back a read-only view
    if model is None:
        # no model (too few patients or scores): nobody gets a number, and the reason is given
        out.loc[eligible, "status"] = "no_model"
        eligible[:] = False
    est = model_estimates(model, out.loc[eligible, "patient_id"], target,
                          extra_sd=baseline_uncertainty(model, course.baselines)) if eligible.any() else None
    n = len(out)
    cols = {k: np.full(n, np.nan) for k in ("suggested_interval_days", "interval_low_days", "interval_high_days",
                                             "median_days", "weight_personal", "trend_days",
                                             "estimated_durability_days")}
    source = np.full(n, "", dtype=object)
    note = np.full(n, "", dtype=object)
    has_scores = np.zeros(n, dtype=bool)
    if est is not None:
        rows = np.flatnonzero(eligible)
        # the suggestion stays within weekly..six-monthly; the range is the estimate's own (never
        # clipped into "182 to 182 days"), in whole days with the high end rounded up
        point = np.clip(est["point"].to_numpy(), MIN_SUGGESTION_DAYS, MAX_SUGGESTION_DAYS)
        low = np.maximum(est["low"].to_numpy(), 1.0)
        high = np.minimum(np.ceil(est["high"].to_numpy()), MAX_RANGE_DAYS)
        cols["trend_days"][rows] = np.floor(point)
        cols["estimated_durability_days"][rows] = np.floor(est["central"].to_numpy())
        cols["median_days"][rows] = np.round(est["median_days"].to_numpy(), 1)
        cols["weight_personal"][rows] = est["weight_personal"].to_numpy()
        has_scores[rows] = est["has_scores"].to_numpy()
        # each patient's cycles as one slice of arrays sorted by patient (their table order kept)
        if len(cycles):
            codes, uniques = pd.factorize(cycles["patient_id"].astype(str), sort=False)
            order = np.argsort(codes, kind="stable")
            c_left = cycles["left_days"].to_numpy(float)[order]
            c_right = cycles["right_days"].to_numpy(float)[order]
            c_event = cycles["event"].to_numpy(bool)[order]
            c_start = np.r_[0, np.cumsum(np.bincount(codes, minlength=len(uniques)))]
            c_events = np.add.reduceat(c_event.astype(int), c_start[:-1]) if len(c_event) else np.zeros(0, int)
            where = pd.Index(uniques).get_indexer(out["patient_id"].to_numpy()[rows].astype(str))
        else:
            where = np.full(len(rows), -1)
        # the cap by observed losses: tested at the suggested day for every patient with two losses or
        # more at once; only where that day is contradicted are the earlier days stepped through
        days = np.floor(point)
        tested = (where >= 0) & (c_events[np.maximum(where, 0)] >= 2) if len(cycles) else np.zeros(len(rows), bool)
        needs_cap = np.zeros(len(rows), dtype=bool)
        if tested.any():
            t_rows = np.flatnonzero(tested)
            j = where[t_rows]
            lengths = c_start[j + 1] - c_start[j]
            at = np.repeat(np.arange(len(t_rows)), lengths)
            cyc = np.concatenate([np.arange(c_start[i], c_start[i + 1]) for i in j])
            d = days[t_rows][at]
            lost = c_event[cyc] & (c_right[cyc] <= d)
            known = lost | (c_left[cyc] >= d)
            k_lost = np.bincount(at, weights=lost, minlength=len(t_rows))
            n_known = np.bincount(at, weights=known, minlength=len(t_rows))
            needs_cap[t_rows[_unlikely(k_lost.astype(int), n_known.astype(int), target, LOSS_TEST_ALPHA)]] = True
        capped_at = np.zeros(len(rows))
        if needs_cap.any():
            cap_rows = np.flatnonzero(needs_cap)
            groups = [(c_left[c_start[where[k]]:c_start[where[k] + 1]], c_right[c_start[where[k]]:c_start[where[k] + 1]],
                       c_event[c_start[where[k]]:c_start[where[k] + 1]]) for k in cap_rows]
            capped_at[cap_rows] = _supported_days(groups, days[cap_rows], target)
        weights = est["weight_personal"].to_numpy()
        n_cycles = out["observed_cycles"].to_numpy()
        for k, r in enumerate(rows):
            j = where[k]
            day = float(np.floor(point[k]))
            capped = day
            if needs_cap[k]:
                sl = slice(c_start[j], c_start[j + 1])
                capped = float(capped_at[k])
                capped = max(float(np.floor(capped)), MIN_SUGGESTION_DAYS) if capped < day else day
            w = float(weights[k])
            n_cyc = int(n_cycles[r])
            if capped < day:
                k_lost, n_known = _losses_by(c_left[sl], c_right[sl], c_event[sl], day)
                source[r] = "own losses"
                note[r] = (f"The score trend alone points to {_days_text(day)}, but {k_lost} of this patient's "
                           f"{n_known} cycles followed that long had already lost response by then, more than the "
                           f"{100 * (1 - target):.0f}% the target allows. The suggestion is held at "
                           f"{_days_text(capped)}, the longest interval these observed losses support.")
            elif w < COHORT_WEIGHT:
                source[r] = "cohort"
                note[r] = (f"Mostly the clinic's typical pattern: this patient's own history is still short "
                           f"({n_cyc} response cycle{'s' if n_cyc != 1 else ''}).")
            else:
                source[r] = "score trend"
                note[r] = (f"From this patient's own scores after each infusion ({n_cyc} response "
                           f"cycle{'s' if n_cyc != 1 else ''}), read as a trend that crosses the response line, "
                           f"combined with the clinic's pattern ({100 * w:.0f}% of the answer is the patient's own).")
            cols["suggested_interval_days"][r] = capped
            cols["interval_low_days"][r] = min(np.floor(low[k]), capped)
            cols["interval_high_days"][r] = max(high[k], capped, np.floor(low[k]) + 1)
    for k, v in cols.items():
        out[k] = v
    out["estimate_source"] = source
    out["estimate_note"] = note
    out["has_trajectory"] = has_scores
    w = out["weight_personal"].to_numpy()
    out["basis"] = np.where(np.isnan(w), "", np.where(w >= PERSONAL_WEIGHT, "personal",
                                                      np.where(w < COHORT_WEIGHT, "cohort", "mixed")))
    out["n_cycles"] = out["observed_cycles"]
    out["n_events"] = out["observed_losses"]
    out["next_due_on"] = out["last_infusion_on"] + pd.to_timedelta(out["suggested_interval_days"], unit="D")
    out["status_text"] = out["status"].map(STATUS_TEXT).fillna(out["status"])
    taper = taper_signals(course, cycles, out, model, rules, read_scores=read_scores)
    out = out.merge(taper, on="patient_id", how="left")
    out["taper"] = out["taper"].fillna("none")
    out["taper_reason"] = out["taper_reason"].fillna("")
    out["target"] = target
    out["instrument"] = instrument or course.instrument
    return out


# --- taper: over-treatment and lengthening durability ---------------------------------------

def _bh(p: np.ndarray, q: float) -> np.ndarray:
    """Benjamini-Hochberg: which p-values are discoveries at false discovery rate q."""
    n = len(p)
    if n == 0:
        return np.zeros(0, dtype=bool)
    order = np.argsort(p)
    passed = p[order] <= q * np.arange(1, n + 1) / n
    k = np.flatnonzero(passed).max() + 1 if passed.any() else 0
    out = np.zeros(n, dtype=bool)
    out[order[:k]] = True
    return out


# what _settled_losses and lengthening_tests read of the cycle table
LOSS_COLUMNS = ("patient_id", "cycle_no", "right_days", "event", "phase", "post_induction")


def _settled_losses(cycles: pd.DataFrame) -> pd.DataFrame:
    """The cycles after induction (or its last, post_induction) that ended in a loss of response."""
    settled = cycles
    if "phase" in cycles.columns and "post_induction" in cycles.columns:
        settled = cycles[(cycles["phase"].astype(str) != "induction") | cycles["post_induction"].fillna(False).astype(bool)]
    return settled[settled["event"].to_numpy(dtype=bool)]


def lengthening_tests(cycles: pd.DataFrame, trend: pd.DataFrame, min_losses: int = TREND_MIN_LOSSES,
                      min_cycles: int = TREND_MIN_CYCLES) -> pd.DataFrame:
    """Is a patient's durability lengthening? `trend`: per patient, the one-sided test of a durability
    that grows from cycle to cycle (MeasuredDurability.trend_tests: patient_id, trend_cycles,
    slope_per_cycle, trend_p), which reads every cycle's scores, censored cycles too. Tested: patients
    with at least `min_cycles` such cycles and `min_losses` losses of response among their cycles after
    induction; flagged: the Benjamini-Hochberg discoveries at TREND_FDR over the tested patients (a
    clinic whose patients' durability never changes should see about no flags; issue 12 found 9 from
    "each loss later than the one before", and the loss days alone cannot show lengthening: on a fixed
    schedule a cycle that lasts beyond its interval ends censored, never as a later loss).
    recent_loss_days: the median day of the patient's last three losses (None without)."""
    lost = _settled_losses(cycles[[c for c in LOSS_COLUMNS if c in cycles.columns]]).sort_values(["patient_id", "cycle_no"])
    lost_pid = lost["patient_id"].astype(str)
    by_patient = lost.groupby(lost_pid)["right_days"]
    losses = by_patient.size()
    # the median of each patient's last three losses
    last3 = by_patient.cumcount(ascending=False).to_numpy() < 3
    recent = lost["right_days"].astype(float)[last3].groupby(lost_pid[last3]).median()
    out = trend.assign(patient_id=trend["patient_id"].astype(str))
    out = out[out["trend_cycles"] >= min_cycles].copy()
    out["trend_losses"] = losses.reindex(out["patient_id"]).fillna(0).astype(int).to_numpy()
    out = out[out["trend_losses"] >= min_losses].reset_index(drop=True)
    out["recent_loss_days"] = recent.reindex(out["patient_id"]).to_numpy()
    out["lengthening"] = _bh(out["trend_p"].to_numpy(float), TREND_FDR) if len(out) else np.zeros(0, dtype=bool)
    return out


def _text_isin(ids: pd.Series, wanted) -> np.ndarray:
    """ids.astype(str).isin(wanted) as one Arrow is_in: pandas' isin of a text column first turns
    each wanted value into an Arrow scalar in Python (0.3 s for 30,000 patients, each call)."""
    text = ids.astype(str)
    try:
        column = pa.array(text.array)
    except (TypeError, pa.ArrowException):
        return text.isin(wanted).to_numpy()
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        return text.isin(wanted).to_numpy()
    value_set = pa.array(pd.Index(wanted).astype(str).to_numpy(dtype=object, na_value=None), type=column.type)
    return np.asarray(pc.is_in(column, value_set=value_set).fill_null(False), dtype=bool)


def taper_signals(course, cycles: pd.DataFrame, suggestions: pd.DataFrame, model: MeasuredDurability | None,
                  rules: OutcomeRules = DEFAULT_RULES, read_scores: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per suggested patient: taper ("none", "stretch", "consider_pause"), taper_reason (the
    evidence, in words) and taper_interval_days (the longer interval to try).

    Over-treatment ("stretch"): response held through each of the last TAPER_CYCLES scheduled
    intervals with margin (no loss inside any of them; the pre-dose score at the end of each,
    taken within 14 days of the infusion, in response, and on average at least
    TAPER_MARGIN_POINTS inside the response line),
    and the patient's estimated durability is at least TAPER_FACTOR x the current interval.
    "consider_pause": the same, in remission before each of those infusions, with durability at
    least twice the interval (SUSTAIN-2 stepped down to the least frequent schedule that kept
    response; Andrade 2017 asks to individualise). Lengthening durability ("stretch"): only when
    lengthening_tests finds the trend unlikely to be noise.
    """
    from . import outcomes

    sug = suggestions[suggestions["status"] == "suggested"].set_index("patient_id")
    empty = pd.DataFrame({"patient_id": pd.Series(dtype=object), "taper": pd.Series(dtype=object),
                          "taper_reason": pd.Series(dtype=object), "taper_interval_days": pd.Series(dtype=float)})
    if sug.empty:
        return empty
    inf = course.infusions
    base = course.baselines.set_index("patient_id")["baseline_score"]
    pid = inf["patient_id"].astype(str).to_numpy()
    keep = pd.Series(pid).isin(sug.index).to_numpy()  # hashed: np.isin compares object arrays pairwise
    f = pd.DataFrame({"patient_id": pid[keep], "at": inf["at"].to_numpy()[keep],
                      "pre": inf["pre_dose_score"].to_numpy(float)[keep],
                      "pre_at": inf["pre_dose_at"].to_numpy()[keep],
                      "loss_in_segment": inf["right_at"].notna().to_numpy()[keep]})
    rows = []
    K = TAPER_CYCLES
    # each patient's last K + 1 infusions as one row of (patients, K + 1) arrays (patients in order of
    # their first infusion here, infusions in the course's order)
    codes, uniques = pd.factorize(f["patient_id"], sort=False)
    counts = np.bincount(codes, minlength=len(uniques))
    order = np.argsort(codes, kind="stable")
    ends_at = np.cumsum(counts)
    enough = np.flatnonzero(counts >= K + 1)
    take = order[ends_at[enough][:, None] - (K + 1) + np.arange(K + 1)[None, :]]
    at = f["at"].to_numpy()[take]
    pre_all = f["pre"].to_numpy(float)[take]
    pre_at = f["pre_at"].to_numpy()[take]
    loss = f["loss_in_segment"].to_numpy(bool)[take]
    patients = np.asarray(uniques, dtype=object)[enough]
    interval = (at[:, 1:] - at[:, :-1]) / np.timedelta64(1, "D")
    line = base.reindex(patients).to_numpy(dtype=float) * (1 - rules.response_fall)
    fresh = (at[:, 1:] - pre_at[:, 1:]) <= np.timedelta64(14, "D")
    pre = pre_all[:, 1:]
    # each pre-dose score in response, and on average well inside the line (one noisy score
    # near the line neither makes nor breaks it)
    with np.errstate(invalid="ignore"):
        margin_ok = fresh.all(axis=1) & (pre <= line[:, None]).all(axis=1) & (pre.mean(axis=1) <= line - TAPER_MARGIN_POINTS)
    held = ~loss[:, :-1]
    current = np.median(interval, axis=1)
    # the central estimate of the day the target is reached (the middle of the range), not the
    # cautious predictive day: the question is whether durability is beyond the interval
    estimate = sug["estimated_durability_days"].reindex(patients).to_numpy(dtype=float)
    with np.errstate(invalid="ignore"):
        over_treated = held.all(axis=1) & margin_ok & (estimate >= TAPER_FACTOR * current)
    remission = outcomes.is_remission(pre, course.instrument, rules).all(axis=1)
    for i in np.flatnonzero(over_treated):
        try_days = float(np.floor(min(estimate[i], 1.5 * current[i])))
        scores = ", ".join(f"{v:g}" for v in pre[i])
        reason = (f"response held through each of the last {K} intervals of about {current[i]:.0f} days "
                  f"(pre-dose {course.instrument} {scores}; response line {line[i]:.1f}), and this patient's "
                  f"estimated durability is {estimate[i]:.0f} days")
        kind = "consider_pause" if remission[i] and estimate[i] >= 2 * current[i] else "stretch"
        rows.append((patients[i], kind, reason + f": try {try_days:.0f} days", try_days))
    over = pd.DataFrame(rows, columns=["patient_id", "taper", "taper_reason", "taper_interval_days"])
    # the per-infusion working arrays (one Python string per infusion among them) let go before the trend
    # tests make their grid: at 100,000 patients they were ~0.1 GB under the suggestions' peak
    del pid, keep, f, codes, order
    trend = None
    if len(cycles) and model is not None:
        scores = model_scores(course, rules) if read_scores is None else read_scores
        # only the columns the loss counts and lengthening_tests read: the selection takes 6 of the cycle
        # table's columns, not all of them (100,000 patients: 0.94 M cycles, Arrow text among them)
        mine = cycles[[c for c in LOSS_COLUMNS if c in cycles.columns]]
        mine = mine[_text_isin(mine["patient_id"], sug.index)]
        # only patients lengthening_tests can test (TREND_MIN_LOSSES losses after induction) are read:
        # each patient's test is their own, and the others' were computed only to be dropped there
        # (about half the tested scores at 100,000 patients)
        # of the cycles only their settled losses are read from here on (lengthening_tests keeps those of `mine`
        # too): the other cycles are let go before the trend tests make their grid
        mine = _settled_losses(mine)
        losses = mine["patient_id"].astype(str).value_counts()
        testable = losses.index[losses.to_numpy() >= TREND_MIN_LOSSES]
        # of the tested patients' scores, only the columns the trend tests read (measured.REQUIRED) are copied
        scores = scores[[c for c in REQUIRED if c in scores.columns]]
        scores = scores[_text_isin(scores["patient_id"], testable)]
        # what the selections above freed (Arrow's pool keeps its text; glibc its heap pieces), handed back before
        # the trend tests' grid is mapped beside it
        memory.release_freed()
        trend = lengthening_tests(mine, model.trend_tests(scores, min_cycles=TREND_MIN_CYCLES))
    if trend is not None and len(trend):
        t = trend[trend["lengthening"] & ~trend["patient_id"].isin(over["patient_id"])]
        extra = []
        for r in t.itertuples(index=False):
            estimate = float(sug.loc[r.patient_id, "suggested_interval_days"])
            try_days = float(np.floor(min(max(r.recent_loss_days, estimate), 1.5 * estimate)))
            extra.append((r.patient_id, "stretch",
                          f"response has lasted longer in later cycles, its loss coming later over time "
                          f"({r.trend_cycles} cycles, {r.trend_losses} losses; trend test p = {r.trend_p:.3f}, "
                          f"unlikely to be noise at a {100 * TREND_FDR:.0f}% false discovery rate); the last losses "
                          f"came after about {r.recent_loss_days:.0f} days: try {try_days:.0f} days",
                          try_days))
        over = pd.concat([over, pd.DataFrame(extra, columns=over.columns)], ignore_index=True)
    return over if len(over) else empty


# --- one model per data version, the same answer for everyone ---------------------------------

@dataclass
class ClinicModel:
    """The whole clinic's cycles and durability model for one instrument and data version.
    The model is fitted on first use of `model` (a bad --by or an empty clinic costs no fit)."""
    instrument: str
    version: tuple
    cycles: pd.DataFrame           # the cycle table clinicians see (course.cycles_from_course)
    course: object
    last_activity: pd.Series | None  # per patient: latest assessment of any instrument (None: kept no course)
    scores: pd.DataFrame           # course.cycle_scores of the settled cycles, line = latent_line
    scale_max: float
    registry_noise_sd: float | None
    fit_patients: int = 250
    _fitted: tuple | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _fit(self) -> tuple:
        with self._lock:
            if self._fitted is None:
                try:
                    m = MeasuredDurability(registry_noise_sd=self.registry_noise_sd, fit_patients=self.fit_patients).fit(
                        self.scores, scale_max=self.scale_max)
                    self._fitted = (m, "")
                except ValueError as exc:
                    self._fitted = (None, str(exc))
            return self._fitted

    @property
    def model(self) -> MeasuredDurability | None:
        return self._fit()[0]

    @property
    def note(self) -> str:
        """Why there is no model, or ""."""
        return self._fit()[1]


@dataclass
class ClinicSuggestions:
    instrument: str
    target: float
    today: date
    clinic: ClinicModel
    table: pd.DataFrame            # suggest_intervals: one row per treated patient

    def for_patients(self, patient_ids) -> pd.DataFrame:
        """The rows of these patients only (what one viewer may see)."""
        wanted = set(pd.Series(list(patient_ids), dtype=object).astype(str))
        return self.table[self.table["patient_id"].isin(wanted)].reset_index(drop=True)

    @property
    def suggested(self) -> pd.DataFrame:
        return self.table[self.table["status"] == "suggested"].reset_index(drop=True)


_MODELS: "OrderedDict[tuple, ClinicModel]" = OrderedDict()
_SUGGESTIONS: "OrderedDict[tuple, ClinicSuggestions]" = OrderedDict()
_BUILDING: dict = {}
_LOCK = threading.Lock()
_KEEP = 4


def forget_fits() -> None:
    """Empty the in-process cache of fits (the benchmark times a fit from scratch)."""
    with _LOCK:
        _MODELS.clear()
        _SUGGESTIONS.clear()
    # what they held (100,000 patients: ~150 MB of it freed into glibc's heap and Arrow's pool), handed back
    # before whatever comes next (a fresh fit) stacks on it
    memory.release_freed()


def _once(cache: OrderedDict, key, build):
    """cache[key], built by `build()` once even when several sessions ask at the same time."""
    with _LOCK:
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        lock = _BUILDING.setdefault(key, threading.Lock())
    with lock:
        with _LOCK:
            if key in cache:
                return cache[key]
        value = build()
        with _LOCK:
            cache[key] = value
            while len(cache) > _KEEP:
                cache.popitem(last=False)
            _BUILDING.pop(key, None)
        return value


def model_scores(crs, rules: OutcomeRules = DEFAULT_RULES) -> pd.DataFrame:
    """The scores the measurement model reads (course.cycle_scores of `crs`, a course.Course)."""
    from . import course

    # induction cycles before the last are left out: response is still building in them (`settled`);
    # the model's line is the mean of the baseline-window scores (the best estimate of the start)
    # only cycles started by an infusion given in response: a "recaptured" cycle is in the table only
    # because its first score was back in response, so that score is chosen by the cycle's own outcome
    # (with one score per cycle, MADRS only at visits, such a cycle can never be seen to lose response).
    # Read as a measurement it made the cohort median 24-31% too long with MADRS at visits and 11% too
    # short with fortnightly PHQ-9 on the simulator (docs/durability.md); the counts stay every cycle's.
    # Both filters applied as the table is made (100,000 patients: the whole table, ~0.15 GB, never made)
    scores = course.cycle_scores(crs, rules, settled_in_response=True)
    return scores.assign(line=lambda f: f["latent_line"])


def fit_clinic_model(frames: dict, instrument: str = scales.PRIMARY, version: tuple = (),
                     rules: OutcomeRules = DEFAULT_RULES, fit_patients: int = 250, *,
                     built=None, cycles: pd.DataFrame | None = None, keep_course: bool = True) -> ClinicModel:
    """The model from whole-clinic frames (patients, treatments, assessments of every instrument,
    attributes), as analytics.access.DataAccess returns them. `built`: the course (course.build_course)
    of these frames, instrument and rules when the caller has it already, and `cycles` its cycle table
    (course.cycles_from_course with these patients and attributes; extra columns are kept): neither is
    built again. `keep_course`: False for a caller that reads only the model and the cycles (no suggestions):
    the model keeps no course (course None) and no last activity (None), and of its scores only the columns its
    fit reads (measured.REQUIRED, numbered afresh), so nothing else of them is held through the fit."""
    from . import course

    code = scales.get(instrument).code
    a = frames["assessments"]
    if built is None:
        mine = a[a["instrument"] == code] if "instrument" in a.columns else a
        # with the cycles given, the course columns only they read are not built
        built = course.build_course(frames["treatments"], mine, code, rules, columns=_model_course_columns(cycles is None))
    elif built.instrument != code:
        raise ValueError(f"fit_clinic_model: the course given is of {built.instrument}, not {code}")
    crs = built
    if cycles is None:
        cycles = course.cycles_from_course(crs, frames.get("patients"), frames.get("attributes"), rules)
    if not keep_course:
        # read only by the suggestions, which a model without its course never makes (100,000 patients: the
        # grouping of 4.7 M assessment rows by their text ids, ~0.1 GB, under the estimate's peak)
        last_activity = None
    elif "last_activity" in frames:  # read apart (every instrument's latest), when `assessments` holds one instrument
        last_activity = frames["last_activity"]
    else:
        last_activity = pd.to_datetime(a["administered_at"]).groupby(a["patient_id"].astype(str)).max() \
            if len(a) else pd.Series(dtype="datetime64[us]")
    scores = model_scores(crs, rules)
    if not keep_course:
        # a model without its course makes no suggestions: its scores are read by the fit only, and only the fit's
        # columns are held through it (a copy: a selection would share the table's blocks; 100,000 patients: the
        # other four columns and the row index, ~40 MB, let go before the fit's peak)
        scores = scores[list(REQUIRED)].copy()
        scores.index = pd.RangeIndex(len(scores))   # (the fit reads the columns' values only)
    crs = kept_course(crs) if keep_course else None
    del built
    memory.release_freed()  # the whole course's other columns: heap pieces glibc would keep resident
    scale = scales.get(code)
    sem = float(scale.reference_sd * math.sqrt(1.0 - scale.reliability)) \
        if scale.reference_sd is not None and scale.reliability is not None else None
    return ClinicModel(code, version, cycles, crs, last_activity, scores, float(scale.total_max), sem,
                       fit_patients=fit_patients)


# The course's columns the suggestions read (patient_states, taper_signals, baseline_uncertainty and
# model_scores): a clinic model keeps these only (10 of 27 infusion columns, 7 of 15 score columns;
# the whole course of 100,000 patients is about 0.4 GB, held beside the workspace's tables).
KEPT_INFUSION_COLUMNS = ("patient_id", "code", "at", "phase", "pre_dose_score", "pre_dose_at", "right_at",
                         "starts_cycle", "last_induction", "start_kind")
KEPT_SCORE_COLUMNS = ("patient_id", "code", "at", "responding", "segment_row", "baseline_score", "total")


# What course.cycle_scores reads of a course (model_scores).
SCORED_COLUMNS = {"infusions": ("patient_id", "code", "at", "phase", "starts_cycle", "last_induction", "start_kind"),
                  "scores": ("patient_id", "code", "at", "segment_row", "baseline_score", "total")}


def _model_course_columns(for_cycles: bool = True) -> dict:
    """The course columns a clinic model is built from: its cycles (unless `for_cycles` is False: the cycle
    table is given), its scores and what it keeps."""
    from . import course

    cycled = course.CYCLE_COLUMNS_READ if for_cycles else {"infusions": (), "scores": ()}
    return {part: tuple(dict.fromkeys(cycled[part] + SCORED_COLUMNS[part] + kept))
            for part, kept in (("infusions", KEPT_INFUSION_COLUMNS), ("scores", KEPT_SCORE_COLUMNS))}


def scored_course(crs):
    """The course with only the columns `model_scores` reads (course.Course): for a caller that has made its
    cycle table and holds the course only for the model's scores (bench.durability_estimate)."""
    from . import course

    inf = crs.infusions[[c for c in SCORED_COLUMNS["infusions"] if c in crs.infusions.columns]]
    sc = crs.scores[[c for c in SCORED_COLUMNS["scores"] if c in crs.scores.columns]]
    return course.Course(crs.instrument, inf, sc, crs.baselines, crs.patients_first_response)


def kept_course(crs):
    """The course with only the columns a clinic model's suggestions read (course.Course)."""
    from . import course

    inf = crs.infusions[[c for c in KEPT_INFUSION_COLUMNS if c in crs.infusions.columns]]
    # its labels repeated on every infusion as categoricals of their sorted values (100,000 patients: 1.5 M rows,
    # ~50 MB of Arrow text held through the fit and the trend tests); their readers (patient_states, cycle_scores)
    # compare them with a value or take their values, which give the same as the text's
    course.labels_as_categories(inf, [c for c in KEPT_LABEL_COLUMNS if c in inf.columns and _is_arrow_text(inf[c])])
    sc = crs.scores[[c for c in KEPT_SCORE_COLUMNS if c in crs.scores.columns]]
    return course.Course(crs.instrument, inf, sc, crs.baselines, crs.patients_first_response)


KEPT_LABEL_COLUMNS = ("phase", "start_kind")


def _is_arrow_text(values: pd.Series) -> bool:
    return isinstance(values.dtype, pd.StringDtype) and values.dtype.storage == "pyarrow"


def clinic_model(clinic_data, instrument: str = scales.PRIMARY, rules: OutcomeRules = DEFAULT_RULES,
                 kept: Callable[[], ClinicModel | None] | None = None) -> ClinicModel:
    """The whole clinic's model, fitted once per data version. `clinic_data` reads every patient's
    rows: an analytics.access.DataAccess with the system scope (its db, data_version(), patients(),
    treatments(), assessments(), attributes(), last_assessed()); the caller opens it, this module reads no database.
    Every viewer gets rows of this one fit; its aggregate parameters identify no one. `kept`: gives
    the model of this version made before (the dashboard's saved tables) or None; asked before fitting."""
    version = tuple(clinic_data.data_version())
    key = (str(clinic_data.db), version, instrument, rules)

    def build() -> ClinicModel:
        from . import course

        earlier = kept() if kept is not None else None
        if earlier is not None and tuple(earlier.version) == version and earlier.instrument == instrument:
            return earlier
        # Only this instrument's assessments, and every instrument's latest per patient: the model needs no
        # more, and the whole assessments frame is the largest of all (100,000 patients: 0.5 GB of 0.6).
        # `held_cycles` (a clinic_data that serves rows a workspace already holds, screens.workspace): the
        # cycle table of these rows, instrument and rules when it is at hand, else None.
        held = getattr(clinic_data, "held_cycles", None)
        return fit_clinic_model(
            {"patients": clinic_data.patients(), "treatments": clinic_data.treatments(),
             "assessments": clinic_data.assessments(instrument=instrument, columns=course.assessment_columns(instrument)),
             "attributes": clinic_data.attributes(),
             "last_activity": clinic_data.last_assessed()},
            instrument, version, rules, cycles=held(instrument, rules) if held is not None else None)
    return _once(_MODELS, key, build)


def held_clinic_model(db, version: tuple, instrument: str, rules: OutcomeRules = DEFAULT_RULES,
                      kept: Callable[[], ClinicModel | None] | None = None) -> ClinicModel | None:
    """The model of exactly this data version if this process holds it (or `kept()` gives it: a saved file),
    without fitting anything: None otherwise. For tables of an earlier version still being shown while the
    current version's are built, which must be read with the model they were built with."""
    key = (str(db), tuple(version), instrument, rules)
    with _LOCK:
        if key in _MODELS:
            return _MODELS[key]
    found = kept() if kept is not None else None
    if found is None or tuple(found.version) != tuple(version) or found.instrument != instrument:
        return None
    return _once(_MODELS, key, lambda: found)


def held_instruments(db, version: tuple) -> list[str]:
    """The instruments whose model of this database and data version this process holds (default rules)."""
    with _LOCK:
        return [key[2] for key in _MODELS if key[0] == str(db) and key[1] == tuple(version) and key[3] == DEFAULT_RULES]


def clinic_suggestions(clinic_data, instrument: str = scales.PRIMARY, target: float = 0.8,
                       today: date | None = None, rules: OutcomeRules = DEFAULT_RULES) -> ClinicSuggestions:
    """Suggestions for every treated patient of the clinic, from the one model of this data
    version (clinic_model); `today` decides who is still in active care and what is due."""
    if not 0 < target < 1:
        raise ValueError("target must be a probability between 0 and 1 (e.g. 0.8)")
    today = today or date.today()
    key = (str(clinic_data.db), tuple(clinic_data.data_version()), instrument, float(target), today, rules)

    def build() -> ClinicSuggestions:
        cm = clinic_model(clinic_data, instrument, rules)
        table = suggest_intervals(cm.model, cm.course, cm.cycles, today=today, target=target,
                                  last_activity=cm.last_activity, instrument=cm.instrument, rules=rules,
                                  read_scores=cm.scores)
        memory.release_freed()  # the fit's and the taper tests' working arrays
        return ClinicSuggestions(cm.instrument, float(target), today, cm, table)
    return _once(_SUGGESTIONS, key, build)
