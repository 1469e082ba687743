"""Outcome definitions: the one configurable place.

Every rule that turns scores into "baseline", "response", "remission", "loss of
response", "reliable change" or an alert is a field of `OutcomeRules`, with its
default and source next to it (sources: docs/clinical-rules.md). Course
segmentation, durability cycles, interval suggestions and pages all take an
`OutcomeRules`; nothing else hard-codes a threshold.

Time convention (shared with course.py): an assessment without a time of day
counts as taken at 00:00 and an infusion without a time of day as given at the
end of that day, so a same-day assessment is a pre-dose score. Timed rows use
their time. Durations are measured from the stored timestamps (00:00 for
date-only rows), so "infusion on the 1st, score on the 8th" is 7 days.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from . import scales

DAY = pd.Timedelta(days=1)
_END_OF_DAY = pd.Timedelta(days=1) - pd.Timedelta(microseconds=1)


@dataclass(frozen=True)
class OutcomeRules:
    # Baseline: the last score of the instrument on or before the first
    # infusion, no more than this many days before it (a score older
    # than a month says little about the state the treatment started from).
    baseline_window_days: int = 30
    # Response: at least this fraction below baseline (50%: every trial cited
    # in docs/clinical-rules.md, e.g. Murrough 2013, McInnes 2022, SUSTAIN-1).
    response_fall: float = 0.5
    # Baselines below this cannot show a meaningful halving (a PHQ-9 of 2 -> 1
    # is not a response); such patients get no response/durability outcomes.
    min_baseline: float = 1.0
    # MADRS remission: "below_10" (Hawley 2002, validated) or "12_or_below"
    # (esketamine trials: SUSTAIN-1/2). PHQ-9 and GAD-7 use the scale
    # registry's remission_below (PHQ-9 < 5 McInnes 2022; GAD-7 < 5 Spitzer 2006).
    madrs_remission: str = "below_10"
    # Loss of response: "two_consecutive" = two consecutive assessments no
    # longer meeting response (docs/clinical-rules.md, outcome definitions), or
    # "madrs_relapse_22" = MADRS 22 or more on two consecutive assessments
    # (SUSTAIN-1 relapse rule; the trial also asked the two to be 5-15 days
    # apart, which is not enforced here).
    loss_rule: str = "two_consecutive"
    madrs_relapse_score: float = 22.0
    # One out-of-response score followed by an infusion also ends the cycle:
    # the clinic acted on it (docs/clinical-rules.md, statistical notes).
    loss_on_infusion: bool = True
    # Reliable change: Jacobson & Truax 1991, RCI = z * SD * sqrt(2 * (1 - r)),
    # with r and SD from the scale registry (scales.Scale.reliability/reference_sd).
    rci_z: float = 1.96
    # Derived phases (used when the `phase` column is empty): induction runs
    # from the first infusion until the first gap longer than this many days
    # or this many infusions (docs/clinical-rules.md: real-world induction is 4-8 infusions
    # over 7-28 days, McInnes 2022).
    induction_max_gap_days: float = 14.0
    induction_max_infusions: int = 8
    # A rescue/last-induction infusion after which the first score is back in
    # response starts a durability cycle too (response recaptured). Without
    # it a clinic that doses only on symptoms would have no cycles at all.
    cycles_after_recapture: bool = True
    # Early response: percent fall from baseline at the last score before
    # infusion number early_response_after + 1 (Murrough 2013: early response
    # predicted the end-of-course response; Phillips 2019: median 3 infusions).
    early_response_after: int = 2
    # Established response (who gets a maintenance interval suggestion): this many
    # consecutive assessments after the first infusion meeting response. The mirror of the
    # loss rule (two consecutive scores out): a single score that happens to sit on the
    # response line is measurement noise as often as it is response (issue 12).
    established_response_scores: int = 2

    def __post_init__(self):
        if self.madrs_remission not in ("below_10", "12_or_below"):
            raise ValueError("madrs_remission must be 'below_10' or '12_or_below'")
        if self.loss_rule not in ("two_consecutive", "madrs_relapse_22"):
            raise ValueError("loss_rule must be 'two_consecutive' or 'madrs_relapse_22'")
        if not 0 < self.response_fall < 1:
            raise ValueError("response_fall must be between 0 and 1 (0.5 = at least 50% below baseline)")
        if self.established_response_scores < 1:
            raise ValueError("established_response_scores must be at least 1")

    def with_(self, **changes) -> "OutcomeRules":
        return replace(self, **changes)

    def check_instrument(self, instrument: str) -> str:
        code = scales.get(instrument).code
        if self.loss_rule == "madrs_relapse_22" and code != scales.MADRS:
            raise ValueError(f"loss_rule 'madrs_relapse_22' is a MADRS rule; it cannot be applied to {code}")
        return code


DEFAULT_RULES = OutcomeRules()


# --- score-level definitions (vectorised) ---------------------------------------

def remission_threshold(instrument: str, rules: OutcomeRules = DEFAULT_RULES) -> tuple[float, bool]:
    """(cut-off, inclusive): remission is score < cut-off, or <= it when inclusive."""
    scale = scales.get(instrument)
    if scale.code == scales.MADRS and rules.madrs_remission == "12_or_below":
        return 12.0, True
    return float(scale.remission_below), False


def is_remission(total, instrument: str, rules: OutcomeRules = DEFAULT_RULES) -> np.ndarray:
    cut, inclusive = remission_threshold(instrument, rules)
    total = np.asarray(total, dtype=float)
    return (total <= cut) if inclusive else (total < cut)


def is_response(total, baseline, rules: OutcomeRules = DEFAULT_RULES) -> np.ndarray:
    """At least `response_fall` below baseline; False where there is no usable baseline."""
    total = np.asarray(total, dtype=float)
    baseline = np.asarray(baseline, dtype=float)
    with np.errstate(invalid="ignore"):
        usable = baseline >= rules.min_baseline
        return usable & (total <= baseline * (1 - rules.response_fall))


def percent_fall(total, baseline) -> np.ndarray:
    total = np.asarray(total, dtype=float)
    baseline = np.asarray(baseline, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(baseline > 0, 100.0 * (baseline - total) / baseline, np.nan)


def is_out(total, baseline, instrument: str, rules: OutcomeRules = DEFAULT_RULES) -> np.ndarray:
    """A score that counts towards loss of response under `rules.loss_rule`."""
    total = np.asarray(total, dtype=float)
    if rules.loss_rule == "madrs_relapse_22":
        rules.check_instrument(instrument)
        return total >= rules.madrs_relapse_score
    return ~is_response(total, baseline, rules)


def reliable_change_index(instrument: str, rules: OutcomeRules = DEFAULT_RULES) -> float:
    """Smallest change in points that is reliable (Jacobson & Truax 1991)."""
    scale = scales.get(instrument)
    if scale.reliability is None or scale.reference_sd is None:
        raise ValueError(f"{scale.code} has no published reliability/reference SD in the scale registry")
    return float(rules.rci_z * scale.reference_sd * np.sqrt(2 * (1 - scale.reliability)))


# --- clocks ---------------------------------------------------------------------

def _has_time(frame: pd.DataFrame) -> np.ndarray:
    if "has_time" in frame.columns:
        return frame["has_time"].fillna(False).to_numpy(dtype=bool)
    at = pd.to_datetime(frame["administered_at"])
    return (at != at.dt.normalize()).to_numpy()


def assessment_clock(assessments: pd.DataFrame) -> pd.Series:
    """When an assessment counts as taken: date-only ones at 00:00."""
    at = pd.to_datetime(assessments["administered_at"])
    return at.where(_has_time(assessments), at.dt.normalize())


def infusion_clock(treatments: pd.DataFrame) -> pd.Series:
    """When an infusion counts as given: date-only ones at the end of the day."""
    at = pd.to_datetime(treatments["administered_at"])
    return at.where(_has_time(treatments), at.dt.normalize() + _END_OF_DAY)


# --- baselines --------------------------------------------------------------------

def _us(values) -> np.ndarray:
    return np.asarray(values, dtype="datetime64[us]").astype(np.int64)


_US_PER_DAY = 86_400_000_000


def baseline_arrays(first_key: np.ndarray, first_day: np.ndarray, a_code: np.ndarray, a_key: np.ndarray,
                    a_total: np.ndarray, rules: OutcomeRules = DEFAULT_RULES) -> tuple[np.ndarray, np.ndarray]:
    """The baseline rule on arrays (the one implementation; `baselines` wraps it).

    first_key/first_day: per patient code, the first infusion's clock (us) and
    its date (us at 00:00); a_*: scores, sorted by (code, key). Returns per
    patient code (baseline score, the score's clock in us), NaN/-1 where none.
    """
    n = len(first_key)
    score = np.full(n, np.nan)
    when = np.full(n, -1, dtype=np.int64)
    if len(a_code) == 0:
        return score, when
    window = rules.baseline_window_days * _US_PER_DAY
    a_day = a_key - np.mod(a_key, _US_PER_DAY)
    ok = (a_key <= first_key[a_code]) & (a_day >= first_day[a_code] - window)
    idx = np.flatnonzero(ok)
    if len(idx):
        last = idx[np.r_[a_code[idx][1:] != a_code[idx][:-1], True]]  # sorted: the last candidate per patient
        score[a_code[last]] = a_total[last]
        when[a_code[last]] = a_key[last]
    return score, when


def baseline_mean_arrays(first_key: np.ndarray, first_day: np.ndarray, a_code: np.ndarray, a_key: np.ndarray,
                         a_total: np.ndarray, rules: OutcomeRules = DEFAULT_RULES) -> tuple[np.ndarray, np.ndarray]:
    """Per patient code, (mean, number) of the scores in the baseline window (the same window and
    clock as baseline_arrays). Not a definition: the best estimate of where the patient started,
    for models of the measurement (one score carries its full noise; two halve its variance)."""
    n = len(first_key)
    if len(a_code) == 0:
        return np.full(n, np.nan), np.zeros(n, dtype=np.int64)
    window = rules.baseline_window_days * _US_PER_DAY
    a_day = a_key - np.mod(a_key, _US_PER_DAY)
    ok = (a_key <= first_key[a_code]) & (a_day >= first_day[a_code] - window)
    count = np.bincount(a_code[ok], minlength=n)
    total = np.bincount(a_code[ok], weights=a_total[ok], minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan), count


def baselines(treatments: pd.DataFrame, assessments: pd.DataFrame, instrument: str,
              rules: OutcomeRules = DEFAULT_RULES) -> pd.DataFrame:
    """One row per treated patient: patient_id, first_infusion_at, baseline_score, baseline_at.

    baseline_score is NaN when no score of `instrument` falls in the window.
    """
    code = scales.get(instrument).code
    a = assessments
    if "instrument" in a.columns:
        a = a[a["instrument"] == code]
    a = a[a["total"].notna()]
    t_pid = treatments["patient_id"].astype(str).to_numpy(dtype=object)
    a_pid = a["patient_id"].astype(str).to_numpy(dtype=object)
    codes, uniques = pd.factorize(np.concatenate([t_pid, a_pid]))
    t_code, a_code = codes[:len(t_pid)], codes[len(t_pid):]
    n = len(uniques)
    t_key = _us(infusion_clock(treatments))
    t_at = _us(pd.to_datetime(treatments["administered_at"]))
    first_key = np.full(n, np.iinfo(np.int64).max)
    np.minimum.at(first_key, t_code, t_key)
    treated = first_key < np.iinfo(np.int64).max
    first_at = np.full(n, 0, dtype=np.int64)
    order = np.lexsort((t_key, t_code))
    firsts = order[np.r_[True, t_code[order][1:] != t_code[order][:-1]]] if len(order) else order
    first_at[t_code[firsts]] = t_at[firsts]
    first_day = first_key - np.mod(first_key, _US_PER_DAY)
    a_key = _us(assessment_clock(a))
    a_order = np.lexsort((a_key, a_code))
    score, when = baseline_arrays(first_key, first_day, a_code[a_order], a_key[a_order],
                                  a["total"].to_numpy(dtype=float)[a_order], rules)
    out = pd.DataFrame({
        "patient_id": uniques[treated],
        "first_infusion_at": first_at[treated].astype("datetime64[us]"),
        "baseline_score": score[treated],
        "baseline_at": np.where(when[treated] >= 0, when[treated], np.iinfo(np.int64).min).astype("datetime64[us]"),
    })
    return out.sort_values("patient_id").reset_index(drop=True)


# --- the latest status and alerts ---------------------------------------------------

def latest_scores(r: np.ndarray, total: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per patient row 0..n-1: (latest, previous, best) outcome score, NaN where there is none, and each
    score's position of the latest (-1 where none). `r` and `total` are the outcome scores (after treatment
    began), grouped by row and oldest first within it (stable on ties). The one implementation: the
    clinic-wide `patient_status` and one record's `patient_outcomes` both read these."""
    ends = np.r_[r[1:] != r[:-1], True] if len(r) else np.zeros(0, dtype=bool)
    last = np.flatnonzero(ends)
    before_last = last - 1
    has_previous = before_last >= 0
    has_previous[has_previous] = r[before_last[has_previous]] == r[before_last[has_previous] + 1]
    previous = before_last[has_previous]
    latest_score = np.full(n, np.nan)
    latest_score[r[last]] = total[last]
    latest_at = np.full(n, -1, dtype=np.int64)
    latest_at[r[last]] = last
    previous_score = np.full(n, np.nan)
    previous_score[r[previous]] = total[previous]
    best_score = np.full(n, np.inf)
    np.minimum.at(best_score, r, total)
    best_score[np.isinf(best_score)] = np.nan
    return latest_score, previous_score, best_score, latest_at


def worsening_flags(latest, previous, best, rci: float) -> tuple[np.ndarray, np.ndarray]:
    """(worse than best, worse than last): reliable worsening, by at least the RCI; False where a score is missing."""
    with np.errstate(invalid="ignore"):
        return (np.asarray(latest) - best) >= rci, (np.asarray(latest) - previous) >= rci


def patient_status(treatments: pd.DataFrame, assessments: pd.DataFrame, instrument: str,
                   rules: OutcomeRules = DEFAULT_RULES) -> pd.DataFrame:
    """Latest state of every treated patient on `instrument`, with alerts.

    Columns: patient_id, baseline_score, latest_score, latest_at, percent_fall,
    responding, remission, ever_responded, best_score, previous_score,
    reliable_improvement (latest vs baseline), worse_than_best, worse_than_last
    (reliable worsening: by at least the RCI), lost_response (was responding at
    the previous score, not now), item9_positive (the latest score's safety item
    above 0: PHQ-9 item 9; always False for a scale without one), alert (any of the
    worsening flags or the safety item) and alert_reasons.

    On arrays rather than frame operations: the patient page calls this for one
    patient on every view, where pandas' per-operation overhead was most of the cost.
    """
    scale = scales.get(instrument)
    code = scale.code
    rci = reliable_change_index(code, rules)
    base = baselines(treatments, assessments, code, rules)
    n = len(base)
    row_of = pd.Index(base["patient_id"])
    baseline = base["baseline_score"].to_numpy(dtype=float)
    baseline_at = _us(base["baseline_at"])  # NaT is the smallest int64: every score is after it
    first_us = _us(base["first_infusion_at"])
    first_day = first_us - np.mod(first_us, _US_PER_DAY)

    keep = assessments["total"].notna().to_numpy()
    if "instrument" in assessments.columns:
        keep = keep & (assessments["instrument"] == code).to_numpy()
    a = assessments[keep]
    clock = assessment_clock(a).to_numpy()
    at = _us(clock)
    total = a["total"].to_numpy(dtype=float)
    row = row_of.get_indexer(a["patient_id"].astype(str))  # -1: never treated
    # Only scores after treatment began are outcomes (the baseline itself is not).
    ok = row >= 0
    ok[ok] = (at[ok] > baseline_at[row[ok]]) & (at[ok] >= first_day[row[ok]])
    idx = np.flatnonzero(ok)
    idx = idx[np.lexsort((at[idx], row[idx]))]  # per patient, oldest first (stable on ties)
    r = row[idx]
    latest_score, previous_score, best_score, latest_pos = latest_scores(r, total[idx], n)
    latest_at = np.full(n, np.datetime64("NaT"), dtype=clock.dtype if len(clock) else "datetime64[us]")
    has_latest = latest_pos >= 0
    latest_at[has_latest] = clock[idx[latest_pos[has_latest]]]
    ever_responded = np.bincount(r, weights=is_response(total[idx], baseline[r], rules), minlength=n) > 0

    responding = is_response(latest_score, baseline, rules)
    scored = ~np.isnan(latest_score)
    safety = f"{code} item {scale.safety_item} above 0" if scale.safety_column else "safety item above 0"
    worse_than_best, worse_than_last = worsening_flags(latest_score, previous_score, best_score, rci)
    with np.errstate(invalid="ignore"):
        flags = {
            "reliable worsening from best": worse_than_best,
            "reliable worsening since last": worse_than_last,
            "no longer in response": is_response(previous_score, baseline, rules) & ~responding & scored,
            safety: np.zeros(n, dtype=bool),
        }
        reliable_improvement = (baseline - latest_score) >= rci
    if scale.safety_column and scale.safety_column in assessments.columns:
        own = assessments[assessments["instrument"] == code] if "instrument" in assessments.columns else assessments
        p_row = row_of.get_indexer(own["patient_id"].astype(str))
        p_idx = np.flatnonzero(p_row >= 0)
        p_idx = p_idx[np.lexsort((_us(assessment_clock(own))[p_idx], p_row[p_idx]))]
        p_r = p_row[p_idx]
        p_last = p_idx[np.r_[p_r[1:] != p_r[:-1], True]] if len(p_idx) else p_idx
        with np.errstate(invalid="ignore"):
            flags[safety][p_row[p_last]] = own[scale.safety_column].astype(float).to_numpy()[p_last] > 0
    alert = np.zeros(n, dtype=bool)
    reasons = np.full(n, "", dtype=object)
    for text, flag in flags.items():
        alert |= flag
        reasons = np.where(flag, np.where(reasons == "", text, reasons + "; " + text), reasons)
    return base.assign(
        latest_score=latest_score, latest_at=latest_at, previous_score=previous_score, best_score=best_score,
        ever_responded=ever_responded, percent_fall=percent_fall(latest_score, baseline), responding=responding,
        remission=is_remission(latest_score, code, rules) & scored, reliable_improvement=reliable_improvement,
        worse_than_best=flags["reliable worsening from best"], worse_than_last=flags["reliable worsening since last"],
        lost_response=flags["no longer in response"], item9_positive=flags[safety], alert=alert,
        alert_reasons=pd.Series(reasons, index=base.index, dtype=str), rci_points=rci,
    )


# --- one patient's record (the patient page) ----------------------------------------

def record_clock_us(frame: pd.DataFrame, infusions: bool) -> np.ndarray:
    """`infusion_clock` (infusions=True) or `assessment_clock` of a frame as int64 microseconds, on arrays: the
    same clock without pandas' per-operation cost, for one patient's record of a few dozen rows."""
    at = frame["administered_at"]
    if not pd.api.types.is_datetime64_any_dtype(at.dtype):
        at = pd.to_datetime(at)
    at_us = _us(at.to_numpy())
    midnight = at_us - np.mod(at_us, _US_PER_DAY)
    if "has_time" not in frame.columns:
        has_time = at_us != midnight
    else:
        has_time = frame["has_time"].to_numpy()
        if has_time.dtype != bool:
            has_time = _has_time(frame)
    clock = np.where(has_time, at_us, midnight + (_US_PER_DAY - 1) if infusions else midnight)  # _END_OF_DAY
    missing = at_us == np.iinfo(np.int64).min  # NaT stays NaT
    clock[missing] = at_us[missing]
    return clock


@dataclass(frozen=True)
class PatientOutcome:
    """One patient's state on one instrument: what `baselines` and `patient_status` give that patient's row.
    NaN where there is nothing (no baseline, no score after treatment began); the flags are False then."""
    instrument: str
    baseline_score: float
    latest_score: float
    previous_score: float
    best_score: float
    rci_points: float | None  # None for an instrument without a reliable change index
    worse_than_best: bool
    worse_than_last: bool


def patient_outcomes(treatments: pd.DataFrame, assessments: pd.DataFrame,
                     rules: OutcomeRules = DEFAULT_RULES) -> dict[str, PatientOutcome]:
    """One patient's record (every row that patient's): per instrument with a scored total, the baseline and
    the latest state, equal to `baselines(...)` and `patient_status(...)` for that patient (checked for every
    patient of the demo clinic in tests/test_patient_outcomes.py). The patient page calls this once per
    record instead of those cohort-wide functions once per instrument: on a few dozen rows their frame
    operations, not the arithmetic, were the cost. The baseline rule is `baseline_arrays`, the one
    implementation. An untreated patient has no baseline and no state: {}."""
    if treatments.empty or assessments.empty:
        return {}
    t_key = record_clock_us(treatments, infusions=True)
    first_key = t_key.min()
    first_day = first_key - np.mod(first_key, _US_PER_DAY)
    total_all = assessments["total"].to_numpy(dtype=float, na_value=np.nan)
    a_key_all = record_clock_us(assessments, infusions=False)
    instrument = assessments["instrument"].to_numpy(dtype=object)
    out = {}
    for code in scales.codes():
        mine = (instrument == code) & ~np.isnan(total_all)
        if not mine.any():
            continue
        order = np.flatnonzero(mine)
        order = order[np.argsort(a_key_all[order], kind="stable")]
        a_key, total = a_key_all[order], total_all[order]
        score, when = baseline_arrays(np.array([first_key]), np.array([first_day]), np.zeros(len(order), dtype=np.intp),
                                      a_key, total, rules)
        baseline, baseline_at = float(score[0]), (when[0] if when[0] >= 0 else np.iinfo(np.int64).min)
        after = (a_key > baseline_at) & (a_key >= first_day)  # only scores after treatment began are outcomes
        scored = total[after]
        latest, previous, best, _ = (float(v[0]) for v in latest_scores(np.zeros(len(scored), dtype=np.intp), scored, 1))
        scale = scales.get(code)
        rci = reliable_change_index(code, rules) if scale.reliability is not None and scale.reference_sd is not None else None
        worse_than_best, worse_than_last = worsening_flags(latest, previous, best, rci) if rci is not None else (False, False)
        out[code] = PatientOutcome(code, baseline, latest, previous, best, rci,
                                   worse_than_best=bool(worse_than_best), worse_than_last=bool(worse_than_last))
    return out
