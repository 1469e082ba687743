"""Sign-in, lockout, sessions and account management (docs/security.md)."""
from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from analytics import audit, auth, store
from fixtures import new_db

pytestmark = pytest.mark.usefixtures("backend")  # every test on a DuckDB file and on PostgreSQL

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct horse battery"
T0 = datetime(2026, 11, 27, 9, 0, 0)


@pytest.fixture()
def accounts(writable_db):
    auth.create_user(writable_db, "dr_okafor", "clinician", PASSWORD, actor="test")
    auth.create_user(writable_db, "director", "director", PASSWORD, actor="test")
    return writable_db


def test_password_is_stored_only_as_an_argon2id_hash(accounts):
    with store.connect(accounts) as con:
        stored = con.execute("SELECT password_hash FROM users WHERE username = 'dr_okafor'").fetchall()[0][0]
        everything = str(con.execute("SELECT * FROM audit_log").fetchall())
    assert stored.startswith("$argon2id$")
    assert PASSWORD not in stored and PASSWORD not in everything
    assert "password_hash" not in auth.list_users(accounts).columns


def test_sign_in_returns_a_session_with_role_and_caseload(accounts):
    session = auth.authenticate(accounts, "DR_OKAFOR ", PASSWORD, now=T0)
    assert (session.username, session.role, session.clinician) == ("dr_okafor", "clinician", "dr_okafor")
    last = audit.entries(accounts).iloc[-1]
    assert (last["actor"], last["action"], last["outcome"]) == ("dr_okafor", "sign_in", "ok")


@pytest.mark.parametrize("user, password", [
    ("dr_okafor", "wrong password!!"),
    ("nobody", PASSWORD),
    ("' OR 1=1 --", "' OR '1'='1"),
    ("dr_okafor'; DROP TABLE users; --", PASSWORD),
    ("", ""),
])
def test_failed_sign_in_is_refused_with_one_message_and_audited(accounts, user, password):
    with pytest.raises(auth.SignInFailed, match="unknown user name or wrong password"):
        auth.authenticate(accounts, user, password, now=T0)
    last = audit.entries(accounts).iloc[-1]
    assert last["action"] == "sign_in_failed" and last["outcome"] in ("failed", "denied")
    # what was typed as a user name may be a password: only a fingerprint of unknown names is kept
    assert user == "dr_okafor" or user not in str(last["detail"]) or user == ""
    assert len(auth.list_users(accounts)) == 2  # the injection strings changed nothing


def test_brute_force_locks_the_account_with_growing_backoff(accounts):
    for attempt in range(auth.FREE_ATTEMPTS - 1):
        with pytest.raises(auth.SignInFailed) as failed:
            auth.authenticate(accounts, "dr_okafor", f"guess number {attempt}", now=T0)
        assert failed.value.retry_after is None
    with pytest.raises(auth.SignInFailed) as failed:
        auth.authenticate(accounts, "dr_okafor", "one guess too many", now=T0)
    assert failed.value.retry_after == auth.FIRST_LOCK
    # the right password does not help while locked
    with pytest.raises(auth.SignInFailed, match="locked"):
        auth.authenticate(accounts, "dr_okafor", PASSWORD, now=T0 + auth.FIRST_LOCK / 2)
    # after the lock, another wrong guess locks for twice as long
    with pytest.raises(auth.SignInFailed) as failed:
        auth.authenticate(accounts, "dr_okafor", "still guessing", now=T0 + auth.FIRST_LOCK + timedelta(seconds=1))
    assert failed.value.retry_after == 2 * auth.FIRST_LOCK
    later = T0 + timedelta(hours=2)
    assert auth.authenticate(accounts, "dr_okafor", PASSWORD, now=later).username == "dr_okafor"
    # success clears the counter
    assert auth.list_users(accounts).set_index("username").loc["dr_okafor", "failed_attempts"] == 0
    failures = audit.entries(accounts, action="sign_in_failed")
    assert set(failures["outcome"]) == {"failed", "denied"}
    assert len(failures) == auth.FREE_ATTEMPTS + 2


def test_lock_duration_is_capped():
    assert auth.lock_duration(auth.FREE_ATTEMPTS - 1) is None
    assert auth.lock_duration(auth.FREE_ATTEMPTS + 40) == auth.MAX_LOCK


def test_session_expires_after_inactivity_not_while_active(accounts):
    session = auth.authenticate(accounts, "dr_okafor", PASSWORD, now=T0)
    idle = timedelta(minutes=15)
    still = auth.validate_session(accounts, session, now=T0 + timedelta(minutes=14), idle=idle)
    still = auth.validate_session(accounts, still, now=T0 + timedelta(minutes=28), idle=idle)
    assert still.last_seen == T0 + timedelta(minutes=28)
    with pytest.raises(auth.SessionEnded, match="without activity"):
        auth.validate_session(accounts, still, now=T0 + timedelta(minutes=44), idle=idle)


def test_idle_timeout_is_configurable(monkeypatch):
    assert auth.idle_timeout() == timedelta(minutes=15)
    monkeypatch.setenv("OUTCOMES_SESSION_IDLE_MINUTES", "5")
    assert auth.idle_timeout() == timedelta(minutes=5)
    monkeypatch.setenv("OUTCOMES_SESSION_IDLE_MINUTES", "soon")
    with pytest.raises(ValueError, match="OUTCOMES_SESSION_IDLE_MINUTES"):
        auth.idle_timeout()


@pytest.mark.parametrize("change", [
    lambda db: auth.disable_user(db, "dr_okafor", actor="admin"),
    lambda db: auth.reset_password(db, "dr_okafor", "a brand new passphrase", actor="admin"),
    lambda db: auth.set_role(db, "dr_okafor", "director", actor="admin"),
])
def test_an_old_session_ends_when_the_account_changes(accounts, change):
    session = auth.authenticate(accounts, "dr_okafor", PASSWORD, now=T0)
    change(accounts)
    with pytest.raises(auth.SessionEnded, match="sign in again"):
        auth.validate_session(accounts, session, now=T0 + timedelta(minutes=1))
    last = audit.entries(accounts).iloc[-1]
    assert (last["actor"], last["action"], last["outcome"]) == ("dr_okafor", "session_refused", "denied")


def test_disabled_user_cannot_sign_in_and_enable_restores(accounts):
    auth.disable_user(accounts, "dr_okafor", actor="admin")
    with pytest.raises(auth.SignInFailed, match="disabled"):
        auth.authenticate(accounts, "dr_okafor", PASSWORD, now=T0)
    auth.enable_user(accounts, "dr_okafor", actor="admin")
    assert auth.authenticate(accounts, "dr_okafor", PASSWORD, now=T0).role == "clinician"


def test_weak_or_bad_account_input_is_refused_with_a_reason(accounts):
    with pytest.raises(auth.UserError, match="at least 12"):
        auth.create_user(accounts, "newbie", "admin", "short")
    with pytest.raises(auth.UserError, match="user name"):
        auth.create_user(accounts, "Robert'); DROP TABLE users;--", "admin", PASSWORD)
    with pytest.raises(auth.UserError, match="role"):
        auth.create_user(accounts, "newbie", "superuser", PASSWORD)
    with pytest.raises(auth.UserError, match="already exists"):
        auth.create_user(accounts, "dr_okafor", "admin", PASSWORD)
    with pytest.raises(auth.UserError, match="no user"):
        auth.disable_user(accounts, "ghost")
    assert sorted(auth.list_users(accounts)["username"]) == ["director", "dr_okafor"]


def test_every_account_change_is_audited_with_who_did_it(accounts, demo_db):
    auth.grant_patient(accounts, "director", _some_patient(accounts), actor="admin", reason="case review")
    auth.disable_user(accounts, "director", actor="admin")
    actions = audit.entries(accounts, actor="admin")["action"].tolist()
    assert actions == ["grant_patient", "user_disable"]
    assert audit.entries(accounts, action="user_add")["actor"].tolist() == ["test", "test"]


def _some_patient(db) -> str:
    with store.connect(db) as con:
        return con.execute("SELECT min(patient_id) FROM patients").fetchall()[0][0]


def test_demo_accounts_only_on_demo_data_and_only_once(writable_db, tmp_path):
    made = auth.create_demo_accounts(writable_db)
    assert {role for _, role, _ in made} == set(auth.ROLES)
    assert len({password for _, _, password in made}) == len(made)  # random, not a default
    for user, _, password in made:
        assert auth.authenticate(writable_db, user, password).username == user
    assert auth.create_demo_accounts(writable_db) == []
    real = new_db(tmp_path, "real.duckdb")
    store.initialise(real)
    with store.transaction(real) as con:
        con.execute("INSERT INTO import_batches (source, file_name, sha256) VALUES ('csv', 'clinic.csv', 'x')")
    with pytest.raises(auth.UserError, match="only created on a database holding nothing but demo data"):
        auth.create_demo_accounts(real)
    assert auth.list_users(real).empty


def _cli(*args, stdin: str | None = None):
    return subprocess.run([sys.executable, "-m", "analytics", *args], cwd=ROOT, input=stdin,
                          capture_output=True, text=True, timeout=120)


def test_users_cli_add_list_disable_reset(writable_db):
    db = str(writable_db)
    added = _cli("users", "add", "nurse_lee", "--role", "clinician", "--clinician", "dr_osei",
                 "--password-stdin", "--db", db, stdin=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    assert PASSWORD not in added.stdout + added.stderr
    listed = _cli("users", "list", "--json", "--db", db)
    rows = {r["username"]: r for r in __import__("json").loads(listed.stdout)}
    assert rows["nurse_lee"]["clinician"] == "dr_osei" and "password_hash" not in rows["nurse_lee"]
    assert auth.authenticate(writable_db, "nurse_lee", PASSWORD).clinician == "dr_osei"
    assert _cli("users", "reset-password", "nurse_lee", "--password-stdin", "--db", db,
                stdin="another long passphrase\n").returncode == 0
    assert auth.authenticate(writable_db, "nurse_lee", "another long passphrase").username == "nurse_lee"
    assert _cli("users", "--db", db, "disable", "nurse_lee").returncode == 0
    with pytest.raises(auth.SignInFailed):
        auth.authenticate(writable_db, "nurse_lee", "another long passphrase")
    refused = _cli("users", "add", "x", "--role", "admin", "--password-stdin", "--db", db, stdin="short\n")
    assert refused.returncode == 2 and "user name" in refused.stderr


def test_users_cli_takes_no_password_on_the_command_line():
    result = _cli("users", "add", "someone", "--role", "admin", "--password", "hunter2hunter2")
    assert result.returncode == 2 and "unrecognized arguments" in result.stderr
