"""Cohort durability summary and covariate model from the cycles table.

Input: one row per durability cycle (analytics/course.py builds it): patient_id,
left_days (last assessment still in response), right_days (first assessment out
of response; inf when right-censored), event, censor_reason, post_induction and
covariate columns. The loss of response lies in (left_days, right_days].

* Curve and quantiles: Turnbull NPMLE (turnbull.py). Dating the loss at the
  later assessment would bias durations upward by about half the assessment gap.
* CIs: cluster bootstrap over patients (bootstrap.py), percentile intervals.
* Subgroup test: Finkelstein's interval-censored log-rank scores with a
  patient-cluster robust variance (ictest.robust_score_test).
* Covariate model: interval-censored Weibull AFT with patient-clustered sandwich
  SEs (weibull.py); exp(coef) is a time ratio.
"""
from __future__ import annotations

import copy
import math
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd

from .bootstrap import aggregate_days, cluster_bootstrap_turnbull, patient_bootstrap_weights
from .ictest import finkelstein_scores, robust_score_test
from .weibull import weibull_aft

REQUIRED = ("patient_id", "left_days", "right_days")
MAX_EXCLUSION_EXAMPLES = 20
QUARTILE_PROBS = (0.25, 0.5, 0.75)
# Above this many patients the bootstrap runs at most LARGE_COHORT_BOOT replicates and
# CIs are estimate +/- 1.96 bootstrap SD: at that size the sampling distribution is
# close to normal and 50 replicates pin the SD down to ~10%, in a fraction of the time.
LARGE_COHORT_PATIENTS = 20_000
LARGE_COHORT_BOOT = 50
PARALLEL_CYCLES = 50_000   # from this many cycles, the whole and post-induction summaries run side by side
BOOT_WORKERS = 2   # below it, each summary's bootstrap replicates run on this many threads


def _clean(cycles: pd.DataFrame) -> tuple[pd.DataFrame, list[dict], int]:
    """Keep valid cycles; return (good rows, up to 20 example exclusions, number excluded)."""
    missing = [c for c in REQUIRED if c not in cycles.columns]
    if missing:
        raise ValueError(f"cohort_durability: the cycles table lacks column(s) {missing}")
    left = pd.to_numeric(cycles["left_days"], errors="coerce").to_numpy(dtype=float)
    right = pd.to_numeric(cycles["right_days"], errors="coerce").to_numpy(dtype=float)
    pid = cycles["patient_id"]
    reason = np.full(len(cycles), "", dtype=object)
    reason[np.asarray(pid.isna())] = "patient_id is missing"
    bad_left = np.isnan(left) | ~np.isfinite(left) | (left < 0)
    reason[(reason == "") & bad_left] = "left_days must be a finite number >= 0"
    reason[(reason == "") & np.isnan(right)] = "right_days is missing (use inf for right-censored)"
    reason[(reason == "") & ~bad_left & ~np.isnan(right) & (right <= left)] = "right_days must exceed left_days"
    if "event" in cycles.columns:
        ev = cycles["event"]
        known = ev.notna().to_numpy()
        flag = ev.where(ev.notna(), False).astype(bool).to_numpy()
        disagree = known & (flag != np.isfinite(right))
        reason[(reason == "") & disagree] = "event flag disagrees with right_days (event means right_days is finite)"
    bad = reason != ""
    examples = [{"row": int(i), "cycle_no": _json_scalar(cycles["cycle_no"].iloc[i]) if "cycle_no" in cycles else None,
                 "reason": reason[i]} for i in np.nonzero(bad)[0][:MAX_EXCLUSION_EXAMPLES]]
    good = cycles.loc[~bad].copy()
    good["left_days"] = left[~bad]
    good["right_days"] = right[~bad]
    return good, examples, int(bad.sum())


def _json_scalar(v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if hasattr(v, "item"):
        return v.item()
    return v


def _group_key(value) -> str:
    """JSON object key for a group value: 2.0 -> "2" (integer columns with gaps become floats)."""
    v = _json_scalar(value)
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v)


def _r(v, nd=2):
    return None if v is None else round(float(v), nd)


def _summary(df: pd.DataFrame, weights: np.ndarray | None, ci: str, workers: int = 1) -> dict:
    n_cycles = int(len(df))
    n_events = int(np.isfinite(df["right_days"].to_numpy()).sum())
    base = {"n_patients": int(df["patient_id"].nunique()), "n_cycles": n_cycles,
            "n_events": n_events, "n_censored": n_cycles - n_events}
    if n_cycles == 0:
        return {**base, "median_days": None, "median_ci": [None, None], "quartiles_days": [None, None],
                "quartiles_ci": [[None, None], [None, None]], "survival": [], "n_boot": 0,
                "note": "no cycles"}
    bt = cluster_bootstrap_turnbull(df["left_days"].to_numpy(), df["right_days"].to_numpy(),
                                    df["_patient"].to_numpy(), weights=weights, ci=ci,
                                    n_boot=0 if weights is None else weights.shape[0],
                                    probs=QUARTILE_PROBS, workers=workers)
    q, q_ci = bt.quantiles, bt.quantile_ci
    survival = []
    for k, (day, s) in enumerate(zip(bt.x, bt.s)):
        lo = None if bt.s_lo is None else round(float(bt.s_lo[k]), 4)
        hi = None if bt.s_hi is None else round(float(bt.s_hi[k]), 4)
        point = {"day": float(day), "s": round(float(s), 4), "lo": lo, "hi": hi}
        if survival and survival[-1] == point:
            continue   # a zero-width step (empty Turnbull gap) repeats a point
        survival.append(point)
    notes = []
    if q[0.5] is None:
        notes.append("median not reached: fewer than half the cycles are known to have lost response "
                     "by the last assessment")
    elif q_ci[0.5][1] is None and bt.n_boot:
        notes.append("upper confidence limit of the median not reached in the bootstrap")
    if q[0.75] is None and q[0.5] is not None:
        notes.append("75th percentile not reached")
    if bt.n_boot == 0:
        notes.append("no confidence intervals: fewer than two patients or n_boot = 0")
    out = {**base,
           "median_days": _r(q[0.5]), "median_ci": [_r(q_ci[0.5][0]), _r(q_ci[0.5][1])],
           "quartiles_days": [_r(q[0.25]), _r(q[0.75])],
           "quartiles_ci": [[_r(q_ci[0.25][0]), _r(q_ci[0.25][1])], [_r(q_ci[0.75][0]), _r(q_ci[0.75][1])]],
           "survival": survival, "n_boot": bt.n_boot}
    if notes:
        out["note"] = "; ".join(notes)
    return out


SURVIVAL_DAYS = np.r_[np.arange(0, 91), np.arange(98, 366, 7)].astype(float)  # the model curve's points
DEFINITIONS_KEYS = ("median_days", "median_ci", "quartiles_days", "quartiles_ci", "survival", "note")


GROUP_BOOT = 200  # patient resamples behind a group's model intervals (cheap: posteriors are kept)
FINE_DAYS = np.exp(np.linspace(0, np.log(2000.0), 600))  # where a group's curve is read for its quantiles


def _crossing(curve: np.ndarray, level: float) -> float | None:
    """The day a decreasing curve on FINE_DAYS falls to `level` (None: not within FINE_DAYS)."""
    if not np.any(curve <= level):
        return None
    return float(np.interp(level, curve[::-1], FINE_DAYS[::-1]))


def _distinct_ids(patients: np.ndarray) -> dict:
    """The patients' distinct ids as text, in order of appearance (a dict's keys): what _model_summary reads of
    them. Plain sets of ids: Index operations on text (Arrow strings since pandas 3) cost about 0.5 s there, once
    every cohort page run, at 100,000 patients."""
    return dict.fromkeys(str(p) for p in np.asarray(patients, dtype=object).tolist())


# per fitted model (a model is never refitted in place): its patients' ids as a set, and the whole clinic's
# figures by `ci`, which every cohort page run of a data version asks for again (0.04 s at 100,000 patients)
_OF_MODEL: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_OF_MODEL_LOCK = threading.Lock()


def _of_model(model) -> dict:
    with _OF_MODEL_LOCK:
        kept = _OF_MODEL.get(model)
        if kept is None:
            kept = _OF_MODEL[model] = {}
        return kept


def _model_summary(model, patients: np.ndarray, ci: bool, mine: dict | None = None) -> dict:
    """The measurement model's figures for these patients (the whole fitted clinic: its marginal
    curve with delta-method intervals; a subset, e.g. one selection, subgroup or caseload: the mean
    of the patients' own predictive curves, with intervals from resampling those patients).
    `mine`: _distinct_ids(patients) when the caller has it already."""
    fitted = model.patient_ids_
    kept = _of_model(model)
    # fewer patients than that cannot be the whole clinic (and need no set of ids)
    whole = (len(patients) if mine is None else len(mine)) >= 0.99 * len(fitted)
    if whole:
        if "ids" not in kept:
            kept["ids"] = set(np.asarray(fitted, dtype=object).tolist())
        if mine is None:
            mine = _distinct_ids(patients)
        whole = len(mine.keys() & kept["ids"]) >= 0.99 * len(fitted)
    if whole:
        if ("whole", ci) not in kept:
            kept[("whole", ci)] = _whole_summary(model, ci)
        return copy.deepcopy(kept[("whole", ci)])
    if mine is None:
        mine = _distinct_ids(patients)
    return _subset_summary(model, mine, ci)


def _whole_summary(model, ci: bool) -> dict:
    days = SURVIVAL_DAYS
    s = model.survival(days)
    lo, hi = model.survival_ci(days) if ci else (None, None)
    med = model.quantile(0.5)
    q = [model.quantile(0.25), model.quantile(0.75)]
    med_ci = list(model.quantile_ci(0.5)) if ci else [None, None]
    q_ci = [list(model.quantile_ci(0.25)), list(model.quantile_ci(0.75))] if ci else [[None, None], [None, None]]
    return _summary_of(days, s, lo, hi, med, q, med_ci, q_ci)


def _subset_summary(model, mine: dict, ci: bool) -> dict:
    days = SURVIVAL_DAYS
    mine = pd.Index(list(mine), dtype=object)
    curve = model.survival_of(mine, FINE_DAYS)
    s = model.survival_of(mine, days)
    med, q = _crossing(curve, 0.5), [_crossing(curve, 0.75), _crossing(curve, 0.25)]
    lo = hi = None
    med_ci, q_ci = [None, None], [[None, None], [None, None]]
    if ci:
        draws = model.survival_of_draws(mine, np.r_[days, FINE_DAYS], n_boot=GROUP_BOOT)
        at_days, fine = draws[:, :len(days)], draws[:, len(days):]
        lo, hi = np.quantile(at_days, 0.025, axis=0), np.quantile(at_days, 0.975, axis=0)

        def interval(level: float) -> list:
            # a resample whose curve never falls that far counts as beyond the last day read
            found = [_crossing(c, level) for c in fine]
            values = np.array([np.inf if v is None else v for v in found])
            low, high = np.quantile(values, [0.025, 0.975])
            return [None if not np.isfinite(v) else float(v) for v in (low, high)]

        med_ci = interval(0.5)
        q_ci = [interval(0.75), interval(0.25)]
    return _summary_of(days, s, lo, hi, med, q, med_ci, q_ci)


def _summary_of(days, s, lo, hi, med, q, med_ci, q_ci) -> dict:
    survival = [{"day": float(d), "s": round(float(v), 4),
                 "lo": None if lo is None else round(float(lo[k]), 4),
                 "hi": None if hi is None else round(float(hi[k]), 4)} for k, (d, v) in enumerate(zip(days, s))]
    return {"median_days": _r(med), "median_ci": [_r(v) for v in med_ci],
            "quartiles_days": [_r(v) for v in q], "quartiles_ci": [[_r(v) for v in pair] for pair in q_ci],
            "survival": survival,
            "survival_28d": round(float(np.interp(28.0, days, s)), 4),
            "survival_56d": round(float(np.interp(56.0, days, s)), 4)}


def model_figures(model, patients, ci: bool = True) -> dict:
    """The measurement model's headline for these patients' cycles (median_days, median_ci,
    quartiles, survival, survival_28d/56d): what cohort_durability puts at the top of its result,
    for a caller that already has the literal figures (e.g. the cohort page's selection)."""
    return _model_summary(model, np.asarray(patients, dtype=object), ci)


def _with_model(summary: dict, model, patients: np.ndarray, ci: bool) -> dict:
    """`summary` (the definitions read literally) with the model's figures in its place and the
    literal ones kept under definitions_*."""
    return _with_figures(summary, _model_summary(model, patients, ci) if len(patients) else {})


def _with_figures(summary: dict, figures: dict) -> dict:
    out = dict(summary)
    for k in DEFINITIONS_KEYS:
        if k in summary:
            out[f"definitions_{k}"] = summary[k]
    out.pop("note", None)
    surv = summary.get("survival") or []
    out["definitions_survival_28d"] = _survival_at(surv, 28.0)
    out["definitions_survival_56d"] = _survival_at(surv, 56.0)
    out.update(figures)
    out["estimate_source"] = "measurement model"
    return out


def with_model_figures(result: dict, figures: dict) -> dict:
    """A cohort_durability result computed without a model (the definitions read literally), with the
    model's figures for the same patients (model_figures) at its top, as cohort_durability(model=...)
    gives them: the literal figures move to definitions_*. For a caller that keeps the figures but not
    the model (e.g. the cohort page's selection, whose screen is saved beside the database)."""
    out = dict(result)
    out.pop("note", None)
    out.update(_with_figures({k: result[k] for k in result if k in DEFINITIONS_KEYS}, figures))
    return out


def _survival_at(points: list[dict], day: float):
    if not points:
        return None
    x = np.array([p["day"] for p in points], dtype=float)
    y = np.array([p["s"] for p in points], dtype=float)
    return round(float(np.interp(day, x, y)), 4)


def cohort_durability(cycles: pd.DataFrame, *, instrument: str, by: str | None = None,
                      n_boot: int = 200, seed: int = 0, model=None) -> dict:
    """Durability of response over all cycles, after induction, and by `by`.

    Medians/quartiles are in days from the infusion that started the cycle; None
    when not reached (see "note"). CIs: 95% cluster bootstrap over patients.

    model: a fitted durability.measured.MeasuredDurability of the whole clinic. With it,
    median_days, quartiles, survival (and each group's) are the model's, which reads the scores
    as noisy measurements (the best estimate); the definitions read literally stay as a
    sensitivity analysis under definitions_* (docs/durability.md: how far apart they are, and
    which way). The counts are always the cycles a clinician sees. post_induction and the
    subgroup test stay on the definitions. `model` may also be a function giving the fitted model (or
    None), e.g. a clinic model's fit from scratch: it then runs on a thread of its own while the
    definitions' figures (Turnbull and its bootstrap) are computed, as the two share nothing (the same
    figures; on two cores the fit's one-thread parts and the bootstrap overlap), and is waited for.
    """
    if by is not None and by not in cycles.columns:
        raise ValueError(f"cohort_durability: no column {by!r} to group by")
    if callable(model):
        with ThreadPoolExecutor(1) as pool:   # left only when the fit is over, even if the definitions fail
            fitting = pool.submit(model)
            result, good = _definitions(cycles, instrument, by, n_boot, seed)
            # what the model's figures read of the valid cycles, made while the fit may still run; without groups
            # that is all they read of them, and the table (a copy: ~45 MB at 100,000 patients) is not held
            # through the fit's peak
            ids = _cycle_patients(good)
            if by is None:
                good = None
            model = fitting.result()
    else:
        result, good = _definitions(cycles, instrument, by, n_boot, seed)
        ids = None
    return _with_the_model(result, good, by, model, ids)


def _cycle_patients(good: pd.DataFrame) -> dict:
    """_distinct_ids of the valid cycles' patient ids (as text), what _with_the_model reads of them: from the
    column's distinct values in order of appearance (the same keys in the same order as from every cycle's id),
    without a Python string per cycle (100,000 patients: 0.13 s, after the fit, for 950,000 cycles)."""
    return _distinct_ids(pd.unique(good["patient_id"].astype(str)))


def _definitions(cycles: pd.DataFrame, instrument: str, by: str | None, n_boot: int, seed: int) -> tuple[dict, pd.DataFrame]:
    """cohort_durability's figures from the definitions read literally, and the valid cycles."""
    keep = [c for c in ("patient_id", "left_days", "right_days", "event", "cycle_no", "post_induction", by)
            if c is not None and c in cycles.columns]
    good, examples, n_bad = _clean(cycles[list(dict.fromkeys(keep))])
    good["_patient"] = pd.factorize(good["patient_id"])[0]
    n_patients = int(good["_patient"].max()) + 1 if len(good) else 0
    large = n_patients > LARGE_COHORT_PATIENTS
    n_rep = min(n_boot, LARGE_COHORT_BOOT) if large else n_boot
    ci = "normal" if large else "percentile"
    weights = patient_bootstrap_weights(n_patients, n_rep, seed) if n_rep > 0 and n_patients >= 2 else None
    ci_text = (f"95% cluster bootstrap over patients, {n_rep} replicates, "
               + ("estimate +/- 1.96 bootstrap SD (large cohort)" if large else "percentile intervals"))
    result = {"instrument": instrument,
              "method": {"curve": "Turnbull NPMLE on (left_days, right_days], whole days, mass spread "
                                  "uniformly within Turnbull intervals",
                         "ci": ci_text,
                         "group_test": "Finkelstein interval-censored log-rank scores, patient-cluster "
                                       "robust variance (chi-square, k-1 df)"}}
    if "post_induction" in good.columns:
        post = good[good["post_induction"].fillna(False).astype(bool)]
        if len(good) >= PARALLEL_CYCLES:
            # the two summaries are independent: on two threads (numpy lets go of the GIL in its
            # array loops; the same figures)
            with ThreadPoolExecutor(2) as pool:
                whole, after = pool.map(lambda part: _summary(part, weights, ci), (good, post))
        else:
            # one after the other, each with its replicates on two threads (the same figures for any number)
            whole, after = _summary(good, weights, ci, BOOT_WORKERS), _summary(post, weights, ci, BOOT_WORKERS)
        result.update(whole)
        result["post_induction"] = after
    else:
        result.update(_summary(good, weights, ci, BOOT_WORKERS))
        result["post_induction"] = {**_summary(good.iloc[0:0], None, ci),
                                    "note": "no post_induction column in the cycles table"}
    result["groups"] = {}
    result["logrank_p"] = None
    if by is not None:
        has = good[by].notna()
        sub = good[has]
        for value, part in sub.groupby(by, sort=True):
            result["groups"][_group_key(value)] = _summary(part, weights, ci, BOOT_WORKERS)
        n_missing = int((~has).sum())
        if n_missing:
            result["groups_note"] = f"{n_missing} cycles without a value of {by!r} are left out of the groups"
        if sub[by].nunique() >= 2:
            uL, uR, pair = aggregate_days(sub["left_days"].to_numpy(), sub["right_days"].to_numpy())
            counts = np.bincount(pair, minlength=uL.size).astype(float)
            scores = finkelstein_scores(uL, uR, counts, tol=1e-7)[pair]
            test = robust_score_test(scores, pd.factorize(sub[by])[0], sub["_patient"].to_numpy())
            result["logrank_p"] = test["p"]
            result["logrank"] = {"chisq": test["chisq"], "df": test["df"], "p": test["p"],
                                 "method": result["method"]["group_test"]}
    result["excluded_cycles"] = n_bad
    if n_bad:
        result["exclusions"] = examples
    return result, good


def _with_the_model(result: dict, good: pd.DataFrame | None, by: str | None, model, ids: dict | None = None) -> dict:
    """The definitions' result with the model's figures at its top (cohort_durability), or as it is. `ids`:
    _cycle_patients(good) when already made (`good` may then be None when `by` is: it is not read)."""
    whole = {} if model is None else ids if ids is not None else _cycle_patients(good)   # empty: no valid cycles
    if whole:
        result = with_model_figures(result, _model_summary(model, np.asarray(list(whole), dtype=object), ci=True,
                                                           mine=whole))
        for key, g in list(result["groups"].items()):   # groups only with `by` (_definitions): `good` is at hand
            mine = good.loc[good[by].map(_group_key) == key, "patient_id"].astype(str).to_numpy()
            result["groups"][key] = _with_model(g, model, mine, ci=False)
        result["post_induction"]["estimate_source"] = "definitions"
        result["method"] = {
            **result["method"],
            "curve": ("measurement model: each cycle's scores read as noisy measurements of a trend that crosses "
                      "the response line (durability.measured); patients weighted equally; "
                      f"score noise SD {model.noise_sd_:.2f} points ({model.noise_source_})"),
            "ci": ("95% delta-method interval, patient-clustered (sandwich) variance of the cohort centre and "
                   "spread (the whole clinic); for part of it (a caseload, a selection), a bootstrap over its "
                   f"patients' own predictive curves ({GROUP_BOOT} resamples); subgroup curves without intervals"),
            "definitions_curve": result["method"]["curve"] + " (the definitions read literally: sensitivity analysis)",
            "definitions_ci": result["method"]["ci"],
        }
        result["measurement"] = model.summary()
    else:
        result["estimate_source"] = "definitions"
    return result


def _design(df: pd.DataFrame, covariates: list[str]) -> tuple[np.ndarray, list[dict]]:
    """Numeric/bool covariates enter as they are; text/categorical ones as indicators
    against their most common level (the reference)."""
    cols, terms = [], []
    for cov in covariates:
        s = df[cov]
        if pd.api.types.is_bool_dtype(s) or pd.api.types.is_numeric_dtype(s):
            cols.append(s.astype(float).to_numpy())
            terms.append({"term": cov, "covariate": cov, "level": None, "reference": None})
        else:
            s = s.astype(str)
            counts = s.value_counts()
            ref = counts.index[0]
            for level in sorted(counts.index[1:]):
                cols.append((s == level).to_numpy(dtype=float))
                terms.append({"term": f"{cov}={level}", "covariate": cov, "level": level, "reference": ref})
    X = np.column_stack(cols) if cols else np.zeros((len(df), 0))
    return X, terms


def durability_model(cycles: pd.DataFrame, covariates: list[str]) -> dict:
    """Interval-censored Weibull AFT of cycle duration on `covariates`, for a forest plot.

    time_ratio > 1: longer response. SEs are sandwich estimates clustered by patient.
    Rows missing any covariate are left out (n_dropped says how many).
    """
    missing = [c for c in covariates if c not in cycles.columns]
    if missing:
        raise ValueError(f"durability_model: the cycles table lacks covariate column(s) {missing}")
    good, _, n_bad = _clean(cycles)
    complete = good.dropna(subset=list(covariates))
    n_dropped = int(len(good) - len(complete))
    base = {"model": "Weibull AFT, interval-censored, ML; 95% CI from patient-clustered sandwich SEs",
            "n_cycles": int(len(complete)), "n_patients": int(complete["patient_id"].nunique()),
            "n_events": int(np.isfinite(complete["right_days"].to_numpy()).sum()),
            "n_dropped_missing_covariate": n_dropped, "excluded_cycles": n_bad, "terms": []}
    if base["n_events"] < 2 or base["n_patients"] < 2:
        return {**base, "note": "too few events or patients to fit a model"}
    X, terms = _design(complete, covariates)
    keep = [j for j in range(X.shape[1]) if np.ptp(X[:, j]) > 0]
    dropped_terms = [terms[j]["term"] for j in range(X.shape[1]) if j not in keep]
    X, terms = X[:, keep], [terms[j] for j in keep]
    fit = weibull_aft(complete["left_days"].to_numpy(), complete["right_days"].to_numpy(), X,
                      names=[t["term"] for t in terms], cluster=complete["patient_id"].to_numpy())
    ratios = fit.time_ratios()
    out_terms = [{**t, **{k: _r(v, 4) if k != "p" else v for k, v in ratios[t["term"]].items()}} for t in terms]
    result = {**base, "terms": out_terms, "shape": round(float(fit.shape[0]), 4),
              "baseline_median_days": _r(fit.quantile(0.5, x=np.r_[1.0, np.zeros(X.shape[1])])),
              "loglik": fit.loglik, "converged": fit.converged}
    if dropped_terms:
        result["note"] = f"left out (no variation): {dropped_terms}"
    return result
