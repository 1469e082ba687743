"""Attacks in a real browser (headless Chromium against `streamlit run serve.py`): sessions that must
survive a reload and a new tab but not a sign-out or the idle limit (issue 14, point 1; issue 13,
point 9), the cookie's flags, markdown injection from imported data and from the address bar with
the Content-Security-Policy behind it (point 5), the tables' built-in CSV download (point 3), and
download URLs without a session (point 12). Screenshots go to test-output/."""
from __future__ import annotations

import shutil
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from analytics import ingest
from analytics.access import DataAccess
from fixtures import IDLE, SCREENSHOTS as OUT, SESSION_COOKIE as COOKIE, session_cookie, sign_in as _sign_in
from tests.conftest import DEMO_TODAY, serve_dashboard


class Tripwire:
    """An HTTP server that counts every request: nothing on the dashboard may make the browser call it."""

    def __init__(self):
        self.hits: list[str] = []
        tripwire = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                tripwire.hits.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "image/gif")
                self.end_headers()
                self.wfile.write(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def tripwire():
    wire = Tripwire()
    yield wire
    wire.server.shutdown()


@pytest.fixture(scope="module")
def crafted_db(server_db, tmp_path_factory, tripwire):
    """The browser tests' clinic plus one patient whose imported values are markdown and HTML attacks."""
    path = tmp_path_factory.mktemp("crafted") / "demo.duckdb"
    shutil.copy(server_db, path)
    wal = Path(f"{server_db}.wal")
    if wal.exists():
        shutil.copy(wal, Path(f"{path}.wal"))
    h = tripwire.host
    clinician = DataAccess(path).patients()["clinician"].iloc[0]
    folder = path.parent
    (folder / "patients.csv").write_text(
        "patient_id,site,clinician,birth_year,sex,diagnosis,comorbidities,prior_failed_trials,enrolled_on\n"
        f'"Z![p](http://{h}/id.png)",'
        f'"<img src=http://{h}/site.png>[Session expired: sign in again](http://{h}/phish)",'
        f'{clinician},1970,F,"![d](http://{h}/diagnosis.png) www.evil.example",,2,2026-09-01\n')
    (folder / "treatments.csv").write_text("patient_id,administered_on,route,dose_mg_per_kg,phase\n"
                                           f'"Z![p](http://{h}/id.png)",2026-09-02,iv,0.5,induction\n')
    report = ingest.import_files([folder / "patients.csv", folder / "treatments.csv"], db=path)
    assert report.exit_code == 0, report.messages()
    return path, clinician, f"Z![p](http://{h}/id.png)"


@pytest.fixture(scope="module")
def server(crafted_db, tmp_path_factory):
    path, _, _ = crafted_db
    with serve_dashboard(path, tmp_path_factory.mktemp("secure-server") / "streamlit.log",
                         env={"OUTCOMES_TODAY": DEMO_TODAY}) as url:
        yield url


def _heading(pg, title: str, timeout: int = 120_000) -> None:
    pg.get_by_role("heading", name=title, level=1).wait_for(timeout=timeout)
    pg.wait_for_function(IDLE, timeout=timeout)


def _session_cookie(context) -> dict:
    cookie = session_cookie(context)
    assert cookie is not None, f"no {COOKIE} cookie was set: {context.cookies()}"
    return cookie


def _replay_signs_in_nobody(browser, url: str, cookie: dict) -> None:
    """The old token, replayed from another browser, opens nothing."""
    thief = browser.new_context()
    thief.add_cookies([{"name": COOKIE, "value": cookie["value"], "url": url}])
    stolen = thief.new_page()
    stolen.goto(f"{url}/due")
    _heading(stolen, "Sign in")
    thief.close()


def _shot(pg, name: str) -> None:
    OUT.mkdir(exist_ok=True)
    pg.screenshot(path=str(OUT / f"{name}.png"), full_page=True, timeout=120_000)


def test_a_session_survives_reload_and_new_tabs_until_sign_out(browser, server, crafted_db):
    _, clinician, _ = crafted_db
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    blocked, refused = [], []
    context.on("console", lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None)
    # (Streamlit's frontend probes <page>/_stcore/health to find its base path: those 404s are its own)
    context.on("response", lambda r: refused.append(f"{r.status} {r.url}")
               if r.status >= 400 and not (r.status == 404 and "/_stcore/" in r.url) else None)
    page = context.new_page()
    page.goto(f"{server}/due")
    _sign_in(page, clinician)
    _heading(page, "Due list")
    cookie = _session_cookie(context)
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["secure"], cookie["path"]) == (True, "Strict", False, "/")
    assert page.evaluate("document.cookie").find(COOKIE) < 0  # HttpOnly: page scripts cannot read it

    page.reload()  # F5
    _heading(page, "Due list")
    assert page.get_by_role("heading", name="Sign in", level=1).count() == 0

    # a patient opened from the due list: the row opens in this same tab
    grid = page.locator('[data-testid="stDataFrame"]').first
    grid.wait_for(timeout=60_000)
    box = grid.bounding_box()
    page.mouse.click(box["x"] + 12, box["y"] + 35 + 17)  # the first row's selection cell
    page.wait_for_url("**/patient?patient=*", timeout=60_000)
    _heading(page, "Patient trajectory")
    assert len(context.pages) == 1
    opened = urllib.parse.parse_qs(urllib.parse.urlsplit(page.url).query)["patient"][0]

    # the same link in a new tab: still signed in
    tab = context.new_page()
    tab.goto(f"{server}/patient?patient={urllib.parse.quote(opened)}")
    _heading(tab, "Patient trajectory")
    tab.get_by_text(f"Patient {opened}: scores and infusions").wait_for(timeout=120_000)
    _shot(tab, "session-new-tab")
    bookmark = context.new_page()  # the landing page by its own address (a bookmark): no "Page not found"
    bookmark.goto(f"{server}/due")
    _heading(bookmark, "Due list")
    assert bookmark.get_by_text("Page not found").count() == 0
    bookmark.close()
    assert not blocked, blocked  # the Content-Security-Policy let the whole app work
    assert not refused, refused  # and the security middleware refused none of its own files (fonts, scripts)

    page.get_by_role("button", name="Sign out").click()
    _heading(page, "Sign in")
    page.get_by_text("You are signed out.").wait_for(timeout=60_000)
    tab.reload()
    _heading(tab, "Sign in")
    _replay_signs_in_nobody(browser, server, cookie)  # it was ended on the server
    context.close()


def test_the_screen_clears_itself_when_the_idle_limit_passes(browser, crafted_db, tmp_path):
    path, clinician, _ = crafted_db
    idle_minutes = 0.35  # 21 s
    with serve_dashboard(path, tmp_path / "streamlit.log", env={"OUTCOMES_TODAY": DEMO_TODAY,
                                                                "OUTCOMES_SESSION_IDLE_MINUTES": str(idle_minutes)}) as url:
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        page.goto(f"{url}/due")
        _sign_in(page, clinician)
        _heading(page, "Due list")
        cookie = _session_cookie(context)
        started = time.monotonic()
        # no click, no key: the page signs itself out and the list goes
        page.get_by_role("heading", name="Sign in", level=1).wait_for(timeout=90_000)
        waited = time.monotonic() - started
        assert page.locator('[data-testid="stDataFrame"]').count() == 0
        page.get_by_text("Your session ended after").first.wait_for(timeout=30_000)
        _shot(page, "idle-signed-out")
        assert waited >= idle_minutes * 60 - 5
        tab = context.new_page()  # nor does the cookie open anything any more
        tab.goto(f"{url}/due")
        _heading(tab, "Sign in")
        _replay_signs_in_nobody(browser, url, cookie)
        context.close()


def test_imported_markdown_and_html_neither_link_nor_fetch(browser, server, crafted_db, tripwire):
    _, clinician, crafted_id = crafted_db
    with urllib.request.urlopen(f"{server}/") as response:
        policy = response.headers["Content-Security-Policy"]
    assert "img-src 'self' data: blob:" in policy and "connect-src 'self'" in policy and "default-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy

    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.goto(f"{server}/patient?patient={urllib.parse.quote(crafted_id)}")
    _sign_in(page, clinician)
    _heading(page, "Patient trajectory")
    page.get_by_text("Session expired: sign in again", exact=False).first.wait_for(timeout=120_000)
    page.wait_for_timeout(2000)
    main = page.locator('[data-testid="stMain"]')
    host = tripwire.host
    assert main.locator(f'a[href*="{host}"]').count() == 0
    assert main.locator(f'img[src*="{host}"]').count() == 0
    assert main.locator('a[href*="evil.example"]').count() == 0
    caption = page.get_by_text("Session expired: sign in again", exact=False).first.inner_text().replace("\u200b", "")
    assert f"[Session expired: sign in again](http://{host}/phish)" in caption  # shown as the text it is
    _shot(page, "markdown-injection-patient")

    # reflected: a crafted ?patient= lands in the warning box as text
    page.goto(f"{server}/patient?patient=" + urllib.parse.quote(f"![r](http://{host}/reflected.png)[click](http://{host}/x)"))
    _heading(page, "Patient trajectory")
    page.get_by_text("No patient in your caseload").wait_for(timeout=60_000)
    assert page.locator(f'[data-testid="stMain"] a[href*="{host}"]').count() == 0
    assert page.locator(f'[data-testid="stMain"] img[src*="{host}"]').count() == 0

    # and if some value ever slipped through, the policy stops the browser from fetching it
    page.evaluate(f"document.body.insertAdjacentHTML('beforeend', '<img src=\"http://{host}/slipped.png\">')")
    page.wait_for_timeout(1500)
    assert tripwire.hits == []
    context.close()


def test_tables_offer_no_builtin_download_and_files_need_a_session(browser, server, crafted_db):
    _, clinician, _ = crafted_db
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    page.goto(f"{server}/due")
    _sign_in(page, clinician)
    _heading(page, "Due list")
    grid = page.locator('[data-testid="stDataFrame"]').first
    grid.hover()
    toolbar = page.locator('[data-testid="stElementToolbar"]').first
    toolbar.wait_for(state="attached", timeout=30_000)
    page.wait_for_timeout(500)
    labels = [b.get_attribute("aria-label") or b.inner_text() for b in toolbar.locator("button").all()]
    assert labels and not [x for x in labels if "download" in (x or "").lower()], labels
    _shot(page, "due-table-toolbar")

    # the product's own download: a file URL that answers only a browser holding a live session
    patient = DataAccess(crafted_db[0]).patients()
    mine = sorted(patient.loc[patient["clinician"] == clinician, "patient_id"])[0]
    page.goto(f"{server}/patient?patient={urllib.parse.quote(mine)}")
    _heading(page, "Patient trajectory")
    button = page.get_by_role("button", name="Download this patient's data (CSV)")
    button.wait_for(timeout=120_000)  # below the charts: drawn last on a busy machine
    _shot(page, "patient-downloads")
    with page.expect_download(timeout=120_000) as download:
        button.click()
    file_url = download.value.url
    assert "/media/" in file_url
    assert context.request.get(file_url).status == 200
    stranger = browser.new_context()
    assert stranger.request.get(file_url).status == 403
    stranger.close()
    page.get_by_role("button", name="Sign out").click()
    _heading(page, "Sign in")
    assert context.request.get(file_url).status == 403
    context.close()
