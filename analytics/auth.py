"""Local accounts: argon2id password hashes, lockout with backoff, inactivity-expiring sessions.

Passwords are hashed with argon2id (argon2-cffi; parameters below) and are never
stored, logged or put in an audit entry in clear. Every change to an account and
every sign-in attempt is written to the audit trail in the same transaction as the
change, so a change cannot happen unrecorded.

A sign-in becomes a server-side session (`start_session`, analytics/sessions.py): the
browser keeps only a random token in an HttpOnly cookie, and every page run `resume`s
the session from it (or from the tab's own state), re-checking idleness and the account
(an in-process cache answers for a few seconds). Disabling an account, resetting its
password or changing its role ends its sessions on the server at once.

Failed sign-ins are throttled per (client, user name) and per client in memory
(analytics/throttle.py), and per account in the database (a slow-down across clients).
A name that exists and one that does not get the same answers and cost the same work:
one argon2 verification per attempt (against a dummy hash when there is no account to
check), none while the client is locked out, whatever the name.
"""
from __future__ import annotations

import os
import re
import secrets
import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone

import pandas as pd
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from . import audit, sessions, store, throttle
from .permissions import ROLES, may

USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.@-]{1,63}$")
MIN_PASSWORD = 12
MAX_PASSWORD = 1024  # argon2 would hash a megabyte happily; a sign-in form should not make it

# Lockout (docs/security.md). Per (client, user name), in memory: the first FREE_ATTEMPTS - 1
# failures in a row cost nothing, the next locks that client out of that name for FIRST_LOCK, and
# each further failure doubles it, up to MAX_LOCK. Per client, in memory, whatever the names: the
# same from CLIENT_FREE_ATTEMPTS failures on (forgotten after CLIENT_FORGET without a failure).
# Per account, in the database, across every client: from ACCOUNT_FREE_ATTEMPTS failures on, sign-in
# to the account pauses for ACCOUNT_FIRST_SLOWDOWN, doubling up to ACCOUNT_MAX_SLOWDOWN.
FREE_ATTEMPTS = 5
FIRST_LOCK = timedelta(seconds=30)
MAX_LOCK = timedelta(hours=1)
CLIENT_FREE_ATTEMPTS = 20
CLIENT_FIRST_LOCK = timedelta(seconds=60)
CLIENT_FORGET = timedelta(minutes=30)
ACCOUNT_FREE_ATTEMPTS = 10
ACCOUNT_FIRST_SLOWDOWN = timedelta(seconds=15)
ACCOUNT_MAX_SLOWDOWN = timedelta(minutes=5)
LOCAL_CLIENT = "local"  # the client of a sign-in from this machine (or where the runtime gives no address)

COOKIE_NAMES = sessions.COOKIE_NAMES  # the session cookie (serve.py sets it, pages read it)

GENERIC_FAILURE = ("Sign-in failed: unknown user name or wrong password. After many failed attempts on an account, "
                   "signing in to it pauses for a few minutes.")

_locked_refusals = throttle.AnonymousWrites(per_key=60.0, per_minute=600)
_throttle = throttle.SignInThrottle(
    per_name=throttle.Policy(FREE_ATTEMPTS, FIRST_LOCK, MAX_LOCK),
    per_client=throttle.Policy(CLIENT_FREE_ATTEMPTS, CLIENT_FIRST_LOCK, MAX_LOCK, forget_after=CLIENT_FORGET),
)


def _positive_setting(name: str, default: str, unit: str) -> float:
    text = os.environ.get(name, default)
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name} must be a number of {unit}, got {text!r}") from None
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {text!r}")
    return value


def idle_timeout() -> timedelta:
    """Inactivity before a session ends: $OUTCOMES_SESSION_IDLE_MINUTES, default 15."""
    return timedelta(minutes=_positive_setting("OUTCOMES_SESSION_IDLE_MINUTES", "15", "minutes"))


def session_max_age() -> timedelta:
    """The longest a session lasts, active or not: $OUTCOMES_SESSION_MAX_HOURS, default 12."""
    return timedelta(hours=_positive_setting("OUTCOMES_SESSION_MAX_HOURS", "12", "hours"))


# argon2id at the OWASP Password Storage Cheat Sheet's recommended minimum (19 MiB, 2 passes,
# 1 lane): memory-hard, and cheap enough that a sign-in does not stall the dashboard.
# Hashes made with other parameters are re-hashed at the next successful sign-in.
_hasher = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)
# Verified against when the user does not exist, so that an unknown name costs the same time.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


class AuthError(Exception):
    """A sign-in or account operation was refused; the message is safe to show."""


class SignInFailed(AuthError):
    def __init__(self, message: str, retry_after: timedelta | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class SessionEnded(AuthError):
    """The session may no longer be used: sign in again."""


class UserError(AuthError, ValueError):
    """Bad input to an account operation."""


@dataclass(frozen=True)
class Session:
    username: str
    role: str
    clinician: str | None
    epoch: int
    signed_in_at: datetime
    last_seen: datetime
    session_id: str | None = None  # the server-side session (analytics/sessions.py) once started
    via: str = "password"  # password, oidc


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def check_username(username: str) -> str:
    name = (username or "").strip().lower()
    if not USERNAME_RE.match(name):
        raise UserError("user name: 2-64 characters, lower-case letters, digits and _ . @ - only, starting with a letter or digit")
    return name


def check_password(password: str, username: str = "") -> None:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD:
        raise UserError(f"password: at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise UserError(f"password: at most {MAX_PASSWORD} characters")
    if username and username.lower() in password.lower():
        raise UserError("password: must not contain the user name")


def check_role(role: str) -> str:
    if role not in ROLES:
        raise UserError(f"role: one of {', '.join(ROLES)}, got {role!r}")
    return role


def _user_row(con, username: str) -> dict | None:
    rows = con.execute(
        "SELECT username, role, clinician, password_hash, disabled, session_epoch, failed_attempts, locked_until"
        " FROM users WHERE username = ?",
        [username],
    ).fetchall()
    if not rows:
        return None
    keys = ("username", "role", "clinician", "password_hash", "disabled", "session_epoch", "failed_attempts", "locked_until")
    return dict(zip(keys, rows[0]))


# -- sign-in ------------------------------------------------------------------------

def _place(db) -> str:
    return str(store.db_path(db).resolve())


def authenticate(db, username: str, password: str, *, page: str | None = "login", now: datetime | None = None,
                 client: str | None = None) -> Session:
    """Check a sign-in from `client` (an address; None: this machine); returns a new Session or raises
    SignInFailed with a message safe to show. Nothing derived from a name that is not an account is
    stored: the audit says "unknown", the throttle keeps an HMAC under a key of this process."""
    now = now or _now()
    client = str(client or LOCAL_CLIENT)[:64]
    try:
        name = check_username(username)
    except UserError:
        name = None
    typed = str(username or "").strip().lower()[:MAX_PASSWORD]
    if not isinstance(password, str) or not password or len(password) > MAX_PASSWORD:
        password = ""
    place = _place(db)
    wait, lock_kind = _throttle.wait(place, client, typed, now)
    # The failure is recorded (counter, lock, audit) and committed before it is raised:
    # raising inside the transaction would roll the record back.
    refusal: SignInFailed | None = None
    with store.transaction(db) as con:
        user = _user_row(con, name) if name else None
        actor, role = (name, user["role"]) if user is not None else ("unknown", None)
        if wait is not None:  # this client is locked out (of this name, or altogether)
            # Answered at once, the same way for every name (known or not), so a locked client cannot make
            # the server hash for it; recorded once a minute per client and lock, so it cannot flood the trail.
            if _locked_refusals.decide(f"{place}|{client}|{lock_kind}", time.monotonic()) == "write":
                audit.append(db, actor, "sign_in_failed", role=role, outcome="denied", page=page,
                             detail={"reason": "locked", "lock": lock_kind, "client": client}, con=con)
            where = " with this user name" if lock_kind == "name" else ""
            refusal = SignInFailed(f"Too many failed sign-ins from your computer{where}: locked for another "
                                   f"{_human(wait)}. Try again later or ask an administrator.", wait)
        elif user is None or user["password_hash"] is None or (user["locked_until"] is not None and user["locked_until"] > now):
            _verify_quietly(_DUMMY_HASH, password or "x")
            reason = ("unknown user" if user is None else "no local password" if user["password_hash"] is None
                      else "account slowed down")
            audit.append(db, actor, "sign_in_failed", role=role, outcome="failed" if reason != "account slowed down" else "denied",
                         page=page, detail={"reason": reason, "client": client}, con=con)
            refusal = SignInFailed(GENERIC_FAILURE, _throttle.failed(place, client, typed, now))
        else:
            good = bool(password) and _verify_quietly(user["password_hash"], password)
            if good and user["disabled"]:
                audit.append(db, name, "sign_in_failed", role=user["role"], outcome="denied", page=page,
                             detail={"reason": "disabled", "client": client}, con=con)
                refusal = SignInFailed("This account is disabled. Ask an administrator.")
            elif not good:
                # Counted in the database, not from the row read above: wrong passwords tried at once on
                # two servers (PostgreSQL) each count, the second waiting for the first's row lock.
                failures = con.execute(
                    "UPDATE users SET failed_attempts = failed_attempts + 1 WHERE username = ? RETURNING failed_attempts",
                    [name]).fetchall()[0][0]
                slow = account_slowdown(failures)
                con.execute("UPDATE users SET locked_until = ? WHERE username = ?", [now + slow if slow else None, name])
                lock = _throttle.failed(place, client, typed, now)
                audit.append(db, name, "sign_in_failed", role=user["role"], outcome="failed", page=page,
                             detail={"reason": "wrong password", "failures": failures, "client": client,
                                     "locked_seconds": int(lock.total_seconds()) if lock else 0,
                                     "account_slowdown_seconds": int(slow.total_seconds()) if slow else 0}, con=con)
                refusal = SignInFailed(GENERIC_FAILURE, lock)
            else:
                if _hasher.check_needs_rehash(user["password_hash"]):
                    con.execute("UPDATE users SET password_hash = ? WHERE username = ?", [hash_password(password), name])
                con.execute("UPDATE users SET failed_attempts = 0, locked_until = NULL, last_sign_in = ? WHERE username = ?",
                            [now, name])
                audit.append(db, name, "sign_in", role=user["role"], page=page, detail={"client": client}, con=con)
    if refusal is not None:
        raise refusal
    _throttle.succeeded(place, client, typed)
    return Session(name, user["role"], user["clinician"], user["session_epoch"], now, now)


def account_slowdown(failures: int) -> timedelta | None:
    """How long sign-in to an account pauses, for every client, after `failures` failures in a row."""
    return throttle.backoff(failures, ACCOUNT_FREE_ATTEMPTS, ACCOUNT_FIRST_SLOWDOWN, ACCOUNT_MAX_SLOWDOWN)


def _human(delta: timedelta) -> str:
    seconds = max(1, int(delta.total_seconds() + 0.999))
    return f"{seconds} seconds" if seconds < 120 else f"{(seconds + 59) // 60} minutes"


def lock_duration(failures: int) -> timedelta | None:
    """How long a client is locked out of a user name after `failures` consecutive failures (None: not locked)."""
    return throttle.backoff(failures, FREE_ATTEMPTS, FIRST_LOCK, MAX_LOCK)


def _verify_quietly(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def validate_session(db, session: Session | None, *, page: str | None = None, now: datetime | None = None,
                     idle: timedelta | None = None) -> Session:
    """The session with `last_seen` moved to now, or SessionEnded (idle too long, account changed, ended).
    A started session (with a `session_id`) is checked on the server (`resume`)."""
    if session is None:
        raise SessionEnded("Please sign in.")
    if session.session_id is not None:
        return resume(db, session_id=session.session_id, page=page, now=now, idle=idle)
    now = now or _now()
    idle = idle or idle_timeout()
    if now - session.last_seen > idle:
        raise SessionEnded(_idle_message(idle))
    with store.connect(db) as con:
        try:
            user = _user_row(con, session.username)
        except store.MissingTable:
            user = None
    if (user is None or user["disabled"] or user["session_epoch"] != session.epoch
            or user["role"] != session.role or user["clinician"] != session.clinician):
        reason = ("removed" if user is None else "disabled" if user["disabled"] else "account changed")
        audit.append(db, session.username, "session_refused", role=session.role, outcome="denied", page=page,
                     detail={"reason": reason})
        raise SessionEnded(CHANGED_MESSAGE)
    return replace(session, last_seen=now)


CHANGED_MESSAGE = "Your account was changed or disabled since you signed in. Please sign in again."
SIGNED_OUT_MESSAGE = "You are signed out."
EXPIRED_MESSAGE = "Your session reached its time limit. Please sign in again."


def _idle_message(idle: timedelta) -> str:
    return f"Your session ended after {_human(idle)} without activity. Please sign in again."


def start_session(db, session: Session, *, via: str | None = None, now: datetime | None = None) -> tuple[Session, str]:
    """Make a signed-in Session a server-side one: (the session with its id, a one-time claim code the
    browser trades for its cookie within sessions.CLAIM_SECONDS, `claim_session`)."""
    now = now or _now()
    via = via or session.via
    with store.transaction(db) as con:
        session_id, code = sessions.create(con, session.username, session.epoch, via, now)
    return replace(session, session_id=session_id, via=via, last_seen=now), code


def claim_session(db, code: str, *, now: datetime | None = None) -> str | None:
    """The cookie token for a claim code (once, unexpired, live session), or None."""
    claimed = sessions.claim(db, str(code or ""), now or _now())
    return claimed[0] if claimed else None


def resume(db, *, session_id: str | None = None, token: str | None = None, page: str | None = None,
           now: datetime | None = None, idle: timedelta | None = None, touch: bool = True) -> Session:
    """The live server-side session named by `session_id` (the tab's own) or by a cookie's `token`
    (a reload, a new tab), or SessionEnded. An idle session, or one whose account was disabled or
    changed, is ended on the server here. `touch=False` checks without counting as activity (the
    page's idle watch). Answered from this process's cache for sessions.cache_seconds()."""
    now = now or _now()
    idle = idle or idle_timeout()
    if session_id is None:
        session_id = sessions.session_id_for_token(db, str(token or ""))
    row = sessions.lookup(db, session_id) if session_id else None
    if row is None:
        raise SessionEnded("Please sign in.")
    if row["ended_at"] is not None:
        raise SessionEnded({"signed out": SIGNED_OUT_MESSAGE, "idle": _idle_message(idle),
                            "expired": EXPIRED_MESSAGE}.get(row["end_reason"], CHANGED_MESSAGE))
    if now - row["last_seen"] > idle:
        if sessions.end(db, session_id, "idle", now):
            audit.append(db, row["username"], "sign_out", role=row["role"], page=page, detail={"reason": "idle"})
        raise SessionEnded(_idle_message(idle))
    if now - row["created_at"] > session_max_age():
        if sessions.end(db, session_id, "expired", now):
            audit.append(db, row["username"], "sign_out", role=row["role"], page=page, detail={"reason": "expired"})
        raise SessionEnded(EXPIRED_MESSAGE)
    if row["user_epoch"] is None or row["disabled"] or row["user_epoch"] != row["epoch"]:
        reason = "removed" if row["user_epoch"] is None else "disabled" if row["disabled"] else "account changed"
        if sessions.end(db, session_id, reason, now):
            audit.append(db, row["username"], "session_refused", role=row["role"], outcome="denied", page=page,
                         detail={"reason": reason})
        raise SessionEnded(CHANGED_MESSAGE)
    if touch:
        sessions.touch(db, session_id, now)
    return Session(row["username"], row["role"], row["clinician"], row["epoch"], row["created_at"],
                   now if touch else row["last_seen"], session_id, row["via"])


def sign_out(db, session: Session | None, *, page: str | None = None) -> None:
    """Sign out: the server-side session ends (its cookie no longer works anywhere) and it is audited."""
    if session is None:
        return
    ended = True
    if session.session_id is not None:
        ended = sessions.end(db, session.session_id, "signed out", _now())
    if ended:
        audit.append(db, session.username, "sign_out", role=session.role, page=page)


def sign_out_token(db, token: str, *, page: str | None = None) -> bool:
    """Sign out the session a cookie's token names (the server's sign-out route); True if one ended."""
    session_id = sessions.session_id_for_token(db, str(token or ""))
    row = sessions.lookup(db, session_id) if session_id else None
    if row is None or not sessions.end(db, session_id, "signed out", _now()):
        return False
    audit.append(db, row["username"], "sign_out", role=row["role"], page=page, detail={"via": "cookie"})
    return True


# -- account management --------------------------------------------------------------

def create_user(db, username: str, role: str, password: str | None, *, clinician: str | None = None,
                actor: str = "system", page: str | None = None) -> str:
    """Add an account. A clinician's caseload is the patients filed under `clinician` (default: the user name).

    `password=None` creates an account that can only sign in through the identity provider.
    """
    name = check_username(username)
    check_role(role)
    if password is not None:
        check_password(password, name)
    handle = (clinician or name).strip() if may(role, "open_caseload_records") else None
    with store.transaction(db) as con:
        if _user_row(con, name) is not None:
            raise UserError(f"user {name!r} already exists")
        try:
            con.execute(
                "INSERT INTO users (username, role, clinician, password_hash, created_at, created_by) VALUES (?, ?, ?, ?, ?, ?)",
                [name, role, handle, hash_password(password) if password is not None else None, _now(), actor],
            )
        except store.Conflict:  # another server added it since the check above (PostgreSQL)
            raise UserError(f"user {name!r} already exists") from None
        audit.append(db, actor, "user_add", page=page, detail={"user": name, "role": role, "clinician": handle}, con=con)
    return name


def _change(db, username: str, action: str, sql: str, params: list, *, actor: str, page: str | None,
            detail: dict | None = None, ends_sessions: str | None = None):
    """Change an account; `ends_sessions` (a reason) ends its server-side sessions in the same transaction."""
    name = check_username(username)
    with store.transaction(db) as con:
        if _user_row(con, name) is None:
            raise UserError(f"no user {name!r}")
        con.execute(sql, [*params, name])
        if ends_sessions:
            sessions.end_all(con, db, name, ends_sessions, _now())
        audit.append(db, actor, action, page=page, detail={"user": name, **(detail or {})}, con=con)
    sessions.forget_user(db, name)


def disable_user(db, username: str, *, actor: str = "system", page: str | None = None) -> None:
    """Disable an account; its open sessions end at their next page run."""
    _change(db, username, "user_disable",
            "UPDATE users SET disabled = true, session_epoch = session_epoch + 1 WHERE username = ?", [],
            actor=actor, page=page, ends_sessions="disabled")


def enable_user(db, username: str, *, actor: str = "system", page: str | None = None) -> None:
    _change(db, username, "user_enable",
            "UPDATE users SET disabled = false, failed_attempts = 0, locked_until = NULL WHERE username = ?", [],
            actor=actor, page=page)


def reset_password(db, username: str, password: str, *, actor: str = "system", page: str | None = None) -> None:
    """Set a new password, clear any lockout and end the account's open sessions."""
    name = check_username(username)
    check_password(password, name)
    _change(db, name, "user_reset_password",
            "UPDATE users SET password_hash = ?, failed_attempts = 0, locked_until = NULL,"
            " session_epoch = session_epoch + 1 WHERE username = ?",
            [hash_password(password)], actor=actor, page=page, ends_sessions="password reset")


def set_role(db, username: str, role: str, *, clinician: str | None = None, actor: str = "system",
             page: str | None = None) -> None:
    check_role(role)
    handle = (clinician or check_username(username)) if may(role, "open_caseload_records") else None
    _change(db, username, "user_set_role",
            "UPDATE users SET role = ?, clinician = ?, session_epoch = session_epoch + 1 WHERE username = ?",
            [role, handle], actor=actor, page=page, detail={"role": role, "clinician": handle},
            ends_sessions="role changed")


def grant_patient(db, username: str, patient_id: str, *, actor: str = "system", reason: str = "",
                  page: str | None = None) -> None:
    """Let `username` open one patient's record (a director's or admin's drill-down, or cover for a colleague)."""
    name = check_username(username)
    pid = str(patient_id).strip()
    if not pid:
        raise UserError("patient id: required")
    with store.transaction(db) as con:
        if _user_row(con, name) is None:
            raise UserError(f"no user {name!r}")
        if not con.execute("SELECT count(*) FROM patients WHERE patient_id = ?", [pid]).fetchall()[0][0]:
            raise UserError(f"no patient {pid!r}")
        con.execute(
            "INSERT INTO patient_grants (username, patient_id, granted_by, granted_at, reason) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (username, patient_id) DO NOTHING",
            [name, pid, actor, _now(), reason or None],
        )
        audit.append(db, actor, "grant_patient", page=page, patients=[pid], detail={"user": name, "reason": reason}, con=con)


def revoke_patient(db, username: str, patient_id: str, *, actor: str = "system", page: str | None = None) -> None:
    name = check_username(username)
    with store.transaction(db) as con:
        con.execute("DELETE FROM patient_grants WHERE username = ? AND patient_id = ?", [name, str(patient_id)])
        audit.append(db, actor, "revoke_patient", page=page, patients=[str(patient_id)], detail={"user": name}, con=con)


def list_users(db) -> pd.DataFrame:
    """Accounts without their hashes, with the number of patient grants each holds."""
    columns = ["username", "role", "clinician", "disabled", "locked_until", "failed_attempts",
               "created_at", "created_by", "last_sign_in", "grants", "local_password"]
    try:
        with store.connect(db) as con:
            return con.execute(
                """SELECT u.username, u.role, u.clinician, u.disabled, u.locked_until, u.failed_attempts,
                          u.created_at, u.created_by, u.last_sign_in,
                          (SELECT count(*) FROM patient_grants g WHERE g.username = u.username) AS grants,
                          u.password_hash IS NOT NULL AS local_password
                   FROM users u ORDER BY u.username"""
            ).df()[columns]
    except store.MissingTable:
        return pd.DataFrame(columns=columns)


def generate_password() -> str:
    return secrets.token_urlsafe(15)  # 20 characters, 120 bits


# -- demo ------------------------------------------------------------------------------

DEMO_ACCOUNTS = (("dr_okafor", "clinician"), ("dr_haddad", "clinician"), ("director", "director"), ("admin", "admin"))


def is_demo_database(db) -> bool:
    """True only when every import batch in the file came from the demo generator."""
    with store.connect(db) as con:
        rows = con.execute("SELECT count(*), count(*) FILTER (WHERE source <> 'demo') FROM import_batches").fetchall()
    total, other = rows[0]
    return total > 0 and other == 0


def disable_demo_accounts(con, db, *, actor: str = "import", page: str | None = None) -> list[str]:
    """Disable every enabled demo account (made by `create_demo_accounts`), on `con`: the transaction of
    the first import of real data into the database, which must not stay reachable with demo passwords."""
    try:
        names = [r[0] for r in con.execute(
            "SELECT username FROM users WHERE created_by = 'demo' AND NOT disabled ORDER BY username").fetchall()]
    except store.MissingTable:
        return []
    now = _now()
    for name in names:
        con.execute("UPDATE users SET disabled = true, session_epoch = session_epoch + 1 WHERE username = ?", [name])
        sessions.end_all(con, db, name, "disabled", now)
        audit.append(db, actor, "user_disable", page=page,
                     detail={"user": name, "reason": "demo account disabled at the first import of real data"}, con=con)
    return names


def create_demo_accounts(db) -> list[tuple[str, str, str]]:
    """Accounts for each role on a demo database, with fresh random passwords: [(user, role, password)].

    Refuses any database holding real imports (a real database never gets default
    passwords) and does nothing when accounts already exist.
    """
    store.initialise(db)
    if not is_demo_database(db):
        raise UserError("demo accounts are only created on a database holding nothing but demo data")
    if len(list_users(db)):
        return []
    made = []
    for name, role in DEMO_ACCOUNTS:
        password = generate_password()
        create_user(db, name, role, password, actor="demo")
        made.append((name, role, password))
    return made


# -- break glass --------------------------------------------------------------------------
# An administrator sees de-identified data only. A break-glass grant, given by the operator at the
# command line with a reason and an expiry, lets one administrator take the identifiable export and
# read rejected import rows in full from the dashboard until it expires or is ended; both ends audited.

BREAK_GLASS_MAX_HOURS = 24
MIN_REASON = 10


def grant_break_glass(db, username: str, reason: str, *, hours: float = 4, actor: str = "system",
                      page: str | None = None, now: datetime | None = None) -> datetime:
    """Give `username` (an account whose role may hold one) a break-glass grant; returns when it expires."""
    name = check_username(username)
    reason = " ".join(str(reason or "").split())
    if len(reason) < MIN_REASON:
        raise UserError(f"reason: at least {MIN_REASON} characters saying why identifiable data are needed")
    hours = float(hours)
    if not 0 < hours <= BREAK_GLASS_MAX_HOURS:
        raise UserError(f"hours: more than 0 and at most {BREAK_GLASS_MAX_HOURS}")
    now = now or _now()
    expires = now + timedelta(hours=hours)
    with store.transaction(db) as con:
        user = _user_row(con, name)
        if user is None:
            raise UserError(f"no user {name!r}")
        if not may(user["role"], "break_glass"):
            raise UserError(f"a {user['role']} cannot hold a break-glass grant (administrators only)")
        con.execute("UPDATE break_glass SET ended_at = ? WHERE username = ? AND ended_at IS NULL", [now, name])
        grant_id = con.execute(
            "INSERT INTO break_glass (username, reason, granted_by, granted_at, expires_at) VALUES (?, ?, ?, ?, ?)"
            " RETURNING grant_id", [name, reason[:500], actor, now, expires]).fetchall()[0][0]
        audit.append(db, actor, "break_glass_grant", page=page,
                     detail={"user": name, "grant": grant_id, "reason": reason[:500], "expires_at": expires.isoformat()},
                     con=con)
    return expires


def end_break_glass(db, username: str, *, actor: str = "system", page: str | None = None) -> bool:
    """End a user's break-glass grant before it expires; True if one was active."""
    name = check_username(username)
    now = _now()
    with store.transaction(db) as con:
        ended = con.execute("UPDATE break_glass SET ended_at = ? WHERE username = ? AND ended_at IS NULL AND expires_at > ?"
                            " RETURNING grant_id", [now, name, now]).fetchall()
        if ended:
            audit.append(db, actor, "break_glass_end", page=page, detail={"user": name, "grant": ended[0][0]}, con=con)
    return bool(ended)


@dataclass(frozen=True)
class BreakGlass:
    grant_id: int
    username: str
    reason: str
    granted_by: str
    expires_at: datetime


def active_break_glass(db, username: str, *, now: datetime | None = None) -> BreakGlass | None:
    """The user's live break-glass grant, or None (expired, ended, none, or a role that cannot hold one)."""
    now = now or _now()
    try:
        with store.connect(db) as con:
            rows = con.execute(
                """SELECT g.grant_id, g.username, g.reason, g.granted_by, g.expires_at, u.role FROM break_glass g
                   JOIN users u ON u.username = g.username
                   WHERE g.username = ? AND g.ended_at IS NULL AND g.expires_at > ? AND NOT u.disabled
                   ORDER BY g.granted_at DESC LIMIT 1""", [str(username), now]).fetchall()
    except (*store.MissingTable, FileNotFoundError):
        return None
    if not rows or not may(rows[0][5], "break_glass"):
        return None
    return BreakGlass(*rows[0][:5])


# -- OpenID Connect ----------------------------------------------------------------------
# Clinics with an identity provider sign in through Streamlit's st.login (docs/security.md);
# the provider's claims arrive here. An identity is the pair (issuer, subject), bound to one
# local account in oidc_identities: at its first sign-in to a new account made for it (whose role
# then follows the provider's claim), or by an administrator's link to an existing account (whose
# role is then managed here, never by the claims). A claimed name that is already an account
# here is never taken over; an e-mail is a user name only when the provider verified it.

def oidc_settings() -> tuple[str, str]:
    """($OUTCOMES_OIDC_ROLE_CLAIM, default "role"; $OUTCOMES_OIDC_CLINICIAN_CLAIM, default "clinician")."""
    return (os.environ.get("OUTCOMES_OIDC_ROLE_CLAIM", "role"),
            os.environ.get("OUTCOMES_OIDC_CLINICIAN_CLAIM", "clinician"))


def _role_from_claim(value) -> str | None:
    values = value if isinstance(value, (list, tuple)) else [value]
    roles = {str(v).strip().lower() for v in values if str(v).strip().lower() in ROLES}
    return roles.pop() if len(roles) == 1 else None  # none, or conflicting roles: refuse


def _name_from_claims(claims: dict) -> tuple[str | None, str]:
    """(user name, why there is none): preferred_username, else an e-mail the provider verified."""
    raw = claims.get("preferred_username")
    if not raw and claims.get("email"):
        verified = claims.get("email_verified")
        if not (verified is True or str(verified).strip().lower() == "true"):
            return None, "email not verified"
        raw = claims.get("email")
    try:
        return check_username(str(raw or "")), ""
    except UserError:
        return None, "no usable user name"


_OIDC_REFUSALS = {
    "no issuer or subject": "Your identity provider did not say who you are (issuer and subject). Ask an administrator.",
    "email not verified": "Your identity provider has not verified your e-mail address, so it cannot be your user name "
                          "here. Ask an administrator.",
    "no usable user name": "Your identity provider gave no user name this dashboard can use. Ask an administrator.",
    "disabled": "This account is disabled. Ask an administrator.",
    "linked account removed": "The account your identity was linked to no longer exists. Ask an administrator.",
}


def session_from_identity(db, claims: dict, *, page: str | None = "login", now: datetime | None = None) -> Session:
    """A Session for an identity the OIDC provider vouched for; SignInFailed (a message safe to show) when
    the claims name no (issuer, subject), no usable name or not exactly one role, when the claimed name is
    an account here not linked to this identity, or when the account is disabled."""
    now = now or _now()
    role_claim, clinician_claim = oidc_settings()
    issuer = str(claims.get("iss") or "")[:200]
    subject = str(claims.get("sub") or "")[:200]
    claimed_role = _role_from_claim(claims.get(role_claim))
    name, name_problem = _name_from_claims(claims)
    refusal: SignInFailed | None = None
    where = {"via": "oidc", "issuer": issuer, "subject": subject}

    def refuse(con, reason: str, actor: str = "unknown", role: str | None = None, message: str | None = None):
        audit.append(db, actor, "sign_in_failed", role=role, outcome="denied", page=page,
                     detail={**where, "reason": reason}, con=con)
        return SignInFailed(message or _OIDC_REFUSALS.get(reason, "Sign-in through your identity provider was refused. "
                                                                  "Ask an administrator."))

    no_role = (f"Your identity provider did not say which role you have here (claim {role_claim!r}: clinician, "
               "director or admin). Ask an administrator.")
    with store.transaction(db) as con:
        bound = con.execute("SELECT username, linked_by FROM oidc_identities WHERE issuer = ? AND subject = ?",
                            [issuer, subject]).fetchall() if issuer and subject else []
        user = _user_row(con, bound[0][0]) if bound else None
        if not issuer or not subject:
            refusal = refuse(con, "no issuer or subject")
        elif bound and user is None:
            refusal = refuse(con, "linked account removed")
        elif bound and user["disabled"]:
            refusal = refuse(con, "disabled", user["username"], user["role"])
        elif bound and bound[0][1] != "oidc":  # an administrator linked it to an account managed here
            name, role, handle, epoch = user["username"], user["role"], user["clinician"], user["session_epoch"]
        elif claimed_role is None:
            refusal = refuse(con, f"no single role in claim {role_claim!r}", user["username"] if user else "unknown",
                             message=no_role)
        elif bound:  # an account this identity made: its role follows the provider
            name = user["username"]
            role = claimed_role
            handle = str(claims.get(clinician_claim) or name).strip()[:64] if may(role, "open_caseload_records") else None
            epoch = user["session_epoch"]
            if (user["role"], user["clinician"]) != (role, handle):
                con.execute("UPDATE users SET role = ?, clinician = ?, session_epoch = session_epoch + 1 WHERE username = ?",
                            [role, handle, name])
                sessions.end_all(con, db, name, "role changed", now)
                audit.append(db, "oidc", "user_set_role", page=page,
                             detail={"user": name, "role": role, "clinician": handle, "issuer": issuer}, con=con)
                epoch += 1
        elif name is None:
            refusal = refuse(con, name_problem)
        elif _user_row(con, name) is not None:  # never take over an account by its name
            refusal = refuse(con, "name belongs to an account not linked to this identity", message=(
                f"An account named {name!r} already exists here and is not linked to your identity provider's "
                "account. Ask an administrator to link them (python -m analytics users link-oidc)."))
        else:
            role = claimed_role
            handle = str(claims.get(clinician_claim) or name).strip()[:64] if may(role, "open_caseload_records") else None
            con.execute("INSERT INTO users (username, role, clinician, created_at, created_by) VALUES (?, ?, ?, ?, 'oidc')",
                        [name, role, handle, now])
            con.execute("INSERT INTO oidc_identities (issuer, subject, username, linked_by, linked_at) VALUES (?, ?, ?, 'oidc', ?)",
                        [issuer, subject, name, now])
            audit.append(db, "oidc", "user_add", page=page, detail={"user": name, "role": role, "clinician": handle,
                                                                    "issuer": issuer, "subject": subject}, con=con)
            epoch = 0
        if refusal is None:
            con.execute("UPDATE users SET last_sign_in = ? WHERE username = ?", [now, name])
            audit.append(db, name, "sign_in", role=role, page=page, detail=where, con=con)
    if refusal is not None:
        raise refusal
    sessions.forget_user(db, name)
    return Session(name, role, handle, epoch, now, now, via="oidc")


def link_identity(db, username: str, issuer: str, subject: str, *, actor: str = "system", page: str | None = None) -> None:
    """Bind an identity provider's account (issuer, subject) to an existing account here (an administrator's
    decision): that identity then signs in as the account, whose role stays managed here."""
    name = check_username(username)
    issuer, subject = str(issuer or "").strip(), str(subject or "").strip()
    if not issuer or not subject or len(issuer) > 200 or len(subject) > 200:
        raise UserError("issuer and subject: required, at most 200 characters each (the provider's iss and sub claims)")
    with store.transaction(db) as con:
        if _user_row(con, name) is None:
            raise UserError(f"no user {name!r}")
        taken = con.execute("SELECT username FROM oidc_identities WHERE issuer = ? AND subject = ?", [issuer, subject]).fetchall()
        if taken:
            raise UserError(f"this identity is already linked to {taken[0][0]!r}: unlink it first")
        con.execute("INSERT INTO oidc_identities (issuer, subject, username, linked_by, linked_at) VALUES (?, ?, ?, ?, ?)",
                    [issuer, subject, name, actor, _now()])
        audit.append(db, actor, "user_link_oidc", page=page, detail={"user": name, "issuer": issuer, "subject": subject},
                     con=con)


def unlink_identity(db, issuer: str, subject: str, *, actor: str = "system", page: str | None = None) -> None:
    """Remove a binding; the account's open sessions end (it may have been reached only through it)."""
    with store.transaction(db) as con:
        rows = con.execute("DELETE FROM oidc_identities WHERE issuer = ? AND subject = ? RETURNING username",
                           [str(issuer), str(subject)]).fetchall()
        if not rows:
            raise UserError("no such linked identity")
        name = rows[0][0]
        con.execute("UPDATE users SET session_epoch = session_epoch + 1 WHERE username = ?", [name])
        sessions.end_all(con, db, name, "identity unlinked", _now())
        audit.append(db, actor, "user_unlink_oidc", page=page, detail={"user": name, "issuer": issuer, "subject": subject},
                     con=con)
