"""Patient trajectory page, run with Streamlit AppTest on the demo clinic."""
from datetime import date

import pandas as pd
import pytest

from analytics.access import DataAccess
from analytics.screens import patient, workspace


DEMO_TODAY = date(2026, 11, 21)


@pytest.fixture(scope="module")
def clinic(demo_db):
    data = DataAccess(demo_db)
    frames = {"patients": data.patients(), "treatments": data.treatments(), "assessments": data.assessments()}
    suggestions = workspace.interval_suggestions(data, today=DEMO_TODAY)
    return frames, suggestions


def _latest_phq9(assessments, patient_id):
    a = assessments[(assessments["patient_id"] == patient_id) & (assessments["instrument"] == "PHQ-9")]
    return a.sort_values("administered_at").iloc[-1]


def test_patient_page_shows_latest_score_and_next_due_date(open_page, text_of, clinic):
    frames, suggestions = clinic
    row = suggestions[suggestions["status"] == "suggested"].dropna(subset=["next_due_on"]).iloc[0]
    patient_id = row["patient_id"]
    latest = _latest_phq9(frames["assessments"], patient_id)

    at = open_page("patient", patient=patient_id)

    assert not at.exception
    metric = next(m for m in at.metric if m.label.startswith("Latest PHQ-9"))
    assert metric.value == f"{latest['total']:g} / 27"  # the band sits under it, not in a truncated value
    assert f"{latest['administered_at']:%d %b %Y}" in metric.label
    text = text_of(at)
    assert f"{pd.Timestamp(row['next_due_on']):%a %d %b %Y}" in text
    assert f"{row['interval_low_days']:.0f} to {row['interval_high_days']:.0f} days" in text
    assert at.selectbox[0].value == patient_id
    # the evidence beside the suggestion agrees with the cycle table below it
    k, m = int(row["observed_cycles"]), int(row["observed_losses"])
    assert f"Observed: {k} response cycle{'s' if k != 1 else ''}, {m} ended in loss of response" in text
    shown = at.dataframe[0].value
    assert len(shown) == k and (shown["ended"] == "loss of response").sum() == m
    assert "Driven by" in text


def _suggestion_text(at) -> str:
    return next(i.value for i in at.info if "Suggested next infusion" in i.value or "No suggested date" in i.value)


def test_one_patient_gets_one_suggestion_whoever_looks(open_page, monkeypatch, clinic, demo_db):
    """A clinician (their caseload), a director with a grant, and `intervals --json` see the same
    suggestion and range for a patient: the model is the whole clinic's, not the viewer's."""
    import json
    import os
    import subprocess
    import sys

    from analytics import access
    from tests.conftest import ROOT

    frames, suggestions = clinic
    ok = suggestions[suggestions["status"] == "suggested"].merge(frames["patients"][["patient_id", "clinician"]])
    # a patient of the smallest caseload: the old per-scope fit differed most there
    smallest = ok["clinician"].value_counts().index[-1]
    row = ok[ok["clinician"] == smallest].iloc[0]
    pid = row["patient_id"]
    monkeypatch.setenv("OUTCOMES_ROLE", "clinician")
    monkeypatch.setenv("OUTCOMES_CLINICIAN", smallest)
    as_clinician = _suggestion_text(open_page("patient", patient=pid))
    import pages._signin as signin

    director = access.Scope(user="director", role="director", patient_level=False, identifiable=False,
                            granted=frozenset({pid}))
    monkeypatch.setattr(signin, "signed_in_scope", lambda: director)
    as_director = _suggestion_text(open_page("patient", patient=pid))
    assert as_clinician == as_director
    cli = subprocess.run([sys.executable, "-m", "analytics", "intervals", "--db", str(demo_db), "--json"], cwd=ROOT,
                         capture_output=True, text=True, timeout=900,
                         env={**os.environ, "OUTCOMES_TODAY": DEMO_TODAY.isoformat()})
    mine = next(r for r in json.loads(cli.stdout)["patients"] if r["patient_id"] == pid)
    assert f"{mine['suggested_interval_days']} days after the last one" in as_clinician
    assert f"a reasonable range is {mine['interval_low_days']} to {mine['interval_high_days']} days" in as_clinician
    assert f"{pd.Timestamp(mine['next_due_on']):%a %d %b %Y}" in as_clinician


def test_a_patient_no_longer_in_active_care_has_no_due_date(clinic):
    _, suggestions = clinic
    gone = suggestions[suggestions["status"] == "not_in_active_care"].iloc[0].to_dict()
    text = patient.describe_suggestion(gone, DEMO_TODAY)
    assert text.startswith("No suggested date: no longer in active care") and "overdue" not in text


def test_item9_banner_only_when_latest_item9_is_positive(open_page, clinic):
    frames, _ = clinic
    phq = frames["assessments"][frames["assessments"]["instrument"] == "PHQ-9"].sort_values("administered_at")
    last = phq.groupby("patient_id").tail(1)
    positive = last[last["item_9"].fillna(0) > 0]["patient_id"].iloc[0]
    negative = last[last["item_9"].fillna(0) == 0]["patient_id"].iloc[0]

    flagged = open_page("patient", patient=positive)
    calm = open_page("patient", patient=negative)

    assert any("item 9" in e.value and "suicide risk" in e.value for e in flagged.error)
    assert not any("item 9" in e.value for e in calm.error)


def test_search_narrows_matches_and_choosing_one_sets_the_link(open_page):
    at = open_page("patient")
    assert not at.selectbox  # nothing loaded until the user types
    at.text_input[0].input("P0001").run()
    options = at.selectbox[0].options
    assert options and all("P0001" in o for o in options)
    assert len(options) <= 20
    at.selectbox[0].select(options[-1]).run()
    assert at.query_params["patient"] in (options[-1], [options[-1]])


def test_unknown_patient_says_so(open_page):
    at = open_page("patient", patient="NOPE")
    assert not at.exception
    assert any("No patient in your caseload" in w.value for w in at.warning)


def test_clinician_cannot_find_another_clinicians_patient(open_page, clinic, monkeypatch):
    frames, _ = clinic
    patients = frames["patients"]
    mine = patients["clinician"].iloc[0]
    other = patients[patients["clinician"] != mine]["patient_id"].iloc[0]
    monkeypatch.setenv("OUTCOMES_CLINICIAN", mine)
    monkeypatch.setenv("OUTCOMES_ROLE", "clinician")
    from streamlit.testing.v1 import AppTest

    from tests.conftest import ROOT
    at = AppTest.from_file(str(ROOT / "pages/patient.py"), default_timeout=180)
    at.query_params["patient"] = other
    at.run()
    assert any("No patient in your caseload" in w.value for w in at.warning)
    assert not at.metric


def test_patient_csv_holds_only_that_patient(demo_db):
    record = DataAccess(demo_db).patient_record("P00003")
    csv = patient.patient_csv(record).decode()
    frame = pd.read_csv(pd.io.common.StringIO(csv))
    assert set(frame["patient_id"]) == {"P00003"}
    assert set(frame["kind"]) == {"infusion", "assessment"}
    assert len(frame) == len(record["treatments"]) + len(record["assessments"])


def test_history_is_newest_first_and_marks_item9(demo_db):
    record = DataAccess(demo_db).patient_record("P00003")
    history = patient.patient_history(record, limit=50)
    shown = pd.to_datetime(history["date"], format="mixed")  # "19 Nov 2026" or "19 Nov 2026 09:30"
    assert shown.is_monotonic_decreasing
    phq = record["assessments"][record["assessments"]["instrument"] == "PHQ-9"]
    if (phq["item_9"].fillna(0) > 0).any():
        assert history["detail"].str.contains("item 9").any()


def test_describe_suggestion_reads_like_a_clinician():
    text = patient.describe_suggestion(
        {"next_due_on": pd.Timestamp("2026-11-25"), "suggested_interval_days": 21.0, "interval_low_days": 14.0,
         "interval_high_days": 30.0, "basis": "personal", "n_cycles": 3, "target": 0.8, "taper": "stretch",
         "taper_reason": "held response up to each of the last two infusions"},
        date(2026, 11, 21))
    assert "Wed 25 Nov 2026 (in 4 days)" in text
    assert "14 to 30 days" in text
    assert "3 response cycles" in text
    assert "lengthening the interval" in text
    overdue = patient.describe_suggestion({"next_due_on": pd.Timestamp("2026-11-18"), "suggested_interval_days": 21.0,
                                         "basis": "cohort", "n_cycles": 1}, date(2026, 11, 21))
    assert "3 days overdue" in overdue
    assert "No suggested date yet" in patient.describe_suggestion(None, date(2026, 11, 21))
    # the evidence and what drove the number, in plain words
    capped = patient.describe_suggestion(
        {"status": "suggested", "next_due_on": pd.Timestamp("2026-11-25"), "suggested_interval_days": 21.0,
         "interval_low_days": 14.0, "interval_high_days": 30.0, "basis": "personal", "n_cycles": 9, "target": 0.8,
         "observed_cycles": 9, "observed_losses": 9, "observed_median_loss_days": 35.0,
         "observed_shortest_loss_days": 14.0, "estimate_source": "own losses",
         "estimate_note": "The score trend alone points to 54 days, but 4 of this patient's 9 cycles ...",
         "latest_responding": False, "taper": "none"}, date(2026, 11, 21))
    assert "Observed: 9 response cycles, 9 ended in loss of response" in capped
    assert "earliest after 14" in capped and "Driven by this patient's own losses" in capped
    assert "no longer meets response" in capped


def test_score_cards_say_no_change_rather_than_plus_zero_and_colour_by_direction():
    latest = pd.DataFrame([
        {"instrument": "MADRS", "latest": 37.0, "on": date(2026, 11, 2), "band": "severe", "baseline": 37.0,
         "change_percent": 0.2, "max": 60},
        {"instrument": "PHQ-9", "latest": 9.0, "on": date(2026, 11, 2), "band": "mild", "baseline": 18.0,
         "change_percent": -50.0, "max": 27},
        {"instrument": "GAD-7", "latest": 12.0, "on": date(2026, 11, 2), "band": "moderate", "baseline": 8.0,
         "change_percent": 50.0, "max": 21},
        {"instrument": "PHQ-9", "latest": 3.0, "on": date(2026, 11, 2), "band": "minimal", "baseline": None,
         "change_percent": None, "max": 27},
    ])
    same, better, worse, none = patient.score_cards(latest)
    assert (same.change, same.direction) == ("no change from baseline 37", "same")
    assert (better.change, better.direction, better.score) == ("50% below baseline 18", "better", "9 / 27")
    assert (worse.change, worse.direction) == ("50% above baseline 8", "worse")
    assert (none.change, none.direction) == ("", "")


def test_patient_page_shows_no_plus_zero_percent_and_no_column_names(open_page, clinic):
    frames, _ = clinic
    pid = frames["assessments"]["patient_id"].iloc[0]
    at = open_page("patient", patient=pid)
    assert not at.exception
    assert not any("+0%" in str(m.proto.body) for m in at.metric)
    headers = [c for d in at.dataframe for c in d.value.columns]
    assert headers and not [c for c in headers if "_" in str(c)], headers


def test_a_visit_section_builds_its_form_only_once_opened(open_page, monkeypatch):
    """The visit sections are drawn folded; a section's form (and, for the record tools, the newest record's
    version history) is built only once it is opened, and stays while it is open."""
    from analytics import visits

    read = []
    real = visits.record_history
    monkeypatch.setattr(visits, "record_history", lambda *a, **k: read.append(a[2]) or real(*a, **k))
    at = open_page("patient", patient="P00003")
    assert not at.exception
    assert [e.label for e in at.expander][:2] == ["Infusion", "MADRS (clinician-rated)"]
    assert not {"Review before saving", "Save MADRS", "Create link", "Void this record"} & {b.label for b in at.button}
    assert not [s for s in at.selectbox if s.key == "history_pick"] and read == []
    at.session_state["visit_section_records"] = True  # what a click on its header does
    at.run()
    assert at.selectbox(key="history_pick").options and read == ["P00003"]
    assert {"Void this record", "Move to this date"} <= {b.label for b in at.button}
    assert "Review before saving" not in {b.label for b in at.button}
