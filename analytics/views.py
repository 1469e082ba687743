"""What each dashboard page draws, assembled from DataAccess frames.

Pure functions: frames in, frames/dicts out. No Streamlit, no database: pages
read through `analytics.access`, hand the frames here, and draw the result with
`analytics.charts`. Outcome definitions come from `analytics.outcomes`
(OutcomeRules) so a page cannot disagree with the command line.

Collaborators' modules (course segmentation, interval suggestions, durability
estimators, policy comparison) are imported lazily by `optional()`: a page
shows "not available yet" instead of failing when one is missing.
"""
from __future__ import annotations

import importlib
import io
import math
from dataclasses import dataclass, field
from datetime import date, timedelta
from types import ModuleType

import numpy as np
import pandas as pd
from statsmodels.stats.proportion import proportion_confint

from . import outcomes, scales, suppress
from .outcomes import DEFAULT_RULES, OutcomeRules

DAY = pd.Timedelta(days=1)
ACTIVE_DAYS = 90  # a patient with an infusion or assessment in the last 90 days counts as active
COMPLETENESS_DAYS = 7  # issue 4: an assessment within 7 days before an infusion


def optional(module: str) -> ModuleType | None:
    """A collaborator's module, or None while it has not landed (or cannot import)."""
    try:
        return importlib.import_module(f"analytics.{module}")
    except ImportError:
        return None


def _day(values) -> pd.Series:
    return pd.to_datetime(pd.Series(values)).dt.normalize()


# --- proportions ----------------------------------------------------------------

@dataclass(frozen=True)
class Rate:
    k: int
    n: int
    low: float | None
    high: float | None
    suppressed: bool = False

    @property
    def value(self) -> float | None:
        return None if self.n == 0 or self.suppressed else self.k / self.n

    def text(self) -> str:
        if self.suppressed:
            return "fewer than the minimum cell size: not shown"
        if self.n == 0:
            return "no evaluable patients"
        return f"{100 * self.k / self.n:.0f}% ({self.k}/{self.n}; 95% CI {100 * self.low:.0f}-{100 * self.high:.0f}%)"


def wilson(k: int, n: int, min_cell: int = 0) -> Rate:
    """Proportion with its 95% Wilson score interval (statsmodels)."""
    if n == 0:
        return Rate(0, 0, None, None)
    low, high = proportion_confint(int(k), int(n), alpha=0.05, method="wilson")
    return Rate(int(k), int(n), float(low), float(high), suppressed=n < min_cell)


# --- cohort filters ---------------------------------------------------------------

@dataclass(frozen=True)
class Filters:
    instrument: str = "PHQ-9"
    sites: tuple[str, ...] = ()
    clinicians: tuple[str, ...] = ()
    routes: tuple[str, ...] = ()
    comorbidities: tuple[str, ...] = ()
    # Patients whose first infusion falls in [start, end] (inclusive); None: open.
    start: date | None = None
    end: date | None = None

    def describe(self) -> str:
        parts = [self.instrument]
        if self.start or self.end:
            parts.append(f"first infusion {self.start or 'any time'} to {self.end or 'today'}")
        for label, values in (("site", self.sites), ("clinician", self.clinicians),
                              ("route", self.routes), ("comorbidity", self.comorbidities)):
            if values:
                parts.append(f"{label}: {', '.join(values)}")
        return "; ".join(parts)


@dataclass
class Cohort:
    patients: pd.DataFrame
    treatments: pd.DataFrame
    assessments: pd.DataFrame
    filters: Filters = field(default_factory=Filters)


def filter_options(patients: pd.DataFrame, treatments: pd.DataFrame) -> dict[str, list[str]]:
    comorb = sorted({c for text in patients["comorbidities"].fillna("") for c in str(text).split(";") if c})
    return {
        "sites": sorted(patients["site"].dropna().unique().tolist()),
        "clinicians": sorted(patients["clinician"].dropna().unique().tolist()),
        "routes": sorted(treatments["route"].dropna().unique().tolist()),
        "comorbidities": comorb,
    }


def isin(values: pd.Series, wanted) -> np.ndarray:
    """`values.isin(wanted)` as a boolean array. pandas 3.1 checks pyarrow-backed strings one at a
    time in Python (1.5 s for 1.5 M infusions' patient ids); pyarrow's is_in takes 0.03 s."""
    if not isinstance(values.array, pd.arrays.ArrowStringArray):
        return values.isin(wanted).to_numpy(dtype=bool)
    import pyarrow as pa
    import pyarrow.compute as pc

    lookup = pd.Series(list(wanted) if isinstance(wanted, (set, frozenset)) else wanted, dtype=values.dtype)
    value_set = lookup.array.__arrow_array__()
    if isinstance(value_set, pa.ChunkedArray):
        value_set = value_set.combine_chunks()
    hit = pc.is_in(values.array.__arrow_array__(), value_set=value_set)
    return np.asarray(hit.to_numpy() if isinstance(hit, pa.ChunkedArray) else hit.to_numpy(zero_copy_only=False), dtype=bool)


def filter_cohort(patients: pd.DataFrame, treatments: pd.DataFrame, assessments: pd.DataFrame,
                  filters: Filters) -> Cohort:
    """Keep the patients matching every filter, with all their rows.

    The route filter keeps patients whose first infusion used that route; the
    date range applies to the first infusion (when treatment started).
    """
    keep = patients
    if filters.sites:
        keep = keep[keep["site"].isin(filters.sites)]
    if filters.clinicians:
        keep = keep[keep["clinician"].isin(filters.clinicians)]
    if filters.comorbidities:
        wanted = set(filters.comorbidities)
        has = keep["comorbidities"].fillna("").map(lambda t: bool(wanted & set(str(t).split(";"))))
        keep = keep[has.astype(bool)]
    first = treatments.sort_values("administered_at").groupby("patient_id").head(1).set_index("patient_id")
    if filters.routes:
        ok = first.index[first["route"].isin(filters.routes)]
        keep = keep[keep["patient_id"].isin(ok)]
    if filters.start or filters.end:
        started = first["administered_at"].dt.date
        mask = pd.Series(True, index=first.index)
        if filters.start:
            mask &= started >= filters.start
        if filters.end:
            mask &= started <= filters.end
        keep = keep[keep["patient_id"].isin(first.index[mask])]
    ids = keep["patient_id"]
    return Cohort(
        patients=keep.reset_index(drop=True),
        treatments=treatments[isin(treatments["patient_id"], ids)].reset_index(drop=True),
        assessments=assessments[isin(assessments["patient_id"], ids)].reset_index(drop=True),
        filters=filters,
    )


# --- induction outcomes ---------------------------------------------------------------

def induction_end(treatments: pd.DataFrame, assessments: pd.DataFrame, instrument: str,
                  rules: OutcomeRules = DEFAULT_RULES) -> pd.DataFrame:
    """patient_id, induction_end_at, induction_infusions: the opening run of induction infusions.

    Phases come from course.py (recorded phase kept, missing ones derived by
    OutcomeRules), so the pages and the durability cycles agree on induction.
    """
    from . import course

    inf = course.build_course(treatments, assessments, instrument, rules).infusions
    if inf.empty:
        return pd.DataFrame(columns=["patient_id", "induction_end_at", "induction_infusions"])
    inf = inf.sort_values(["patient_id", "at"])
    not_induction = (inf["phase"] != "induction").astype(int)
    opening = inf[not_induction.groupby(inf["patient_id"]).cumsum() == 0]
    g = opening.groupby("patient_id")
    return pd.DataFrame({"induction_end_at": g["at"].max(), "induction_infusions": g.size()}).reset_index()


def induction_outcomes(treatments: pd.DataFrame, assessments: pd.DataFrame, instrument: str,
                       rules: OutcomeRules = DEFAULT_RULES, window_days: int = 21) -> pd.DataFrame:
    """One row per treated patient: baseline, the first score after induction, response and remission.

    The post-induction score is the first score of `instrument` after the day of
    the last induction infusion and within `window_days` of it (a MADRS taken
    pre-dose at the next infusion counts). Patients without a usable baseline or
    post-induction score have evaluable = False and are left out of the rates.
    Also: best_percent_change (most negative = most improved; negative means
    fewer symptoms) over every score after treatment began, latest score and band.
    """
    code = scales.get(instrument).code
    scale = scales.get(code)
    base = outcomes.baselines(treatments, assessments, code, rules)
    ends = induction_end(treatments, assessments, code, rules)
    frame = base.merge(ends[["patient_id", "induction_end_at", "induction_infusions"]], on="patient_id", how="left")
    a = assessments[(assessments["instrument"] == code) & assessments["total"].notna()]
    a = pd.DataFrame({"patient_id": a["patient_id"].to_numpy(), "at": outcomes.assessment_clock(a).to_numpy(),
                      "total": a["total"].to_numpy(dtype=float)})
    a = a.merge(frame[["patient_id", "first_infusion_at", "baseline_at", "induction_end_at"]], on="patient_id")
    after_start = a[(a["at"] >= a["first_infusion_at"].dt.normalize()) & (a["at"] > a["baseline_at"].fillna(pd.Timestamp.min))]
    after_start = after_start.sort_values(["patient_id", "at"])
    post = after_start[(after_start["at"] >= after_start["induction_end_at"].dt.normalize() + DAY)
                       & (after_start["at"] <= after_start["induction_end_at"].dt.normalize() + window_days * DAY)]
    post = post.groupby("patient_id").head(1).set_index("patient_id")
    g = after_start.groupby("patient_id")
    out = frame.set_index("patient_id")
    out["post_score"] = post["total"]
    out["post_at"] = post["at"]
    out["best_score"] = g["total"].min()
    out["latest_score"] = g["total"].last()
    out["latest_at"] = g["at"].last()
    out["n_scores"] = g.size()
    out["n_scores"] = out["n_scores"].fillna(0).astype(int)
    usable = out["baseline_score"] >= rules.min_baseline
    out["evaluable"] = usable & out["post_score"].notna()
    out["responded"] = outcomes.is_response(out["post_score"], out["baseline_score"], rules) & out["evaluable"]
    out["remitted"] = outcomes.is_remission(out["post_score"], code, rules) & out["evaluable"].to_numpy()
    out["best_percent_change"] = -outcomes.percent_fall(out["best_score"], out["baseline_score"])
    out["baseline_band"] = [scale.band(v) for v in out["baseline_score"]]
    out["latest_band"] = [scale.band(v) for v in out["latest_score"]]
    return out.reset_index()


# --- cohort page ---------------------------------------------------------------------

def headline(cohort: Cohort, induction: pd.DataFrame, today: date, min_cell: int = 0,
             cycles: pd.DataFrame | None = None) -> dict:
    """The cohort's headline figures for the period and filters."""
    t = cohort.treatments
    a = cohort.assessments
    since = pd.Timestamp(today) - ACTIVE_DAYS * DAY
    recent = set(t.loc[t["administered_at"] >= since, "patient_id"]) | set(a.loc[a["administered_at"] >= since, "patient_id"])
    month_start = pd.Timestamp(today.replace(day=1))
    this_month = t[(t["administered_at"] >= month_start) & (t["administered_at"] < pd.Timestamp(today) + DAY)]
    evaluable = induction[induction["evaluable"]]
    median_durability = None
    if cycles is not None and len(cycles):
        median_durability = durability_median(cycles)
    return {
        "patients": int(cohort.patients["patient_id"].nunique()),
        "active_patients": len(recent),
        "infusions_this_month": len(this_month),
        "month": month_start.strftime("%B %Y"),
        "treated": int(induction["patient_id"].nunique()),
        "evaluable": len(evaluable),
        "response": wilson(int(evaluable["responded"].sum()), len(evaluable), min_cell),
        "remission": wilson(int(evaluable["remitted"].sum()), len(evaluable), min_cell),
        "median_durability_days": median_durability,
        "period": cohort.filters.describe(),
    }


def durability_median(cycles: pd.DataFrame) -> float | None:
    """Median length of a response cycle in days (Turnbull NPMLE: loss lies between two scores).

    The durability page's point estimate (whole-day intervals, durability.bootstrap), so the two
    pages agree. Fitting the raw fractional days instead ran ~20,000 EM iterations over every cycle
    on each rerun of the cohort page (22 s at 10,000 patients; docs/performance.md).
    """
    if cycles is None or cycles.empty:
        return None
    from .durability.bootstrap import cluster_bootstrap_turnbull

    fit = cluster_bootstrap_turnbull(cycles["left_days"].to_numpy(dtype=float), cycles["right_days"].to_numpy(dtype=float),
                                     cycles["patient_id"].to_numpy(), n_boot=0, probs=(0.5,))
    return fit.quantiles[0.5]


def cohort_cycles(patients: pd.DataFrame, treatments: pd.DataFrame, assessments: pd.DataFrame,
                  instrument: str = "PHQ-9", rules: OutcomeRules = DEFAULT_RULES,
                  attributes: pd.DataFrame | None = None) -> pd.DataFrame:
    """Durability cycles (course.py), with `length_days`: to the loss if it happened, else to the last score in response."""
    from . import course

    cycles = course.build_cycles(patients, treatments, assessments, attributes, instrument=instrument, rules=rules)
    cycles["length_days"] = np.where(cycles["event"], cycles["right_days"], cycles["left_days"])
    return cycles


def waterfall(induction: pd.DataFrame) -> pd.DataFrame:
    """Best percent change from baseline per patient, most worsened first (the waterfall's order)."""
    w = induction.dropna(subset=["best_percent_change"])
    w = w[w["baseline_score"] >= DEFAULT_RULES.min_baseline]
    w = w.sort_values("best_percent_change", ascending=False).reset_index(drop=True)
    w["rank"] = np.arange(1, len(w) + 1)
    w["outcome"] = np.select(
        [w["best_percent_change"] <= -100 * DEFAULT_RULES.response_fall, w["best_percent_change"] < 0],
        ["response (50% or more fall)", "some improvement"], "no improvement or worse")
    return w[["rank", "patient_id", "baseline_score", "best_score", "best_percent_change", "outcome"]]


def trajectory_band(cohort: Cohort, instrument: str, max_week: int = 26, min_n: int = 5) -> pd.DataFrame:
    """Median and interquartile range of scores by whole weeks since the first infusion.

    Each patient contributes one value per week (the mean of that week's
    scores) so frequently assessed patients do not dominate. Weeks with fewer
    than `min_n` patients are dropped (too few to show).
    """
    if cohort.treatments.empty:
        return pd.DataFrame(columns=["week", "median", "q1", "q3", "n"])
    first = cohort.treatments.groupby("patient_id")["administered_at"].min().dt.normalize().rename("first")
    per_patient = weekly_means(first, cohort.assessments, instrument)
    return _band(per_patient[per_patient["week"] <= max_week], min_n)


def weekly_means(first: pd.Series, assessments: pd.DataFrame, instrument: str) -> pd.DataFrame:
    """week, patient_id, total: each patient's mean `instrument` score per whole week (week >= 0) since
    `first` (patient_id -> day of the first infusion). A patient's rows depend on that patient alone."""
    code = scales.get(instrument).code
    a = assessments[(assessments["instrument"] == code) & assessments["total"].notna()]
    a = a.join(first.rename("first"), on="patient_id", how="inner")
    days = (a["administered_at"].dt.normalize() - a["first"]).dt.days
    # week 0 is the baseline (scores from 30 days before up to the first infusion's day, pre-dose);
    # week k holds days 7k-6 .. 7k after it
    week = np.where(days <= 0, np.where(days >= -30, 0, -1), -(-days // 7))
    a = a.assign(week=week)
    a = a[a["week"] >= 0]
    return a.groupby(["week", "patient_id"])["total"].mean().reset_index()


def _band(per_patient: pd.DataFrame, min_n: int) -> pd.DataFrame:
    g = per_patient.groupby("week")["total"]
    out = pd.DataFrame({"median": g.median(), "q1": g.quantile(0.25), "q3": g.quantile(0.75), "n": g.size()}).reset_index()
    return out[out["n"] >= max(min_n, 1)].reset_index(drop=True)


def severity_movement(induction: pd.DataFrame, instrument: str, min_cell: int = 0) -> pd.DataFrame:
    """Counts of patients by baseline band (rows) and latest band (columns), bands in clinical order.

    With `min_cell`, small cells (and the cells that would give them back by subtraction) are NaN.
    """
    scale = scales.get(instrument)
    labels = [b.label for b in scale.bands]
    d = induction.dropna(subset=["baseline_band", "latest_band"])
    table = pd.crosstab(pd.Categorical(d["baseline_band"], labels), pd.Categorical(d["latest_band"], labels), dropna=False)
    table.index.name, table.columns.name = "baseline", "latest"
    table = table.reindex(index=labels, columns=labels, fill_value=0)
    if min_cell > 0:
        table = suppress.blank(table, list(table.columns), min_cell=min_cell, row_totals=True)
    return table


def funnel(induction: pd.DataFrame, patients: pd.DataFrame, by: str, outcome: str = "responded",
           min_cell: int = 0) -> dict:
    """Funnel plot data: each group's rate against the clinic rate with 95% and 99.8% limits.

    Limits are the binomial normal approximation around the clinic rate
    (Spiegelhalter 2005, Stat Med 24:1185), so small groups are judged by
    their size rather than ranked. Groups under `min_cell` are not shown.
    """
    d = induction[induction["evaluable"]].merge(patients[["patient_id", by]], on="patient_id")
    if d.empty:
        return {"groups": pd.DataFrame(columns=[by, "n", "k", "rate"]), "limits": pd.DataFrame(), "clinic_rate": None}
    p0 = float(d[outcome].mean())
    g = d.groupby(by)[outcome].agg(k="sum", n="size").reset_index()
    g["rate"] = g["k"] / g["n"]
    hidden = int((g["n"] < min_cell).sum())
    g = g[g["n"] >= min_cell].reset_index(drop=True)
    n = _funnel_sizes(max(2, min(5, int(g["n"].min()) if len(g) else 2)), int(max(g["n"].max() if len(g) else 10, 10) * 1.15))
    se = np.sqrt(p0 * (1 - p0) / n)
    limits = pd.DataFrame({"n": n, "lo95": np.clip(p0 - 1.96 * se, 0, 1), "hi95": np.clip(p0 + 1.96 * se, 0, 1),
                           "lo998": np.clip(p0 - 3.09 * se, 0, 1), "hi998": np.clip(p0 + 3.09 * se, 0, 1)})
    se_g = np.sqrt(p0 * (1 - p0) / g["n"])
    g["position"] = np.select([abs(g["rate"] - p0) > 3.09 * se_g, abs(g["rate"] - p0) > 1.96 * se_g],
                              ["outside 99.8% limits", "outside 95% limits"], "within limits")
    g["k_shown"] = [suppress.count(int(k), min_cell) for k in g["k"]]  # a count under min_cell shows as "<11"
    return {"groups": g, "limits": limits, "clinic_rate": p0, "hidden_groups": hidden}


def _funnel_sizes(low: int, high: int, exact_up_to: int = 200, points: int = 200) -> np.ndarray:
    """Group sizes to draw the funnel's limits at: every size up to `exact_up_to` (where the limits bend),
    then `points` sizes evenly spaced on a log scale: a 40,000-patient site draws a few hundred points, not 40,000."""
    sizes = np.arange(low, min(high, exact_up_to) + 1)
    if high > exact_up_to:
        sizes = np.union1d(sizes, np.geomspace(exact_up_to, high, points).round().astype(int))
    return sizes


def completeness(treatments: pd.DataFrame, assessments: pd.DataFrame, instrument: str | None = None,
                 days: int = COMPLETENESS_DAYS) -> pd.DataFrame:
    """Per calendar month: infusions, how many had an assessment within `days` days before (same day counts), share."""
    if treatments.empty:
        return _EMPTY_COMPLETENESS.copy()
    merged = assessed_infusions(treatments, assessments, instrument, days)
    out = merged.groupby("month").agg(infusions=("assessed", "size"), assessed=("assessed", "sum")).reset_index()
    out["share"] = out["assessed"] / out["infusions"]
    return out


_EMPTY_COMPLETENESS = pd.DataFrame(columns=["month", "infusions", "assessed", "share"])


def assessed_infusions(treatments: pd.DataFrame, assessments: pd.DataFrame, instrument: str | None = None,
                       days: int = COMPLETENESS_DAYS) -> pd.DataFrame:
    """One row per infusion (ordered by day): patient_id, administered_at, day, month, and `assessed`:
    an assessment (of `instrument`, or any) on the infusion's day or up to `days` days before."""
    a = assessments
    if instrument:
        a = a[a["instrument"] == scales.get(instrument).code]
    t = treatments[["patient_id", "administered_at"]].copy()
    t["day"] = t["administered_at"].dt.normalize()
    s = pd.DataFrame({"patient_id": a["patient_id"], "aday": a["administered_at"].dt.normalize()}).drop_duplicates()
    merged = pd.merge_asof(t.sort_values("day"), s.sort_values("aday"), left_on="day", right_on="aday",
                           by="patient_id", direction="backward")
    merged["assessed"] = (merged["day"] - merged["aday"]).dt.days.le(days).fillna(False).astype(bool)
    merged["month"] = merged["day"].dt.to_period("M").dt.to_timestamp()
    return merged


def interval_distribution(days: pd.Series, width: int = 3, min_cell: int = 0) -> pd.DataFrame:
    """Suggested intervals binned by `width` days: start_day, end_day (exclusive), patients.

    Binned here rather than in the browser so a large clinic sends a few dozen bars, not one
    value per patient; bins under `min_cell` patients (and a complement that would give one
    back) are blank, never a small number.
    """
    values = pd.to_numeric(days, errors="coerce").dropna().to_numpy(dtype=float)
    if not len(values):
        return pd.DataFrame({"start_day": pd.Series(dtype=int), "end_day": pd.Series(dtype=int),
                             "patients": pd.Series(dtype=float)})
    start = np.floor(values / width).astype(int) * width
    counts = pd.Series(start).value_counts().sort_index()
    bins = pd.DataFrame({"start_day": counts.index.to_numpy(), "end_day": counts.index.to_numpy() + width,
                         "patients": counts.to_numpy()})
    return suppress.blank(bins, ["patients"], min_cell=min_cell, value_cols=[])


def infusions_per_patient_month(treatments: pd.DataFrame) -> pd.DataFrame:
    """Per calendar month: infusions, patients infused, infusions per infused patient, split by phase."""
    if treatments.empty:
        return pd.DataFrame(columns=["month", "infusions", "patients", "per_patient"])
    t = treatments.assign(month=treatments["administered_at"].dt.to_period("M").dt.to_timestamp(),
                          phase=treatments["phase"].fillna("unrecorded").replace("", "unrecorded"))
    g = t.groupby("month").agg(infusions=("patient_id", "size"), patients=("patient_id", "nunique")).reset_index()
    g["per_patient"] = g["infusions"] / g["patients"]
    # Maintenance-only rate: the tapering question is about patients past induction.
    m = t[t["phase"] == "maintenance"].groupby("month").agg(m_inf=("patient_id", "size"), m_pat=("patient_id", "nunique"))
    g = g.join(m, on="month")
    g["maintenance_per_patient"] = g["m_inf"] / g["m_pat"]
    return g.drop(columns=["m_inf", "m_pat"])


# --- the cohort page at network scale: per-patient summaries --------------------------
#
# The functions above define each cohort figure on the raw frames. Redoing them on every rerun
# costs time linear in assessments (4.7 M rows at 100,000 patients: about 5 s). Every filter selects
# whole patients, and every figure is an aggregate of per-patient (or per-infusion) values that
# depend on that patient's own rows only, so `cohort_base` and `cohort_summary` reduce the frames
# once per data version, and `cohort_view` aggregates the selected patients' summaries.
# tests/test_cohort_summary.py holds `cohort_view` equal to the raw functions, filtered or not.

TRAJECTORY_WEEKS = 26  # trajectory_band's default max_week: the weeks the page draws
WATERFALL_MAX_BARS = 2000  # above this many patients the waterfall shows one bar per percentile
WATERFALL_BINS = 100


def _readonly(values) -> np.ndarray:
    array = np.asarray(values)
    array.flags.writeable = False  # shared between sessions (st.cache_resource): never changed in place
    return array


@dataclass(frozen=True, eq=False)
class CohortBase:
    """What the cohort page needs from the frames, whatever the instrument; read-only.

    A patient's code is its row position in `patients`; -1 is a row whose patient is not there.
    """
    patients: pd.DataFrame              # the patients frame, as given (reset index)
    first_day: pd.Series                # per patient: day of the first infusion (NaT: never infused)
    first_route: pd.Series              # per patient: route of that infusion
    last_activity_at: np.ndarray        # per patient: latest infusion or assessment (NaT: none)
    comorbidity: dict                   # token -> bool array: which patients list it
    infusion_at: np.ndarray             # every infusion's time, ascending
    infusion_code: np.ndarray           # its patient's code
    infusion_month: np.ndarray          # its calendar month, as an index into `months`
    infusion_assessed: np.ndarray       # an assessment (any instrument) within COMPLETENESS_DAYS before it
    months: pd.Series                   # the calendar months (first day), ascending
    cycles: pd.DataFrame                # PHQ-9 response cycles: patient_id (as the code), left_days, right_days, event
    median_durability_days: float | None  # durability_median of every cycle (the unfiltered headline)
    options: dict                       # filter_options
    period: tuple                       # first and last infusion day (None, None without infusions)

    @property
    def has_infusions(self) -> bool:
        return self.period[0] is not None

    def codes(self, patient_ids) -> np.ndarray:
        return _readonly(pd.Index(self.patients["patient_id"]).get_indexer(pd.Series(patient_ids)).astype(np.int32))


@dataclass(frozen=True, eq=False)
class CohortSummary:
    """CohortBase plus one instrument's per-patient tables; read-only."""
    base: CohortBase
    instrument: str
    induction: pd.DataFrame             # induction_outcomes(...) for `instrument`
    induction_code: np.ndarray
    weekly: pd.DataFrame                # weekly_means up to TRAJECTORY_WEEKS: week, patient_id (the code), total


def cohort_base(patients: pd.DataFrame, treatments: pd.DataFrame, assessments: pd.DataFrame,
                cycles: pd.DataFrame | None) -> CohortBase:
    """Reduce the page frames once per data version; `cycles`: cohort_cycles(..., "PHQ-9") (the headline's durability)."""
    patients = patients.reset_index(drop=True)
    ids = pd.Index(patients["patient_id"])

    def per_patient(series: pd.Series) -> pd.Series:
        return series.reindex(ids).reset_index(drop=True)

    # the same first infusion (and its route, ties included) as filter_cohort picks
    first = treatments.sort_values("administered_at").groupby("patient_id").head(1).set_index("patient_id")
    last = pd.concat([treatments.groupby("patient_id")["administered_at"].max(),
                      assessments.groupby("patient_id")["administered_at"].max()], axis=1).max(axis=1)
    listing: dict[str, list[int]] = {}  # token -> rows of the patients listing it
    for row, text in enumerate(patients["comorbidities"].fillna("")):
        for token in set(str(text).split(";")):
            listing.setdefault(token, []).append(row)
    comorbidity = {}
    for token, rows in listing.items():
        comorbidity[token] = np.zeros(len(patients), dtype=bool)
        comorbidity[token][rows] = True
    if len(treatments):
        merged = assessed_infusions(treatments, assessments).sort_values("administered_at", kind="stable")
        merged = merged[ids.get_indexer(merged["patient_id"]) >= 0]  # filter_cohort keeps only listed patients' rows
        month_index, months = pd.factorize(merged["month"], sort=True)
        infusion_at, infusion_code = merged["administered_at"].to_numpy(), ids.get_indexer(merged["patient_id"]).astype(np.int32)
        month_index = month_index.astype(np.int32)
        assessed = merged["assessed"].to_numpy(dtype=bool)
        period = (treatments["administered_at"].min().date(), treatments["administered_at"].max().date())
    else:
        month_index, months = np.zeros(0, dtype=np.int64), pd.Index([], dtype="datetime64[us]")
        infusion_at, infusion_code = treatments["administered_at"].to_numpy(), np.zeros(0, dtype=np.int64)
        assessed, period = np.zeros(0, dtype=bool), (None, None)
    if cycles is None or cycles.empty:
        cycle_table, median = pd.DataFrame(columns=["patient_id", "left_days", "right_days", "event"]), None
    else:
        # the durability median's point estimate uses patient ids only to tell patients apart: codes do
        cycle_table = pd.DataFrame({"patient_id": ids.get_indexer(cycles["patient_id"]).astype(np.int32),
                                    "left_days": cycles["left_days"].to_numpy(dtype=float),
                                    "right_days": cycles["right_days"].to_numpy(dtype=float),
                                    "event": cycles["event"].to_numpy(dtype=bool)})
        cycle_table = cycle_table[cycle_table["patient_id"] >= 0].reset_index(drop=True)
        median = durability_median(cycle_table) if len(cycle_table) else None
    return CohortBase(
        patients=patients,
        first_day=per_patient(first["administered_at"].dt.normalize()),
        first_route=per_patient(first["route"]),
        last_activity_at=_readonly(pd.to_datetime(per_patient(last)).to_numpy()),
        comorbidity={token: _readonly(flags) for token, flags in comorbidity.items()},
        infusion_at=_readonly(infusion_at), infusion_code=_readonly(infusion_code),
        infusion_month=_readonly(month_index), infusion_assessed=_readonly(assessed),
        months=pd.Series(months), cycles=cycle_table, median_durability_days=median,
        options=filter_options(patients, treatments), period=period)


def cohort_summary(base: CohortBase, assessments: pd.DataFrame, induction: pd.DataFrame | None,
                   instrument: str) -> CohortSummary:
    """`instrument`'s per-patient tables; `induction`: induction_outcomes(treatments, assessments, instrument)
    (None when there are no infusions: nothing to summarise)."""
    if induction is None:
        induction = pd.DataFrame(columns=["patient_id", "evaluable", "responded", "remitted", "best_percent_change",
                                          "baseline_score", "best_score", "baseline_band", "latest_band"])
    if base.has_infusions:
        first = pd.Series(base.first_day.to_numpy(), index=pd.Index(base.patients["patient_id"])).dropna()
        weekly = weekly_means(first, assessments, instrument)
        weekly = weekly[weekly["week"] <= TRAJECTORY_WEEKS].reset_index(drop=True)
        weekly["patient_id"] = base.codes(weekly["patient_id"])
    else:
        weekly = pd.DataFrame({"week": np.zeros(0, dtype=np.int64), "patient_id": np.zeros(0, dtype=np.int32),
                               "total": np.zeros(0)})
    codes = base.codes(induction["patient_id"])
    listed = codes >= 0  # filter_cohort keeps only listed patients' rows
    return CohortSummary(base=base, instrument=scales.get(instrument).code, induction=induction[listed].copy(),
                         induction_code=_readonly(codes[listed]), weekly=weekly)


def select_patients(base: CohortBase, filters: Filters) -> np.ndarray | None:
    """Which patients (by code) match every filter, as filter_cohort keeps them; None when no filter is set."""
    p = base.patients
    keep = None

    def both(mask) -> np.ndarray:
        mask = np.asarray(mask, dtype=bool)
        return mask if keep is None else keep & mask

    if filters.sites:
        keep = both(isin(p["site"], filters.sites))
    if filters.clinicians:
        keep = both(isin(p["clinician"], filters.clinicians))
    if filters.comorbidities:
        listed = [base.comorbidity[c] for c in set(filters.comorbidities) if c in base.comorbidity]
        keep = both(np.logical_or.reduce(listed) if listed else np.zeros(len(p), dtype=bool))
    if filters.routes:
        keep = both(isin(base.first_route, filters.routes))
    if filters.start or filters.end:
        started = base.first_day
        mask = started.notna().to_numpy()
        if filters.start:
            mask = mask & (started >= pd.Timestamp(filters.start)).to_numpy()
        if filters.end:
            mask = mask & (started <= pd.Timestamp(filters.end)).to_numpy()
        keep = both(mask)
    return keep


def _rows(keep: np.ndarray | None, codes: np.ndarray) -> np.ndarray | slice:
    """The rows (of a table with these patient codes) whose patient is kept; every row when keep is None."""
    if keep is None:
        return slice(None)
    return np.append(keep, False)[codes]  # code -1 (patient not in the patients frame) reads the False


def cohort_view(summary: CohortSummary, filters: Filters, today: date, min_cell: int = 0,
                timings: dict | None = None) -> dict:
    """Everything the cohort page shows for these filters, from the summaries; the same figures as
    filter_cohort + headline, waterfall, trajectory_band, severity_movement and completeness on the frames.

    Returns patients (the selected patients' rows), induction (their rows of induction_outcomes),
    cycles (n_cycles, n_patients, n_losses of their PHQ-9 response cycles), headline, waterfall
    (one row per patient), trajectory, severity, completeness. `timings`, when given, gets each step's seconds.
    """
    import time

    base = summary.base
    clock = [time.perf_counter()]

    def lap(name: str):
        if timings is not None:
            now = time.perf_counter()
            timings[name] = timings.get(name, 0.0) + now - clock[0]
            clock[0] = now

    instrument = scales.get(filters.instrument).code
    if instrument != summary.instrument:
        raise ValueError(f"cohort_view: filters ask for {instrument} but the summary is for {summary.instrument}")
    keep = select_patients(base, filters)
    patients = base.patients if keep is None else base.patients[keep].reset_index(drop=True)
    induction = summary.induction if keep is None else summary.induction[_rows(keep, summary.induction_code)]
    cycles = base.cycles if keep is None else base.cycles[_rows(keep, base.cycles["patient_id"].to_numpy())]
    lap("select")
    out = {"patients": patients, "induction": induction,
           "cycles": {"n_cycles": len(cycles), "n_patients": int(cycles["patient_id"].nunique()),
                      "n_losses": int(cycles["event"].sum())}}
    out["headline"] = _headline(base, keep, patients, induction, cycles, filters, today, min_cell)
    lap("headline")
    out["waterfall"] = waterfall(induction)
    lap("waterfall")
    if not base.infusion_code[_rows(keep, base.infusion_code)].size:  # the selection has no infusion
        out["trajectory"] = pd.DataFrame(columns=["week", "median", "q1", "q3", "n"])
    else:
        weekly = summary.weekly
        if keep is not None:
            weekly = weekly[_rows(keep, weekly["patient_id"].to_numpy())]
        out["trajectory"] = _band(weekly, max(5, min_cell))
    lap("trajectory_band")
    out["severity"] = severity_movement(induction, instrument, min_cell)
    lap("severity_movement")
    out["completeness"] = _completeness(base, keep)
    lap("completeness")
    return out


def _headline(base: CohortBase, keep: np.ndarray | None, patients: pd.DataFrame, induction: pd.DataFrame,
              cycles: pd.DataFrame, filters: Filters, today: date, min_cell: int) -> dict:
    """headline() from the summaries."""
    since = pd.Timestamp(today) - ACTIVE_DAYS * DAY
    month_start = pd.Timestamp(today.replace(day=1))
    active = base.last_activity_at >= np.datetime64(since.to_datetime64(), "us")
    # infusions this month: a slice of the time-ordered infusions
    bounds = np.array([month_start.to_datetime64(), (pd.Timestamp(today) + DAY).to_datetime64()], dtype=base.infusion_at.dtype)
    lo, hi = np.searchsorted(base.infusion_at, bounds)
    month_codes = base.infusion_code[lo:hi]
    evaluable = induction[induction["evaluable"]]
    if keep is None:
        median = base.median_durability_days
    else:
        median = durability_median(cycles) if len(cycles) else None
    return {
        "patients": int(patients["patient_id"].nunique()),
        "active_patients": int(active.sum() if keep is None else (active & keep).sum()),
        "infusions_this_month": int(month_codes.size if keep is None else np.append(keep, False)[month_codes].sum()),
        "month": month_start.strftime("%B %Y"),
        "treated": int(induction["patient_id"].nunique()),
        "evaluable": len(evaluable),
        "response": wilson(int(evaluable["responded"].sum()), len(evaluable), min_cell),
        "remission": wilson(int(evaluable["remitted"].sum()), len(evaluable), min_cell),
        "median_durability_days": median,
        "period": filters.describe(),
    }


def _completeness(base: CohortBase, keep: np.ndarray | None) -> pd.DataFrame:
    """completeness() (any instrument, COMPLETENESS_DAYS) from the per-infusion flags."""
    rows = _rows(keep, base.infusion_code)
    month = base.infusion_month[rows]
    if month.size == 0:
        return _EMPTY_COMPLETENESS.copy()
    infusions = np.bincount(month, minlength=len(base.months))
    assessed = np.bincount(month[base.infusion_assessed[rows]], minlength=len(base.months))
    present = infusions > 0
    out = pd.DataFrame({"month": base.months[present].reset_index(drop=True),
                        "infusions": infusions[present].astype(np.int64), "assessed": assessed[present].astype(np.int64)})
    out["share"] = out["assessed"] / out["infusions"]
    return out


def waterfall_bars(w: pd.DataFrame, max_bars: int | None = None, bins: int = WATERFALL_BINS) -> pd.DataFrame:
    """The waterfall as drawn: waterfall() itself up to `max_bars` patients; above, one bar per
    percentile (`bins` groups of consecutive patients in waterfall order) at the group's median best
    change, with n, low, high (the group's range) and no patient ids: a browser should not receive
    100,000 bars, nor a cohort chart a list of patients."""
    if len(w) <= (WATERFALL_MAX_BARS if max_bars is None else max_bars):
        return w
    group = np.arange(len(w)) * bins // len(w)
    g = w.groupby(group)["best_percent_change"]
    bars = pd.DataFrame({"rank": np.arange(1, bins + 1), "best_percent_change": g.median().to_numpy(),
                         "low": g.min().to_numpy(), "high": g.max().to_numpy(), "n": g.size().to_numpy(),
                         "first_rank": w["rank"].groupby(group).min().to_numpy(),
                         "last_rank": w["rank"].groupby(group).max().to_numpy()})
    bars["outcome"] = np.select(
        [bars["best_percent_change"] <= -100 * DEFAULT_RULES.response_fall, bars["best_percent_change"] < 0],
        ["response (50% or more fall)", "some improvement"], "no improvement or worse")
    bars.attrs["patients"] = len(w)
    return bars


# --- one patient ---------------------------------------------------------------------

def interval_suggestions(db, version: tuple, patient_ids=None, instrument: str = "PHQ-9", target: float = 0.8,
                         today: date | None = None) -> pd.DataFrame | None:
    """Next-infusion suggestions from the whole clinic's model of this data version
    (intervals.clinic_suggestions: one fit, the same answer for every viewer), the rows of
    `patient_ids` only (the viewer's own patients; None: everyone). One row per treated patient:
    status says whether they get a suggestion and, if not, why. None while intervals.py is missing."""
    intervals = optional("intervals")
    if intervals is None:
        return None
    result = intervals.clinic_suggestions(db, version, instrument, target, today)
    return result.table if patient_ids is None else result.for_patients(patient_ids)


_BASIS = {
    "personal": "mostly this patient's own {n} response cycle{s}",
    "mixed": "this patient's {n} response cycle{s} combined with the clinic's typical pattern",
    "cohort": "mostly the clinic's typical pattern (this patient's own history is still short: {n} cycle{s})",
}
_SOURCE = {"score trend": "the score trend", "own losses": "this patient's own losses of response",
           "cohort": "the clinic's typical pattern"}


def _present(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v)) and not pd.isna(v)


def describe_suggestion(s: dict | None, today: date) -> str:
    """A suggestion in a clinician's words, with the evidence beside it."""
    if not s:
        return ("No suggested date yet: it needs at least one infusion given while in response, "
                "to learn how long response lasts for this patient.")
    if s.get("status", "suggested") != "suggested":
        return f"No suggested date: {s.get('status_text') or s.get('status')}."
    if s.get("next_due_on") is None or pd.isna(s.get("next_due_on")):
        return ("No suggested date yet: it needs at least one infusion given while in response, "
                "to learn how long response lasts for this patient.")
    due = pd.Timestamp(s["next_due_on"]).date()
    days = (due - today).days
    when = f"in {days} days" if days > 1 else "tomorrow" if days == 1 else "today" if days == 0 else f"{-days} days overdue"
    text = (f"Suggested next infusion: {due:%a %d %b %Y} ({when}), "
            f"{s['suggested_interval_days']:.0f} days after the last one")
    lo, hi = s.get("interval_low_days"), s.get("interval_high_days")
    if _present(lo) and _present(hi):
        text += f"; a reasonable range is {lo:.0f} to {hi:.0f} days"
    target = s.get("target", 0.8)
    n = int(s.get("n_cycles") or 0)
    basis = _BASIS.get(str(s.get("basis")), "{n} cycle{s}").format(n=n, s="" if n == 1 else "s")
    text += (f". This is when the chance of still being in response is expected to fall to {100 * target:.0f}%, "
             f"based on {basis}.")
    if "observed_cycles" in s:
        k, m = int(s.get("observed_cycles") or 0), int(s.get("observed_losses") or 0)
        text += f" Observed: {k} response cycle{'s' if k != 1 else ''}, {m} ended in loss of response"
        if m and _present(s.get("observed_median_loss_days")):
            text += (f" (seen after a median of {s['observed_median_loss_days']:.0f} days, the earliest after "
                     f"{s['observed_shortest_loss_days']:.0f})")
        text += "."
    source = s.get("estimate_source")
    if source:
        text += f" Driven by {_SOURCE.get(source, source)}: {s.get('estimate_note', '')}"
    if s.get("latest_responding") is False:
        text += " The latest score no longer meets response: consider the next infusion sooner than this date."
    taper = s.get("taper")
    if taper == "stretch":
        text += f" Consider lengthening the interval: {s.get('taper_reason')}."
    elif taper == "consider_pause":
        text += f" Consider a pause in maintenance: {s.get('taper_reason')}."
    return text


def patient_alerts(record: dict[str, pd.DataFrame], rules: OutcomeRules = DEFAULT_RULES) -> list[str]:
    """Plain-language alerts for the patient banner (latest PHQ-9 item 9, reliable worsening)."""
    t, a = record["treatments"], record["assessments"]
    messages = []
    phq = a[(a["instrument"] == "PHQ-9")].sort_values("administered_at")
    if len(phq) and pd.notna(phq["item_9"].iloc[-1]) and float(phq["item_9"].iloc[-1]) > 0:
        when = phq["administered_at"].iloc[-1].date()
        messages.append(f"Latest PHQ-9 ({when:%d %b %Y}) item 9 (thoughts of being better off dead or self-harm) "
                        f"scored {int(phq['item_9'].iloc[-1])}: assess suicide risk today.")
    if t.empty:
        return messages
    for code in ("PHQ-9", "MADRS"):
        if not (a["instrument"] == code).any():
            continue
        status = outcomes.patient_status(t, a, code, rules)
        if status.empty:
            continue
        row = status.iloc[0]
        rci = row["rci_points"]
        if row["worse_than_last"]:
            messages.append(f"{code} worsened reliably since the previous score ({row['previous_score']:.0f} to "
                            f"{row['latest_score']:.0f}; reliable change is {rci:.1f} points or more).")
        elif row["worse_than_best"]:
            messages.append(f"{code} worsened reliably from the best score ({row['best_score']:.0f} to "
                            f"{row['latest_score']:.0f}; reliable change is {rci:.1f} points or more).")
    return messages


def latest_scores(assessments: pd.DataFrame, baselines: dict[str, float | None]) -> pd.DataFrame:
    """Per instrument: latest score, when, severity band, baseline and percent change."""
    rows = []
    for code in scales.codes():
        a = assessments[(assessments["instrument"] == code) & assessments["total"].notna()].sort_values("administered_at")
        if a.empty:
            continue
        scale = scales.get(code)
        latest = a.iloc[-1]
        base = baselines.get(code)
        change = None if base is None or pd.isna(base) or base == 0 else 100 * (latest["total"] - base) / base
        rows.append({"instrument": code, "latest": float(latest["total"]), "on": latest["administered_at"].date(),
                     "band": scale.band(latest["total"]), "baseline": base, "change_percent": change,
                     "max": scale.total_max})
    return pd.DataFrame(rows)


def patient_thresholds(treatments: pd.DataFrame, assessments: pd.DataFrame,
                       rules: OutcomeRules = DEFAULT_RULES) -> dict[str, dict]:
    """Per instrument present: baseline, response threshold and remission cut-off for the chart."""
    out = {}
    for code in scales.codes():
        if not (assessments["instrument"] == code).any():
            continue
        cut, inclusive = outcomes.remission_threshold(code, rules)
        base = None
        if len(treatments):
            b = outcomes.baselines(treatments, assessments, code, rules)
            if len(b) and pd.notna(b["baseline_score"].iloc[0]):
                base = float(b["baseline_score"].iloc[0])
        out[code] = {
            "baseline": base,
            "response_at_or_below": None if base is None else base * (1 - rules.response_fall),
            "remission_cut": cut, "remission_inclusive": inclusive,
            "bands": [(b.low, b.high, b.label) for b in scales.get(code).bands],
            "max": scales.get(code).total_max,
        }
    return out


def item_matrix(assessments: pd.DataFrame, instrument: str, last_n: int = 12) -> pd.DataFrame:
    """Item answers (rows: items with their labels; columns: the last `last_n` dates)."""
    scale = scales.get(instrument)
    a = assessments[assessments["instrument"] == scale.code].sort_values("administered_at").tail(last_n)
    if a.empty:
        return pd.DataFrame()
    items = list(range(1, scale.scored_items + 1))
    values = a[[f"item_{i}" for i in items]].astype("Float64").to_numpy(dtype=float, na_value=np.nan)
    m = pd.DataFrame(values.T, columns=[d.strftime("%d %b %y") for d in a["administered_at"]])
    labels = scale.item_labels or tuple(f"item {i}" for i in items)
    m.index = [f"{i}. {labels[i - 1][:38]}" for i in items]
    return m


def patient_history(record: dict[str, pd.DataFrame], limit: int = 20) -> pd.DataFrame:
    """Infusions and scores interleaved, newest first."""
    t = record["treatments"]
    a = record["assessments"]
    inf = pd.DataFrame({
        "when": t["administered_at"], "event": "infusion: " + t["phase"].fillna("phase not recorded"),
        "detail": t["route"].str.upper() + " " + t["dose_mg_per_kg"].map(lambda d: f"{d:g} mg/kg" if pd.notna(d) else "dose not recorded"),
    })
    scored = pd.DataFrame({
        "when": a["administered_at"], "event": a["instrument"],
        "detail": [
            (f"{tot:g} ({scales.get(i).band(tot)})" if pd.notna(tot) else "no total")
            + (f"; item 9 = {int(i9)}" if i == "PHQ-9" and pd.notna(i9) and i9 > 0 else "")
            + (" (prorated)" if m == "prorated" else "")
            for i, tot, i9, m in zip(a["instrument"], a["total"], a["item_9"], a["total_method"])
        ],
    })
    h = pd.concat([inf, scored], ignore_index=True).sort_values("when", ascending=False, kind="stable").head(limit)
    h["when"] = h["when"].dt.strftime("%Y-%m-%d")
    return h.reset_index(drop=True)


def patient_csv(record: dict[str, pd.DataFrame]) -> bytes:
    """This patient's infusions and assessments as one CSV (a `kind` column says which)."""
    t = record["treatments"].assign(kind="infusion")
    a = record["assessments"].assign(kind="assessment")
    both = pd.concat([t, a], ignore_index=True).sort_values("administered_at", kind="stable")
    cols = ["kind"] + [c for c in both.columns if c != "kind"]
    both = both[cols].copy()
    from .ingest.rules import escape_formula  # a spreadsheet must not run an imported '=...' as a formula

    for column in both.columns:
        if both[column].dtype == object or pd.api.types.is_string_dtype(both[column]):
            present = both[column].notna()
            both[column] = both[column].astype(object)
            both.loc[present, column] = escape_formula(both.loc[present, column]).to_numpy()
    buf = io.StringIO()
    both.to_csv(buf, index=False)
    return buf.getvalue().encode()


# --- the due list ------------------------------------------------------------------

URGENCY = (
    ("safety flag", "a self-report answered PHQ-9 item 9 above 0; stays until a clinician acknowledges it"),
    ("item 9 positive", "PHQ-9 item 9 above 0 at the latest score"),
    ("overdue", "suggested infusion date has passed"),
    ("lost response", "no longer in response at the latest score"),
    ("worsened", "reliable worsening"),
    ("due this week", "suggested infusion within 7 days"),
    ("no recent score", "no assessment for a while"),
    ("taper candidate", "response has held: consider a longer interval"),
    ("self-report due", "no self-report for a while, or an infusion is near (analytics.selfreport.Cadence)"),
    ("no longer in active care", f"no infusion and no score for {ACTIVE_DAYS} days: no due date (shown on request)"),
)
SELF_REPORT_COLUMNS = ["safety_flag", "self_report_due", "self_report_reason"]


def due_list(patients: pd.DataFrame, treatments: pd.DataFrame, assessments: pd.DataFrame, today: date,
             no_score_days: int = 28, suggestions: pd.DataFrame | None = None,
             rules: OutcomeRules = DEFAULT_RULES, active_days: int = ACTIVE_DAYS,
             self_report: pd.DataFrame | None = None, include_inactive: bool = False) -> pd.DataFrame:
    """The caseload ordered by urgency (see URGENCY), one row per active patient with a reason.

    `suggestions`: intervals.py output (patient_id, next_due_on, taper, ...) or None.
    `self_report`: analytics.selfreport.due_columns output (open safety flags, self-report due) or None.
    Patients with no infusion or assessment in `active_days` are no longer in active care: left
    out, or with `include_inactive` listed last in their own group ("no longer in active care",
    no due date).
    """
    today_ts = pd.Timestamp(today)
    last_inf = treatments.groupby("patient_id")["administered_at"].max()
    last_score = assessments.groupby("patient_id")["administered_at"].max()
    base = pd.DataFrame({"patient_id": patients["patient_id"]}).set_index("patient_id")
    base["last_infusion"] = last_inf
    base["last_assessment"] = last_score
    latest_activity = base[["last_infusion", "last_assessment"]].max(axis=1)
    inactive = base[(latest_activity < today_ts - active_days * DAY) & latest_activity.notna()].copy()
    base = base[latest_activity >= today_ts - active_days * DAY]
    if base.empty:
        return pd.DataFrame(columns=["patient_id", "reasons", "next_due_on", "last_infusion", "last_assessment", "latest_phq9",
                                     *SELF_REPORT_COLUMNS])
    status = outcomes.patient_status(treatments[treatments["patient_id"].isin(base.index)],
                                     assessments[assessments["patient_id"].isin(base.index)], "PHQ-9", rules)
    status = status.set_index("patient_id").reindex(base.index)
    base["latest_phq9"] = status["latest_score"]
    flags = pd.DataFrame(index=base.index)
    flags["item 9 positive"] = status["item9_positive"].fillna(False).astype(bool)
    flags["lost response"] = status["lost_response"].fillna(False).astype(bool)
    flags["worsened"] = (status["worse_than_last"].fillna(False) | status["worse_than_best"].fillna(False)).astype(bool)
    if suggestions is not None and len(suggestions):
        s = suggestions.set_index("patient_id").reindex(base.index)
        base["next_due_on"] = pd.to_datetime(s["next_due_on"])
        flags["overdue"] = (base["next_due_on"] < today_ts).fillna(False).astype(bool)
        flags["due this week"] = (~flags["overdue"] & (base["next_due_on"] <= today_ts + 7 * DAY)).fillna(False).astype(bool)
        flags["taper candidate"] = s["taper"].isin(["stretch", "consider_pause"]) if "taper" in s else False
    else:
        base["next_due_on"] = pd.NaT
        flags["overdue"] = flags["due this week"] = flags["taper candidate"] = False
    flags["no recent score"] = (base["last_assessment"].isna() | (base["last_assessment"] < today_ts - no_score_days * DAY))
    if self_report is not None and len(self_report):
        extra = self_report.set_index("patient_id").reindex(base.index)
        base["safety_flag"] = extra["safety_flag"].fillna(False).astype(bool)
        base["self_report_due"] = extra["self_report_due"].fillna(False).astype(bool)
        base["self_report_reason"] = extra["self_report_reason"].fillna("")
    else:
        base["safety_flag"] = base["self_report_due"] = False
        base["self_report_reason"] = ""
    flags["safety flag"] = base["safety_flag"]
    flags["self-report due"] = base["self_report_due"]
    order = [name for name, _ in URGENCY]
    flags = flags[order]
    base["urgency"] = np.where(flags.any(axis=1), flags.to_numpy().argmax(axis=1), len(order))
    base["reasons"] = flags.apply(lambda r: ", ".join(n for n in order if r[n]), axis=1)
    base["days_since_score"] = (today_ts - base["last_assessment"]).dt.days
    out = base[base["reasons"] != ""].reset_index()
    if include_inactive and len(inactive):
        inactive = inactive.assign(reasons="no longer in active care", next_due_on=pd.NaT, latest_phq9=np.nan,
                                   safety_flag=False, self_report_due=False, self_report_reason="",
                                   urgency=len(order), days_since_score=(today_ts - inactive["last_assessment"]).dt.days)
        out = pd.concat([out, inactive.reset_index()], ignore_index=True)
    out = out.sort_values(["urgency", "next_due_on", "patient_id"], na_position="last").reset_index(drop=True)
    return out[["patient_id", "reasons", "next_due_on", "last_infusion", "last_assessment", "days_since_score", "latest_phq9",
                *SELF_REPORT_COLUMNS]]


# --- data quality --------------------------------------------------------------------

def data_quality(patients: pd.DataFrame, treatments: pd.DataFrame, assessments: pd.DataFrame) -> pd.DataFrame:
    """Simple counts an administrator checks after an import."""
    first_inf = treatments.groupby("patient_id")["administered_at"].min()
    base = outcomes.baselines(treatments, assessments, "PHQ-9") if len(treatments) else pd.DataFrame(columns=["baseline_score"])
    rows = [
        ("patients", len(patients)),
        ("infusions", len(treatments)),
        ("assessments", len(assessments)),
        ("patients never infused", int((~patients["patient_id"].isin(first_inf.index)).sum())),
        ("infusions without a recorded phase", int(treatments["phase"].isna().sum() + (treatments["phase"] == "").sum())),
        ("infusions without a dose", int(treatments["dose_mg_per_kg"].isna().sum())),
        ("assessments with a prorated total", int((assessments["total_method"] == "prorated").sum())),
        ("assessments with a rater-given total", int((assessments["total_method"] == "given").sum())),
        ("treated patients without a PHQ-9 baseline (30 days before the first infusion)", int(base["baseline_score"].isna().sum())),
    ]
    return pd.DataFrame(rows, columns=["check", "count"])


def method_tables(rules: OutcomeRules = DEFAULT_RULES) -> dict[str, pd.DataFrame]:
    """The definitions pages document, read from the registry and OutcomeRules so they cannot drift."""
    scale_rows = []
    for s in scales.SCALES.values():
        cut, inclusive = outcomes.remission_threshold(s.code, rules)
        try:
            rci = f"{outcomes.reliable_change_index(s.code, rules):.1f} points"
        except ValueError:
            rci = "not defined (no published reliability in the registry)"
        scale_rows.append({
            "instrument": s.code, "name": s.name, "rated by": s.rater, "items": s.scored_items,
            "total range": f"0-{s.total_max}",
            "severity bands": "; ".join(f"{b.low}-{b.high} {b.label}" for b in s.bands),
            "remission": f"{'≤' if inclusive else '<'} {cut:g}",
            "reliable change": rci,
            "missing items": s.missing_rule,
        })
    rule_rows = [{"rule": name, "value": str(getattr(rules, name))} for name in rules.__dataclass_fields__]
    return {"scales": pd.DataFrame(scale_rows), "rules": pd.DataFrame(rule_rows)}


# --- durability page -----------------------------------------------------------------

SUBGROUPS = {
    "site": "site", "clinician": "clinician", "route": "route of the starting infusion",
    "baseline_band": "baseline severity band", "has_anxiety": "comorbid anxiety", "has_ptsd": "comorbid PTSD",
    "sex": "sex", "phase": "phase of the starting infusion",
}


def survival_curves(result: dict, min_cell: int = 0) -> list[dict]:
    """Curves for charts.survival from cohort_durability(): every group (or all cycles and post-induction)."""
    def curve(label: str, summary: dict) -> dict | None:
        points = summary.get("survival") or []
        if not points or summary.get("n_patients", 0) < min_cell:
            return None
        s = np.array([p["s"] for p in points], dtype=float)
        lo = np.array([np.nan if p["lo"] is None else p["lo"] for p in points], dtype=float)
        hi = np.array([np.nan if p["hi"] is None else p["hi"] for p in points], dtype=float)
        return {"label": label, "times": np.array([p["day"] for p in points], dtype=float), "survival": s,
                "lower": np.where(np.isnan(lo), s, lo), "upper": np.where(np.isnan(hi), s, hi),
                "n": f"{summary['n_cycles']} cycles, {summary['n_patients']} patients"}

    if result.get("groups"):
        pairs = list(result["groups"].items())
    else:
        pairs = [("every cycle", result), ("first cycle after induction", result.get("post_induction", {}))]
        if result.get("definitions_survival"):
            pairs.append(("every cycle, definitions read literally (sensitivity)", _definitions(result)))
    return [c for c in (curve(label, summary) for label, summary in pairs) if c is not None]


def _definitions(result: dict) -> dict:
    """The literal (definitions-based) figures of a cohort_durability result, as a summary."""
    return {**result, **{k[len("definitions_"):]: v for k, v in result.items() if k.startswith("definitions_")}}


def durability_table(result: dict, min_cell: int = 0) -> pd.DataFrame:
    """Median and quartiles with 95% CIs per curve, in days."""
    def fmt(v):
        return "not reached" if v is None else f"{v:.0f}"

    rows = []
    pairs = list(result["groups"].items()) if result.get("groups") else \
        [("every cycle", result), ("first cycle after induction", result.get("post_induction", {}))]
    if not result.get("groups") and result.get("definitions_survival"):
        pairs.append(("every cycle, definitions read literally (sensitivity)", _definitions(result)))
    for label, s in pairs:
        if not s or s.get("n_patients", 0) < min_cell:
            continue
        ci = s.get("median_ci") or [None, None]
        q = s.get("quartiles_days") or [None, None]
        rows.append({"group": label, "cycles": s["n_cycles"], "patients": s["n_patients"], "losses": s["n_events"],
                     "median days (95% CI)": f"{fmt(s.get('median_days'))} ({fmt(ci[0])}-{fmt(ci[1])})",
                     "25% lost by day": fmt(q[0]), "75% lost by day": fmt(q[1]),
                     "note": s.get("note", "")})
    return pd.DataFrame(rows)


MODEL_TERMS = {
    "baseline_score": "baseline score (per point)", "has_anxiety": "comorbid anxiety", "has_ptsd": "comorbid PTSD",
    "prior_failed_trials": "prior failed trials (per trial)", "early_response": "early response (per % fall)",
}


def _term_label(term: dict) -> str:
    if term.get("level") is not None:
        return f"{term['covariate']} {term['level']} (vs {term.get('reference')})"
    return MODEL_TERMS.get(term["term"], term["term"].replace("_", " "))


def forest_rows(model: dict) -> pd.DataFrame:
    """Finite time ratios from durability_model() for the forest plot (term, estimate, low, high, p)."""
    rows = [
        {"term": _term_label(t), "estimate": t.get("time_ratio"), "low": t.get("lo"), "high": t.get("hi"), "p": t.get("p")}
        for t in model.get("terms", [])
    ]
    frame = pd.DataFrame(rows, columns=["term", "estimate", "low", "high", "p"])
    ok = np.isfinite(frame[["estimate", "low", "high"]].astype(float)).all(axis=1) & (frame["estimate"].astype(float) > 0)
    return frame[ok].reset_index(drop=True)


def policy_comparison(n_patients: int = 1000, seed: int = 0) -> pd.DataFrame | None:
    """analytics.policy.compare() as a table (simulated clinic, not this clinic's patients); None if missing."""
    policy = optional("policy")
    if policy is None or not hasattr(policy, "compare"):
        return None
    return pd.DataFrame(policy.compare(n_patients=n_patients, seed=seed, prior_patients=n_patients))


# --- data page ------------------------------------------------------------------------

def preview_upload(paths) -> pd.DataFrame:
    """What the import would do with these CSV files, without writing anything.

    Runs the importer's own file reading and row checks (analytics.ingest);
    checks that need the database (e.g. a patient not yet known) happen at import.
    One row per file: file, kind, rows, accepted, rejected, refused, and
    `rejects` (a frame of line, column, reason).
    """
    from .ingest import FileRefused, read_csv, rules

    rows = []
    for path in paths:
        name = getattr(path, "name", str(path))
        try:
            parsed = read_csv(path)
        except FileRefused as exc:
            rows.append({"file": name, "kind": None, "rows": 0, "accepted": 0, "rejected": 0,
                         "refused": str(exc), "rejects": pd.DataFrame(columns=["line", "column", "reason"])})
            continue
        checked = rules.validate(parsed.kind, parsed.frame, trimmed=True)
        rejects = checked.rejects.rename(columns={"_line": "line"})[["line", "column", "reason"]]
        if parsed.malformed:
            rejects = pd.concat([rejects, pd.DataFrame(parsed.malformed, columns=["line", "column", "reason"])],
                                ignore_index=True)
        rejects = rejects.sort_values("line", kind="stable").reset_index(drop=True)
        bad_lines = int(rejects["line"].nunique())
        total = len(parsed.frame) + len(parsed.malformed)
        rows.append({"file": name, "kind": parsed.kind, "rows": total, "accepted": total - bad_lines,
                     "rejected": bad_lines, "refused": None, "rejects": rejects})
    return pd.DataFrame(rows)


def report_tables(report) -> tuple[pd.DataFrame, pd.DataFrame]:
    """An ingest ImportReport as (per-file summary, rejected rows with reasons)."""
    files = pd.DataFrame([{
        "file": f.file, "kind": f.kind, "rows": f.rows_total, "new": f.rows_inserted, "updated": f.rows_updated,
        "unchanged": f.rows_unchanged, "rejected": f.rows_rejected, "batch": f.batch_id, "refused": f.refused or "",
    } for f in report.files])
    rejects = pd.DataFrame([r._asdict() for r in report.rejects], columns=["file", "line", "column", "reason"])
    return files, rejects
