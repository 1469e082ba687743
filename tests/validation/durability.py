"""Validation of the durability engine against the simulator's known truth (issue 12).

    make validate-durability                       # every scenario, 2,000 patients each
    .venv/bin/python tests/validation/durability.py --patients 2000 --seed 3 [--json out.json] [--only hold_fade:7]

For every shape of symptom return (exponential, hold-then-fade, sharp, linear) and cadence
(weekly PHQ-9, fortnightly PHQ-9, MADRS only at infusion visits), one simulated clinic
(analytics.simulate, the demo's mix of schedules, no lengthening durability unless a row says
so) is analysed exactly as the dashboard does (course -> cycles -> intervals.fit_clinic_model
-> suggest_intervals / cohort_durability), and compared with the truth:

* cohort: median durability and the share still in response at 28 and 56 days. Truth: the
  true (latent, noise-free) durations of the same cycles the analysis counts (settled cycles,
  those that started in latent response), each patient weighted once, as the estimate is.
  Shown for the measurement model (the headline) and for the definitions read literally
  (Turnbull over every cycle: the sensitivity analysis), with the direction of its error.
* calibration: the share of suggested patients whose true value (their 20th percentile of
  durability, the day the suggestion is about at the default target 0.8) lies in the 80% range.
* taper: precision and recall of the over-treatment flag against the truth (on a fixed
  schedule, and true 20th-percentile durability at least 1.5 x the scheduled interval), and of
  the lengthening trend test (intervals.lengthening_tests) over every suggested patient against
  the patients whose durability truly lengthens (none unless a row sets taper_share: then every
  flag is a false one).

Prints a Markdown table (docs/durability.md quotes it) and, with --json, every figure.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from analytics import course, intervals, simulate  # noqa: E402
from analytics.durability import cohort_durability  # noqa: E402

SHAPES = ("exponential", "hold_fade", "sharp", "linear")
CADENCES = {7: "weekly PHQ-9", 14: "fortnightly PHQ-9", None: "MADRS at visits only"}


def weighted_truth(T: np.ndarray, patient: np.ndarray) -> dict:
    w = 1.0 / pd.Series(patient).map(pd.Series(patient).value_counts()).to_numpy(dtype=float)
    order = np.argsort(T)
    cw = np.cumsum(w[order]) / w.sum()
    return {"median_days": float(T[order][np.searchsorted(cw, 0.5)]),
            "survival_28d": float(w[T > 28].sum() / w.sum()), "survival_56d": float(w[T > 56].sum() / w.sum())}


def run_scenario(shape: str, cadence, n: int, seed: int, **calibration) -> dict:
    started = time.monotonic()
    cal = simulate.Calibration(return_shape=shape, self_report_every_days=cadence,
                               **{"taper_share": 0.0, **calibration})
    sim = simulate.simulate_clinic(n, seed, calibration=cal)
    frames = course.frames_from_csv_tables(sim.tables)
    instrument = "MADRS" if cadence is None else "PHQ-9"
    t0 = time.monotonic()
    cm = intervals.fit_clinic_model(frames, instrument)
    model = cm.model
    fit_s = time.monotonic() - t0
    cycles = cm.cycles
    today = sim.end + timedelta(days=1)
    t0 = time.monotonic()
    sug = intervals.suggest_intervals(model, cm.course, cycles, today=today, last_activity=cm.last_activity,
                                      instrument=instrument)
    suggest_s = time.monotonic() - t0
    summary = cohort_durability(cycles, instrument=instrument, n_boot=0, model=model)

    # --- cohort truth: the analysed, settled cycles that started in latent response
    truth_c = sim.truth.cycles[["patient_id", "infusion_on", "true_days_to_loss"]]
    m = cycles.merge(truth_c, left_on=["patient_id", "started_on"], right_on=["patient_id", "infusion_on"])
    settled = (m["phase"] != "induction") | m["post_induction"]
    false_start = float(m.loc[settled, "true_days_to_loss"].isna().mean())
    m = m[settled & m["true_days_to_loss"].notna()]
    truth = weighted_truth(m["true_days_to_loss"].to_numpy(), m["patient_id"].to_numpy())
    est = {"median_days": summary["median_days"], "survival_28d": summary["survival_28d"],
           "survival_56d": summary["survival_56d"]}
    literal = {"median_days": summary["definitions_median_days"], "survival_28d": summary["definitions_survival_28d"],
               "survival_56d": summary["definitions_survival_56d"]}

    def rel(a, b):
        return None if a is None or b in (None, 0) else round(a / b - 1.0, 3)

    # --- calibration of the ranges
    s = sug[sug["status"] == "suggested"].set_index("patient_id")
    p = sim.truth.patients.set_index("patient_id").reindex(s.index)
    factor = np.minimum(p["taper_factor"] ** p["maintenance_infusions"], cal.taper_max)
    q20 = p["true_median_days"] * factor * simulate.within_quantile(cal, 0.2)
    inside = (s["interval_low_days"] <= q20) & (q20 <= s["interval_high_days"])
    # --- taper
    fixed = p["policy"].str.startswith("every")
    scheduled = p["policy"].str.extract(r"every (\d+)")[0].astype(float)
    over = fixed & (q20 >= 1.5 * scheduled)
    flagged = s["taper"].isin(["stretch", "consider_pause"])
    lengthening = s["taper_reason"].str.contains("later over time")
    # the lengthening test itself, on every suggested patient (the taper signal shows it only where the
    # over-treatment flag has not already said "stretch")
    scores = intervals.model_scores(cm.course)
    trend = intervals.lengthening_tests(cycles[cycles["patient_id"].astype(str).isin(s.index)],
                                        model.trend_tests(scores[scores["patient_id"].astype(str).isin(s.index)],
                                                          min_cycles=intervals.TREND_MIN_CYCLES))
    truly = p["taper_factor"] > 1
    flagged_up = s.index.isin(trend.loc[trend["lengthening"], "patient_id"])
    tested_up = s.index.isin(trend["patient_id"])
    return {
        "shape": shape, "cadence": CADENCES[cadence], "patients": n, "seed": seed,
        "calibration": {k: v for k, v in calibration.items()},
        "model": model.summary() if model is not None else None,
        "truth": {k: round(v, 3) for k, v in truth.items()},
        "estimate": est, "estimate_error": {k: rel(est[k], truth[k]) for k in truth},
        "definitions": literal, "definitions_error": {k: rel(literal[k], truth[k]) for k in truth},
        "false_start_share": round(false_start, 3),
        "suggested_patients": int(len(s)),
        "status_counts": sug["status"].value_counts().to_dict(),
        "range_coverage": round(float(inside.mean()), 3),
        "true_value_below_range": round(float((q20 < s["interval_low_days"]).mean()), 3),
        "true_value_above_range": round(float((q20 > s["interval_high_days"]).mean()), 3),
        "estimate_source": s["estimate_source"].value_counts().to_dict(),
        "taper_flagged": int(flagged.sum()), "over_treated": int(over.sum()),
        "taper_precision": round(float((flagged & over).sum() / flagged.sum()), 3) if flagged.sum() else None,
        "taper_recall": round(float((flagged & over).sum() / over.sum()), 3) if over.sum() else None,
        "lengthening_flags": int(lengthening.sum()),
        "lengthening_true": int((lengthening & (p["taper_factor"] > 1)).sum()),
        "trend_tested": int(tested_up.sum()), "trend_flagged": int(flagged_up.sum()),
        "trend_truly_lengthening": int(truly.sum()),
        "trend_precision": round(float((flagged_up & truly).sum() / flagged_up.sum()), 3) if flagged_up.sum() else None,
        "trend_recall": round(float((flagged_up & truly).sum() / truly.sum()), 3) if truly.sum() else None,
        "trend_recall_tested": round(float((flagged_up & truly).sum() / (truly & tested_up).sum()), 3)
        if (truly & tested_up).sum() else None,
        "trend_truly_tested": int((truly & tested_up).sum()),
        # what a lengthening patient is told in the end: any "stretch" or "consider_pause" (over-treatment or trend)
        "lengthening_any_taper_recall": round(float((flagged & truly).sum() / truly.sum()), 3) if truly.sum() else None,
        "seconds": {"total": round(time.monotonic() - started, 1), "fit": round(fit_s, 1),
                    "suggest": round(suggest_s, 1)},
    }


def scenarios(only: list[str] | None):
    rows = [(shape, cadence, {}) for cadence in CADENCES for shape in SHAPES]
    # robustness: a within-patient spread the model does not assume; lengthening durability (the demo's 30%)
    rows += [("hold_fade", 7, {"within_family": "weibull"}), ("hold_fade", 7, {"taper_share": 0.3})]
    for shape, cadence, extra in rows:
        key = f"{shape}:{cadence}"
        if only and key not in only:
            continue
        yield shape, cadence, extra


def pct(v):
    return "n/a" if v is None else f"{100 * v:+.0f}%"


def table(results: list[dict]) -> str:
    lines = ["| shape | cadence | truth median / S28 / S56 | model median / S28 / S56 (error) | definitions read literally (error) | 80% range coverage | taper precision / recall |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        t, e, d = r["truth"], r["estimate"], r["definitions"]
        ee, de = r["estimate_error"], r["definitions_error"]
        extra = ", ".join(f"{k}={v}" for k, v in r["calibration"].items())
        lines.append(
            f"| {r['shape']}{' (' + extra + ')' if extra else ''} | {r['cadence']} | "
            f"{t['median_days']:.1f} / {t['survival_28d']:.2f} / {t['survival_56d']:.2f} | "
            f"{e['median_days']:.1f} / {e['survival_28d']:.2f} / {e['survival_56d']:.2f} "
            f"({pct(ee['median_days'])} / {pct(ee['survival_28d'])} / {pct(ee['survival_56d'])}) | "
            f"{'n/r' if d['median_days'] is None else format(d['median_days'], '.1f')} / {d['survival_28d']:.2f} / {d['survival_56d']:.2f} "
            f"({pct(de['median_days'])} / {pct(de['survival_28d'])} / {pct(de['survival_56d'])}) | "
            f"{100 * r['range_coverage']:.0f}% ({100 * r['true_value_below_range']:.0f}% below, "
            f"{100 * r['true_value_above_range']:.0f}% above) | "
            f"{'n/a' if r['taper_precision'] is None else format(r['taper_precision'], '.2f')} / "
            f"{'n/a' if r['taper_recall'] is None else format(r['taper_recall'], '.2f')} "
            f"({r['taper_flagged']} flagged, {r['over_treated']} over-treated) |")
    return "\n".join(lines)


def lengthening_table(results: list[dict]) -> str:
    lines = ["| clinic | suggested patients (truly lengthening) | tested (truly lengthening) | flagged by the trend test | precision / recall (recall among tested) | any taper flag for a lengthening patient |",
             "|---|---|---|---|---|---|"]
    for r in results:
        extra = ", ".join(f"{k}={v}" for k, v in r["calibration"].items())
        f = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
        lines.append(f"| {r['shape']}{' (' + extra + ')' if extra else ''}, {r['cadence']} | {r['suggested_patients']} "
                     f"({r['trend_truly_lengthening']}) | {r['trend_tested']} ({r['trend_truly_tested']}) | {r['trend_flagged']} | "
                     f"{f(r['trend_precision'])} / {f(r['trend_recall'])} ({f(r['trend_recall_tested'])}) | "
                     f"{f(r['lengthening_any_taper_recall'])} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--json", metavar="PATH", default=None)
    ap.add_argument("--only", metavar="SHAPE:CADENCE", action="append", default=None,
                    help="e.g. hold_fade:7 or linear:None (repeatable)")
    args = ap.parse_args(argv)
    results = []
    for shape, cadence, extra in scenarios(args.only):
        r = run_scenario(shape, cadence, args.patients, args.seed, **extra)
        results.append(r)
        print(f"{shape} / {CADENCES[cadence]} {extra or ''}: model {r['estimate_error']}, definitions "
              f"{r['definitions_error']}, coverage {r['range_coverage']}, taper {r['taper_precision']}/"
              f"{r['taper_recall']}, lengthening flags {r['lengthening_flags']}, trend test {r['trend_flagged']} flagged "
              f"({r['trend_precision']}/{r['trend_recall']}, tested {r['trend_tested']}), {r['seconds']}",
              file=sys.stderr, flush=True)
    print(table(results))
    print()
    print(lengthening_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
