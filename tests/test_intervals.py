"""Per-patient durability and suggested intervals (issue 12): one whole-clinic model, who gets a
suggestion, evidence that agrees with the cycles, calibrated ranges, the taper signal.

The heavy validation (every shape x cadence, thousands of patients) is tests/validation/durability.py
(`make validate-durability`); here a small simulated clinic with a fixed seed and tolerances that
would catch a regression.
"""
import json
import subprocess
import sys
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analytics import course, intervals, simulate
from analytics.durability.measured import MU_GRID, REQUIRED, MeasuredDurability

ROOT = Path(__file__).resolve().parent.parent
TODAY = date(2026, 11, 21)


def _crafted(frames: dict) -> dict:
    """The simulated clinic plus three patients the issue names: one who stopped ten months ago,
    a non-responder whose one score sat exactly on the response line, one still in induction."""
    def inf(pid, days):
        return pd.DataFrame({"patient_id": pid, "administered_at": pd.to_datetime(days), "has_time": False,
                             "route": "iv", "dose_mg_per_kg": 0.5, "phase": None})

    def sc(pid, rows):
        return pd.DataFrame({"patient_id": pid, "instrument": "PHQ-9", "administered_at": pd.to_datetime([r[0] for r in rows]),
                             "has_time": False, "total": [float(r[1]) for r in rows], "item_9": 0.0})

    induction = ["2025-12-01", "2025-12-03", "2025-12-05", "2025-12-08", "2025-12-10", "2025-12-12"]
    stopped = (inf("X_STOPPED", induction + ["2026-01-02"]),
               sc("X_STOPPED", [("2025-11-30", 20), ("2025-12-12", 6), ("2025-12-19", 5), ("2025-12-26", 6),
                                ("2026-01-02", 6), ("2026-01-09", 7)]))
    # baseline 20: response is 10 or less; the one score of 10 is exactly on the line, the rest are not
    line = (inf("X_NONRESP", ["2026-09-01", "2026-09-03", "2026-09-05", "2026-09-08", "2026-09-10", "2026-09-12",
                              "2026-10-03", "2026-10-24", "2026-11-14"]),
            sc("X_NONRESP", [("2026-08-30", 20), ("2026-09-12", 14), ("2026-09-19", 10), ("2026-09-26", 15),
                             ("2026-10-03", 14), ("2026-10-10", 16), ("2026-10-24", 15), ("2026-10-31", 14),
                             ("2026-11-14", 15)]))
    building = (inf("X_INDUCTION", ["2026-11-10", "2026-11-12", "2026-11-14", "2026-11-17", "2026-11-19"]),
                sc("X_INDUCTION", [("2026-11-09", 20), ("2026-11-14", 9), ("2026-11-19", 8)]))
    out = dict(frames)
    out["treatments"] = pd.concat([frames["treatments"], stopped[0], line[0], building[0]], ignore_index=True)
    out["assessments"] = pd.concat([frames["assessments"], stopped[1], line[1], building[1]], ignore_index=True)
    extra = pd.DataFrame({"patient_id": ["X_STOPPED", "X_NONRESP", "X_INDUCTION"]})
    out["patients"] = pd.concat([frames["patients"], extra], ignore_index=True)
    return out


@pytest.fixture(scope="module")
def clinic():
    cal = simulate.Calibration(taper_share=0.0)
    sim = simulate.simulate_clinic(450, 21, calibration=cal)
    frames = _crafted(course.frames_from_csv_tables(sim.tables))
    cm = intervals.fit_clinic_model(frames, "PHQ-9", fit_patients=150)
    sug = intervals.suggest_intervals(cm.model, cm.course, cm.cycles, today=TODAY, last_activity=cm.last_activity)
    return sim, cal, cm, sug


def test_the_model_estimates_the_noise_and_recovers_the_clinics_durability(clinic):
    sim, cal, cm, _ = clinic
    m = cm.model
    assert m.mode_ == "trend" and m.noise_source_ == "estimated from the scores"
    # PHQ-9 noise in the simulator: SD 2.16 plus rounding
    assert 1.8 < m.noise_sd_ < 2.6
    assert 0.3 < m.within_sd_ < 0.55
    # the cohort median against the true durations of the same cycles, each patient weighted once
    cycles = cm.cycles.merge(sim.truth.cycles[["patient_id", "infusion_on", "true_days_to_loss"]],
                             left_on=["patient_id", "started_on"], right_on=["patient_id", "infusion_on"])
    cycles = cycles[cycles["true_days_to_loss"].notna() & ((cycles["phase"] != "induction") | cycles["post_induction"])]
    w = 1.0 / cycles.groupby("patient_id")["patient_id"].transform("size").to_numpy()
    T = cycles["true_days_to_loss"].to_numpy()
    true_s56 = float(w[T > 56].sum() / w.sum())
    order = np.argsort(T)
    true_median = float(T[order][np.searchsorted(np.cumsum(w[order]) / w.sum(), 0.5)])
    assert m.median_days_ == pytest.approx(true_median, rel=0.15)
    assert float(m.survival(56)) == pytest.approx(true_s56, rel=0.15)


def test_the_model_reads_only_cycles_started_in_response_and_the_counts_keep_every_cycle(clinic):
    """A recaptured cycle (after a rescue or the last induction infusion) is in the table only because its first
    score was back in response: that score is chosen by the cycle's outcome, and with one score per cycle (MADRS
    at visits) such a cycle could never lose response. The model leaves them out (the MADRS-at-visits median was
    24-27% too long with them, docs/durability.md); the cycle table and the counts keep them."""
    from analytics.durability import cohort_durability

    _, _, cm, _ = clinic
    started = cm.cycles.set_index(["patient_id", "cycle_no"])["start_kind"]
    read = cm.scores.set_index(["patient_id", "cycle_no"]).index.unique()
    assert (started.reindex(read) == "in_response").all()
    recaptured = started[started == "recaptured"]
    assert len(recaptured) >= 20 and not recaptured.index.isin(read).any()
    res = cohort_durability(cm.cycles, instrument="PHQ-9", n_boot=0, model=cm.model)
    assert res["n_cycles"] == len(cm.cycles) and res["n_events"] == int(cm.cycles["event"].sum())


def test_the_cohort_headline_is_the_measured_estimate_and_the_literal_figure_is_off_by_more(clinic):
    """Finding 7: the docs called the literal (definitions-based) median "conservative", yet its
    bias depends on the clinic. The headline is now the measurement model's; the literal figure is
    kept as a labelled sensitivity analysis. On this weekly-PHQ-9 clinic that re-doses on one score
    out of response, the literal figures run short (docs/durability.md: -30% to -49% over shapes),
    the model's stay near the truth."""
    from analytics.durability import cohort_durability

    sim, _, cm, _ = clinic
    res = cohort_durability(cm.cycles, instrument="PHQ-9", n_boot=0, model=cm.model)
    assert res["estimate_source"] == "measurement model"
    cycles = cm.cycles.merge(sim.truth.cycles[["patient_id", "infusion_on", "true_days_to_loss"]],
                             left_on=["patient_id", "started_on"], right_on=["patient_id", "infusion_on"])
    cycles = cycles[cycles["true_days_to_loss"].notna() & ((cycles["phase"] != "induction") | cycles["post_induction"])]
    w = 1.0 / cycles.groupby("patient_id")["patient_id"].transform("size").to_numpy()
    T = cycles["true_days_to_loss"].to_numpy()
    order = np.argsort(T)
    true_median = float(T[order][np.searchsorted(np.cumsum(w[order]) / w.sum(), 0.5)])
    true_s28 = float(w[T > 28].sum() / w.sum())
    model_error = res["median_days"] / true_median - 1
    literal_error = res["definitions_median_days"] / true_median - 1
    # 450 patients: about +-10% of sampling error around the bias the validation measures (docs/durability.md:
    # within -2% to +7% with weekly PHQ-9 on 2,000 patients); the truth here counts every cycle of the table,
    # the model reads those started in response
    assert abs(model_error) <= 0.15, model_error
    assert literal_error < -0.2 and abs(literal_error) > 2 * abs(model_error), (literal_error, model_error)
    assert abs(res["survival_28d"] - true_s28) <= 0.08
    assert res["definitions_survival_28d"] < true_s28 - 0.1


def test_ranges_hold_the_patients_true_value_about_as_often_as_they_say(clinic):
    sim, cal, _, sug = clinic
    s = sug[sug["status"] == "suggested"].set_index("patient_id")
    truth = sim.truth.patients.set_index("patient_id").reindex(s.index)
    q20 = truth["true_median_days"] * simulate.within_quantile(cal, 0.2)
    inside = (s["interval_low_days"] <= q20) & (q20 <= s["interval_high_days"] + 1)
    assert len(s) > 150
    # nominal 80% (measured 75-85% across shapes and cadences in docs/durability.md); this small
    # clinic allows sampling error, a regression to the old 48% would fail
    assert 0.68 <= inside.mean() <= 0.92
    assert (s["interval_low_days"] <= s["suggested_interval_days"]).all()
    assert (s["suggested_interval_days"] <= s["interval_high_days"]).all()
    # ranges never collapse to "10 to 10 days"
    assert (s["interval_high_days"] > s["interval_low_days"]).all()


def test_stopped_patients_non_responders_and_induction_get_no_suggestion(clinic):
    _, _, _, sug = clinic
    s = sug.set_index("patient_id")
    assert s.loc["X_STOPPED", "status"] == "not_in_active_care"
    assert s.loc["X_NONRESP", "status"] == "response_not_established"
    assert s.loc["X_INDUCTION", "status"] == "in_induction"
    for pid in ("X_STOPPED", "X_NONRESP", "X_INDUCTION"):
        assert pd.isna(s.loc[pid, "next_due_on"]) and pd.isna(s.loc[pid, "suggested_interval_days"])
    # everyone with a date is active, in maintenance and has an established response
    ok = s[s["status"] == "suggested"]
    assert ok["active_care"].all() and ok["in_maintenance"].all() and ok["response_established"].all()
    assert ok["next_due_on"].notna().all()
    stale = s[s["last_activity_on"] < pd.Timestamp(TODAY) - pd.Timedelta(days=intervals.ACTIVE_CARE_DAYS)]
    assert len(stale) and (stale["status"] == "not_in_active_care").all()


def test_the_evidence_matches_the_cycle_table_and_the_suggestion_never_passes_the_observed_losses(clinic):
    _, _, cm, sug = clinic
    s = sug[sug["status"] == "suggested"].set_index("patient_id")
    cycles = cm.cycles
    for pid in s.index[:60]:
        mine = cycles[cycles["patient_id"] == pid]
        row = s.loc[pid]
        assert row["observed_cycles"] == len(mine) and row["observed_losses"] == int(mine["event"].sum())
        if row["observed_losses"]:
            assert row["observed_shortest_loss_days"] == pytest.approx(mine.loc[mine["event"], "right_days"].min(), abs=0.06)
        supported = intervals.loss_supported_day(mine["left_days"].to_numpy(float), mine["right_days"].to_numpy(float),
                                                 mine["event"].to_numpy(bool), row["suggested_interval_days"], 0.8)
        assert supported >= row["suggested_interval_days"] or row["suggested_interval_days"] == intervals.MIN_SUGGESTION_DAYS
    assert set(s["estimate_source"]) <= {"score trend", "own losses", "cohort"}
    held = s[s["estimate_source"] == "own losses"]
    assert len(held) and (held["suggested_interval_days"] < held["trend_days"]).all()
    assert held["estimate_note"].str.contains("observed losses support").all()


def test_nine_losses_four_by_day_28_do_not_support_28_days():
    # P00108 in issue 12: 9 cycles, all ended in loss, 4 of them by day 28
    right = np.array([14.0, 21.0, 21.0, 28.0, 35.0, 35.0, 42.0, 49.0, 56.0])
    left = right - 7.0
    event = np.ones(9, dtype=bool)
    day = intervals.loss_supported_day(left, right, event, 28.0, target=0.8)
    assert day < 28.0
    k, n = intervals._losses_by(left, right, event, day)
    assert k / max(n, 1) <= 0.5
    # a history consistent with the target changes nothing
    assert intervals.loss_supported_day(np.array([30.0] * 5), np.array([np.inf] * 5), np.zeros(5, bool), 28.0, 0.8) == 28.0


def test_the_cap_for_many_patients_at_once_is_each_patients_own_stepping():
    # _supported_days counts every candidate day of every patient by ranks; _supported_days_each steps
    # down through one patient's loss days at a time (the definition): the same days, ties, censored
    # cycles, zero days and a loss on its own last day in response included
    rng = np.random.default_rng(5)
    for _ in range(60):
        groups, days = [], []
        for _ in range(int(rng.integers(1, 25))):
            m = int(rng.integers(0, 12))
            left = np.round(rng.uniform(0, 80, m), int(rng.integers(0, 2)))
            left[rng.random(m) < 0.1] = 0.0
            right = left + np.round(rng.uniform(0.5, 40, m), int(rng.integers(0, 2)))
            event = rng.random(m) < 0.6
            right[~event & (rng.random(m) < 0.7)] = np.inf
            if m and rng.random() < 0.05:
                right[0], event[0] = left[0], True
            groups.append((left, right, event))
            days.append(float(rng.integers(1, 120)))
        for target in (0.8, 0.5):
            assert np.array_equal(intervals._supported_days(groups, days, target),
                                  intervals._supported_days_each(groups, days, target))


def test_the_between_patient_spread_cannot_collapse_on_a_tiny_clinic(clinic):
    _, _, cm, _ = clinic
    few = cm.scores[cm.scores["patient_id"].isin(cm.scores["patient_id"].unique()[:12])]
    m = MeasuredDurability(fit_patients=50, registry_noise_sd=2.16).fit(few, scale_max=27.0)
    assert m.between_sd_ >= (MU_GRID[1] - MU_GRID[0]) - 1e-9
    est = intervals.model_estimates(m, few["patient_id"].unique(), 0.8)
    assert (np.floor(est["high"]) > np.floor(est["low"])).all()


def test_a_higher_target_gives_shorter_intervals(clinic):
    _, _, cm, _ = clinic
    ids = cm.model.patient_ids_[:80]
    a = intervals.model_estimates(cm.model, ids, 0.7)
    b = intervals.model_estimates(cm.model, ids, 0.9)
    assert (b["point"].to_numpy() < a["point"].to_numpy()).all()
    with pytest.raises(ValueError, match="target"):
        intervals.model_estimates(cm.model, ids, 1.5)


def test_taper_finds_over_treated_patients_and_lengthening_needs_a_trend_test(clinic):
    sim, cal, cm, sug = clinic
    s = sug[sug["status"] == "suggested"].set_index("patient_id")
    truth = sim.truth.patients.set_index("patient_id").reindex(s.index)
    fixed = truth["policy"].str.startswith("every")
    interval = truth["policy"].str.extract(r"every (\d+)")[0].astype(float)
    q20 = truth["true_median_days"] * simulate.within_quantile(cal, 0.2)
    over = fixed & (q20 >= 1.5 * interval)
    flagged = s["taper"].isin(["stretch", "consider_pause"])
    assert over.sum() >= 10
    precision = (flagged & over).sum() / max(flagged.sum(), 1)
    recall = (flagged & over).sum() / over.sum()
    assert precision >= 0.6 and recall >= 0.3, (precision, recall)
    assert (s.loc[flagged, "taper_interval_days"] > 0).all()
    assert s.loc[flagged, "taper_reason"].str.contains("try").all()
    # no patient's durability changes in this clinic: the trend test finds (almost) nobody
    tested = cm.model.trend_tests(cm.scores)
    trend = intervals.lengthening_tests(cm.cycles, tested)
    assert len(trend) >= 20 and trend["lengthening"].sum() <= 2
    # the taper signals hand it only the settled losses of the cycles (the rest let go before the trend tests)
    pd.testing.assert_frame_equal(intervals.lengthening_tests(intervals._settled_losses(cm.cycles), tested), trend,
                                  check_exact=True)


def test_the_clinic_model_keeps_only_the_course_columns_its_suggestions_read(clinic):
    # The model holds a narrower course (memory at 100,000 patients) and hands its fitted scores to the
    # taper signals: the suggestions are exactly those of the whole course with the scores rebuilt.
    sim, cal, cm, sug = clinic
    frames = _crafted(course.frames_from_csv_tables(sim.tables))
    whole = course.build_course(frames["treatments"], frames["assessments"], "PHQ-9")
    assert set(cm.course.infusions.columns) < set(whole.infusions.columns)
    assert set(cm.course.scores.columns) < set(whole.scores.columns)
    expected = intervals.suggest_intervals(cm.model, whole, cm.cycles, today=TODAY, last_activity=cm.last_activity)
    kept = intervals.suggest_intervals(cm.model, cm.course, cm.cycles, today=TODAY, last_activity=cm.last_activity,
                                       read_scores=cm.scores)
    assert (expected["taper"] != "none").any()
    pd.testing.assert_frame_equal(kept, expected, check_exact=True)
    pd.testing.assert_frame_equal(sug, expected, check_exact=True)
    pd.testing.assert_frame_equal(cm.scores, intervals.model_scores(whole), check_exact=True)
    # its labels as categoricals of the same values: the scores and patient states made from it are the same
    for name in intervals.KEPT_LABEL_COLUMNS:
        assert isinstance(cm.course.infusions[name].dtype, pd.CategoricalDtype), name
        assert cm.course.infusions[name].astype(str).tolist() == whole.infusions[name].tolist(), name
    pd.testing.assert_frame_equal(intervals.model_scores(cm.course), intervals.model_scores(whole), check_exact=True)
    pd.testing.assert_frame_equal(course.cycle_scores(cm.course), course.cycle_scores(whole)[list(course.cycle_scores(cm.course).columns)], check_exact=True)
    pd.testing.assert_frame_equal(intervals.patient_states(cm.course, TODAY, cm.last_activity),
                                  intervals.patient_states(whole, TODAY, cm.last_activity), check_exact=True)


def _patient_cycles(model, pid: str, durations, interval: float = 28.0, seed: int = 0):
    """Weekly scores of one patient's successive cycles (true durations `durations`, an infusion every
    `interval` days unless two scores out of response come first), drawn from the model's own curve of
    the return of symptoms and its noise; and the cycle table's rows for them."""
    rng = np.random.default_rng(seed)
    line, depth, kappa = 8.0, 0.4, model.shape_
    scores, cycles = [], []
    for k, T in enumerate(durations, start=1):
        days = np.arange(7.0, interval + 1, 7.0)
        v = 2 - (2 - depth) * np.exp(-np.log(2 - depth) * (days / T) ** kappa)
        total = np.clip(np.rint(line * v + model.noise_sd_ * rng.standard_normal(len(days))), 0, 27)
        out = np.flatnonzero(total > line)
        lost = len(out) >= 2 and out[1] == out[0] + 1
        if lost:
            days, total = days[:out[0] + 2], total[:out[0] + 2]
        scores.append(pd.DataFrame({"patient_id": pid, "cycle_no": k, "days": days, "total": total, "line": line}))
        held = days[total <= line]
        cycles.append({"patient_id": pid, "cycle_no": k, "event": lost, "phase": "maintenance", "post_induction": False,
                       "left_days": float(held.max()) if len(held) else 0.0,
                       "right_days": float(days[out[0]]) if lost else np.inf})
    return pd.concat(scores, ignore_index=True), pd.DataFrame(cycles)


def test_lengthening_is_flagged_only_for_a_clear_trend(clinic):
    """The trend test reads every cycle's scores (a cycle held through its interval counts as well as a loss):
    a patient whose response lasts longer with each cycle is flagged; thirty patients whose cycles are the same
    durations in a random order are not (at most two, the false discovery rate)."""
    model = clinic[2].model
    rising = np.geomspace(12, 90, 10)
    parts = [_patient_cycles(model, "up", rising, seed=1)]
    parts += [_patient_cycles(model, f"n{i}", np.random.default_rng(i).permutation(rising), seed=10 + i) for i in range(30)]
    scores = pd.concat([p[0] for p in parts], ignore_index=True)
    cycles = pd.concat([p[1] for p in parts], ignore_index=True)
    t = intervals.lengthening_tests(cycles, model.trend_tests(scores)).set_index("patient_id")
    assert "up" in t.index and t.loc["up", "lengthening"], t.loc["up"] if "up" in t.index else "not tested"
    assert t["lengthening"].sum() <= 2
    # the same cycles in a random order are noise: their p-values are spread out, not small
    assert t.drop(index="up")["trend_p"].median() > 0.1


def _run(*args, env=None):
    import os

    return subprocess.run([sys.executable, "-m", "analytics", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=900, env={**os.environ, **(env or {})})


def test_intervals_and_durability_commands_keep_the_json_contract(demo_db):
    r = _run("intervals", "--db", str(demo_db), "--json", "--today", "2026-11-21")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    rows = out["patients"]
    assert rows
    keys = {"patient_id", "suggested_interval_days", "interval_low_days", "interval_high_days", "basis",
            "n_cycles", "last_infusion_on", "next_due_on", "taper", "taper_reason", "n_losses", "median_days",
            "weight_personal", "from_score_trend",
            # issue 12
            "observed_cycles", "observed_losses", "observed_median_loss_days", "estimate_source"}
    assert all(keys <= set(row) for row in rows)
    assert {"patient_id", "status", "reason"} <= set(out["no_suggestion"][0])
    d = _run("durability", "--db", str(demo_db), "--by", "site", "--json")
    assert d.returncode == 0, d.stderr
    dur = json.loads(d.stdout)
    for key in ("instrument", "n_patients", "n_cycles", "n_events", "n_censored", "median_days", "median_ci",
                "quartiles_days", "survival", "post_induction", "groups", "logrank_p",
                "definitions_median_days", "definitions_survival", "estimate_source", "survival_28d"):
        assert key in dur
    assert set(dur["groups"]) and dur["n_events"] + dur["n_censored"] == dur["n_cycles"]
    assert dur["estimate_source"] == "measurement model"
    assert dur["median_days"] != dur["definitions_median_days"]


def test_commands_refuse_bad_arguments_with_exit_2(demo_db):
    bad = _run("durability", "--db", str(demo_db), "--by", "shoe_size")
    assert bad.returncode == 2 and "shoe_size" in bad.stderr
    assert _run("intervals", "--db", str(demo_db), "--instrument", "HAM-D").returncode == 2
    assert _run("intervals", "--db", str(demo_db), "--target", "1.2").returncode == 2
    assert _run("intervals", "--db", str(demo_db), "--today", "21/11/2026").returncode == 2


def test_without_a_model_nobody_gets_a_number_and_each_is_told_why(clinic):
    # a new clinic with too few patients or scores has no model: the suggestions still come back, with a reason
    _, _, cm, with_model = clinic
    sug = intervals.suggest_intervals(None, cm.course, cm.cycles, today=TODAY, last_activity=cm.last_activity)
    assert len(sug) == len(with_model)
    would = set(with_model.loc[with_model["status"] == "suggested", "patient_id"])
    assert would and set(sug.loc[sug["status"] == "no_model", "patient_id"]) == would
    assert sug["suggested_interval_days"].isna().all()


def test_a_clinic_model_that_keeps_no_course_is_fitted_from_the_same_cycles_and_scores():
    """bench.durability_estimate reads only the model: keep_course=False holds no course through the fit."""
    frames = course.frames_from_csv_tables(simulate.simulate_clinic(120, 16, days=400).tables)
    built = course.build_course(frames["treatments"], frames["assessments"], "PHQ-9",
                                columns=intervals._model_course_columns())
    kept = intervals.fit_clinic_model(frames, "PHQ-9", built=built)
    bare = intervals.fit_clinic_model(frames, "PHQ-9", built=built, keep_course=False)
    assert bare.course is None and kept.course is not None
    # a model without its course makes no suggestions: its scores hold the columns its fit reads, and only them
    # (not held through the fit at 100,000 patients); the same fit
    assert list(bare.scores.columns) == list(REQUIRED)
    pd.testing.assert_frame_equal(bare.scores, kept.scores[list(REQUIRED)].reset_index(drop=True), check_exact=True)
    for name in ("noise_sd_", "shape_", "within_sd_", "log_median_", "between_sd_", "loglik_"):
        assert getattr(bare.model, name) == getattr(kept.model, name)
    np.testing.assert_array_equal(bare.model.covariance_, kept.model.covariance_)
    np.testing.assert_array_equal(bare.model.depth_weights_, kept.model.depth_weights_)
    pd.testing.assert_frame_equal(bare.cycles, kept.cycles, check_exact=True)
    # the latest assessments are read by the suggestions only, which a model without its course never makes
    assert bare.last_activity is None and kept.last_activity is not None
    # the course with only the columns the model's scores read gives the same scores
    scored = intervals.scored_course(built)
    assert set(scored.infusions.columns) < set(built.infusions.columns)
    pd.testing.assert_frame_equal(intervals.model_scores(scored), kept.scores, check_exact=True)


def test_the_benchmarks_estimate_is_that_of_the_whole_cycle_table():
    """bench.durability_estimate holds only the cycle columns the estimate reads through the fit: the same figures
    as the durability page's estimate from the whole table (its model fitted from the same course)."""
    import json

    from analytics import bench
    from analytics.durability import cohort_durability
    from analytics.screens.durability import N_BOOT
    from analytics.screens.workspace import cohort_cycles

    frames = course.frames_from_csv_tables(simulate.simulate_clinic(120, 16, days=400).tables)
    built = course.build_course(frames["treatments"], frames["assessments"], "PHQ-9",
                                columns=intervals._model_course_columns())
    cycles = cohort_cycles(frames["patients"], frames["treatments"], frames["assessments"], "PHQ-9",
                           attributes=frames["attributes"], built=built)
    assert set(bench.ESTIMATE_CYCLE_COLUMNS) < set(cycles.columns)
    clinic = intervals.fit_clinic_model(frames, "PHQ-9", built=built, cycles=cycles, keep_course=False)
    expected = cohort_durability(cycles, instrument="PHQ-9", by=None, n_boot=N_BOOT, model=clinic.model)
    assert json.dumps(bench.durability_estimate(frames), sort_keys=True, default=repr) == \
        json.dumps(expected, sort_keys=True, default=repr)


def test_the_taper_signals_hand_back_what_they_freed_before_the_trend_tests(clinic, monkeypatch):
    """The trend tests' grid is the suggestions' peak at 100,000 patients: what the selections before it freed
    (Arrow's pool, glibc's heap) is handed back first, not left resident under it."""
    sim, cal, cm, sug = clinic
    events = []
    monkeypatch.setattr(intervals.memory, "release_freed", lambda: events.append("release"))
    original = type(cm.model).trend_tests

    def trend_tests(self, *args, **kwargs):
        events.append("trend")
        return original(self, *args, **kwargs)
    monkeypatch.setattr(type(cm.model), "trend_tests", trend_tests)
    intervals.taper_signals(cm.course, cm.cycles, sug, cm.model, read_scores=cm.scores)
    assert "trend" in events and events[events.index("trend") - 1] == "release"
