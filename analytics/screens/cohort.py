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

from .. import course, memory, outcomes, scales, suppress
from ..permissions import may
from ..durability import cohort_durability
from ..durability.cohort import model_figures, with_model_figures
from ..durability.bootstrap import cluster_bootstrap_turnbull
from ..outcomes import DEFAULT_RULES, OutcomeRules
from .durability import curve_note, observed_until, survival_curves
from .workspace import Workspace, induction_ends, register_memo_warmer, register_warmer

DAY = pd.Timedelta(days=1)
ACTIVE_DAYS = 90  # a patient with an infusion or assessment in the last 90 days counts as active
COMPLETENESS_DAYS = 7  # an assessment within 7 days before an infusion (the infusion day included)


# --- proportions ----------------------------------------------------------------

@dataclass(frozen=True)
class Rate:
    k: int | None
    n: int | None
    low: float | None
    high: float | None
    suppressed: bool = False
    reason: str | None = None  # why a suppressed rate is not shown

    @property
    def value(self) -> float | None:
        return None if self.suppressed or not self.n else self.k / self.n

    def text(self) -> str:
        if self.suppressed:
            return f"not shown: {self.reason or 'fewer patients than the minimum cell size'}"
        if self.n == 0:
            return "no evaluable patients"
        return f"{100 * self.k / self.n:.0f}% ({self.k}/{self.n}; 95% CI {100 * self.low:.0f}-{100 * self.high:.0f}%)"

    def withheld(self, reason: str) -> "Rate":
        """The same rate with its numbers dropped (a screen never carries a suppressed figure)."""
        return Rate(None, None, None, None, suppressed=True, reason=reason)


def wilson(k: int, n: int, min_cell: int = 0) -> Rate:
    """Proportion with its 95% Wilson score interval (statsmodels). With `min_cell`, suppressed unless both
    the patients with the outcome and those without number at least `min_cell` (suppress.share_shown)."""
    if n == 0:
        return Rate(0, 0, None, None)
    low, high = proportion_confint(int(k), int(n), alpha=0.05, method="wilson")
    hidden = not suppress.share_shown(int(k), int(n), min_cell)
    return Rate(int(k), int(n), float(low), float(high), suppressed=hidden,
                reason=f"fewer than {min_cell} patients with, or without, the outcome" if hidden else None)


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
    return induction_ends(course.build_course(treatments, assessments, instrument, rules))


def induction_outcomes(treatments: pd.DataFrame, assessments: pd.DataFrame, instrument: str,
                       rules: OutcomeRules = DEFAULT_RULES, window_days: int = 21,
                       ends: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per treated patient: baseline, the first score after induction, response and remission.

    The post-induction score is the first score of `instrument` after the day of
    the last induction infusion and within `window_days` of it (a MADRS taken
    pre-dose at the next infusion counts). Patients without a usable baseline or
    post-induction score have evaluable = False and are left out of the rates.
    Also: best_percent_change (most negative = most improved; negative means
    fewer symptoms) over every score after treatment began, latest score and band.
    `ends`: `induction_end(...)` when already at hand (the workspace keeps it from the cycles' course).
    """
    code = scales.get(instrument).code
    scale = scales.get(code)
    base = outcomes.baselines(treatments, assessments, code, rules)
    if ends is None:
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
    # stable: tied patients keep their induction order, so a selection's waterfall is the whole cohort's rows
    # of its patients, in the same order (cohort_view reads it so)
    w = w.sort_values("best_percent_change", ascending=False, kind="stable").reset_index(drop=True)
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
    limits = funnel_limits(p0, g["n"])
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
    weekly: pd.DataFrame                # weekly_means up to TRAJECTORY_WEEKS: week, patient_id (the code), total;
    #                                     sorted by week, then total (a selection's quartiles are positions: _band)
    waterfall: pd.DataFrame             # waterfall(induction): every patient's bar, in the waterfall's order
    waterfall_code: np.ndarray          # the patient code of each of its rows
    severity_cell: np.ndarray           # per patient code: baseline band x latest band cell (-1: none)


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
    order = np.lexsort((weekly["total"].to_numpy(), weekly["week"].to_numpy()))
    weekly = weekly.iloc[order].reset_index(drop=True)
    codes = base.codes(induction["patient_id"])
    listed = codes >= 0  # only listed patients' rows count
    induction, codes = induction[listed].copy(), codes[listed]
    w = waterfall(induction)
    return CohortSummary(base=base, instrument=scales.get(instrument).code, induction=induction,
                         induction_code=_readonly(codes), weekly=weekly, waterfall=w,
                         waterfall_code=base.codes(w["patient_id"]),
                         severity_cell=_readonly(_severity_cells(induction, codes, len(base.patients), instrument)))


def _severity_cells(induction: pd.DataFrame, codes: np.ndarray, n: int, instrument: str) -> np.ndarray:
    """Per patient code, the cell of severity_movement's table the patient counts in (row * bands + column; -1: none)."""
    labels = [b.label for b in scales.get(instrument).bands]
    cell = np.full(n, -1, dtype=np.int64)
    known = induction["baseline_band"].notna().to_numpy() & induction["latest_band"].notna().to_numpy()
    rows = pd.Categorical(induction["baseline_band"], labels).codes
    cols = pd.Categorical(induction["latest_band"], labels).codes
    ok = known & (rows >= 0) & (cols >= 0) & (codes >= 0)
    cell[codes[ok]] = rows[ok] * len(labels) + cols[ok]
    return cell


def _severity_counts(cell: np.ndarray, instrument: str) -> pd.DataFrame:
    """severity_movement(..., min_cell=0) of the patients whose cells these are (-1: not counted)."""
    labels = [b.label for b in scales.get(instrument).bands]
    size = len(labels)
    counts = np.bincount(cell[cell >= 0], minlength=size * size).astype(np.int64).reshape(size, size)
    return pd.DataFrame(counts, index=pd.Index(labels, name="baseline"), columns=pd.Index(labels, name="latest"))


def _band(week: np.ndarray, total: np.ndarray, min_n: int) -> pd.DataFrame:
    """band_by_week of rows sorted by week, then total: each week's median and quartiles read at their
    positions, with pandas' own formulas (the same floats: tests/test_cohort_summary.py)."""
    n = np.bincount(week) if week.size else np.zeros(0, dtype=np.int64)
    weeks = np.flatnonzero(n >= max(min_n, 1))
    count = n[weeks]
    start = (np.cumsum(n) - n)[weeks]

    def quantile(p: float) -> np.ndarray:
        position = p * (count - 1).astype(float)
        below = position.astype(np.int64)
        frac = position % 1
        value = total[start + below]
        above = total[start + np.minimum(below + 1, count - 1)]
        return np.where(frac == 0.0, value, value + (above - value) * frac)

    low, high = total[start + (count - 1) // 2], total[start + count // 2]
    median = np.where(count % 2 == 1, low, (low + high) / 2)
    return pd.DataFrame({"week": weeks.astype(np.int64), "median": median, "q1": quantile(0.25),
                         "q3": quantile(0.75), "n": count.astype(np.int64)})


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
                timings: dict | None = None, keep: np.ndarray | None | str = "filters") -> dict:
    """Everything the cohort page shows for these filters, from the summaries; the same figures as the
    headline, waterfall, weekly band, severity_movement and completeness computed on the filtered frames.

    Returns patients (the selected patients' rows), induction (their rows of induction_outcomes),
    cycles (n_cycles, n_patients, n_losses of their primary-instrument response cycles), headline, waterfall
    (one row per patient), trajectory, severity, completeness. `timings`, when given, gets each step's seconds.
    `keep`: which patients (by code; None: all) when the caller has already selected them (the screen's
    snapped filters); by default `select_patients(base, filters)`.
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
    if isinstance(keep, str):
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
    if keep is None:
        out["waterfall"] = summary.waterfall
    else:
        w = summary.waterfall[_rows(keep, summary.waterfall_code)].reset_index(drop=True)
        out["waterfall"] = w.assign(rank=np.arange(1, len(w) + 1))
    lap("waterfall")
    if not base.infusion_code[_rows(keep, base.infusion_code)].size:  # the selection has no infusion
        out["trajectory"] = pd.DataFrame(columns=["week", "median", "q1", "q3", "n"])
    else:
        week, total = summary.weekly["week"].to_numpy(), summary.weekly["total"].to_numpy()
        if keep is not None:
            rows = _rows(keep, summary.weekly["patient_id"].to_numpy())
            week, total = week[rows], total[rows]
        out["trajectory"] = _band(week, total, max(5, min_cell))
    lap("trajectory_band")
    cell = summary.severity_cell if keep is None else np.where(keep, summary.severity_cell, -1)
    counts = _severity_counts(cell, instrument)
    out["severity_counts"] = counts
    out["severity"] = suppress.blank(counts, list(counts.columns), min_cell=min_cell, row_totals=True) \
        if min_cell > 0 else counts
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


def waterfall_bars(w: pd.DataFrame, max_bars: int | None = None, bins: int = WATERFALL_BINS,
                   min_cell: int = 0) -> pd.DataFrame:
    """The waterfall as drawn: waterfall() itself up to `max_bars` patients; above, one bar per
    percentile (`bins` groups of consecutive patients in waterfall order) at the group's median best
    change, with n, low, high (the group's range) and no patient ids: a browser should not receive
    100,000 bars, nor a cohort chart a list of patients.

    With `min_cell` (roles without patient-level access) never one bar per patient: groups of at least
    `min_cell` consecutive patients (at most `bins`), each at its median, without its range (the
    lowest and highest are single patients' values); no bar at all under `min_cell` patients."""
    if min_cell <= 0 and len(w) <= (WATERFALL_MAX_BARS if max_bars is None else max_bars):
        return w
    group = suppress.ranked_groups(len(w), min_cell, bins) if min_cell > 0 else np.arange(len(w)) * bins // len(w)
    if len(group) == 0:
        bars = pd.DataFrame({c: pd.Series(dtype=float) for c in ("rank", "best_percent_change", "n", "first_rank",
                                                                  "last_rank")}).assign(outcome=pd.Series(dtype=object))
        bars.attrs["patients"] = 0
        return bars
    g = w.groupby(group)["best_percent_change"]
    bars = pd.DataFrame({"rank": np.arange(1, g.ngroups + 1), "best_percent_change": g.median().to_numpy(),
                         "n": g.size().to_numpy(),
                         "first_rank": w["rank"].groupby(group).min().to_numpy(),
                         "last_rank": w["rank"].groupby(group).max().to_numpy()})
    if min_cell <= 0:
        bars.insert(2, "low", g.min().to_numpy())
        bars.insert(3, "high", g.max().to_numpy())
    bars["outcome"] = np.select(
        [bars["best_percent_change"] <= -100 * DEFAULT_RULES.response_fall, bars["best_percent_change"] < 0],
        ["response (50% or more fall)", "some improvement"], "no improvement or worse")
    bars.attrs["patients"] = len(w)
    if min_cell > 0:
        bars.attrs["min_cell"] = min_cell
    return bars


# --- the screen ----------------------------------------------------------------------

def instruments() -> tuple[str, ...]:
    """The instruments the page offers, in registry order (the first is its default)."""
    return tuple(scales.codes())


def cohort_tables(ws: Workspace, instrument: str) -> CohortSummary:
    """The per-patient summaries of `instrument`, built once per workspace (frames, the primary
    instrument's cycles for the headline's durability, induction outcomes, then the summaries)."""
    code = scales.get(instrument).code

    # the frames are read only when a table is built (tables loaded from a saved file need none of them)
    def base() -> CohortBase:
        def build_base() -> CohortBase:
            f = ws.frames()
            return cohort_base(f["patients"], f["treatments"], f["assessments"], ws.cycles(scales.PRIMARY))
        return ws.once(("cohort_base",), build_base)

    def induction() -> pd.DataFrame:
        def build_induction() -> pd.DataFrame:
            f = ws.frames()
            return induction_outcomes(f["treatments"], f["assessments"], code, ends=ws.induction_ends(code))
        return ws.once(("induction", code), build_induction)

    def build() -> CohortSummary:
        b = base()
        summary = cohort_summary(b, ws.frames()["assessments"], induction() if b.has_infusions else None, code)
        # the summaries' working frames, freed but kept resident by glibc's heap and Arrow's pool (100,000
        # patients: ~150 MB under every later step's peak)
        memory.release_freed()
        return summary
    return ws.once(("cohort_summary", code), build)



# --- what the filters offer, and the guard against differencing ------------------------------
#
# For roles without patient-level access every figure on the page is computed from at least
# `min_cell` patients, and no two selections a director can make differ by fewer (docs/security.md,
# "Disclosure control"): a selection is every patient or one attribute category (pooled so each holds
# `min_cell` patients, e.g. "clinician: dr_osei + dr_tanaka"), crossed with a first-infusion period in
# whole months joined into blocks of `min_cell` starts; suppress.QueryFamily checks each figure against
# every other selection of that family. Patient-level roles (min_cell 0) may combine filters freely.

FILTER_FIELDS = {"site": "sites", "clinician": "clinicians", "route": "routes", "comorbidity": "comorbidities"}
EVERY_PATIENT = "every patient"
ONE_AT_A_TIME = ("choose a period, or one site, clinician, route or comorbidity over the whole period, one at "
                 "a time: combinations of filters could be subtracted from one another to single out a few patients")


@dataclass(frozen=True, eq=False)
class FilterChoices:
    """What the filter widgets offer a scope, and the family of selections they can make."""
    min_cell: int
    family: suppress.QueryFamily
    labels: dict  # site, clinician, route, comorbidity -> the categories offered (pooled labels)
    of_value: dict  # the same keys -> {raw value -> its category}
    periods: pd.DataFrame  # label, first_day, last_day: the blocks of whole months the period moves in

    def member(self, name: str, label: str) -> int:
        return self.family.labels.index(f"{name}: {label}")

    def choose(self, filters: Filters) -> tuple[int | None, tuple | None, str | None]:
        """(member, period, None), or (None, None, why) when the filters leave the family. Raw values map to
        the category holding them, so asking for one small clinician gives their pool; dates map to the
        blocks holding them (whole months)."""
        chosen = [(name, value) for name, field_name in FILTER_FIELDS.items() for value in getattr(filters, field_name)]
        member = 0
        if len(chosen) > 1:
            return None, None, ONE_AT_A_TIME
        if chosen:
            name, value = chosen[0]
            label = value if value in self.labels[name] else self.of_value[name].get(value)
            if label is None:
                return None, None, f"no {name} called {value!r}"
            member = self.member(name, label)
        period = self.period(filters.start, filters.end)
        if not self.family.allows(member, period):
            return None, None, ONE_AT_A_TIME
        return member, period, None

    def period(self, start: date | None, end: date | None):
        if (start is None and end is None) or self.periods.empty:
            return None
        last = len(self.periods) - 1
        lo = 0 if start is None else int((self.periods["last_day"] < start).sum())
        hi = last if end is None else int((self.periods["first_day"] <= end).sum()) - 1
        return (min(lo, last), max(hi, 0)) if lo <= hi else (lo, hi)

    def period_bounds(self, period) -> tuple[date | None, date | None]:
        """The first and last day a period covers (None, None: not set, or empty)."""
        if period is None:
            return None, None
        lo, hi = period
        if lo > hi or lo >= len(self.periods) or hi < 0:
            return None, None
        return self.periods["first_day"].iloc[lo], self.periods["last_day"].iloc[hi]

    def describe(self, member: int, period, instrument: str) -> str:
        parts = [instrument]
        if period is not None:
            first, last = self.period_bounds(period)
            parts.append(f"first infusion {first:%d %b %Y} to {last:%d %b %Y}" if first else "first infusion: no period")
        if member:
            parts.append(self.family.labels[member])
        return "; ".join(parts)


def filter_choices(base: CohortBase, min_cell: int) -> FilterChoices:
    """Pooled categories and whole-month periods for `min_cell` (suppress.pool_small, pool_flags, pool_periods)."""
    p = base.patients
    n = len(p)
    members, names, labels, of_value = [np.ones(n, dtype=bool)], [EVERY_PATIENT], {}, {}
    for name, values, missing in (("site", p["site"], "not recorded"), ("clinician", p["clinician"], "not recorded"),
                                  ("route", base.first_route, "no infusion")):
        codes, pooled, mapping = suppress.pool_small(values.reset_index(drop=True), min_cell, missing=missing)
        labels[name], of_value[name] = list(pooled), mapping
        for i, label in enumerate(pooled):
            members.append(codes == i)
            names.append(f"{name}: {label}")
    flags = {token: mask for token, mask in base.comorbidity.items() if token.strip()}
    flag_members, pooled, mapping = suppress.pool_flags(flags, min_cell) if flags else (np.zeros((0, n), bool), (), {})
    labels["comorbidity"], of_value["comorbidity"] = list(pooled), mapping
    for i, label in enumerate(pooled):
        members.append(flag_members[i])
        names.append(f"comorbidity: {label}")
    first = base.first_day
    started = first.notna().to_numpy()
    rows = []
    block = np.full(n, -1, dtype=np.int32)
    if started.any():
        absolute = (first.dt.year * 12 + first.dt.month - 1).to_numpy(dtype=float, na_value=np.nan)
        low = int(np.nanmin(absolute))
        index = np.where(started, np.nan_to_num(absolute, nan=low) - low, -1).astype(np.int64)
        months = pd.period_range(pd.Period(year=low // 12, month=low % 12 + 1, freq="M"), periods=int(index.max()) + 1,
                                 freq="M")
        of_month = suppress.pool_periods(index, len(months), min_cell)
        block = np.where(index >= 0, of_month[np.maximum(index, 0)], -1).astype(np.int32)
        for b in range(int(of_month.max()) + 1):
            span = months[of_month == b]
            text = span[0].strftime("%b %Y") if len(span) == 1 else f"{span[0].strftime('%b %Y')}–{span[-1].strftime('%b %Y')}"
            rows.append({"label": text, "first_day": span[0].start_time.date(), "last_day": span[-1].end_time.date()})
    periods = pd.DataFrame(rows, columns=["label", "first_day", "last_day"])
    family = suppress.QueryFamily(tuple(names), np.array(members, dtype=bool), block, tuple(periods["label"]), min_cell)
    return FilterChoices(min_cell, family, labels, of_value, periods)


@dataclass(frozen=True, eq=False)
class _Selection:
    """One selection and the rules for its figures: `refusals(populations)` gives, for each population, None
    (its figures may be shown) or why not; patient-level roles get None everywhere."""
    selected: np.ndarray
    filtered: bool
    family: suppress.QueryFamily | None = None
    member: int = 0
    period: tuple | None = None

    def refusals(self, populations: suppress.Populations) -> list:
        if self.family is None:
            return [None] * populations.count
        return self.family.refusals(self.member, self.period, populations)

    def refusal(self, population: np.ndarray | None = None) -> str | None:
        mask = np.ones(len(self.selected), dtype=bool) if population is None else population
        return self.refusals(suppress.Populations.of_masks([mask]))[0]

    def other(self, member: int) -> "_Selection":
        """Another member of the family over the same (whole) period: a funnel group."""
        return _Selection(self.family.select(member, self.period), True, self.family, member, self.period)


@dataclass(frozen=True)
class CohortChoices:
    """What the filter widgets offer for one instrument."""
    has_infusions: bool
    options: dict  # sites, clinicians, routes, comorbidities (pooled for roles without patient-level access)
    period: tuple  # the first and last infusion day (None, None without infusions)
    periods: pd.DataFrame = None  # label, first_day, last_day: the period filter moves in these blocks of whole months
    subsets: tuple = ()  # "every patient", "site: lakeview", ...: the page's one choice of patients


def _filter_choices(ws: Workspace, base: CohortBase) -> FilterChoices:
    min_cell = ws.data.scope.suppression_threshold
    return ws.once(("cohort_filter_choices", min_cell), lambda: filter_choices(base, min_cell))


def cohort_choices(ws: Workspace, instrument: str) -> CohortChoices:
    base = cohort_tables(ws, instrument).base
    choices = _filter_choices(ws, base)
    options = {FILTER_FIELDS[name]: list(values) for name, values in choices.labels.items()}
    return CohortChoices(base.has_infusions, options, base.period, choices.periods, tuple(choices.family.labels))


def chosen_filters(instrument: str, subset: str = EVERY_PATIENT, periods: pd.DataFrame | None = None,
                   first: str | None = None, last: str | None = None) -> Filters:
    """Filters from the page's widgets: `subset` one of CohortChoices.subsets ("site: lakeview"), `first` and
    `last` labels of CohortChoices.periods (the whole range: no period filter)."""
    fields = {}
    if subset and subset != EVERY_PATIENT:
        name, _, label = subset.partition(": ")
        fields[FILTER_FIELDS[name]] = (label,)
    start = end = None
    if periods is not None and len(periods) and first is not None and last is not None:
        labels = list(periods["label"])
        lo, hi = sorted((labels.index(first), labels.index(last)))
        if (lo, hi) != (0, len(labels) - 1):
            start, end = periods["first_day"].iloc[lo], periods["last_day"].iloc[hi]
    return Filters(instrument=instrument, start=start, end=end, **fields)


# --- the screen's figures, each checked against the rules -------------------------------------

@dataclass(frozen=True, eq=False)
class _Cohortwide:
    """Which patients (by code, over the whole scope) each figure is computed from, for one instrument."""
    treated: np.ndarray
    evaluable: np.ndarray
    responded: np.ndarray
    remitted: np.ndarray
    waterfall: np.ndarray
    severity_cell: np.ndarray  # baseline band x latest band cell of each patient (-1: none)
    cycles: np.ndarray
    lost: np.ndarray  # a cycle that ended in loss
    censored: np.ndarray  # a cycle with no loss seen
    weekly: suppress.Populations  # patients with a score in each week
    infused: suppress.Populations  # patients infused in each month (base.months)
    assessed: suppress.Populations  # ... with an infusion that had an assessment before it
    unassessed: suppress.Populations  # ... with one that had none


def _mask(n: int, codes: np.ndarray) -> np.ndarray:
    out = np.zeros(n, dtype=bool)
    codes = np.asarray(codes)
    out[codes[codes >= 0]] = True
    return out


def _pairs(groups: np.ndarray, codes: np.ndarray, count: int) -> suppress.Populations:
    """Populations from (group, patient code) rows, each pair once."""
    ok = codes >= 0
    key = np.unique(groups[ok].astype(np.int64) * (int(codes.max(initial=0)) + 1) + codes[ok])
    width = int(codes.max(initial=0)) + 1
    return suppress.Populations(key // width, key % width, count)


def _cohortwide(summary: CohortSummary) -> _Cohortwide:
    base = summary.base
    n = len(base.patients)
    ind, codes = summary.induction, summary.induction_code
    evaluable = ind["evaluable"].to_numpy(dtype=bool)
    responded = ind["responded"].to_numpy(dtype=bool) & evaluable
    remitted = ind["remitted"].to_numpy(dtype=bool) & evaluable
    cyc = base.cycles
    cyc_codes = cyc["patient_id"].to_numpy(dtype=np.int64) if len(cyc) else np.zeros(0, np.int64)
    event = cyc["event"].to_numpy(dtype=bool) if len(cyc) else np.zeros(0, bool)
    weekly = summary.weekly
    months = len(base.months)
    month, inf_code, assessed = base.infusion_month, base.infusion_code.astype(np.int64), base.infusion_assessed
    return _Cohortwide(
        treated=_mask(n, codes), evaluable=_mask(n, codes[evaluable]), responded=_mask(n, codes[responded]),
        remitted=_mask(n, codes[remitted]), waterfall=_mask(n, summary.waterfall_code), severity_cell=summary.severity_cell,
        cycles=_mask(n, cyc_codes), lost=_mask(n, cyc_codes[event]), censored=_mask(n, cyc_codes[~event]),
        weekly=_pairs(weekly["week"].to_numpy(dtype=np.int64), weekly["patient_id"].to_numpy(dtype=np.int64),
                      TRAJECTORY_WEEKS + 1),
        infused=_pairs(month, inf_code, months), assessed=_pairs(month[assessed], inf_code[assessed], months),
        unassessed=_pairs(month[~assessed], inf_code[~assessed], months))


def cohort_populations(ws: Workspace, summary: CohortSummary) -> _Cohortwide:
    return ws.once(("cohort_populations", summary.instrument), lambda: _cohortwide(summary))


@dataclass(frozen=True, eq=False)
class CohortScreen:
    """Everything the cohort page draws for one set of filters, already checked against the disclosure
    rules of the scope (docs/security.md): a count that may not be shown is the text "<11" (fewer
    than the minimum cell size) or "not shown" (subtraction from a neighbouring selection would give
    it), a rate is `Rate.withheld`, a chart's hidden parts are absent (never small numbers)."""
    instrument: str
    min_cell: int
    show_ids: bool  # patient ids in the waterfall's hover (roles that see patient rows)
    description: str  # the period (whole months) and filters, as applied
    refused: str | None  # nothing is shown for this selection, and why
    headline: dict  # patients, treated, evaluable, active_patients, infusions_this_month: int or text; month,
    #                 month_to_date, response and remission (Rate), and durability_headline's keys (median_durability
    #                 and its interval from the measurement model, median_definitions the literal sensitivity figure)
    cycle_counts: dict  # n_cycles, n_patients, n_losses: int or text
    remission_cut: float
    remission_inclusive: bool
    waterfall_bars: pd.DataFrame  # as drawn: one bar per patient, or per group of patients (column n)
    waterfall_patients: object  # how many patients it holds (int or text)
    trajectory: pd.DataFrame
    severity: pd.DataFrame  # NaN: a suppressed cell
    severity_note: str | None  # why the whole table is not shown
    completeness: pd.DataFrame  # month, infusions, assessed, share, partial (the month in progress)
    completeness_hidden: int  # months left out (too few infusions or patients)
    completeness_overall: str | None  # "82% of 1,234 infusions", or None when it may not be shown
    notes: tuple = ()  # what is left out and why, in words
    durability_instrument: str = scales.PRIMARY  # the headline's median durability is on this instrument's cycles
    _funnel: dict | None = None
    _cycles: pd.DataFrame | None = None  # the selection's primary-instrument cycles (patient codes, no ids)
    _model_figures: dict | None = None  # the measurement model's figures of the selection (None: no model)

    @property
    def shows_nothing(self) -> bool:
        return self.refused is not None

    def count(self, n) -> str:
        return n if isinstance(n, str) else suppress.count(n, self.min_cell)

    @property
    def severity_label(self) -> str:
        return suppress.label(self.min_cell)

    def funnel(self, by: str, outcome: str = "responded") -> dict:
        """The funnel plot of sites or clinicians (`by`) for response or remission (`outcome`): groups too
        small, or that subtraction would narrow, are left out (hidden_groups says how many)."""
        return guarded_funnel(self._funnel, by, outcome)

    def durability_curve(self, n_boot: int = 200) -> dict:
        """The selection's durability curve (primary instrument) as the durability page draws curves:
        screens.durability.survival_curves on cohort_durability of the selection's cycles."""
        cycles = self._cycles
        if cycles is None or cycles.empty or self.refused or isinstance(self.cycle_counts["n_patients"], str):
            return {"curves": [], "note": "too few patients with response cycles to draw a durability curve"}
        result = cohort_durability(cycles, instrument=self.durability_instrument, n_boot=n_boot)
        if self._model_figures:  # the headline's estimate carries the curve; the literal one stays beside it
            result = with_model_figures(result, self._model_figures)
        curves = survival_curves(result, cycles, None, self.min_cell)
        return {"curves": curves, "note": curve_note(curves, self.min_cell), "result": result}


def _shown(value, reason: str | None, min_cell: int, *, minimum=None):
    """A count as displayed: the number, "<11" when it (or the patients behind it) is under the minimum,
    "not shown" when subtraction from a neighbouring selection would give it."""
    if min_cell <= 0:
        return value
    if reason is not None:
        return suppress.label(min_cell) if reason == suppress.SIZE.format(k=min_cell) else "not shown"
    if not suppress.shown(value if minimum is None else minimum, min_cell):
        return suppress.label(min_cell)
    return value


def durability_headline(cycles: pd.DataFrame, literal_median: float | None, figures: dict | None, min_cell: int,
                        refused: str | None) -> dict:
    """The headline's median durability of the selection's cycles, as the durability page and `durability --json`
    give it: the measurement model's estimate of the selection's patients with its 95% interval (`figures`:
    durability.cohort.model_figures of those patients), and the definitions read literally (`literal_median`,
    Turnbull) as a labelled sensitivity analysis. Without a model (too few patients to fit one) the literal figure
    is the headline and says so. Under the small-number rules (`min_cell`) nothing is shown when the selection's cycles
    may not be (`refused`), and a day beyond the last one `min_cell` patients were still seen in response reads
    "more than N days" (the curves stop there too).

    Keys: median_durability (text), median_interval (text or None), median_source ("measurement model" or
    "definitions"), median_definitions (text or None: the sensitivity figure), median_durability_days,
    median_ci_days, median_definitions_days (numbers as shown, None when withheld), median_note (why not shown)."""
    out = {"median_durability": "not shown", "median_interval": None, "median_source": "definitions",
           "median_definitions": None, "median_durability_days": None, "median_ci_days": [None, None],
           "median_definitions_days": None, "median_note": None}
    if refused is not None:
        out["median_note"] = f"durability not shown: {refused}"
        return out
    end = observed_until(cycles, min_cell)

    def days(v) -> str:
        if v is None:
            return "not reached"
        if min_cell and end is not None and v > end:
            return f"more than {end:.0f} days"
        return f"{v:.0f} days"

    def number(v):  # a figure as shown: a bound beyond the data is not a number to hand on
        return None if v is None or (min_cell and end is not None and v > end) else round(float(v), 2)

    median, ci = literal_median, [None, None]
    if figures:
        median, ci = figures["median_days"], figures["median_ci"]
        out["median_source"] = "measurement model"
        out["median_definitions"] = days(literal_median)
        out["median_definitions_days"] = number(literal_median)
    out["median_durability"] = days(median)
    out["median_durability_days"] = number(median)
    if median is not None and (ci[0] is not None or ci[1] is not None):
        low, high = ("not reached" if v is None else days(v).removesuffix(" days") for v in ci)
        out["median_interval"] = f"95% CI {low} to {high} days"
        out["median_ci_days"] = [number(v) for v in ci]
    return out


MEDIAN_HELP = ("Median time from an infusion given in response to loss of response, the same estimate as the "
               "Durability page and `durability --json`: each cycle's scores are read as noisy measurements of a "
               "trend crossing the response line (the measurement model of the whole clinic, each patient of this "
               "selection counted once; Method page), with its 95% interval. Beside it, the outcome definitions "
               "read literally (Turnbull estimate over the same cycles) as a sensitivity analysis: on simulated "
               "clinics that figure was 30-49% shorter than the truth with weekly or fortnightly PHQ-9 and up to "
               "3.5 times longer with MADRS only at visits (docs/durability.md).")
MEDIAN_HELP_LITERAL = ("Median time from an infusion given in response to loss of response, with the outcome "
                       "definitions read literally (Turnbull estimate; the loss lies between two scores): the clinic "
                       "has too few patients with scored response cycles for the measurement model. Its error has "
                       "no fixed direction (docs/durability.md).")


def median_caption(headline: dict, cycle_counts: dict) -> str:
    """The words under the headline's median durability: its interval, the cycles behind it, and the sensitivity
    figure (the definitions read literally), or why the literal figure is the headline."""
    parts = [headline["median_interval"]] if headline.get("median_interval") else []
    parts.append(f"{cycle_counts['n_cycles']} response cycles, {cycle_counts['n_losses']} ended in loss")
    if headline.get("median_source") == "measurement model":
        parts.append(f"definitions read literally (sensitivity): {headline['median_definitions']}")
    else:
        parts.append("definitions read literally (too few patients for the measurement model)")
    return "; ".join(parts)


def cohort_page(ws: Workspace, filters: Filters, today: date) -> CohortScreen:
    """`cohort_screen` as the page asks for it: computed once per workspace tables for the same filters and day
    (the default view is the same for every director of a data version)."""
    return ws.memo(("cohort_screen", filters, today), lambda: cohort_screen(ws, filters, today))


def cohort_screen(ws: Workspace, filters: Filters, today: date, timings: dict | None = None) -> CohortScreen:
    """The cohort page for `filters` as the workspace's scope sees it (`timings`, when given, gets each step's seconds).

    The first-infusion period is applied in whole months (blocks of them for roles without patient-level
    access); such roles choose one attribute at a time, and a selection any of whose figures the rules
    forbid shows those figures withheld, or nothing (`refused`)."""
    scope = ws.data.scope
    min_cell = scope.suppression_threshold
    summary = cohort_tables(ws, filters.instrument)
    base = summary.base
    choices = _filter_choices(ws, base)
    code = scales.get(filters.instrument).code
    cut, inclusive = outcomes.remission_threshold(code)
    n = len(base.patients)
    if min_cell:
        member, period, problem = choices.choose(filters)
        if problem:
            return _refused_screen(code, min_cell, filters.describe(), problem, cut, inclusive)
        selection = _Selection(choices.family.select(member, period), member != 0 or period is not None,
                               choices.family, member, period)
        description = choices.describe(member, period, code)
        refused = selection.refusal()
        if refused is not None:
            return _refused_screen(code, min_cell, description, refused, cut, inclusive)
        first, last = choices.period_bounds(period)
        used = Filters(instrument=code, start=first, end=last)
        keep = selection.selected if selection.filtered else None
    else:
        period = choices.period(filters.start, filters.end)
        first, last = choices.period_bounds(period)
        used = Filters(instrument=code, sites=filters.sites, clinicians=filters.clinicians, routes=filters.routes,
                       comorbidities=filters.comorbidities, start=first, end=last)
        keep = select_patients(base, used)
        if period is not None and first is None:  # a period holding no month: nobody
            keep = np.zeros(n, dtype=bool)
        selection = _Selection(np.ones(n, dtype=bool) if keep is None else keep, keep is not None)
        description = used.describe()
    view = cohort_view(summary, used, today, min_cell, timings=timings, keep=keep)
    started = time.perf_counter()
    pops = cohort_populations(ws, summary)
    model = ws.clinic(scales.PRIMARY).model if len(base.cycles) else None
    screen = _disclose(view, summary, pops, selection, choices, today, min_cell, code, description, cut, inclusive,
                       show_ids=may(scope, "see_patient_rows"), model=model)
    if timings is not None:
        timings["disclosure"] = timings.get("disclosure", 0.0) + time.perf_counter() - started
    return screen


def _refused_screen(code: str, min_cell: int, description: str, reason: str, cut: float, inclusive: bool) -> CohortScreen:
    empty = pd.DataFrame()
    return CohortScreen(
        instrument=code, min_cell=min_cell, show_ids=False, description=description, refused=reason,
        headline={"patients": "not shown"}, cycle_counts={}, remission_cut=cut, remission_inclusive=inclusive,
        waterfall_bars=empty, waterfall_patients=0, trajectory=pd.DataFrame(columns=["week", "median", "q1", "q3", "n"]),
        severity=empty, severity_note=reason, completeness=_EMPTY_SHOWN_COMPLETENESS.copy(), completeness_hidden=0,
        completeness_overall=None)


def _disclose(view: dict, summary: CohortSummary, pops: _Cohortwide, selection: _Selection, choices: FilterChoices,
              today: date, min_cell: int, code: str, description: str, cut: float, inclusive: bool,
              show_ids: bool, model=None) -> CohortScreen:
    base = summary.base
    n = len(base.patients)
    h = view["headline"]
    notes = []
    since = pd.Timestamp(today) - ACTIVE_DAYS * DAY
    active = base.last_activity_at >= np.datetime64(since.to_datetime64(), "us")
    month_start = pd.Timestamp(today.replace(day=1))
    bounds = np.array([month_start.to_datetime64(), (pd.Timestamp(today) + DAY).to_datetime64()], dtype=base.infusion_at.dtype)
    lo, hi = np.searchsorted(base.infusion_at, bounds)
    this_month = _mask(n, base.infusion_code[lo:hi])
    masks = [pops.treated, pops.evaluable, pops.responded, pops.evaluable & ~pops.responded, pops.remitted,
             pops.evaluable & ~pops.remitted, active, ~active, this_month, pops.cycles, pops.lost, pops.censored,
             pops.treated & ~pops.evaluable]
    (r_treated, r_evaluable, r_resp, r_nonresp, r_remit, r_nonremit, r_active, r_inactive, r_month, r_cycles,
     r_lost, r_censored, r_unevaluable) = selection.refusals(suppress.Populations.of_masks(masks))
    selected = selection.selected

    def absent(mask) -> bool:  # a structural complement that is empty (e.g. every treated patient evaluable)
        return not (mask & selected).any()

    if r_unevaluable is not None and absent(pops.treated & ~pops.evaluable):
        r_unevaluable = None
    if r_inactive is not None and absent(~active):
        r_inactive = None

    def rate(value: Rate, *reasons) -> Rate:
        reason = next((r for r in reasons if r is not None), None)
        if min_cell <= 0:
            return value
        if reason is not None:
            return value.withheld(reason)
        return value.withheld(value.reason) if value.suppressed else value

    evaluable_reason = r_evaluable or r_unevaluable
    infusions_month = h["infusions_this_month"]
    headline = {
        "patients": _shown(h["patients"], None, min_cell),
        "treated": _shown(h["treated"], r_treated, min_cell),
        "evaluable": _shown(h["evaluable"], evaluable_reason, min_cell),
        "active_patients": _shown(h["active_patients"], r_active or r_inactive, min_cell),
        "infusions_this_month": _shown(infusions_month, r_month, min_cell),
        "month": h["month"],
        "month_to_date": pd.Timestamp(today) < month_start + pd.offsets.MonthEnd(0),
        "response": rate(h["response"], evaluable_reason, r_resp, r_nonresp),
        "remission": rate(h["remission"], evaluable_reason, r_remit, r_nonremit),
        "period": description,
    }
    # the selection's response cycles (primary instrument): counts and the median durability
    cycles = base.cycles if not selection.filtered else base.cycles[_rows(selection.selected, base.cycles["patient_id"].to_numpy())]
    counts = view["cycles"]
    losses, censored = counts["n_losses"], counts["n_cycles"] - counts["n_losses"]
    loss_reason = r_lost or r_censored or (None if suppress.share_shown(losses, counts["n_cycles"], min_cell)
                                           else suppress.SIZE.format(k=min_cell))
    cycle_counts = {"n_cycles": _shown(counts["n_cycles"], r_cycles, min_cell, minimum=counts["n_patients"]),
                    "n_patients": _shown(counts["n_patients"], r_cycles, min_cell),
                    "n_losses": _shown(losses, loss_reason, min_cell) if min_cell else losses}
    # the measurement model's figures of the selection's patients (the model reads them by id; the screen keeps
    # only the aggregate figures)
    # each patient once, in order of first cycle (the cycles' patient codes are unique where the ids are)
    figures = model_figures(model, base.patients["patient_id"].to_numpy()[pd.unique(cycles["patient_id"].to_numpy())]) \
        if model is not None and len(cycles) else None
    headline.update(durability_headline(cycles, h["median_durability_days"], figures, min_cell,
                                        None if not min_cell else r_cycles))
    # waterfall: groups of at least min_cell patients for roles without patient-level access
    w = view["waterfall"]
    r_waterfall = selection.refusal(pops.waterfall) if min_cell else None
    # the treated patients without a bar (no baseline, or no later score) are its complement: when they are
    # a few, the waterfall's patient count (and so its ranks) would give them away, so neither is shown
    unranked = pops.treated & ~pops.waterfall
    r_unranked = selection.refusal(unranked) if min_cell and r_waterfall is None and not absent(unranked) else None
    if r_waterfall is not None:
        bars = waterfall_bars(w.iloc[0:0], min_cell=min_cell)
        notes.append(f"Waterfall not shown: {r_waterfall}.")
    else:
        bars = waterfall_bars(w, min_cell=min_cell)
        if r_unranked is not None:
            bars = bars.drop(columns=["first_rank", "last_rank"]).assign(n=np.nan)  # sizes add up to the count
            bars.attrs.update(patients=None, min_cell=min_cell)
    # trajectory: weeks whose patients pass the guard
    band = view["trajectory"]
    if min_cell and len(band):
        weekly = selection.refusals(pops.weekly)
        band = band[[weekly[int(week)] is None for week in band["week"]]].reset_index(drop=True)
    # severity movement: each cell's patients pass the guard, then small cells and their complements blank
    severity, severity_note = _severity(view["severity_counts"], pops, selection, min_cell)
    comp, comp_hidden, overall = _completeness_shown(view["completeness"], base, pops, selection, today, min_cell)
    funnel_rows = _funnel_rows(summary, choices, selection)
    return CohortScreen(
        instrument=code, min_cell=min_cell, show_ids=show_ids and not min_cell, description=description, refused=None,
        headline=headline, cycle_counts=cycle_counts, remission_cut=cut, remission_inclusive=inclusive,
        waterfall_bars=bars, waterfall_patients=_shown(len(w), r_waterfall or r_unranked, min_cell), trajectory=band,
        severity=severity, severity_note=severity_note, completeness=comp, completeness_hidden=comp_hidden,
        completeness_overall=overall, notes=tuple(notes),
        _funnel={"rows": funnel_rows, "selection": selection, "choices": choices, "min_cell": min_cell,
                 "clinic": {"responded": headline["response"], "remitted": headline["remission"]},
                 "outcomes": {"responded": (pops.responded, pops.evaluable & ~pops.responded),
                              "remitted": (pops.remitted, pops.evaluable & ~pops.remitted)}},
        _cycles=cycles.reset_index(drop=True), _model_figures=figures)


def _severity(table: pd.DataFrame, pops: _Cohortwide, selection, min_cell: int) -> tuple[pd.DataFrame, str | None]:
    """The selection's severity_movement counts (`table`) as shown."""
    if not min_cell:
        return table, None
    size = table.shape[1]
    reasons = selection.refusals(suppress.Populations.of_labels(pops.severity_cell, size * size))
    counts = table.to_numpy(dtype=float).copy()
    for i, reason in enumerate(reasons):
        if reason is not None:
            counts[i // size, i % size] = 0  # a refused cell is treated as small (hidden, with its complements)
    shown = suppress.blank(pd.DataFrame(counts, index=table.index, columns=table.columns), list(table.columns),
                           min_cell=min_cell, row_totals=True)
    shown = shown.where(shown.isna(), table)
    note = None
    if shown.isna().to_numpy().all():
        note = (f"every cell holds fewer than {min_cell} patients (or could be worked out from the others), "
                "so none is shown")
    return shown, note


_EMPTY_SHOWN_COMPLETENESS = pd.DataFrame({"month": pd.Series(dtype="datetime64[us]"), "infusions": pd.Series(dtype=float),
                                          "assessed": pd.Series(dtype=float), "share": pd.Series(dtype=float),
                                          "bound": pd.Series(dtype=object), "share_text": pd.Series(dtype=object),
                                          "partial": pd.Series(dtype=bool)})


def share_display(part: int, whole: int, min_cell: int, part_ok: bool = True, rest_ok: bool = True) -> tuple:
    """(value, bound, text) of a share that may be shown only as a bound: exact when the part and the rest
    both hold `min_cell` (and the patients behind each pass, `part_ok`/`rest_ok`); "at least 83%" when
    the rest is under `min_cell` (the most it can hold is min_cell - 1), "at most 17%" when the part is;
    (nan, None, "not shown") otherwise. A bound says no more than "<11" does."""
    if whole <= 0:
        return np.nan, None, "no infusions"
    rest = whole - part
    if min_cell <= 0 or (part >= min_cell and rest >= min_cell and part_ok and rest_ok):
        return part / whole, None, f"{100 * part / whole:.0f}%"
    if rest < min_cell and whole >= min_cell:
        low = (whole - (min_cell - 1)) / whole
        return low, "at least", f"at least {np.floor(100 * low):.0f}%"
    if part < min_cell and whole >= min_cell:
        high = (min_cell - 1) / whole
        return high, "at most", f"at most {np.ceil(100 * high):.0f}%"
    return np.nan, None, "not shown"


def _completeness_shown(comp: pd.DataFrame, base: CohortBase, pops: _Cohortwide, selection: _Selection, today: date,
                        min_cell: int) -> tuple[pd.DataFrame, int, str | None]:
    """Months as drawn. For roles without patient-level access a month is drawn only when it holds
    `min_cell` infusions from patients that pass the rules; its share exactly only when the assessed and
    the unassessed infusions each number `min_cell` and come from patients that pass, else as a bound
    (share_display). The overall figure is exact only when the months not shown exactly leave `min_cell`
    or none behind (or the overall minus the exact months would give them back)."""
    current = pd.Timestamp(today.replace(day=1))
    if comp.empty:
        return _EMPTY_SHOWN_COMPLETENESS.copy(), 0, None
    comp = comp.reset_index(drop=True)
    infusions = comp["infusions"].to_numpy(dtype=np.int64)
    assessed = comp["assessed"].to_numpy(dtype=np.int64)
    position = pd.Index(base.months).get_indexer(comp["month"])
    infused_r, assessed_r, unassessed_r = (selection.refusals(p) for p in (pops.infused, pops.assessed, pops.unassessed))
    drawn = np.array([infused_r[i] is None for i in position]) & (infusions >= max(min_cell, 1))
    values, bounds, texts = [], [], []
    for row, i in enumerate(position):
        value, bound, text = share_display(int(assessed[row]), int(infusions[row]), min_cell,
                                           assessed_r[i] is None, unassessed_r[i] is None)
        values.append(value), bounds.append(bound), texts.append(text)
    out = comp.assign(share=values, bound=bounds, share_text=texts, partial=comp["month"] == current)
    exact = drawn & out["bound"].isna().to_numpy() & out["share"].notna().to_numpy()
    out["assessed"] = np.where(exact | (min_cell <= 0), assessed, np.nan)  # a bounded share carries no count
    if not min_cell:
        total = int(infusions.sum())
        return out, 0, f"{100 * assessed.sum() / total:.0f}% of {total:,} infusions"
    # the overall figure: its own counts pass, and what it holds beyond the exactly shown months is 0 or min_cell+
    selected = selection.selected
    whole = [_mask(len(selected), p.patient[np.isin(p.pop, position)]) for p in (pops.infused, pops.assessed, pops.unassessed)]
    overall_r = selection.refusals(suppress.Populations.of_masks(whole))

    def patients_in(which: suppress.Populations, rows: np.ndarray) -> int:
        hit = np.isin(which.pop, position[rows]) & selected[which.patient]
        return int(np.unique(which.patient[hit]).size)

    rest = ~exact
    leftover = [int(infusions[rest].sum()), int(assessed[rest].sum()), int((infusions - assessed)[rest].sum()),
                patients_in(pops.infused, rest), patients_in(pops.assessed, rest), patients_in(pops.unassessed, rest)]
    leftover_ok = all(x == 0 or x >= min_cell for x in leftover)
    total, total_assessed = int(infusions.sum()), int(assessed.sum())
    if overall_r[0] is not None or total < min_cell:
        overall = None
    else:
        value, bound, text = share_display(total_assessed, total, min_cell, overall_r[1] is None and leftover_ok,
                                           overall_r[2] is None and leftover_ok)
        hidden_infusions = int(infusions[~drawn].sum())
        counted = f" of {total:,} infusions" if hidden_infusions == 0 or hidden_infusions >= min_cell else " of infusions"
        overall = None if bound is None and np.isnan(value) else f"{text}{counted}"
    return out[drawn].reset_index(drop=True), int((~drawn).sum()), overall


def _funnel_rows(summary: CohortSummary, choices: FilterChoices, selection: _Selection) -> pd.DataFrame:
    """The selection's evaluable patients: code, their site and clinician category, responded, remitted."""
    ind = summary.induction
    codes = summary.induction_code
    ok = ind["evaluable"].to_numpy(dtype=bool) & (codes >= 0)
    ok &= selection.selected[np.maximum(codes, 0)]
    c = codes[ok]
    patients = summary.base.patients
    out = {"code": c}
    for name in ("site", "clinician"):
        # each distinct value is looked up once (100,000 patients hold a few dozen sites and clinicians); -1,
        # no value, reads the last label
        which, values = pd.factorize(patients[name])
        values = [str(v) for v in values] + ["not recorded"]
        labels = np.array([choices.of_value[name].get(v, v) for v in values], dtype=object)
        out[name] = labels[which[c]].tolist()
    out["responded"] = ind["responded"].to_numpy(dtype=bool)[ok]
    out["remitted"] = ind["remitted"].to_numpy(dtype=bool)[ok]
    return pd.DataFrame(out)


def guarded_funnel(data: dict | None, by: str, outcome: str) -> dict:
    """The funnel of the screen's evaluable patients by `by`, every group checked like the page's figures:
    for roles without patient-level access the groups are members of the family of selections (each site or
    clinician category, over the selection's period), shown only when the patients with and without the
    outcome pass the rules, with complementary suppression across groups (the clinic total minus the
    groups shown must not give a hidden group back)."""
    empty = {"groups": pd.DataFrame(columns=[by, "n", "k", "rate", "position"]), "limits": pd.DataFrame(),
             "clinic_rate": None, "hidden_groups": 0, "note": None}
    if not data or data["rows"].empty:
        return empty
    rows, selection, choices, min_cell = data["rows"], data["selection"], data["choices"], data["min_cell"]
    clinic = data["clinic"][outcome]
    if min_cell and clinic.suppressed:
        return {**empty, "note": f"the clinic rate is not shown ({clinic.reason})"}
    if min_cell and selection.filtered:
        return {**empty, "note": f"the funnel compares the {by}s of every patient over the whole period: clear the "
                                 "filters to see it"}
    p0 = float(rows[outcome].mean())
    g = rows.groupby(by)[outcome].agg(k="sum", n="size").reset_index()
    g["k"] = g["k"].astype(np.int64)
    g["rate"] = g["k"] / g["n"]
    hidden = np.zeros(len(g), dtype=bool)
    if min_cell:
        with_it, without = data["outcomes"][outcome]
        for i, label in enumerate(g[by]):
            group = selection.other(choices.member(by, label))
            if any(group.refusals(suppress.Populations.of_masks([with_it, without]))):
                hidden[i] = True
        table = pd.DataFrame({"k": np.where(hidden, 0, g["k"]), "rest": np.where(hidden, 0, g["n"] - g["k"]),
                              "n": np.where(hidden, 0, g["n"])})
        cells = suppress.mask(table, ["k", "rest"], "n", min_cell, row_totals=True, column_totals=True)
        hidden |= cells.to_numpy().any(axis=1)
    shown = g[~hidden].reset_index(drop=True)
    limits = funnel_limits(p0, shown["n"])
    if len(shown):
        se_g = np.sqrt(p0 * (1 - p0) / shown["n"])
        shown["position"] = np.select([abs(shown["rate"] - p0) > 3.09 * se_g, abs(shown["rate"] - p0) > 1.96 * se_g],
                                      ["outside 99.8% limits", "outside 95% limits"], "within limits")
    else:
        shown["position"] = pd.Series(dtype=object)
    note = None
    if hidden.any():
        note = (f"{int(hidden.sum())} {by}{'s' if hidden.sum() != 1 else ''} not shown: fewer than {min_cell} patients "
                "with, or without, the outcome, or a group that subtraction from another figure would give back.")
    return {"groups": shown, "limits": limits, "clinic_rate": p0, "hidden_groups": int(hidden.sum()), "note": note}


def funnel_limits(p0: float, sizes) -> pd.DataFrame:
    """The funnel's 95% and 99.8% limits around the clinic rate for group sizes spanning `sizes`."""
    sizes = pd.Series(sizes, dtype=float)
    n = _funnel_sizes(max(2, min(5, int(sizes.min()) if len(sizes) else 2)), int(max(sizes.max() if len(sizes) else 10, 10) * 1.15))
    se = np.sqrt(p0 * (1 - p0) / n)
    return pd.DataFrame({"n": n, "lo95": np.clip(p0 - 1.96 * se, 0, 1), "hi95": np.clip(p0 + 1.96 * se, 0, 1),
                         "lo998": np.clip(p0 - 3.09 * se, 0, 1), "hi998": np.clip(p0 + 3.09 * se, 0, 1)})


register_warmer("cohort_summary", lambda ws, key: cohort_tables(ws, key[1]))
register_memo_warmer("cohort_screen", lambda ws, key: cohort_page(ws, key[1], key[2]))
# the page's funnel memo: ("funnel", filters, today, by, outcome) of that selection's screen (pages/cohort.py)
register_memo_warmer("funnel", lambda ws, key: ws.memo(key, lambda: cohort_page(ws, key[1], key[2]).funnel(key[3], key[4])))
