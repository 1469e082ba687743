"""The patient-facing self-report page (AppTest) and, in headless Chromium, on a phone-sized screen."""
from __future__ import annotations

import os
import shutil
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from analytics import audit, selfreport
from analytics.access import SYSTEM, DataAccess
from tests.conftest import serve_dashboard

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "pages" / "self_report.py"


def _token(url: str) -> str:
    return parse_qs(urlparse(url).query)["token"][0]


@pytest.fixture()
def clinic(writable_db, monkeypatch):
    """The page pointed at a private copy of the demo clinic; returns (db, patient_id, page_opener)."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("OUTCOMES_DB", str(writable_db))
    patient = DataAccess(writable_db).patients()["patient_id"].iloc[0]

    def open_with(token: str) -> AppTest:
        at = AppTest.from_file(str(PAGE), default_timeout=120)
        at.query_params["token"] = token
        return at.run()

    return writable_db, patient, open_with


def _answer(at, value: int, item9: int | None = None):
    for radio in at.radio:
        if radio.label.endswith("(optional)"):
            continue
        radio.set_value(item9 if (item9 is not None and ":PHQ-9:9" in radio.key) else value)
    return at


def _all_text(at) -> str:
    parts = [str(e.value) for kind in ("title", "markdown", "subheader", "warning", "error", "success", "caption")
             for e in getattr(at, kind)]
    return "\n".join(parts + [r.label for r in at.radio])


def test_the_page_shows_only_the_questionnaire_and_works_once(clinic):
    db, patient, open_with = clinic
    token = _token(selfreport.create_link(db, SYSTEM, patient, "PHQ-9,GAD-7").url)
    at = open_with(token)
    assert not at.exception
    assert [s.value for s in at.subheader] == ["PHQ-9", "GAD-7"]
    assert len(at.radio) == 10 + 7  # PHQ-9 with its difficulty question, then GAD-7
    text = _all_text(at)
    assert patient not in text and "clinician" not in text.lower()  # no patient data, not even the id
    _answer(at, 1, item9=0).button[0].click().run()
    assert not at.exception and [t.value for t in at.title] == ["Thank you"]
    assert not at.error and selfreport.open_flags(db, SYSTEM).empty  # item 9 was 0: no crisis message, no flag
    again = open_with(token)
    assert "already been used" in again.warning[0].value and not again.radio


def test_missing_answer_is_shown_next_to_its_question_and_nothing_is_sent(clinic):
    db, patient, open_with = clinic
    token = _token(selfreport.create_link(db, SYSTEM, patient, "GAD-7").url)
    at = open_with(token)
    for radio in at.radio[:-1]:
        radio.set_value(2)
    at.button[0].click().run()
    errors = [e.value for e in at.error]
    assert errors[0] == "please answer question 7" and "Nothing was sent" in errors[-1]
    assert not audit.entries(db, action="self_report_submit").shape[0]
    at.radio[-1].set_value(0)
    at.button[0].click().run()
    assert [t.value for t in at.title] == ["Thank you"]


def test_positive_item_9_shows_crisis_resources_and_raises_the_flag(clinic):
    db, patient, open_with = clinic
    token = _token(selfreport.create_link(db, SYSTEM, patient, "PHQ-9").url)
    at = _answer(open_with(token), 0, item9=2)
    at.button[0].click().run()
    assert "988" in at.error[0].value
    flags = selfreport.open_flags(db, SYSTEM)
    assert flags["patient_id"].tolist() == [patient]
    actions = audit.entries(db)["action"].tolist()
    assert [a for a in actions if a.startswith(("self_report", "safety"))] == [
        "self_report_link", "self_report_open", "self_report_submit", "safety_flag_raise"]


def test_expired_and_altered_links_are_refused_without_showing_anything(clinic):
    db, patient, open_with = clinic
    expired = selfreport.create_link(db, SYSTEM, patient, "PHQ-9", now=datetime.now() - timedelta(days=4))
    good = _token(selfreport.create_link(db, SYSTEM, patient, "PHQ-9").url)
    for token, says in ((_token(expired.url), "expired"), (good[::-1], "not valid"), ("", "not valid")):
        at = open_with(token)
        assert not at.exception and not at.radio and not at.button
        assert says in at.warning[0].value and patient not in _all_text(at)


# --- a real browser on a phone-sized screen -------------------------------------------------

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def phone_server(demo_db, tmp_path_factory):
    """`streamlit run dashboard.py` on its own database: a ?token= address must reach the questionnaire
    with no sign-in."""
    if not os.path.exists(CHROMIUM):  # as every browser test: a missing browser fails, never skips (.ci/run installs it)
        pytest.fail(f"no Chromium at {CHROMIUM} (install Debian's chromium package)")
    db = tmp_path_factory.mktemp("phone") / "clinic.duckdb"
    shutil.copy(demo_db, db)
    with serve_dashboard(db, db.parent / "streamlit.log") as url:
        yield url, db


def test_phone_viewport_questionnaire_fits_and_submits_once(phone_server):
    from playwright.sync_api import sync_playwright

    url, db = phone_server
    patient = DataAccess(db).patients()["patient_id"].iloc[1]
    token = _token(selfreport.create_link(db, SYSTEM, patient, "PHQ-9,GAD-7").url)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True).new_page()
            page.goto(f"{url}/?token={token}")
            page.get_by_role("heading", name="Questionnaire", level=1).wait_for(timeout=120_000)
            groups = page.locator('[data-testid="stRadio"]')
            groups.nth(16).wait_for(timeout=60_000)
            widths = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth,"
                                   " document.querySelector('[data-testid=\"stMain\"]').scrollWidth]")
            assert widths[0] <= widths[1] and widths[2] <= widths[1], f"horizontal scrolling at 390 px: {widths}"
            body = page.inner_text("body")
            assert "Sign in" not in body and patient not in body  # no account needed, no patient data shown
            OUT = ROOT / "test-output"
            OUT.mkdir(exist_ok=True)
            page.screenshot(path=str(OUT / "self-report-phone.png"))
            for i in range(groups.count()):
                if "(optional)" in groups.nth(i).inner_text():
                    continue
                groups.nth(i).get_by_text("Several days", exact=True).click()
            page.get_by_role("button", name="Send my answers").click()
            page.get_by_role("heading", name="Thank you", level=1).wait_for(timeout=60_000)
            assert "988" in page.inner_text("body")  # item 9 answered "Several days"
            page.goto(f"{url}/?token={token}")
            page.get_by_text("already been used").wait_for(timeout=60_000)
        finally:
            browser.close()
    assert selfreport.open_flags(db, SYSTEM)["patient_id"].tolist() == [patient]
