"""The dashboard's pages on PostgreSQL (AppTest), kept lean: every page once for each role that may
open it, read from one copy of the demo clinic in the session's cluster, and the write paths a clinic
network relies on (a patient's self-report raising a safety flag, a clinician acknowledging it).

The pages' figures and their variations are tested on DuckDB files (tests/test_pages_*.py); the frames
behind them are the same on both backends (tests/test_postgres.py); visit entry on the patient page
runs on both backends in tests/test_visits.py."""
from __future__ import annotations

from urllib.parse import parse_qs, urlparse

import pytest

from analytics import audit, selfreport
from analytics.access import SYSTEM, DataAccess
from tests.conftest import ROOT

PID = "P00003"  # a patient of the demo clinic with a full course


@pytest.fixture(scope="module")
def network_clinic(pg_databases, _demo_postgres_template):
    """One copy of the demo clinic on PostgreSQL for this module's page renders (pages write audit entries,
    so never the template itself)."""
    db = pg_databases.lasting_copy_of(_demo_postgres_template)
    yield db
    pg_databases.drop(db)


@pytest.fixture()
def on_postgres(network_clinic, open_page, monkeypatch):
    monkeypatch.setenv("OUTCOMES_DB", str(network_clinic))
    return open_page


def _as(monkeypatch, role: str, clinician: str = "") -> None:
    monkeypatch.setenv("OUTCOMES_ROLE", role)
    monkeypatch.setenv("OUTCOMES_CLINICIAN", clinician)


def _problems(at) -> list[str]:
    """Tracebacks (a page run directly, not through dashboard.py's notice, shows them as exceptions)."""
    return [str(e.value) for e in at.exception]


def test_every_page_renders_for_each_role_that_may_open_it(on_postgres, network_clinic, demo_db, monkeypatch, text_of):
    patients = DataAccess(network_clinic).patients()
    clinician = patients.loc[patients["patient_id"] == PID, "clinician"].iloc[0]
    on_duckdb = DataAccess(demo_db).patients()
    assert patients.equals(on_duckdb)  # the same demo clinic on both backends

    _as(monkeypatch, "clinician", clinician)
    due = on_postgres("due")
    assert not _problems(due) and due.title[0].value == "Due list"
    listed = set(due.dataframe[0].value["patient_id"])
    assert listed and listed <= set(patients.loc[patients["clinician"] == clinician, "patient_id"])  # their caseload
    page = on_postgres("patient", patient=PID)
    assert not _problems(page) and PID in text_of(page)
    assert "Record a visit" in [s.value for s in page.subheader]  # the entry forms are drawn from the store

    _as(monkeypatch, "director")
    cohort = on_postgres("cohort")
    assert not _problems(cohort) and cohort.metric and cohort.get("plotly_chart")
    durability = on_postgres("durability")
    assert not _problems(durability) and durability.get("plotly_chart")

    _as(monkeypatch, "admin")
    for name, title in (("data", "Data"), ("admin_users", "Users"), ("audit_log", "Audit trail"), ("health", "Health")):
        at = on_postgres(name)
        assert not at.exception and title in [t.value for t in at.title], (name, _problems(at))
    password = network_clinic.url.split("@")[0].rsplit(":", 1)[-1]
    commands = "\n".join(c.value for c in at.code)  # the health page's backup and restore commands
    assert "pg_dump" in commands and password not in commands + text_of(at)
    method = on_postgres("method")
    assert not _problems(method) and method.table


def test_a_self_report_raises_a_flag_and_a_clinician_acknowledges_it_on_the_patient_page(
        on_postgres, network_clinic, monkeypatch, text_of):
    # The same database as the renders (a second copy would build the pages' tables again): whichever
    # runs first, neither looks at what the other wrote (page views, this patient's flag).
    from streamlit.testing.v1 import AppTest

    db = network_clinic
    token = parse_qs(urlparse(selfreport.create_link(db, SYSTEM, PID, "PHQ-9").url).query)["token"][0]
    form = AppTest.from_file(str(ROOT / "pages" / "self_report.py"), default_timeout=120)
    form.query_params["token"] = token
    form.run()
    for radio in form.radio:
        if not radio.label.endswith("(optional)"):
            radio.set_value(2 if ":PHQ-9:9" in radio.key else 1)
    form.button[0].click().run()
    assert not form.exception and "988" in form.error[0].value  # the crisis resources
    assert selfreport.open_flags(db, SYSTEM)["patient_id"].tolist() == [PID]

    clinician = DataAccess(db).patients().set_index("patient_id").loc[PID, "clinician"]
    _as(monkeypatch, "clinician", clinician)
    page = on_postgres("patient", patient=PID)
    assert any("Safety flag" in e.value for e in page.error)
    next(t for t in page.text_input if t.key.startswith("ack_note:")).input("called, safe")
    next(b for b in page.button if b.label == "Acknowledge").click().run()
    assert not page.exception and "Safety flag acknowledged" in text_of(page), _problems(page)
    assert selfreport.open_flags(db, SYSTEM).empty
    actions = audit.entries(db)["action"].tolist()
    assert [a for a in actions if a.startswith(("self_report", "safety"))] == [
        "self_report_link", "self_report_open", "self_report_submit", "safety_flag_raise", "safety_flag_ack"]
    assert audit.verify(db).ok


def test_a_database_server_that_cannot_be_reached_is_a_notice_without_the_password(open_page, monkeypatch):
    from tests.conftest import free_port

    monkeypatch.setenv("OUTCOMES_DB", f"postgresql://clinic:s3cret-pw@127.0.0.1:{free_port()}/outcomes")
    for role, sees in (("admin", "Cannot use the PostgreSQL server at 127.0.0.1:"), ("director", "Tell an administrator")):
        _as(monkeypatch, role)
        at = open_page("dashboard")
        shown = "\n".join(str(e.value) for kind in ("error", "warning", "info") for e in getattr(at, kind))
        assert not at.exception and "The database server cannot be reached" in shown and sees in shown, shown
        assert "s3cret-pw" not in shown + "\n".join(c.value for c in at.code)
