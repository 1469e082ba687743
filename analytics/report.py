"""The durability and intervals reports: what `python -m analytics durability` and
`python -m analytics intervals` print (analytics/commands/), as JSON-ready dicts.

Both read through the scoped data layer with SYSTEM scope (command-line tools: the
operator owns the file), and both use the whole clinic's model of the data version
(intervals.clinic_model), the one every page uses.
"""
from __future__ import annotations

import pandas as pd

from . import intervals
from .access import SYSTEM, DataAccess
from .outcomes import DEFAULT_RULES


def load(db, code: str) -> intervals.ClinicModel:
    """The whole clinic's cycles and durability model for this data version, read through the
    scoped data layer as the operator (the one every page uses)."""
    return intervals.clinic_model(DataAccess(db, SYSTEM), code, DEFAULT_RULES)


def suggestions(db, code: str, target: float, today) -> intervals.ClinicSuggestions:
    """Every treated patient's suggestion from the whole clinic's model, as of `today`."""
    return intervals.clinic_suggestions(DataAccess(db, SYSTEM), code, target, today, DEFAULT_RULES)


def durability_report(cycles: pd.DataFrame, instrument: str, by: str | None = None, n_boot: int = 200,
                      model=None) -> dict:
    from .durability import cohort_durability

    return cohort_durability(cycles, instrument=instrument, by=by, n_boot=n_boot, model=model)


def interval_rows(suggestions: pd.DataFrame) -> list[dict]:
    """One JSON row per patient with a suggestion (status "suggested")."""
    def iso(v):
        return None if pd.isna(v) else pd.Timestamp(v).date().isoformat()

    def num(v, nd=1):
        return None if v is None or pd.isna(v) else round(float(v), nd)

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
            "median_days": num(rec.median_days),
            "weight_personal": round(float(rec.weight_personal), 3),
            "from_score_trend": bool(rec.has_trajectory),
            "observed_cycles": int(rec.observed_cycles),
            "observed_losses": int(rec.observed_losses),
            "observed_median_loss_days": num(rec.observed_median_loss_days),
            "observed_shortest_loss_days": num(rec.observed_shortest_loss_days),
            "estimate_source": rec.estimate_source,
            "estimate_note": rec.estimate_note,
            "trend_days": None if pd.isna(rec.trend_days) else int(rec.trend_days),
            "estimated_durability_days": None if pd.isna(rec.estimated_durability_days) else int(rec.estimated_durability_days),
            "taper_interval_days": None if pd.isna(rec.taper_interval_days) else int(rec.taper_interval_days),
            "latest_responding": bool(rec.latest_responding),
        })
    return rows


def intervals_report(result: "intervals.ClinicSuggestions") -> dict:
    """The intervals JSON: `patients` holds every patient with a suggestion (the rule: in active
    care, in maintenance, response established; docs/durability.md), `no_suggestion` the other
    treated patients with the reason."""
    code, target = result.instrument, result.target
    model = result.clinic.model
    table = result.table
    shown = table[table["status"] == "suggested"]
    others = table[table["status"] != "suggested"]
    out = {"instrument": code, "target": target, "today": result.today.isoformat()}
    if model is None:
        out.update({"patients": [], "note": result.clinic.note or "no responders yet: no durability cycles",
                    "no_suggestion": _no_suggestion_rows(others)})
        return out
    out.update({
        "method": ("the day by which the chance that response has been lost reaches 1 - target, from the "
                   "patient's own scores read as noisy measurements of a trend that crosses the response line, "
                   "shrunk toward the clinic's pattern; one model for the whole clinic per data version; "
                   "see docs/durability.md"),
        "cohort": {"median_days": round(model.median_days_, 1), "weibull_shape": None,
                   "n_cycles": int(len(result.clinic.cycles)),
                   "n_losses": int(result.clinic.cycles["event"].sum()) if len(result.clinic.cycles) else 0,
                   **model.summary()},
        "patients": interval_rows(shown),
        "no_suggestion": _no_suggestion_rows(others),
    })
    return out


def _no_suggestion_rows(others: pd.DataFrame) -> list[dict]:
    def iso(v):
        return None if pd.isna(v) else pd.Timestamp(v).date().isoformat()

    return [{"patient_id": r.patient_id, "status": r.status, "reason": r.status_text,
             "last_infusion_on": iso(r.last_infusion_on), "last_activity_on": iso(r.last_activity_on)}
            for r in others.itertuples(index=False)]
