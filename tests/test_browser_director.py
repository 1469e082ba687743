"""The director's and everyone's pages in real Chromium (issue 14's items, issue 13's disclosure rules):
what a director sees, tries and downloads, and the Method page as a director and an admin.

Two servers: the session's 120-patient demo clinic (small: the small-number rules and empty states show)
and a 1,000-patient one (large enough that every chart of the cohort page is drawn). Screenshots at 1440 px
(and one at 390 px) go to test-output/.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures import BROWSER_PASSWORD, IDLE, LAYOUT_SETTLED, full_screenshot, open_signed_in
from tests.conftest import DEMO_TODAY, ROOT, serve_dashboard
from tests.test_browser import _settle, _user_for

DEVELOPER_WORDS = ("baseline_score", "has_anxiety", "NPMLE", "left_days", "right_days", "below_10", "two_consecutive",
                   "analytics/", "docs/", ".py", "p = 0.000", "q0.2", "infusions_per_patient_year", "oracle q")


@pytest.fixture(scope="module")
def large_db(tmp_path_factory):
    """A 1,000-patient demo clinic with a director, an admin and one clinician account."""
    from analytics import auth

    path = tmp_path_factory.mktemp("large") / "demo.duckdb"
    subprocess.run([sys.executable, "-m", "analytics", "demo", "--db", str(path), "--patients", "1000", "--seed", "7"],
                   cwd=ROOT, check=True, capture_output=True, timeout=600)
    auth.create_user(path, "director", "director", BROWSER_PASSWORD, actor="test")
    auth.create_user(path, "admin", "admin", BROWSER_PASSWORD, actor="test")
    return path


@pytest.fixture(scope="module")
def large_server(large_db, tmp_path_factory):
    log = tmp_path_factory.mktemp("large-server") / "streamlit.log"
    with serve_dashboard(large_db, log, env={"OUTCOMES_TODAY": DEMO_TODAY}) as url:
        yield url, log


def _open(browser, url: str, user: str, title: str, charts: int = 0, width: int = 1440):
    """(context, page): signed in at `url` (fixtures.open_signed_in), the page and, when given, that many charts drawn."""
    context, pg = open_signed_in(browser, url, user, width=width, accept_downloads=True)
    _settle(pg, title)
    if charts:
        pg.wait_for_function(f"() => document.querySelectorAll('[data-testid=\"stPlotlyChart\"] .main-svg').length >= {charts}",
                             timeout=180_000)
        _settle(pg, title)
    return context, pg


def _shot(pg, name: str, width: int = 1440) -> Path:
    return full_screenshot(pg, name, width=width, min_height=900)


def _choose(pg, label: str, option: str) -> None:
    """Pick `option` in the selectbox labelled `label` (typing filters the list, Enter takes the match)."""
    box = pg.get_by_role("combobox", name=re.compile(label))
    box.click()
    pg.keyboard.type(option)
    pg.keyboard.press("Enter")
    pg.wait_for_function(IDLE, timeout=180_000)


def _main_text(pg) -> str:
    return pg.inner_text('[data-testid="stMain"]')


def _no_developer_words(text: str) -> None:
    found = [w for w in DEVELOPER_WORDS if w in text]
    assert not found, found
    assert not re.search(r"\b(True|False)\b", text)


def _truncated_labels(pg) -> list:
    """Metric labels and widget labels cut short with an ellipsis at this width."""
    return pg.evaluate("""() => [...document.querySelectorAll('[data-testid="stMetricLabel"] p, [data-testid="stMetricLabel"] div')]
        .filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.textContent)""")


def test_a_directors_menu_holds_only_pages_they_can_use(browser, streamlit_server, server_db):
    context, pg = _open(browser, f"{streamlit_server}/cohort", "director", "Cohort outcomes")
    try:
        nav = pg.inner_text('[data-testid="stSidebarNav"]')
        assert "Cohort outcomes" in nav and "Durability and maintenance" in nav and "Method" in nav
        assert "Due list" not in nav and "Patient trajectory" not in nav  # dead ends for a director without grants
        pg.goto(f"{streamlit_server}/due")
        pg.wait_for_function(IDLE, timeout=120_000)
        assert "No patient in your caseload" not in _main_text(pg)
    finally:
        context.close()


def test_small_clinic_director_gets_words_not_empty_charts(browser, streamlit_server, server_db):
    """On the 120-patient clinic most groups are small: a chart that would be empty says why instead."""
    context, pg = _open(browser, f"{streamlit_server}/cohort", "director", "Cohort outcomes")
    try:
        _choose(pg, "Patients", "site: lakeview")
        pg.get_by_text("Selection: PHQ-9; site: lakeview").wait_for(timeout=120_000)
        pg.get_by_text("Severity movement not shown").wait_for(timeout=120_000)
        pg.wait_for_function(IDLE, timeout=120_000)
        text = _main_text(pg)
        assert "Severity movement not shown" in text and "No site to compare" in text
        # one group of patients is not a waterfall, one week is not a trajectory: the page says so in words
        assert "make a single group (at least 11), so no waterfall is drawn" in text
        assert "Too few PHQ-9 scores after the first infusion to draw a cohort trajectory" in text
        # the metrics may be drawn after the words: read the figures once drawn
        pg.wait_for_function("""() => [...document.querySelectorAll('[data-testid="stMetricValue"]')]
                                   .some(e => e.innerText.trim() === 'not shown')""", timeout=120_000)
        values = [v.strip() for v in pg.locator('[data-testid="stMetricValue"]').all_inner_texts()]
        assert "-" not in values and "not shown" in values
        assert pg.locator('[data-testid="stException"]').count() == 0
        for chart in pg.locator('[data-testid="stPlotlyChart"]').all():  # every chart drawn has data in it
            assert chart.locator(".point, .bars path, .scatterlayer path").count() > 0
        _no_developer_words(text)
        _shot(pg, "director-cohort-small-group")
    finally:
        context.close()


def test_the_reviews_attack_in_the_browser_moves_in_whole_periods(browser, streamlit_server, server_db):
    """The period slider moves in whole months joined into blocks of 11+ first infusions; a group with a part of
    the period (two filters) shows nothing; no caption ever counts fewer than 11 treated patients."""
    context, pg = _open(browser, f"{streamlit_server}/cohort", "director", "Cohort outcomes")
    try:
        thumbs = pg.get_by_role("slider")
        end = thumbs.nth(thumbs.count() - 1)
        seen = ["Selection: PHQ-9."]
        for _ in range(2):
            end.focus()
            end.press("ArrowLeft")
            pg.wait_for_function("""(before) => [...document.querySelectorAll('[data-testid="stCaptionContainer"]')]
                .some(e => e.innerText.startsWith('Selection:') && !e.innerText.startsWith(before))""",
                                 arg=seen[-1][:60], timeout=120_000)
            pg.wait_for_function(IDLE, timeout=120_000)
            caption = pg.get_by_text("Selection: PHQ-9; first infusion").first.inner_text()
            seen.append(caption)
            treated = int(re.search(r"(\d+) treated patients", caption).group(1))
            assert treated >= 11
            assert re.search(r"first infusion 01 \w{3} \d{4} to (30|31|28|29) \w{3} \d{4}", caption)  # whole months
        assert seen[1] != seen[2]
        _choose(pg, "Patients", "site: northgate")
        # (the sidebar always reads "One filter at a time": wait for this run's own warning)
        pg.get_by_text("Nothing is shown for this selection").wait_for(timeout=60_000)
        pg.wait_for_function(IDLE, timeout=120_000)
        assert pg.locator('[data-testid="stMetric"]').count() == 0
    finally:
        context.close()


def test_cohort_page_as_director_reads_right_and_its_board_report_is_an_audited_aggregate_export(
        browser, large_server, large_db):
    """Every chart drawn, labels whole, no developer words, at 1440 px and at 390 px; the PDF downloads from the
    page and its audit entry lists no patient (an aggregate export)."""
    from analytics import audit

    url, _ = large_server
    before = len(audit.entries(large_db, action="export", actor="director"))
    context, pg = _open(browser, f"{url}/cohort", "director", "Cohort outcomes", charts=5)
    try:
        assert pg.locator('[data-testid="stPlotlyChart"]').count() == 5
        assert not _truncated_labels(pg), _truncated_labels(pg)
        text = _main_text(pg)
        _no_developer_words(text)
        assert "month to date" in text and "clinic rate" in text
        assert "each bar is a group of at least 11" in text
        assert _shot(pg, "director-cohort-1440").stat().st_size > 50_000
        with pg.expect_download(timeout=180_000) as started:
            pg.get_by_role("button", name=re.compile("board report")).click(timeout=180_000)
        path = started.value.path()
        assert open(path, "rb").read(5) == b"%PDF-"
        if shutil.which("pdftotext"):
            pdf_text = subprocess.run(["pdftotext", path, "-"], capture_output=True, text=True, check=True).stdout
            assert "Cohort outcomes report" in pdf_text and "Definitions" in pdf_text
        for _ in range(60):
            exports = audit.entries(large_db, action="export", actor="director")
            if len(exports) > before:
                break
            pg.wait_for_timeout(500)
        entry = exports.iloc[-1]
        assert len(exports) == before + 1 and entry["patients"] == [] and entry["detail"]["aggregate"] is True
        pg.set_viewport_size({"width": 390, "height": 900})  # a phone: the same page, re-laid out
        pg.evaluate(LAYOUT_SETTLED, 600)
        assert pg.locator('[data-testid="stException"]').count() == 0
        _shot(pg, "director-cohort-390", width=390)
    finally:
        context.close()


def test_funnel_with_one_point_keeps_its_label_off_the_clinic_rate():
    """A single group sits on the clinic rate's line: the rate's label goes to the left end, the group's label
    to the side of its point (checked on the figure; the large clinic's funnel is in the 1440 screenshot)."""
    import pandas as pd

    from analytics import charts
    from analytics.screens import cohort

    data = {"groups": pd.DataFrame({"site": ["northgate"], "n": [60], "k": [30], "rate": [0.5],
                                    "position": ["within limits"]}),
            "limits": cohort.funnel_limits(0.5, [60]), "clinic_rate": 0.5}
    fig = charts.funnel(data, "site", "response")
    note = next(a for a in fig.layout.annotations if "clinic rate" in a.text)
    point = next(t for t in fig.data if t.name == "site")
    assert note.xanchor == "left" and note.x < 0.5  # at the left end of the line
    assert point.textposition == "middle left" and point.x[0] > 0.5 * fig.layout.xaxis.range[1]


def test_durability_page_as_director_reads_right(browser, large_server, large_db):
    url, _ = large_server
    context, pg = _open(browser, f"{url}/durability", "director", "Durability and maintenance", charts=3)
    try:
        text = _main_text(pg)
        assert "not drawn down to 0%" in text
        assert "not shown: month in progress" in text  # the partial month, said on the chart
        assert "all infusions" in text and "maintenance only" in text
        _choose(pg, "Compare subgroups", "comorbid anxiety")
        pg.get_by_text("with comorbid anxiety").first.wait_for(timeout=180_000)
        text = _main_text(pg)
        assert "without comorbid anxiety" in text and "log-rank test" in text
        assert re.search(r"p (<|=) 0\.\d+", text)
        pg.get_by_text("Run the policy comparison").click(timeout=180_000)
        pg.wait_for_function(IDLE, timeout=300_000)
        pg.get_by_text("Lower left is better").wait_for(timeout=300_000)
        text = _main_text(pg)
        _no_developer_words(text)
        _shot(pg, "director-durability-1440")
    finally:
        context.close()


def test_method_page_as_director_and_admin_has_a_glossary_and_no_traceback(browser, large_server, large_db):
    url, log = large_server
    for user in ("director", "admin"):
        context, pg = _open(browser, f"{url}/method", user, "Method")
        try:
            text = _main_text(pg)
            assert "Glossary" in text and "Durability curve (Turnbull estimate)" in text and "p-value" in text
            _no_developer_words(text)
            _shot(pg, f"{user}-method-1440")
            if user == "admin":
                nav = pg.inner_text('[data-testid="stSidebarNav"]')
                assert "Cohort outcomes" not in nav and "Due list" not in nav
        finally:
            context.close()
    server_log = Path(log).read_text()
    assert "ArrowTypeError" not in server_log and "Traceback" not in server_log


def test_the_patient_summary_downloads_with_that_patient_in_the_audit(browser, streamlit_server, server_db):
    from analytics import audit

    user = _user_for("clinician", "P00003", db=server_db)
    before = len(audit.entries(server_db, action="export", actor=user))
    context, pg = _open(browser, f"{streamlit_server}/patient?patient=P00003", user, "Patient trajectory")
    try:
        with pg.expect_download(timeout=120_000) as started:
            pg.get_by_role("button", name=re.compile("one-page summary")).click(timeout=180_000)  # a loaded machine
        download = started.value
        assert download.suggested_filename == "P00003-summary.pdf"
        assert open(download.path(), "rb").read(5) == b"%PDF-"
        for _ in range(60):
            exports = audit.entries(server_db, action="export", actor=user)
            if len(exports) > before:
                break
            pg.wait_for_timeout(500)
        assert exports.iloc[-1]["patients"] == ["P00003"] and "summary" in exports.iloc[-1]["detail"]["what"]
        _shot(pg, "clinician-patient-1440")
    finally:
        context.close()
