"""Visit entry: one infusion or assessment through the import's rules, corrections as versions."""
from __future__ import annotations

from datetime import datetime

import pandas as pd
import pytest

from analytics import audit, store, visits
from analytics.access import SYSTEM, DataAccess, Scope
from tests.conftest import shown

pytestmark = pytest.mark.usefixtures("backend")  # every test on a DuckDB file and on PostgreSQL

WHEN = datetime(2026, 11, 19, 10, 30)


def _patient(db, clinician_of=None):
    patients = DataAccess(db).patients()
    return patients.iloc[0] if clinician_of is None else patients[patients["clinician"] == clinician_of].iloc[0]


def _counts(db):
    with store.connect(db) as con:
        return {t: con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0]
                for t in ("treatments", "assessments", "import_batches", "rejected_rows", "record_history",
                          "treatment_details", "audit_log")}


def _madrs(value=2, **override):
    items = {n: value for n in range(1, 11)}
    items.update({int(k.split("_")[1]): v for k, v in override.items()})
    return items


def test_infusion_in_mg_with_weight_is_stored_as_mg_per_kg_with_its_notes_and_audited(writable_db):
    pid = _patient(writable_db)["patient_id"]
    result = visits.record_infusion(writable_db, SYSTEM, pid, administered_at=WHEN, route="IV", dose_mg=35, weight_kg=70,
                                    phase="maintenance", notes="BP 152/96 at 40 min; marked dissociation")
    assert result.ok and result.version == "new", result.errors
    data = DataAccess(writable_db)
    row = data.treatments([pid]).set_index("administered_at").loc[WHEN]
    assert (row["route"], row["dose_mg_per_kg"], row["phase"], bool(row["has_time"])) == ("iv", 0.5, "maintenance", True)
    details = data.treatment_details([pid]).iloc[0]
    assert (details["weight_kg"], details["dose_mg"]) == (70, 35) and "dissociation" in details["notes"]
    trail = audit.entries(writable_db)
    entry = trail[trail["action"] == "record_visit"].iloc[-1]
    assert entry["patients"] == [pid] and entry["detail"]["kind"] == "infusion" and entry["detail"]["version"] == "new"
    assert trail.iloc[-1]["action"] == "import" and trail.iloc[-1]["detail"]["files"] == ["visit entry (treatments)"]


def test_out_of_range_madrs_item_is_refused_next_to_its_field_and_nothing_is_saved(writable_db):
    pid = _patient(writable_db)["patient_id"]
    before = _counts(writable_db)
    result = visits.record_assessment(writable_db, SYSTEM, pid, "MADRS", administered_at=WHEN, items=_madrs(item_4=7))
    assert not result.ok
    assert result.errors == {"item_4": "MADRS item 4 must be a whole number 0-6, got 7"}
    assert _counts(writable_db) == before


@pytest.mark.parametrize("kwargs, field, reason", [
    (dict(administered_at="2099-01-01", route="iv", dose_mg_per_kg=0.5), "administered_on", "in the future"),
    (dict(administered_at="2026-02-30", route="iv", dose_mg_per_kg=0.5), "administered_on", "not a valid calendar date"),
    (dict(administered_at=WHEN, route="rectal", dose_mg_per_kg=0.5), "route", "unknown route"),
    (dict(administered_at=WHEN, route="iv", dose_mg_per_kg=9), "dose_mg_per_kg", "at most 5"),
    (dict(administered_at=WHEN, route="iv", dose_mg=35), "weight_kg", "give the patient's weight"),
    (dict(administered_at=WHEN, route="iv", dose_mg=35, weight_kg=7), "weight_kg", "weight must be 20-400 kg"),
    (dict(administered_at=WHEN, route="iv", dose_mg=70, weight_kg=70, dose_mg_per_kg=0.5), "dose_mg", "not the 0.5 mg/kg"),
])
def test_infusion_form_problems_name_the_field_and_save_nothing(writable_db, kwargs, field, reason):
    pid = _patient(writable_db)["patient_id"]
    before = _counts(writable_db)
    result = visits.record_infusion(writable_db, SYSTEM, pid, **kwargs)
    assert not result.ok and reason in result.errors[field]
    assert _counts(writable_db) == before


def test_a_store_check_that_fails_inside_the_transaction_leaves_nothing_not_even_a_quarantined_row(writable_db):
    patient = _patient(writable_db)
    before = _counts(writable_db)
    result = visits.record_infusion(writable_db, SYSTEM, patient["patient_id"], administered_at="2001-01-01",
                                    route="iv", dose_mg_per_kg=0.5, notes="should not survive")
    assert not result.ok and "before the patient's enrolment" in result.errors["administered_on"]
    assert _counts(writable_db) == before


def test_duplicate_is_refused_and_a_correction_keeps_the_old_version_in_the_history(writable_db):
    pid = _patient(writable_db)["patient_id"]
    assert visits.record_infusion(writable_db, SYSTEM, pid, administered_at=WHEN, route="iv", dose_mg_per_kg=0.5,
                                  notes="no side effects").ok
    again = visits.record_infusion(writable_db, SYSTEM, pid, administered_at=WHEN, route="iv", dose_mg_per_kg=0.5)
    assert not again.ok and "duplicate" in again.errors["administered_on"]
    fixed = visits.record_infusion(writable_db, SYSTEM, pid, administered_at=WHEN, route="iv", dose_mg_per_kg=0.75,
                                   notes="BP rose to 160/100", correct=True)
    assert fixed.ok and fixed.version == "corrected"
    history = visits.record_history(writable_db, SYSTEM, pid, WHEN)
    assert list(history["state"]) == ["current", "replaced"]
    assert list(history["dose_mg_per_kg"]) == [0.75, 0.5]
    assert list(history["notes"]) == ["BP rose to 160/100", "no side effects"]
    notes_only = visits.record_infusion(writable_db, SYSTEM, pid, administered_at=WHEN, route="iv", dose_mg_per_kg=0.75,
                                        notes="BP 160/100, settled by 90 min", correct=True)
    assert notes_only.version == "corrected"
    history = visits.record_history(writable_db, SYSTEM, pid, WHEN)
    assert list(history["notes"]) == ["BP 160/100, settled by 90 min", "BP rose to 160/100", "no side effects"]
    assert list(history["version"]) == [3, 2, 1]


def test_assessment_correction_is_versioned_and_correcting_nothing_is_refused(writable_db):
    pid = _patient(writable_db)["patient_id"]
    missing = visits.record_assessment(writable_db, SYSTEM, pid, "MADRS", administered_at=WHEN, items=_madrs(), correct=True)
    assert not missing.ok and "nothing to correct" in missing.errors["administered_on"]
    assert visits.record_assessment(writable_db, SYSTEM, pid, "MADRS", administered_at=WHEN, items=_madrs(2)).version == "new"
    assert visits.record_assessment(writable_db, SYSTEM, pid, "MADRS", administered_at=WHEN, items=_madrs(3),
                                    correct=True).version == "corrected"
    history = visits.record_history(writable_db, SYSTEM, pid, WHEN, "MADRS")
    assert list(history["total"]) == [30, 20] and list(history["rater"]) == ["clinician", "clinician"]
    stored = DataAccess(writable_db).assessments([pid], "MADRS")
    assert stored[stored["administered_at"] == WHEN]["total"].tolist() == [30]


def test_entry_is_limited_to_the_clinicians_caseload_and_role(writable_db):
    patients = DataAccess(writable_db).patients()
    mine, other = patients.iloc[0], patients[patients["clinician"] != patients.iloc[0]["clinician"]].iloc[0]
    clinician = Scope(user="dr_a", role="clinician", clinician=mine["clinician"])
    before = _counts(writable_db)
    refused = visits.record_infusion(writable_db, clinician, other["patient_id"], administered_at=WHEN, route="iv",
                                     dose_mg_per_kg=0.5)
    assert not refused.ok and "caseload" in refused.errors["patient_id"]
    director = Scope(user="boss", role="director", patient_level=False)
    assert "cannot record" in visits.record_assessment(writable_db, director, mine["patient_id"], "MADRS",
                                                       administered_at=WHEN, items=_madrs()).errors["form"]
    after = _counts(writable_db)
    assert {k: v for k, v in after.items() if k != "audit_log"} == {k: v for k, v in before.items() if k != "audit_log"}
    # nothing was stored, but both refusals are in the audit trail (docs/security.md)
    refusals = audit.entries(writable_db, action="record_visit")
    assert refusals[["actor", "outcome"]].values.tolist() == [["dr_a", "denied"], ["boss", "denied"]]
    assert refusals.iloc[0]["patients"] == [other["patient_id"]]
    assert visits.record_infusion(writable_db, clinician, mine["patient_id"], administered_at=WHEN, route="iv",
                                  dose_mg_per_kg=0.5).ok
    with pytest.raises(PermissionError):
        visits.record_history(writable_db, clinician, other["patient_id"], WHEN)


# --- on the patient page (AppTest) -------------------------------------------------------------

def _timeline_points(at) -> dict[str, int]:
    """Points per trace of the patient timeline chart, e.g. {"MADRS": 5, "maintenance infusion": 12}."""
    import json

    spec = json.loads(at.get("plotly_chart")[0].proto.spec)  # the timeline is the page's first chart
    return {t.get("name", ""): len(t.get("x") or []) for t in spec["data"]}


def _opened(*sections) -> dict:
    """Visit sections open (a user clicks their headers; a closed section draws no form), for open_page."""
    return {f"visit_section_{name}": True for name in sections}


def _button(at, label):
    return next(b for b in at.button if b.label == label)


def test_entering_an_infusion_and_a_madrs_on_the_patient_page_updates_the_chart(open_page, writable_db, monkeypatch):
    monkeypatch.setenv("OUTCOMES_DB", str(writable_db))  # this test writes: a private copy, not the shared demo
    pid = "P00003"
    at = open_page("patient", patient=pid, session_state=_opened("infusion", "rating_MADRS"))
    assert not at.exception
    before = _timeline_points(at)
    _counts_before = _counts(writable_db)["treatments"]
    at.date_input(key="inf_day").set_value(datetime(2026, 11, 20).date())
    at.time_input(key="inf_time").set_value(datetime(2026, 11, 20, 9, 15).time())
    at.selectbox(key="inf_phase").set_value("maintenance")
    at.number_input(key="inf_dose").set_value(0.5)
    at.text_area(key="inf_notes").set_value("BP 148/92 at 40 min, settled; mild dissociation")
    _button(at, "Review before saving").click().run()
    assert _counts(writable_db)["treatments"] == _counts_before  # the summary alone saves nothing
    _button(at, "Save infusion").click().run()
    assert not at.exception and any("Infusion" in s.value for s in at.success), [e.value for e in at.error]
    after_infusion = _timeline_points(at)
    assert after_infusion["maintenance infusion"] == before.get("maintenance infusion", 0) + 1

    at.date_input(key="madrs_day").set_value(datetime(2026, 11, 20).date())
    for n in range(1, 11):
        at.radio(key=f"madrs_item_{n}").set_value(2)
    next(b for b in at.button if b.label == "Save MADRS").click().run()
    assert not at.exception and any("MADRS" in s.value for s in at.success), [e.value for e in at.error]
    assert _timeline_points(at)["MADRS"] == before.get("MADRS", 0) + 1
    trail = audit.entries(writable_db, action="record_visit")
    assert [d["kind"] for d in trail["detail"]] == ["infusion", "assessment"]


def test_a_refused_entry_on_the_page_shows_the_reason_next_to_the_field(open_page, writable_db, monkeypatch):
    monkeypatch.setenv("OUTCOMES_DB", str(writable_db))
    at = open_page("patient", patient="P00003", session_state=_opened("infusion", "rating_MADRS"))
    before = _counts(writable_db)
    at.number_input(key="inf_dose").set_value(9.0)
    _button(at, "Review before saving").click().run()
    errors = [shown(e.value) for e in at.error]
    assert "dose (mg/kg) must be above 0 and at most 5, got 9" in errors, errors
    assert not [b for b in at.button if b.label == "Save infusion"]  # no summary to save from
    for n in range(1, 10):
        at.radio(key=f"madrs_item_{n}").set_value(1)
    next(b for b in at.button if b.label == "Save MADRS").click().run()
    assert "item 10 is not rated" in [shown(e.value) for e in at.error]
    after = _counts(writable_db)
    # each page run audits the record view; nothing else may have been written
    assert {k: v for k, v in after.items() if k != "audit_log"} == {k: v for k, v in before.items() if k != "audit_log"}
    assert audit.entries(writable_db, action="record_visit").empty


def _summary(at) -> dict[str, str]:
    """The infusion form's "what will be saved" table as {row: value}."""
    table = next(t for t in at.table)
    return {str(k): shown(v) for k, v in table.value.iloc[:, 0].items()}


def test_an_infusion_needs_a_dose_or_an_explicit_dose_not_recorded_on_the_page(open_page, writable_db, monkeypatch):
    monkeypatch.setenv("OUTCOMES_DB", str(writable_db))
    at = open_page("patient", patient="P00003", session_state=_opened("infusion"))
    before = _counts(writable_db)
    _button(at, "Review before saving").click().run()  # one click, nothing filled in
    assert visits.DOSE_MISSING in [shown(e.value) for e in at.error]
    assert not at.table  # no summary, nothing to save
    at.radio(key="inf_unit").set_value("not recorded")
    _button(at, "Review before saving").click().run()
    assert _summary(at)["Dose"] == "not recorded"
    assert {k: v for k, v in _counts(writable_db).items() if k != "audit_log"} == \
        {k: v for k, v in before.items() if k != "audit_log"}


def test_an_infusion_without_a_phase_is_saved_with_the_phase_the_course_gives_it(open_page, writable_db, monkeypatch):
    monkeypatch.setenv("OUTCOMES_DB", str(writable_db))
    pid = "P00003"
    given = DataAccess(writable_db).treatments([pid]).sort_values("administered_at")
    assert len(given) > 6  # past its induction series
    at = open_page("patient", patient=pid, session_state=_opened("infusion"))
    at.date_input(key="inf_day").set_value(datetime(2026, 11, 20).date())
    at.number_input(key="inf_dose").set_value(0.5)
    _button(at, "Review before saving").click().run()
    summary = _summary(at)
    assert summary["Phase"].startswith("maintenance (worked out from the course") or \
        summary["Phase"].startswith("rescue (worked out from the course"), summary
    assert summary["Dose"] == "0.5 mg/kg" and summary["Saved as"] == "a new infusion"
    _button(at, "Save infusion").click().run()
    assert not at.exception and any("saved" in shown(s.value) for s in at.success), [e.value for e in at.error]
    stored = DataAccess(writable_db).treatments([pid])
    new = stored[stored["administered_at"] == datetime(2026, 11, 20)]
    assert new["phase"].tolist() == [summary["Phase"].split(" ")[0]]


def _why(at, form: str):
    """The "Why" box of the void or re-date form (keyed by the record chosen)."""
    return next(t for t in at.text_input if t.key.startswith(f"{form}_reason:"))


def _pick_record(at, label_start: str):
    box = at.selectbox(key="history_pick")
    box.set_value(next(o for o in box.options if o.startswith(label_start))).run()


def test_voiding_an_infusion_on_the_page_needs_a_reason_and_a_tick_and_keeps_it_in_the_history(
        open_page, writable_db, monkeypatch):
    monkeypatch.setenv("OUTCOMES_DB", str(writable_db))
    pid = "P00003"
    last = DataAccess(writable_db).treatments([pid])["administered_at"].max()
    at = open_page("patient", patient=pid, session_state=_opened("records"))
    _pick_record(at, "infusion of")
    _button(at, "Void this record").click().run()
    assert any("Tick the box" in shown(e.value) for e in at.error)
    next(c for c in at.checkbox if c.label.startswith("Leave it out")).check()
    _button(at, "Void this record").click().run()
    assert DataAccess(writable_db).treatments([pid])["administered_at"].max() == last  # no reason: not voided
    _why(at, "void").input("entered for the wrong patient")
    _button(at, "Void this record").click().run()
    assert not at.exception and any("voided" in shown(s.value).lower() for s in at.success), [e.value for e in at.error]
    left = DataAccess(writable_db).treatments([pid])
    assert last not in set(left["administered_at"])
    voided = DataAccess(writable_db).voided_rows([pid])["treatments"]
    assert voided["void_reason"].tolist() == ["entered for the wrong patient"]
    assert "entered for the wrong patient" in at.dataframe[-1].value.to_string()  # the page lists the voided record


def test_correcting_an_infusions_date_on_the_page_moves_it(open_page, writable_db, monkeypatch):
    monkeypatch.setenv("OUTCOMES_DB", str(writable_db))
    pid = "P00003"
    before = DataAccess(writable_db).treatments([pid])
    last = before["administered_at"].max()
    at = open_page("patient", patient=pid, session_state=_opened("records"))
    _pick_record(at, "infusion of")
    right = (last - pd.Timedelta(days=1)).date()
    next(d for d in at.date_input if d.label == "Right date").set_value(right)
    _why(at, "redate").input("typed the next day's date")
    _button(at, "Move to this date").click().run()
    assert not at.exception and at.success, [e.value for e in at.error]
    after = DataAccess(writable_db).treatments([pid])
    assert len(after) == len(before)
    assert last not in set(after["administered_at"])
    assert (after["administered_at"].dt.date == right).any()
    trail = audit.entries(writable_db, action="record_visit")
    assert [d["version"] for d in trail["detail"]] == ["date corrected"]
    assert trail["detail"].iloc[0]["reason"] == "typed the next day's date"

