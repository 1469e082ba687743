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


def _load(args, code: str):
    access = DataAccess(args.db, SYSTEM)
    tables = {"patients": access.patients(), "treatments": access.treatments(),
              "assessments": access.assessments(instrument=code), "attributes": access.attributes()}
    crs = course.build_course(tables["treatments"], tables["assessments"], code, DEFAULT_RULES)
    cycles = course.cycles_from_course(crs, tables["patients"], tables["attributes"], DEFAULT_RULES)
    return tables, crs, intervals.with_trajectories(cycles, crs, DEFAULT_RULES.response_fall)


def durability_report(cycles: pd.DataFrame, instrument: str, by: str | None = None, n_boot: int = 200) -> dict:
    from .durability import cohort_durability

    return cohort_durability(cycles, instrument=instrument, by=by, n_boot=n_boot)


def cli_durability(args) -> int:
    code = _instrument(args.instrument)
    if code is None:
        return EXIT_FAILED
    try:
        _, _, cycles = _load(args, code)
    except FileNotFoundError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_FAILED
    if args.by is not None and args.by not in cycles.columns:
        fields = [c for c in cycles.columns if c not in course.CYCLE_COLUMNS and c not in ("started_at", "instrument")]
        print(f"--by: no field {args.by!r}; choose one of: {', '.join(fields)}", file=sys.stderr)
        return EXIT_FAILED
    result = durability_report(cycles, code, args.by)
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


def cli_intervals(args) -> int:
    code = _instrument(args.instrument)
    if code is None:
        return EXIT_FAILED
    if not 0 < args.target < 1:
        print(f"--target must be a probability between 0 and 1 (e.g. 0.8), got {args.target}", file=sys.stderr)
        return EXIT_FAILED
    try:
        tables, crs, cycles = _load(args, code)
    except FileNotFoundError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_FAILED
    result = intervals_report(tables, crs, cycles, code, args.target)
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
