"""Attacks on sign-in (issue 13, points 6, 7 and 8; issue 14, point 1 on the server side):
account enumeration through the lockout, one client locking every account, a distributed guess,
OpenID Connect claims taking over local accounts, demo accounts surviving a real import, and
server-side sessions that a sign-out or an account change must end."""
from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from analytics import audit, auth, ingest, store

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct horse battery"
T0 = datetime(2026, 11, 27, 9, 0, 0)


@pytest.fixture()
def accounts(writable_db):
    for name, role in [("dr_okafor", "clinician"), ("director", "director"), ("admin", "admin")]:
        auth.create_user(writable_db, name, role, PASSWORD, actor="test")
    return writable_db


def _attempt(db, user, password, now, client):
    """What the person at `client` sees: (message, retry_after), or 'signed in'."""
    try:
        auth.authenticate(db, user, password, now=now, client=client)
    except auth.SignInFailed as exc:
        return str(exc), exc.retry_after
    return "signed in", None


# -- point 8: lockout -------------------------------------------------------------------------

def test_known_and_unknown_names_get_the_same_answers_all_the_way_to_the_lock(accounts):
    known = [_attempt(accounts, "admin", f"guess {i}", T0, "10.0.0.7") for i in range(8)]
    unknown = [_attempt(accounts, "nobody_here", f"guess {i}", T0, "10.0.0.8") for i in range(8)]
    assert known == unknown
    assert known[auth.FREE_ATTEMPTS - 1][1] == auth.FIRST_LOCK  # both locked after the same attempt


def test_a_name_that_exists_costs_the_same_work_as_one_that_does_not(accounts, monkeypatch):
    calls = []
    real = auth._hasher

    class Counting:
        def __getattr__(self, name):
            return getattr(real, name)

        def verify(self, hashed, password):
            calls.append(hashed)
            return real.verify(hashed, password)

    monkeypatch.setattr(auth, "_hasher", Counting())
    work = {}
    for user, client in [("nobody_here", "10.0.0.9"), ("admin", "10.0.0.10")]:
        work[user] = []
        for i in range(auth.FREE_ATTEMPTS + 2):  # the last ones arrive while locked out
            calls.clear()
            _attempt(accounts, user, f"guess {i}", T0, client)
            work[user].append(len(calls))
    assert work["nobody_here"] == work["admin"]
    assert work["admin"][:auth.FREE_ATTEMPTS] == [1] * auth.FREE_ATTEMPTS  # argon2 once per attempt (a dummy hash for nobody)
    assert work["admin"][auth.FREE_ATTEMPTS:] == [0, 0]  # a locked-out client costs no hashing, whatever the name
    # an account slowed down for every client still costs one hash, as an unknown name does
    for i in range(auth.ACCOUNT_FREE_ATTEMPTS):
        _attempt(accounts, "director", f"guess {i}", T0, f"192.0.2.{i + 1}")
    for user in ("director", "nobody_at_all"):
        calls.clear()
        _attempt(accounts, user, "a fresh guess", T0, "198.51.100.200")
        assert len(calls) == 1, user


def test_one_client_cannot_lock_an_account_for_everyone(accounts):
    for i in range(auth.FREE_ATTEMPTS + 1):
        _attempt(accounts, "admin", f"guess {i}", T0, "203.0.113.5")
    assert "locked" in _attempt(accounts, "admin", PASSWORD, T0, "203.0.113.5")[0]
    assert _attempt(accounts, "admin", PASSWORD, T0, "198.51.100.20")[0] == "signed in"


def test_one_client_guessing_many_names_is_stopped_not_the_accounts(accounts):
    for i in range(auth.CLIENT_FREE_ATTEMPTS + 1):
        _attempt(accounts, f"user{i:03d}", "guess guess guess", T0, "203.0.113.66")
    message, wait = _attempt(accounts, "dr_okafor", PASSWORD, T0, "203.0.113.66")
    assert "locked" in message and wait is not None
    assert _attempt(accounts, "dr_okafor", PASSWORD, T0, "198.51.100.1")[0] == "signed in"


def test_an_account_guessed_from_many_clients_is_slowed_down_for_all(accounts):
    for i in range(auth.ACCOUNT_FREE_ATTEMPTS):
        _attempt(accounts, "admin", f"guess {i}", T0, f"192.0.2.{i + 1}")
    # even the right password from a fresh client waits, with the same answer as a wrong one
    assert _attempt(accounts, "admin", PASSWORD, T0, "198.51.100.77")[0] == _attempt(
        accounts, "ghost_user", PASSWORD, T0, "198.51.100.78")[0]
    assert _attempt(accounts, "admin", PASSWORD, T0 + auth.ACCOUNT_MAX_SLOWDOWN, "198.51.100.79")[0] == "signed in"


# -- issue 14 point 1: server-side sessions ------------------------------------------------------

def test_a_session_survives_only_through_its_token_and_ends_on_the_server(accounts):
    signed = auth.authenticate(accounts, "dr_okafor", PASSWORD)
    session, code = auth.start_session(accounts, signed)
    token = auth.claim_session(accounts, code)
    assert token and auth.claim_session(accounts, code) is None  # the code works once
    again = auth.resume(accounts, token=token)  # a reload or a new tab: only the cookie's token
    assert (again.username, again.session_id) == ("dr_okafor", session.session_id)
    with store.connect(accounts) as con:
        stored = str(con.execute("SELECT * FROM session_tokens").fetchall() + con.execute("SELECT * FROM sessions").fetchall())
    assert token not in stored and code not in stored
    auth.sign_out(accounts, again)
    with pytest.raises(auth.SessionEnded):
        auth.resume(accounts, token=token)
    with pytest.raises(auth.SessionEnded):
        auth.resume(accounts, session_id=session.session_id)


def test_an_expired_claim_code_or_a_forged_token_gets_nothing(accounts):
    signed = auth.authenticate(accounts, "dr_okafor", PASSWORD)
    _, code = auth.start_session(accounts, signed)
    assert auth.claim_session(accounts, code, now=datetime.now() + timedelta(hours=1)) is None
    for forged in ["", "x" * 43, "' OR 1=1 --", "a" * 5000]:
        with pytest.raises(auth.SessionEnded):
            auth.resume(accounts, token=forged)


def test_an_idle_session_ends_on_the_server(accounts):
    signed = auth.authenticate(accounts, "dr_okafor", PASSWORD)
    session, code = auth.start_session(accounts, signed, now=T0)
    token = auth.claim_session(accounts, code, now=T0)
    auth.resume(accounts, token=token, now=T0 + timedelta(minutes=10), idle=timedelta(minutes=15))
    with pytest.raises(auth.SessionEnded, match="without activity"):
        auth.resume(accounts, token=token, now=T0 + timedelta(minutes=26), idle=timedelta(minutes=15))
    with pytest.raises(auth.SessionEnded):  # and stays ended, even if activity were claimed again
        auth.resume(accounts, token=token, now=T0 + timedelta(minutes=26, seconds=1), idle=timedelta(hours=5))


def test_watching_for_idleness_is_not_activity(accounts):
    signed = auth.authenticate(accounts, "dr_okafor", PASSWORD)
    session, _ = auth.start_session(accounts, signed, now=T0)
    idle = timedelta(minutes=15)
    for minutes in (5, 10, 14):
        auth.resume(accounts, session_id=session.session_id, now=T0 + timedelta(minutes=minutes), idle=idle, touch=False)
    with pytest.raises(auth.SessionEnded):
        auth.resume(accounts, session_id=session.session_id, now=T0 + timedelta(minutes=16), idle=idle, touch=False)


@pytest.mark.parametrize("change", [
    lambda db: auth.disable_user(db, "dr_okafor", actor="admin"),
    lambda db: auth.reset_password(db, "dr_okafor", "a brand new passphrase", actor="admin"),
    lambda db: auth.set_role(db, "dr_okafor", "director", actor="admin"),
])
def test_an_account_change_ends_its_server_sessions_at_once(accounts, change):
    signed = auth.authenticate(accounts, "dr_okafor", PASSWORD)
    session, code = auth.start_session(accounts, signed)
    token = auth.claim_session(accounts, code)
    auth.resume(accounts, token=token)  # cached now
    change(accounts)
    with pytest.raises(auth.SessionEnded, match="sign in again"):
        auth.resume(accounts, token=token)


def test_a_change_made_by_another_process_ends_sessions_within_the_cache_lifetime(accounts, monkeypatch):
    monkeypatch.setenv("OUTCOMES_SESSION_CACHE_SECONDS", "0.2")
    signed = auth.authenticate(accounts, "dr_okafor", PASSWORD)
    session, _ = auth.start_session(accounts, signed)
    auth.resume(accounts, session_id=session.session_id)
    with store.transaction(accounts) as con:  # as another server process would
        con.execute("UPDATE users SET disabled = true, session_epoch = session_epoch + 1 WHERE username = 'dr_okafor'")
    import time
    time.sleep(0.3)
    with pytest.raises(auth.SessionEnded):
        auth.resume(accounts, session_id=session.session_id)


# -- point 6: OpenID Connect -----------------------------------------------------------------------

def test_provider_claims_cannot_take_over_or_rewrite_a_local_account(accounts):
    claims = {"iss": "https://idp.example", "sub": "attacker-1", "preferred_username": "admin", "role": "clinician"}
    with pytest.raises(auth.SignInFailed, match="administrator"):
        auth.session_from_identity(accounts, claims)
    users = auth.list_users(accounts).set_index("username")
    assert users.loc["admin", "role"] == "admin"
    last = audit.entries(accounts).iloc[-1]
    assert (last["action"], last["outcome"]) == ("sign_in_failed", "denied")


def test_unverified_email_is_not_a_user_name(accounts):
    with pytest.raises(auth.SignInFailed, match="verified"):
        auth.session_from_identity(accounts, {"iss": "https://idp", "sub": "9", "email": "eve@clinic.org",
                                              "email_verified": False, "role": "director"})
    assert "eve@clinic.org" not in set(auth.list_users(accounts)["username"])


def test_the_account_is_bound_to_issuer_and_subject(accounts):
    first = auth.session_from_identity(accounts, {"iss": "https://idp", "sub": "42", "preferred_username": "amira",
                                                  "role": "director"})
    assert first.username == "amira"
    # the same name from another subject (or another issuer) is someone else: refused
    for other in [{"iss": "https://idp", "sub": "43"}, {"iss": "https://other-idp", "sub": "42"}]:
        with pytest.raises(auth.SignInFailed):
            auth.session_from_identity(accounts, {**other, "preferred_username": "amira", "role": "director"})
    # the bound subject signs in even under a new name
    renamed = auth.session_from_identity(accounts, {"iss": "https://idp", "sub": "42", "preferred_username": "amira.k",
                                                    "role": "director"})
    assert renamed.username == "amira"
    with pytest.raises(auth.SignInFailed):  # no subject, no binding
        auth.session_from_identity(accounts, {"iss": "https://idp", "preferred_username": "zed", "role": "director"})


def test_an_admin_link_lets_an_identity_use_a_local_account_without_changing_its_role(accounts):
    result = subprocess.run([sys.executable, "-m", "analytics", "users", "link-oidc", "admin", "--issuer", "https://idp",
                             "--subject", "boss-1", "--db", str(accounts)], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    session = auth.session_from_identity(accounts, {"iss": "https://idp", "sub": "boss-1", "preferred_username": "x",
                                                    "role": "clinician"})
    assert (session.username, session.role) == ("admin", "admin")
    assert auth.list_users(accounts).set_index("username").loc["admin", "role"] == "admin"
    linked = audit.entries(accounts, action="user_link_oidc").iloc[-1]
    assert linked["detail"]["user"] == "admin" and linked["detail"]["subject"] == "boss-1"


# -- point 7: demo accounts -----------------------------------------------------------------------

def test_the_first_real_import_disables_the_demo_accounts_and_says_so(writable_db, tmp_path):
    made = auth.create_demo_accounts(writable_db)
    user, _, password = made[0]
    auth.authenticate(writable_db, user, password)
    patients = tmp_path / "patients.csv"
    patients.write_text("patient_id,site,clinician,birth_year,sex,diagnosis,comorbidities,prior_failed_trials,enrolled_on\n"
                        "R0001,North,dr_real,1970,F,TRD,,2,2025-01-02\n")
    result = subprocess.run([sys.executable, "-m", "analytics", "import", str(patients), "--json", "--db", str(writable_db)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    report = json.loads(result.stdout)
    assert sorted(report["demo_accounts_disabled"]) == sorted(name for name, _, _ in made)
    plain = ingest.import_files([patients], db=writable_db)  # a second import: nothing left to disable
    assert plain.demo_accounts_disabled == []
    with pytest.raises(auth.SignInFailed, match="disabled"):
        auth.authenticate(writable_db, user, password)
    text = subprocess.run([sys.executable, "-m", "analytics", "import", str(patients), "--db", str(writable_db)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert text.returncode == 0
    disabled = audit.entries(writable_db, action="user_disable")
    assert set(disabled["detail"].map(lambda d: d["user"])) == {name for name, _, _ in made}


def test_a_fresh_import_message_names_the_disabled_demo_accounts(writable_db, tmp_path):
    auth.create_demo_accounts(writable_db)
    patients = tmp_path / "p.csv"
    patients.write_text("patient_id,site,clinician,enrolled_on\nR0002,North,dr_real,2025-01-02\n")
    report = ingest.import_files([patients], db=writable_db)
    assert any("demo accounts" in line and "disabled" in line for line in report.messages())
