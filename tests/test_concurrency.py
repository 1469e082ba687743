"""An import is one transaction, and the dashboard keeps reading while it runs."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from analytics import access, ingest
from fixtures import make_db, patient, snapshot

ROOT = Path(__file__).resolve().parent.parent


def big_assessments_csv(path: Path, patients: list[str], rows: int, seed: int = 1) -> Path:
    """`rows` valid PHQ-9 assessments, one per patient per day, all items given."""
    rng = np.random.default_rng(seed)
    index = np.arange(rows)
    days = pd.Timestamp("2024-02-01") + pd.to_timedelta(index // len(patients), unit="D")
    frame = pd.DataFrame({
        "patient_id": np.array(patients)[index % len(patients)],
        "instrument": "PHQ-9",
        "administered_on": days.strftime("%Y-%m-%d"),
        "rater": "self",
    })
    for i in range(1, 10):
        frame[f"item_{i}"] = rng.integers(0, 4, rows)
    frame.to_csv(path, index=False)
    return path


def start_import(db: Path, csv: Path, **env) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "analytics", "import", "--db", str(db), str(csv)],
        cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "import never reached the write phase"
        time.sleep(0.05)


def test_killed_import_leaves_the_database_exactly_as_before(tmp_path):
    ids = [f"P{i:03d}" for i in range(50)]
    db = make_db(tmp_path, patients=[patient(pid) for pid in ids])
    csv = big_assessments_csv(tmp_path / "a.csv", ids, 20_000)
    before = snapshot(db)
    marker = tmp_path / "holding"

    proc = start_import(db, csv, OUTCOMES_IMPORT_HOLD_BEFORE_COMMIT=str(marker))
    wait_for(marker, proc)  # every row is written, COMMIT not yet run
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)

    assert proc.returncode == -signal.SIGKILL
    assert snapshot(db) == before
    report = ingest.import_files([csv], db=db)  # the file reopens and takes the same import
    assert report.exit_code == 0 and report.files[0].rows_inserted == 20_000


def test_reads_never_fail_while_a_large_import_runs_and_holds_the_lock(tmp_path):
    ids = [f"P{i:03d}" for i in range(200)]
    db = make_db(tmp_path, patients=[patient(pid, clinician="dr_a" if i % 2 else "dr_b") for i, pid in enumerate(ids)])
    csv = big_assessments_csv(tmp_path / "a.csv", ids, 150_000)
    marker = tmp_path / "holding"
    clinician = access.DataAccess(db, access.Scope(user="a", role="clinician", clinician="dr_a"))
    director = access.DataAccess(db, access.Scope(user="d", role="director"))

    proc = start_import(db, csv, OUTCOMES_IMPORT_HOLD_BEFORE_COMMIT=str(marker), OUTCOMES_IMPORT_HOLD_SECONDS="1.5")
    reads_during_import = reads_spanning_the_held_lock = 0
    seen_counts = set()
    while proc.poll() is None:
        held_before = marker.exists()
        seen_counts.add(len(director.assessments()))
        assert len(clinician.patients()) == 100
        clinician.patient_record("P001")
        reads_during_import += 1
        # The marker appears while the importer holds the write lock: these reads waited for it.
        reads_spanning_the_held_lock += (not held_before) and marker.exists()
    out, err = proc.communicate()

    assert proc.returncode == 0, err
    assert reads_during_import >= 3 and reads_spanning_the_held_lock >= 1
    assert seen_counts <= {0, 150_000}  # a reader sees before or after, never half an import
    assert len(director.assessments()) == 150_000


def test_a_dashboard_page_renders_while_an_import_holds_the_write_lock(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    ids = [f"P{i:03d}" for i in range(40)]
    db = make_db(tmp_path, patients=[patient(pid) for pid in ids])
    csv = big_assessments_csv(tmp_path / "a.csv", ids, 4_000)
    marker = tmp_path / "holding"
    monkeypatch.setenv("OUTCOMES_DB", str(db))
    # signed in as a director, as the page tests are (tests/conftest.py): the sign-in form would show nothing
    import pages._signin as signin
    from conftest import scope_for_test_role

    monkeypatch.setenv("OUTCOMES_ROLE", "director")
    monkeypatch.setattr(signin, "signed_in_scope", scope_for_test_role)

    # held long enough for the page to run inside the write (starting AppTest takes seconds on a busy machine)
    proc = start_import(db, csv, OUTCOMES_IMPORT_HOLD_BEFORE_COMMIT=str(marker), OUTCOMES_IMPORT_HOLD_SECONDS="25")
    wait_for(marker, proc)
    page = AppTest.from_file(str(ROOT / "pages" / "cohort.py"), default_timeout=120).run()
    out, err = proc.communicate(timeout=120)

    assert not page.exception, [e.message for e in page.exception]
    assert proc.returncode == 0, err
    # not a blank page: the page drew its title, and says its figures are the last complete data's
    assert [t.value for t in page.title] == ["Cohort outcomes"]
    running = [i.value for i in page.info if i.value.startswith("An import is running")]
    assert running and "these figures are from the last complete data" in running[0], (
        [i.value for i in page.info], [w.value for w in page.warning], [m.value for m in page.markdown][:5])
