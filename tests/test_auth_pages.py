"""Sign-in through the dashboard itself (Streamlit AppTest, no patching of the session):
the form, role navigation, expiry, disabled accounts, URL and search attacks, admin pages.

Helper for other page tests: tests/conftest.py `signed_in_as_test_role` runs pages as the role
named by OUTCOMES_ROLE without the form; these tests are the ones that go through it.
"""
from __future__ import annotations

import pytest

from analytics import audit, auth, sessions, store
from tests.conftest import shown as reader_sees

PASSWORD = "correct horse battery"


@pytest.fixture()
def clinic(writable_db, monkeypatch):
    monkeypatch.setenv("OUTCOMES_DB", str(writable_db))
    monkeypatch.setenv("OUTCOMES_TODAY", "2026-11-21")
    for name, role in [("dr_okafor", "clinician"), ("director", "director"), ("admin", "admin")]:
        auth.create_user(writable_db, name, role, PASSWORD, actor="test")
    with store.connect(writable_db) as con:
        rows = con.execute("SELECT clinician, min(patient_id) FROM patients GROUP BY 1").fetchall()
    return writable_db, dict(rows)


def _app():
    from streamlit.testing.v1 import AppTest

    from tests.conftest import ROOT
    return AppTest.from_file(str(ROOT / "dashboard.py"), default_timeout=180)


def _sign_in(user: str, password: str = PASSWORD):
    at = _app().run()
    assert [t.value for t in at.title] == ["Sign in"]
    at.text_input[0].input(user)
    at.text_input[1].input(password)
    at.button[0].click().run()
    return at


def _texts(at) -> str:
    return "\n".join(str(e.value) for kind in ("title", "error", "warning", "info", "success")
                     for e in getattr(at, kind))


def test_nobody_signed_in_gets_only_the_sign_in_page(clinic):
    _, first = clinic
    at = _app()
    at.query_params["patient"] = first["dr_okafor"]
    at.run()
    assert [t.value for t in at.title] == ["Sign in"]
    assert not at.metric and not at.dataframe
    # a page script run directly still refuses without a session
    from streamlit.testing.v1 import AppTest

    from tests.conftest import ROOT
    page = AppTest.from_file(str(ROOT / "pages/patient.py"), default_timeout=180)
    page.query_params["patient"] = first["dr_okafor"]
    page.run()
    assert "Please sign in" in _texts(page) and not page.metric


def test_wrong_password_shows_a_clear_message_and_is_audited(clinic):
    db, _ = clinic
    at = _sign_in("dr_okafor", "not the password")
    assert "unknown user name or wrong password" in _texts(at)
    assert "auth_session" not in at.session_state
    last = audit.entries(db).iloc[-1]
    assert (last["actor"], last["action"], last["page"]) == ("dr_okafor", "sign_in_failed", "login")


def test_clinician_signs_in_and_cannot_open_another_caseload_by_url(clinic):
    db, first = clinic
    at = _sign_in("dr_okafor")
    assert isinstance(at.session_state["auth_session"], auth.Session)
    theirs = first["dr_haddad"]
    at.query_params["patient"] = theirs
    at.switch_page("pages/patient.py").run()
    assert not at.exception
    assert "No patient in your caseload" in _texts(at) and not at.metric
    last = audit.entries(db).iloc[-1]
    assert (last["actor"], last["action"], last["outcome"], last["patients"]) == (
        "dr_okafor", "search_patients", "denied", [theirs])
    # their own patient opens, and the view is in the audit trail
    at.text_input[0].input(first["dr_okafor"]).run()
    assert at.metric
    views = audit.entries(db, action="view_patient")
    assert views.iloc[-1][["actor", "outcome"]].tolist() == ["dr_okafor", "ok"]
    assert views.iloc[-1]["patients"] == [first["dr_okafor"]]


def test_clinician_cannot_use_admin_pages_even_by_switching_to_them(clinic):
    at = _sign_in("dr_okafor")
    at.switch_page("pages/admin_users.py").run()
    assert "Only administrators" in _texts(at) and not at.dataframe
    at.switch_page("pages/audit_log.py").run()
    assert "Only administrators" in _texts(at) and not at.dataframe


def test_disabled_users_old_session_is_refused_at_the_next_click(clinic):
    db, _ = clinic
    at = _sign_in("dr_okafor")
    session_id = at.session_state["auth_session"].session_id
    auth.disable_user(db, "dr_okafor", actor="admin")  # ends the account's sessions on the server at once
    at.switch_page("pages/due.py").run()
    assert "sign in again" in _texts(at) and not at.dataframe
    assert "auth_session" not in at.session_state
    assert audit.entries(db).iloc[-1][["actor", "action"]].tolist() == ["admin", "user_disable"]
    with store.connect(db) as con:
        ended = con.execute("SELECT end_reason FROM sessions WHERE session_id = ?", [session_id]).fetchall()
    assert ended == [("disabled",)]


def test_idle_session_expires(clinic):
    db, _ = clinic
    at = _sign_in("dr_okafor")
    session_id = at.session_state["auth_session"].session_id
    with store.transaction(db) as con:  # the last activity 16 minutes ago, as the server knows it
        con.execute("UPDATE sessions SET last_seen = last_seen - INTERVAL 16 MINUTE WHERE session_id = ?", [session_id])
    sessions.forget(db, session_id)
    at.switch_page("pages/due.py").run()
    assert "without activity" in _texts(at) and not at.dataframe
    with store.connect(db) as con:
        assert con.execute("SELECT end_reason FROM sessions WHERE session_id = ?", [session_id]).fetchall() == [("idle",)]


def test_admin_adds_a_user_and_reads_the_audit_trail(clinic):
    db, _ = clinic
    at = _sign_in("admin")
    at.switch_page("pages/admin_users.py").run()
    assert not at.exception
    form_inputs = at.text_input
    form_inputs[0].input("nurse_lee")
    form_inputs[1].input("dr_osei")
    form_inputs[2].input("a long enough passphrase")
    form_inputs[3].input("a long enough passphrase")
    next(b for b in at.button if b.label == "Add account").click().run()
    assert "Added nurse_lee" in reader_sees(_texts(at))
    assert "nurse_lee" in auth.list_users(db)["username"].tolist()
    added = audit.entries(db, action="user_add").iloc[-1]
    assert (added["actor"], added["page"], added["detail"]["user"]) == ("admin", "users", "nurse_lee")
    at.switch_page("pages/audit_log.py").run()
    assert not at.exception
    shown = at.dataframe[0].value
    assert "user_add" in set(shown["action"])
    assert list(shown["seq"]) == sorted(shown["seq"], reverse=True)  # newest first
    assert shown["action"].iloc[0] == "user_add"  # the entry just made is at the top
    assert audit.entries(db).iloc[-1][["actor", "action"]].tolist() == ["admin", "view_audit"]


def test_director_cannot_reach_identifiable_rows(clinic):
    db, first = clinic
    at = _sign_in("director")
    at.query_params["patient"] = first["dr_okafor"]
    at.switch_page("pages/patient.py").run()
    assert not at.metric and not at.dataframe
    # a director holds no grant: the patient page does not open for them at all (analytics/permissions.py)
    assert "Your role does not open this page." in _texts(at)
    assert first["dr_okafor"] not in _texts(at)
