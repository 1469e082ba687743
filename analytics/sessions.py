"""Server-side sessions: the table behind a signed-in browser, and a short in-process cache of it.

A sign-in creates a `sessions` row (a random session id, never sent to the browser) and a
one-time claim code; the browser trades the code, once and within CLAIM_SECONDS, for a random
token set as an HttpOnly cookie by the server's own route (serve.py). Only SHA-256 digests of
codes and tokens are stored. Every page run asks `lookup` for the session: the answer is
cached in this process for CACHE_SECONDS, so a rerun costs no database round trip; a sign-out
or an account change made in this process drops the cached answer at once, one made in another
process is seen within CACHE_SECONDS. Activity (`last_seen`) is kept in memory and written to
the table at most every TOUCH_SECONDS, so other processes see it that late at worst.

analytics/auth.py decides what a row means (idle, account changed); this module only stores.
"""
from __future__ import annotations

import hashlib
import os
import secrets
import threading
import time
from datetime import datetime, timedelta


from . import store, throttle

CLAIM_SECONDS = 120
TOKEN_BYTES = 32
# The cookie holding the token: under the __Host- prefix over HTTPS (bound to the exact host, Secure,
# Path=/), plain over HTTP on this machine. serve.py sets it; pages read it from st.context.cookies.
COOKIE_NAMES = ("__Host-outcomes_session", "outcomes_session")


def cache_seconds() -> float:
    """How long a validated session is trusted without asking the database ($OUTCOMES_SESSION_CACHE_SECONDS, 5)."""
    try:
        return max(0.0, float(os.environ.get("OUTCOMES_SESSION_CACHE_SECONDS", "5")))
    except ValueError:
        return 5.0


TOUCH_SECONDS = 30.0

_lock = threading.Lock()
_rows: dict[tuple[str, str], tuple[float, dict | None]] = {}  # (db, session id) -> (fetched at, row)
_tokens: dict[tuple[str, str], tuple[float, str | None]] = {}  # (db, token digest) -> (fetched at, session id)
_seen: dict[tuple[str, str], datetime] = {}  # (db, session id) -> latest activity known here
_written: dict[tuple[str, str], datetime] = {}  # (db, session id) -> last_seen as last written

_COLUMNS = ("session_id", "username", "epoch", "via", "created_at", "last_seen", "ended_at", "end_reason",
            "role", "clinician", "user_epoch", "disabled")
_SELECT = """SELECT s.session_id, s.username, s.epoch, s.via, s.created_at, s.last_seen, s.ended_at, s.end_reason,
                    u.role, u.clinician, u.session_epoch, u.disabled
             FROM sessions s LEFT JOIN users u ON u.username = s.username"""


def digest(secret: str) -> str:
    return hashlib.sha256((secret or "").encode("utf-8", "replace")).hexdigest()


def _key(db) -> str:
    return str(store.db_path(db).resolve())


def create(con, username: str, epoch: int, via: str, now: datetime) -> tuple[str, str]:
    """A new session row on `con` (an open write transaction): (session id, one-time claim code)."""
    session_id = secrets.token_hex(16)
    code = secrets.token_urlsafe(TOKEN_BYTES)
    con.execute("INSERT INTO sessions (session_id, username, epoch, via, created_at, last_seen) VALUES (?, ?, ?, ?, ?, ?)",
                [session_id, username, int(epoch), via, now, now])
    con.execute("INSERT INTO session_claims (claim_sha256, session_id, expires_at) VALUES (?, ?, ?)",
                [digest(code), session_id, now + timedelta(seconds=CLAIM_SECONDS)])
    return session_id, code


# Claims arrive from anyone who can reach the server; each costs a write: at most this many a minute.
_claims = throttle.AnonymousWrites(per_key=0.0, per_minute=240)


def claim(db, code: str, now: datetime) -> tuple[str, str] | None:
    """Trade a claim code (once, before it expires, for a live session) for (token, session id)."""
    if not code or len(code) > 200 or _claims.decide(secrets.token_hex(8), time.monotonic()) != "write":
        return None
    with store.transaction(db) as con:
        rows = con.execute(
            "DELETE FROM session_claims WHERE claim_sha256 = ? RETURNING session_id, expires_at", [digest(code)]).fetchall()
        if not rows or rows[0][1] <= now:
            return None
        session_id = rows[0][0]
        live = con.execute("SELECT count(*) FROM sessions WHERE session_id = ? AND ended_at IS NULL", [session_id]).fetchall()
        if not live[0][0]:
            return None
        token = secrets.token_urlsafe(TOKEN_BYTES)
        con.execute("INSERT INTO session_tokens (token_sha256, session_id, issued_at) VALUES (?, ?, ?)",
                    [digest(token), session_id, now])
        # claims nobody traded (a tab closed at once) would pile up: clear the expired ones
        con.execute("DELETE FROM session_claims WHERE expires_at <= ?", [now])
    return token, session_id


def _fetch(db, where: str, params: list) -> dict | None:
    try:
        with store.connect(db) as con:
            rows = con.execute(f"{_SELECT} {where}", params).fetchall()
    except (*store.MissingTable, FileNotFoundError):
        return None
    return dict(zip(_COLUMNS, rows[0])) if rows else None


def session_id_for_token(db, token: str) -> str | None:
    """The session a cookie's token belongs to (cached), or None."""
    if not token or len(token) > 200:
        return None
    key = (_key(db), digest(token))
    with _lock:
        cached = _tokens.get(key)
    if cached and time.monotonic() - cached[0] < cache_seconds():
        return cached[1]
    row = _fetch(db, "JOIN session_tokens t ON t.session_id = s.session_id WHERE t.token_sha256 = ?", [key[1]])
    session_id = row["session_id"] if row else None
    with _lock:
        _tokens[key] = (time.monotonic(), session_id)
        if row:
            _rows[(key[0], session_id)] = (time.monotonic(), row)
    return session_id


def lookup(db, session_id: str) -> dict | None:
    """The session joined with its account (role, clinician, epoch, disabled), from this process's cache
    when younger than `cache_seconds()`; `last_seen` is the latest activity known here."""
    key = (_key(db), session_id)
    with _lock:
        cached = _rows.get(key)
    if cached is None or time.monotonic() - cached[0] >= cache_seconds():
        row = _fetch(db, "WHERE s.session_id = ?", [session_id])
        with _lock:
            _rows[key] = cached = (time.monotonic(), row)
    row = cached[1]
    if row is None:
        return None
    with _lock:
        seen = _seen.get(key)
    if seen is not None and seen > row["last_seen"]:
        row = {**row, "last_seen": seen}
    return row


def touch(db, session_id: str, now: datetime) -> None:
    """Record activity: in memory now, in the table when the last write is TOUCH_SECONDS old."""
    key = (_key(db), session_id)
    with _lock:
        _seen[key] = max(now, _seen.get(key, now))
        written = _written.get(key)
        due = written is None or (now - written).total_seconds() >= TOUCH_SECONDS
        if due:
            _written[key] = now
    if due:
        # A write in passing: never waits for another writer (an import); journaled then, and applied in
        # any order, since the update only ever moves last_seen forward.
        store.write_or_journal(db, TOUCH_KIND, {"session_id": session_id, "last_seen": now.isoformat()})


TOUCH_KIND = "session_touch"


def _apply_touch(con, payload: dict) -> None:
    con.execute("UPDATE sessions SET last_seen = greatest(last_seen, ?) WHERE session_id = ?",
                [datetime.fromisoformat(payload["last_seen"]), payload["session_id"]])


store.register_journal_kind(TOUCH_KIND, _apply_touch)


def end(db, session_id: str, reason: str, now: datetime, *, con=None) -> bool:
    """End a session on the server (sign-out, idle, account change); True if it was still live.
    This process forgets it at once."""
    forget(db, session_id)
    sql = "UPDATE sessions SET ended_at = ?, end_reason = ? WHERE session_id = ? AND ended_at IS NULL RETURNING session_id"
    if con is not None:
        return bool(con.execute(sql, [now, reason, session_id]).fetchall())
    with store.transaction(db) as own:
        return bool(own.execute(sql, [now, reason, session_id]).fetchall())


def end_all(con, db, username: str, reason: str, now: datetime) -> None:
    """End every live session of an account, on `con` (the transaction that changes the account)."""
    con.execute("UPDATE sessions SET ended_at = ?, end_reason = ? WHERE username = ? AND ended_at IS NULL",
                [now, reason, username])
    forget_user(db, username)


def forget(db, session_id: str) -> None:
    key = (_key(db), session_id)
    with _lock:
        _rows.pop(key, None)
        _seen.pop(key, None)
        _written.pop(key, None)
        for token_key in [k for k, (_, sid) in _tokens.items() if k[0] == key[0] and sid == session_id]:
            _tokens.pop(token_key, None)


def forget_user(db, username: str) -> None:
    """Drop this process's cached sessions of one account (it was just changed here)."""
    place = _key(db)
    with _lock:
        gone = [k for k, (_, row) in _rows.items() if k[0] == place and row and row["username"] == username]
    for key in gone:
        forget(db, key[1])
