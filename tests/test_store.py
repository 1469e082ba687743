"""store.connect: old files are migrated on the first write, the file is free between uses,
and nothing one connection leaves behind reaches the next."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from analytics import scales, store
from fixtures import new_db, schema_file

ROOT = Path(__file__).resolve().parent.parent


def _schema_v1_file(path: Path) -> Path:
    """A database as schema version 1 left it, written without the product."""
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TIMESTAMP NOT NULL DEFAULT current_timestamp)")
    for statement in store.MIGRATIONS[0]():
        con.execute(statement)
    con.execute("INSERT INTO schema_version (version) VALUES (1)")
    con.execute("INSERT INTO instruments VALUES ('PHQ-9', 'old name', 'self', 9, 3, 27)")
    con.execute("INSERT INTO patients (patient_id, clinician) VALUES ('P1', 'dr_a')")
    con.close()
    return path


def _tables(con) -> set[str]:
    return {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = current_database()").fetchall()}


@pytest.mark.duckdb_only("a file written by schema v1; a PostgreSQL database is always created current")
def test_an_old_database_is_migrated_on_the_first_write_open_and_keeps_its_rows(backend, tmp_path):
    db = _schema_v1_file(tmp_path / "v1.duckdb")
    with store.connect(db) as con:  # reading does not change the file
        assert store.current_version(con) == 1 and "audit_log" not in _tables(con)
    with store.connect(db, write=True) as con:
        assert store.current_version(con) == store.SCHEMA_VERSION
        assert {"audit_log", "users", "safety_flags"} <= _tables(con)
        assert con.execute("SELECT patient_id, clinician FROM patients").fetchall() == [("P1", "dr_a")]
        names = dict(con.execute("SELECT code, name FROM instruments").fetchall())
    assert names == {s.code: s.name for s in scales.SCALES.values()}  # the registry replaced 'old name'
    with store.connect(db, write=True) as con:  # current now: opening again changes nothing
        versions = con.execute("SELECT version FROM schema_version ORDER BY 1").fetchall()
    assert [v[0] for v in versions] == list(range(1, store.SCHEMA_VERSION + 1))


def test_a_current_database_with_a_changed_instrument_row_is_put_back_on_write(backend, tmp_path):
    db = store.initialise(new_db(tmp_path, "s.duckdb"))
    with store.transaction(db) as con:
        con.execute("UPDATE instruments SET total_max = 99 WHERE code = 'PHQ-9'")
    with store.connect(db, write=True) as con:
        assert con.execute("SELECT total_max FROM instruments WHERE code = 'PHQ-9'").fetchall() == [(27,)]


def test_a_write_open_of_a_missing_file_creates_a_current_store_and_a_read_open_refuses(backend, tmp_path):
    with pytest.raises(FileNotFoundError, match="no database at"):
        with store.connect(new_db(tmp_path, "absent.duckdb")):
            pass
    db = store.initialise(new_db(tmp_path, "new/s.duckdb"))
    with store.connect(db) as con:
        assert store.current_version(con) == store.SCHEMA_VERSION


def _other_process_writes(db: Path) -> subprocess.CompletedProcess:
    code = ("import sys; from analytics import store\n"
            "try:\n"
            "    with store.transaction(sys.argv[1], wait=0) as con: con.execute(\"INSERT INTO patients (patient_id) VALUES ('P2')\")\n"
            "except store.StoreBusy: sys.exit(3)\n")
    return subprocess.run([sys.executable, "-c", code, str(db)], cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.duckdb_only("the file lock")
def test_the_file_is_locked_only_while_a_connection_is_open(backend, tmp_path):
    db = store.initialise(tmp_path / "s.duckdb")
    with store.connect(db):
        held = _other_process_writes(db)
    assert held.returncode == 3, held.stderr
    free = _other_process_writes(db)
    assert free.returncode == 0, free.stderr
    with store.connect(db) as con:
        assert con.execute("SELECT patient_id FROM patients").fetchall() == [("P2",)]


def test_temporary_tables_and_registered_frames_end_with_their_connection(backend, tmp_path):
    import pandas as pd

    db = store.initialise(new_db(tmp_path, "s.duckdb"))
    with store.connect(db, write=True) as con:
        con.execute("CREATE TEMP TABLE scratch AS SELECT 1 AS x")
        con.register("incoming", pd.DataFrame({"x": [1]}))
    with store.connect(db, write=True) as con:
        for name in ("scratch", "incoming"):
            with pytest.raises(store.MissingTable):
                con.execute(f"SELECT * FROM {name}").fetchall()


def test_a_write_connection_inside_another_shares_it_and_a_rollback_keeps_nothing(backend, tmp_path):
    db = store.initialise(new_db(tmp_path, "s.duckdb"))
    with store.transaction(db) as outer:
        outer.execute("INSERT INTO patients (patient_id) VALUES ('P1')")
        with pytest.raises(RuntimeError):
            with store.transaction(db) as inner:
                inner.execute("INSERT INTO patients (patient_id) VALUES ('P9')")
                raise RuntimeError("abandon the inner change")
    with store.connect(db) as con:
        assert con.execute("SELECT patient_id FROM patients").fetchall() == [("P1",)]
    if backend == "postgres":
        return  # a PostgreSQL read never stands in a write's way
    with store.connect(db):
        with pytest.raises(duckdb.ConnectionException, match="for writing while this process reads it"):
            with store.connect(db, write=True):
                pass


@pytest.mark.duckdb_only("DuckDB's fatal errors and the file lock")
def test_after_a_fatal_database_error_the_next_connection_works_and_the_file_is_free(backend, tmp_path):
    db = store.initialise(tmp_path / "s.duckdb")
    with pytest.raises(duckdb.FatalException):
        with store.connect(db, write=True):
            raise duckdb.FatalException("database has been invalidated")  # as DuckDB raises after e.g. a failed write
    assert _other_process_writes(db).returncode == 0
    with store.connect(db, write=True) as con:
        assert con.execute("SELECT patient_id FROM patients").fetchall() == [("P2",)]


@pytest.mark.duckdb_only("DuckDB's shared in-memory instance")
def test_connections_work_when_the_shared_instance_is_recycled_after_every_use(backend, tmp_path, monkeypatch):
    # A use that grows the process (a large read or import) closes DuckDB's instance so its
    # allocator gives the memory back; forced here after every use.
    monkeypatch.setattr(store, "RECYCLE_AFTER_GROWTH_BYTES", -1)
    db = store.initialise(tmp_path / "s.duckdb")
    for pid in ("P1", "P3"):
        with store.transaction(db) as con:
            con.execute("INSERT INTO patients (patient_id) VALUES (?)", [pid])
            with store.connect(db) as inner:  # nested: the instance is not closed under the outer use
                assert inner.execute("SELECT count(*) FROM instruments").fetchall()[0][0] == len(scales.SCALES)
    with store.connect(db) as con:
        assert con.execute("SELECT patient_id FROM patients ORDER BY 1").fetchall() == [("P1",), ("P3",)]
    assert _other_process_writes(db).returncode == 0


@pytest.mark.duckdb_only("a file written by schema v3; a PostgreSQL database is always created current")
def test_schema_v4_keeps_every_assessment_and_makes_room_for_longer_scales(backend, tmp_path):
    """A v3 database's assessments survive the rebuild of v4 unchanged; afterwards a 21-item scale
    with a 0-63 total fits (the v1 schema allowed 10 items, each 0-6, and totals up to 60)."""
    path = tmp_path / "v3.duckdb"
    con = schema_file(path, 3)
    con.execute("INSERT INTO instruments VALUES ('PHQ-9', 'Patient Health Questionnaire-9', 'self', 9, 3, 27)")
    con.execute("INSERT INTO patients (patient_id, clinician) VALUES ('P1', 'dr_a')")
    con.execute("""INSERT INTO assessments (patient_id, instrument, administered_at, has_time, rater, item_1, item_9, item_10,
                   total, total_method, batch_id) VALUES ('P1', 'PHQ-9', '2024-01-08 09:30', true, 'self', 3, 1, 2, 17, 'given', 4)""")
    before = con.execute("SELECT assessment_id, patient_id, instrument, administered_at, has_time, rater, item_1, item_9, "
                         "item_10, total, total_method, batch_id FROM assessments").fetchall()
    con.close()
    with store.connect(path, write=True) as con:
        assert store.current_version(con) == store.SCHEMA_VERSION
        after = con.execute("SELECT assessment_id, patient_id, instrument, administered_at, has_time, rater, item_1, item_9, "
                            "item_10, total, total_method, batch_id FROM assessments").fetchall()
        assert after == before
        con.execute("INSERT INTO instruments VALUES ('BDI-II', 'Beck Depression Inventory-II', 'self', 21, 3, 63)")
        con.execute("INSERT INTO assessments (patient_id, instrument, administered_at, item_21, total, total_method) "
                    "VALUES ('P1', 'BDI-II', '2024-01-09', 3, 63, 'given')")
        assert con.execute("SELECT max(assessment_id) FROM assessments").fetchall()[0][0] > before[0][0]
        with pytest.raises(duckdb.ConstraintException):
            con.execute("INSERT INTO assessments (patient_id, instrument, administered_at, total, total_method) "
                        "VALUES ('P1', 'BDI-II', '2024-01-10', -1, 'given')")
