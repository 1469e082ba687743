"""`python -m analytics health` and the Health page (issue 15): schema version, integrity, audit
chain, last import and its age, rows quarantined since, free disk, database size and the last
backup; exit 0 ok, 1 look today, 2 a person is needed now. And the dashboard's notices in place of
a traceback for a damaged database, one from a newer version, and a busy store.
"""
from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

import duckdb

from analytics import backup, cli, store

ROOT = Path(__file__).resolve().parent.parent
CHECKS = {"database", "schema_version", "write_ahead_log", "integrity", "keys", "last_import", "quarantined",
          "audit_chain", "free_disk", "last_backup"}


def health(capsys, db: Path, *args: str) -> tuple[int, dict]:
    code = cli.main(["health", "--db", str(db), "--json", *args])
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return code, json.loads(out.out)


def test_a_healthy_store_with_a_fresh_backup_is_exit_0_and_reports_every_figure(writable_db, tmp_path, capsys):
    code, report = health(capsys, writable_db)
    assert code == 1 and report["status"] == "warning"  # no backup yet: look today
    assert report["checks"]["last_backup"]["status"] == "warning"
    backup.backup(writable_db, tmp_path / "nightly.tar.gz")
    code, report = health(capsys, writable_db)
    assert code == 0 and report["status"] == "ok", report
    checks = report["checks"]
    assert set(checks) == CHECKS
    assert checks["schema_version"]["version"] == store.SCHEMA_VERSION
    assert checks["database"]["bytes"] >= writable_db.stat().st_size
    assert checks["free_disk"]["free_bytes"] > 0
    assert checks["last_import"]["source"] == "demo" and checks["last_import"]["age_hours"] >= 0
    assert checks["integrity"]["tables"]["assessments"] > 0
    assert checks["keys"]["repeated"] == {"treatments": 0, "assessments": 0}
    assert checks["audit_chain"]["ok"] is True
    assert checks["last_backup"]["file"] == str((tmp_path / "nightly.tar.gz").resolve())


def test_a_tampered_audit_trail_is_critical(writable_db, capsys):
    con = duckdb.connect(str(writable_db))
    con.execute("UPDATE audit_log SET actor = 'someone else' WHERE seq = (SELECT min(seq) FROM audit_log)")
    con.close()
    code, report = health(capsys, writable_db)
    assert code == 2 and report["checks"]["audit_chain"]["status"] == "critical"


def test_a_key_held_by_two_rows_is_critical_with_counts_and_no_patient_named(writable_db, capsys):
    """DuckDB holds no index on the keys (schema v9): a row written past the store's one writer (by hand, by another
    program) would be counted twice in every figure, and the full check says so."""
    con = duckdb.connect(str(writable_db))
    [(patient_id,)] = con.execute("SELECT patient_id FROM assessments LIMIT 1").fetchall()
    con.execute("INSERT INTO assessments SELECT * REPLACE (assessment_id + 10000000 AS assessment_id) FROM assessments "
                "WHERE patient_id = ? LIMIT 2", [patient_id])
    con.close()
    code, report = health(capsys, writable_db)
    keys = report["checks"]["keys"]
    assert code == 2 and keys["status"] == "critical" and keys["repeated"] == {"treatments": 0, "assessments": 2}
    assert "2 key(s) of assessments" in keys["summary"] and patient_id not in json.dumps(report)
    code, report = health(capsys, writable_db, "--quick")   # the quick check reads no whole table
    assert report["checks"]["keys"]["status"] == "skipped"


def test_rows_quarantined_recently_are_a_warning_with_their_count(writable_db, tmp_path, capsys):
    bad = tmp_path / "assessments.csv"
    bad.write_text("patient_id,instrument,administered_on,total\nP00001,PHQ-9,not a date,7\nP00001,PHQ-9,2026-11-02,x\n",
                   encoding="utf-8")
    cli.main(["import", "--db", str(writable_db), str(bad)])
    capsys.readouterr()
    code, report = health(capsys, writable_db, "--quick")
    assert report["checks"]["quarantined"] == {**report["checks"]["quarantined"], "status": "warning", "rows": 2}
    assert report["checks"]["integrity"]["status"] == "skipped"


def test_a_newer_database_is_critical_and_left_alone(writable_db, capsys):
    con = duckdb.connect(str(writable_db))
    con.execute("INSERT INTO schema_version (version) VALUES (?)", [store.SCHEMA_VERSION + 1])
    con.close()
    before = writable_db.read_bytes()
    code, report = health(capsys, writable_db)
    assert code == 2 and report["checks"]["schema_version"]["status"] == "critical"
    assert writable_db.read_bytes() == before


def test_no_database_is_critical(tmp_path, capsys):
    code, report = health(capsys, tmp_path / "missing.duckdb")
    assert code == 2 and report["checks"]["database"]["status"] == "critical"


# --- the dashboard ---------------------------------------------------------------------------------

def test_the_health_page_shows_the_checks_to_administrators_only(open_page, writable_db, monkeypatch):
    monkeypatch.setenv("OUTCOMES_DB", str(writable_db))
    monkeypatch.setenv("OUTCOMES_ROLE", "admin")
    at = open_page("health")
    assert not at.exception
    checks = at.dataframe[0].value
    assert set(checks["check"]) == {name.replace("_", " ") for name in CHECKS}
    assert any("no backup recorded" in finding for finding in checks["finding"])
    assert any("python -m analytics backup --db" in c.value for c in at.code)
    monkeypatch.setenv("OUTCOMES_ROLE", "clinician")
    at = open_page("health")
    assert not at.exception and not at.dataframe


def _texts(at) -> str:
    return "\n".join(str(e.value) for kind in ("error", "warning", "info") for e in getattr(at, kind))


def test_a_damaged_database_shows_what_to_do_not_a_traceback(open_page, writable_db, monkeypatch, tmp_path):
    monkeypatch.setenv("OUTCOMES_DB", str(writable_db))
    monkeypatch.setenv("OUTCOMES_ROLE", "admin")
    monkeypatch.setenv("OUTCOMES_LOG_DIR", str(tmp_path / "logs"))
    from test_exit_codes import damage

    damage(writable_db, "middle")
    at = open_page("dashboard")
    assert not at.exception
    assert "The database is damaged" in _texts(at)
    assert any("python -m analytics restore BACKUP --db" in c.value for c in at.code)
    # anyone else is told to call an administrator, without the server's paths or commands
    monkeypatch.setenv("OUTCOMES_ROLE", "director")
    at = open_page("dashboard")
    assert not at.exception
    assert "The database is damaged" in _texts(at) and "Tell an administrator" in _texts(at)
    assert str(writable_db.parent) not in _texts(at) and not at.code


def test_a_database_from_a_newer_version_shows_upgrade_not_a_traceback(open_page, writable_db, monkeypatch):
    monkeypatch.setenv("OUTCOMES_DB", str(writable_db))
    monkeypatch.setenv("OUTCOMES_ROLE", "director")
    con = duckdb.connect(str(writable_db))
    con.execute("INSERT INTO schema_version (version) VALUES (?)", [store.SCHEMA_VERSION + 1])
    con.close()
    at = open_page("dashboard")
    assert not at.exception
    assert "needs a newer version of the software" in _texts(at)


@contextlib.contextmanager
def held_for_writing(db: Path):
    ready = db.with_name(db.name + ".held")
    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time\ncon = duckdb.connect(sys.argv[1])\n"
                               "open(sys.argv[2], 'w').close()\ntime.sleep(600)\n", str(db), str(ready)], cwd=ROOT)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert holder.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        yield
    finally:
        holder.kill()
        holder.wait()


def test_a_busy_store_shows_a_notice_with_try_again_not_a_traceback(open_page, writable_db, monkeypatch):
    monkeypatch.setenv("OUTCOMES_DB", str(writable_db))
    monkeypatch.setenv("OUTCOMES_ROLE", "director")
    monkeypatch.setattr(store, "LOCK_WAIT_SECONDS", 1.0)
    with held_for_writing(writable_db):
        at = open_page("dashboard")
    assert not at.exception
    assert "The database is busy" in _texts(at)
    assert any(b.label == "Try again" for b in at.button)
