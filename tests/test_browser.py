"""End to end in real headless Chromium (Debian's /usr/bin/chromium) against `streamlit run`.

Every page loads without an error element, a patient can be searched and their
chart appears, and a screenshot of each page is saved under test-output/.
A missing browser fails the run when CI=true; locally it skips with the reason.
"""
import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
        "--no-first-run", "--disable-component-update", "--disable-sync"]
OUT = Path(__file__).resolve().parent.parent / "test-output"
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
CHARTS_DRAWN = ("() => [...document.querySelectorAll('[data-testid=\"stPlotlyChart\"]')]"
                ".every(e => e.querySelector('.main-svg'))")
CONTENT_HEIGHT = ("() => { const main = document.querySelector('[data-testid=\"stMain\"]');"
                  " const items = [...document.querySelectorAll('[data-testid=\"stMainBlockContainer\"] [data-testid=\"stElementContainer\"]')];"
                  " return Math.max(main.scrollHeight, ...items.map(e => e.getBoundingClientRect().bottom + main.scrollTop)); }")
IDLE = ("() => !document.querySelector('[data-testid=\"stSpinner\"]') && "
        "!document.querySelector('[data-testid=\"stStatusWidget\"]')")


def _browser_or_reason() -> str | None:
    if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        return f"no Chromium at {CHROMIUM} (install Debian's chromium package)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is not installed"
    return None


@pytest.fixture(scope="module")
def browser():
    reason = _browser_or_reason()
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"browser tests cannot run in CI: {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture()
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    yield pg
    context.close()


def _settle(pg, title: str) -> None:
    pg.wait_for_selector("h1", timeout=120_000)
    pg.get_by_role("heading", name=title, level=1).wait_for(timeout=120_000)
    pg.wait_for_function(IDLE, timeout=180_000)
    pg.wait_for_function(CHARTS_DRAWN, timeout=120_000)


def _screenshot(pg, name: str) -> Path:
    OUT.mkdir(exist_ok=True)
    # Streamlit scrolls inside its own container: grow the window to the content to capture it all
    # (twice: charts drawn after the first resize can make the page longer).
    for _ in range(2):
        height = pg.evaluate(CONTENT_HEIGHT)
        pg.set_viewport_size({"width": 1400, "height": max(1000, int(height) + 150)})
        pg.wait_for_timeout(1500)
        pg.wait_for_function(IDLE, timeout=120_000)
        pg.wait_for_function(CHARTS_DRAWN, timeout=60_000)
    pg.wait_for_timeout(2500)
    path = OUT / f"{name}.png"
    pg.screenshot(path=str(path), full_page=True)
    return path


def _user_for(role: str, patient: str = "P00003") -> str:
    """The account to sign in with: a clinician is the one whose caseload holds `patient`."""
    if role != "clinician":
        return role
    from analytics.access import DataAccess

    patients = DataAccess().patients()
    return patients.set_index("patient_id").loc[patient, "clinician"]


def _sign_in(pg, user: str) -> None:
    """Fill the sign-in form the server shows to every new browser session (the URL is kept)."""
    from tests.conftest import BROWSER_PASSWORD

    pg.get_by_role("heading", name="Sign in", level=1).wait_for(timeout=120_000)
    pg.get_by_role("textbox", name="User name").fill(user)
    password = pg.get_by_role("textbox", name="Password")
    password.fill(BROWSER_PASSWORD)
    password.press("Enter")  # submits the form once both values are in
    pg.get_by_role("heading", name="Sign in", level=1).wait_for(state="detached", timeout=120_000)


@pytest.mark.parametrize("path,title", list(PAGES.items()))
def test_every_page_loads_without_an_error(page, streamlit_server, server_db, monkeypatch, path, title):
    monkeypatch.setenv("OUTCOMES_DB", str(server_db))
    page.goto(f"{streamlit_server}/{path}")
    _sign_in(page, _user_for(PAGE_ROLE[path.split("?")[0]]))
    _settle(page, title)
    assert page.locator('[data-testid="stException"]').count() == 0
    shot = _screenshot(page, path.split("?")[0])
    assert page.locator('[data-testid="stException"]').count() == 0
    assert shot.stat().st_size > 10_000


def test_search_a_patient_and_see_their_chart(page, streamlit_server, server_db, monkeypatch):
    monkeypatch.setenv("OUTCOMES_DB", str(server_db))
    page.goto(f"{streamlit_server}/patient")
    _sign_in(page, _user_for("clinician", "P00006"))
    _settle(page, "Patient trajectory")
    box = page.get_by_role("textbox", name="Find a patient by id")
    box.fill("P0000")
    box.press("Enter")
    page.get_by_text("matches").first.wait_for(timeout=60_000)
    page.get_by_role("combobox").first.click()
    page.get_by_role("option", name="P00006").click()
    page.wait_for_function(IDLE, timeout=120_000)
    page.get_by_text("Patient P00006: scores and infusions").wait_for(timeout=120_000)
    assert "patient=P00006" in page.url
    assert page.locator('[data-testid="stPlotlyChart"]').count() >= 1
    assert page.locator('[data-testid="stException"]').count() == 0
    _screenshot(page, "patient-search")


def test_a_damaged_database_shows_what_to_do_in_the_browser(page, server_db, tmp_path):
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
        page.goto(f"{url}/data")
        _sign_in(page, "admin")
        page.get_by_text("The database is damaged").wait_for(timeout=120_000)
        page.wait_for_function(IDLE, timeout=120_000)
        _screenshot(page, "damaged-database")
        assert page.locator('[data-testid="stException"]').count() == 0
        assert "python -m analytics restore BACKUP --db" in page.inner_text("body")
        assert "Traceback" not in page.content()
