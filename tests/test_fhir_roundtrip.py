"""FHIR import into the store, and export -> import round trips."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from fhir.resources.R4B import get_fhir_model_class

from analytics import access, store
from analytics.fhir.export import export_fhir
from analytics.ingest import import_fhir_files

FIXTURES = Path(__file__).parent / "fixtures" / "fhir"


def rows(db, table):
    with store.connect(db) as con:
        return con.execute(f"SELECT * FROM {table}").df()


def frames(db) -> dict[str, pd.DataFrame]:
    """The store as the dashboard sees it, without surrogate ids."""
    data = access.DataAccess(db)
    return {
        "patients": data.patients(),
        "attributes": data.attributes(),
        "treatments": data.treatments().drop(columns="treatment_id"),
        "assessments": data.assessments().drop(columns="assessment_id"),
    }


def assert_same_store(a, b):
    fa, fb = frames(a), frames(b)
    for name in fa:
        pd.testing.assert_frame_equal(fa[name].reset_index(drop=True), fb[name].reset_index(drop=True), check_dtype=False, obj=name)


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory):
    from analytics.ingest import import_tables
    from analytics.simulate import simulate_clinic

    clinic = simulate_clinic(25, seed=11, days=120)
    db = tmp_path_factory.mktemp("fhir") / "source.duckdb"
    import_tables(clinic.tables, file_name="demo", source="demo", db=db)
    # Edge cases the demo does not make: ids that are not FHIR ids, empty
    # optional fields, prorated / given / total-only scores, midnight times.
    blank = {c: "" for c in ["item_%d" % i for i in range(1, 11)]}
    edge = {
        "patients": pd.DataFrame([
            {"patient_id": "edge_1 (ä)", "site": "annex", "clinician": "dr_okafor", "birth_year": "", "sex": "",
             "diagnosis": "", "comorbidities": "ptsd;ocd", "prior_failed_trials": "", "enrolled_on": "2025-01-02"},
            {"patient_id": "edge-2", "site": "", "clinician": "", "birth_year": "1950", "sex": "U",
             "diagnosis": "MDD", "comorbidities": "", "prior_failed_trials": "0", "enrolled_on": ""},
        ]),
        "treatments": pd.DataFrame([
            {"patient_id": "edge_1 (ä)", "administered_on": "2025-01-03T00:00", "route": "im", "dose_mg_per_kg": "", "phase": ""},
            {"patient_id": "edge-2", "administered_on": "2025-01-04", "route": "oral", "dose_mg_per_kg": "1.25", "phase": "rescue"},
        ]),
        "assessments": pd.DataFrame([
            {"patient_id": "edge_1 (ä)", "instrument": "PHQ-9", "administered_on": "2025-01-03T00:00", "rater": "",
             **blank, **{f"item_{i}": "2" for i in range(1, 9)}, "total": ""},  # item 9 missing: prorated
            {"patient_id": "edge_1 (ä)", "instrument": "MADRS", "administered_on": "2025-01-03T09:41:07", "rater": "dr_okafor",
             **blank, **{f"item_{i}": "3" for i in range(1, 10)}, "total": "30"},  # item 10 missing, total given
            {"patient_id": "edge-2", "instrument": "GAD-7", "administered_on": "2025-01-04", "rater": "self",
             **blank, "total": "11"},  # total only
        ]),
    }
    report = import_tables(edge, file_name="edge", source="test", db=db)
    assert report.exit_code == 0, report.messages()
    return db


def test_export_round_trips_to_identical_rows(demo_db, tmp_path):
    written = export_fhir(tmp_path / "fhir", db=demo_db)
    assert sorted(written) == ["MedicationAdministration", "Observation", "Patient"]
    before = frames(demo_db)
    assert len(before["assessments"]) > 50 and len(before["treatments"]) > 50  # a real test, not an empty one

    # every line is a valid R4 resource of the file's type
    for resource_type, path in written.items():
        model = get_fhir_model_class(resource_type)
        lines = path.read_text().splitlines()
        assert lines
        for line in lines[:50]:
            model.model_validate(json.loads(line))

    target = tmp_path / "copy.duckdb"
    store.initialise(target)
    import_fhir_files(list(written.values()), db=target)
    assert_same_store(demo_db, target)

    # importing the same export again adds and changes nothing
    again = import_fhir_files(list(written.values()), db=target)
    assert again.exit_code == 0
    assert sum(f.rows_inserted + f.rows_updated for f in again.files) == 0
    assert sum(f.rows_unchanged for f in again.files) == sum(len(f) for f in before.values() if "instrument" in f or "route" in f or "site" in f)
    assert_same_store(demo_db, target)


def test_export_respects_the_clinician_scope(demo_db, tmp_path):
    clinician = frames(demo_db)["patients"]["clinician"].iloc[0]
    scope = access.Scope(user="c", role="clinician", clinician=clinician)
    written = export_fhir(tmp_path / "mine", db=demo_db, scope=scope)
    exported = [json.loads(line) for line in written["Patient"].read_text().splitlines()]
    assert exported and all(p["generalPractitioner"][0]["display"] == clinician for p in exported)
    mine = {p["id"] for p in exported}
    for line in written["Observation"].read_text().splitlines():
        assert json.loads(line)["subject"]["reference"].split("/")[1] in mine
    with pytest.raises(access.AccessDenied):
        export_fhir(tmp_path / "no", db=demo_db, scope=access.Scope(user="d", role="director", patient_level=False))


def test_clinic_bundle_imports_into_the_same_analytics_as_csv(tmp_path):
    db = tmp_path / "fhir.duckdb"
    import_fhir_files([FIXTURES / "clinic_collection.json"], db=db)
    data = access.DataAccess(db)
    patients = data.patients().set_index("patient_id")
    assert list(patients.index) == ["kc-0001", "kc-0002"]
    assert patients.loc["kc-0001", "site"] == "North clinic" and patients.loc["kc-0001", "birth_year"] == 1987
    assessments = data.assessments()
    phq = assessments[(assessments.patient_id == "kc-0001") & (assessments.instrument == "PHQ-9")]
    assert phq["total"].tolist() == [19, 6]
    assert phq["has_time"].all()
    madrs = assessments[assessments.instrument == "MADRS"]
    assert madrs["total"].tolist() == [31] and madrs["total_method"].tolist() == ["items"]
    treatments = data.treatments()
    assert treatments["route"].tolist() == ["iv", "iv", "iv", "intranasal"]
    assert treatments["dose_mg_per_kg"].round(3).tolist() == [0.5, 0.5, 0.5, 0.7]
    assert rows(db, "rejected_rows").empty

    # the same bundle again adds nothing
    import_fhir_files([FIXTURES / "clinic_collection.json"], db=db)
    assert len(data.assessments()) == len(assessments) and len(data.treatments()) == len(treatments)
    assert rows(db, "rejected_rows").empty


def test_bad_resources_are_quarantined_with_place_reason_and_json(tmp_path):
    db = tmp_path / "mixed.duckdb"
    report = import_fhir_files([FIXTURES / "mixed.json"], db=db)
    assert report.exit_code == 1  # some rejected, the good ones stored
    rejected = rows(db, "rejected_rows").sort_values("line")
    assert set(rejected["file_name"]) == {str(FIXTURES / "mixed.json")}
    by_line = dict(zip(rejected["line"], rejected["reason"]))
    assert sorted(by_line) == [3, 4, 5, 6, 7, 8, 9]
    assert "total must be 0-27" in by_line[5]  # the shared scale rule, applied to FHIR rows too
    assert "Observation/m-bp" in by_line[3]
    for raw in rejected["raw_line"]:
        assert json.loads(raw)["resourceType"]
    data = access.DataAccess(db)
    assert data.patients()["patient_id"].tolist() == ["m-1"]
    assert data.assessments()["total"].tolist() == [12]
    assert len(data.treatments()) == 1

    # re-import: no new rows, no duplicate quarantine entries
    import_fhir_files([FIXTURES / "mixed.json"], db=db)
    assert len(rows(db, "rejected_rows")) == len(rejected)
    assert len(data.assessments()) == 1


def test_malformed_file_is_refused_and_the_whole_command_changes_nothing(tmp_path):
    from analytics.ingest import import_files

    db = tmp_path / "bad.duckdb"
    store.initialise(db)
    report = import_files([FIXTURES / "clinic_collection.json", FIXTURES / "malformed.json"], db=db)
    assert report.exit_code == 2
    assert any("malformed JSON" in m and "line 5" in m for m in report.messages())
    assert rows(db, "patients").empty and rows(db, "import_batches").empty


def test_bulk_export_files_import_in_any_order_and_observations_may_refer_to_stored_patients(tmp_path):
    db = tmp_path / "bulk.duckdb"
    import_fhir_files([FIXTURES / "bulk" / "Observation.ndjson", FIXTURES / "bulk" / "Patient.ndjson"], db=db)
    data = access.DataAccess(db)
    assert sorted(data.patients()["patient_id"]) == ["b-1", "b-2"]
    assert len(data.assessments()) == 3
    # a later file with observations only, about a patient stored earlier
    later = tmp_path / "later.ndjson"
    later.write_text(json.dumps({"resourceType": "Observation", "id": "late", "status": "final",
                                 "code": {"coding": [{"system": "http://loinc.org", "code": "44261-6"}]},
                                 "subject": {"reference": "Patient/b-1"}, "effectiveDateTime": "2025-02-03",
                                 "valueInteger": 9}) + "\n")
    import_fhir_files([later], db=db)
    assert data.assessments(["b-1"], "PHQ-9")["total"].tolist() == [21, 9]


def test_import_files_recognises_fhir_by_content(tmp_path):
    from analytics.ingest import import_files

    db = tmp_path / "sniff.duckdb"
    renamed = tmp_path / "export.txt.json"
    shutil.copy(FIXTURES / "transaction.json", renamed)
    import_files([renamed], db=db)
    data = access.DataAccess(db)
    assert data.patients()["patient_id"].tolist() == ["T-100"]
    assert len(data.assessments()) == 1 and len(data.treatments()) == 1


def test_csv_patients_and_fhir_observations_in_one_command_and_fhir_does_not_blank_csv_fields(tmp_path):
    from analytics.ingest import import_files

    db = tmp_path / "mix.duckdb"
    patients_csv = tmp_path / "patients.csv"
    patients_csv.write_text(
        "patient_id,site,clinician,birth_year,sex,diagnosis,comorbidities,prior_failed_trials,enrolled_on\n"
        "kc-0001,North clinic,Dr Okafor,1987,F,treatment-resistant depression,anxiety,3,2025-03-01\n"
    )
    observation = tmp_path / "obs.ndjson"
    observation.write_text(json.dumps({
        "resourceType": "Observation", "id": "x1", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "44261-6"}]},
        "subject": {"reference": "Patient/kc-0001"}, "effectiveDateTime": "2025-03-02", "valueInteger": 17}) + "\n")
    # the FHIR file first on the command line: patients still go in first
    report = import_files([observation, patients_csv], db=db)
    assert report.exit_code == 0, report.messages()
    data = access.DataAccess(db)
    assert data.assessments()["total"].tolist() == [17]

    # now the EHR's Patient resource for the same person: no diagnosis extension
    import_fhir_files([FIXTURES / "clinic_collection.json"], db=db)
    patient = data.patients().set_index("patient_id").loc["kc-0001"]
    assert patient["diagnosis"] == "treatment-resistant depression"
    assert patient["comorbidities"] == "anxiety" and patient["prior_failed_trials"] == 3
    # the bundle states no enrolment date: the stored one is kept, not replaced by its earliest data
    assert str(patient["enrolled_on"])[:10] == "2025-03-01"


def test_a_fhir_patient_never_clears_stored_values(tmp_path):
    from analytics.ingest import import_files

    db = tmp_path / "keep.duckdb"
    patients_csv = tmp_path / "patients.csv"
    patients_csv.write_text(
        "patient_id,site,clinician,birth_year,sex,diagnosis,comorbidities,prior_failed_trials,enrolled_on\n"
        "p1,North clinic,Dr Okafor,1987,F,MDD,ptsd,2,2025-01-01\n"
    )
    assert import_files([patients_csv], db=db).exit_code == 0
    ext = "urn:ketamine-outcomes:extension:diagnosis"
    bundle = tmp_path / "b.json"
    bundle.write_text(json.dumps({"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": {"resourceType": "Patient", "id": "p1", "gender": "female"}},
        {"resource": {"resourceType": "Patient", "id": "p2", "extension": [{"url": ext, "valueString": "bipolar II"}],
                      "managingOrganization": {"display": "South"}}},
    ]}))
    report = import_fhir_files([bundle], db=db)
    assert report.exit_code == 0, report.messages()
    patients = access.DataAccess(db).patients().set_index("patient_id")
    kept = patients.loc["p1"]
    assert (kept["site"], kept["clinician"], kept["diagnosis"], kept["birth_year"]) == ("North clinic", "Dr Okafor", "MDD", 1987)
    assert str(kept["enrolled_on"])[:10] == "2025-01-01"
    assert patients.loc["p2", "diagnosis"] == "bipolar II" and patients.loc["p2", "site"] == "South"
