"""The keys of treatments and assessments: on DuckDB (no index on them since schema v9) their one writer holds
them and their references, with `write.check_keys_unique` as a second guard; PostgreSQL keeps constraints.
Every writer refuses a repeated key and a row of an unknown patient, naming the line; a large first import
stores what a row-by-row one does, all or nothing; a database of v6 keeps its rows and keys."""
from __future__ import annotations

from datetime import datetime

import duckdb
import pytest

from analytics import ingest, selfreport, store, visits
from analytics.access import SYSTEM
from analytics.ingest import write as ingest_write
from fixtures import make_db, patient, schema_file, snapshot
from test_ingest import ASSESSMENTS_HEADER, TREATMENTS_HEADER, phq, write
from test_ingest_blocks import outcome, stored

pytestmark = pytest.mark.usefixtures("backend")  # every test on a DuckDB file and on PostgreSQL, unless marked

KEY_INDEXES = {"treatments_key", "assessments_key"}  # v7's; v8 dropped those on the ids, v9 these
ID_INDEXES = {"treatments_id", "assessments_id"}


def _a_repeated_key_is_refused(backend, db, table: str, columns: str, values: str) -> None:
    """The keys' guard below the writer's own checks: PostgreSQL's constraint refuses the row; on DuckDB (no
    index on the keys since v9) the writer's check of its batch's keys (write.check_keys_unique) refuses it.
    Either way the transaction stores nothing."""
    before = snapshot(db)
    with pytest.raises(store.Conflict, match="(?i)duplicate key"):
        with store.transaction(db) as con:
            con.execute(f"INSERT INTO {table} ({columns}, batch_id) VALUES ({values}, 999)")
            ingest_write.check_keys_unique(con, table, 999)
    assert snapshot(db) == before


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
        assert not (KEY_INDEXES | ID_INDEXES) & _indexes(bulk)
    # the key is still guarded afterwards
    _a_repeated_key_is_refused(backend, bulk, "treatments", "patient_id, administered_at, route", "'P1', '2024-01-10', 'iv'")

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
    """The keys' second guard (write.check_keys_unique on DuckDB, the constraints on PostgreSQL): were the
    writer's own check to miss a repeated key, the transaction fails whole and nothing lands."""
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


def test_a_repeated_key_that_reached_the_insert_into_a_filled_table_fails_the_whole_import(backend, tmp_path, monkeypatch):
    """The same guard for a later import, row by row into a table that holds rows (the batch's keys checked)."""
    db = _two_patients(tmp_path, "filled-guard.duckdb")
    assert ingest.import_files([write(tmp_path / "t1.csv", TREATMENTS_HEADER, "P1,2024-01-10,iv,0.5,")], db=db).committed
    monkeypatch.setattr(ingest.rules, "_duplicates", lambda *a, **k: None)  # the file's own duplicate check, off
    before = snapshot(db)

    report = ingest.import_files([write(tmp_path / "t2.csv", TREATMENTS_HEADER, "P2,2024-02-01,iv,0.5,",
                                        "P2,2024-02-01,iv,0.6,")], db=db)

    assert report.error and not report.committed and "duplicate key" in report.error
    assert "P2" not in report.error
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
    if backend == "duckdb":
        assert not (KEY_INDEXES | ID_INDEXES) & _indexes(db)
    _a_repeated_key_is_refused(backend, db, "assessments", "patient_id, instrument, administered_at, total, total_method",
                               "'P1', 'PHQ-9', '2024-01-10', 4, 'given'")
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
    assert not (KEY_INDEXES | ID_INDEXES) & _indexes(db)  # v7 built them, v8 and v9 dropped them
    report = ingest.import_files([write(tmp_path / "t.csv", TREATMENTS_HEADER, "P1,2024-01-08,iv,0.5,",
                                        "P2,2024-01-10,iv,0.5,")], db=db)
    assert (report.files[0].rows_inserted, report.files[0].rows_unchanged) == (1, 1)  # the voided row keeps its key
    with store.connect(db) as con:
        ids = [i for (i,) in con.execute("SELECT treatment_id FROM treatments ORDER BY treatment_id").fetchall()]
    assert ids == [1, 2, 3]  # the sequence goes on
    _a_repeated_key_is_refused(backend, db, "assessments", "patient_id, instrument, administered_at, total, total_method",
                               "'P1', 'PHQ-9', '2024-01-08 09:30', 4, 'given'")


# --- a first large import: staged in blocks, inserted numbered from its rows, all or nothing ---

def _bulk_tables(db) -> list[str]:
    with store.connect(db) as con:
        return [n for (n,) in con.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() "
                                           "AND table_name LIKE '%\\_bulk' ESCAPE '\\'").fetchall()]


def _large_files(tmp_path):
    """Two patients' rows in files staged in blocks of 2 rows, with a repeated key, an unknown patient and an
    infusion before the enrolment among them."""
    treatments = write(tmp_path / "t.csv", TREATMENTS_HEADER,
                       "P1,2024-01-10,iv,0.5,induction",   # line 2
                       "P1,2024-01-12,im,0.6,",            # line 3
                       "P1,2024-01-10,iv,0.7,",            # line 4: key of line 2
                       "P404,2024-02-01,iv,0.5,",          # line 5: unknown patient
                       "P1,2024-01-01,iv,0.5,",            # line 6: before P1's enrolment
                       "P2,2024-02-01,iv,0.5,",            # line 7
                       "P2,2024-02-03,iv,0.5,")            # line 8
    assessments = write(tmp_path / "a.csv", ASSESSMENTS_HEADER,
                        *[phq("P1" if i % 3 else "P2", f"2024-01-{i + 1:02d}", [i % 4] * 9) for i in range(20)],
                        phq("P404", "2024-01-11", [1] * 9),  # line 22: unknown patient
                        phq("P1", "2024-01-02", [3] * 9))    # line 23: key of line 3
    return [treatments, assessments]


def _ids_by_key(db) -> dict:
    with store.connect(db) as con:
        return {"treatments": con.execute("SELECT patient_id, administered_at, treatment_id, batch_id FROM treatments "
                                          "ORDER BY 1, 2").fetchall(),
                "assessments": con.execute("SELECT patient_id, administered_at, assessment_id, batch_id FROM assessments "
                                           "ORDER BY 1, 2").fetchall(),
                "batches": con.execute("SELECT batch_id, kind, rows_total, rows_inserted, rows_rejected FROM import_batches "
                                       "ORDER BY 1").fetchall()}


@pytest.mark.duckdb_only("the numbered insert is DuckDB's (PostgreSQL keeps its constraints)")
def test_a_first_large_import_stores_what_a_row_by_row_import_stores(backend, tmp_path, monkeypatch):
    row_by_row = _two_patients(tmp_path, "rows.duckdb")
    expected = ingest.import_files(_large_files(tmp_path), db=row_by_row)
    numbered = []
    real = ingest_write._insert_numbered
    monkeypatch.setattr(ingest_write, "_insert_numbered", lambda con, v, *a: numbered.append(v.kind) or real(con, v, *a))
    monkeypatch.setattr(ingest_write, "BULK_INSERT_ROWS", 1)
    large = _two_patients(tmp_path, "large.duckdb")

    report = ingest.import_files(_large_files(tmp_path), db=large, block_rows=2)

    assert numbered == ["treatments", "assessments"]  # both files took the numbered insert
    assert outcome(report) == outcome(expected)
    assert [r.line for r in report.rejects] == [4, 5, 6, 22, 23]
    for table in ("treatments", "assessments", "rejected_rows"):
        assert stored(large, table) == stored(row_by_row, table)
    ids = _ids_by_key(large)
    assert [b[1:] for b in ids["batches"]] == [b[1:] for b in _ids_by_key(row_by_row)["batches"]]
    treatments_batch, assessments_batch = [b[0] for b in ids["batches"]][-2:]
    assert {r[3] for r in ids["treatments"]} == {treatments_batch} and {r[3] for r in ids["assessments"]} == {assessments_batch}
    assert len({r[2] for r in ids["assessments"]}) == 20
    assert not (KEY_INDEXES | ID_INDEXES) & _indexes(large)
    _a_repeated_key_is_refused(backend, large, "assessments", "patient_id, instrument, administered_at, total, total_method",
                               "'P1', 'PHQ-9', '2024-01-02', 4, 'given'")   # the keys are guarded afterwards
    # the sequences go on after the numbered ids and the batches
    monkeypatch.setattr(ingest_write, "BULK_INSERT_ROWS", 10**9)
    assert visits.record_infusion(large, SYSTEM, "P2", administered_at="2024-03-01", route="iv", dose_mg_per_kg=0.5).ok
    again = ingest.import_files([write(tmp_path / "t2.csv", TREATMENTS_HEADER, "P2,2024-03-05,iv,0.5,")], db=large)
    after = _ids_by_key(large)
    assert len({r[2] for r in after["treatments"]}) == len(after["treatments"]) == 6
    numbered = {r[2] for r in ids["treatments"]}
    assert all(r[2] > max(numbered) for r in after["treatments"] if r[2] not in numbered)  # never reused, increasing
    assert again.batch_ids[0] > assessments_batch


def test_a_large_import_that_fails_after_its_inserts_stores_nothing(backend, tmp_path, monkeypatch):
    db = _two_patients(tmp_path, "failed.duckdb")
    monkeypatch.setattr(ingest_write, "BULK_INSERT_ROWS", 1)
    before = snapshot(db)
    real = ingest_write.finish_batch

    def failing(con, batch_id, *a):  # the last file's batch: after both files' rows were inserted
        real(con, batch_id, *a)
        if con.execute("SELECT kind FROM import_batches WHERE batch_id = ?", [batch_id]).fetchall() == [("assessments",)]:
            raise duckdb.IOException("could not write: the disk went away")
    monkeypatch.setattr(ingest_write, "finish_batch", failing)

    report = ingest.import_files(_large_files(tmp_path), db=db, block_rows=2)

    assert not report.committed and report.exit_code == 2 and "the disk went away" in report.error
    assert snapshot(db) == before
    monkeypatch.setattr(ingest_write, "finish_batch", real)
    assert ingest.import_files(_large_files(tmp_path), db=db, block_rows=2).committed  # and the next one works


@pytest.mark.duckdb_only("the numbered insert is DuckDB's; on PostgreSQL the server rolls a killed client back")
def test_a_large_import_killed_after_its_inserts_leaves_nothing(backend, tmp_path):
    """kill -9 while the import's transaction is open, its rows inserted: nothing of it is stored and the
    next write works."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from analytics.ingest import jobs

    db = _two_patients(tmp_path, "killed.duckdb")
    before = snapshot(db)
    marker = tmp_path / "holding"
    code = ("import sys; from analytics import ingest; from analytics.ingest import write; write.BULK_INSERT_ROWS = 1; "
            "ingest.import_files(sys.argv[1:3], db=sys.argv[3], block_rows=2)")
    held = subprocess.Popen([sys.executable, "-c", code, *map(str, _large_files(tmp_path)), str(db)],
                            cwd=Path(__file__).resolve().parents[1], env={**os.environ, jobs.HOLD_BEFORE_COMMIT_ENV: str(marker)})
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists()
    finally:
        held.send_signal(signal.SIGKILL)
        held.wait()
    assert snapshot(db) == before

    assert visits.record_infusion(db, SYSTEM, "P2", administered_at="2024-03-01", route="iv", dose_mg_per_kg=0.5).ok
    with store.connect(db) as con:
        assert con.execute("SELECT count(*) FROM treatments").fetchall() == [(1,)]


@pytest.mark.duckdb_only("only DuckDB files of an earlier version can hold such a table")
def test_the_unread_tables_an_earlier_versions_killed_import_left_are_dropped_by_the_next_write(backend, tmp_path):
    """Versions before 2026-12-02 committed a first large import's rows into `<table>_bulk` ahead of its
    transaction; one killed in between left them there, never read. The next write of any kind drops them."""
    db = _two_patients(tmp_path, "left.duckdb")
    with store.connect(db, write=True) as con:
        for table in ("treatments", "assessments"):
            con.execute(f"CREATE TABLE {store.bulk_name(table)} AS SELECT * FROM {table} WHERE false")
        con.execute(f"INSERT INTO {store.bulk_name('treatments')} (treatment_id, patient_id, administered_at, route) "
                    "VALUES (999, 'P1', '2024-02-02', 'iv')")
    assert sorted(_bulk_tables(db)) == ["assessments_bulk", "treatments_bulk"]

    assert visits.record_infusion(db, SYSTEM, "P2", administered_at="2024-03-01", route="iv", dose_mg_per_kg=0.5).ok

    assert _bulk_tables(db) == []
    assert [r[:2] for r in _ids_by_key(db)["treatments"]] == [("P2", datetime(2024, 3, 1))]


@pytest.mark.parametrize("sizes", [("large", "large"), ("small", "large"), ("large", "small")])
def test_a_first_import_of_two_files_of_one_kind_stores_both_whatever_their_order_and_size(
        backend, tmp_path, monkeypatch, sizes):
    """Two staged treatments files in one command, large or small in either order: the second sees the first's
    rows (an earlier version's review found the second failing the whole import)."""
    def files():
        first = write(tmp_path / "t1.csv", TREATMENTS_HEADER, "P1,2024-01-10,iv,0.5,", "P1,2024-01-12,iv,0.5,",
                      *(["P2,2024-02-01,iv,0.5,"] if sizes[0] == "large" else []))
        second = write(tmp_path / "t2.csv", TREATMENTS_HEADER, "P2,2024-02-03,iv,0.5,", "P2,2024-02-05,iv,0.5,",
                       *(["P1,2024-01-20,iv,0.5,", "P1,2024-01-10,iv,0.9,"] if sizes[1] == "large" else []))
        return [first, second]

    row_by_row = _two_patients(tmp_path, "rows.duckdb")
    expected = ingest.import_files(files(), db=row_by_row)
    monkeypatch.setattr(ingest_write, "BULK_INSERT_ROWS", 1)
    db = _two_patients(tmp_path, "two.duckdb")

    report = ingest.import_files(files(), db=db, block_rows=2)  # a file of 3 or more rows is staged

    assert report.committed and report.error is None and report.exit_code == expected.exit_code
    assert outcome(report) == outcome(expected)
    assert stored(db, "treatments") == stored(row_by_row, "treatments")
    assert len({r[2] for r in _ids_by_key(db)["treatments"]}) == len(stored(db, "treatments"))
