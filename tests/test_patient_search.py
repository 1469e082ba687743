"""The patient page's search in memory (`DataAccess.search_patient_ids(among=patient_ids())`, kept per data
version by `screens.patient.patient_search`) finds what the search in SQL finds, for every scope, and audits
a refused exact id the same way."""
from __future__ import annotations

import shutil

import pytest

from analytics import audit, cli, store
from analytics.access import SYSTEM, DataAccess, PatientIds, Scope
from analytics.screens import patient
from analytics.screens.workspace import Workspace, WorkspaceCache

TEXTS = ["", "p0", "00", "p00003", "zzz", "%", "_", "' OR '1'='1"]


@pytest.fixture()
def clinic(demo_db, tmp_path):
    db = tmp_path / "search.duckdb"
    shutil.copy(demo_db, db)
    with store.connect(db) as con:
        rows = con.execute("SELECT clinician, min(patient_id) FROM patients GROUP BY 1 ORDER BY 1").fetchall()
    return db, dict(rows)


def _scopes(first: dict) -> list[Scope]:
    clinicians = sorted(first)
    other = first[clinicians[1]]
    return [SYSTEM,
            Scope(user="dr_a", role="clinician", clinician=clinicians[0]),
            Scope(user="dr_b", role="clinician", clinician=clinicians[0], granted=frozenset({other})),
            Scope(user="boss2", role="director", patient_level=False, min_cell=11, granted=frozenset({other}))]


def test_the_search_in_memory_finds_and_audits_what_the_search_in_sql_does(clinic):
    db, first = clinic
    texts = TEXTS + list(first.values())[:2] + [list(first.values())[1].lower()]
    for scope in _scopes(first):
        data = DataAccess(db, scope)
        ids = data.patient_ids()
        results = {}
        for among in (None, ids):
            before = len(audit.entries(db))
            results[among is None] = [data.search_patient_ids(text, limit=limit, page="patient", among=among)
                                      for text in texts for limit in ((3, 1000) if text in ("", "p0") else (20,))]
            results[among is None].append(audit.entries(db).iloc[before:][["action", "outcome", "patients"]]
                                          .values.tolist())
        assert results[False] == results[True], scope.user
    refused = audit.entries(db)
    assert ((refused["action"] == "search_patients") & (refused["outcome"] == "denied")).any()


def test_patient_ids_answer_case_insensitive_substrings_in_order():
    ids = PatientIds(["A-10", "a-11", "B-100", "b-2", "Émile-1"])
    assert ids.containing("a-1", 10) == ["A-10", "a-11"]
    assert ids.containing("10", 10) == ["A-10", "B-100"]
    assert ids.containing("", 2) == ["A-10", "a-11"]
    assert ids.containing("émile", 10) == ["Émile-1"]
    assert ids.containing("-1", 2) == ["A-10", "a-11"]
    assert not ids.searchable("0\nb")  # a line break is searched in SQL


def test_the_page_search_reads_the_ids_again_after_new_data(clinic, tmp_path):
    db, first = clinic
    cache = WorkspaceCache()
    ws = cache.workspace(db, SYSTEM)
    assert patient.patient_search(ws, "NEW-PATIENT-1") == []
    csv = tmp_path / "new.csv"
    csv.write_text("patient_id,site,clinician,enrolled_on\nNEW-PATIENT-1,north,dr_x,2026-01-05\n")
    assert cli.main(["import", "--db", str(db), "--no-model", str(csv)]) == 0
    # the dashboard's next page run: this version's tables...
    assert patient.patient_search(cache.workspace(db, SYSTEM), "new-patient") == ["NEW-PATIENT-1"]
    # ...or the previous version's, served while they are updated
    stale = Workspace(DataAccess(db, SYSTEM), ws.tables, updating=True)
    assert patient.patient_search(stale, "new-patient") == ["NEW-PATIENT-1"]
