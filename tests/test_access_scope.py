"""Roles and scope enforced in the data layer, attacked the way a curious user would."""
from __future__ import annotations

import pytest

from analytics import access, audit, auth, store
from analytics.access import AccessDenied, DataAccess, Scope

pytestmark = pytest.mark.usefixtures("backend")  # every test on a DuckDB file and on PostgreSQL

PASSWORD = "correct horse battery"
INJECTIONS = [
    "' OR '1'='1",
    "x'); DROP TABLE patients; --",
    "%",
    "_",
    "\\",
    "1; SELECT * FROM users",
    "' UNION SELECT password_hash FROM users --",
]


@pytest.fixture()
def clinic(writable_db):
    """Accounts on a private demo copy: two clinicians, a director, an admin."""
    for name, role in [("dr_okafor", "clinician"), ("dr_haddad", "clinician"), ("director", "director"), ("admin", "admin")]:
        auth.create_user(writable_db, name, role, PASSWORD, actor="test")
    with store.connect(writable_db) as con:
        rows = con.execute("SELECT clinician, min(patient_id), count(*) FROM patients GROUP BY 1").fetchall()
    first = {c: pid for c, pid, _ in rows}
    counts = {c: n for c, _, n in rows}
    return writable_db, first, counts


def data_for(db, user) -> DataAccess:
    session = auth.authenticate(db, user, PASSWORD)
    return DataAccess(db, access.scope_for(session, db))


def test_clinician_sees_only_their_own_patients_everywhere(clinic):
    db, first, counts = clinic
    mine = data_for(db, "dr_okafor")
    assert set(mine.patients()["clinician"]) == {"dr_okafor"}
    assert len(mine.patients()) == counts["dr_okafor"]
    own_ids = set(mine.patients()["patient_id"])
    assert set(mine.treatments()["patient_id"]) <= own_ids
    assert set(mine.assessments()["patient_id"]) <= own_ids
    assert set(mine.attributes()["patient_id"]) <= own_ids
    # asking for someone else's patient by id returns nothing rather than their rows
    assert mine.assessments([first["dr_haddad"]]).empty
    assert mine.treatments([first["dr_haddad"]]).empty


def test_clinician_opening_another_clinicians_patient_is_refused_and_audited(clinic):
    db, first, _ = clinic
    mine = data_for(db, "dr_okafor")
    theirs = first["dr_haddad"]
    with pytest.raises(AccessDenied, match="not in your caseload"):
        mine.patient_record(theirs, page="patient")  # e.g. from ?patient=ID in the URL
    last = audit.entries(db).iloc[-1]
    assert (last["actor"], last["action"], last["outcome"], last["page"]) == ("dr_okafor", "view_patient", "denied", "patient")
    assert last["patients"] == [theirs]
    record = mine.patient_record(first["dr_okafor"], page="patient")
    assert record["patient"]["patient_id"].tolist() == [first["dr_okafor"]]
    assert not record["assessments"].empty
    last = audit.entries(db).iloc[-1]
    assert (last["action"], last["outcome"], last["patients"]) == ("view_patient", "ok", [first["dr_okafor"]])


def test_a_record_view_that_cannot_be_audited_hands_out_nothing_and_records_nothing(clinic, monkeypatch):
    db, first, _ = clinic
    mine = data_for(db, "dr_okafor")
    before = len(audit.entries(db))

    def audit_store_full(*args, **kwargs):
        raise audit.AuditError("the audit trail could not be written")
    monkeypatch.setattr(audit, "_append_many", audit_store_full)  # every entry is written through it
    with pytest.raises(audit.AuditError):
        mine.patient_record(first["dr_okafor"], page="patient")
    monkeypatch.undo()
    assert len(audit.entries(db)) == before
    mine.patient_record(first["dr_okafor"], page="patient")
    mine.patient_record(first["dr_okafor"], page="patient")
    views = audit.entries(db).iloc[before:]
    assert views["action"].tolist() == ["view_patient", "view_patient"] and audit.verify(db).ok


def test_search_box_never_reveals_another_caseload(clinic):
    db, first, _ = clinic
    mine = data_for(db, "dr_okafor")
    theirs = first["dr_haddad"]
    assert mine.search_patient_ids(theirs, page="patient") == []
    assert audit.entries(db).iloc[-1][["action", "outcome"]].tolist() == ["search_patients", "denied"]
    found = mine.search_patient_ids("", limit=1000)
    assert set(found) == set(mine.patients()["patient_id"])


@pytest.mark.parametrize("text", INJECTIONS)
def test_injection_strings_in_search_and_record_do_nothing(clinic, text):
    db, _, _ = clinic
    mine = data_for(db, "dr_okafor")
    own = set(mine.patients()["patient_id"])
    assert set(mine.search_patient_ids(text, limit=1000)) <= own
    with pytest.raises(AccessDenied):
        mine.patient_record(text)
    with store.connect(db) as con:
        assert con.execute("SELECT count(*) FROM users").fetchall()[0][0] == 4
        assert con.execute("SELECT count(*) FROM patients").fetchall()[0][0] > len(own)


def test_director_gets_de_identified_cohort_and_no_drill_down_without_grant(clinic):
    db, first, counts = clinic
    with store.transaction(db) as con:  # an imported attribute that identifies people
        pid = first["dr_okafor"]
        con.execute("INSERT INTO patient_attributes VALUES (?, 'mrn', 'MRN-0042'), (?, 'full_name', 'Ann Example')", [pid, pid])
    director = data_for(db, "director")
    assert len(director.patients()) == sum(counts.values())  # cohort views over everybody
    names = set(director.attributes()["name"])
    assert not names & {"mrn", "full_name"}
    assert "Ann Example" not in director.attributes()["value"].tolist()
    assert director.scope.suppression_threshold == 11
    with pytest.raises(AccessDenied):
        director.patient_record(pid)
    with pytest.raises(AccessDenied, match="without a grant"):
        director.assessments([pid])
    assert director.search_patient_ids(pid) == []
    # a clinician, who may identify their own patients, still sees the attribute
    assert "full_name" in set(data_for(db, "dr_okafor").attributes()["name"])


def test_granted_patient_opens_for_director_only_that_one(clinic):
    db, first, _ = clinic
    pid = first["dr_okafor"]
    auth.grant_patient(db, "director", pid, actor="admin", reason="case review")
    director = data_for(db, "director")
    assert director.patient_record(pid)["patient"]["patient_id"].tolist() == [pid]
    assert director.search_patient_ids(pid) == [pid]
    with pytest.raises(AccessDenied):
        director.patient_record(first["dr_haddad"])
    auth.revoke_patient(db, "director", pid, actor="admin")
    with pytest.raises(AccessDenied):
        data_for(db, "director").patient_record(pid)


def test_admin_has_no_clinical_drill_down(clinic):
    db, first, _ = clinic
    admin = data_for(db, "admin")
    assert not admin.scope.identifiable and not admin.scope.patient_level
    with pytest.raises(AccessDenied):
        admin.patient_record(first["dr_okafor"])
    assert not admin.import_history().empty


def test_unknown_role_sees_nothing(clinic):
    db, _, _ = clinic
    stranger = DataAccess(db, Scope(user="x", role="guest", patient_level=True))
    assert stranger.patients().empty and stranger.assessments().empty


def test_scopes_of_different_users_never_share_a_cache_key(clinic):
    db, first, _ = clinic
    a = data_for(db, "dr_okafor").scope
    b = data_for(db, "dr_haddad").scope
    auth.grant_patient(db, "dr_okafor", first["dr_moreau"], actor="admin")
    a_granted = data_for(db, "dr_okafor").scope
    assert len({a.cache_key, b.cache_key, a_granted.cache_key}) == 3


def test_streamlit_cache_keyed_on_data_access_keeps_users_apart(clinic):
    import streamlit as st  # a requirement: never skipped
    db, _, _ = clinic

    @st.cache_data
    def cached_patient_ids(data: DataAccess) -> list[str]:
        return data.patients()["patient_id"].tolist()

    cached_patient_ids.clear()
    okafor = cached_patient_ids(data_for(db, "dr_okafor"))
    haddad = cached_patient_ids(data_for(db, "dr_haddad"))
    assert okafor and haddad and not set(okafor) & set(haddad)


def test_data_version_moves_with_imports_not_with_audit_entries(clinic):
    db, first, _ = clinic
    data = DataAccess(db)
    before = data.data_version()
    data_for(db, "dr_okafor").patient_record(first["dr_okafor"])  # writes audit entries
    assert data.data_version() == before
    from analytics.ingest import import_tables
    import pandas as pd

    report = import_tables({"patients": pd.DataFrame({"patient_id": ["NEW1"], "site": ["northgate"],
                                                      "clinician": ["dr_okafor"], "enrolled_on": ["2026-01-05"]})},
                           file_name="new.csv", source="csv", db=db)
    assert report.written
    assert data.data_version() != before


def test_csv_exports_hold_only_the_caseload_and_no_live_formulas(clinic, tmp_path):
    import pandas as pd

    from analytics.screens import patient
    from analytics.export import export_csv

    db, first, _ = clinic
    mine_id = first["dr_okafor"]
    with store.transaction(db) as con:  # hostile text that arrived through an import
        con.execute("INSERT INTO patient_attributes VALUES (?, 'note', '=HYPERLINK(\"http://evil\",\"x\")')", [mine_id])
        con.execute("UPDATE assessments SET rater = '@SUM(1+1)*cmd' WHERE patient_id = ?", [mine_id])
    mine = data_for(db, "dr_okafor")
    written = export_csv(tmp_path / "out", db=db, scope=mine.scope, page="data")
    patients = pd.read_csv(written["patients"], dtype=str, keep_default_na=False)
    assert set(patients["patient_id"]) == set(mine.patients()["patient_id"])
    assert patients.set_index("patient_id").loc[mine_id, "note"].startswith("'=")
    assessments = pd.read_csv(written["assessments"], dtype=str, keep_default_na=False)
    assert set(assessments["patient_id"]) <= set(mine.patients()["patient_id"])
    assert "rejected" not in written  # quarantined raw lines cannot be scoped: admins only
    text = patient.patient_csv(mine.patient_record(mine_id)).decode()
    assert "'@SUM(1+1)*cmd" in text and ",@SUM" not in text
    assert audit.entries(db, action="export").iloc[-1]["actor"] == "dr_okafor"
