"""What the import says happened to the database, whatever fails (issue 15, points 2, 3 and 6).

Exit 0 all stored, 1 some rows rejected and the rest stored, 2 nothing stored, 3 failed
unexpectedly (one line and a log file, never a traceback). A failure after the commit (the
checkpoint of DETACH on a full disk) must not be reported as "nothing was changed".
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from analytics import ingest, store
from analytics.ingest import jobs
from fixtures import make_db, patient, snapshot, tables
from test_ingest import ASSESSMENTS_HEADER, TREATMENTS_HEADER, phq, write

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def db(tmp_path) -> Path:
    return make_db(tmp_path, patients=[patient("P1", enrolled_on="2022-01-01")])


def count(db: Path, table: str) -> int:
    with store.connect(db) as con:
        return con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]


def run(*args: str, env: dict | None = None, code: str | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "analytics", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


# --- point 2: a failure after the commit is not "nothing was changed" ---------------------------

def test_a_checkpoint_that_fails_after_the_commit_is_reported_as_committed(db, tmp_path, monkeypatch):
    path = write(tmp_path / "t.csv", TREATMENTS_HEADER, "P1,2023-01-02,iv,0.5,", "P1,2023-01-03,pill,0.5,")
    monkeypatch.setenv(store.FAIL_CHECKPOINT_ENV, "1")

    report = ingest.import_files([path], db=db)

    monkeypatch.delenv(store.FAIL_CHECKPOINT_ENV)
    assert report.committed and report.error is None
    assert report.exit_code == 1  # what is stored: one row, one rejected
    [warning] = report.warnings
    assert warning.startswith("the import was committed and its rows are stored, but writing the database file")
    assert not any("nothing was changed" in m for m in report.messages())
    assert report.to_dict()["committed"] is True and report.to_dict()["warnings"] == [warning]
    assert count(db, "treatments") == 1 and count(db, "rejected_rows") == 1


def test_the_command_exits_by_what_is_stored_when_the_checkpoint_fails(db, tmp_path):
    path = write(tmp_path / "t.csv", TREATMENTS_HEADER, "P1,2023-01-02,iv,0.5,")
    result = run("import", "--db", str(db), str(path), env={store.FAIL_CHECKPOINT_ENV: "1"})
    assert result.returncode == 0, result.stderr
    assert "warning: the import was committed and its rows are stored" in result.stderr
    assert "nothing was changed" not in result.stderr + result.stdout and "Traceback" not in result.stderr
    as_json = run("import", "--db", str(db), "--json", str(path), env={store.FAIL_CHECKPOINT_ENV: "1"})
    assert json.loads(as_json.stdout)["committed"] is True
    assert count(db, "treatments") == 1


def test_a_failure_before_the_commit_says_nothing_was_changed_and_is_true(db):
    before = snapshot(db)

    def fail(con, report):
        raise duckdb.IOException('Could not write file "x.wal": No space left on device')

    report = ingest.import_tables(tables(treatments=[{"patient_id": "P1", "administered_on": "2023-01-02", "route": "iv"}]),
                                  file_name="visit", source="ui", db=db, after_write=fail)

    assert not report.committed and report.exit_code == 2
    assert report.messages()[0].startswith("import failed, nothing was changed: Could not write file")
    assert snapshot(db) == before


@pytest.fixture
def small_disk(tmp_path):
    """A real 40 MB filesystem (a tmpfs; root only), unmounted after the test."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("this machine does not allow mounting a tmpfs")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_a_really_full_disk_either_stores_everything_or_nothing_and_says_which(tmp_path, small_disk):
    """The review's case on a real 40 MB filesystem: 0.25 MB free fails the commit, 1-2 MB the checkpoint."""
    mount = small_disk
    rows = [f"Q{i:05d},North,dr_a,1980,F,TRD,,1,2022-01-01" for i in range(300)]
    patients = write(tmp_path / "p.csv", "patient_id,site,clinician,birth_year,sex,diagnosis,comorbidities,"
                     "prior_failed_trials,enrolled_on", *rows)
    assessments = write(tmp_path / "a.csv", ASSESSMENTS_HEADER,
                        *[phq(f"Q{i % 300:05d}", f"2023-{1 + i // 3000:02d}-{1 + (i // 300) % 10:02d}", [1] * 9)
                          for i in range(9000)])
    template = make_db(tmp_path, patients=[patient("P1")], name="template.duckdb")
    seen = {}
    for free_mb in (0.25, 1, 2):
        target = mount / "o.duckdb"
        for leftover in mount.iterdir():
            leftover.unlink()
        shutil.copy(template, target)
        filler = mount / "fill"
        free = shutil.disk_usage(mount).free
        with open(filler, "wb") as handle:
            handle.truncate(0)
            handle.write(b"\0" * max(0, free - int(free_mb * 2**20)))
        result = run("import", "--db", str(target), "--json", str(patients), str(assessments))
        filler.unlink()
        report = json.loads(result.stdout)
        stored = duckdb.connect(str(target), read_only=True).execute(
            "SELECT count(*) FROM patients WHERE patient_id LIKE 'Q%'").fetchall()[0][0]
        seen[free_mb] = (result.returncode, report["committed"], stored, bool(report["warnings"]))
        assert "Traceback" not in result.stderr
        if report["committed"]:
            assert result.returncode == 0 and stored == 300 and report["error"] is None
        else:
            assert result.returncode == 2 and stored == 0 and "No space left on device" in report["error"]
    # Both of the review's cases happened: the commit itself failing (nothing stored, exit 2) and
    # the checkpoint after it failing (all stored, exit 0, a warning instead of "nothing was changed").
    assert {(code, committed, warned) for code, committed, _, warned in seen.values()} == {(2, False, False), (0, True, True)}, seen


# --- exit 3: an unexpected failure is one line and a log file ----------------------------------

CRASHING_IMPORT = """
import sys
from analytics.ingest import rules
def crash(*args, **kwargs):
    raise RuntimeError("cannot check row with patient_id 'P-SECRET-7'")
rules.validate = crash
from analytics import cli
sys.exit(cli.main(sys.argv[1:]))
"""


def test_an_unexpected_failure_exits_3_with_one_line_and_a_private_log(db, tmp_path):
    path = write(tmp_path / "t.csv", TREATMENTS_HEADER, "P1,2023-01-02,iv,0.5,")
    logs = tmp_path / "logs"
    before = snapshot(db)

    result = run("import", "--db", str(db), str(path), code=CRASHING_IMPORT, env={"OUTCOMES_LOG_DIR": str(logs)})

    assert result.returncode == 3
    [line] = result.stderr.splitlines()
    assert line.startswith("import failed unexpectedly (RuntimeError); nothing was changed. details for a bug report: ")
    assert "Traceback" not in result.stderr and result.stdout == ""
    [log] = logs.iterdir()
    assert str(log) in line and stat.S_IMODE(log.stat().st_mode) == 0o600
    text = log.read_text()
    assert "builtins.RuntimeError: cannot check row with patient_id '…'" in text
    assert "P-SECRET-7" not in text and "in import_files" in text
    assert snapshot(db) == before

    as_json = run("import", "--db", str(db), "--json", str(path), code=CRASHING_IMPORT, env={"OUTCOMES_LOG_DIR": str(logs)})
    report = json.loads(as_json.stdout)
    assert (as_json.returncode, report["exit_code"], report["committed"]) == (3, 3, False)
    assert report["log"] and Path(report["log"]).exists()


# --- point 3: the crashes of the review end with a message and the right exit code -------------

def test_the_crash_files_of_the_review_get_messages_and_exit_codes_never_a_traceback(db, tmp_path):
    deep = '{"x":' * 100_000 + "1" + "}" * 100_000
    bundle = tmp_path / "deep.json"
    bundle.write_text('{"resourceType":"Bundle","type":"collection","entry":[{"resource":'
                      '{"resourceType":"Patient","id":"p1","extension":[' + deep + "]}}]}")
    ndjson = tmp_path / "deep.ndjson"
    ndjson.write_text('{"resourceType":"Patient","id":"p2"}\n{"resourceType":"Patient","id":"p3","extension":['
                      + deep + "]}\n")
    header = tmp_path / "header.csv"
    header.write_text(TREATMENTS_HEADER + ",x" + "y" * (129 << 10) + "\nP1,2023-01-02,iv,0.5,,\n")
    field = tmp_path / "field.csv"
    field.write_text(TREATMENTS_HEADER + "\nP1,2023-01-02,iv,0.5,\nP1,2023-01-03,iv,0.5," + "x" * (50 << 20) + "\n")

    outcomes = {}
    for path in (bundle, ndjson, header, field):
        result = run("import", "--db", str(db), str(path))
        assert "Traceback" not in result.stderr, result.stderr[-2000:]
        outcomes[path.name] = (result.returncode, result.stderr.splitlines()[0][:160])

    assert outcomes["deep.json"][0] == 2
    assert outcomes["deep.json"][1].startswith(f"{bundle}: line 1: the JSON is nested too deeply to read")
    assert outcomes["deep.ndjson"] == (1, f"{ndjson}:2: (row): the JSON is nested too deeply to read: more than 100 levels deep "
                                          "(FHIR resources nest a dozen levels or so)"[:160])
    assert outcomes["header.csv"] == (2, "header.csv: line 1: header column 6 has a name of 132,097 characters; "
                                         "a column name may have at most 200")
    assert outcomes["field.csv"][0] == 1 and outcomes["field.csv"][1].startswith(f"{field}:3: (row): the row is 52,428,")
    assert count(db, "patients") == 2 and count(db, "treatments") == 1


# --- temporary files: removed on every exit path -----------------------------------------------

def test_temporary_files_are_removed_after_an_import_and_after_a_kill(tmp_path):
    db = make_db(tmp_path, patients=[patient("P1", enrolled_on="2022-01-01")])
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {"TMPDIR": str(temp)}
    path = write(tmp_path / "a.csv", ASSESSMENTS_HEADER, *[phq("P1", f"2023-01-{d:02d}", [1] * 9) for d in range(1, 29)],
                 "P1,PHQ-9,2023-02-01,self,1")  # a rejected row: the good ones are copied for the parser

    done = run("import", "--db", str(db), str(path), env=env)
    assert done.returncode == 1 and list(temp.iterdir()) == []

    marker = tmp_path / "holding"
    staging = ("import sys; from analytics import ingest; "
               "ingest.import_files([sys.argv[1]], db=sys.argv[2], block_rows=5)")  # staged in Parquet
    held = subprocess.Popen([sys.executable, "-c", staging, str(path), str(db)], cwd=ROOT,
                            env={**os.environ, **env, jobs.HOLD_BEFORE_COMMIT_ENV: str(marker)})
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists()
        [work] = [p for p in temp.iterdir() if p.name.startswith(f"outcomes-work-{held.pid}-")]
        assert list(work.glob("import-stage-*/*.parquet"))  # patient rows on disk while the import runs
    finally:
        held.send_signal(signal.SIGKILL)
        held.wait()
    assert work.exists()  # a kill -9 runs no clean-up ...

    later = run(env=env, code="from analytics import workdir; print(workdir.work_dir())")
    assert later.returncode == 0 and not work.exists()  # ... the next process removes it
    assert list(temp.iterdir()) == []  # and its own folder went at its exit


def _large_import_files(tmp_path) -> tuple[Path, Path, int]:
    """300 patients and n assessments of them, n a little over write.BULK_INSERT_ROWS: an insert of the bulk kind."""
    import datetime

    people = [f"Q{i:05d}" for i in range(300)]
    patients = write(tmp_path / "p.csv", "patient_id,site,clinician,birth_year,sex,diagnosis,comorbidities,"
                     "prior_failed_trials,enrolled_on", *[f"{p},North,dr_a,1980,F,TRD,,1,2020-01-01" for p in people])
    start = datetime.date(2021, 1, 1)
    n = ingest.write.BULK_INSERT_ROWS + 5_000
    assessments = write(tmp_path / "a.csv", ASSESSMENTS_HEADER,
                        *[phq(people[i % 300], (start + datetime.timedelta(days=i // 300)).isoformat(), [1] * 9)
                          for i in range(n)])
    return patients, assessments, n


def test_a_large_import_whose_commit_finds_the_disk_full_stores_nothing_says_so_and_the_process_goes_on(tmp_path, small_disk):
    """A large import's COMMIT is also DuckDB's checkpoint; on a full disk that fails, the file keeps its last
    version and DuckDB gives up its instance. The import returns its report (it raised OSError from the
    state sidecar's write before), tells the write error (not "the database has been invalidated"), and the
    next import in the same process (a dashboard's) works."""
    mount = small_disk
    patients, assessments, n = _large_import_files(tmp_path)
    template = make_db(tmp_path, patients=[patient("P1")], name="template.duckdb")
    target = mount / "o.duckdb"
    shutil.copy(template, target)
    filler = mount / "fill"
    with open(filler, "wb") as handle:  # 0.25 MB left: the file needs about 2 MB more
        handle.write(b"\0" * max(0, shutil.disk_usage(mount).free - 2**18))

    report = ingest.import_files([patients, assessments], db=target)

    filler.unlink()
    assert not report.committed and report.exit_code == 2
    assert "No space left on device" in report.error and "invalidated" not in report.error
    assert count(target, "assessments") == 0 and count(target, "patients") == 1
    again = ingest.import_files([patients], db=target)  # the same process, room again
    assert again.committed and count(target, "patients") == 301


def test_a_first_large_staged_import_on_a_full_disk_stores_all_or_nothing(tmp_path, small_disk):
    """The same with the file staged in blocks and inserted numbered from its rows (ingest/write.py's `_bulk`):
    with little room, either the commit fails (nothing stored, exit 2) or everything is,
    and the process goes on."""
    mount = small_disk
    patients, assessments, n = _large_import_files(tmp_path)
    template = make_db(tmp_path, patients=[patient("P1")], name="template.duckdb")
    seen = {}
    for free_mb in (0.25, 1, 4, 30):
        target = mount / "o.duckdb"
        for leftover in mount.iterdir():
            leftover.unlink()
        shutil.copy(template, target)
        filler = mount / "fill"
        with open(filler, "wb") as handle:
            handle.write(b"\0" * max(0, shutil.disk_usage(mount).free - int(free_mb * 2**20)))

        report = ingest.import_files([patients, assessments], db=target, block_rows=40_000)

        filler.unlink()
        stored = count(target, "assessments")
        seen[free_mb] = (report.exit_code, report.committed, stored)
        if report.committed:
            assert stored == n and count(target, "patients") == 301
        else:
            assert report.exit_code == 2 and stored == 0 and count(target, "patients") == 1
            assert "No space left on device" in report.error and "invalidated" not in report.error
            again = ingest.import_files([patients], db=target)  # the same process, room again
            assert again.committed and count(target, "patients") == 301
    assert {committed for _, committed, _ in seen.values()} == {False, True}, seen
