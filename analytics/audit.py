"""The append-only audit trail: who did what, when, to which patients, from which page.

There is deliberately no function here (or anywhere in the product) that updates
or deletes an audit row; tests/test_audit.py fails if such SQL appears in the code.
Someone with the database file can still edit it outside the product, so each row
carries a SHA-256 over its own content and the previous row's hash: `verify`
recomputes the chain and names the first row that no longer matches.

An audit write that fails makes the audited action fail (callers write the entry
before handing data out), so nothing is shown that was not recorded.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Iterable

import pandas as pd

from . import store

GENESIS = "0" * 64
OUTCOMES = ("ok", "denied", "failed")

# Every action the product records. docs/security.md documents each one and a test
# fails when an action is used in code without being listed here and documented there.
ACTIONS = (
    "sign_in",            # successful sign-in
    "sign_in_failed",     # wrong password, unknown or disabled user, locked account
    "sign_out",
    "session_refused",    # an old session of a disabled, changed or expired account was used
    "view_patient",       # a patient record was opened (denied when out of scope)
    "search_patients",    # a patient search was refused (e.g. hostile input)
    "export",             # any export or download of rows
    "import",             # any import of files
    "user_add",
    "user_disable",
    "user_enable",
    "user_reset_password",
    "user_set_role",
    "grant_patient",
    "revoke_patient",
    "view_audit",         # the audit trail was viewed or exported
    # visit entry and patient self-report (docs/self-report.md)
    "record_visit",       # an infusion or assessment entered or corrected in the browser
    "self_report_link",   # a self-report link was created (never the token itself)
    "self_report_open",   # a self-report link was opened (denied: unknown, altered, expired or used)
    "self_report_submit", # a patient's answers were stored through a link
    "self_report_send",   # a link was handed to a messaging adapter
    "safety_flag_raise",  # a positive PHQ-9 item 9 put a flag on the patient
    "safety_flag_ack",    # a clinician acknowledged a safety flag
)

COLUMNS = ["seq", "logged_at", "actor", "role", "action", "outcome", "page", "patients", "detail", "hash"]


class AuditError(RuntimeError):
    """An audit entry could not be written or read."""


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _row_hash(prev_hash: str, seq: int, logged_at: datetime, actor: str, role: str | None, action: str,
              outcome: str, page: str | None, patients: str, detail: str) -> str:
    canonical = json.dumps(
        [prev_hash, seq, logged_at.isoformat(timespec="microseconds"), actor, role, action, outcome, page, patients, detail],
        ensure_ascii=True, separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def append(
    db: str | os.PathLike | None,
    actor: str,
    action: str,
    *,
    role: str | None = None,
    outcome: str = "ok",
    page: str | None = None,
    patients: Iterable[str] = (),
    detail: dict | None = None,
    con: store.Connection | None = None,
) -> int:
    """Append one entry and return its sequence number (None when it was journaled).

    Pass `con` (an open write transaction) to record the entry atomically with the
    change it describes; otherwise the entry gets its own transaction, or, while another
    process holds the write lock, goes to the store's journal (fsynced before this returns)
    and is chained when the lock frees, keeping its time.
    """
    if action not in ACTIONS:
        raise ValueError(f"audit action {action!r} is not one of the documented actions {ACTIONS}")
    if outcome not in OUTCOMES:
        raise ValueError(f"audit outcome {outcome!r} must be one of {OUTCOMES}")
    patient_text = json.dumps(sorted({str(p) for p in patients}))
    detail_text = json.dumps(detail or {}, sort_keys=True, default=str)
    if con is None:
        # While another process holds the write lock the entry is journaled (durable) and chained when
        # the lock frees, with its own time (store.write_or_journal): the sequence number is then None.
        return store.write_or_journal(db, JOURNAL_KIND, {
            "logged_at": _now().isoformat(timespec="microseconds"), "actor": str(actor), "role": role,
            "action": action, "outcome": outcome, "page": page, "patients": patient_text, "detail": detail_text})
    return _append(con, actor, role, action, outcome, page, patient_text, detail_text)


def _append(con, actor, role, action, outcome, page, patient_text, detail_text, logged_at: datetime | None = None) -> int:
    # On PostgreSQL several servers append at once: the chain's head is read under a lock held until
    # the transaction commits (on DuckDB the single writer already makes appends take turns). The
    # `seq` key and the unique hash stay the backstop: a race would fail, never fork the chain.
    store.lock(con, "audit")
    last = con.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchall()
    seq, prev = (last[0][0] + 1, last[0][1]) if last else (1, GENESIS)
    logged_at = logged_at or _now()
    digest = _row_hash(prev, seq, logged_at, str(actor), role, action, outcome, page, patient_text, detail_text)
    con.execute(
        "INSERT INTO audit_log (seq, logged_at, actor, role, action, outcome, page, patients, detail, prev_hash, hash)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [seq, logged_at, str(actor), role, action, outcome, page, patient_text, detail_text, prev, digest],
    )
    return seq


JOURNAL_KIND = "audit"


def _append_journaled(con, entry: dict) -> int:
    return _append(con, entry["actor"], entry["role"], entry["action"], entry["outcome"], entry["page"],
                   entry["patients"], entry["detail"], logged_at=datetime.fromisoformat(entry["logged_at"]))


def _journaled_entry_written(con, entry: dict) -> bool:
    return bool(con.execute(
        "SELECT count(*) FROM audit_log WHERE logged_at = ? AND actor = ? AND action = ? AND patients = ? AND detail = ?",
        [datetime.fromisoformat(entry["logged_at"]), entry["actor"], entry["action"], entry["patients"],
         entry["detail"]]).fetchall()[0][0])


store.register_journal_kind(JOURNAL_KIND, _append_journaled, _journaled_entry_written)


def _parse_day(value: str | date | datetime | None, name: str) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day)
    try:
        return datetime.fromisoformat(str(value).strip())
    except ValueError:
        raise ValueError(f"{name} must be a date YYYY-MM-DD (or date and time), got {value!r}") from None


def entries(
    db: str | os.PathLike | None = None,
    *,
    since: str | date | datetime | None = None,
    until: str | date | datetime | None = None,
    actor: str | None = None,
    action: str | None = None,
    patient: str | None = None,
    limit: int | None = None,
) -> pd.DataFrame:
    """Audit entries oldest first, filtered; `patients` as lists and `detail` as dicts."""
    clauses, params = ["TRUE"], []
    start, end = _parse_day(since, "since"), _parse_day(until, "until")
    if start is not None:
        clauses.append("logged_at >= ?")
        params.append(start)
    if end is not None:
        whole_day = not isinstance(until, datetime) and len(str(until).strip()) <= 10
        # --until 2026-11-27 means "up to the end of that day"
        clauses.append("logged_at < ?" if whole_day else "logged_at <= ?")
        params.append(end + timedelta(days=1) if whole_day else end)
    if actor:
        clauses.append("actor = ?")
        params.append(actor)
    if action:
        clauses.append("action = ?")
        params.append(action)
    if patient:
        # `patients` holds json.dumps of a sorted list: the quoted id is one element exactly
        clauses.append("strpos(patients, ?) > 0")
        params.append(json.dumps(str(patient)))
    sql = f"SELECT {', '.join(COLUMNS)} FROM audit_log WHERE {' AND '.join(clauses)} ORDER BY seq"
    if limit is not None:
        sql = f"SELECT * FROM ({sql.replace('ORDER BY seq', 'ORDER BY seq DESC')} LIMIT ?) AS recent ORDER BY seq"
        params.append(int(limit))
    store.flush_journal(db, wait=1.0)  # entries queued while another process wrote, if the lock is free now
    try:
        with store.connect(db) as con:
            frame = con.execute(sql, params).df()
    except store.MissingTable:
        return pd.DataFrame(columns=COLUMNS)  # a database from before schema v2: nothing audited yet
    frame["patients"] = frame["patients"].map(json.loads)
    frame["detail"] = frame["detail"].map(json.loads)
    return frame


@dataclass(frozen=True)
class Verification:
    ok: bool
    checked: int
    first_bad_seq: int | None = None
    reason: str = ""
    # The newest entry's hash. A chain cannot show that its newest entries were cut off:
    # keep this value somewhere else now and then, and compare (docs/security.md).
    head_hash: str = GENESIS

    def as_dict(self) -> dict:
        return {"ok": self.ok, "checked": self.checked, "first_bad_seq": self.first_bad_seq, "reason": self.reason,
                "head_hash": self.head_hash}


def verify(db: str | os.PathLike | None = None) -> Verification:
    """Recompute the hash chain; report the first entry edited, removed or inserted outside the product."""
    store.flush_journal(db, wait=1.0)  # queued entries are chained when they are applied
    try:
        with store.connect(db) as con:
            rows = con.execute(
                "SELECT seq, logged_at, actor, role, action, outcome, page, patients, detail, prev_hash, hash"
                " FROM audit_log ORDER BY seq"
            ).fetchall()
    except store.MissingTable:
        return Verification(True, 0)
    prev, expected_seq = GENESIS, 1
    for seq, logged_at, actor, role, action, outcome, page, patients, detail, prev_hash, digest in rows:
        if seq != expected_seq:
            return Verification(False, expected_seq - 1, expected_seq, f"entry {expected_seq} is missing (next is {seq})")
        if prev_hash != prev:
            return Verification(False, seq - 1, seq, f"entry {seq} does not follow entry {seq - 1} (an entry was removed or replaced)")
        if _row_hash(prev, seq, logged_at, actor, role, action, outcome, page, patients, detail) != digest:
            return Verification(False, seq - 1, seq, f"entry {seq} was changed after it was written")
        prev, expected_seq = digest, seq + 1
    return Verification(True, len(rows), head_hash=prev)


# -- export -----------------------------------------------------------------------

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n")


def csv_safe(value) -> str:
    """A cell a spreadsheet will not run as a formula (OWASP CSV injection advice: prefix with ')."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def to_csv(frame: pd.DataFrame) -> str:
    """The audit entries as CSV text, formula-safe, with lists and dicts as JSON."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in frame[COLUMNS].itertuples(index=False):
        cells = []
        for name, value in zip(COLUMNS, row):
            if name in ("patients", "detail"):
                value = json.dumps(value, sort_keys=True, default=str)
            elif isinstance(value, (datetime, pd.Timestamp)):
                value = value.isoformat()
            cells.append(csv_safe(value))
        writer.writerow(cells)
    return out.getvalue()


def to_records(frame: pd.DataFrame) -> list[dict]:
    """JSON-ready entries (the `audit --json` contract: the COLUMNS keys)."""
    records = []
    for row in frame[COLUMNS].itertuples(index=False):
        item = dict(zip(COLUMNS, row))
        item["logged_at"] = pd.Timestamp(item["logged_at"]).isoformat()
        item["seq"] = int(item["seq"])
        records.append(item)
    return records
