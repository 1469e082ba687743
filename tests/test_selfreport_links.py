"""Self-report links point at the address patients use (issue 14, major 2).

One rule for the page and the command line: --base-url, else $OUTCOMES_BASE_URL, else the address
the clinician's browser used, else localhost on $PORT, which only that computer can open (so the
page shows no QR code for it unless asked). Chromium checks of the page: tests/test_browser_clinician.py.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from analytics import selfreport, store
from analytics.access import SYSTEM, DataAccess

ROOT = Path(__file__).resolve().parent.parent
PAGES = ("patient", "due", "login")


@pytest.fixture()
def no_address_settings(monkeypatch):
    monkeypatch.delenv(selfreport.BASE_URL_ENV, raising=False)
    monkeypatch.delenv(selfreport.PORT_ENV, raising=False)


@pytest.mark.parametrize("url, headers, expected", [
    ("http://192.168.1.20:8501/patient", {}, "http://192.168.1.20:8501"),
    ("https://outcomes.clinic.example/due", {}, "https://outcomes.clinic.example"),
    ("https://clinic.example/outcomes/patient", {}, "https://clinic.example/outcomes"),  # served under a path
    ("http://10.0.0.5:8600/", {}, "http://10.0.0.5:8600"),  # the landing page
    (None, {"Host": "10.0.0.5:8600"}, "http://10.0.0.5:8600"),
    (None, {"Host": "127.0.0.1:8501", "X-Forwarded-Host": "outcomes.clinic.example", "X-Forwarded-Proto": "https"},
     "https://outcomes.clinic.example"),
    (None, {}, None),
    ("about:blank", {}, None),
])
def test_request_address_is_the_dashboards_address_without_the_page(url, headers, expected):
    assert selfreport.request_base_url(url, headers, PAGES) == expected


def test_the_rule_explicit_then_configured_then_request_then_localhost(no_address_settings, monkeypatch):
    request = "http://192.168.1.20:8501"
    assert selfreport.base_url(request=request) == request
    assert selfreport.base_url() == "http://localhost:8501"
    monkeypatch.setenv("PORT", "8600")  # make run PORT=8600
    assert selfreport.base_url() == "http://localhost:8600"
    assert selfreport.base_url(port=8700) == "http://localhost:8700"
    monkeypatch.setenv("OUTCOMES_BASE_URL", "https://outcomes.clinic.example/")
    assert selfreport.base_url(request=request) == "https://outcomes.clinic.example"
    assert selfreport.base_url("https://other.example", request=request) == "https://other.example"


@pytest.mark.parametrize("url, local", [
    ("http://localhost:8501/?token=x", True), ("http://127.0.0.1:8600/?token=x", True), ("http://[::1]:8501/", True),
    ("http://0.0.0.0:8501/", True), ("http://192.168.1.20:8501/?token=x", False),
    ("https://outcomes.clinic.example/?token=x", False),
])
def test_local_addresses_are_recognised(url, local):
    assert selfreport.is_local_address(url) is local


def test_a_link_uses_the_request_address_and_a_bad_configured_address_stores_nothing(writable_db, no_address_settings,
                                                                                     monkeypatch):
    patient = DataAccess(writable_db).patients()["patient_id"].iloc[0]
    link = selfreport.create_link(writable_db, SYSTEM, patient, "PHQ-9", request="http://192.168.1.20:8501")
    assert link.url.startswith("http://192.168.1.20:8501/?token=") and not link.local
    local = selfreport.create_link(writable_db, SYSTEM, patient, "PHQ-9")
    assert local.url.startswith("http://localhost:8501/?token=") and local.local
    monkeypatch.setenv("OUTCOMES_BASE_URL", "outcomes.clinic.example")  # no scheme: a phone would not open it
    with store.connect(writable_db) as con:
        before = con.execute("SELECT count(*) FROM self_report_links").fetchall()[0][0]
    with pytest.raises(ValueError, match="OUTCOMES_BASE_URL must be the dashboard's address"):
        selfreport.create_link(writable_db, SYSTEM, patient, "PHQ-9", request="http://192.168.1.20:8501")
    with store.connect(writable_db) as con:
        assert con.execute("SELECT count(*) FROM self_report_links").fetchall()[0][0] == before


def _cli(db, patient, *extra, env=None):
    import os

    environ = {k: v for k, v in os.environ.items() if k not in (selfreport.BASE_URL_ENV, selfreport.PORT_ENV)}
    return subprocess.run([sys.executable, "-m", "analytics", "link", "create", "--patient", patient, "--db", str(db), *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, env={**environ, **(env or {})})


def test_cli_keeps_its_flags_and_follows_the_same_rule(writable_db):
    patient = DataAccess(writable_db).patients()["patient_id"].iloc[0]
    given = _cli(writable_db, patient, "--base-url", "https://clinic.example/", "--instruments", "GAD-7", "--hours", "2",
                 env={"OUTCOMES_BASE_URL": "https://ignored.example"})
    assert given.returncode == 0 and given.stdout.startswith("https://clinic.example/?token="), given.stderr
    configured = _cli(writable_db, patient, env={"OUTCOMES_BASE_URL": "https://outcomes.clinic.example"})
    assert configured.returncode == 0 and configured.stdout.startswith("https://outcomes.clinic.example/?token=")
    assert "cannot open" not in configured.stderr
    local = _cli(writable_db, patient, env={"PORT": "8600"})
    assert local.returncode == 0 and local.stdout.startswith("http://localhost:8600/?token=")
    assert "a patient's phone cannot open it" in local.stderr and "OUTCOMES_BASE_URL" in local.stderr
    bad = _cli(writable_db, patient, "--base-url", "clinic.example")
    assert bad.returncode == 2 and bad.stdout == "" and "--base-url" in bad.stderr and "Traceback" not in bad.stderr
