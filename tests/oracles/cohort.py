"""The cohort page's figures computed straight from the frames: slow, plain, the reference.

The product computes them from per-patient summaries (analytics/screens/cohort.py
`cohort_view`); tests/test_cohort_summary.py holds the two equal for many filter sets.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

import pandas as pd

from analytics.screens.cohort import (ACTIVE_DAYS, DAY, Filters, band_by_week, durability_median, isin, weekly_means,
                                      wilson)


@dataclass
class Cohort:
    patients: pd.DataFrame
    treatments: pd.DataFrame
    assessments: pd.DataFrame
    filters: Filters = field(default_factory=Filters)


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
    return band_by_week(per_patient[per_patient["week"] <= max_week], min_n)


