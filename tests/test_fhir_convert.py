"""FHIR resources -> the CSV row tables (no database needed)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from analytics.fhir import convert_files, looks_like_fhir
from analytics.fhir.parse import read_text

FIXTURES = Path(__file__).parent / "fixtures" / "fhir"
LOINC = "http://loinc.org"


def one(files):
    parts = convert_files(files)
    return {Path(p.file_name).name: p for p in parts}


def by_key(frame, *columns):
    return {tuple(row[c] for c in columns): row for row in frame.to_dict("records")}


def bundle(*resources, kind="collection"):
    return json.dumps({"resourceType": "Bundle", "type": kind, "entry": [{"resource": r} for r in resources]})


def obs(code, value=None, subject="Patient/p1", when="2025-01-02", system=LOINC, **extra):
    resource = {"resourceType": "Observation", "id": extra.pop("id", f"o-{code}"), "status": "final",
                "code": {"coding": [{"system": system, "code": code}]}, "effectiveDateTime": when, **extra}
    if subject:
        resource["subject"] = {"reference": subject}
    if value is not None:
        resource["valueInteger"] = value
    return resource


def test_collection_bundle_gives_patients_assessments_and_treatments_without_identifying_fields():
    part = one([FIXTURES / "clinic_collection.json"])["clinic_collection.json"]
    assert part.rejects.empty, part.rejects.to_dict("records")
    patients = by_key(part.tables["patients"], "patient_id")
    amy = patients[("kc-0001",)]
    assert (amy["birth_year"], amy["sex"], amy["site"], amy["clinician"]) == ("1987", "F", "North clinic", "Dr Okafor")
    # reference ids stand in when there is no display
    ken = patients[("kc-0002",)]
    assert (ken["birth_year"], ken["sex"], ken["site"], ken["clinician"]) == ("1975", "M", "south-clinic", "dr-lee")
    stored = json.dumps(part.tables["patients"].drop(columns="_raw").to_dict("records"))
    for identifying in ("Shaw", "Amy", "Meadow", "555-0100", "MRN-77812", "1987-02-20"):
        assert identifying not in stored
    # enrolment = earliest data when the Patient does not say
    assert amy["enrolled_on"] == "2025-03-03" and ken["enrolled_on"] == "2025-04-01"

    rows = by_key(part.tables["assessments"], "patient_id", "instrument", "administered_on")
    # US Core style: a panel whose items are separate hasMember Observations, merged into one row
    base = rows[("kc-0001", "PHQ-9", "2025-03-03 09:15:00")]
    assert [base[f"item_{i}"] for i in range(1, 11)] == ["3", "3", "2", "3", "2", "2", "2", "1", "1", "1"]
    assert base["total"] == "19"
    gad = rows[("kc-0001", "GAD-7", "2025-03-03 09:20:00")]
    assert [gad[f"item_{i}"] for i in range(1, 8)] == ["2", "2", "3", "2", "1", "2", "1"] and gad["total"] == "13"
    madrs = rows[("kc-0001", "MADRS", "2025-03-03 09:30:00")]
    assert madrs["item_10"] == "1" and madrs["total"] == "31" and madrs["rater"] == "Dr Okafor"
    # SDC-style QR with "/44250-9" linkIds and ordinalValue extensions
    week2 = rows[("kc-0001", "PHQ-9", "2025-03-17 09:05:00")]
    assert week2["total"] == "6" and week2["item_1"] == "1" and week2["item_10"] == ""
    assert rows[("kc-0002", "PHQ-9", "2025-04-01")]["total"] == "18"
    assert rows[("kc-0002", "GAD-7", "2025-04-01")]["total"] == "9"
    assert len(rows) == 6

    treatments = by_key(part.tables["treatments"], "patient_id", "administered_on")
    assert treatments[("kc-0001", "2025-03-05 10:00:00")]["route"] == "iv"
    assert treatments[("kc-0001", "2025-03-05 10:00:00")]["dose_mg_per_kg"] == "0.5"
    assert treatments[("kc-0001", "2025-03-05 10:00:00")]["phase"] == "induction"
    # esketamine 56 mg for an 80 kg body weight Observation
    nasal = treatments[("kc-0002", "2025-04-01 14:00:00")]
    assert (nasal["route"], nasal["dose_mg_per_kg"]) == ("intranasal", "0.7")


def test_transaction_bundle_resolves_urn_uuid_references_and_identifier_ids():
    part = one([FIXTURES / "transaction.json"])["transaction.json"]
    assert part.rejects.empty
    assert part.tables["patients"]["patient_id"].tolist() == ["T-100"]
    assert part.tables["assessments"]["patient_id"].tolist() == ["T-100"]
    assert part.tables["assessments"]["total"].tolist() == [""]  # left to the scale rules to total
    treatment = part.tables["treatments"].iloc[0]
    assert (treatment["patient_id"], treatment["route"], treatment["administered_on"]) == ("T-100", "iv", "2025-02-10 11:00:00")


def test_bulk_ndjson_files_are_read_together_and_patients_come_first():
    parts = convert_files([FIXTURES / "bulk" / "Observation.ndjson", FIXTURES / "bulk" / "Patient.ndjson"])
    assert [Path(p.file_name).name for p in parts] == ["Patient.ndjson", "Observation.ndjson"]
    observations = parts[1]
    rows = by_key(observations.tables["assessments"], "patient_id", "instrument")
    assert rows[("b-1", "PHQ-9")]["total"] == "21"
    assert rows[("b-2", "PHQ-9")]["total"] == "14"  # PHQ-A total read as PHQ-9
    assert rows[("b-1", "GAD-7")]["item_1"] == "3"
    assert observations.tables["assessments"]["_line"].tolist() == [1, 2, 3]


def test_mixed_bundle_keeps_good_entries_and_rejects_each_bad_one_with_its_place_and_reason():
    part = one([FIXTURES / "mixed.json"])["mixed.json"]
    rejects = {row["line"]: row for row in part.rejects.to_dict("records")}
    assert sorted(rejects) == [3, 4, 6, 7, 8, 9]
    assert "unknown code http://loinc.org|85354-9" in rejects[3]["reason"] and rejects[3]["column"] == "Observation.code"
    assert "no subject" in rejects[4]["reason"] and rejects[4]["column"] == "Observation.subject"
    assert "Encounter resources are not imported" in rejects[6]["reason"]
    assert rejects[7]["column"] == "Observation.effectiveDateTime" and "not valid FHIR" in rejects[7]["reason"]
    assert "duplicate resource" in rejects[8]["reason"] and "line 2" in rejects[8]["reason"]
    assert "not ketamine" in rejects[9]["reason"]
    for row in rejects.values():
        assert json.loads(row["raw"])["resourceType"]  # the resource JSON is kept
    # the out-of-range total (31) is passed on: the shared range rule rejects it downstream
    assert sorted(part.tables["assessments"]["total"]) == ["12", "31"]
    assert part.tables["treatments"]["route"].tolist() == ["iv"]


def test_malformed_json_document_refuses_the_file_naming_the_line():
    part = one([FIXTURES / "malformed.json"])["malformed.json"]
    assert "line 5" in part.refused and "malformed JSON" in part.refused
    assert all(t.empty for t in part.tables.values())


@pytest.mark.parametrize("document,expected", [
    ({"resourceType": "Bundle", "type": "history", "entry": []}, "Bundle type 'history' is not imported"),
    ({"resourceType": "Bundle", "type": "collection", "entry": {"resource": {}}}, "Bundle.entry must be a list"),
    ({"resourceType": "Bundle", "type": "collection", "total": "many"}, "the Bundle itself is not valid"),
])
def test_unusable_bundles_refuse_the_file(document, expected):
    part = one([("b.json", json.dumps(document).encode())])["b.json"]
    assert part.refused and expected in part.refused


def test_ndjson_bad_line_is_rejected_and_the_others_kept():
    text = "\n".join([
        json.dumps({"resourceType": "Patient", "id": "p1"}),
        '{"resourceType": "Observation", "id": ',
        json.dumps(obs("44261-6", 7)),
    ])
    located, rejects = read_text(text, "x.ndjson")
    assert [r.line for r in located] == [1, 3]
    assert [r.line for r in rejects] == [2] and "malformed JSON" in rejects[0].reason


def test_conflicting_answers_for_the_same_assessment_reject_the_later_resource():
    text = bundle(
        {"resourceType": "Patient", "id": "p1"},
        obs("44261-6", 12, id="a"),
        obs("44261-6", 14, id="b"),
    )
    part = one([("c.json", text.encode())])["c.json"]
    assert part.tables["assessments"]["total"].tolist() == ["12"]
    assert part.rejects["line"].tolist() == [3]
    assert "14 here but 12 at line 2" in part.rejects.iloc[0]["reason"]


def test_questionnaire_response_answers_by_integer_coding_or_unknown_code():
    answers = [{"linkId": "44250-9", "answer": [{"valueInteger": 2}]},
               {"linkId": "44255-8", "answer": [{"valueCoding": {"system": LOINC, "code": "LA6571-9"}}]}]
    good = {"resourceType": "QuestionnaireResponse", "id": "q1", "status": "completed",
            "subject": {"reference": "Patient/p1"}, "authored": "2025-01-05T08:00:00+02:00", "item": answers}
    bad = dict(good, id="q2", authored="2025-01-06", item=[{"linkId": "44250-9", "answer": [{"valueCoding": {"system": LOINC, "code": "LA9999-9"}}]}])
    none = dict(good, id="q3", item=[{"linkId": "foo", "answer": [{"valueInteger": 1}]}])
    part = one([("q.json", bundle({"resourceType": "Patient", "id": "p1"}, good, bad, none).encode())])["q.json"]
    row = part.tables["assessments"].iloc[0]
    assert (row["item_1"], row["item_2"], row["administered_on"]) == ("2", "3", "2025-01-05 08:00:00")
    reasons = dict(zip(part.rejects["line"], part.rejects["reason"]))
    assert "LA9999-9 has no known score" in reasons[3]
    assert "no item linkId" in reasons[4]


def test_subject_outside_the_import_is_taken_as_an_existing_patient_id():
    part = one([("o.json", bundle(obs("70274-6", 4, subject="Patient/already-in-db")).encode())])["o.json"]
    assert part.rejects.empty
    assert part.tables["assessments"]["patient_id"].tolist() == ["already-in-db"]


def test_chosen_identifier_system_names_the_patient():
    patient = {"resourceType": "Patient", "id": "server-id-1",
               "identifier": [{"system": "http://clinic.example/pseudonym", "value": "PSN-9"}]}
    text = bundle(patient, obs("44261-6", 3, subject="Patient/server-id-1"))
    parts = convert_files([("i.json", text.encode())], "http://clinic.example/pseudonym")
    assert parts[0].tables["patients"]["patient_id"].tolist() == ["PSN-9"]
    assert parts[0].tables["assessments"]["patient_id"].tolist() == ["PSN-9"]


def test_dose_in_mg_without_weight_is_left_empty_with_a_note():
    admin = {"resourceType": "MedicationAdministration", "id": "m1", "status": "completed",
             "medicationCodeableConcept": {"text": "Ketamine"}, "subject": {"reference": "Patient/p1"},
             "effectiveDateTime": "2025-01-02", "dosage": {"route": {"text": "intramuscular"}, "dose": {"value": 40, "unit": "mg"}}}
    part = one([("d.json", bundle(admin).encode())])["d.json"]
    row = part.tables["treatments"].iloc[0]
    assert row["route"] == "im"
    # no file row has a dose, so the column is left out (nothing stored is blanked)
    assert "dose_mg_per_kg" not in part.tables["treatments"].columns
    assert part.notes and part.notes[0][0] == "treatments" and "no body weight" in part.notes[0][1]


@pytest.mark.parametrize("text,expected", [
    ('{"resourceType": "Bundle"}', True),
    ('\ufeff  \n{"resourceType":"Patient","id":"x"}\n', True),
    ("patient_id,site\n", False),
    ('{"name": "not fhir"}', False),
])
def test_content_sniff(text, expected):
    assert looks_like_fhir(text) is expected


def test_medication_references_contained_and_bundled_and_esketamine_defaults_to_nasal():
    spravato = {"resourceType": "Medication", "id": "spravato",
                "code": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "2119365", "display": "esketamine"}]}}
    aspirin = {"resourceType": "Medication", "id": "asa", "code": {"text": "aspirin"}}

    def admin(aid, ref, **extra):
        return {"resourceType": "MedicationAdministration", "id": aid, "status": "completed",
                "medicationReference": {"reference": ref}, "subject": {"reference": "Patient/p1"},
                "effectiveDateTime": f"2025-01-0{aid[-1]}", **extra}
    contained = admin("a3", "#k", contained=[{"resourceType": "Medication", "id": "k", "code": {"text": "Ketamine 10 mg/mL"}}],
                      dosage={"route": {"coding": [{"system": "http://snomed.info/sct", "code": "78421000"}]}})
    text = bundle(admin("a1", "Medication/spravato"), spravato, admin("a2", "Medication/asa"), aspirin, contained,
                  admin("a4", "Medication/missing"))
    part = one([("m.json", text.encode())])["m.json"]
    rows = by_key(part.tables["treatments"], "administered_on")
    assert rows[("2025-01-01",)]["route"] == "intranasal"
    assert rows[("2025-01-03",)]["route"] == "im"
    reasons = dict(zip(part.rejects["line"], part.rejects["reason"]))
    assert sorted(reasons) == [3, 6]
    assert "'aspirin' is not ketamine" in reasons[3]
    assert "Medication/missing (not in this import)" in reasons[6]


def test_weight_in_pounds_converts_a_mg_dose_using_the_nearest_weight():
    def weight(wid, day, value, unit):
        return {"resourceType": "Observation", "id": wid, "status": "final",
                "code": {"coding": [{"system": LOINC, "code": "29463-7"}]}, "subject": {"reference": "Patient/p1"},
                "effectiveDateTime": day, "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}}
    admin = {"resourceType": "MedicationAdministration", "id": "m1", "status": "completed",
             "medicationCodeableConcept": {"text": "ketamine"}, "subject": {"reference": "Patient/p1"},
             "effectiveDateTime": "2025-03-01", "dosage": {"route": {"text": "IV"}, "dose": {"value": 50, "unit": "mg", "code": "mg"}}}
    text = bundle(admin, weight("w1", "2025-01-01", 70, "kg"), weight("w2", "2025-02-25", 220.462, "[lb_av]"))
    part = one([("w.json", text.encode())])["w.json"]
    assert part.tables["treatments"]["dose_mg_per_kg"].tolist() == ["0.5"]  # 50 mg / 100 kg, the later weight
    assert part.rejects.empty


def test_empty_panel_without_members_and_entered_in_error_are_rejected():
    panel = obs("44249-1", id="panel", hasMember=[{"reference": "Observation/elsewhere"}])
    wrong = obs("44261-6", 9, id="err")
    wrong["status"] = "entered-in-error"
    part = one([("p.json", bundle(panel, wrong).encode())])["p.json"]
    assert part.tables["assessments"].empty
    reasons = dict(zip(part.rejects["line"], part.rejects["reason"]))
    assert "panel has no answers" in reasons[1]
    assert "entered-in-error" in reasons[2]


def test_questionnaire_response_with_phq9_and_gad7_items_gives_two_assessments():
    items = [{"linkId": c, "answer": [{"valueInteger": 1}]} for c in
             ("44250-9", "44255-8", "44259-0", "44254-1", "44251-7", "44258-2", "44252-5", "44253-3", "44260-8")]
    items += [{"linkId": c, "answer": [{"valueInteger": 2}]} for c in
              ("69725-0", "68509-9", "69733-4", "69734-2", "69735-9", "69689-8", "69736-7")]
    qr = {"resourceType": "QuestionnaireResponse", "id": "combo", "status": "completed",
          "subject": {"reference": "Patient/p1"}, "authored": "2025-01-05", "item": [{"linkId": "page1", "item": items}]}
    part = one([("c.json", bundle(qr).encode())])["c.json"]
    rows = by_key(part.tables["assessments"], "instrument")
    assert rows[("PHQ-9",)]["item_9"] == "1" and rows[("GAD-7",)]["item_7"] == "2"
    assert rows[("GAD-7",)]["item_8"] == ""


def test_absolute_subject_references_and_answers_given_only_as_text():
    item = obs("44250-9", subject="https://ehr.example.org/fhir/Patient/p9/_history/3", id="i1",
               valueCodeableConcept={"text": "More than half the days"})
    odd = obs("44255-8", subject="Patient/p9", id="i2", valueCodeableConcept={"text": "sometimes"})
    part = one([("t.json", bundle(item, odd).encode())])["t.json"]
    row = part.tables["assessments"].iloc[0]
    assert (row["patient_id"], row["item_1"]) == ("p9", "2")
    assert part.rejects["line"].tolist() == [2] and "'sometimes' has no known score" in part.rejects.iloc[0]["reason"]


def test_rejected_patients_keep_no_names_addresses_or_full_birth_dates():
    patient = {"resourceType": "Patient", "id": "p1", "birthDate": "1987-02-20", "gender": "female",
               "name": [{"family": "Shaw", "given": ["Amy"]}], "address": [{"city": "Mounds"}],
               "telecom": [{"system": "phone", "value": "555-0100"}],
               "identifier": [{"system": "http://hospital.example.org/mrn", "value": "MRN-77812"}],
               "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Amy Shaw</div>"},
               "maritalStatus": {"text": 42}}  # invalid: rejected with its (redacted) JSON
    part = one([("r.json", bundle(patient).encode())])["r.json"]
    raw = part.rejects.iloc[0]["raw"]
    for identifying in ("Shaw", "Amy", "Mounds", "555-0100", "MRN-77812", "02-20"):
        assert identifying not in raw
    assert json.loads(raw)["birthDate"] == "1987"


def test_us_core_questionnaire_response_and_its_derived_observations_make_one_assessment():
    """Modelled on the US Core PHQ-9 example: the same answers sent as a QR and as derived Observations."""
    codes = ["44250-9", "44255-8", "44259-0", "44254-1", "44251-7", "44258-2", "44252-5", "44253-3", "44260-8"]
    answers = ["LA6570-1", "LA6570-1", "LA6570-1", "LA6570-1", "LA6569-3", "LA6569-3", "LA6570-1", "LA6568-5", "LA6568-5"]
    qr = {"resourceType": "QuestionnaireResponse", "id": "phq-9-example", "status": "completed",
          "questionnaire": "http://hl7.org/fhir/us/core/Questionnaire/phq-9-example",
          "subject": {"reference": "Patient/example"}, "authored": "2022-11-29T20:50:32.718Z",
          "author": {"reference": "Practitioner/practitioner-1"},
          "item": [{"linkId": f"/{c}", "answer": [{"valueCoding": {"system": LOINC, "code": a}}]} for c, a in zip(codes, answers)]
          + [{"linkId": "/44261-6", "answer": [{"valueDecimal": 12}]},
             {"linkId": "/69722-7", "answer": [{"valueCoding": {"system": LOINC, "code": "LA6573-5"}}]}]}
    when = "2022-11-29T20:50:32.718000+00:00"
    members = [obs(c, id=f"item-{c}", subject="Patient/example", when=when,
                   valueCodeableConcept={"coding": [{"system": LOINC, "code": a}]}) for c, a in zip(codes, answers)]
    total = obs("44261-6", id="total", subject="Patient/example", when=when, valueString="12")
    panel = obs("44249-1", id="panel", subject="Patient/example", when=when,
                hasMember=[{"reference": f"Observation/{m['id']}"} for m in members + [total]])
    part = one([("us.json", bundle(qr, panel, *members, total).encode())])["us.json"]
    assert part.rejects.empty, part.rejects.to_dict("records")
    rows = part.tables["assessments"]
    assert len(rows) == 1
    row = rows.iloc[0]
    assert [row[f"item_{i}"] for i in range(1, 11)] == ["2", "2", "2", "2", "1", "1", "2", "0", "0", "1"]
    assert (row["total"], row["administered_on"], row["rater"]) == ("12", "2022-11-29 20:50:32", "practitioner-1")


def test_preview_reports_per_table_without_writing(tmp_path):
    from analytics.ingest import preview

    rows = preview([FIXTURES / "mixed.json", FIXTURES / "malformed.json"], db=tmp_path / "none.duckdb").to_dict("records")
    by_kind = {(Path(r["file"]).name, r["kind"]): r for r in rows}
    assessments = by_kind[("mixed.json", "assessments")]
    assert (assessments["accepted"], assessments["rejected"]) == (1, 5)
    assert 5 in assessments["rejects"]["line"].tolist()  # the shared range rule, seen before importing
    assert "malformed JSON" in by_kind[("malformed.json", None)]["refused"]
    assert not (tmp_path / "none.duckdb").exists()
