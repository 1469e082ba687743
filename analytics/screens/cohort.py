"""The cohort outcomes page (directors): headline figures, waterfall, weekly trajectory band,
severity movement, funnel plot, measurement completeness, with filters.

`cohort_choices(ws, instrument)` gives what the filter widgets offer; `cohort_screen(ws,
filters, today, min_cell)` everything the page draws for them, small counts already
suppressed for the scope. Both read the workspace's per-patient summaries, built once per
data version: a rerun aggregates those, never the raw assessments (see below). Outcome
definitions come from `analytics.outcomes` (OutcomeRules), so the page cannot disagree with
the command line.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import date

import numpy as np
import pandas as pd
from statsmodels.stats.proportion import proportion_confint

from .. import course, outcomes, scales, suppress
from ..permissions import may
from ..durability.bootstrap import cluster_bootstrap_turnbull
from ..outcomes import DEFAULT_RULES, OutcomeRules
from .workspace import Workspace

DAY = pd.Timedelta(days=1)
ACTIVE_DAYS = 90  # a patient with an infusion or assessment in the last 90 days counts as active
COMPLETENESS_DAYS = 7  # an assessment within 7 days before an infusion (the infusion day included)


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
    instrument: str = scales.PRIMARY
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


# --- induction outcomes ---------------------------------------------------------------

def induction_end(treatments: pd.DataFrame, assessments: pd.DataFrame, instrument: str,
                  rules: OutcomeRules = DEFAULT_RULES) -> pd.DataFrame:
    """patient_id, induction_end_at, induction_infusions: the opening run of induction infusions.

    Phases come from course.py (recorded phase kept, missing ones derived by
    OutcomeRules), so the pages and the durability cycles agree on induction.
    """
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


# --- the figures ---------------------------------------------------------------------

def durability_median(cycles: pd.DataFrame) -> float | None:
    """Median length of a response cycle in days (Turnbull NPMLE: loss lies between two scores).

    The durability page's point estimate (whole-day intervals, durability.bootstrap), so the two
    pages agree. Fitting the raw fractional days instead ran ~20,000 EM iterations over every cycle
    on each rerun of the cohort page (22 s at 10,000 patients; docs/performance.md).
    """
    if cycles is None or cycles.empty:
        return None
    fit = cluster_bootstrap_turnbull(cycles["left_days"].to_numpy(dtype=float), cycles["right_days"].to_numpy(dtype=float),
                                     cycles["patient_id"].to_numpy(), n_boot=0, probs=(0.5,))
    return fit.quantiles[0.5]


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


def band_by_week(per_patient: pd.DataFrame, min_n: int) -> pd.DataFrame:
    """Median, quartiles and patients per week of `weekly_means` rows; weeks with fewer than `min_n` patients dropped."""
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


# --- the cohort page at network scale: per-patient summaries --------------------------
#
# The functions above define each cohort figure; computed on the raw frames on every rerun they
# cost time linear in assessments (4.7 M rows at 100,000 patients: about 5 s). Every filter selects
# whole patients, and every figure is an aggregate of per-patient (or per-infusion) values that
# depend on that patient's own rows only, so `cohort_base` and `cohort_summary` reduce the frames
# once per data version, and `cohort_view` aggregates the selected patients' summaries.
# tests/test_cohort_summary.py holds `cohort_view` equal to the figures computed straight from the
# frames (tests/oracles/cohort.py), filtered or not.

TRAJECTORY_WEEKS = 26  # the weeks the page draws
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
    cycles: pd.DataFrame                # primary-instrument response cycles: patient_id (as the code), left_days, right_days, event
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
    """Reduce the page frames once per data version; `cycles`: the primary instrument's cycles (the headline's durability)."""
    patients = patients.reset_index(drop=True)
    ids = pd.Index(patients["patient_id"])

    def per_patient(series: pd.Series) -> pd.Series:
        return series.reindex(ids).reset_index(drop=True)

    # the same first infusion (and its route, ties included) as the figures on the raw frames pick
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
        merged = merged[ids.get_indexer(merged["patient_id"]) >= 0]  # only listed patients' rows count
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
    listed = codes >= 0  # only listed patients' rows count
    return CohortSummary(base=base, instrument=scales.get(instrument).code, induction=induction[listed].copy(),
                         induction_code=_readonly(codes[listed]), weekly=weekly)


def select_patients(base: CohortBase, filters: Filters) -> np.ndarray | None:
    """Which patients (by code) match every filter (the route and dates: of the first infusion); None when no filter is set."""
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
    """Everything the cohort page shows for these filters, from the summaries; the same figures as the
    headline, waterfall, weekly band, severity_movement and completeness computed on the filtered frames.

    Returns patients (the selected patients' rows), induction (their rows of induction_outcomes),
    cycles (n_cycles, n_patients, n_losses of their primary-instrument response cycles), headline, waterfall
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
        out["trajectory"] = band_by_week(weekly, max(5, min_cell))
    lap("trajectory_band")
    out["severity"] = severity_movement(induction, instrument, min_cell)
    lap("severity_movement")
    out["completeness"] = _completeness(base, keep)
    lap("completeness")
    return out


def _headline(base: CohortBase, keep: np.ndarray | None, patients: pd.DataFrame, induction: pd.DataFrame,
              cycles: pd.DataFrame, filters: Filters, today: date, min_cell: int) -> dict:
    """The headline figures of the selection: patients, active patients, infusions this month, response
    and remission after induction (Wilson CIs), median durability."""
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




# --- the screen ----------------------------------------------------------------------

def instruments() -> tuple[str, ...]:
    """The instruments the page offers, in registry order (the first is its default)."""
    return tuple(scales.codes())


def cohort_tables(ws: Workspace, instrument: str) -> CohortSummary:
    """The per-patient summaries of `instrument`, built once per workspace (frames, the primary
    instrument's cycles for the headline's durability, induction outcomes, then the summaries)."""
    code = scales.get(instrument).code

    def base() -> CohortBase:
        f = ws.frames()
        return ws.once(("cohort_base",), lambda: cohort_base(f["patients"], f["treatments"], f["assessments"],
                                                              ws.cycles(scales.PRIMARY)))

    def induction() -> pd.DataFrame:
        f = ws.frames()
        return ws.once(("induction", code), lambda: induction_outcomes(f["treatments"], f["assessments"], code))

    def build() -> CohortSummary:
        b = base()
        return cohort_summary(b, ws.frames()["assessments"], induction() if b.has_infusions else None, code)
    return ws.once(("cohort_summary", code), build)


@dataclass(frozen=True)
class CohortChoices:
    """What the filter widgets offer for one instrument."""
    has_infusions: bool
    options: dict  # sites, clinicians, routes, comorbidities
    period: tuple  # the first and last infusion day (None, None without infusions)


def cohort_choices(ws: Workspace, instrument: str) -> CohortChoices:
    base = cohort_tables(ws, instrument).base
    return CohortChoices(base.has_infusions, base.options, base.period)


@dataclass(frozen=True, eq=False)
class CohortScreen:
    """Everything the cohort page draws for one set of filters; counts under `min_cell` are shown
    as "<n" through `count`, `figure` and `severity_label`."""
    instrument: str
    min_cell: int
    show_ids: bool  # patient ids in the waterfall's hover (roles that see patient rows)
    headline: dict
    cycle_counts: dict  # n_cycles, n_patients, n_losses of the selection's primary-instrument cycles
    remission_cut: float
    remission_inclusive: bool
    waterfall: pd.DataFrame  # one row per patient
    waterfall_bars: pd.DataFrame  # as drawn (one bar per percentile above WATERFALL_MAX_BARS patients)
    trajectory: pd.DataFrame
    severity: pd.DataFrame
    completeness: pd.DataFrame  # months with at least `min_cell` infusions, `assessed_shown` suppressed
    patients: pd.DataFrame  # the selection
    induction: pd.DataFrame  # its induction outcomes
    durability_instrument: str = scales.PRIMARY  # the headline's median durability is on this instrument's cycles

    def count(self, n: int) -> str:
        return suppress.count(n, self.min_cell)

    def figure(self, text: str, n: int) -> str:
        return suppress.figure(text, n, self.min_cell)

    @property
    def severity_label(self) -> str:
        return suppress.label(self.min_cell)

    def funnel(self, by: str, outcome: str = "responded") -> dict:
        """The funnel plot of sites or clinicians (`by`) for response or remission (`outcome`)."""
        return funnel(self.induction, self.patients, by, outcome, min_cell=self.min_cell)


def cohort_screen(ws: Workspace, filters: Filters, today: date, timings: dict | None = None) -> CohortScreen:
    """The cohort page for `filters` as the workspace's scope sees it (`timings`, when given, gets each step's seconds)."""
    scope = ws.data.scope
    min_cell = scope.suppression_threshold
    view = cohort_view(cohort_tables(ws, filters.instrument), filters, today, min_cell, timings=timings)
    started = time.perf_counter()
    bars = waterfall_bars(view["waterfall"])
    comp = view["completeness"]
    if min_cell:  # a share from fewer infusions than the minimum cell size is not shown
        comp = comp[comp["infusions"] >= min_cell].assign(
            assessed_shown=lambda c: [suppress.count(int(a), min_cell) for a in c["assessed"]])
    cut, inclusive = outcomes.remission_threshold(filters.instrument)
    if timings is not None:
        timings["waterfall"] = timings.get("waterfall", 0.0) + time.perf_counter() - started
    return CohortScreen(
        instrument=scales.get(filters.instrument).code, min_cell=min_cell, show_ids=may(scope, "see_patient_rows"),
        headline=view["headline"], cycle_counts=view["cycles"], remission_cut=cut, remission_inclusive=inclusive,
        waterfall=view["waterfall"], waterfall_bars=bars, trajectory=view["trajectory"], severity=view["severity"],
        completeness=comp, patients=view["patients"], induction=view["induction"])
