"""The audit trail (issue 5, part 3): appended, never changed by the product, tamper-evident."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from analytics import audit, store

ROOT = Path(__file__).resolve().parent.parent


def _fill(db, n=5):
    for i in range(n):
        audit.append(db, f"user{i}", "view_patient", role="clinician", page="patient", patients=[f"P{i}"],
                     detail={"i": i})


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
    _fill(writable_db)
    assert audit.verify(writable_db).as_dict() == {"ok": True, "checked": 5, "first_bad_seq": None, "reason": ""}
    with store.transaction(writable_db) as con:  # someone edits the file outside the product
        con.execute("UPDATE audit_log SET actor = 'someone_else' WHERE seq = 3")
    result = audit.verify(writable_db)
    assert not result.ok and result.first_bad_seq == 3 and "changed" in result.reason


def test_deleting_an_entry_outside_the_product_is_detected(writable_db):
    _fill(writable_db)
    with store.transaction(writable_db) as con:
        con.execute("DELETE FROM audit_log WHERE seq = 2")
    result = audit.verify(writable_db)
    assert not result.ok and result.first_bad_seq == 2


def test_rewriting_an_entry_with_its_own_hash_still_breaks_the_chain(writable_db):
    _fill(writable_db)
    with store.transaction(writable_db) as con:
        con.execute("DELETE FROM audit_log WHERE seq = 4")
        con.execute("UPDATE audit_log SET hash = 'f' || substr(hash, 2) WHERE seq = 3")
    assert audit.verify(writable_db).first_bad_seq == 3


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
    frame = audit.entries(writable_db, since="2000-01-01")
    assert len(frame) == 1
    assert audit.entries(writable_db, since="2999-01-01").empty
    text = audit.to_csv(frame)
    for line in text.splitlines()[1:]:
        for cell in line.split(","):
            assert not cell.lstrip('"').startswith(("=", "+", "-", "@"))
    assert "'=HYPERLINK" in text
    with pytest.raises(ValueError, match="since must be a date"):
        audit.entries(writable_db, since="yesterday'; DROP TABLE audit_log; --")


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "analytics", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_audit_cli_prints_json_since_a_date_and_verifies(writable_db):
    _fill(writable_db, 3)
    result = _cli("audit", "--db", str(writable_db), "--since", "2000-01-01", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["actor"] for r in rows] == ["user0", "user1", "user2"]
    assert set(rows[0]) >= {"seq", "logged_at", "actor", "role", "action", "outcome", "page", "patients", "detail", "hash"}
    assert _cli("audit", "--db", str(writable_db), "--verify").returncode == 0
    with store.transaction(writable_db) as con:
        con.execute("UPDATE audit_log SET patients = '[]' WHERE seq = 1")
    tampered = _cli("audit", "--db", str(writable_db), "--verify")
    assert tampered.returncode == 2 and "TAMPERED" in tampered.stdout
    bad = _cli("audit", "--db", str(writable_db), "--since", "not-a-date")
    assert bad.returncode == 2 and "since must be a date" in bad.stderr


def test_a_database_from_before_the_audit_table_reads_as_empty(tmp_path):
    db = tmp_path / "v1.duckdb"
    import duckdb
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TIMESTAMP)")
    con.close()
    assert audit.entries(db).empty and audit.verify(db).ok
