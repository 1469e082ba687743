"""`python -m analytics durability` and `python -m analytics intervals`.

Both read through the scoped data layer (command-line tools run with SYSTEM
scope: the operator owns the file) and print JSON with --json, a short human
summary otherwise. Exit codes: 0 done, 1 nothing to report (e.g. no
responders yet), 2 bad arguments or no database.
"""
from __future__ import annotations

import math
import sys

import numpy as np
import pandas as pd

from . import course, intervals, scales
from .access import SYSTEM, DataAccess
from .cli import EXIT_FAILED, EXIT_OK, EXIT_PARTIAL, print_json
from .outcomes import DEFAULT_RULES


def _instrument(name: str) -> str | None:
    scale = scales.resolve(name)
    if scale is None:
        print(f"--instrument: unknown instrument {name!r}; known: {', '.join(scales.codes())}", file=sys.stderr)
        return None
    return scale.code


def _clinic(args, code: str) -> intervals.ClinicModel:
    """The whole clinic's cycles and durability model, the one every page uses for this data version."""
    access = DataAccess(args.db, SYSTEM)
    return intervals.clinic_model(access.db, access.data_version(), code, DEFAULT_RULES)


def _today(args):
    """--today, else OUTCOMES_TODAY (as the dashboard), else today."""
    from datetime import date
    import os

    text = getattr(args, "today", None) or os.environ.get("OUTCOMES_TODAY")
    return date.fromisoformat(text) if text else date.today()


def durability_report(cycles: pd.DataFrame, instrument: str, by: str | None = None, n_boot: int = 200,
                      model=None) -> dict:
    from .durability import cohort_durability

    return cohort_durability(cycles, instrument=instrument, by=by, n_boot=n_boot, model=model)


def cli_durability(args) -> int:
    code = _instrument(args.instrument)
    if code is None:
        return EXIT_FAILED
    try:
        clinic = _clinic(args, code)
    except FileNotFoundError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_FAILED
    cycles = clinic.cycles
    if args.by is not None and args.by not in cycles.columns:
        fields = [c for c in cycles.columns if c not in course.CYCLE_COLUMNS and c not in ("started_at", "instrument")]
        print(f"--by: no field {args.by!r}; choose one of: {', '.join(fields)}", file=sys.stderr)
        return EXIT_FAILED
    result = durability_report(cycles, code, args.by, model=clinic.model)
    if clinic.model is None and clinic.note:
        result["measurement_note"] = f"no measurement model ({clinic.note}): the figures are the definitions read literally"
    if args.json:
        print_json(result)
    else:
        _print_durability(result)
    return EXIT_OK if result["n_cycles"] else EXIT_PARTIAL


def _days(v) -> str:
    return "not reached" if v is None else f"{v:.0f} days"


def _print_durability(r: dict) -> None:
    print(f"Durability of response on {r['instrument']}: {r['n_patients']} patients, {r['n_cycles']} cycles "
          f"({r['n_events']} losses of response, {r['n_censored']} censored).")
    if r["n_cycles"]:
        lo, hi = r["median_ci"]
        print(f"Median time in response after an infusion: {_days(r['median_days'])} "
              f"(95% CI {_days(lo)} to {_days(hi)}); quartiles {_days(r['quartiles_days'][0])} and {_days(r['quartiles_days'][1])}.")
        if r.get("estimate_source") == "measurement model":
            print(f"  (scores read as noisy measurements; the definitions read literally give "
                  f"{_days(r.get('definitions_median_days'))}: a sensitivity analysis, see docs/durability.md)")
    post = r.get("post_induction") or {}
    if post.get("n_cycles"):
        print(f"After the last induction infusion: median {_days(post['median_days'])} ({post['n_cycles']} responders).")
    for name, g in (r.get("groups") or {}).items():
        print(f"  {name}: median {_days(g.get('median_days'))} over {g.get('n_cycles', 0)} cycles")
    if r.get("logrank_p") is not None:
        print(f"Difference between groups: p = {r['logrank_p']:.3g}")
    if r.get("note"):
        print(f"Note: {r['note']}")


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


def cli_intervals(args) -> int:
    code = _instrument(args.instrument)
    if code is None:
        return EXIT_FAILED
    if not 0 < args.target < 1:
        print(f"--target must be a probability between 0 and 1 (e.g. 0.8), got {args.target}", file=sys.stderr)
        return EXIT_FAILED
    try:
        today = _today(args)
    except ValueError:
        print(f"--today must be a date YYYY-MM-DD, got {getattr(args, 'today', None)!r}", file=sys.stderr)
        return EXIT_FAILED
    try:
        access = DataAccess(args.db, SYSTEM)
        suggestions = intervals.clinic_suggestions(access.db, access.data_version(), code, args.target, today)
    except FileNotFoundError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_FAILED
    result = intervals_report(suggestions)
    if args.json:
        print_json(result)
    else:
        rows = result["patients"]
        if not rows:
            print(result.get("note", "no responders"))
        else:
            print(f"Suggested maintenance intervals ({code}, {len(rows)} responders, target {args.target:.0%} "
                  f"still in response at the next infusion):")
            for r in rows[:50]:
                print(f"  {r['patient_id']}: every {r['suggested_interval_days']} days "
                      f"(range {r['interval_low_days']}-{r['interval_high_days']}), {r['basis']}, "
                      f"next due {r['next_due_on']}" + (f", taper: {r['taper']}" if r["taper"] != "none" else ""))
            if len(rows) > 50:
                print(f"  ... and {len(rows) - 50} more (use --json)")
    return EXIT_OK if result["patients"] else EXIT_PARTIAL
