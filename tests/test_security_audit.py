"""Attacks on the audit trail (issue 13, points 4, 10 and 11): rewriting it with a recomputed hash
chain, cutting off its newest entries, downgrading keyed entries, losing the key, and reading a
password typed into the user-name box back out of it."""
from __future__ import annotations

import hashlib
import json
import stat
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from analytics import audit, auth, keys, store
from fixtures import make_db, patient

ROOT = Path(__file__).resolve().parent.parent
GENESIS = "0" * 64


def _fill(db, n=6) -> int:
    base = len(audit.entries(db))
    for i in range(n):
        audit.append(db, f"user{i}", "view_patient", role="clinician", page="patient", patients=[f"P{i}"], detail={"i": i})
    return base


def _plain_sha(prev, seq, logged_at, actor, role, action, outcome, page, patients, detail) -> str:
    """The hash an attacker can compute without any secret: SHA-256 over the entry (the product's
    chain function before it had a key)."""
    canonical = json.dumps([prev, seq, logged_at.isoformat(timespec="microseconds"), actor, role, action, outcome,
                            page, patients, detail], ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def _rechain(con) -> None:
    """Renumber the trail 1..n and recompute every hash as unkeyed SHA-256 (what a forger can do)."""
    rows = con.execute("SELECT seq, logged_at, actor, role, action, outcome, page, patients, detail FROM audit_log"
                       " ORDER BY seq").fetchall()
    con.execute("DELETE FROM audit_log")
    prev = GENESIS
    columns = [c[0] for c in con.execute("DESCRIBE audit_log").fetchall()]
    for number, (_, at, actor, role, action, outcome, page, patients, detail) in enumerate(rows, start=1):
        digest = _plain_sha(prev, number, at, actor, role, action, outcome, page, patients, detail)
        values = {"seq": number, "logged_at": at, "actor": actor, "role": role, "action": action, "outcome": outcome,
                  "page": page, "patients": patients, "detail": detail, "prev_hash": prev, "hash": digest}
        names = [c for c in columns if c in values]
        con.execute(f"INSERT INTO audit_log ({', '.join(names)}) VALUES ({', '.join('?' for _ in names)})",
                    [values[c] for c in names])
        prev = digest


def test_deleting_entries_and_recomputing_the_chain_is_caught(writable_db):
    base = _fill(writable_db)
    assert audit.verify(writable_db).ok
    with store.transaction(writable_db) as con:  # remove two views, then make the chain whole again
        con.execute("DELETE FROM audit_log WHERE seq IN (?, ?)", [base + 2, base + 4])
        _rechain(con)
    result = audit.verify(writable_db)
    assert not result.ok
    assert result.first_bad_seq is not None and result.first_bad_seq <= base + 2


def test_cutting_off_the_newest_entries_is_caught(writable_db):
    base = _fill(writable_db)
    with store.transaction(writable_db) as con:
        con.execute("DELETE FROM audit_log WHERE seq > ?", [base + 3])
    result = audit.verify(writable_db)
    assert not result.ok
    assert "removed" in result.reason and str(base + 6) in result.reason


def test_verify_on_the_command_line_exits_2_after_truncation(writable_db):
    base = _fill(writable_db, 3)
    ok = subprocess.run([sys.executable, "-m", "analytics", "audit", "--verify", "--db", str(writable_db)],
                        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    with store.transaction(writable_db) as con:
        con.execute("DELETE FROM audit_log WHERE seq = ?", [base + 3])
    cut = subprocess.run([sys.executable, "-m", "analytics", "audit", "--verify", "--json", "--db", str(writable_db)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert cut.returncode == 2
    assert json.loads(cut.stdout)["ok"] is False


def _copy_database(src: Path, dest: Path) -> None:
    import shutil

    shutil.copy(src, dest)
    if Path(f"{src}.wal").exists():
        shutil.copy(f"{src}.wal", f"{dest}.wal")
    elif Path(f"{dest}.wal").exists():
        Path(f"{dest}.wal").unlink()


def test_a_restore_from_a_backup_is_accepted_only_through_a_signed_restore_mark(writable_db, tmp_path):
    db = Path(writable_db)
    base = _fill(db, 2)
    backup = tmp_path / "backup.duckdb"
    _copy_database(db, backup)  # taken at entry base + 2
    _fill(db, 3)
    _copy_database(backup, db)  # the operator restores the file in place: entries base+3..base+5 are gone
    cut = audit.verify(db)
    assert not cut.ok and "removed" in cut.reason  # a restore looks like a truncation until it is marked
    # a forged mark (no key) is refused
    with keys.anchor_path(db).open("a") as f:
        f.write(f"restore\t{base + 2}\t{cut.head_hash}\t{keys.current('audit')[0]}\t{'0' * 64}\n")
    forged = audit.verify(db)
    assert not forged.ok and "not signed" in forged.reason
    lines = keys.anchor_path(db).read_text().splitlines()
    keys.anchor_path(db).write_text("\n".join(lines[:-1]) + "\n")  # (the test's own clean-up of its forgery)

    marked = subprocess.run([sys.executable, "-m", "analytics", "audit", "--mark-restored", "--db", str(db)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert marked.returncode == 0, marked.stdout + marked.stderr
    result = audit.verify(db)
    assert result.ok, result.reason
    assert f"set back to entry {base + 2}" in result.note and f"entries {base + 3}-{base + 5}" in result.note
    restore = audit.entries(db, action="restore")
    assert len(restore) == 1 and restore.iloc[0]["detail"]["set_back_to_entry"] == base + 2
    # the trail goes on from the restored entry; cutting it off again is caught as before
    _fill(db, 2)
    assert audit.verify(db).ok
    with store.transaction(db) as con:
        con.execute("DELETE FROM audit_log WHERE seq > ?", [base + 3])
    assert not audit.verify(db).ok


def test_a_trail_that_does_not_verify_on_its_own_cannot_be_marked_restored(writable_db):
    base = _fill(writable_db, 3)
    with store.transaction(writable_db) as con:
        con.execute("DELETE FROM audit_log WHERE seq = ?", [base + 2])
    with pytest.raises(ValueError, match="does not verify"):
        audit.mark_restored(writable_db)
    assert not audit.verify(writable_db).ok

def _journal(db, actor: str, **fields) -> dict:
    entry = {"logged_at": "2026-01-01T08:00:00.000001", "actor": actor, "role": "clinician", "action": "view_patient",
             "outcome": "ok", "page": "patient", "patients": '["P1"]', "detail": "{}", **fields}
    return entry


def test_entries_applied_from_the_journal_are_keyed_anchored_and_cannot_be_cut_off(writable_db):
    base = _fill(writable_db, 1)
    for i in range(3):  # what a page run writes while another process holds the database (analytics/store.py)
        store.journal(writable_db, audit.JOURNAL_KIND, audit.journal_payload(_journal(writable_db, f"queued{i}")))
    assert store.flush_journal(writable_db, wait=5)
    with store.connect(writable_db) as con:
        rows = con.execute("SELECT seq, actor, key_id FROM audit_log WHERE seq > ? ORDER BY seq", [base]).fetchall()
    assert [r[1] for r in rows[-3:]] == ["queued0", "queued1", "queued2"] and all(r[2] for r in rows)
    assert max(s for s, _ in keys.anchor_read(writable_db)) == rows[-1][0]  # anchored once the flush committed
    assert audit.verify(writable_db).ok
    with store.transaction(writable_db) as con:
        con.execute("DELETE FROM audit_log WHERE seq = ?", [rows[-1][0]])
    assert not audit.verify(writable_db).ok


def test_an_entry_slipped_into_the_journal_without_the_key_is_recorded_as_refused(writable_db):
    """The journal sits beside the database: someone who can write there but cannot read the key must
    not get an entry of their own chained and signed."""
    forged = {**_journal(writable_db, "dr_nobody"), "key_id": keys.current("audit")[0], "mac": "0" * 64}
    store.journal(writable_db, audit.JOURNAL_KIND, forged)
    store.journal(writable_db, audit.JOURNAL_KIND, _journal(writable_db, "dr_unsigned"))
    assert store.flush_journal(writable_db, wait=5)
    trail = audit.entries(writable_db)
    assert "dr_nobody" not in set(trail["actor"]) and "dr_unsigned" not in set(trail["actor"])
    refused = trail[trail["action"] == "journal_refused"]
    assert len(refused) == 2 and set(refused["outcome"]) == {"denied"}
    assert [r["claimed"]["actor"] for r in refused["detail"]] == ["dr_nobody", "dr_unsigned"]
    assert audit.verify(writable_db).ok

def test_the_key_lives_outside_the_database_readable_only_by_its_owner(tmp_path, monkeypatch):
    folder = tmp_path / "keys"
    monkeypatch.setenv("OUTCOMES_KEY_DIR", str(folder))
    db = make_db(tmp_path)
    assert not folder.exists()  # created on first use
    audit.append(db, "someone", "export")
    key_file = folder / "audit.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    key_id, key = keys.current("audit")
    with store.connect(db) as con:
        dump = str(con.execute("SELECT * FROM audit_log").fetchall())
    assert key.hex() not in dump and key_id in dump  # the id names the key; the key itself is not stored
    assert keys.anchor_path(db).exists()


def test_downgrading_keyed_entries_to_a_plain_chain_is_caught(writable_db):
    _fill(writable_db, 3)
    with store.transaction(writable_db) as con:  # every entry rewritten as unkeyed SHA-256, nothing removed
        _rechain(con)
    result = audit.verify(writable_db)
    assert not result.ok


def test_an_old_unkeyed_chain_verifies_up_to_the_key_and_says_so(tmp_path):
    db = make_db(tmp_path, patients=[patient("P1")])
    with store.transaction(db) as con:  # entries written by a release without the key
        con.execute("DELETE FROM audit_log")
        prev = GENESIS
        for seq in (1, 2, 3):
            at = datetime(2025, 1, seq, 9, 0)
            digest = _plain_sha(prev, seq, at, "old", "admin", "export", "ok", None, "[]", "{}")
            con.execute("INSERT INTO audit_log (seq, logged_at, actor, role, action, outcome, page, patients, detail,"
                        " prev_hash, hash) VALUES (?, ?, 'old', 'admin', 'export', 'ok', NULL, '[]', '{}', ?, ?)",
                        [seq, at, prev, digest])
            prev = digest
    keys.anchor_path(db).unlink(missing_ok=True)  # that release kept no anchor either
    audit.append(db, "new", "export")
    result = audit.verify(db)
    assert result.ok and result.checked == 4 and result.unkeyed == 3
    assert "1-3" in result.note and "before the audit key" in result.note
    # an edit of the old part breaks the seal the first keyed entry put on it
    with store.transaction(db) as con:
        con.execute("UPDATE audit_log SET actor = 'edited' WHERE seq = 2")
    assert not audit.verify(db).ok


def test_a_lost_key_is_reported_and_a_new_one_takes_over(tmp_path, monkeypatch):
    monkeypatch.setenv("OUTCOMES_KEY_DIR", str(tmp_path / "keys"))
    db = make_db(tmp_path)
    audit.append(db, "a", "export")
    old_id, _ = keys.current("audit")
    (tmp_path / "keys" / "audit.key").rename(tmp_path / "lost.key")
    audit.append(db, "b", "export")  # the product keeps working: a new key from here on
    result = audit.verify(db)
    assert not result.ok and old_id in result.reason and "not found" in result.reason
    # restoring the old key under its id makes the whole trail verify again
    (tmp_path / "lost.key").rename(tmp_path / "keys" / f"audit-{old_id}.key")
    assert audit.verify(db).ok


def test_a_password_typed_as_the_user_name_leaves_no_trace(writable_db):
    auth.create_user(writable_db, "dr_okafor", "clinician", "correct horse battery", actor="test")
    typed = "my-secret-passw0rd"
    with pytest.raises(auth.SignInFailed):
        auth.authenticate(writable_db, typed, "correct horse battery")
    with store.connect(writable_db) as con:
        dump = json.dumps(con.execute("SELECT * FROM audit_log").fetchall(), default=str)
    digest = hashlib.sha256(typed.encode()).hexdigest()
    fragments = {typed, digest[:8], hashlib.md5(typed.encode()).hexdigest()[:8]}
    assert not [f for f in fragments if f in dump]
    last = audit.entries(writable_db).iloc[-1]
    assert (last["actor"], last["action"], last["detail"].get("reason")) == ("unknown", "sign_in_failed", "unknown user")
    assert set(last["detail"]) <= {"reason", "client"}
