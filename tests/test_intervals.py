"""Per-patient durability and suggested intervals."""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from analytics import course, intervals, simulate

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def clinic():
    c = simulate.simulate_clinic(1500, 5)
    f = course.frames_from_csv_tables(c.tables)
    phq = f["assessments"][f["assessments"]["instrument"] == "PHQ-9"]
    crs = course.build_course(f["treatments"], phq)
    cycles = intervals.with_trajectories(course.cycles_from_course(crs, f["patients"], f["attributes"]), crs)
    return c, crs, cycles


def test_suggestions_rank_patients_like_their_true_durability(clinic):
    c, crs, cycles = clinic
    sug, _ = intervals.suggest_intervals(cycles, trajectories=intervals.course_trajectories(crs))
    truth = c.truth.patients.set_index("patient_id")["true_median_days"]
    both = sug.set_index("patient_id")["suggested_interval_days"].to_frame().join(truth, how="inner")
    rho, p = spearmanr(both["suggested_interval_days"], both["true_median_days"])
    assert len(both) > 500
    assert rho > 0.3 and p < 1e-6
    # the score trend is what makes it personal: without it (cycles only) the ranking is worse
    plain, _ = intervals.suggest_intervals(cycles.drop(columns=["trajectory_speed", "trajectory_var"]))
    both0 = plain.set_index("patient_id")["suggested_interval_days"].to_frame().join(truth, how="inner")
    assert spearmanr(both0["suggested_interval_days"], both0["true_median_days"])[0] < rho


def test_one_row_per_responder_with_range_and_next_due_date(clinic):
    _, crs, cycles = clinic
    last = pd.Series(pd.Timestamp("2026-11-01"), index=cycles["patient_id"].unique())
    sug, _ = intervals.suggest_intervals(cycles, trajectories=intervals.course_trajectories(crs), last_infusions=last)
    assert sug["patient_id"].is_unique and set(sug["patient_id"]) == set(cycles["patient_id"])
    assert (sug["interval_low_days"] <= sug["suggested_interval_days"]).all()
    assert (sug["suggested_interval_days"] <= sug["interval_high_days"]).all()
    due = sug["last_infusion_on"] + pd.to_timedelta(sug["suggested_interval_days"], unit="D")
    assert (sug["next_due_on"] == due).all() and (sug["last_infusion_on"] == pd.Timestamp("2026-11-01")).all()
    assert set(sug["basis"]) <= {"cohort", "mixed", "personal"}
    assert set(sug["taper"]) <= {"none", "stretch", "consider_pause"}


def test_a_higher_target_gives_shorter_intervals(clinic):
    _, crs, cycles = clinic
    tr = intervals.course_trajectories(crs)
    fit = intervals.fit_frailty(cycles)
    a, _ = intervals.suggest_intervals(cycles, trajectories=tr, fit=fit, target=0.7)
    b, _ = intervals.suggest_intervals(cycles, trajectories=tr, fit=fit, target=0.9)
    assert (b["suggested_interval_days"] <= a["suggested_interval_days"]).all()
    assert (b["suggested_interval_days"] < a["suggested_interval_days"]).mean() > 0.5
    with pytest.raises(ValueError, match="target"):
        intervals.suggest_intervals(cycles, trajectories=tr, fit=fit, target=1.5)


def test_trajectory_speed_recovers_a_noise_free_line():
    days = np.array([1.0, 7, 14, 21, 3, 10, 17])
    code = np.zeros(7, dtype=int)
    speed, var = intervals.trajectory_estimates(code, days, 0.2 + 0.01 * days, 1, time_power=1.0)
    assert speed[0] == pytest.approx(1 / 30)  # reaches 0.5 on day 30
    # holds, then fades faster: the default curve (days ** 1.5) finds day 30 too
    curved = 0.2 + 0.3 * (days / 30) ** intervals.TIME_POWER
    assert intervals.trajectory_estimates(code, days, curved, 1)[0][0] == pytest.approx(1 / 30)
    few, _ = intervals.trajectory_estimates(np.zeros(2, dtype=int), np.array([1.0, 8]), np.array([0.2, 0.3]), 1)
    assert math.isnan(few[0])


FIT = intervals.FrailtyWeibull(shape=2.0, scale=40.0, frailty_a=1.0, n_patients=100, n_cycles=1000, n_events=300, converged=True)
COMB = intervals.Combination(prior_speed=1 / 40, prior_var=(1 / 80) ** 2, event_factor=1.0, event_scale=1.0,
                             trajectory_scale=1.0, from_both=100)


def _cycles(pid, rows):
    return pd.DataFrame({"patient_id": pid, "cycle_no": range(1, len(rows) + 1), "left_days": [r[0] for r in rows],
                         "right_days": [r[1] for r in rows], "started_on": pd.Timestamp("2026-01-01")})


def test_shrinkage_little_data_gives_the_cohort_answer_much_data_a_personal_one():
    cycles = pd.concat([_cycles("new", [(0.0, np.inf)]),
                        _cycles("fast", [(7.0, 14.0)] * 12),
                        _cycles("slow", [(60.0, np.inf)] * 12)])
    tr = pd.DataFrame({"patient_id": ["fast", "slow"], "trajectory_speed": [1 / 12, 1 / 90],
                       "trajectory_var": [(1 / 400) ** 2, (1 / 400) ** 2]})
    post = intervals.patient_posteriors(FIT, cycles)
    est = intervals.combine_estimates(post, FIT, tr, COMB).set_index("patient_id")
    assert est.loc["new", "speed"] == pytest.approx(COMB.prior_speed)
    assert est.loc["new", "weight_personal"] == pytest.approx(0.0)
    assert est.loc["fast", "weight_personal"] > 0.9 and est.loc["slow", "weight_personal"] > 0.9
    point, low, high = intervals.suggest_from_speed(est["speed"], est["speed_var"], FIT.shape, 0.8)
    days = dict(zip(est.index, point))
    assert days["fast"] < days["new"] < days["slow"]
    assert (low <= point).all() and (point <= high).all()
    # with no trajectory the cycles decide: many early losses mean a short interval
    est2 = intervals.combine_estimates(post, FIT, None, COMB).set_index("patient_id")
    p2, _, _ = intervals.suggest_from_speed(est2["speed"], est2["speed_var"], FIT.shape, 0.8)
    d2 = dict(zip(est2.index, p2))
    assert d2["fast"] < d2["new"] < d2["slow"]


def test_taper_signals():
    base = dict(event=False, censor_reason="next_infusion", interval_days=28.0, post_induction=False)
    holder = pd.DataFrame([{**base, "patient_id": "h", "cycle_no": i, "left_days": 27.0, "right_days": np.inf,
                            "pre_dose_remission": True} for i in range(1, 5)])
    loser = pd.DataFrame([{**base, "patient_id": "l", "cycle_no": i, "left_days": 10.0 * i, "right_days": 10.0 * i + 7,
                           "event": True, "censor_reason": "loss", "pre_dose_remission": False} for i in range(1, 4)])
    flat = pd.DataFrame([{**base, "patient_id": "f", "cycle_no": i, "left_days": 14.0, "right_days": 21.0,
                          "event": True, "censor_reason": "loss", "pre_dose_remission": False} for i in range(1, 4)])
    cycles = pd.concat([holder, loser, flat], ignore_index=True)
    sig = intervals.taper_signals(cycles, pd.Series({"h": 30.0, "l": 20.0, "f": 14.0})).set_index("patient_id")
    assert sig.loc["h", "taper"] == "consider_pause"
    assert sig.loc["l", "taper"] == "stretch" and "later" in sig.loc["l", "taper_reason"]
    assert sig.loc["f", "taper"] == "none"


def _run(*args):
    return subprocess.run([sys.executable, "-m", "analytics", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_intervals_and_durability_commands_keep_the_json_contract(demo_db):
    r = _run("intervals", "--db", str(demo_db), "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["patients"]
    assert rows
    keys = {"patient_id", "suggested_interval_days", "interval_low_days", "interval_high_days", "basis",
            "n_cycles", "last_infusion_on", "next_due_on", "taper"}
    assert all(keys <= set(row) for row in rows)
    d = _run("durability", "--db", str(demo_db), "--by", "site", "--json")
    assert d.returncode == 0, d.stderr
    out = json.loads(d.stdout)
    for key in ("instrument", "n_patients", "n_cycles", "n_events", "n_censored", "median_days", "median_ci",
                "quartiles_days", "survival", "post_induction", "groups", "logrank_p"):
        assert key in out
    assert set(out["groups"]) and out["n_events"] + out["n_censored"] == out["n_cycles"]


def test_commands_refuse_bad_arguments_with_exit_2(demo_db):
    bad = _run("durability", "--db", str(demo_db), "--by", "shoe_size")
    assert bad.returncode == 2 and "shoe_size" in bad.stderr
    assert _run("intervals", "--db", str(demo_db), "--instrument", "HAM-D").returncode == 2
    assert _run("intervals", "--db", str(demo_db), "--target", "1.2").returncode == 2


def test_shrinkage_toward_a_subgroup():
    # 40 fast and 40 slow measured patients in two groups, plus one unmeasured newcomer in each
    ids = [f"f{i}" for i in range(40)] + [f"s{i}" for i in range(40)]
    tr = pd.DataFrame({"patient_id": ids, "trajectory_speed": [1 / 15] * 40 + [1 / 90] * 40,
                       "trajectory_var": [(1 / 300) ** 2] * 80})
    cycles = pd.concat([_cycles(p, [(10.0, np.inf)]) for p in ids] + [_cycles(p, [(0.0, np.inf)]) for p in ("new_fast", "new_slow")])
    groups = pd.Series({**{p: "fast" for p in ids[:40]}, **{p: "slow" for p in ids[40:]},
                        "new_fast": "fast", "new_slow": "slow"})
    post = intervals.patient_posteriors(FIT, cycles)
    cohort = intervals.combine_estimates(post, FIT, tr, COMB).set_index("patient_id")
    sub = intervals.combine_estimates(post, FIT, tr, COMB, groups).set_index("patient_id")
    assert cohort.loc["new_fast", "speed"] == pytest.approx(cohort.loc["new_slow", "speed"])
    assert sub.loc["new_fast", "speed"] == pytest.approx(1 / 15) and sub.loc["new_slow", "speed"] == pytest.approx(1 / 90)


def test_the_cycle_table_carries_the_score_trend_so_callers_get_it_by_default(clinic):
    _, crs, cycles = clinic
    assert {"trajectory_speed", "trajectory_var"} <= set(cycles.columns)
    default, _ = intervals.suggest_intervals(cycles)
    explicit, _ = intervals.suggest_intervals(cycles, trajectories=intervals.course_trajectories(crs))
    pd.testing.assert_series_equal(default["suggested_interval_days"], explicit["suggested_interval_days"])
