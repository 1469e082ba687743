"""The audit trail: appended, never changed by the product, tamper-evident."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from analytics import audit, store

pytestmark = pytest.mark.usefixtures("backend")  # every test on a DuckDB file and on PostgreSQL

ROOT = Path(__file__).resolve().parent.parent


def _fill(db, n=5) -> int:
    """Append n entries; returns how many there were before (the demo import is audited too)."""
    base = len(audit.entries(db))
    for i in range(n):
        audit.append(db, f"user{i}", "view_patient", role="clinician", page="patient", patients=[f"P{i}"],
                     detail={"i": i})
    return base


def test_entries_record_who_what_which_patients_and_page(writable_db):
    seq = audit.append(writable_db, "dr_okafor", "export", role="clinician", page="export",
                       patients=["P2", "P1", "P2"], detail={"format": "csv", "rows": 12})
    row = audit.entries(writable_db).iloc[-1]
    assert row["seq"] == seq
    assert (row["actor"], row["role"], row["action"], row["page"]) == ("dr_okafor", "clinician", "export", "export")
    assert row["patients"] == ["P1", "P2"]
    assert row["detail"] == {"format": "csv", "rows": 12}


def test_undocumented_action_or_outcome_is_refused(writable_db):
    with pytest.raises(ValueError, match="documented actions"):
        audit.append(writable_db, "x", "delete_everything")
    with pytest.raises(ValueError, match="outcome"):
        audit.append(writable_db, "x", "export", outcome="maybe")


def test_chain_verifies_and_names_the_first_tampered_entry(writable_db):
    base = _fill(writable_db)
    verified = audit.verify(writable_db)
    assert (verified.ok, verified.checked, verified.first_bad_seq) == (True, base + 5, None)
    assert verified.head_hash == audit.entries(writable_db).iloc[-1]["hash"]
    with store.transaction(writable_db) as con:  # someone edits the file outside the product
        con.execute("UPDATE audit_log SET actor = 'someone_else' WHERE seq = ?", [base + 3])
    result = audit.verify(writable_db)
    assert not result.ok and result.first_bad_seq == base + 3 and "changed" in result.reason


def test_deleting_an_entry_outside_the_product_is_detected(writable_db):
    base = _fill(writable_db)
    with store.transaction(writable_db) as con:
        con.execute("DELETE FROM audit_log WHERE seq = ?", [base + 2])
    result = audit.verify(writable_db)
    assert not result.ok and result.first_bad_seq == base + 2


def test_removing_an_entry_and_stitching_the_chain_is_still_detected(writable_db):
    base = _fill(writable_db)
    with store.transaction(writable_db) as con:  # remove entry base+3, renumber and re-link the rest
        kept = con.execute("SELECT hash FROM audit_log WHERE seq = ?", [base + 2]).fetchall()[0][0]
        con.execute("DELETE FROM audit_log WHERE seq = ?", [base + 3])
        con.execute("UPDATE audit_log SET prev_hash = ? WHERE seq = ?", [kept, base + 4])
        if store.dialect(con) == "duckdb":
            con.execute("UPDATE audit_log SET seq = seq - 1 WHERE seq > ?", [base + 3])
        else:  # PostgreSQL checks the key row by row: renumber upwards, one entry at a time
            later = [r[0] for r in con.execute("SELECT seq FROM audit_log WHERE seq > ? ORDER BY seq", [base + 3]).fetchall()]
            for seq in later:
                con.execute("UPDATE audit_log SET seq = ? WHERE seq = ?", [seq - 1, seq])
    result = audit.verify(writable_db)
    assert not result.ok and result.first_bad_seq == base + 3


def test_no_update_or_delete_of_the_audit_table_anywhere_in_the_product():
    pattern = re.compile(r"(UPDATE\s+audit_log|DELETE\s+FROM\s+audit_log|TRUNCATE\s+audit_log|DROP\s+TABLE\s+audit_log)", re.I)
    offenders = []
    for path in [*ROOT.glob("analytics/**/*.py"), *ROOT.glob("pages/*.py"), ROOT / "dashboard.py"]:
        if path.exists() and pattern.search(path.read_text()):
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_since_filter_and_csv_export_neutralise_formulas(writable_db):
    audit.append(writable_db, "=HYPERLINK(\"http://x\")", "sign_in_failed", outcome="failed",
                 detail={"attempted": "+cmd|' /C calc'!A0"})
    frame = audit.entries(writable_db, since="2000-01-01", action="sign_in_failed")
    assert len(frame) == 1
    assert audit.entries(writable_db, since="2999-01-01").empty
    text = audit.to_csv(frame)
    for line in text.splitlines()[1:]:
        for cell in line.split(","):
            assert not cell.lstrip('"').startswith(("=", "+", "-", "@"))
    assert "'=HYPERLINK" in text
    with pytest.raises(ValueError, match="since must be a date"):
        audit.entries(writable_db, since="yesterday'; DROP TABLE audit_log; --")


def _not_json(constant):
    raise ValueError(f"{constant} is not JSON: other tools cannot parse it")


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "analytics", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_audit_cli_prints_json_since_a_date_and_verifies(writable_db):
    base = _fill(writable_db, 3)
    result = _cli("audit", "--db", str(writable_db), "--since", "2000-01-01", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout, parse_constant=_not_json)  # standard JSON: no bare NaN for a missing role
    assert [r["actor"] for r in rows][base:] == ["user0", "user1", "user2"]
    assert set(rows[0]) >= {"seq", "logged_at", "actor", "role", "action", "outcome", "page", "patients", "detail", "hash"}
    assert _cli("audit", "--db", str(writable_db), "--verify").returncode == 0
    with store.transaction(writable_db) as con:
        con.execute("UPDATE audit_log SET patients = '[]' WHERE seq = ?", [base + 1])
    tampered = _cli("audit", "--db", str(writable_db), "--verify")
    assert tampered.returncode == 2 and "TAMPERED" in tampered.stdout
    bad = _cli("audit", "--db", str(writable_db), "--since", "not-a-date")
    assert bad.returncode == 2 and "since must be a date" in bad.stderr


@pytest.mark.duckdb_only("a file written before schema v2; a PostgreSQL database is always created current")
def test_a_database_from_before_the_audit_table_reads_as_empty(tmp_path):
    db = tmp_path / "v1.duckdb"
    import duckdb
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TIMESTAMP)")
    con.close()
    assert audit.entries(db).empty and audit.verify(db).ok


def test_imports_and_exports_are_audited(writable_db, tmp_path):
    import pandas as pd

    from analytics.access import SYSTEM
    from analytics.export import export_csv
    from analytics.ingest import import_tables

    report = import_tables({"patients": pd.DataFrame({"patient_id": ["NEW1"], "site": ["northgate"],
                                                      "clinician": ["dr_okafor"], "enrolled_on": ["2026-01-05"]})},
                           file_name="new.csv", source="csv", db=writable_db, user="admin")
    assert report.written
    entry = audit.entries(writable_db, action="import").iloc[-1]
    assert entry["actor"] == "admin" and entry["detail"]["files"] == ["new.csv"]
    assert entry["detail"]["batches"] == report.batch_ids
    export_csv(tmp_path / "out", db=writable_db, scope=SYSTEM, page="data")
    entry = audit.entries(writable_db, action="export").iloc[-1]
    assert (entry["actor"], entry["page"], entry["detail"]["format"]) == ("system", "data", "csv")
    assert entry["detail"]["rows"]["patients"] > 0
    assert audit.verify(writable_db).ok


def test_a_refused_import_changes_nothing_not_even_the_audit_trail(writable_db):
    import pandas as pd

    from analytics.ingest import import_tables

    before = len(audit.entries(writable_db))
    report = import_tables({"patients": pd.DataFrame({"patient_id": ["X"]})}, file_name="bad.csv", source="csv",
                           db=writable_db)
    assert not report.written
    assert len(audit.entries(writable_db)) == before
