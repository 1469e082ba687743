"""Shared fixtures: one demo database per test session, and a live Streamlit server.

The demo database is built through the ordinary command line
(`python -m analytics demo`), so page tests see what a clinic would import.
"""
from __future__ import annotations

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
# the operator's ~/.config; subprocesses (the CLI, streamlit) inherit it.
if "OUTCOMES_KEY_DIR" not in os.environ:
    import atexit
    import tempfile

    os.environ["OUTCOMES_KEY_DIR"] = tempfile.mkdtemp(prefix="outcomes-test-keys-")
    atexit.register(shutil.rmtree, os.environ["OUTCOMES_KEY_DIR"], ignore_errors=True)
DEMO_PATIENTS = 120
DEMO_SEED = 7
# The demo clinic's data end on 2026-11-20 (simulate.DEFAULT_END); pages see "today" as the day after.
DEMO_TODAY = "2026-11-21"


def _build_demo(path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "analytics", "demo", "--db", str(path),
         "--patients", str(DEMO_PATIENTS), "--seed", str(DEMO_SEED)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    if result.returncode != 0 or not path.exists():
        raise RuntimeError(f"demo database build failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")


@pytest.fixture(scope="session")
def demo_db(tmp_path_factory) -> Path:
    """A 120-patient demo clinic (seed 7), built once and shared read-only."""
    path = tmp_path_factory.mktemp("demo") / "demo.duckdb"
    _build_demo(path)
    return path


@pytest.fixture()
def writable_db(demo_db, tmp_path) -> Path:
    """A private copy of the demo database that a test may change."""
    copy = tmp_path / "writable.duckdb"
    shutil.copy(demo_db, copy)
    wal = Path(str(demo_db) + ".wal")
    if wal.exists():
        shutil.copy(wal, Path(str(copy) + ".wal"))
    return copy


BROWSER_PASSWORD = "browser test passphrase"


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

    def run(name: str, **query) -> "AppTest":
        script = ROOT / ("dashboard.py" if name == "dashboard" else f"pages/{name}.py")
        at = AppTest.from_file(str(script), default_timeout=180)
        for key, value in query.items():
            at.query_params[key] = value
        return at.run()

    return run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_dashboard(db, log: Path, *, port: int | None = None, env: dict | None = None, args=()):
    """`streamlit run serve.py` (the dashboard with its security routes and headers) against `db` on 127.0.0.1 (its output in `log`); yields the base URL
    once the server answers its health check, and stops it afterwards."""
    port = port or free_port()
    environ = dict(os.environ, OUTCOMES_DB=str(db), PYTHONPATH=str(ROOT), STREAMLIT_BROWSER_GATHER_USAGE_STATS="false",
                   **(env or {}))
    environ.pop("OUTCOMES_ROLE", None)
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "serve.py", "--server.port", str(port),
             "--server.headless", "true", "--server.address", "127.0.0.1", *args],
            cwd=ROOT, env=environ, stdout=out, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"streamlit did not start:\n{Path(log).read_text()}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="session")
def streamlit_server(server_db, tmp_path_factory):
    """`streamlit run dashboard.py` on a free port against a copy of the demo database with accounts
    (`server_db`); yields the base URL. Visitors must sign in (tests/test_browser.py `_sign_in`)."""
    with serve_dashboard(server_db, tmp_path_factory.mktemp("server") / "streamlit.log",
                         env={"OUTCOMES_TODAY": DEMO_TODAY}) as url:
        yield url


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
