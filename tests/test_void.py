"""Voiding a mistaken record and correcting its date (issue 14, major 4).

A voided infusion or assessment leaves every analysis (the data layer's reads, so cycles,
suggestions, the due list and the export of the data) and stays in the record's history and in
voided.csv with who voided it, when and why; a date correction voids the record at the wrong time
and records it at the right one, its history starting at the earlier date. Both are audited.
"""
from __future__ import annotations

import csv
from datetime import date, datetime

import pandas as pd
import pytest

from analytics import audit, export, ingest, scales, store, visits
from analytics.access import SYSTEM, DataAccess, Scope
from analytics.screens import due
from analytics.screens.workspace import Workspace, cohort_cycles

TODAY = date(2026, 11, 21)


def _counts(db) -> dict:
    with store.connect(db) as con:
        return {t: con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0]
                for t in ("treatments", "assessments", "record_history", "import_batches", "audit_log")}


def _patient_with_cycles(db, at_least: int = 3) -> tuple[str, pd.DataFrame]:
    cycles = Workspace(DataAccess(db)).cycles()
    counts = cycles.groupby("patient_id").size()
    pid = counts[counts >= at_least].index[0]
    return pid, cycles


def test_a_voided_infusion_leaves_the_cycles_as_if_it_had_never_been_recorded(writable_db):
    data = DataAccess(writable_db)
    before = {"patients": data.patients(), "treatments": data.treatments(), "assessments": data.assessments(),
              "attributes": data.attributes()}
    pid, cycles_before = _patient_with_cycles(writable_db)
    mine = cycles_before[cycles_before["patient_id"] == pid]
    started = pd.Timestamp(mine["started_at"].iloc[1])  # an infusion given in response: it starts a cycle
    infusion = before["treatments"][(before["treatments"]["patient_id"] == pid)
                                    & (before["treatments"]["administered_at"] == started)]
    assert len(infusion) == 1
    version_before = data.data_version()

    done = visits.void_record(writable_db, SYSTEM, pid, started, reason="entered for the wrong patient")
    assert done.ok and done.version == "voided", done.errors
    assert data.data_version() != version_before  # the dashboard's caches start afresh

    # Recomputed independently: the same frames with that one row dropped by hand.
    expected = cohort_cycles(before["patients"], before["treatments"].drop(index=infusion.index),
                             before["assessments"], attributes=before["attributes"])
    after = Workspace(DataAccess(writable_db)).cycles()
    columns = ["patient_id", "cycle_no", "started_at", "left_days", "right_days", "event"]
    mine_after = after[after["patient_id"] == pid][columns].reset_index(drop=True)
    pd.testing.assert_frame_equal(mine_after, expected[expected["patient_id"] == pid][columns].reset_index(drop=True))
    assert started not in set(mine_after["started_at"])
    assert not mine_after.equals(mine[columns].reset_index(drop=True))  # and the voided infusion had changed them


def test_a_voided_infusion_changes_the_due_list(writable_db):
    ws = Workspace(DataAccess(writable_db))
    listed = due.due_screen(ws, TODAY).due
    overdue = listed[listed["reasons"].str.contains("overdue")]
    assert len(overdue), "the demo clinic has overdue patients"
    pid = overdue["patient_id"].iloc[0]
    given = datetime(2026, 11, 21, 9, 0)
    assert visits.record_infusion(writable_db, SYSTEM, pid, administered_at=given, route="iv", dose_mg_per_kg=0.5,
                                  phase="maintenance").ok
    after_infusion = due.due_screen(Workspace(DataAccess(writable_db)), TODAY).due.set_index("patient_id")
    assert pid not in after_infusion.index or "overdue" not in after_infusion.loc[pid, "reasons"]

    assert visits.void_record(writable_db, SYSTEM, pid, given, reason="recorded on the wrong chart").ok
    after_void = due.due_screen(Workspace(DataAccess(writable_db)), TODAY).due.set_index("patient_id")
    assert "overdue" in after_void.loc[pid, "reasons"]
    assert after_void.loc[pid, "last_infusion"] == overdue.set_index("patient_id").loc[pid, "last_infusion"]


def test_a_void_is_kept_with_who_when_and_why_and_audited(writable_db):
    data = DataAccess(writable_db)
    pid = data.patients()["patient_id"].iloc[0]
    when = datetime(2026, 11, 19, 10, 30)
    assert visits.record_infusion(writable_db, SYSTEM, pid, administered_at=when, route="iv", dose_mg=35, weight_kg=70,
                                  phase="maintenance", notes="BP 150/95").ok
    clinician = Scope(user="dr_void", role="clinician", clinician=data.patients().iloc[0]["clinician"])
    done = visits.void_record(writable_db, clinician, pid, when, reason="entered twice", now=datetime(2026, 11, 20, 8, 5))
    assert done.ok, done.errors
    assert when not in set(data.treatments([pid])["administered_at"])
    assert when not in set(data.treatment_details([pid])["administered_at"])  # its extras leave with it
    kept = data.voided_rows([pid])["treatments"].iloc[0]
    assert (kept["administered_at"], kept["voided_by"], kept["void_reason"]) == (pd.Timestamp(when), "dr_void", "entered twice")
    assert kept["voided_at"] == pd.Timestamp("2026-11-20 08:05")
    history = visits.record_history(writable_db, clinician, pid, when)
    assert list(history["state"]) == ["voided", "replaced"]
    assert history.iloc[0]["void_reason"] == "entered twice" and pd.isna(history.iloc[1]["void_reason"])
    assert history.iloc[1]["dose_mg_per_kg"] == 0.5
    entry = audit.entries(writable_db, action="void_record").iloc[-1]
    assert entry["actor"] == "dr_void" and entry["patients"] == [pid] and entry["detail"]["reason"] == "entered twice"
    # Voided twice: refused, nothing written.
    before = _counts(writable_db)
    again = visits.void_record(writable_db, clinician, pid, when, reason="entered twice")
    assert not again.ok and "nothing to void" in again.errors["form"]
    assert _counts(writable_db) == before


def test_void_needs_a_reason_and_the_clinicians_own_patient(writable_db):
    data = DataAccess(writable_db)
    patients = data.patients()
    pid, clinician = patients.iloc[0]["patient_id"], patients.iloc[0]["clinician"]
    at = data.treatments([pid])["administered_at"].iloc[-1]
    before = _counts(writable_db)
    no_reason = visits.void_record(writable_db, SYSTEM, pid, at, reason="  ")
    assert not no_reason.ok and "say why" in no_reason.errors["void_reason"]
    other = Scope(user="dr_other", role="clinician", clinician="nobody")
    assert not visits.void_record(writable_db, other, pid, at, reason="mistake").ok
    director = Scope(user="boss", role="director", patient_level=False)
    assert "cannot record visits" in visits.void_record(writable_db, director, pid, at, reason="mistake").errors["form"]
    after = _counts(writable_db)
    # nothing changed but the two refusals (another caseload, another role), each audited as denied
    assert {**after, "audit_log": before["audit_log"]} == before and after["audit_log"] == before["audit_log"] + 2
    denied = audit.entries(writable_db, action="record_visit")
    assert list(denied["outcome"]) == ["denied", "denied"] and {d["version"] for d in denied["detail"]} == {"void"}
    assert at in set(DataAccess(writable_db).treatments([pid])["administered_at"])
    assert visits.void_record(writable_db, Scope(user="dr", role="clinician", clinician=clinician), pid, at,
                              reason="wrong patient").ok


def test_a_voided_assessment_leaves_the_scores_and_a_reimport_does_not_bring_it_back(writable_db, tmp_path):
    data = DataAccess(writable_db)
    pid = data.patients()["patient_id"].iloc[0]
    scores = data.assessments([pid], scales.PRIMARY)
    last = scores.iloc[-1]
    export.export_csv(tmp_path / "before", writable_db)  # the file a clinic might import again
    assert visits.void_record(writable_db, SYSTEM, pid, last["administered_at"], scales.PRIMARY, reason="wrong patient").ok
    assert last["administered_at"] not in set(data.assessments([pid], scales.PRIMARY)["administered_at"])
    report = ingest.import_files([tmp_path / "before" / "assessments.csv"], db=writable_db)
    assert report.exit_code == 0, report.messages()
    assert last["administered_at"] not in set(data.assessments([pid], scales.PRIMARY)["administered_at"])
    assert len(data.voided_rows([pid])["assessments"]) == 1


def test_recording_again_at_a_voided_time_restores_it_as_a_new_version(writable_db):
    data = DataAccess(writable_db)
    pid = data.patients()["patient_id"].iloc[0]
    when = datetime(2026, 11, 19, 10, 30)
    assert visits.record_infusion(writable_db, SYSTEM, pid, administered_at=when, route="iv", dose_mg_per_kg=0.5).ok
    assert visits.void_record(writable_db, SYSTEM, pid, when, reason="thought it was entered twice").ok
    corrected = visits.record_infusion(writable_db, SYSTEM, pid, administered_at=when, route="iv", dose_mg_per_kg=0.5,
                                       correct=True)
    assert not corrected.ok and "voided" in corrected.errors["administered_on"]
    again = visits.record_infusion(writable_db, SYSTEM, pid, administered_at=when, route="iv", dose_mg_per_kg=0.75)
    assert again.ok and again.version == "new", again.errors
    assert data.treatments([pid]).set_index("administered_at").loc[when, "dose_mg_per_kg"] == 0.75
    history = visits.record_history(writable_db, SYSTEM, pid, when)
    assert list(history["state"]) == ["current", "replaced", "replaced"]
    assert history.iloc[1]["void_reason"] == "thought it was entered twice"
    assert list(history["dose_mg_per_kg"]) == [0.75, 0.5, 0.5]


def test_a_date_correction_moves_the_record_and_keeps_the_earlier_date_in_its_history(writable_db):
    data = DataAccess(writable_db)
    pid = data.patients()["patient_id"].iloc[0]
    wrong, right = datetime(2026, 11, 18, 9, 0), datetime(2026, 11, 19, 9, 0)
    assert visits.record_infusion(writable_db, SYSTEM, pid, administered_at=wrong, route="im", dose_mg_per_kg=0.6,
                                  phase="maintenance", weight_kg=80, dose_mg=48, notes="nausea").ok
    moved = visits.correct_date(writable_db, SYSTEM, pid, wrong, right, reason="typed yesterday's date")
    assert moved.ok and moved.version == "date corrected", moved.errors
    stored = data.treatments([pid]).set_index("administered_at")
    assert wrong not in stored.index
    assert (stored.loc[right, "route"], stored.loc[right, "dose_mg_per_kg"], stored.loc[right, "phase"]) == ("im", 0.6, "maintenance")
    assert data.treatment_details([pid]).set_index("administered_at").loc[right, "notes"] == "nausea"
    history = visits.record_history(writable_db, SYSTEM, pid, right)
    assert list(history["state"]) == ["current", "replaced"]
    assert list(history["administered_at"]) == [pd.Timestamp(right), pd.Timestamp(wrong)]
    voided = data.voided_rows([pid])["treatments"].iloc[0]
    assert voided["administered_at"] == pd.Timestamp(wrong) and "date corrected to 2026-11-19 09:00" in voided["void_reason"]
    entry = audit.entries(writable_db, action="record_visit").iloc[-1]
    assert entry["detail"]["version"] == "date corrected" and entry["detail"]["from"].startswith("2026-11-18T09:00")


def test_a_date_correction_is_refused_onto_a_record_into_the_future_or_without_a_reason(writable_db):
    data = DataAccess(writable_db)
    pid = data.patients()["patient_id"].iloc[0]
    times = list(data.treatments([pid])["administered_at"].iloc[-2:])
    before = _counts(writable_db)
    onto = visits.correct_date(writable_db, SYSTEM, pid, times[1], times[0], reason="wrong day")
    assert not onto.ok and "duplicate" in onto.errors["new_administered_on"]
    future = visits.correct_date(writable_db, SYSTEM, pid, times[1], "2099-01-01", reason="wrong day")
    assert not future.ok and "future" in future.errors["new_administered_on"]
    assert "say why" in visits.correct_date(writable_db, SYSTEM, pid, times[1], "2026-11-01", reason="").errors["correction_reason"]
    same = visits.correct_date(writable_db, SYSTEM, pid, times[1], times[1], reason="wrong day")
    assert not same.ok and "already recorded" in same.errors["new_administered_on"]
    assert _counts(writable_db) == before


def test_an_assessment_date_correction_keeps_its_items(writable_db):
    data = DataAccess(writable_db)
    pid = data.patients()["patient_id"].iloc[0]
    wrong = datetime(2026, 11, 17, 14, 0)
    items = {n: 3 for n in range(1, 11)}
    assert visits.record_assessment(writable_db, SYSTEM, pid, "MADRS", administered_at=wrong, items=items).ok
    assert visits.correct_date(writable_db, SYSTEM, pid, wrong, date(2026, 11, 16), "MADRS", reason="entered a day late").ok
    madrs = data.assessments([pid], "MADRS").set_index("administered_at")
    assert madrs.loc[pd.Timestamp("2026-11-16"), "total"] == 30 and not bool(madrs.loc[pd.Timestamp("2026-11-16"), "has_time"])
    assert pd.Timestamp(wrong) not in madrs.index


def test_the_export_keeps_voided_records_apart_and_the_import_does_not_read_them(writable_db, tmp_path):
    data = DataAccess(writable_db)
    pid = data.patients()["patient_id"].iloc[0]
    at = data.treatments([pid])["administered_at"].iloc[-1]
    assert visits.void_record(writable_db, SYSTEM, pid, at, reason="=wrong patient").ok
    files = export.export_csv(tmp_path / "out", writable_db)
    with open(files["voided"], newline="") as f:
        [row] = list(csv.DictReader(f))
    assert (row["record"], row["patient"], row["voided_by"], row["void_reason"]) == ("infusion", pid, "system", "'=wrong patient")
    treatments = pd.read_csv(files["treatments"], dtype=str)
    mine = treatments[treatments["patient_id"] == pid]
    assert not set(mine["administered_on"]) & {at.strftime("%Y-%m-%d"), at.strftime("%Y-%m-%dT%H:%M:%S")}
    assert len(treatments) == len(data.treatments())
    from analytics.ingest import rules

    assert rules.detect_kind(list(row)) is None  # importing the export folder never turns a void back into a record


def test_a_database_from_before_voids_is_brought_up_to_date_by_its_first_read(tmp_path, monkeypatch):
    from fixtures import make_db, patient, treatment

    before = store.MIGRATIONS.index(store._schema_v6)  # the migration that added voids
    monkeypatch.setattr(store, "MIGRATIONS", store.MIGRATIONS[:before])
    monkeypatch.setattr(store, "SCHEMA_VERSION", before)
    db = make_db(tmp_path, patients=[patient("P1")], treatments=[treatment("P1", "2024-02-01")])
    with store.connect(db) as con:
        assert "voided_at" not in {r[0] for r in con.execute("DESCRIBE treatments").fetchall()}
    monkeypatch.undo()
    assert len(DataAccess(db).treatments()) == 1
    with store.connect(db) as con:
        assert store.current_version(con) == store.SCHEMA_VERSION
