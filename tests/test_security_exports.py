"""Attacks on what leaves the dashboard (issue 13, points 1, 3, 10 and 12): an administrator taking
identifiable records, raw clinical values in rejected rows, downloads that escape the audit or carry
spreadsheet formulas, views that leave no trace, and an anonymous page flooding the audit trail."""
from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import tomllib
import zipfile
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from analytics import audit, auth, deidentify, ingest, selfreport, suppress, throttle, visits
from analytics.access import AccessDenied, DataAccess, Scope
from analytics.screens import data as data_screen
from analytics.screens import patient as patient_screen
from analytics.screens.workspace import Workspace
from fixtures import make_db, patient, treatment, assessment

ROOT = Path(__file__).resolve().parent.parent
ADMIN = Scope(user="admin", role="admin", patient_level=False, identifiable=False, min_cell=suppress.default_min_cell())
RAW_SCORE_LINE = "P1,PHQ-9,2024-02-03,self,9,1,1,1,1,1,1,1,0,,"


@pytest.fixture()
def clinic(tmp_path):
    """Two patients with dated infusions and scores, an admin account, and one rejected row holding a raw score."""
    db = make_db(tmp_path,
                 patients=[patient("P1", birth_year=1961, enrolled_on="2024-01-02"),
                           patient("P2", birth_year=1990, clinician="dr_b", enrolled_on="2024-01-05")],
                 treatments=[treatment("P1", "2024-01-08T09:30"), treatment("P1", "2024-01-11T10:00"),
                             treatment("P1", "2024-02-20"), treatment("P2", "2024-01-09")],
                 assessments=[assessment("P1", "PHQ-9", "2024-01-07", items=[2] * 9),
                              assessment("P2", "PHQ-9", "2024-01-08", items=[1] * 9, rater="Dr Jane Smith")])
    bad = tmp_path / "scores.csv"
    bad.write_text("patient_id,instrument,administered_on,rater,item_1,item_2,item_3,item_4,item_5,item_6,item_7,item_8,"
                   "item_9,item_10,total\n" + RAW_SCORE_LINE + "\n")
    ingest.import_files([bad], db=db)
    auth.create_user(db, "admin", "admin", "correct horse battery", actor="test")
    auth.create_user(db, "dr_a", "clinician", "correct horse battery", actor="test")
    return db


def _unzip(blob: bytes) -> dict[str, list[dict]]:
    with zipfile.ZipFile(io.BytesIO(blob)) as archive:
        return {name.removesuffix(".csv"): list(csv.DictReader(io.StringIO(archive.read(name).decode())))
                for name in archive.namelist()}


def _zip_text(blob: bytes) -> str:
    """Everything a reader of the zip sees: its comment, member names and each member's text. (Searching the
    raw blob failed at random: compressed bytes, which differ with every export's pseudonyms and date
    shifts, now and then hold the two bytes "P1".)"""
    with zipfile.ZipFile(io.BytesIO(blob)) as archive:
        return "\n".join([archive.comment.decode("latin-1"), *archive.namelist(),
                          *(archive.read(name).decode("utf-8") for name in archive.namelist())])


# -- point 1: the administrator's export ---------------------------------------------------------

def test_an_admins_dashboard_export_identifies_nobody(clinic):
    blob = data_screen.export_zip(Workspace(DataAccess(clinic, ADMIN)))
    files = _unzip(blob)
    text = _zip_text(blob) + json.dumps(files)
    for secret in ["P1", "P2", "1961", "1990", "Jane Smith", RAW_SCORE_LINE]:
        assert secret not in text, secret
    # Every date of a patient is moved back by the same 1-364 days, so none is the real one. (A blanket search
    # for the real date strings failed at random: another date moved by a random shift may land on one.)
    real = {"P1": {"enrolled": "2024-01-02", "treatments": ["2024-01-08", "2024-01-11", "2024-02-20"], "assessments": ["2024-01-07"]},
            "P2": {"enrolled": "2024-01-05", "treatments": ["2024-01-09"], "assessments": ["2024-01-08"]}}
    for pid, dates in real.items():
        code = deidentify.pseudonym(pid)
        enrolled = next(p["enrolled_on"] for p in files["patients"] if p["patient_id"] == code)
        shift = pd.Timestamp(dates["enrolled"]) - pd.Timestamp(enrolled)
        assert timedelta(days=1) <= shift <= timedelta(days=364)
        for table in ("treatments", "assessments"):
            shown = sorted(pd.Timestamp(r["administered_on"]).normalize() for r in files[table] if r["patient_id"] == code)
            assert [d + shift for d in shown] == [pd.Timestamp(d) for d in dates[table]], (pid, table)
    assert {p["birth_year"] for p in files["patients"]} == {""}
    assert "raw_line" not in files["rejected"][0]
    assert files["rejected"][0]["line"] == "2" and files["rejected"][0]["column"] == "item_1"


def test_the_date_shift_keeps_every_interval_of_a_patient(clinic):
    files = _unzip(data_screen.export_zip(Workspace(DataAccess(clinic, ADMIN))))
    code = deidentify.pseudonym("P1")
    shifted = sorted(pd.Timestamp(t["administered_on"]) for t in files["treatments"] if t["patient_id"] == code)
    real = [pd.Timestamp("2024-01-08T09:30"), pd.Timestamp("2024-01-11T10:00"), pd.Timestamp("2024-02-20")]
    assert [b - a for a, b in zip(shifted, shifted[1:])] == [b - a for a, b in zip(real, real[1:])]
    shift = real[0] - shifted[0]
    assert timedelta(days=1) <= shift <= timedelta(days=364) and shift.seconds == 0
    enrolled = next(p["enrolled_on"] for p in files["patients"] if p["patient_id"] == code)
    assert pd.Timestamp("2024-01-02") - pd.Timestamp(enrolled) == shift  # the same shift for all of a patient's dates
    again = _unzip(data_screen.export_zip(Workspace(DataAccess(clinic, ADMIN))))
    assert again["treatments"] == files["treatments"]  # pseudonyms and shifts are stable across exports


def test_every_export_is_audited_with_every_patient_in_it(clinic, tmp_path):
    data_screen.export_zip(Workspace(DataAccess(clinic, ADMIN)))
    entry = audit.entries(clinic, action="export").iloc[-1]
    assert entry["actor"] == "admin" and entry["patients"] == ["P1", "P2"] and entry["detail"]["identifiable"] is False
    result = subprocess.run([sys.executable, "-m", "analytics", "export", str(tmp_path / "out"), "--db", str(clinic)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    cli = audit.entries(clinic, action="export").iloc[-1]
    assert cli["patients"] == ["P1", "P2"] and cli["detail"]["identifiable"] is True


def test_break_glass_is_explicit_time_limited_and_audited(clinic):
    ws = Workspace(DataAccess(clinic, ADMIN))
    with pytest.raises(auth.UserError, match="reason"):
        auth.grant_break_glass(clinic, "admin", "because")
    with pytest.raises(auth.UserError, match="administrators only"):
        auth.grant_break_glass(clinic, "dr_a", "chart review for the coroner's request")
    result = subprocess.run([sys.executable, "-m", "analytics", "users", "break-glass", "admin", "--reason",
                             "subject access request 2026-114", "--hours", "1", "--db", str(clinic)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    files = _unzip(data_screen.export_zip(ws))
    assert {p["patient_id"] for p in files["patients"]} == {"P1", "P2"} and files["rejected"][0]["raw_line"]
    entry = audit.entries(clinic, action="export").iloc[-1]
    assert entry["detail"]["identifiable"] is True and entry["detail"]["reason"] == "subject access request 2026-114"
    granted = audit.entries(clinic, action="break_glass_grant").iloc[-1]
    assert granted["detail"]["user"] == "admin"
    assert data_screen.data_screen(ws).raw_values
    # after its hour, or once ended, the export is de-identified again
    assert auth.active_break_glass(clinic, "admin", now=datetime.utcnow() + timedelta(hours=2)) is None
    assert auth.end_break_glass(clinic, "admin", actor="test")
    assert "P1" not in _zip_text(data_screen.export_zip(ws))


def test_rejected_rows_show_line_and_reason_but_no_raw_values_without_a_grant(clinic):
    screen = data_screen.data_screen(Workspace(DataAccess(clinic, ADMIN)))
    shown = screen.rejected
    assert list(shown.columns) == ["batch_id", "file", "line", "column", "reason"]
    assert shown["line"].tolist() == ["2"] and "0-3" in shown["reason"].iloc[0]
    assert "9" not in shown["reason"].iloc[0].split("got")[-1]
    upload = clinic.parent / "more.csv"
    upload.write_text("patient_id,instrument,administered_on,rater,item_1,item_2,item_3,item_4,item_5,item_6,item_7,"
                      "item_8,item_9,item_10,total\nP2,PHQ-9,2024-03-01,self,1,1,1,1,1,1,1,1,1,,\n"
                      "P2,PHQ-9,2024-03-02,self,8,1,1,1,1,1,1,1,1,,\n")
    preview = data_screen.preview_uploads([upload], db=clinic)
    assert "got 8" not in " ".join(preview["rejects"].iloc[0]["reason"])
    result = data_screen.import_result(ingest.import_files([upload], db=clinic))
    assert "got 8" not in " ".join(result.rejects["reason"]) + " ".join(result.messages)


# -- point 3: the product's own downloads ----------------------------------------------------------

def test_builtin_table_downloads_are_switched_off():
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["client"]["disableDataExport"] is True


@pytest.mark.parametrize("start", ["=", "+", "-", "@", "\t", "\r"])
def test_downloaded_cells_never_start_a_formula(tmp_path, start):
    payload = f"{start}HYPERLINK(\"http://evil.example\",\"x\")"
    db = make_db(tmp_path, patients=[patient("P1", diagnosis="TRD", site="North")],
                 treatments=[treatment("P1", "2024-01-08")])
    record = DataAccess(db).patient_record("P1")
    record["patient"]["diagnosis"] = payload
    record["treatments"]["route"] = payload
    rows = list(csv.reader(io.StringIO(patient_screen.patient_csv(record).decode())))
    cells = [c for row in rows for c in row]
    assert payload not in cells and "'" + payload in cells
    audit.append(db, "x", "export", detail={"note": payload})
    trail = list(csv.reader(io.StringIO(audit.to_csv(audit.entries(db)))))
    assert not [c for row in trail for c in row if c.startswith(("=", "+", "-", "@", "\t", "\r"))]


def test_a_patient_download_is_audited_with_its_patient_when_taken(tmp_path):
    db = make_db(tmp_path, patients=[patient("P1")], treatments=[treatment("P1", "2024-01-08")])
    ws = Workspace(DataAccess(db, Scope(user="dr_a", role="clinician", clinician="dr_a")))
    screen = patient_screen.patient_screen(ws, "P1", datetime(2024, 2, 1).date())
    before = len(audit.entries(db, action="export"))
    body = patient_screen.audited_csv(ws, screen)
    entry = audit.entries(db, action="export")
    assert len(entry) == before + 1 and entry.iloc[-1]["patients"] == ["P1"] and b"P1" in body


# -- point 10: what was not recorded ---------------------------------------------------------------

def test_refused_writes_for_another_clinicians_patient_are_recorded(clinic):
    me = Scope(user="dr_a", role="clinician", clinician="dr_a")
    when = datetime(2024, 3, 1, 9, 0)
    assert not visits.record_infusion(clinic, me, "P2", administered_at=when, route="iv", dose_mg_per_kg=0.5).ok
    assert not visits.record_assessment(clinic, me, "P2", "MADRS", administered_at=when, items={}).ok
    with pytest.raises(AccessDenied):
        selfreport.create_link(clinic, me, "P2", "PHQ-9")
    with pytest.raises(AccessDenied):
        visits.record_history(clinic, me, "P2", "2024-01-09")
    denied = audit.entries(clinic)
    denied = denied[(denied["outcome"] == "denied") & (denied["actor"] == "dr_a")]
    assert denied["action"].tolist() == ["record_visit", "record_visit", "self_report_link", "view_patient"]
    assert all(p == ["P2"] for p in denied["patients"])


def test_the_due_list_view_is_recorded_with_its_patients(open_page, monkeypatch, writable_db):
    monkeypatch.setenv("OUTCOMES_DB", str(writable_db))
    clinician = DataAccess(writable_db).patients()["clinician"].iloc[0]
    monkeypatch.setenv("OUTCOMES_ROLE", "clinician")
    monkeypatch.setenv("OUTCOMES_CLINICIAN", clinician)
    def due_list_views():  # only this test's entries
        views = audit.entries(writable_db, action="view_due_list")
        return views[views["seq"] > before]

    earlier = audit.entries(writable_db)  # the copied demo database holds other tests' page views
    before = int(earlier["seq"].max()) if len(earlier) else 0
    at = open_page("due")
    listed = set(at.dataframe[0].value["patient_id"])
    views = due_list_views()
    assert len(views) == 1 and views.iloc[0]["actor"] == clinician and set(views.iloc[0]["patients"]) == listed and listed
    at.run()  # the same view again is not a new entry
    assert len(due_list_views()) == 1


def test_the_rejected_rows_view_is_recorded(open_page, monkeypatch, clinic):
    monkeypatch.setenv("OUTCOMES_DB", str(clinic))
    monkeypatch.setenv("OUTCOMES_ROLE", "admin")
    at = open_page("data")
    assert not at.exception
    shown = at.dataframe[1].value  # history, then the rejected rows
    assert "raw_line" not in shown.columns and RAW_SCORE_LINE not in shown.to_string()
    views = audit.entries(clinic, action="view_rejected_rows")
    assert len(views) == 1 and views.iloc[0]["detail"]["raw_values"] is False and views.iloc[0]["actor"] == "admin"



def test_the_audit_trail_an_admin_reads_holds_no_scores_answers_or_notes(clinic):
    """Admins read the audit trail (it names patients: an access record); it must not carry clinical values."""
    me = Scope(user="dr_a", role="clinician", clinician="dr_a")
    when = datetime(2024, 3, 1, 9, 0)
    assert visits.record_infusion(clinic, me, "P1", administered_at=when, route="iv", dose_mg_per_kg=0.55,
                                  phase="maintenance", notes="cannula left arm, nausea").ok
    assert visits.record_assessment(clinic, me, "P1", "MADRS", administered_at=when,
                                    items={n: 4 for n in range(1, 11)}).ok
    link = selfreport.create_link(clinic, me, "P1", "PHQ-9")
    token = link.url.split("token=", 1)[1]
    assert selfreport.submit(clinic, token, {"PHQ-9": {**{n: 1 for n in range(1, 9)}, 9: 3}}).safety_flag
    trail = audit.entries(clinic)
    flag = trail[trail["action"] == "safety_flag_raise"]
    assert len(flag) == 1 and 3 not in flag.iloc[0]["detail"].values()  # the answer to item 9 is not in it
    shown = json.dumps(trail[["detail"]].to_dict("records"), default=str)
    assert "0.55" not in shown and "cannula" not in shown  # the dose and the notes
    # the MADRS total (40) as a value anywhere in the details: not as digits inside a digest, token or time
    assert not [v for v in _values(trail["detail"].tolist())
                if v == 40 or (isinstance(v, str) and v.strip() in ("40", "40.0"))]


def _values(detail) -> list:
    """Every leaf value of nested details (dicts, lists), numbers as numbers, strings as strings."""
    if isinstance(detail, dict):
        return [v for value in detail.values() for v in _values(value)]
    if isinstance(detail, (list, tuple)):
        return [v for value in detail for v in _values(value)]
    return [detail]

# -- point 12: anonymous audit writes ---------------------------------------------------------------

def test_anonymous_link_openings_cannot_flood_the_audit_trail(clinic, monkeypatch):
    monkeypatch.setattr(selfreport, "_openings", throttle.AnonymousWrites(per_key=60, per_minute=20))
    before = len(audit.entries(clinic))
    for _ in range(5):  # the same (unknown) link opened again and again: one entry a minute
        with pytest.raises(selfreport.LinkRefused):
            selfreport.open_link(clinic, "not-a-real-token")
    assert len(audit.entries(clinic)) == before + 1
    refusals = []
    for i in range(60):  # a flood of made-up links: capped, then refused as busy without writing
        with pytest.raises(selfreport.LinkRefused) as refused:
            selfreport.open_link(clinic, f"made-up-{i}")
        refusals.append(refused.value.reason)
    assert len(audit.entries(clinic)) == before + 20
    assert refusals.count("busy") == 41 and "busy" in refusals[-1]


def test_the_server_listens_on_this_machine_only_unless_told_otherwise():
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] == "127.0.0.1" and config["server"]["enableAgentApi"] is False
    makefile = (ROOT / "Makefile").read_text()
    assert "ADDRESS ?= 127.0.0.1" in makefile and "PORT ?= 8501" in makefile
    # every server the Makefile starts (`make run`, `make run-network`) listens on $(ADDRESS)
    serving = [line for line in makefile.splitlines() if not line.startswith("#")
               and ("streamlit run" in line or "-m analytics serve" in line)]
    assert serving
    for line in serving:
        assert ("--address $(ADDRESS)" in line or "--server.address $(ADDRESS)" in line) and "--port $(PORT" in line, line
