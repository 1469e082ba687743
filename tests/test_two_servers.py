"""A clinic network: two dashboard servers on one PostgreSQL database (docs/deployment.md).

A clinician records an infusion in a browser on server A while an import of 1,200 assessments
runs from the command line; a second browser session on server B then shows the infusion,
nothing is lost (the import's rows and the visit are both stored), no page shows an error,
and the audit chain the two servers and the import wrote together verifies.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fixtures import BROWSER_PASSWORD, CONTENT_HEIGHT, IDLE, SCREENSHOTS as OUT, browser_or_reason, sign_in
from tests.conftest import DEMO_TODAY, ROOT, serve_dashboard

PATIENT = "P00003"
NOTE = "two-server check: recorded on server A"


def _import_file(path: Path, patient_ids: list[str]) -> Path:
    """1,200 PHQ-9 rows on the day after the demo clinic's data end, ten per patient at different times."""
    lines = ["patient_id,instrument,administered_on,rater," + ",".join(f"item_{i}" for i in range(1, 10)) + ",total"]
    for pid in patient_ids:
        for hour in range(8, 18):
            lines.append(f"{pid},PHQ-9,{DEMO_TODAY}T{hour:02d}:15,self," + ",".join(["1"] * 9) + ",")
    path.write_text("\n".join(lines) + "\n")
    return path


def _open_expander(page, title: str) -> None:
    summary = page.locator('[data-testid="stExpander"] summary').filter(has_text=title).first
    summary.wait_for(timeout=120_000)
    # by script: the charts above keep it from being "stable" for a pointer click; a rerun may close it again
    summary.evaluate("e => { if (!e.parentElement.open) { e.scrollIntoView(); e.click(); } }")
    page.wait_for_function(IDLE, timeout=120_000)


@pytest.fixture()
def network(pg_databases, _demo_postgres_template, tmp_path):
    """One PostgreSQL copy of the demo clinic with accounts, served by two dashboard servers."""
    from analytics import auth, store_postgres
    from analytics.access import DataAccess

    reason = browser_or_reason()
    if reason:
        pytest.fail(f"the two-server test needs Chromium: {reason}")
    db = pg_databases.copy_of(_demo_postgres_template)
    try:
        patients = DataAccess(db).patients()
        clinician = patients.set_index("patient_id").loc[PATIENT, "clinician"]
        auth.create_user(db, clinician, "clinician", BROWSER_PASSWORD, actor="test")
        store_postgres.close_all(db)
        env = {"OUTCOMES_TODAY": DEMO_TODAY}
        with serve_dashboard(db, tmp_path / "a.log", env=env) as a, serve_dashboard(db, tmp_path / "b.log", env=env) as b:
            yield {"db": db, "a": a, "b": b, "clinician": clinician, "patients": patients["patient_id"].tolist(),
                   "logs": (tmp_path / "a.log", tmp_path / "b.log")}
    finally:
        pg_databases.drop_made()


def test_a_visit_recorded_on_one_server_shows_on_the_other_while_an_import_runs(network, browser, tmp_path):
    from analytics import audit, store

    db = network["db"]
    big = _import_file(tmp_path / "phq9-day.csv", network["patients"])
    contexts = []
    try:
        contexts.append(browser.new_context(viewport={"width": 1400, "height": 1400}))
        on_a = contexts[-1].new_page()
        on_a.goto(f"{network['a']}/patient?patient={PATIENT}")
        sign_in(on_a, network["clinician"])
        on_a.wait_for_function(IDLE, timeout=180_000)
        before = on_a.locator('[data-testid="stMetric"]').filter(has_text="Last infusion").first.inner_text()
        assert "21 Nov 2026" not in before
        _open_expander(on_a, "Infusion")
        on_a.get_by_label("Dose (mg/kg or mg, as chosen above)").fill("0.5")
        on_a.get_by_label("Notes: side effects (blood pressure rise, dissociation, nausea...)").fill(NOTE)
        on_a.get_by_role("button", name="Review before saving").click()
        on_a.wait_for_function(IDLE, timeout=180_000)
        _open_expander(on_a, "Infusion")
        on_a.get_by_role("button", name="Save infusion").wait_for(timeout=120_000)
        # the import starts, then the clinician saves while it runs
        importing = subprocess.Popen([sys.executable, "-m", "analytics", "import", "--db", str(db), str(big)],
                                     cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        on_a.get_by_role("button", name="Save infusion").click()
        on_a.get_by_text("saved (new record)").wait_for(timeout=180_000)
        out, err = importing.communicate(timeout=300)
        assert importing.returncode == 0, err

        contexts.append(browser.new_context(viewport={"width": 1400, "height": 1400}))
        on_b = contexts[-1].new_page()
        on_b.goto(f"{network['b']}/patient?patient={PATIENT}")
        sign_in(on_b, network["clinician"])
        on_b.wait_for_function(IDLE, timeout=180_000)
        # the demo clinic's last infusion of this patient was in September: B now shows A's
        last = on_b.locator('[data-testid="stMetric"]').filter(has_text="Last infusion").first
        last.wait_for(timeout=120_000)
        assert "21 Nov 2026" in last.inner_text()
        OUT.mkdir(exist_ok=True)
        on_b.screenshot(path=str(OUT / "two-servers-b.png"), full_page=True, timeout=120_000)
        for page in (on_a, on_b):
            assert page.locator('[data-testid="stException"]').count() == 0
    except Exception:
        OUT.mkdir(exist_ok=True)
        for name, page in (("a", locals().get("on_a")), ("b", locals().get("on_b"))):
            if page is not None:
                page.set_viewport_size({"width": 1400, "height": max(1400, int(page.evaluate(CONTENT_HEIGHT)) + 150)})
                page.screenshot(path=str(OUT / f"two-servers-failed-{name}.png"), full_page=True, timeout=120_000)
                (OUT / f"two-servers-failed-{name}.txt").write_text(page.inner_text("body"))
        raise
    finally:
        for context in contexts:
            context.close()
    with store.connect(db) as con:
        infusion = con.execute(
            "SELECT count(*) FROM treatments t JOIN treatment_details d ON d.patient_id = t.patient_id "
            "AND d.administered_at = t.administered_at WHERE t.patient_id = ? AND d.notes = ?", [PATIENT, NOTE]).fetchall()
        imported = con.execute("SELECT count(*) FROM assessments WHERE CAST(administered_at AS DATE) = ?",
                               [DEMO_TODAY]).fetchall()
    assert infusion[0][0] == 1
    assert imported[0][0] == 10 * len(network["patients"])
    assert audit.verify(db).ok
    for log in network["logs"]:
        assert "Traceback" not in log.read_text()
