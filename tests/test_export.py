"""CSV export: the import format, quarantine listing, formula neutralisation, exact round trip."""
from __future__ import annotations

import csv
import tempfile
from datetime import date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from analytics import access, export, ingest, scales
from fixtures import assessment, make_db, patient, treatment

DATA_FILES = ("patients", "treatments", "assessments")


def read(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_export_writes_the_import_format_and_neutralises_formulas(tmp_path):
    db = make_db(
        tmp_path,
        patients=[patient("=HYPERLINK(1)", site="+North", clinician="@dr", diagnosis="-TRD", stress_level="=2+2"),
                  patient("P-2", diagnosis="'quoted")],
        treatments=[treatment("=HYPERLINK(1)", "2024-02-01T09:15:30", phase="induction")],
        assessments=[assessment("=HYPERLINK(1)", "phq9", "2024-02-01", items=[1] * 9, rater="=cmd")],
    )
    files = export.export_csv(tmp_path / "out", db)
    assert set(files) == {"patients", "treatments", "assessments", "voided", "rejected"}
    patients = read(files["patients"])
    assert list(patients[0]) == ["patient_id", "site", "clinician", "birth_year", "sex", "diagnosis", "comorbidities",
                                 "prior_failed_trials", "enrolled_on", "stress_level"]
    first = {p["patient_id"]: p for p in patients}["'=HYPERLINK(1)"]
    assert (first["site"], first["clinician"], first["diagnosis"], first["stress_level"]) == ("'+North", "'@dr", "'-TRD", "'=2+2")
    assert {p["patient_id"]: p for p in patients}["P-2"]["diagnosis"] == "''quoted"
    [t] = read(files["treatments"])
    assert t == {"patient_id": "'=HYPERLINK(1)", "administered_on": "2024-02-01T09:15:30", "route": "iv",
                 "dose_mg_per_kg": "0.5", "phase": "induction"}
    [a] = read(files["assessments"])
    assert (a["instrument"], a["rater"], a["item_9"], a["item_10"], a["total"]) == ("PHQ-9", "'=cmd", "1", "", "9")

    empty = make_db(tmp_path, name="empty.duckdb")
    report = ingest.import_files([files[k] for k in DATA_FILES], db=empty)
    assert report.exit_code == 0, report.messages()
    assert set(access.DataAccess(empty).patients()["patient_id"]) == {"=HYPERLINK(1)", "P-2"}
    assert access.DataAccess(empty).attributes()["value"].tolist() == ["=2+2"]


def test_rejected_csv_lists_every_quarantined_row(tmp_path):
    db = make_db(tmp_path, patients=[patient("P1")])
    bad = tmp_path / "doses.csv"
    bad.write_text("patient_id,administered_on,route\nP1,2024-02-01,iv\nP1,2024-02-02,=pill\nP1,2024-13-01,iv\n")
    ingest.import_files([bad], db=db)
    rejected = read(export.export_csv(tmp_path / "out", db)["rejected"])
    assert [(r["file"], r["line"], r["column"]) for r in rejected] == [(str(bad), "3", "route"), (str(bad), "4", "administered_on")]
    assert rejected[0]["raw_line"] == "'P1,2024-02-02,=pill"[1:] and rejected[1]["raw_line"] == "P1,2024-13-01,iv"
    assert rejected[0]["reason"].startswith("unknown route")


def test_clinician_scope_exports_only_own_patients_and_no_quarantine(tmp_path):
    db = make_db(tmp_path, patients=[patient("P1", clinician="dr_a"), patient("P2", clinician="dr_b")])
    scope = access.Scope(user="a", role="clinician", clinician="dr_a")
    files = export.export_csv(tmp_path / "out", db, scope=scope)
    assert "rejected" not in files
    assert [p["patient_id"] for p in read(files["patients"])] == ["P1"]


# --- round trip as a property --------------------------------------------------------------

TEXT_ALPHABET = st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Zl", "Zp"), include_characters="\n")
free_text = st.text(TEXT_ALPHABET, min_size=1, max_size=12).map(str.strip).filter(bool)
ids = st.text(st.sampled_from("ABCxyz0189-_=+@'. é"), min_size=1, max_size=10).map(str.strip).filter(bool)
TODAY = date.today()


@st.composite
def moments(draw, after: date) -> str:
    day = after + timedelta(days=draw(st.integers(0, max(0, (TODAY - after).days - 1))))
    if draw(st.booleans()):
        return day.isoformat()
    moment = datetime(day.year, day.month, day.day, draw(st.integers(0, 23)), draw(st.integers(0, 59)),
                      draw(st.integers(0, 59)), draw(st.sampled_from([0, 0, 250_000, 1])))
    return moment.isoformat(sep=draw(st.sampled_from("T ")))


@st.composite
def scored(draw) -> dict:
    scale = scales.get(draw(st.sampled_from(scales.codes())))
    items = [draw(st.integers(0, scale.item_max)) for _ in range(scale.scored_items)]
    mode = draw(st.sampled_from(["items", "prorated", "total_only", "items_and_total"]))
    row: dict = {"instrument": draw(st.sampled_from([scale.code, *scale.aliases]))}
    if mode == "total_only":
        row["total"] = draw(st.integers(0, scale.total_max))
        return row
    if mode == "prorated" and scale.max_missing_prorated:
        for i in draw(st.sets(st.integers(0, scale.scored_items - 1), min_size=1, max_size=scale.max_missing_prorated)):
            items[i] = None
    row["items"] = items
    if mode == "items_and_total":
        row["total"] = sum(items) if None not in items else None
    return row


@st.composite
def clinics(draw):
    patient_ids = draw(st.lists(ids, min_size=1, max_size=4, unique=True))
    patients, treatments, assessments = [], [], []
    for pid in patient_ids:
        enrolled = TODAY - timedelta(days=draw(st.integers(1, 2000)))
        patients.append(patient(
            pid, site=draw(free_text), clinician=draw(free_text), diagnosis=draw(st.one_of(st.none(), free_text)),
            sex=draw(st.sampled_from(["F", "m", "other", "Unknown", None])),
            comorbidities=";".join(draw(st.lists(st.sampled_from(["anxiety", "PTSD", "ocd", "bipolar"]), max_size=3))),
            birth_year=draw(st.one_of(st.none(), st.integers(1930, 2005))),
            prior_failed_trials=draw(st.one_of(st.none(), st.integers(0, 12))),
            enrolled_on=enrolled.isoformat(),
            support_system=draw(st.one_of(st.none(), free_text)),
        ))
        for when in draw(st.lists(moments(enrolled), max_size=3, unique_by=lambda s: s[:10])):
            treatments.append(treatment(pid, when, route=draw(st.sampled_from(["iv", "IM", "intranasal", "oral"])),
                                        dose_mg_per_kg=draw(st.one_of(st.none(), st.floats(0.01, 5, allow_nan=False))),
                                        phase=draw(st.sampled_from(["", "induction", "maintenance", "rescue"]))))
        for when in draw(st.lists(moments(enrolled), max_size=3, unique_by=lambda s: s[:10])):
            assessments.append(assessment(pid, administered_on=when, rater=draw(st.one_of(st.none(), free_text)), **draw(scored())))
    return patients, treatments, assessments


def export_texts(db: Path, directory: Path) -> dict[str, str]:
    files = export.export_csv(directory, db)
    return {name: files[name].read_text(encoding="utf-8") for name in DATA_FILES}


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clinics())
@example(([patient("0", site="0\n0", clinician=",", sex="F", comorbidities="", enrolled_on="2026-12-01")], [], []))
def test_importing_an_export_into_an_empty_database_reproduces_it(clinic):
    patients, treatments, assessments = clinic
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        original = make_db(tmp, patients=patients, treatments=treatments, assessments=assessments, name="a.duckdb")
        first = export_texts(original, tmp / "first")
        copy = make_db(tmp, name="b.duckdb")
        report = ingest.import_files([tmp / "first" / f"{name}.csv" for name in reversed(DATA_FILES)], db=copy)
        assert report.exit_code == 0, report.messages()
        assert export_texts(copy, tmp / "second") == first
        for read_rows in ("patients", "attributes"):
            left = getattr(access.DataAccess(original), read_rows)()
            right = getattr(access.DataAccess(copy), read_rows)()
            pd.testing.assert_frame_equal(left, right)
        drop = ["treatment_id", "assessment_id"]
        for read_rows in ("treatments", "assessments"):
            left = getattr(access.DataAccess(original), read_rows)().drop(columns=drop, errors="ignore")
            right = getattr(access.DataAccess(copy), read_rows)().drop(columns=drop, errors="ignore")
            pd.testing.assert_frame_equal(left, right)
