"""End to end in real headless Chromium (Debian's /usr/bin/chromium) against `streamlit run`.

Every page loads without an error element, a patient can be searched and their
chart appears, and a screenshot of each page is saved under test-output/.
A missing browser fails the run with the reason (conftest's `browser`). Each test signs in
(fixtures.open_signed_in: the form once per server and user, then the session cookie, as a new tab).
"""
from pathlib import Path

import pytest

from fixtures import CHARTS_DRAWN, IDLE, full_screenshot, open_signed_in

PAGES = {
    "due": "Due list",
    "patient?patient=P00003": "Patient trajectory",
    "cohort": "Cohort outcomes",
    "durability": "Durability and maintenance",
    "data": "Data",
    "method": "Method",
    "users": "Users",
    "audit": "Audit trail",
    "health": "Health",
}
# who signs in to see each page (a page a role may not use is not even registered for it)
PAGE_ROLE = {"due": "clinician", "patient": "clinician", "cohort": "director", "durability": "director",
             "data": "admin", "method": "director", "users": "admin", "audit": "admin", "health": "admin"}


@pytest.fixture()
def signed_in(browser, streamlit_server):
    """open(path, user) -> the page of `streamlit_server` at `path`, signed in as `user`; contexts closed after the test."""
    contexts = []

    def open_(path: str, user: str):
        context, pg = open_signed_in(browser, f"{streamlit_server}/{path}", user)
        contexts.append(context)
        return pg

    yield open_
    for context in contexts:
        context.close()


def _settle(pg, title: str) -> None:
    pg.wait_for_selector("h1", timeout=120_000)
    pg.get_by_role("heading", name=title, level=1).wait_for(timeout=120_000)
    pg.wait_for_function(IDLE, timeout=180_000)
    pg.wait_for_function(CHARTS_DRAWN, timeout=120_000)


def _screenshot(pg, name: str) -> Path:
    return full_screenshot(pg, name, width=1400)


def _user_for(role: str, patient: str = "P00003", db=None) -> str:
    """The account to sign in with: a clinician is the one whose caseload holds `patient` (in `db`, else $OUTCOMES_DB)."""
    if role != "clinician":
        return role
    from analytics.access import DataAccess

    patients = DataAccess(db).patients() if db is not None else DataAccess().patients()
    return patients.set_index("patient_id").loc[patient, "clinician"]


@pytest.mark.parametrize("path,title", list(PAGES.items()))
def test_every_page_loads_without_an_error(signed_in, server_db, path, title):
    page = signed_in(path, _user_for(PAGE_ROLE[path.split("?")[0]], db=server_db))
    _settle(page, title)
    assert page.locator('[data-testid="stException"]').count() == 0
    shot = _screenshot(page, path.split("?")[0])
    assert page.locator('[data-testid="stException"]').count() == 0
    assert shot.stat().st_size > 10_000


def test_search_a_patient_and_see_their_chart(signed_in, server_db):
    page = signed_in("patient", _user_for("clinician", "P00006", db=server_db))
    _settle(page, "Patient trajectory")
    box = page.get_by_role("textbox", name="Find a patient by id")
    box.fill("P0000")
    box.press("Enter")
    page.get_by_text("matches").first.wait_for(timeout=120_000)
    page.get_by_role("combobox").first.click()
    page.get_by_role("option", name="P00006").click()
    page.wait_for_function(IDLE, timeout=120_000)
    page.get_by_text("Patient P00006: scores and infusions").wait_for(timeout=120_000)
    assert "patient=P00006" in page.url
    # the chart is drawn once plotly's code has loaded in the browser, which can be after the run has ended
    page.locator('[data-testid="stPlotlyChart"] .main-svg').first.wait_for(timeout=120_000)
    assert page.locator('[data-testid="stException"]').count() == 0
    _screenshot(page, "patient-search")


def test_a_damaged_database_shows_what_to_do_in_the_browser(browser, server_db, tmp_path):
    """A database damaged in a data block: after sign-in the page says so and shows the restore command,
    never a traceback or Streamlit's exception box."""
    import shutil

    from tests.conftest import DEMO_TODAY, serve_dashboard
    from tests.test_exit_codes import damage

    db = tmp_path / "damaged.duckdb"
    shutil.copy(server_db, db)
    damage(db, "middle")
    with serve_dashboard(db, tmp_path / "streamlit.log", env={"OUTCOMES_TODAY": DEMO_TODAY,
                                                                "OUTCOMES_LOG_DIR": str(tmp_path / "logs")}) as url:
        context, page = open_signed_in(browser, f"{url}/data", "admin", remember=False)
        try:
            page.get_by_text("The database is damaged").wait_for(timeout=120_000)
            page.wait_for_function(IDLE, timeout=120_000)
            _screenshot(page, "damaged-database")
            assert page.locator('[data-testid="stException"]').count() == 0
            assert "python -m analytics restore BACKUP --db" in page.inner_text("body")
            assert "Traceback" not in page.content()
        finally:
            context.close()
