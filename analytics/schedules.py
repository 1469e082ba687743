"""Maintenance schedules compared on the demo generator: fixed 2/3/4-weekly, symptom-triggered, personalised.

The personalised policy is the one `python -m analytics intervals` suggests: the
clinic's durability model (durability.measured.MeasuredDurability, the one
intervals.py uses) fitted on a *different* simulated clinic (a "last year"
clinic treated with the demo's mix of schedules, analysed through the ordinary
course/cycle pipeline), whose per-patient part learns from each patient's own
weekly PHQ-9s as they happen in the simulated clinic. Each patient's next
interval is the day by which their predicted chance of still being in response
falls to `target`.

Figures: maintenance + rescue infusions per patient-year and the share of
days out of (latent, noise-free) response after induction, from
simulate.evaluate_policy on the same patients and cycle durations for every
policy (common random numbers). `python -m analytics.schedules` prints the
table in docs/schedules.md.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass

import numpy as np
import pandas as pd

from . import course, intervals, simulate
from .durability.measured import MeasuredDurability


@dataclass
class Prior:
    """What the clinic learnt from an earlier cohort: its durability model."""
    model: MeasuredDurability


def cohort_prior(n_patients: int = 3000, seed: int = 101) -> Prior:
    """The model from an earlier clinic, through the real pipeline (tables -> course -> cycles -> fit)."""
    clinic = simulate.simulate_clinic(n_patients, seed)
    frames = course.frames_from_csv_tables(clinic.tables)
    fitted = intervals.fit_clinic_model(frames, "PHQ-9")
    if fitted.model is None:
        raise ValueError(f"the earlier clinic gave no durability model: {fitted.note}")
    return Prior(fitted.model)


def measured_scores(engine, idx: np.ndarray) -> pd.DataFrame:
    """The weekly PHQ-9s patients `idx` have had since their last induction infusion, as the clinic
    measured them (same formula as the simulator's tables), as cycle scores (patient_id, cycle_no,
    days since the infusion before each, total, line). Reads the simulator's engine state."""
    now = engine.t[idx]
    sday = engine.slot_day[idx]
    seen = engine.slot_seen[idx] & (sday <= now[:, None]) & (sday > engine.induction_end[idx][:, None])
    rows, cols = np.nonzero(seen)
    if len(rows) == 0:
        return pd.DataFrame({"patient_id": [], "cycle_no": [], "days": [], "total": [], "line": []})
    pidx = idx[rows]
    day = sday[rows, cols]
    sev = engine.latent_at(pidx, day[:, None])[:, 0]
    obs = simulate.phq_total(sev, engine.phq_scale[pidx], engine.slot_noise[pidx, cols], engine.cal)
    ev = engine._event_arrays()
    span = np.int64(engine.days + 400)
    keys = ev["idx"].astype(np.int64) * span + ev["day"]
    order = np.argsort(keys, kind="stable")
    # the infusion each score follows: the last one strictly before that day (a same-day score is pre-dose)
    pos = np.searchsorted(keys[order], pidx.astype(np.int64) * span + day, side="left") - 1
    since = day - ev["day"][order][np.maximum(pos, 0)]
    return pd.DataFrame({"patient_id": engine.patient_ids[pidx], "cycle_no": pos, "days": since.astype(float),
                         "total": obs, "line": engine.phq_baseline[pidx] * 0.5})


@dataclass(frozen=True)
class PersonalisedFromScores(simulate.Personalised):
    """simulate.Personalised that also sees the patients' measured weekly PHQ-9s."""

    def intervals(self, engine, idx):
        decisions, _ = engine.decision_frames(idx)
        days = np.asarray(self.next_interval(decisions, measured_scores(engine, idx)), dtype=float)
        return np.maximum(np.where(np.isnan(days), np.inf, days), 7.0)


def personalised_policy(prior: Prior, target: float = 0.8) -> simulate.Personalised:
    model = prior.model

    def next_interval(decisions: pd.DataFrame, scores: pd.DataFrame) -> np.ndarray:
        ids, post = model.posteriors_for(scores)
        rows = pd.Index(ids).get_indexer(decisions["patient_id"].astype(str))
        P = np.where((rows >= 0)[:, None], post[np.maximum(rows, 0)] if len(ids) else 0.0, model.prior_mu()[None, :])
        day = intervals._predictive_day(P, model.within_sd_, 1.0 - target)
        return np.floor(np.clip(day, intervals.MIN_SUGGESTION_DAYS, intervals.MAX_SUGGESTION_DAYS))

    return PersonalisedFromScores(next_interval=next_interval, name=f"personalised (target {target:g})")


def compare(n_patients: int = 4000, seed: int = 0, targets=(0.8,), prior_patients: int = 3000) -> list[dict]:
    prior = cohort_prior(prior_patients)
    policies = [simulate.Fixed(14), simulate.Fixed(21), simulate.Fixed(28),
                simulate.Fixed(14, rescue=True), simulate.Fixed(21, rescue=True), simulate.Fixed(28, rescue=True),
                simulate.SymptomTriggered()]
    policies += [personalised_policy(prior, t) for t in targets]
    policies.append(simulate.Oracle(0.2))
    rows = []
    for p in policies:
        r = simulate.evaluate_policy(p, n_patients=n_patients, seed=seed)
        rows.append({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()})
    return rows


def validation_figures(n_patients: int = 3000, seed: int = 5) -> dict:
    """How well the cohort figure and the suggestions recover the generator's truth on the demo
    clinic (the full study over shapes and cadences: tests/validation/durability.py, `make
    validate-durability`): the measurement model's and the literal definitions' cohort median
    against the true median of the same cycles (each patient weighted once), and the
    suggestions' Spearman correlation with each patient's true median durability."""
    from datetime import timedelta

    from scipy.stats import spearmanr

    clinic = simulate.simulate_clinic(n_patients, seed)
    frames = course.frames_from_csv_tables(clinic.tables)
    fitted = intervals.fit_clinic_model(frames, "PHQ-9")
    cycles = fitted.cycles
    truth = clinic.truth.cycles[["patient_id", "infusion_on", "true_days_to_loss"]]
    m = cycles.merge(truth, left_on=["patient_id", "started_on"], right_on=["patient_id", "infusion_on"])
    m = m[m["true_days_to_loss"].notna() & ((m["phase"] != "induction") | m["post_induction"])]
    w = 1.0 / m.groupby("patient_id")["patient_id"].transform("size").to_numpy()
    order = np.argsort(m["true_days_to_loss"].to_numpy())
    cw = np.cumsum(w[order]) / w.sum()
    true_median = float(m["true_days_to_loss"].to_numpy()[order][np.searchsorted(cw, 0.5)])
    from .durability import cohort_durability

    summary = cohort_durability(cycles, instrument="PHQ-9", n_boot=0, model=fitted.model)
    sug = intervals.suggest_intervals(fitted.model, fitted.course, cycles, today=clinic.end + timedelta(days=1),
                                      last_activity=fitted.last_activity)
    sug = sug[sug["status"] == "suggested"].set_index("patient_id")
    tm = clinic.truth.patients.set_index("patient_id")["true_median_days"]
    joined = sug.join(tm, how="inner")
    return {
        "patients": n_patients, "seed": seed,
        "true_median_days_patient_weighted": round(true_median, 1),
        "model_median_days": summary["median_days"],
        "definitions_median_days": summary.get("definitions_median_days"),
        "spearman_suggestion_vs_true_median": round(float(spearmanr(joined["suggested_interval_days"],
                                                                    joined["true_median_days"])[0]), 3),
        "suggested_patients": int(len(sug)),
        "measurement": summary.get("measurement"),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analytics.schedules", description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--targets", default="0.8", help="comma-separated survival targets for the personalised policy")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--validate", action="store_true", help="print the estimator validation figures instead")
    args = parser.parse_args(argv)
    if args.validate:
        json.dump(validation_figures(args.patients, args.seed if args.seed else 5), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    rows = compare(args.patients, args.seed, tuple(float(t) for t in args.targets.split(",")))
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(f"{'policy':34s} {'infusions/pt-yr':>16s} {'days out of response':>21s} {'rescue share':>13s}")
        for r in rows:
            print(f"{r['policy']:34s} {r['infusions_per_patient_year']:16.2f} {100 * r['share_days_out_of_response']:20.1f}% "
                  f"{100 * r['rescue_share']:12.0f}%")
    return 0


if __name__ == "__main__":  # an entry point of its own: tune memory as the others do
    from . import memory

    memory.tune_allocator()
    sys.exit(main())
