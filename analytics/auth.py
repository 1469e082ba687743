"""Local accounts: argon2id password hashes, lockout with backoff, inactivity-expiring sessions.

Passwords are hashed with argon2id (argon2-cffi; parameters below) and are never
stored, logged or put in an audit entry in clear. Every change to an account and
every sign-in attempt is written to the audit trail in the same transaction as the
change, so a change cannot happen unrecorded.

A `Session` lives in the dashboard's per-browser session state; `validate_session`
re-reads the account on every page run, so disabling an account, resetting its
password or changing its role ends its open sessions at their next click.
"""
from __future__ import annotations

import hashlib
import os
import re
import secrets
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone

import pandas as pd
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from . import audit, store
from .permissions import ROLES, may

USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.@-]{1,63}$")
MIN_PASSWORD = 12
MAX_PASSWORD = 1024  # argon2 would hash a megabyte happily; a sign-in form should not make it

# Lockout: the first FREE_ATTEMPTS failures in a row cost nothing, then each further
# failure locks the account for twice as long as the last, up to MAX_LOCK.
FREE_ATTEMPTS = 5
FIRST_LOCK = timedelta(seconds=30)
MAX_LOCK = timedelta(hours=1)


def idle_timeout() -> timedelta:
    """Inactivity before a session ends: $OUTCOMES_SESSION_IDLE_MINUTES, default 15."""
    text = os.environ.get("OUTCOMES_SESSION_IDLE_MINUTES", "15")
    try:
        minutes = float(text)
    except ValueError:
        raise ValueError(f"OUTCOMES_SESSION_IDLE_MINUTES must be a number of minutes, got {text!r}") from None
    if minutes <= 0:
        raise ValueError(f"OUTCOMES_SESSION_IDLE_MINUTES must be positive, got {text!r}")
    return timedelta(minutes=minutes)


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


def _fingerprint(text: str) -> str:
    """What the audit keeps of an unknown user name: it may be a mistyped password."""
    return hashlib.sha256((text or "").encode("utf-8", "replace")).hexdigest()[:12]


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

def authenticate(db, username: str, password: str, *, page: str | None = "login", now: datetime | None = None) -> Session:
    """Check a sign-in; returns a new Session or raises SignInFailed with a message safe to show."""
    now = now or _now()
    generic = "Sign-in failed: unknown user name or wrong password."
    try:
        name = check_username(username)
    except UserError:
        name = None
    if not isinstance(password, str) or not password or len(password) > MAX_PASSWORD:
        password = ""
    # The failure is recorded (counter, lock, audit) and committed before it is raised:
    # raising inside the transaction would roll the record back.
    refusal: SignInFailed | None = None
    with store.transaction(db) as con:
        user = _user_row(con, name) if name else None
        if user is None or user["password_hash"] is None:
            _verify_quietly(_DUMMY_HASH, password or "x")
            audit.append(db, "unknown" if user is None else name, "sign_in_failed", outcome="failed", page=page,
                         detail={"reason": "unknown user" if user is None else "no local password",
                                 "attempted": _fingerprint(username)}, con=con)
            refusal = SignInFailed(generic)
        elif user["locked_until"] is not None and user["locked_until"] > now:
            wait = user["locked_until"] - now
            audit.append(db, name, "sign_in_failed", role=user["role"], outcome="denied", page=page,
                         detail={"reason": "locked"}, con=con)
            refusal = SignInFailed(f"Too many failed sign-ins: this account is locked for another "
                                   f"{_human(wait)}. Try again later or ask an administrator.", wait)
        else:
            good = bool(password) and _verify_quietly(user["password_hash"], password)
            if good and user["disabled"]:
                audit.append(db, name, "sign_in_failed", role=user["role"], outcome="denied", page=page,
                             detail={"reason": "disabled"}, con=con)
                refusal = SignInFailed("This account is disabled. Ask an administrator.")
            elif not good:
                # Counted in the database, not from the row read above: wrong passwords tried at once on
                # two servers (PostgreSQL) each count, the second waiting for the first's row lock.
                failures = con.execute(
                    "UPDATE users SET failed_attempts = failed_attempts + 1 WHERE username = ? RETURNING failed_attempts",
                    [name]).fetchall()[0][0]
                lock = lock_duration(failures)
                con.execute("UPDATE users SET locked_until = ? WHERE username = ?", [now + lock if lock else None, name])
                audit.append(db, name, "sign_in_failed", role=user["role"], outcome="failed", page=page,
                             detail={"reason": "wrong password", "failures": failures,
                                     "locked_seconds": int(lock.total_seconds()) if lock else 0}, con=con)
                refusal = SignInFailed(generic, lock)
            else:
                if _hasher.check_needs_rehash(user["password_hash"]):
                    con.execute("UPDATE users SET password_hash = ? WHERE username = ?", [hash_password(password), name])
                con.execute("UPDATE users SET failed_attempts = 0, locked_until = NULL, last_sign_in = ? WHERE username = ?",
                            [now, name])
                audit.append(db, name, "sign_in", role=user["role"], page=page, con=con)
    if refusal is not None:
        raise refusal
    return Session(name, user["role"], user["clinician"], user["session_epoch"], now, now)


def _human(delta: timedelta) -> str:
    seconds = max(1, int(delta.total_seconds() + 0.999))
    return f"{seconds} seconds" if seconds < 120 else f"{(seconds + 59) // 60} minutes"


def lock_duration(failures: int) -> timedelta | None:
    """How long the account locks after `failures` consecutive failures (None: not locked)."""
    if failures < FREE_ATTEMPTS:
        return None
    return min(FIRST_LOCK * (2 ** (failures - FREE_ATTEMPTS)), MAX_LOCK)


def _verify_quietly(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def validate_session(db, session: Session | None, *, page: str | None = None, now: datetime | None = None,
                     idle: timedelta | None = None) -> Session:
    """The session with `last_seen` moved to now, or SessionEnded (idle too long, account changed)."""
    if session is None:
        raise SessionEnded("Please sign in.")
    now = now or _now()
    idle = idle or idle_timeout()
    if now - session.last_seen > idle:
        raise SessionEnded(f"Your session ended after {_human(idle)} without activity. Please sign in again.")
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
        raise SessionEnded("Your account was changed or disabled since you signed in. Please sign in again.")
    return replace(session, last_seen=now)


def sign_out(db, session: Session | None, *, page: str | None = None) -> None:
    if session is not None:
        audit.append(db, session.username, "sign_out", role=session.role, page=page)


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


def _change(db, username: str, action: str, sql: str, params: list, *, actor: str, page: str | None, detail: dict | None = None):
    name = check_username(username)
    with store.transaction(db) as con:
        if _user_row(con, name) is None:
            raise UserError(f"no user {name!r}")
        con.execute(sql, [*params, name])
        audit.append(db, actor, action, page=page, detail={"user": name, **(detail or {})}, con=con)


def disable_user(db, username: str, *, actor: str = "system", page: str | None = None) -> None:
    """Disable an account; its open sessions end at their next page run."""
    _change(db, username, "user_disable",
            "UPDATE users SET disabled = true, session_epoch = session_epoch + 1 WHERE username = ?", [],
            actor=actor, page=page)


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
            [hash_password(password)], actor=actor, page=page)


def set_role(db, username: str, role: str, *, clinician: str | None = None, actor: str = "system",
             page: str | None = None) -> None:
    check_role(role)
    handle = (clinician or check_username(username)) if may(role, "open_caseload_records") else None
    _change(db, username, "user_set_role",
            "UPDATE users SET role = ?, clinician = ?, session_epoch = session_epoch + 1 WHERE username = ?",
            [role, handle], actor=actor, page=page, detail={"role": role, "clinician": handle})


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


# -- OpenID Connect ----------------------------------------------------------------------
# Clinics with an identity provider sign in through Streamlit's st.login (docs/security.md);
# the provider's claims arrive here. The account is matched by user name, created on first
# sign-in without a local password, and its role follows the provider's claim every time.

def oidc_settings() -> tuple[str, str]:
    """($OUTCOMES_OIDC_ROLE_CLAIM, default "role"; $OUTCOMES_OIDC_CLINICIAN_CLAIM, default "clinician")."""
    return (os.environ.get("OUTCOMES_OIDC_ROLE_CLAIM", "role"),
            os.environ.get("OUTCOMES_OIDC_CLINICIAN_CLAIM", "clinician"))


def _role_from_claim(value) -> str | None:
    values = value if isinstance(value, (list, tuple)) else [value]
    roles = {str(v).strip().lower() for v in values if str(v).strip().lower() in ROLES}
    return roles.pop() if len(roles) == 1 else None  # none, or conflicting roles: refuse


def session_from_identity(db, claims: dict, *, page: str | None = "login", now: datetime | None = None) -> Session:
    """A Session for an identity the OIDC provider vouched for; SignInFailed when its claims give no
    usable user name or exactly one role, or the account is disabled here."""
    now = now or _now()
    role_claim, clinician_claim = oidc_settings()
    raw_name = claims.get("preferred_username") or claims.get("email") or ""
    issuer = str(claims.get("iss", ""))[:200]
    try:
        name = check_username(str(raw_name))
    except UserError:
        name = None
    role = _role_from_claim(claims.get(role_claim))
    handle = str(claims.get(clinician_claim) or name or "").strip()[:64] if may(role, "open_caseload_records") else None
    refusal: SignInFailed | None = None
    with store.transaction(db) as con:
        user = _user_row(con, name) if name else None
        if name is None or role is None:
            audit.append(db, name or "unknown", "sign_in_failed", outcome="denied", page=page,
                         detail={"via": "oidc", "issuer": issuer,
                                 "reason": "no usable user name" if name is None else f"no single role in claim {role_claim!r}",
                                 **({} if name else {"attempted": _fingerprint(str(raw_name))})}, con=con)
            refusal = SignInFailed("Your identity provider did not say which role you have here "
                                   f"(claim {role_claim!r}: clinician, director or admin). Ask an administrator.")
        elif user is not None and user["disabled"]:
            audit.append(db, name, "sign_in_failed", role=user["role"], outcome="denied", page=page,
                         detail={"via": "oidc", "reason": "disabled"}, con=con)
            refusal = SignInFailed("This account is disabled. Ask an administrator.")
        else:
            if user is None:
                con.execute("INSERT INTO users (username, role, clinician, created_at, created_by) VALUES (?, ?, ?, ?, 'oidc')",
                            [name, role, handle, now])
                audit.append(db, "oidc", "user_add", page=page, detail={"user": name, "role": role, "clinician": handle,
                                                                        "issuer": issuer}, con=con)
                epoch = 0
            elif (user["role"], user["clinician"]) != (role, handle):
                con.execute("UPDATE users SET role = ?, clinician = ?, session_epoch = session_epoch + 1 WHERE username = ?",
                            [role, handle, name])
                audit.append(db, "oidc", "user_set_role", page=page,
                             detail={"user": name, "role": role, "clinician": handle, "issuer": issuer}, con=con)
                epoch = user["session_epoch"] + 1
            else:
                epoch = user["session_epoch"]
            con.execute("UPDATE users SET last_sign_in = ? WHERE username = ?", [now, name])
            audit.append(db, name, "sign_in", role=role, page=page, detail={"via": "oidc", "issuer": issuer}, con=con)
    if refusal is not None:
        raise refusal
    return Session(name, role, handle, epoch, now, now)
