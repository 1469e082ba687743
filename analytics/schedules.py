"""Maintenance schedules compared on the demo generator: fixed 2/3/4-weekly, symptom-triggered, personalised.

The personalised policy is the one `python -m analytics intervals` suggests:
a shared-frailty Weibull (intervals.py) whose cohort part is fitted on a
*different* simulated clinic (a "last year" clinic treated with the demo's
mix of schedules, analysed through the ordinary course/cycle pipeline), and
whose per-patient part learns from each patient's own cycles as they happen
in the simulated clinic. Each patient's next interval is the time until
their predicted chance of still being in response falls to `target`.

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

from . import course, intervals, scales, simulate

# Weekly PHQ-9 in the simulator: response was last seen about half a week
# before the first score out of response, and before the next infusion.
HALF_GAP_DAYS = 3.5


def history_cycles(history: pd.DataFrame) -> pd.DataFrame:
    """The simulator's per-patient history (start_day, end_day, first_out_day) as cycles."""
    if history.empty:
        return pd.DataFrame({"patient_id": pd.Series(dtype=object), "left_days": pd.Series(dtype=float),
                             "right_days": pd.Series(dtype=float)})
    length = (history["end_day"] - history["start_day"]).to_numpy(dtype=float)
    out = (history["first_out_day"] - history["start_day"]).to_numpy(dtype=float)
    event = ~np.isnan(out)
    right = np.where(event, np.maximum(out, 1.0), np.inf)
    left = np.where(event, np.maximum(right - 2 * HALF_GAP_DAYS, 0.0), np.maximum(length - HALF_GAP_DAYS, 0.0))
    return pd.DataFrame({"patient_id": history["patient_id"].to_numpy(), "left_days": left, "right_days": right})


@dataclass
class Prior:
    """What the clinic learnt from an earlier cohort: the frailty fit and how to weigh measurements."""
    fit: intervals.FrailtyWeibull
    combination: intervals.Combination


def cohort_prior(n_patients: int = 3000, seed: int = 101) -> Prior:
    """The cohort fit from an earlier clinic, through the real pipeline (tables -> course -> cycles -> fit)."""
    clinic = simulate.simulate_clinic(n_patients, seed)
    frames = course.frames_from_csv_tables(clinic.tables)
    phq = frames["assessments"][frames["assessments"]["instrument"] == scales.PRIMARY]
    crs = course.build_course(frames["treatments"], phq)
    cycles = intervals.with_trajectories(course.cycles_from_course(crs, frames["patients"], frames["attributes"]), crs)
    fit = intervals.fit_frailty(cycles)
    post = intervals.patient_posteriors(fit, cycles)
    return Prior(fit, intervals.calibrate(post, fit, intervals.course_trajectories(crs)))


def measured_trajectories(engine, idx: np.ndarray, recent_days: float | None = None) -> pd.DataFrame:
    """The weekly PHQ-9s patients `idx` have had since their last induction infusion,
    as the clinic measured them (same formula as the simulator's tables), turned
    into trajectory estimates. Reads the simulator's engine state."""
    now = engine.t[idx]
    sday = engine.slot_day[idx]
    seen = (~engine.slot_missing[idx]) & (sday <= now[:, None]) & (sday > engine.induction_end[idx][:, None])
    if recent_days is not None:
        seen &= sday > (now - recent_days)[:, None]
    rows, cols = np.nonzero(seen)
    if len(rows) == 0:
        return pd.DataFrame({"patient_id": [], "trajectory_speed": [], "trajectory_var": []})
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
    relative = obs / engine.phq_baseline[pidx]
    speed, var = intervals.trajectory_estimates(rows, since.astype(float), relative, len(idx))
    return pd.DataFrame({"patient_id": engine.patient_ids[idx], "trajectory_speed": speed, "trajectory_var": var})


@dataclass(frozen=True)
class PersonalisedFromScores(simulate.Personalised):
    """simulate.Personalised that also sees the patients' measured weekly PHQ-9s."""

    recent_days: float | None = None

    def intervals(self, engine, idx):
        decisions, history = engine.decision_frames(idx)
        trajectories = measured_trajectories(engine, idx, self.recent_days)
        days = np.asarray(self.next_interval(decisions, history, trajectories), dtype=float)
        return np.maximum(np.where(np.isnan(days), np.inf, days), 7.0)


def personalised_policy(prior: Prior, target: float = 0.8) -> simulate.Personalised:
    def next_interval(decisions: pd.DataFrame, history: pd.DataFrame, trajectories: pd.DataFrame) -> np.ndarray:
        cycles = history_cycles(history)
        ids = pd.DataFrame({"patient_id": decisions["patient_id"].to_numpy(), "left_days": 0.0, "right_days": np.inf})
        cycles = pd.concat([cycles, ids], ignore_index=True)  # every deciding patient gets a row (maybe no information)
        post = intervals.patient_posteriors(prior.fit, cycles)
        est = intervals.combine_estimates(post, prior.fit, trajectories, prior.combination).set_index("patient_id")
        est = est.reindex(decisions["patient_id"])
        point, _, _ = intervals.suggest_from_speed(est["speed"], est["speed_var"], prior.fit.shape, target)
        return np.floor(point)

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
    """How well the cycles, the cohort curve and the suggestions recover the generator's truth.

    Post-induction cycles only (one per responder, the cleanest comparison):
    the true (latent) durations, what the outcome definitions find on the
    real assessment dates with noise-free scores (simulate.noise_free_loss),
    and what they find on the noisy scores (course.build_cycles), each
    summarised by the Turnbull median. Then the suggestions' Spearman
    correlation with each patient's true median durability.
    """
    from scipy.stats import spearmanr

    from .durability import turnbull

    clinic = simulate.simulate_clinic(n_patients, seed)
    truth = clinic.truth
    frames = course.frames_from_csv_tables(clinic.tables)
    phq = frames["assessments"][frames["assessments"]["instrument"] == scales.PRIMARY]
    crs = course.build_course(frames["treatments"], phq)
    cycles = intervals.with_trajectories(course.cycles_from_course(crs, frames["patients"], frames["attributes"]), crs)
    post = cycles[cycles["post_induction"]]
    true_days = truth.patients["true_days_to_loss_after_induction"].dropna()

    nf = simulate.noise_free_loss(clinic)
    nf = nf[nf["phase"] == "induction"].merge(
        truth.patients[["patient_id", "last_induction_on"]], left_on=["patient_id", "infusion_on"],
        right_on=["patient_id", "last_induction_on"])
    nf_left = (nf["last_in_response_on"] - nf["infusion_on"]) / pd.Timedelta(days=1)
    nf_right = np.where(nf["loss_seen"], (nf["lost_on"] - nf["infusion_on"]) / pd.Timedelta(days=1), np.inf)

    merged = post.merge(truth.cycles[["patient_id", "infusion_on", "true_days_to_loss"]],
                        left_on=["patient_id", "started_on"], right_on=["patient_id", "infusion_on"])
    events = merged[merged["event"]]
    early = float((events["true_days_to_loss"] > events["right_days"]).mean()) if len(events) else float("nan")

    sug, _ = intervals.suggest_intervals(cycles, trajectories=intervals.course_trajectories(crs))
    sug0, _ = intervals.suggest_intervals(cycles.drop(columns=["trajectory_speed", "trajectory_var"]))
    tm = truth.patients.set_index("patient_id")["true_median_days"]
    joined = sug.set_index("patient_id").join(tm, how="inner")
    joined0 = sug0.set_index("patient_id").join(tm, how="inner")
    cb = sug.attrs["combination"]

    def med(left, right):
        fit = turnbull(np.asarray(left, float), np.asarray(right, float))
        return None if fit.median is None else round(fit.median, 1)

    return {
        "patients": n_patients, "seed": seed,
        "post_induction_true_median_days": round(float(np.median(true_days)), 1),
        "post_induction_noise_free_definitions_median_days": med(np.maximum(nf_left, 0), nf_right),
        "post_induction_measured_median_days": med(post["left_days"], post["right_days"]),
        "measured_losses_before_the_latent_loss_share": round(early, 3),
        "cohort_median_from_score_trend_days": round(1.0 / cb.prior_speed, 1),
        "true_patient_median_days_median": round(float(tm.loc[joined.index].median()), 1),
        "spearman_suggestion_vs_true_median": round(float(spearmanr(joined["suggested_interval_days"], joined["true_median_days"])[0]), 3),
        "spearman_cycles_only": round(float(spearmanr(joined0["suggested_interval_days"], joined0["true_median_days"])[0]), 3),
        "basis_counts": sug["basis"].value_counts().to_dict(),
        "responders": int(len(sug)),
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
