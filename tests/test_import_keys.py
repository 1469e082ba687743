"""Schema v7: on DuckDB the keys of treatments and assessments are unique indexes (built after a large
insert) and their references are checked by their one writer; every writer still refuses a repeated key
and a row of an unknown patient, naming the line, and a database of v6 keeps its rows and keys."""
from __future__ import annotations

from datetime import datetime

import pytest

from analytics import ingest, selfreport, store, visits
from analytics.access import SYSTEM
from analytics.ingest import write as ingest_write
from fixtures import make_db, patient, schema_file, snapshot
from test_ingest import ASSESSMENTS_HEADER, TREATMENTS_HEADER, phq, write
from test_ingest_blocks import outcome, stored

pytestmark = pytest.mark.usefixtures("backend")  # every test on a DuckDB file and on PostgreSQL, unless marked

KEY_INDEXES = {"treatments_key", "treatments_id", "assessments_key", "assessments_id"}


def _indexes(db) -> set[str]:
    with store.connect(db) as con:
        return {r[0] for r in con.execute("SELECT index_name FROM duckdb_indexes() WHERE database_name = current_database()")
                .fetchall()}


def _files(tmp_path):
    treatments = write(tmp_path / "t.csv", TREATMENTS_HEADER,
                       "P1,2024-01-10,iv,0.5,induction",   # line 2
                       "P1,2024-01-12,im,0.6,",            # line 3
                       "P1,2024-01-10,iv,0.7,",            # line 4: key of line 2
                       "P404,2024-02-01,iv,0.5,",          # line 5: unknown patient
                       "P2,2024-02-01,iv,0.5,")            # line 6
    assessments = write(tmp_path / "a.csv", ASSESSMENTS_HEADER,
                        phq("P1", "2024-01-10", [1] * 9),    # line 2
                        phq("P404", "2024-01-11", [1] * 9),  # line 3: unknown patient
                        phq("P2", "2024-01-11", [2] * 9),    # line 4
                        phq("P1", "2024-01-10", [3] * 9))    # line 5: key of line 2
    return [treatments, assessments]


def _two_patients(tmp_path, name):
    return make_db(tmp_path, patients=[patient("P1", enrolled_on="2024-01-05"), patient("P2")], name=name)


def test_a_bulk_import_refuses_repeated_keys_and_unknown_patients_with_their_lines_like_a_small_one(
        backend, tmp_path, monkeypatch):
    row_by_row = _two_patients(tmp_path, "rows.duckdb")
    expected = ingest.import_files(_files(tmp_path), db=row_by_row)
    monkeypatch.setattr(ingest_write, "BULK_INSERT_ROWS", 1)  # every insert takes the bulk path
    bulk = _two_patients(tmp_path, "bulk.duckdb")

    report = ingest.import_files(_files(tmp_path), db=bulk)

    assert outcome(report) == outcome(expected)
    assert [(r.line, r.column, r.reason.split(" (")[0].split(":")[0]) for r in report.rejects] == [
        (4, "patient_id", "duplicate key"), (5, "patient_id", "unknown patient"),
        (3, "patient_id", "unknown patient"), (5, "patient_id", "duplicate key")]
    for table in ("treatments", "assessments"):
        assert stored(bulk, table) == stored(row_by_row, table)
    if backend == "duckdb":
        assert KEY_INDEXES <= _indexes(bulk)
    with pytest.raises(store.Conflict):  # the key is still the store's own guarantee afterwards
        with store.transaction(bulk) as con:
            con.execute("INSERT INTO treatments (patient_id, administered_at, route) VALUES ('P1', '2024-01-10', 'iv')")

    before = snapshot(bulk)
    again = ingest.import_files(_files(tmp_path), db=bulk)  # idempotent: nothing new, nothing quarantined twice
    assert [(f.rows_inserted, f.rows_updated, f.rows_unchanged) for f in again.files] == [(0, 0, 3), (0, 0, 2)]
    after = snapshot(bulk)
    for table in ("treatments", "assessments", "rejected_rows", "record_history"):
        assert after[table] == before[table]


def test_a_bulk_insert_into_a_filled_table_keeps_its_rows_corrections_and_ids(backend, tmp_path, monkeypatch):
    db = _two_patients(tmp_path, "filled.duckdb")
    ingest.import_files([write(tmp_path / "t1.csv", TREATMENTS_HEADER, "P1,2024-01-10,iv,0.5,induction")], db=db)
    with store.connect(db) as con:
        [(first_id,)] = con.execute("SELECT treatment_id FROM treatments").fetchall()
    monkeypatch.setattr(ingest_write, "BULK_INSERT_ROWS", 1)

    report = ingest.import_files([write(tmp_path / "t2.csv", TREATMENTS_HEADER, "P1,2024-01-10,iv,0.8,induction",
                                       "P1,2024-01-12,iv,0.5,", "P2,2024-02-01,iv,0.5,")], db=db)

    assert (report.files[0].rows_inserted, report.files[0].rows_updated) == (2, 1)
    with store.connect(db) as con:
        rows = con.execute("SELECT treatment_id, patient_id, dose_mg_per_kg FROM treatments ORDER BY treatment_id").fetchall()
        history = con.execute("SELECT record_key FROM record_history WHERE table_name = 'treatments'").fetchall()
    assert rows[0] == (first_id, "P1", 0.8) and [r[1:] for r in rows[1:]] == [("P1", 0.5), ("P2", 0.5)]
    assert len({r[0] for r in rows}) == 3 and history == [("P1|2024-01-10T00:00:00",)]
    monkeypatch.setattr(ingest_write, "BULK_INSERT_ROWS", 10**9)  # row by row again: the sequence goes on after the bulk ids
    assert visits.record_infusion(db, SYSTEM, "P2", administered_at="2024-02-03", route="iv", dose_mg_per_kg=0.5).ok
    with store.connect(db) as con:
        ids = [i for (i,) in con.execute("SELECT treatment_id FROM treatments ORDER BY administered_at, patient_id").fetchall()]
    assert len(set(ids)) == 4 and ids[-1] == max(ids)


def test_a_repeated_key_that_reached_the_insert_fails_the_whole_bulk_import(backend, tmp_path, monkeypatch):
    """The indexes built after the insert are a second guard: were the writer's own check to miss a
    repeated key, the transaction fails whole and nothing lands."""
    db = _two_patients(tmp_path, "guard.duckdb")
    monkeypatch.setattr(ingest_write, "BULK_INSERT_ROWS", 1)
    monkeypatch.setattr(ingest.rules, "_duplicates", lambda *a, **k: None)  # the file's own duplicate check, off
    before = snapshot(db)

    report = ingest.import_files([write(tmp_path / "t.csv", TREATMENTS_HEADER, "P1,2024-01-10,iv,0.5,",
                                        "P1,2024-01-10,iv,0.5,")], db=db)

    assert report.error and not report.committed
    # The store's own refusal (on PostgreSQL it was "current transaction is aborted, commands ignored until end of
    # transaction block": the clean-up's DROP of a registered table after the failed INSERT replaced it).
    assert "duplicate key" in report.error and "transaction is aborted" not in report.error
    assert snapshot(db) == before


def test_visit_entry_refuses_a_duplicate_and_an_unknown_patient_and_saves_nothing(backend, tmp_path):
    db = make_db(tmp_path, patients=[patient("P1", enrolled_on="2024-01-05")])
    when = datetime(2026, 11, 19, 10, 30)
    assert visits.record_infusion(db, SYSTEM, "P1", administered_at=when, route="iv", dose_mg_per_kg=0.5).ok
    before = snapshot(db)

    again = visits.record_infusion(db, SYSTEM, "P1", administered_at=when, route="iv", dose_mg_per_kg=0.5)
    orphan = visits.record_infusion(db, SYSTEM, "P-NOT-STORED", administered_at=when, route="iv", dose_mg_per_kg=0.5)
    orphan_score = visits.record_assessment(db, SYSTEM, "P-NOT-STORED", "MADRS", administered_at=when,
                                            items={n: 2 for n in range(1, 11)})

    assert not again.ok and "duplicate" in again.errors["administered_on"]
    assert not orphan.ok and not orphan_score.ok
    after = snapshot(db)
    assert (after["treatments"], after["assessments"]) == (before["treatments"], before["assessments"])


def test_a_self_report_for_a_patient_not_in_the_store_is_refused_and_saves_nothing(backend, tmp_path):
    db = make_db(tmp_path, patients=[patient("P1")])
    link = selfreport.create_link(db, SYSTEM, "P1", "GAD-7")
    with store.transaction(db) as con:  # the link's patient is not (or no longer) in the store
        con.execute("UPDATE self_report_links SET patient_id = 'P-NOT-STORED' WHERE link_id = ?", [link.link_id])
    token = link.url.split("token=")[1].split("&")[0]

    with pytest.raises(selfreport.LinkRefused):
        selfreport.submit(db, token, {"GAD-7": {n: 1 for n in range(1, 8)}})

    with store.connect(db) as con:
        assert con.execute("SELECT count(*) FROM assessments").fetchall() == [(0,)]


def test_a_new_store_has_the_current_schema_and_refuses_a_repeated_key_on_both_backends(backend, tmp_path):
    db = make_db(tmp_path, patients=[patient("P1")])
    with store.connect(db, write=True) as con:
        versions = [v for (v,) in con.execute("SELECT version FROM schema_version ORDER BY 1").fetchall()]
    assert versions == list(range(1, store.SCHEMA_VERSION + 1))
    with store.transaction(db) as con:
        con.execute("INSERT INTO assessments (patient_id, instrument, administered_at, total, total_method) "
                    "VALUES ('P1', 'PHQ-9', '2024-01-10', 3, 'given')")
    with pytest.raises(store.Conflict):
        with store.transaction(db) as con:
            con.execute("INSERT INTO assessments (patient_id, instrument, administered_at, total, total_method) "
                        "VALUES ('P1', 'PHQ-9', '2024-01-10', 4, 'given')")
    if backend == "postgres":  # PostgreSQL keeps its foreign keys (v7 changes the DuckDB schema only)
        with pytest.raises(store.DatabaseError, match="foreign key"):
            with store.transaction(db) as con:
                con.execute("INSERT INTO treatments (patient_id, administered_at, route) VALUES ('P404', '2024-01-10', 'iv')")


def _schema_v6_file(path):
    """A database as schema version 6 left it (keys as constraints), written without the product."""
    con = schema_file(path, 6)
    con.execute("INSERT INTO instruments VALUES ('PHQ-9', 'Patient Health Questionnaire-9', 'self', 9, 3, 27)")
    con.execute("INSERT INTO patients (patient_id, clinician) VALUES ('P1', 'dr_a'), ('P2', 'dr_b')")
    con.execute("INSERT INTO treatments (patient_id, administered_at, route, dose_mg_per_kg, batch_id, voided_at, void_reason) "
                "VALUES ('P1', '2024-01-08', 'iv', 0.5, 3, '2024-01-09', 'entered twice'), ('P2', '2024-01-09', 'im', 0.6, 3, NULL, NULL)")
    con.execute("INSERT INTO assessments (patient_id, instrument, administered_at, has_time, rater, item_1, item_9, total, "
                "total_method, batch_id) VALUES ('P1', 'PHQ-9', '2024-01-08 09:30', true, 'self', 3, 1, 17, 'given', 4)")
    con.close()
    return path


@pytest.mark.duckdb_only("a file written by schema v6; a PostgreSQL database keeps its constraints")
def test_a_v6_database_is_migrated_keeping_its_rows_ids_and_keys(backend, tmp_path):
    db = _schema_v6_file(tmp_path / "v6.duckdb")
    with store.connect(db) as con:
        before = {t: con.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in ("treatments", "assessments")}

    with store.connect(db, write=True) as con:
        assert store.current_version(con) == store.SCHEMA_VERSION
        after = {t: con.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in ("treatments", "assessments")}
        columns = con.execute("SELECT column_name FROM duckdb_columns() WHERE database_name = current_database() "
                              "AND table_name = 'treatments' ORDER BY column_index").fetchall()
    assert after == before
    assert [c for (c,) in columns][-3:] == list(store.VOID_COLUMNS)
    assert KEY_INDEXES <= _indexes(db)
    report = ingest.import_files([write(tmp_path / "t.csv", TREATMENTS_HEADER, "P1,2024-01-08,iv,0.5,",
                                        "P2,2024-01-10,iv,0.5,")], db=db)
    assert (report.files[0].rows_inserted, report.files[0].rows_unchanged) == (1, 1)  # the voided row keeps its key
    with store.connect(db) as con:
        ids = [i for (i,) in con.execute("SELECT treatment_id FROM treatments ORDER BY treatment_id").fetchall()]
    assert ids == [1, 2, 3]  # the sequence goes on
    with pytest.raises(store.Conflict):
        with store.transaction(db) as con:
            con.execute("INSERT INTO assessments (patient_id, instrument, administered_at, total, total_method) "
                        "VALUES ('P1', 'PHQ-9', '2024-01-08 09:30', 4, 'given')")
