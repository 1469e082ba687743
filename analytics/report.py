"""The durability and intervals reports: what `python -m analytics durability` and
`python -m analytics intervals` print (analytics/commands/), as JSON-ready dicts.

Both read through the scoped data layer with SYSTEM scope (command-line tools: the
operator owns the file).
"""
from __future__ import annotations

import math

import pandas as pd

from . import course, intervals
from .access import SYSTEM, DataAccess
from .outcomes import DEFAULT_RULES


def load(db, code: str):
    """Everything the two reports start from, read through the scoped data layer as the operator:
    (tables, course, cycles with each patient's score trend)."""
    access = DataAccess(db, SYSTEM)
    tables = {"patients": access.patients(), "treatments": access.treatments(),
              "assessments": access.assessments(instrument=code), "attributes": access.attributes()}
    crs = course.build_course(tables["treatments"], tables["assessments"], code, DEFAULT_RULES)
    cycles = course.cycles_from_course(crs, tables["patients"], tables["attributes"], DEFAULT_RULES)
    return tables, crs, intervals.with_trajectories(cycles, crs, DEFAULT_RULES.response_fall)


def durability_report(cycles: pd.DataFrame, instrument: str, by: str | None = None, n_boot: int = 200) -> dict:
    from .durability import cohort_durability

    return cohort_durability(cycles, instrument=instrument, by=by, n_boot=n_boot)


def interval_rows(suggestions: pd.DataFrame) -> list[dict]:
    def iso(v):
        return None if pd.isna(v) else pd.Timestamp(v).date().isoformat()

    rows = []
    for rec in suggestions.itertuples(index=False):
        rows.append({
            "patient_id": rec.patient_id,
            "suggested_interval_days": int(rec.suggested_interval_days),
            "interval_low_days": int(rec.interval_low_days),
            "interval_high_days": int(rec.interval_high_days),
            "basis": rec.basis,
            "n_cycles": int(rec.n_cycles),
            "last_infusion_on": iso(rec.last_infusion_on),
            "next_due_on": iso(rec.next_due_on),
            "taper": rec.taper,
            "taper_reason": rec.taper_reason,
            "n_losses": int(rec.n_events),
            "median_days": None if not math.isfinite(rec.median_days) else float(rec.median_days),
            "weight_personal": round(float(rec.weight_personal), 3),
            "from_score_trend": bool(rec.has_trajectory),
        })
    return rows


def intervals_report(tables: dict, crs, cycles: pd.DataFrame, instrument: str, target: float = 0.8) -> dict:
    """The intervals JSON for responders (patients with at least one durability cycle)."""
    if cycles.empty:
        return {"instrument": instrument, "target": target, "patients": [], "note": "no responders yet: no durability cycles"}
    t = tables["treatments"]
    last = pd.to_datetime(t["administered_at"]).groupby(t["patient_id"].astype(str)).max()
    try:
        fit = intervals.fit_frailty(cycles)
    except ValueError as exc:
        return {"instrument": instrument, "target": target, "patients": [], "note": str(exc)}
    # the cycle table carries each patient's score trend (intervals.with_trajectories)
    suggestions, fit = intervals.suggest_intervals(cycles, target=target, fit=fit, last_infusions=last,
                                                   instrument=instrument)
    cb = suggestions.attrs.get("combination")
    return {
        "instrument": instrument,
        "target": target,
        "method": ("days until the chance of still being in response falls to the target; the patient's "
                   "own speed of loss (score trend after infusions, or losses when scores are few) shrunk "
                   "toward the cohort; see docs/durability.md"),
        "cohort": {"median_days": None if cb is None else round(1.0 / cb.prior_speed, 1),
                   "weibull_shape": round(fit.shape, 3), "n_cycles": fit.n_cycles, "n_losses": fit.n_events},
        "patients": interval_rows(suggestions),
    }
