"""Shared fixtures: one demo database per test session, and a live Streamlit server.

The demo database is built through the ordinary command line
(`python -m analytics demo`), so page tests see what a clinic would import.
"""
from __future__ import annotations

import collections
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # AppTest runs page scripts in this process; they import analytics and pages
    sys.path.insert(0, str(ROOT))
# Audit keys and anchors (analytics/keys.py) of the test run live in a folder of their own, never in
# the operator's ~/.config; subprocesses (the CLI, streamlit) inherit it. Each parallel worker
# (pytest-xdist, `make test`) has its own: a test that rotates or loses a key must not touch another's.
# (This file is imported twice, as `conftest` and as `tests.conftest`: the folder is made once per process.)
_KEY_DIR_OWNER = "OUTCOMES_TEST_KEY_DIR_PID"
if os.environ.get(_KEY_DIR_OWNER) != str(os.getpid()) and (
        "OUTCOMES_KEY_DIR" not in os.environ or os.environ.get("PYTEST_XDIST_WORKER")):
    import atexit
    import tempfile

    os.environ["OUTCOMES_KEY_DIR"] = tempfile.mkdtemp(prefix="outcomes-test-keys-")
    os.environ[_KEY_DIR_OWNER] = str(os.getpid())
    atexit.register(shutil.rmtree, os.environ["OUTCOMES_KEY_DIR"], ignore_errors=True)
# The dashboard's saved tables (analytics/screens/saved.py) are off in tests unless a test turns them on:
# a table one test saved beside the shared demo database must not stand in for what another test patched.
os.environ.setdefault("OUTCOMES_SAVE_TABLES", "0")
DEMO_PATIENTS = 120
DEMO_SEED = 7
# The demo clinic's data end on 2026-11-20 (simulate.DEFAULT_END); pages see "today" as the day after.
DEMO_TODAY = "2026-11-21"


def _build_demo(path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "analytics", "demo", "--db", str(path),
         "--patients", str(DEMO_PATIENTS), "--seed", str(DEMO_SEED)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    if result.returncode != 0 or (isinstance(path, Path) and not path.exists()):
        raise RuntimeError(f"demo database build failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")


# --- the two backends -----------------------------------------------------------------------
# Tests that take the `backend` fixture (directly, or through `pytestmark = pytest.mark.usefixtures
# ("backend")`) run twice: on a DuckDB file and on a PostgreSQL database of a throwaway cluster
# (tools/pgcluster.py, started once per session). Their databases come from `fixtures.make_db`,
# `demo_db` and `writable_db`, which follow the test's backend.

BACKENDS = ("duckdb", "postgres")
POSTGRES_REQUIRED_ENV = "OUTCOMES_REQUIRE_POSTGRES"  # .ci/run sets it: there the PostgreSQL half must run
POSTGRES_ONLY_FILES = ("test_postgres.py", "test_two_servers.py", "test_pages_postgres.py")  # counted in the PostgreSQL half
_POSTGRES_OUTCOME = {"unavailable": None, "passed": 0, "failed": 0, "skipped": 0}


def pytest_generate_tests(metafunc):
    if "backend" in metafunc.fixturenames:
        # @pytest.mark.duckdb_only("why"): behaviour of the DuckDB file itself (locks, sidecar files,
        # the shared instance), which a PostgreSQL database does not have: run on DuckDB alone.
        only = metafunc.definition.get_closest_marker("duckdb_only")
        metafunc.parametrize("backend", ("duckdb",) if only else BACKENDS, indirect=True)


def pytest_configure(config):
    config.addinivalue_line("markers", "duckdb_only(reason): tests a DuckDB file's own behaviour; not run on PostgreSQL")


# Fixtures that start a dashboard server or a browser: the files using them take minutes each.
SLOW_FIXTURES = {"browser", "streamlit_server", "two_processes", "network"}


def pytest_collection_modifyitems(config, items):
    """With parallel workers (`make test`: pytest-xdist, whole files per worker in collection order), the files
    that start servers and browsers go first, so that no worker is left alone with one of them at the end.
    Each worker sorts the same way (xdist checks the collections are identical); a serial run keeps file order."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    slow = collections.Counter(item.path for item in items if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())))
    items.sort(key=lambda item: -slow[item.path])  # most such tests first; stable: file order otherwise kept


def backend_of(request) -> str:
    callspec = getattr(request.node, "callspec", None)
    return callspec.params.get("backend", "duckdb") if callspec is not None else "duckdb"


@pytest.fixture(scope="session")
def pg_databases():
    """A throwaway PostgreSQL cluster for the session (tools/pgcluster.py), as a `fixtures.PostgresDatabases`
    that makes and drops databases in it. When PostgreSQL cannot run here the PostgreSQL half of the
    suite is skipped with the reason (and fails under OUTCOMES_REQUIRE_POSTGRES=1, as in CI)."""
    from tools import pgcluster
    from fixtures import PostgresDatabases

    url = os.environ.get("OUTCOMES_TEST_PG")  # a server someone started for the tests
    if url:
        yield PostgresDatabases(url)
        return
    ok, why = pgcluster.available()
    if not ok:
        _POSTGRES_OUTCOME["unavailable"] = why
        if os.environ.get(POSTGRES_REQUIRED_ENV):
            pytest.fail(f"PostgreSQL half cannot run: {why}")
        pytest.skip(f"PostgreSQL half not run: {why}")
    try:
        import psycopg  # noqa: F401
    except ImportError as exc:
        why = f"psycopg is not installed ({exc}): pip install -r requirements.txt -c constraints.txt"
        _POSTGRES_OUTCOME["unavailable"] = why
        if os.environ.get(POSTGRES_REQUIRED_ENV):
            pytest.fail(f"PostgreSQL half cannot run: {why}")
        pytest.skip(f"PostgreSQL half not run: {why}")
    with pgcluster.Cluster() as cluster:  # from the main thread: the server dies with this process
        databases = PostgresDatabases(cluster.url)
        try:
            yield databases
        finally:
            databases.close()


@pytest.fixture()
def backend(request):
    """"duckdb" or "postgres" (parametrised); on PostgreSQL the test's databases are made in the cluster."""
    import fixtures

    name = request.param
    if name == "postgres":
        databases = request.getfixturevalue("pg_databases")
        fixtures.use_postgres(databases)
        try:
            yield name
        finally:
            fixtures.use_postgres(None)
            databases.drop_made()
    else:
        yield name


def pytest_runtest_logreport(report):
    if ("[postgres" in report.nodeid or report.nodeid.split("::")[0].endswith(POSTGRES_ONLY_FILES)) and (report.when == "call" or report.outcome != "passed"):
        if report.when == "call" or report.outcome in ("failed", "skipped"):
            _POSTGRES_OUTCOME[report.outcome] += 1
        # (with parallel workers the fixture's reason reaches this process only in the reports)
        why = report.longrepr[2] if report.skipped and isinstance(report.longrepr, (tuple, list)) else ""
        if "PostgreSQL half not run: " in why and not _POSTGRES_OUTCOME["unavailable"]:
            _POSTGRES_OUTCOME["unavailable"] = why.split("PostgreSQL half not run: ", 1)[1]


def pytest_terminal_summary(terminalreporter):
    outcome = _POSTGRES_OUTCOME
    if outcome["unavailable"]:
        terminalreporter.write_line(f"PostgreSQL half NOT RUN: {outcome['unavailable']}", red=True, bold=True)
    elif outcome["passed"] or outcome["failed"] or outcome["skipped"]:
        terminalreporter.write_line(f"PostgreSQL half: {outcome['passed']} passed, {outcome['failed']} failed, "
                                    f"{outcome['skipped']} skipped", bold=True)


@pytest.fixture(scope="session")
def demo_db(tmp_path_factory) -> Path:
    """A 120-patient demo clinic (seed 7) in a DuckDB file, built once and shared read-only."""
    path = tmp_path_factory.mktemp("demo") / "demo.duckdb"
    _build_demo(path)
    return path


@pytest.fixture(scope="session")
def _demo_postgres_template(request) -> str:
    """The demo clinic built once in the cluster, as a template database copied per test (never opened itself)."""
    databases = request.getfixturevalue("pg_databases")
    return databases.demo_template(_build_demo)


@pytest.fixture()
def writable_db(request, tmp_path):
    """A private copy of the demo database that a test may change (on the test's backend)."""
    if backend_of(request) == "postgres":
        import fixtures
        return fixtures.postgres().copy_of(request.getfixturevalue("_demo_postgres_template"))
    demo_db = request.getfixturevalue("demo_db")
    copy = tmp_path / "writable.duckdb"
    shutil.copy(demo_db, copy)
    wal = Path(str(demo_db) + ".wal")
    if wal.exists():
        shutil.copy(wal, Path(str(copy) + ".wal"))
    return copy


from fixtures import BROWSER_PASSWORD  # noqa: E402 (after the key folder is set)


@pytest.fixture(scope="session")
def server_db(demo_db, tmp_path_factory) -> Path:
    """A copy of the demo clinic for the live server, with one account per clinician handle (named
    after it), `director` and `admin`, all with BROWSER_PASSWORD: the browser signs in like a user."""
    from analytics import auth

    path = tmp_path_factory.mktemp("server-db") / "demo.duckdb"
    shutil.copy(demo_db, path)
    wal = Path(str(demo_db) + ".wal")
    if wal.exists():
        shutil.copy(wal, Path(str(path) + ".wal"))
    from analytics.access import DataAccess

    for handle in sorted(DataAccess(path).patients()["clinician"].dropna().unique()):
        auth.create_user(path, handle, "clinician", BROWSER_PASSWORD, actor="test")
    auth.create_user(path, "director", "director", BROWSER_PASSWORD, actor="test")
    auth.create_user(path, "admin", "admin", BROWSER_PASSWORD, actor="test")
    return path


@pytest.fixture()
def outcomes_db(monkeypatch, demo_db) -> Path:
    """Point the app (store.db_path) at the demo database for this test."""
    monkeypatch.setenv("OUTCOMES_DB", str(demo_db))
    return demo_db


def scope_for_test_role():
    """The scope page tests run as: OUTCOMES_ROLE=clinician (with OUTCOMES_CLINICIAN), director or admin
    gives that role's real scope (as analytics.access.scope_for builds it); unset, the operator's SYSTEM scope."""
    from analytics import access, suppress

    role = os.environ.get("OUTCOMES_ROLE")
    if role == "clinician":
        clinician = os.environ.get("OUTCOMES_CLINICIAN", "")
        return access.Scope(user=clinician or "clinician", role="clinician", clinician=clinician,
                            min_cell=suppress.default_min_cell())
    if role in ("director", "admin"):
        return access.Scope(user=role, role=role, patient_level=False, identifiable=False,
                            min_cell=suppress.default_min_cell())
    return access.SYSTEM


@pytest.fixture(autouse=True)
def signed_in_as_test_role(request, monkeypatch):
    """Page tests (tests/test_pages_*.py, or any test using open_page) skip the sign-in form: the
    dashboard's `signed_in_scope()` returns `scope_for_test_role()`, read when each page runs, so
    a test may set OUTCOMES_ROLE / OUTCOMES_CLINICIAN at any point. Tests of sign-in itself
    (tests/test_auth_pages.py) are not patched and sign in through the form."""
    if not (request.node.path.name.startswith("test_pages_") or "open_page" in request.fixturenames):
        return
    import pages._signin as signin

    monkeypatch.setattr(signin, "signed_in_scope", scope_for_test_role)


@pytest.fixture()
def open_page(outcomes_db, monkeypatch):
    """Run one dashboard page with Streamlit's AppTest on the demo database: open_page("patient", patient="P00001")."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("OUTCOMES_TODAY", DEMO_TODAY)
    monkeypatch.delenv("OUTCOMES_ROLE", raising=False)
    from analytics.screens.workspace import WORKSPACES

    WORKSPACES.clear()  # the process's cached tables and figures: a test may have patched what builds them

    def run(name: str, *, session_state: dict | None = None, **query) -> "AppTest":
        script = ROOT / ("dashboard.py" if name == "dashboard" else f"pages/{name}.py")
        at = AppTest.from_file(str(script), default_timeout=180)
        for key, value in query.items():
            at.query_params[key] = value
        for key, value in (session_state or {}).items():  # e.g. a section already opened
            at.session_state[key] = value
        return at.run()

    return run


def wait_until_healthy(url: str, proc: subprocess.Popen, log: Path, *, timeout_s: float) -> None:
    """Return once the dashboard server at `url` answers its health check; raise with its log if the
    process `proc` ends first or timeout_s passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the dashboard server did not start:\n{Path(log).read_text()}")
        time.sleep(0.2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_dashboard(db, log: Path, *, port: int | None = None, env: dict | None = None, args=()):
    """`streamlit run serve.py` (the dashboard with its security routes and headers) against `db` on 127.0.0.1 (its output in `log`); yields the base URL
    once the server answers its health check, and stops it afterwards. Without a `port`, a free one (another
    one if a parallel test took it meanwhile)."""
    environ = dict(os.environ, OUTCOMES_DB=str(db), PYTHONPATH=str(ROOT), STREAMLIT_BROWSER_GATHER_USAGE_STATS="false",
                   **(env or {}))
    environ.pop("OUTCOMES_ROLE", None)
    for attempt in range(1 if port else 3):
        chosen = port or free_port()
        with open(log, "w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "streamlit", "run", "serve.py", "--server.port", str(chosen),
                 "--server.headless", "true", "--server.address", "127.0.0.1", *args],
                cwd=ROOT, env=environ, stdout=out, stderr=subprocess.STDOUT,
            )
        url = f"http://127.0.0.1:{chosen}"
        try:
            wait_until_healthy(url, proc, log, timeout_s=60)
            break
        except RuntimeError:
            _stop(proc)
            if port or attempt == 2 or "is not available" not in Path(log).read_text():
                raise
    try:
        yield url
    finally:
        import fixtures

        fixtures.forget_sign_ins(url)
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def streamlit_server(server_db, tmp_path_factory):
    """`streamlit run dashboard.py` on a free port against a copy of the demo database with accounts
    (`server_db`); yields the base URL. Visitors must sign in (fixtures.open_signed_in, fixtures.sign_in)."""
    with serve_dashboard(server_db, tmp_path_factory.mktemp("server") / "streamlit.log",
                         env={"OUTCOMES_TODAY": DEMO_TODAY}) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (Playwright) for one test module; each test opens its own context (cookies, viewport)
    in it, e.g. with fixtures.open_signed_in. A missing browser fails the run with the reason."""
    import fixtures

    reason = fixtures.browser_or_reason()
    if reason:
        pytest.fail(f"the browser tests need Chromium: {reason}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=fixtures.CHROMIUM, args=fixtures.CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def shown(markdown: str) -> str:
    """What a reader sees of markdown that pages/_text.plain escaped: no backslash escapes, no zero-width breaks."""
    import re

    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", str(markdown)).replace("\u200b", "")


def page_text(at) -> str:
    """Every piece of text an AppTest run shows (titles, alerts, captions, markdown, metrics), one per line,
    as a reader sees it (markdown escapes removed)."""
    parts = []
    for kind in ("title", "header", "subheader", "markdown", "caption", "info", "warning", "error", "success"):
        parts += [str(e.value) for e in getattr(at, kind)]
    parts += [f"{m.label}: {m.value}" for m in at.metric]
    return shown("\n".join(parts))


@pytest.fixture()
def text_of():
    return page_text
