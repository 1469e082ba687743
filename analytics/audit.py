"""The append-only audit trail: who did what, when, to which patients, from which page.

There is deliberately no function here (or anywhere in the product) that updates
or deletes an audit row; tests/test_audit.py fails if such SQL appears in the code.
Someone with the database file can still edit it outside the product, so each row
carries an HMAC-SHA256, under a key kept outside the database (analytics/keys.py), over
its own content and the previous row's hash, and every committed entry's sequence number
and hash is appended to an anchor file outside the database: `verify` recomputes the
chain, names the first row that no longer matches, and catches a trail whose newest
entries were cut off. Entries written before the key existed (schema v2-v4) carry a plain
SHA-256 and are sealed by the first keyed entry, whose HMAC covers their last hash.

An audit write that fails makes the audited action fail (callers write the entry
before handing data out), so nothing is shown that was not recorded.
"""
from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import os
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta, timezone
from typing import Iterable

import pandas as pd

from . import keys, store

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
    "record_visit",       # an infusion or assessment entered or corrected (values or date) in the browser
    "void_record",        # a mistaken infusion or assessment voided, with the reason
    "self_report_link",   # a self-report link was created (never the token itself)
    "self_report_open",   # a self-report link was opened (denied: unknown, altered, expired or used)
    "self_report_submit", # a patient's answers were stored through a link
    "self_report_send",   # a link was handed to a messaging adapter
    "safety_flag_raise",  # a positive PHQ-9 item 9 put a flag on the patient
    "safety_flag_ack",    # a clinician acknowledged a safety flag
    # issue 13 (docs/security.md)
    "view_due_list",      # the due list was shown (its patients listed)
    "view_rejected_rows", # quarantined import rows were shown (raw or redacted)
    "user_link_oidc",     # an identity provider's account was linked to an account here
    "user_unlink_oidc",
    "break_glass_grant",  # an administrator got a time-limited grant for identifiable data
    "break_glass_end",
    "journal_refused",    # an entry in the journal beside the database was not signed with the audit key
    "restore",            # the operator restored the database from a backup (the trail set back, knowingly)
)

COLUMNS = ["seq", "logged_at", "actor", "role", "action", "outcome", "page", "patients", "detail", "hash"]


class AuditError(RuntimeError):
    """An audit entry could not be written or read."""


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


KEY_NAME = "audit"  # analytics/keys.py: <key dir>/audit.key


def _canonical(prev_hash: str, seq: int, logged_at: datetime, actor: str, role: str | None, action: str,
               outcome: str, page: str | None, patients: str, detail: str, key_id: str | None = None) -> bytes:
    fields = [prev_hash, seq, logged_at.isoformat(timespec="microseconds"), actor, role, action, outcome, page, patients,
              detail]
    if key_id is not None:  # a keyed entry names its key inside what the key signs
        fields.append(key_id)
    return json.dumps(fields, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def _row_hash(prev_hash: str, seq: int, logged_at: datetime, actor: str, role: str | None, action: str,
              outcome: str, page: str | None, patients: str, detail: str) -> str:
    """The plain SHA-256 of an entry written before the audit key existed (verification only)."""
    canonical = _canonical(prev_hash, seq, logged_at, actor, role, action, outcome, page, patients, detail)
    return hashlib.sha256(canonical).hexdigest()


def _keyed_hash(key: bytes, key_id: str, prev_hash: str, seq: int, logged_at: datetime, actor: str, role: str | None,
                action: str, outcome: str, page: str | None, patients: str, detail: str) -> str:
    return keys.mac(key, _canonical(prev_hash, seq, logged_at, actor, role, action, outcome, page, patients, detail,
                                    key_id))


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
        return store.write_or_journal(db, JOURNAL_KIND, journal_payload({
            "logged_at": _now().isoformat(timespec="microseconds"), "actor": str(actor), "role": role,
            "action": action, "outcome": outcome, "page": page, "patients": patient_text, "detail": detail_text}))
    return _append(con, db, actor, role, action, outcome, page, patient_text, detail_text)


def _append(con, db, actor, role, action, outcome, page, patient_text, detail_text,
            logged_at: datetime | None = None) -> int:
    return _append_many(con, db, [(actor, role, action, outcome, page, patient_text, detail_text, logged_at)])[0]


_ROWS_PER_INSERT = 100


def _append_many(con, db, rows: list[tuple]) -> list[int]:
    """Chain and insert entries in order, each row (actor, role, action, outcome, page, patient_text, detail_text,
    logged_at or None for now); their sequence numbers. One read of the chain's head and one INSERT per 100
    entries, the same rows as appending them one at a time."""
    key_id, key = keys.current(KEY_NAME)  # created (0600) on first use; no key, no entry, no action
    # On PostgreSQL several servers append at once: the chain's head is read under a lock held until
    # the transaction commits (on DuckDB the single writer already makes appends take turns). The
    # `seq` key and the unique hash stay the backstop: a race would fail, never fork the chain.
    store.lock(con, "audit")
    last = con.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchall()
    seq, prev = (last[0][0], last[0][1]) if last else (0, GENESIS)
    values = []
    for actor, role, action, outcome, page, patient_text, detail_text, logged_at in rows:
        seq += 1
        logged_at = logged_at or _now()
        digest = _keyed_hash(key, key_id, prev, seq, logged_at, str(actor), role, action, outcome, page, patient_text,
                             detail_text)
        values.append([seq, logged_at, str(actor), role, action, outcome, page, patient_text, detail_text, prev, digest,
                       key_id])
        prev = digest
    for start in range(0, len(values), _ROWS_PER_INSERT):
        chunk = values[start:start + _ROWS_PER_INSERT]
        con.execute(
            "INSERT INTO audit_log (seq, logged_at, actor, role, action, outcome, page, patients, detail, prev_hash, hash,"
            " key_id) VALUES " + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"] * len(chunk)),
            [v for row in chunk for v in row],
        )
    database = store.db_path(db)
    anchored = [(row[0], row[10]) for row in values]
    # Anchored once committed: an entry rolled back with its action never reaches the anchor.
    store.after_commit(con, lambda: keys.anchor_append_many(database, anchored, key_id))
    return [row[0] for row in values]


JOURNAL_KIND = "audit"


_JOURNAL_FIELDS = ("logged_at", "actor", "role", "action", "outcome", "page", "patients", "detail")


def _journal_mac(key: bytes, entry: dict) -> str:
    canonical = json.dumps([entry.get(f) for f in _JOURNAL_FIELDS], ensure_ascii=True, separators=(",", ":"))
    return keys.mac(key, b"audit-journal\x00" + canonical.encode("ascii"))


def journal_payload(entry: dict) -> dict:
    """An entry to journal, signed with the audit key: the journal sits beside the database file, and
    whoever can write there but cannot read the key must not get entries of their own chained and keyed."""
    key_id, key = keys.current(KEY_NAME)
    return {**{f: entry.get(f) for f in _JOURNAL_FIELDS}, "key_id": key_id, "mac": _journal_mac(key, entry)}


def _journal_signed(entry: dict, found: dict | None = None) -> bool:
    """Is the entry signed with an audit key? `found`: keys already looked up by id (a flush's entries share one)."""
    key_id = str(entry.get("key_id"))
    if found is None or key_id not in found:
        key = keys.find(KEY_NAME, key_id)
        if found is not None:
            found[key_id] = key
    else:
        key = found[key_id]
    return key is not None and hmac.compare_digest(_journal_mac(key, entry), str(entry.get("mac", "")))


def _append_journaled(con, entry: dict) -> int:
    return _append_journaled_many(con, [entry])[0]


def _append_journaled_many(con, entries: list[dict]) -> list[int]:
    # The anchor file goes beside the database being written (the connection's, whichever process flushes).
    if store.dialect(con) == "postgres":
        database = con.target
    else:
        database = con.execute("SELECT path FROM duckdb_databases() WHERE database_name = current_database()").fetchall()[0][0]
    rows, found = [], {}
    for entry in entries:
        if not _journal_signed(entry, found):
            # Not written by this product (or under a key that is lost): recorded as refused, never as the entry it claims.
            claimed = {"actor": str(entry.get("actor"))[:64], "action": str(entry.get("action"))[:64]}
            rows.append(("journal", None, "journal_refused", "denied", None, "[]",
                         json.dumps({"reason": "journaled entry not signed with the audit key", "claimed": claimed},
                                    sort_keys=True), None))
        else:
            rows.append((entry["actor"], entry["role"], entry["action"], entry["outcome"], entry["page"],
                         entry["patients"], entry["detail"], datetime.fromisoformat(entry["logged_at"])))
    return _append_many(con, database, rows)


def _journaled_entry_written(con, entry: dict) -> bool:
    return bool(con.execute(
        "SELECT count(*) FROM audit_log WHERE logged_at = ? AND actor = ? AND action = ? AND patients = ? AND detail = ?",
        [datetime.fromisoformat(entry["logged_at"]), entry["actor"], entry["action"], entry["patients"],
         entry["detail"]]).fetchall()[0][0])


store.register_journal_kind(JOURNAL_KIND, _append_journaled, _journaled_entry_written, _append_journaled_many)


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
    # The newest entry's hash (also anchored outside the database on every append).
    head_hash: str = GENESIS
    unkeyed: int = 0  # entries 1..unkeyed were written before the audit key existed (plain SHA-256)
    anchored: int | None = None  # the newest sequence number the anchor holds (None: no anchor for this file)
    note: str = ""  # what a reader should know even when the trail verifies
    anchor_file: str = ""  # where the anchor of this database file is (analytics/keys.py)

    def as_dict(self) -> dict:
        return {"ok": self.ok, "checked": self.checked, "first_bad_seq": self.first_bad_seq, "reason": self.reason,
                "head_hash": self.head_hash, "unkeyed_entries": self.unkeyed, "anchored_seq": self.anchored,
                "note": self.note, "key_dir": str(keys.key_dir()), "anchor_file": self.anchor_file}


def _rows(db) -> list[tuple] | None:
    columns = "seq, logged_at, actor, role, action, outcome, page, patients, detail, prev_hash, hash"
    try:
        with store.connect(db) as con:
            try:
                return con.execute(f"SELECT {columns}, key_id FROM audit_log ORDER BY seq").fetchall()
            except store.MissingColumn:  # a database from before the key (schema v2-v4), not yet migrated
                return [(*row, None) for row in con.execute(f"SELECT {columns} FROM audit_log ORDER BY seq").fetchall()]
    except store.MissingTable:
        return None


def verify(db: str | os.PathLike | None = None) -> Verification:
    """Recompute the chain (HMAC under the audit key; plain SHA-256 before the key existed) and compare
    it with the anchor kept outside the database; report the first entry edited, removed, inserted,
    downgraded or cut off. Entries still in the store's journal are chained first."""
    path = store.db_path(db)
    store.flush_journal(path, wait=1.0)
    return replace(_verify(path), anchor_file=str(keys.anchor_path(path)))


def mark_restored(db: str | os.PathLike | None = None, *, actor: str = "system", detail: dict | None = None) -> Verification:
    """After the operator restored the database file from a backup: record in its anchor, signed with the
    audit key, that the trail now ends where the backup's did, and audit the restore. The restored chain
    must verify on its own first (ValueError otherwise); entries anchored after it are reported by
    `verify` as lost with the restore, never silently forgotten."""
    path = store.db_path(db)
    chain = _verify(path, anchor=False)
    if not chain.ok:
        raise ValueError(f"the restored audit trail does not verify on its own: {chain.reason}")
    key_id, key = keys.current(KEY_NAME)
    keys.anchor_mark_restore(path, chain.checked, chain.head_hash, key_id, key)
    append(path, actor, "restore", detail={"set_back_to_entry": chain.checked, **(detail or {})})
    return verify(path)


def _verify(path, anchor: bool = True) -> Verification:
    rows = _rows(path)
    if rows is None:
        return Verification(True, 0)
    found_keys: dict[str, bytes | None] = {}
    prev, expected_seq, unkeyed, keyed_from = GENESIS, 1, 0, None
    hashes: dict[int, str] = {}
    for seq, logged_at, actor, role, action, outcome, page, patients, detail, prev_hash, digest, key_id in rows:
        if seq != expected_seq:
            return Verification(False, expected_seq - 1, expected_seq, f"entry {expected_seq} is missing (next is {seq})")
        if prev_hash != prev:
            return Verification(False, seq - 1, seq, f"entry {seq} does not follow entry {seq - 1} (an entry was removed or replaced)")
        if key_id is None:
            if keyed_from is not None:
                return Verification(False, seq - 1, seq, f"entry {seq} carries no key although entries from {keyed_from} on "
                                                         "are keyed: the trail was rewritten (downgraded)")
            if _row_hash(prev, seq, logged_at, actor, role, action, outcome, page, patients, detail) != digest:
                return Verification(False, seq - 1, seq, f"entry {seq} was changed after it was written")
            unkeyed = seq
        else:
            keyed_from = keyed_from or seq
            if key_id not in found_keys:
                found_keys[key_id] = keys.find(KEY_NAME, key_id)
            key = found_keys[key_id]
            if key is None:
                return Verification(False, seq - 1, seq, f"entry {seq} was signed with audit key {key_id}, which was not found "
                                                         f"in {keys.key_dir()}: restore it as audit-{key_id}.key "
                                                         "(docs/security.md); until then entries from here on cannot be checked")
            if _keyed_hash(key, key_id, prev, seq, logged_at, actor, role, action, outcome, page, patients, detail) != digest:
                return Verification(False, seq - 1, seq, f"entry {seq} was changed after it was written (its key does not sign it)")
        hashes[seq] = digest
        prev, expected_seq = digest, seq + 1
    last = expected_seq - 1
    if not anchor:
        return Verification(True, len(rows), head_hash=prev, unkeyed=unkeyed)
    events = keys.anchor_events(path)
    anchored: dict[int, str] = {}
    restores: list[str] = []
    for event in events or []:
        if event[0] == "entry":
            anchored[event[1]] = event[2]
            continue
        _, mark_seq, mark_hash, mark_key_id, signature = event
        if mark_key_id not in found_keys:
            found_keys[mark_key_id] = keys.find(KEY_NAME, mark_key_id)
        key = found_keys[mark_key_id]
        if key is None or not hmac.compare_digest(keys.restore_mac(key, path, mark_seq, mark_hash), signature):
            return Verification(False, last, None, f"a restore mark in the anchor file ({keys.anchor_path(path)}) is not "
                                                   f"signed by audit key {mark_key_id}: it was forged, or the key is lost",
                                prev, unkeyed)
        lost = sorted(s for s in anchored if s > mark_seq)
        for s in lost:
            del anchored[s]
        if mark_seq > 0:
            anchored[mark_seq] = mark_hash
        restores.append(f"restored from a backup: the trail was set back to entry {mark_seq}"
                        + (f" (entries {lost[0]}-{lost[-1]} of the earlier trail went with the restore)" if lost else ""))
    newest_anchored = max(anchored, default=None) if events is not None else None
    for seq, digest in sorted(anchored.items()):
        if seq > last:
            return Verification(False, last, last + 1, f"the newest entries were removed: the anchor outside the database "
                                                       f"({keys.anchor_path(path)}) holds entry {newest_anchored}, "
                                                       f"but the trail ends at entry {last}", prev, unkeyed, newest_anchored)
        if hashes[seq] != digest:
            return Verification(False, seq - 1, seq, f"entry {seq} differs from the one anchored outside the database: the "
                                                     "trail was rewritten", prev, unkeyed, newest_anchored)
    notes = list(restores)
    if unkeyed:
        sealed = f", sealed by keyed entry {unkeyed + 1}" if keyed_from else " (no keyed entry seals them yet)"
        notes.append(f"entries 1-{unkeyed} were written before the audit key existed: a plain SHA-256 chain{sealed}")
    if events is None and keyed_from is not None:
        notes.append(f"no anchor for this database file at {keys.anchor_path(path)} (copied or moved here?): "
                     "whether its newest entries were cut off cannot be told until the next entry anchors it")
    loose = keys.loose_files()
    if loose:
        notes.append("key files readable by others than their owner (chmod 600): " + ", ".join(str(p) for p in loose))
    return Verification(True, len(rows), head_hash=prev, unkeyed=unkeyed, anchored=newest_anchored, note="; ".join(notes))


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
