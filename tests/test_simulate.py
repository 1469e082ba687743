"""The demo clinic: deterministic, valid for the scales, calibrated, and true to its own truth."""
from __future__ import annotations

import subprocess
import sys
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analytics import ingest, scales, simulate, store, vocabulary

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def clinic():
    return simulate.simulate_clinic(400, 11)


@pytest.fixture(scope="module")
def cohort():
    # Large enough for calibration figures to sit well inside their tolerances.
    return simulate.simulate_clinic(4000, 5)


# --- determinism -------------------------------------------------------------------

def test_same_seed_gives_byte_identical_csvs(tmp_path):
    first = simulate.simulate_clinic(120, 3).write_csv(tmp_path / "a")
    second = simulate.simulate_clinic(120, 3).write_csv(tmp_path / "b")
    for name in ("patients", "treatments", "assessments"):
        assert Path(first[name]).read_bytes() == Path(second[name]).read_bytes(), name


def test_different_seed_gives_different_data():
    a = simulate.simulate_clinic(120, 3).tables
    b = simulate.simulate_clinic(120, 4).tables
    for name in ("treatments", "assessments"):
        assert not a[name].equals(b[name]), name


# --- shape and validity ------------------------------------------------------------

def test_tables_have_the_csv_columns_as_strings(clinic):
    t = clinic.tables
    assert list(t["patients"].columns) == simulate.PATIENT_COLUMNS
    assert list(t["treatments"].columns) == simulate.TREATMENT_COLUMNS
    assert list(t["assessments"].columns) == simulate.ASSESSMENT_COLUMNS
    for frame in t.values():
        for column in frame.columns:
            values = frame[column].to_numpy()
            assert all(isinstance(v, str) for v in values), column


def test_patient_fields_are_valid(clinic):
    p = clinic.tables["patients"]
    assert p["patient_id"].is_unique
    assert set(p["sex"]) <= set(vocabulary.SEXES)
    assert p["site"].nunique() == 3 and p["clinician"].nunique() == 6
    assert p.groupby("clinician")["site"].nunique().max() == 1  # a clinician works at one site
    for text in p["comorbidities"]:
        assert set(filter(None, text.split(simulate.COMORBIDITY_SEPARATOR))) <= set(vocabulary.COMORBIDITIES)
    assert set(p["support_system"]) == {"strong", "moderate", "limited"}
    assert set(p["stress_level"]) == {"low", "moderate", "high"}
    years = p["birth_year"].astype(int)
    assert years.between(1930, 2010).all()
    assert (pd.to_datetime(p["enrolled_on"]).dt.date <= clinic.end).all()


def test_treatments_are_valid(clinic):
    t = clinic.tables["treatments"]
    assert set(t["route"]) <= set(vocabulary.ROUTES)
    assert (t["route"] == "iv").mean() > 0.75
    assert set(t["phase"]) <= set(vocabulary.PHASES) | {""}
    dose = t["dose_mg_per_kg"].astype(float)
    assert ((dose > 0) & (dose <= 5)).all()
    on = pd.to_datetime(t["administered_on"].str.slice(0, 10), format="%Y-%m-%d")
    assert on.dt.date.max() <= clinic.end
    assert not t.assign(on=on).duplicated(["patient_id", "on"]).any()
    # one site records the time of each infusion, the others only the date
    timed = t["administered_on"].str.len() > 10
    assert 0.1 < timed.mean() < 0.6
    assert pd.to_datetime(t.loc[timed, "administered_on"], format="ISO8601").dt.hour.between(9, 16).all()


def test_every_assessment_scores_cleanly_within_its_scale(clinic):
    a = clinic.tables["assessments"]
    assert not a.duplicated(["patient_id", "instrument", "administered_on"]).any()
    when = pd.to_datetime(a["administered_on"], format="ISO8601")
    assert when.dt.date.max() <= clinic.end
    for code, rows in a.groupby("instrument"):
        items = rows[scales.item_columns()].replace("", np.nan).astype("float64")
        given = rows["total"].replace("", np.nan).astype("float64")
        scored = scales.score_frame(scales.get(code), items, given)
        problems = scored[scored["problem_column"].notna()]
        assert problems.empty, problems.head().to_dict("records")
        assert scored["total"].notna().all()
        # The demo never leans on an unsupported rule: totals come from (prorated) items.
        assert set(scored["method"]) <= {"items", "prorated"}


def test_every_patient_has_a_phq9_baseline_on_or_before_the_first_infusion(clinic):
    a, t = clinic.tables["assessments"], clinic.tables["treatments"]
    first = t.groupby("patient_id")["administered_on"].min()
    phq = a[a["instrument"] == "PHQ-9"]
    earliest = phq.groupby("patient_id")["administered_on"].min().str.slice(0, 10)
    assert (earliest.reindex(first.index) <= first).all()


def test_missingness_and_safety_signals_occur(cohort):
    a = cohort.tables["assessments"]
    phq = a[a["instrument"] == "PHQ-9"]
    item_gaps = (phq[[f"item_{i}" for i in range(1, 10)]] == "").any(axis=1).mean()
    assert 0.002 < item_gaps < 0.05
    item9 = (phq["item_9"].replace("", np.nan).astype(float) > 0).mean()
    assert 0.01 < item9 < 0.2
    # Weekly self-report is missed now and then: fewer PHQ-9s than follow-up weeks.
    p = cohort.truth.patients
    weeks = ((p["follow_up_end"] - p["first_infusion_on"]).dt.days // 7 + 1).sum()
    assert 0.55 < (len(phq) - len(p)) / weeks < 0.9
    assert set(a["instrument"]) == {"PHQ-9", "MADRS", "GAD-7"}
    assert a.loc[a["instrument"] == "PHQ-9", "administered_on"].str.contains("T").any()


# --- calibration (figures and sources in docs/demo.md) --------------------------------

def test_induction_looks_like_published_practice(cohort):
    c = cohort.truth.cycles
    p = cohort.truth.patients
    done = p[p["completed_induction"]]
    ind = c[c["phase"] == "induction"].groupby("patient_id")["infusion_on"].agg(["count", "min", "max"])
    ind = ind.loc[done["patient_id"]]
    assert ind["count"].between(4, 8).all()
    assert ind["count"].median() == 6
    span = (ind["max"] - ind["min"]).dt.days
    assert span.between(7, 28).mean() > 0.9
    assert 0.2 < p["dropped_out_in_induction"].mean() < 0.3


def test_response_and_durability_are_in_published_ranges(cohort):
    figures = simulate.cohort_figures(cohort)
    assert 0.58 < figures["measured_phq9_response_2wk_after_induction"] < 0.75
    assert 0.18 < figures["measured_phq9_remission_2wk_after_induction"] < 0.38
    # Between Murrough 2013 (median 18 days) and McInnes 2022 (80%/60% still responding at 4/8 weeks).
    assert 18 < figures["true_median_days_to_loss_after_induction"] < 70
    assert 0.65 < figures["true_share_in_response_28d"] < 0.9
    assert 0.3 < figures["true_share_in_response_56d"] < 0.65
    low, high = figures["patient_median_days_q10_q90"]
    assert high / low > 3  # durability varies widely between patients


def test_durability_is_shorter_with_anxiety_or_ptsd_and_severe_baseline(cohort):
    p = cohort.truth.patients
    median = p.groupby("anxiety_or_ptsd")["true_median_days"].median()
    assert median[True] < median[False]
    severe = p["baseline_severity"] > p["baseline_severity"].quantile(0.75)
    mild = p["baseline_severity"] < p["baseline_severity"].quantile(0.25)
    assert p.loc[severe, "true_median_days"].median() < p.loc[mild, "true_median_days"].median()


def test_non_responders_stop_and_responders_are_maintained(cohort):
    p = cohort.truth.patients
    stopped = p[p["stopped_for_nonresponse"]]
    assert len(stopped) > 0 and (stopped["maintenance_infusions"] == 0).all()
    maintained = p[p["maintained"]]
    assert maintained["responded_observed"].all()
    assert (maintained["maintenance_infusions"] > 0).mean() > 0.8


# --- truth --------------------------------------------------------------------------

def test_truth_crossing_matches_latent_severity(clinic):
    c = clinic.truth.cycles
    p = clinic.truth.patients.set_index("patient_id")
    lost = c[c["latent_lost_on"].notna()].head(300)
    assert len(lost) > 20
    baseline = p.loc[lost["patient_id"], "baseline_severity"].to_numpy()
    at_loss = clinic.latent_severity(lost["patient_id"], lost["latent_lost_on"])
    day_before = clinic.latent_severity(lost["patient_id"], lost["latent_lost_on"] - pd.Timedelta(days=1))
    assert (at_loss > 0.5 * baseline).all()
    assert (day_before <= 0.5 * baseline + 1e-9).all()
    expected = lost["infusion_on"] + pd.to_timedelta(np.floor(lost["true_days_to_loss"]) + 1, unit="D")
    assert (expected == lost["latent_lost_on"]).all()


def test_truth_fields_are_consistent(clinic):
    c = clinic.truth.cycles
    p = clinic.truth.patients
    in_resp = c["in_response_after"]
    assert (c.loc[in_resp, "true_days_to_loss"] > 0).all()
    assert c.loc[~in_resp, "true_days_to_loss"].isna().all()
    assert (c["benefit_after"] > 0.5).eq(in_resp).all()
    assert not (c["latent_lost_on"].notna() & c["censored"]).any()
    assert c.loc[in_resp & c["latent_lost_on"].isna(), "censored"].all()
    # Latent responders after induction have a true time to loss; others none.
    assert p.loc[p["latent_responder"], "true_days_to_loss_after_induction"].notna().all()
    assert p.loc[~p["latent_responder"], "true_days_to_loss_after_induction"].isna().all()
    share = p["days_out_of_response_after_induction"] / p["days_after_induction"].where(p["days_after_induction"] > 0)
    assert share.dropna().between(0, 1).all()
    # Infusions in the truth are the infusions in the table.
    assert len(c) == len(clinic.tables["treatments"])
    assert (c["infusion_on"].dt.strftime("%Y-%m-%d").to_numpy() == clinic.tables["treatments"]["administered_on"].str.slice(0, 10).to_numpy()).all()


def test_noise_free_loss_brackets_the_true_crossing(clinic):
    nf = simulate.noise_free_loss(clinic)
    seen = nf[nf["loss_seen"]]
    assert len(seen) > 10
    assert (seen["last_in_response_on"] < seen["latent_lost_on"]).all()
    assert (seen["latent_lost_on"] <= seen["lost_on"]).all()
    # A loss is only confirmed once the latent crossing has happened.
    assert not (nf["loss_seen"] & nf["latent_lost_on"].isna()).any()


def test_rescues_follow_a_measured_loss_of_response(clinic):
    t, a = clinic.tables["treatments"], clinic.tables["assessments"]
    p = clinic.truth.patients.set_index("patient_id")
    rescues = t[t["phase"] == "rescue"].assign(on=lambda f: pd.to_datetime(f["administered_on"].str.slice(0, 10)))
    assert len(rescues) > 10
    phq = a[a["instrument"] == "PHQ-9"].assign(
        seen=lambda f: pd.to_datetime(f["administered_on"].str.slice(0, 10)),
        score=lambda f: f["total"].replace("", np.nan).astype(float),
    )
    first = p["first_infusion_on"].reindex(phq["patient_id"]).to_numpy()
    baseline = phq[phq["seen"].to_numpy() <= first].groupby("patient_id")["score"].last()
    pairs = rescues.reset_index().merge(phq, on="patient_id")
    pairs = pairs[(pairs["seen"] < pairs["on"]) & (pairs["seen"] >= pairs["on"] - pd.Timedelta(days=4))]
    # Out of response: above half the baseline (or items missing, prorated by the importer).
    out = pairs["score"].isna() | (pairs["score"] > 0.5 * baseline.reindex(pairs["patient_id"]).to_numpy())
    triggered = out.groupby(pairs["index"]).any().reindex(rescues.index, fill_value=False)
    assert triggered.all(), rescues[~triggered.to_numpy()].head()


# --- policies -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def evaluations():
    policies = {
        "q14": simulate.Fixed(14),
        "q28": simulate.Fixed(28),
        "triggered": simulate.SymptomTriggered(),
        "q21r": simulate.Fixed(21, rescue=True),
    }
    return {k: simulate.evaluate_policy(v, n_patients=1500, seed=2) for k, v in policies.items()}


def test_more_frequent_schedules_cost_more_infusions_and_fewer_days_out(evaluations):
    e = evaluations
    assert e["q14"]["infusions_per_patient_year"] > e["q28"]["infusions_per_patient_year"]
    assert e["q14"]["share_days_out_of_response"] < e["q28"]["share_days_out_of_response"]
    assert 20 < e["q14"]["infusions_per_patient_year"] < 27  # about 365/14
    assert e["triggered"]["rescue_share"] == 1.0 and e["q14"]["rescue_share"] == 0.0
    # Waiting for symptoms leaves patients out of response longer than a 2-weekly schedule.
    assert e["triggered"]["share_days_out_of_response"] > e["q14"]["share_days_out_of_response"]


def test_policies_share_patients_and_cycles(evaluations):
    # Common random numbers: the same responders enter maintenance whatever the policy.
    sizes = {v["patients_maintained"] for v in evaluations.values()}
    assert len(sizes) == 1


def test_personalised_policy_gets_decision_frames_and_is_honoured():
    calls = []

    def every_21_days(decisions, history):
        calls.append((decisions.copy(), history.copy()))
        return np.full(len(decisions), 21.0)

    personalised = simulate.evaluate_policy(simulate.Personalised(every_21_days, rescue=True), n_patients=300, seed=4)
    fixed = simulate.evaluate_policy(simulate.Fixed(21, rescue=True), n_patients=300, seed=4)
    assert {k: v for k, v in personalised.items() if k != "policy"} == {k: v for k, v in fixed.items() if k != "policy"}
    decisions, history = calls[-1]
    assert {"patient_id", "day", "maintenance_number", "baseline_phq9", "support_system", "stress_level"} <= set(decisions.columns)
    assert {"patient_id", "start_day", "end_day", "first_out_day"} <= set(history.columns)
    assert any(len(h) for _, h in calls)


def test_oracle_beats_a_fixed_schedule_of_similar_cost():
    oracle = simulate.evaluate_policy(simulate.Oracle(0.2), n_patients=1500, seed=2)
    fixed = simulate.evaluate_policy(simulate.Fixed(21, rescue=True), n_patients=1500, seed=2)
    # Knowing each patient's durability buys fewer days out per infusion given.
    def days_out_per_infusion_rate(e):
        return e["share_days_out_of_response"] * e["infusions_per_patient_year"]
    assert oracle["share_days_out_of_response"] < fixed["share_days_out_of_response"] or (
        oracle["infusions_per_patient_year"] < fixed["infusions_per_patient_year"]
    )
    assert days_out_per_infusion_rate(oracle) < days_out_per_infusion_rate(fixed)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="n_patients"):
        simulate.simulate_clinic(0, 1)
    with pytest.raises(ValueError, match="days"):
        simulate.simulate_clinic(10, 1, days=20)
    with pytest.raises(ValueError, match="intervals"):
        simulate.evaluate_policy(simulate.Personalised(lambda d, h: [14.0]), n_patients=200, seed=1)


def test_end_date_moves_the_calendar():
    c = simulate.simulate_clinic(50, 1, end=date(2025, 6, 30))
    assert c.end == date(2025, 6, 30)
    assert max(c.tables["treatments"]["administered_on"].str.slice(0, 10)) <= "2025-06-30"


# --- the import path -------------------------------------------------------------------

def test_demo_imports_with_nothing_rejected(tmp_path):
    clinic = simulate.simulate_clinic(150, 9)
    db = tmp_path / "demo.duckdb"
    report = ingest.import_tables(clinic.tables, file_name="demo", source="demo", db=db)
    assert report.exit_code == 0
    with store.connect(db) as con:
        rejected = con.execute("SELECT count(*) FROM rejected_rows").fetchall()[0][0]
        counts = {t: con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0] for t in ("patients", "treatments", "assessments")}
    assert rejected == 0
    assert counts == {k: len(v) for k, v in clinic.tables.items()}


def test_cli_demo_prints_one_line_and_exits_0(tmp_path):
    db = tmp_path / "cli.duckdb"
    run = subprocess.run(
        [sys.executable, "-m", "analytics", "demo", "--db", str(db), "--patients", "40", "--seed", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    assert len(lines) == 1 and "40 patients" in lines[0]
    assert run.stderr == ""


def test_cli_demo_refuses_a_future_end_date(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "analytics", "demo", "--db", str(tmp_path / "x.duckdb"), "--patients", "5", "--end", "2999-01-01"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 2 and "future" in run.stderr
    assert not (tmp_path / "x.duckdb").exists()
