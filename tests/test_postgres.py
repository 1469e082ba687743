"""PostgreSQL as the shared store of a clinic network: what DuckDB's single writer used to make safe
(one import at a time, one audit head, a link used once, a lockout counter) must stay safe when
several servers write at once. Every test here runs on PostgreSQL only; the behaviour they pin
down is the same on a DuckDB file, where the tests of each module cover it."""
from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pandas as pd
import pytest

from analytics import audit, auth, ingest, selfreport, store, store_postgres
from analytics.access import SYSTEM
from fixtures import make_db, patient

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct horse battery"


@pytest.fixture()
def pg(pg_databases):
    """The test's databases are made in the session's cluster (as the `backend` fixture does for postgres)."""
    import fixtures

    fixtures.use_postgres(pg_databases)
    try:
        yield pg_databases
    finally:
        fixtures.use_postgres(None)
        pg_databases.drop_made()


def at_once(count: int, work) -> list:
    """Run work(i) in `count` threads released together; their results (or exceptions) in order."""
    start, results = threading.Barrier(count), [None] * count

    def run(i):
        start.wait()
        try:
            results[i] = work(i)
        except Exception as exc:  # noqa: BLE001 - returned for the test to look at
            results[i] = exc
    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return results


def test_a_url_is_a_postgres_database_and_its_password_never_reaches_a_message(pg):
    db = store.db_path("postgresql://clinic:s3cret@db.example:5432/outcomes")
    assert store.is_postgres(db) and not store.is_postgres("data/outcomes.duckdb")
    assert "s3cret" not in store.label(db) and "s3cret" not in repr(db)
    assert store.label(db) == "postgresql://clinic@db.example:5432/outcomes"
    missing = pg.new()  # an empty database: no store in it yet
    with pytest.raises(FileNotFoundError, match="no database at") as refused:
        with store.connect(missing):
            pass
    assert str(missing).split("@")[0].split(":")[-1] not in str(refused.value)  # the password


def test_placeholders_and_percent_signs_are_translated_outside_string_literals():
    assert store_postgres.translate("SELECT ? WHERE a = '?' AND b LIKE 'x%'") == "SELECT %s WHERE a = '?' AND b LIKE 'x%%'"
    assert store_postgres.translate("SELECT '%' -- why?\n", with_params=False) == "SELECT '%' \n"
    assert store_postgres.translate("CREATE TABLE t (x DOUBLE, j JSON)") == "CREATE TABLE t (x DOUBLE PRECISION, j JSONB)"


def test_two_imports_at_once_both_land_whole_and_overlapping_rows_are_counted_once(pg, tmp_path):
    db = make_db(tmp_path)
    shared = [patient(f"S{i}") for i in range(50)]

    def import_file(i):
        rows = shared + [patient(f"OWN{i}_{k}") for k in range(50)]
        frame = pd.DataFrame(rows, dtype="str").fillna("")
        return ingest.import_tables({"patients": frame}, file_name=f"site{i}.csv", source="csv", db=db)
    reports = at_once(2, import_file)
    assert all(isinstance(r, ingest.ImportReport) and r.exit_code == 0 for r in reports), reports
    inserted = sorted(r.files[0].rows_inserted for r in reports)
    assert inserted == [50, 100]  # the shared 50 went in with whichever import came first
    assert sorted(r.files[0].rows_unchanged for r in reports) == [0, 50]
    with store.connect(db) as con:
        assert con.execute("SELECT count(*) FROM patients").fetchall()[0][0] == 150
    assert audit.verify(db).ok


def test_audit_entries_from_many_writers_at_once_make_one_unbroken_chain(pg, tmp_path):
    db = make_db(tmp_path)
    before = len(audit.entries(db))
    seqs = at_once(8, lambda i: [audit.append(db, f"user{i}", "view_patient", patients=[f"P{i}"]) for _ in range(5)])
    assert all(isinstance(s, list) for s in seqs), seqs
    numbers = sorted(n for s in seqs for n in s)
    assert numbers == list(range(before + 1, before + 41))
    code = ("import sys; from analytics import audit\n"
            "for i in range(10): audit.append(sys.argv[1], 'other_server', 'view_patient', patients=['P1'])\n")
    others = [subprocess.Popen([sys.executable, "-c", code, str(db)], cwd=ROOT) for _ in range(2)]
    for _ in range(10):
        audit.append(db, "this_server", "view_patient", patients=["P2"])
    assert [p.wait(120) for p in others] == [0, 0]
    result = audit.verify(db)
    assert result.ok and result.checked == before + 70


def test_a_self_report_link_submitted_twice_at_once_is_stored_once(pg, tmp_path):
    db = make_db(tmp_path, patients=[patient("P1")])
    link = selfreport.create_link(db, SYSTEM, "P1", "PHQ-9")
    token = parse_qs(urlparse(link.url).query)["token"][0]
    answers = {"PHQ-9": {n: 1 for n in range(1, 10)}}
    results = at_once(3, lambda i: selfreport.submit(db, token, answers))
    stored = [r for r in results if isinstance(r, selfreport.Submission) and r.ok]
    refused = [r for r in results if isinstance(r, selfreport.LinkRefused)]
    assert len(stored) == 1 and len(refused) == 2, results
    with store.connect(db) as con:
        assert con.execute("SELECT count(*) FROM assessments WHERE rater = 'self'").fetchall()[0][0] == 1


def test_wrong_passwords_at_once_on_several_servers_each_count_towards_the_lockout(pg, tmp_path):
    db = make_db(tmp_path)
    auth.create_user(db, "dr_a", "clinician", PASSWORD, actor="test")
    results = at_once(6, lambda i: auth.authenticate(db, "dr_a", "wrong password"))
    assert all(isinstance(r, auth.SignInFailed) for r in results), results
    with store.connect(db) as con:
        assert con.execute("SELECT failed_attempts FROM users WHERE username = 'dr_a'").fetchall()[0][0] == 6


def test_the_same_user_added_on_two_servers_at_once_is_added_once(pg, tmp_path):
    db = make_db(tmp_path)
    results = at_once(3, lambda i: auth.create_user(db, "dr_new", "clinician", PASSWORD, actor=f"admin{i}"))
    assert sorted(type(r).__name__ for r in results) == ["UserError", "UserError", "str"], results
    assert len(auth.list_users(db)) == 1 and audit.verify(db).ok


def test_a_write_waiting_too_long_for_a_lock_is_store_busy_and_changes_nothing(pg, tmp_path, monkeypatch):
    db = make_db(tmp_path, patients=[patient("P1")])
    with store.transaction(db) as holder:
        store.lock(holder, "import")  # an import in progress elsewhere
        frame = pd.DataFrame([patient("P2")], dtype="str").fillna("")
        monkeypatch.setattr(store, "LOCK_WAIT_SECONDS", 0.5)
        report = ingest.import_tables({"patients": frame}, file_name="late.csv", source="csv", db=db)
    assert report.error and "busy" in report.error and report.exit_code != 0
    with store.connect(db) as con:
        assert [r[0] for r in con.execute("SELECT patient_id FROM patients").fetchall()] == ["P1"]


def test_a_demo_clinic_reads_the_same_on_both_backends(pg, demo_db, _demo_postgres_template):
    """The whole-cohort frames the statistics start from are identical, dtype for dtype."""
    from analytics.access import DataAccess

    copy = pg.copy_of(_demo_postgres_template)
    on_file, on_postgres = DataAccess(demo_db), DataAccess(copy)
    for read in ("patients", "attributes", "treatments", "assessments"):
        pd.testing.assert_frame_equal(getattr(on_postgres, read)(), getattr(on_file, read)(), check_exact=True, obj=read)



def test_a_database_with_a_newer_schema_is_refused_on_reads_as_on_writes(pg, tmp_path, capsys):
    from analytics import cli
    from analytics.access import DataAccess

    db = make_db(tmp_path, patients=[patient("P1")])
    assert DataAccess(db).patients()["patient_id"].tolist() == ["P1"]  # a pooled read connection, reused below
    with store.transaction(db) as con:  # as a newer version of the software would leave it (another server upgraded)
        con.execute("INSERT INTO schema_version (version) VALUES (?)", [store.SCHEMA_VERSION + 1])
    with pytest.raises(store.SchemaTooNew) as refused:
        DataAccess(db).patients()
    assert refused.value.found == store.SCHEMA_VERSION + 1 and _password(db) not in str(refused.value)
    with pytest.raises(store.SchemaTooNew):
        with store.transaction(db):
            pass
    code = cli.main(["export", str(tmp_path / "out"), "--db", str(db)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "newer than this software" in err and _password(db) not in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def _password(db) -> str:
    from urllib.parse import urlsplit
    return urlsplit(str(db)).password


def test_a_server_that_cannot_be_used_is_one_line_and_exit_2_without_the_password(pg, tmp_path, capsys):
    """Wrong port, wrong password, a database that is not there, a read-only database asked to write:
    produced for real against the session's cluster, through the command line in this process."""
    from urllib.parse import urlsplit

    from analytics import cli
    from tests.conftest import free_port

    db = make_db(tmp_path, patients=[patient("P1")])
    parts = urlsplit(str(db))
    secret = parts.password

    def with_(netloc=None, path=None) -> str:
        return parts._replace(netloc=netloc or parts.netloc, path=path or parts.path).geturl()

    read_only = pg.new()
    pg.admin().execute(f'ALTER DATABASE "{str(read_only).rsplit("/", 1)[-1]}" SET default_transaction_read_only = on')
    csv = tmp_path / "patients.csv"
    pd.DataFrame([patient("P2")]).to_csv(csv, index=False)
    cases = [
        (["export", str(tmp_path / "a"), "--db", with_(netloc=f"{parts.username}:{secret}@127.0.0.1:{free_port()}")],
         "cannot use the PostgreSQL server at 127.0.0.1:", "check that it runs"),
        (["export", str(tmp_path / "b"), "--db", with_(netloc=f"{parts.username}:not-{secret}@{parts.hostname}:{parts.port}")],
         f'refused the sign-in of user "{parts.username}" (password authentication failed', "~/.pgpass"),
        (["export", str(tmp_path / "c"), "--db", with_(path="/no_such_clinic")],
         'has no database "no_such_clinic": create it (createdb no_such_clinic)', "nothing was changed"),
        (["import", "--db", str(read_only), str(csv)], "accepts only reads", "point --db / OUTCOMES_DB at the primary"),
    ]
    for argv, says, advice in cases:
        code = cli.main(argv)
        err = capsys.readouterr().err.strip()
        assert code == 2, (argv[0], code, err)
        assert len(err.splitlines()) == 1 and says in err and advice in err, err
        assert secret not in err and "Traceback" not in err, err


def test_a_full_disk_on_the_server_is_named_as_such():
    """The one failure the suite cannot cheaply produce for real: classified from the server's words."""
    class ServerError(Exception):
        sqlstate = "53100"

    target = store.PostgresTarget("postgresql://clinic:s3cret@db.example:5433/outcomes")
    refused = store_postgres.unavailable(ServerError('could not extend file "base/16384/2619": No space left on device'), target)
    assert refused.kind == "disk" and "db.example:5433 has no disk space left" in str(refused)
    assert "s3cret" not in str(refused)
    from analytics import failures
    failure = failures.explain(refused, target)
    assert failure.exit_code == 2 and failure.kind == "disk" and "nothing was changed" in failure.message


def test_the_benchmark_empties_only_a_database_it_filled(pg, tmp_path):
    from analytics import bench
    from analytics.access import DataAccess
    from fixtures import assessment, tables, treatment

    db = pg.new()
    frames = tables([patient("P1")], [treatment("P1", "2024-01-08")],
                    [assessment("P1", "PHQ-9", "2024-01-08", items=[1] * 9)])
    paths = []
    for kind, frame in frames.items():  # named as the benchmark's generated files
        paths.append(tmp_path / f"{kind}.csv")
        frame.to_csv(paths[-1], index=False)
    bench._fresh_postgres(str(db))
    assert ingest.import_files(paths, db=db).exit_code == 0
    bench._fresh_postgres(str(db))  # a benchmark's own imports, all three kinds: emptied for the next repeat
    assert not store.db_path(db).exists() or DataAccess(db).patients().empty
    (tmp_path / "clinic.csv").write_text(paths[0].read_text())
    assert ingest.import_files([tmp_path / "clinic.csv"], db=db).exit_code == 0
    with pytest.raises(RuntimeError, match="holds imports other than a benchmark's"):
        bench._fresh_postgres(str(db))
    assert DataAccess(db).patients()["patient_id"].tolist() == ["P1"]


def test_after_the_server_dropped_the_connections_one_read_fails_and_the_next_reconnects(pg, tmp_path):
    from analytics.access import DataAccess

    db = make_db(tmp_path, patients=[patient("P1")])
    assert DataAccess(db).patients()["patient_id"].tolist() == ["P1"]  # pooled and ADBC connections now open
    name = str(db).rsplit("/", 1)[-1]
    pg.admin().execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [name])
    with pytest.raises(store.PostgresUnavailable) as dropped:  # as after a restart or a failover
        DataAccess(db).patients()
    assert dropped.value.kind == "unreachable" and "terminating connection" in str(dropped.value)
    assert DataAccess(db).patients()["patient_id"].tolist() == ["P1"]


def test_a_cluster_folder_left_by_a_killed_maker_is_removed_and_a_live_ones_kept(tmp_path):
    import os

    from tools import pgcluster

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    folders = {}
    for name, owner, server in (("killed", dead.stdout.strip(), None), ("running", str(os.getpid()), None),
                                ("server_up", dead.stdout.strip(), str(os.getpid()))):
        folder = folders[name] = tmp_path / f"outcomes-pg-{name}"
        (folder / "data").mkdir(parents=True)
        (folder / pgcluster.OWNER_FILE).write_text(owner + "\n")
        if server:
            (folder / "data" / "postmaster.pid").write_text(server + "\n/data\n")
    young = tmp_path / "outcomes-pg-young"  # no owner file (an older helper's, or being made): kept for a while
    young.mkdir()
    assert pgcluster.remove_abandoned(tmp_path) == [folders["killed"]]
    assert folders["running"].exists() and folders["server_up"].exists() and young.exists()
