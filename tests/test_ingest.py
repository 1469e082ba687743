"""CSV import: what a clinic sees when a row is wrong, and what ends up in the store."""
from __future__ import annotations

import json
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import pandas as pd
import pytest

from analytics import access, ingest, store
from fixtures import make_db, new_db, patient, snapshot

pytestmark = pytest.mark.usefixtures("backend")  # every test on a DuckDB file and on PostgreSQL

ROOT = Path(__file__).resolve().parent.parent
PATIENTS_HEADER = "patient_id,site,clinician,birth_year,sex,diagnosis,comorbidities,prior_failed_trials,enrolled_on"
TREATMENTS_HEADER = "patient_id,administered_on,route,dose_mg_per_kg,phase"
ASSESSMENTS_HEADER = "patient_id,instrument,administered_on,rater," + ",".join(f"item_{i}" for i in range(1, 11)) + ",total"
TOMORROW = (date.today() + timedelta(days=1)).isoformat()


def write(path: Path, header: str, *rows: str) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def phq(pid: str, when: str, items: list, total="") -> str:
    cells = [str(v) for v in items] + [""] * (10 - len(items))
    return ",".join([pid, "PHQ-9", when, "self", *cells, str(total)])


@pytest.fixture()
def db(tmp_path) -> Path:
    return make_db(tmp_path, patients=[patient("P1", enrolled_on="2024-01-05"), patient("P2", clinician="dr_b")])


def rows(db: Path, table: str) -> pd.DataFrame:
    with store.connect(db) as con:
        return con.execute(f"SELECT * FROM {table}").df()


GOOD_TREATMENT = "P1,2024-01-10,iv,0.5,induction"
GOOD_ASSESSMENT = phq("P1", "2024-01-10", [2] * 9)


@pytest.mark.parametrize("kind,bad_row,column,reason", [
    ("treatments", "P404,2024-01-10,iv,0.5,", "patient_id", "unknown patient"),
    ("treatments", "P1,2024-01-11,pill,0.5,", "route", "unknown route 'pill'"),
    ("treatments", "P1,10/01/2024,iv,0.5,", "administered_on", "is not an ISO date"),
    ("treatments", "P1,2024-02-30,iv,0.5,", "administered_on", "not a valid calendar date"),
    ("treatments", f"P1,{TOMORROW},iv,0.5,", "administered_on", "in the future"),
    ("treatments", "P1,0024-01-10,iv,0.5,", "administered_on", "is before 1900"),
    ("treatments", "P1,2024-01-10T25:00,iv,0.5,", "administered_on", "not a valid calendar date or time"),
    ("treatments", "P1,2024-01-04,iv,0.5,", "administered_on", "before the patient's enrolment on 2024-01-05"),
    ("treatments", "P1,2024-01-10,iv,0.6,", "patient_id", "duplicate key (patient_id, administered_on) in this file: line 2"),
    ("treatments", "P1,2024-01-12,iv,9,", "dose_mg_per_kg", "at most 5"),
    ("treatments", "P1,2024-01-12,iv,0.5,loading", "phase", "unknown phase 'loading'"),
    ("assessments", phq("P1", "2024-01-11", [2, 2, 4, 2, 2, 2, 2, 2, 2]), "item_3", "PHQ-9 item 3 must be a whole number 0-3, got 4"),
    ("assessments", phq("P1", "2024-01-11", [], total=28), "total", "PHQ-9 total must be 0-27, got 28"),
    ("assessments", phq("P1", "2024-01-11", [2] * 9, total=17), "total", "total 17 disagrees with the items, which sum to 18"),
    ("assessments", "P1,GAD-7,2024-01-11,self,1,1,1,1,1,1,1,1,,,", "item_8", "GAD-7 has no item 8"),
    ("assessments", "P1,BDI-II,2024-01-11,self,,,,,,,,,,,20", "instrument", "unknown instrument 'BDI-II'"),
    ("assessments", phq("P404", "2024-01-11", [1] * 9), "patient_id", "unknown patient"),
    ("assessments", phq("P1", "2024-01-10", [1] * 9), "patient_id", "duplicate key (patient_id, instrument, administered_on)"),
    ("assessments", phq("P1", "2024-01-11", ["two"] + [1] * 8), "item_1", "item_1 'two' is not a number"),
    ("assessments", "P1,PHQ-9,2024-01-11,self,1,1", None, "expected 15 fields like the header, found 6"),
])
def test_each_bad_row_is_named_and_quarantined_while_good_rows_land(db, tmp_path, kind, bad_row, column, reason):
    header, good = (TREATMENTS_HEADER, GOOD_TREATMENT) if kind == "treatments" else (ASSESSMENTS_HEADER, GOOD_ASSESSMENT)
    path = write(tmp_path / "upload.csv", header, good, bad_row)

    report = ingest.import_files([path], db=db)

    assert report.exit_code == 1
    [reject] = report.rejects
    assert (reject.file, reject.line, reject.column) == (str(path), 3, column)
    assert reason in reject.reason
    assert len(rows(db, kind)) == 1  # the good row was stored
    quarantined = rows(db, "rejected_rows")
    assert quarantined[["file_name", "line", "reason", "raw_line"]].values.tolist() == [[str(path), 3, reject.reason, bad_row]]


@pytest.mark.parametrize("bad_row,column,reason", [
    ("P3,North,dr_a,1980,Q,TRD,,1,2024-01-01", "sex", "unknown sex 'Q'"),
    ("P3,North,dr_a,1980,F,TRD,anxiety;insomnia,1,2024-01-01", "comorbidities", "unknown comorbidity 'insomnia'"),
    ("P3,North,dr_a,1850,F,TRD,,1,2024-01-01", "birth_year", "birth_year must be a whole number 1900-"),
    ("P3,North,dr_a,1980,F,TRD,,1,2024-01-01T09:00", "enrolled_on", "must be a date without a time"),
    (f"P3,North,dr_a,1980,F,TRD,,1,{TOMORROW}", "enrolled_on", "in the future"),
    ("P4,North,dr_a,1980,F,TRD,,1,2024-01-01", "patient_id", "duplicate key (patient_id) in this file: line 2"),
    (",North,dr_a,1980,F,TRD,,1,2024-01-01", "patient_id", "patient_id is empty"),
])
def test_bad_patient_rows(tmp_path, bad_row, column, reason):
    db = make_db(tmp_path)
    path = write(tmp_path / "p.csv", PATIENTS_HEADER, "P4,South,dr_b,1970,m,MDD,,0,2024-01-01", bad_row)
    report = ingest.import_files([path], db=db)
    [reject] = report.rejects
    assert (reject.line, reject.column) == (3, column) and reason in reject.reason
    assert rows(db, "patients")["patient_id"].tolist() == ["P4"]


def test_line_numbers_count_editor_lines_across_quoted_newlines_and_blank_lines(db, tmp_path):
    path = write(tmp_path / "a.csv", ASSESSMENTS_HEADER,
                 GOOD_ASSESSMENT.replace(",self,", ',"Dr A\nsecond line",'),
                 "",
                 phq("P1", "2024-01-12", [9] + [1] * 8))
    report = ingest.import_files([path], db=db)
    assert [(r.line, r.column) for r in report.rejects] == [(5, "item_1")]
    assert rows(db, "assessments")["rater"].tolist() == ["Dr A\nsecond line"]


def test_missing_required_column_refuses_the_whole_command_and_writes_nothing(db, tmp_path):
    good = write(tmp_path / "p.csv", PATIENTS_HEADER, "P9,North,dr_a,1980,F,TRD,,1,2024-01-01")
    no_route = write(tmp_path / "t.csv", "patient_id,administered_on,dose_mg_per_kg", "P1,2024-01-10,0.5")
    before = snapshot(db)

    report = ingest.import_files([good, no_route], db=db)

    assert report.exit_code == 2
    assert any("no column route" in m and "t.csv" in m for m in report.messages())
    assert snapshot(db) == before


def test_values_are_normalised_as_documented(db, tmp_path):
    write(tmp_path / "p.csv", PATIENTS_HEADER + ",support_system",
          "P5,North,dr_a,1980,female,TRD, PTSD ;anxiety,1,2024-01-01,strong",
          "P6,North,dr_a,1980,Unknown,TRD,,1,2024-01-01,")
    write(tmp_path / "t.csv", TREATMENTS_HEADER, "P5,2024-01-02T09:30,IV,0.5,", "P5,2024-01-03,Intranasal,,maintenance")
    report = ingest.import_files([tmp_path / "t.csv", tmp_path / "p.csv"], db=db)
    assert report.exit_code == 0, report.messages()
    p = rows(db, "patients").set_index("patient_id")
    assert p.loc["P5", "sex"] == "F" and p.loc["P6", "sex"] == "U"
    assert p.loc["P5", "comorbidities"] == "anxiety;ptsd"
    assert rows(db, "patient_attributes")[["patient_id", "name", "value"]].values.tolist() == [["P5", "support_system", "strong"]]
    t = rows(db, "treatments").sort_values("administered_at")
    assert t["has_time"].tolist() == [True, False]
    assert t["route"].tolist() == ["iv", "intranasal"]
    assert t["phase"].isna().tolist() == [True, False]  # empty phase is left for the analytics to derive


def test_reimporting_the_same_file_adds_nothing(db, tmp_path):
    path = write(tmp_path / "a.csv", ASSESSMENTS_HEADER, GOOD_ASSESSMENT, phq("P1", "2024-01-11", [7] * 9))
    first = ingest.import_files([path], db=db)
    before = snapshot(db)
    second = ingest.import_files([path], db=db)
    after = snapshot(db)
    assert first.files[0].rows_inserted == 1 and second.files[0].rows_inserted == 0
    assert second.files[0].rows_unchanged == 1 and second.files[0].rows_rejected == 1
    for table in ("patients", "assessments", "rejected_rows", "record_history", "treatments"):
        assert after[table] == before[table]
    batches = rows(db, "import_batches").query("kind == 'assessments'")
    assert batches["sha256"].nunique() == 1 and batches["rows_unchanged"].tolist() == [0, 1]


def test_changed_row_updates_and_keeps_old_values_in_history(db, tmp_path):
    ingest.import_files([write(tmp_path / "t1.csv", TREATMENTS_HEADER, "P1,2024-01-10,iv,0.5,")], db=db)
    report = ingest.import_files([write(tmp_path / "t2.csv", TREATMENTS_HEADER, "P1,2024-01-10,im,0.75,rescue")], db=db)
    f = report.files[0]
    assert (f.rows_inserted, f.rows_updated, f.rows_unchanged) == (0, 1, 0)
    [t] = rows(db, "treatments").to_dict("records")
    assert (t["route"], t["dose_mg_per_kg"], t["phase"], t["batch_id"]) == ("im", 0.75, "rescue", f.batch_id)
    [h] = rows(db, "record_history").to_dict("records")
    old = json.loads(h["old_values"])
    assert h["table_name"] == "treatments" and h["batch_id"] == f.batch_id
    assert (old["route"], old["dose_mg_per_kg"], old["phase"]) == ("iv", 0.5, None)
    batch = rows(db, "import_batches").set_index("batch_id").loc[f.batch_id]
    assert (batch["file_name"], batch["rows_updated"], batch["kind"]) == (str(tmp_path / "t2.csv"), 1, "treatments")


def test_patient_attribute_change_is_an_update_with_history(db, tmp_path):
    header = PATIENTS_HEADER + ",stress_level"
    ingest.import_files([write(tmp_path / "p.csv", header, "P7,North,dr_a,1980,F,TRD,,1,2024-01-01,high")], db=db)
    report = ingest.import_files([write(tmp_path / "p.csv", header, "P7,North,dr_a,1980,F,TRD,,1,2024-01-01,low")], db=db)
    assert report.files[0].rows_updated == 1
    assert access.DataAccess(db).attributes().query("patient_id == 'P7'")["value"].tolist() == ["low"]
    [h] = rows(db, "record_history").to_dict("records")
    assert json.loads(h["old_values"])["attributes"] == {"stress_level": "high"}


def test_import_tables_uses_given_lines_and_raw_text(db):
    frame = pd.DataFrame({
        "patient_id": ["P1", "P1"], "administered_on": ["2024-01-10", "2024-01-11"], "route": ["iv", "nasal spray"],
        "_line": [7, 9], "_raw": ['{"resourceType": "Procedure", "id": "a"}', '{"resourceType": "Procedure", "id": "b"}'],
    })
    report = ingest.import_tables({"treatments": frame}, file_name="bundle.json", source="fhir", db=db)
    assert report.exit_code == 1
    assert report.rejects == [ingest.Reject("bundle.json", 9, "route", report.rejects[0].reason)]
    quarantined = rows(db, "rejected_rows")
    assert quarantined["raw_line"].tolist() == ['{"resourceType": "Procedure", "id": "b"}']
    assert rows(db, "import_batches").query("kind == 'treatments'")["source"].tolist() == ["fhir"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "analytics", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_cli_exit_codes_and_patients_first_whatever_the_order(tmp_path):
    db = new_db(tmp_path, "cli.duckdb")
    patients = write(tmp_path / "people.csv", PATIENTS_HEADER, "P1,North,dr_a,1980,F,TRD,,1,2024-01-01")
    treatments = write(tmp_path / "doses.csv", TREATMENTS_HEADER, "P1,2024-01-02,iv,0.5,")
    all_good = run_cli("import", "--db", str(db), str(treatments), str(patients))
    assert all_good.returncode == 0, all_good.stderr

    some_bad = write(tmp_path / "more.csv", TREATMENTS_HEADER, "P1,2024-01-03,iv,0.5,", "P1,2024-01-04,pill,0.5,")
    partial = run_cli("import", "--db", str(db), str(some_bad))
    assert partial.returncode == 1
    assert f"{some_bad}:3: route: unknown route 'pill'" in partial.stderr

    nothing = write(tmp_path / "worse.csv", TREATMENTS_HEADER, "P1,2024-01-05,pill,0.5,")
    assert run_cli("import", "--db", str(db), str(nothing)).returncode == 2
    refused = run_cli("import", "--db", str(db), "--json", str(write(tmp_path / "x.csv", "patient_id,route", "P1,iv")))
    assert refused.returncode == 2
    assert "no column administered_on" in json.loads(refused.stdout)["files"][0]["refused"]
    assert len(rows(db, "treatments")) == 2
