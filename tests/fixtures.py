"""Small test databases from inline rows, built through the real import path.

    from fixtures import make_db, patient, treatment, assessment

    db = make_db(tmp_path,
                 patients=[patient("P1", clinician="dr_a")],
                 treatments=[treatment("P1", "2024-01-08")],
                 assessments=[assessment("P1", "PHQ-9", "2024-01-08", items=[2] * 9)])

Rows are dicts keyed by the CSV column names (docs/import.md); values may be
numbers or strings. `make_db` goes through `analytics.ingest.import_tables`,
so a fixture can never hold a row the importer would refuse: it raises with
the importer's messages instead (pass strict=False to keep the quarantine).
"""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

import pandas as pd

from analytics import ingest, scales

DEFAULT_ENROLLED_ON = "2024-01-01"


def patient(patient_id: str, **fields) -> dict:
    row = {
        "patient_id": patient_id, "site": "North", "clinician": "dr_a", "birth_year": 1980, "sex": "F",
        "diagnosis": "TRD", "comorbidities": "", "prior_failed_trials": 2, "enrolled_on": DEFAULT_ENROLLED_ON,
    }
    row.update(fields)
    return row


def treatment(patient_id: str, administered_on: str, route: str = "iv", dose_mg_per_kg: float | None = 0.5,
              phase: str = "", **fields) -> dict:
    return {"patient_id": patient_id, "administered_on": administered_on, "route": route,
            "dose_mg_per_kg": dose_mg_per_kg, "phase": phase, **fields}


def assessment(patient_id: str, instrument: str, administered_on: str, *, items: Iterable | None = None,
               total: float | None = None, rater: str = "", **fields) -> dict:
    row = {"patient_id": patient_id, "instrument": instrument, "administered_on": administered_on, "rater": rater}
    for number, value in enumerate(items or [], start=1):
        row[f"item_{number}"] = value
    row["total"] = total
    row.update(fields)
    return row


def _frame(rows: list[dict], columns: tuple[str, ...]) -> pd.DataFrame:
    names = list(columns) + [c for row in rows for c in row if c not in columns]
    names = list(dict.fromkeys(names))
    cells = [{c: ("" if row.get(c) is None else str(row.get(c))) for c in names} for row in rows]
    return pd.DataFrame(cells, columns=names, dtype="str")


def tables(patients=(), treatments=(), assessments=()) -> dict[str, pd.DataFrame]:
    """Inline rows as the raw-string frames `import_tables` takes."""
    from analytics.ingest import rules
    out = {}
    if patients:
        out["patients"] = _frame(list(patients), rules.PATIENT_COLUMNS)
    if treatments:
        out["treatments"] = _frame(list(treatments), rules.TREATMENT_COLUMNS)
    if assessments:
        out["assessments"] = _frame(list(assessments), rules.ASSESSMENT_COLUMNS)
    return out


class PostgresDatabases:
    """Databases in one PostgreSQL cluster for tests: each test gets its own, copied from a template
    (CREATE DATABASE ... TEMPLATE, ~0.3 s) and dropped afterwards with this process's connections."""

    def __init__(self, url: str):
        from urllib.parse import urlsplit

        self.url = url
        self.parts = urlsplit(url)
        self.made: list[str] = []
        self.templates: dict[str, str] = {}
        self.serial = 0
        self._admin = None

    def url_of(self, name: str) -> str:
        return self.parts._replace(path="/" + name).geturl()

    def admin(self):
        import psycopg

        if self._admin is None or self._admin.closed:
            self._admin = psycopg.connect(self.url, autocommit=True)
        return self._admin

    def _create(self, name: str, template: str | None = None) -> str:
        sql = f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}" STRATEGY FILE_COPY' if template else "")
        self.admin().execute(sql)
        return self.url_of(name)

    def new(self, template: str | None = None):
        """A new database of this test (empty, or a copy of `template`), dropped by drop_made()."""
        from analytics import store

        self.serial += 1
        name = f"t{os.getpid()}_{self.serial}"
        self._create(name, template)
        self.made.append(name)
        return store.PostgresTarget(self.url_of(name))

    def copy_of(self, template: str):
        return self.new(template=template)

    def lasting_copy_of(self, template: str):
        """A copy of `template` that outlives the test (a module's or session's database): drop() it."""
        from analytics import store

        self.serial += 1
        return store.PostgresTarget(self._create(f"l{os.getpid()}_{self.serial}", template))

    def drop(self, db) -> None:
        from analytics import store_postgres

        store_postgres.close_all(db)
        self.admin().execute(f'DROP DATABASE IF EXISTS "{db.url.rsplit("/", 1)[-1]}" WITH (FORCE)')

    def _template(self, name: str, build) -> str:
        if name not in self.templates:
            from analytics import store, store_postgres

            url = self._create(name)
            build(url)
            store_postgres.close_all(store.PostgresTarget(url))  # a template must have no connections
            self.templates[name] = name
        return name

    def empty_template(self) -> str:
        from analytics import store
        return self._template("tpl_empty", store.initialise)

    def demo_template(self, build) -> str:
        return self._template("tpl_demo", build)

    def drop_made(self) -> None:
        from analytics import store, store_postgres

        for name in self.made:
            store_postgres.close_all(store.PostgresTarget(self.url_of(name)))
            self.admin().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.made = []

    def close(self) -> None:
        from analytics import store_postgres

        self.drop_made()
        store_postgres.close_all()
        if self._admin is not None:
            self._admin.close()


_POSTGRES: PostgresDatabases | None = None


def use_postgres(databases: PostgresDatabases | None) -> None:
    """Make `make_db` build on PostgreSQL (conftest's `backend` fixture), or back on DuckDB files (None)."""
    global _POSTGRES
    _POSTGRES = databases


def postgres() -> PostgresDatabases:
    if _POSTGRES is None:
        raise RuntimeError("not a PostgreSQL test: take the `backend` fixture")
    return _POSTGRES


_EMPTY_TEMPLATES: dict[int, Path] = {}


def _empty_template() -> Path:
    """One freshly migrated empty database per test process and schema version (a test may stand in an
    older version of the software), copied by make_db (migrating is the slow part)."""
    from analytics import store
    template = _EMPTY_TEMPLATES.get(store.SCHEMA_VERSION)
    if template is None or not template.exists():
        folder = tempfile.mkdtemp(prefix="outcomes-template-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        template = _EMPTY_TEMPLATES[store.SCHEMA_VERSION] = store.initialise(Path(folder) / "empty.duckdb")
    return template


def schema_file(path: Path, version: int):
    """A DuckDB file as schema `version` left it, written by the migrations up to it without the product
    (for migration tests); an open connection, the caller adds rows and closes it."""
    import duckdb

    from analytics import store

    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TIMESTAMP NOT NULL DEFAULT current_timestamp)")
    for number, migration in enumerate(store.MIGRATIONS[:version], start=1):
        for statement in migration():
            con.execute(statement)
        con.execute("INSERT INTO schema_version (version) VALUES (?)", [number])
    return con


def make_db(tmp_path: Path, patients=(), treatments=(), assessments=(), *, name: str = "test.duckdb",
            strict: bool = True) -> Path:
    """A database file in `tmp_path` holding exactly these rows (schema created even when empty); in a
    PostgreSQL test (the `backend` fixture) a new database of the cluster instead."""
    if _POSTGRES is not None:
        db = _POSTGRES.copy_of(_POSTGRES.empty_template())
        add_rows(db, patients=patients, treatments=treatments, assessments=assessments, strict=strict)
        return db
    path = Path(tmp_path) / name
    template = _empty_template()
    shutil.copyfile(template, path)
    wal = Path(f"{template}.wal")
    if wal.exists():
        shutil.copyfile(wal, Path(f"{path}.wal"))
    add_rows(path, patients=patients, treatments=treatments, assessments=assessments, strict=strict)
    return path


def new_db(tmp_path: Path, name: str = "new.duckdb"):
    """Where a database does not exist yet: a file path, or in a PostgreSQL test an empty database
    (no schema: the first write creates it, as the first write creates a file)."""
    if _POSTGRES is not None:
        return _POSTGRES.new()
    return Path(tmp_path) / name


def add_rows(db: Path, patients=(), treatments=(), assessments=(), *, strict: bool = True) -> ingest.ImportReport:
    """Import more inline rows into `db` (one transaction); raises when strict and any row is rejected."""
    frames = tables(patients, treatments, assessments)
    if not frames:
        return ingest.ImportReport()
    report = ingest.import_tables(frames, file_name="fixture", source="test", db=db)
    if strict and report.exit_code != 0:
        raise ValueError("fixture rows were rejected:\n" + "\n".join(report.messages()))
    return report


def snapshot(db: Path) -> dict[str, list[tuple]]:
    """Every row of every table, sorted: compare two snapshots to prove nothing changed."""
    from analytics import store
    with store.connect(db) as con:
        names = [r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() ORDER BY 1").fetchall()]
        return {name: sorted(con.execute(f'SELECT * FROM "{name}"').fetchall(), key=repr) for name in names}


ITEM_COLUMNS = scales.item_columns()


# --- the browser (tests/test_browser*.py, test_security_browser.py, test_two_servers.py, test_auth_oidc.py) ---------

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
                 "--no-first-run", "--disable-component-update", "--disable-sync"]
SCREENSHOTS = Path(__file__).resolve().parent.parent / "test-output"
BROWSER_PASSWORD = "browser test passphrase"  # every account of the browser tests' clinics (conftest.server_db)
# A script run has ended when Streamlit's app root says so (data-test-script-state), no spinner or status widget
# shows and no element of the previous run is left stale: the status widget is not drawn for a short run, and
# the previous run's charts stay on the page (marked stale) until the new run ends.
IDLE = ("() => document.querySelector('[data-testid=\"stApp\"]')?.getAttribute('data-test-script-state') === 'notRunning' && "
        "!document.querySelector('[data-testid=\"stSpinner\"]') && "
        "!document.querySelector('[data-testid=\"stStatusWidget\"]') && "
        "!document.querySelector('[data-stale=\"true\"]')")
CHARTS_DRAWN = ("() => [...document.querySelectorAll('[data-testid=\"stPlotlyChart\"]')]"
                ".every(e => e.querySelector('.main-svg'))")
CONTENT_HEIGHT = ("() => { const main = document.querySelector('[data-testid=\"stMain\"]');"
                  " const items = [...document.querySelectorAll('[data-testid=\"stMainBlockContainer\"] [data-testid=\"stElementContainer\"]')];"
                  " return Math.max(main.scrollHeight, ...items.map(e => e.getBoundingClientRect().bottom + main.scrollTop)); }")
# Resolves once the page's layout (its height, and every chart's size) has not changed for `ms` milliseconds:
# what a fixed pause before a screenshot waited for, without waiting longer than needed.
LAYOUT_SETTLED = """(ms) => new Promise(resolve => {
    const main = document.querySelector('[data-testid="stMain"]');
    const shape = () => JSON.stringify([main ? main.scrollHeight : 0,
        ...[...document.querySelectorAll('[data-testid="stPlotlyChart"] .main-svg')].map(
            e => { const r = e.getBoundingClientRect(); return [Math.round(r.width), Math.round(r.height)]; })]);
    let last = shape(), since = performance.now();
    const tick = () => {
        const now = shape();
        if (now !== last) { last = now; since = performance.now(); }
        if (performance.now() - since >= ms) resolve(true); else setTimeout(tick, 100);
    };
    setTimeout(tick, 100);
})"""


def full_screenshot(pg, name: str, *, width: int = 1400, min_height: int = 1000) -> Path:
    """test-output/<name>.png of the whole page. Streamlit scrolls inside its own container, so the window grows
    to the content first (twice: charts drawn after the first resize can make the page longer), each time until
    the layout holds still."""
    SCREENSHOTS.mkdir(exist_ok=True)
    for _ in range(2):
        height = pg.evaluate(CONTENT_HEIGHT)
        pg.set_viewport_size({"width": width, "height": max(min_height, int(height) + 150)})
        pg.wait_for_function(IDLE, timeout=120_000)
        pg.wait_for_function(CHARTS_DRAWN, timeout=60_000)
        pg.evaluate(LAYOUT_SETTLED, 600)
    path = SCREENSHOTS / f"{name}.png"
    pg.screenshot(path=str(path), full_page=True, timeout=120_000)  # a tall page on a loaded machine takes a while
    return path


def browser_or_reason() -> str | None:
    """Why the browser tests cannot run here, or None."""
    import shutil as _shutil

    if not (os.path.exists(CHROMIUM) or _shutil.which("chromium")):
        return f"no Chromium at {CHROMIUM} (install Debian's chromium package)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is not installed"
    return None


def sign_in(pg, user: str, password: str = BROWSER_PASSWORD) -> None:
    """Fill the sign-in form the server shows to every new browser session (the URL is kept)."""
    pg.get_by_role("heading", name="Sign in", level=1).wait_for(timeout=120_000)
    pg.get_by_role("textbox", name="User name").fill(user)
    box = pg.get_by_role("textbox", name="Password")
    box.fill(password)
    box.press("Enter")  # submits the form once both values are in
    pg.get_by_role("heading", name="Sign in", level=1).wait_for(state="detached", timeout=120_000)


SESSION_COOKIE = "outcomes_session"
_SIGNED_IN: dict[tuple[str, str], dict] = {}  # (server URL, user) -> the browser's storage state after signing in


def session_cookie(context, timeout_s: float = 20.0) -> dict | None:
    """The sign-in cookie of a browser context once the page has fetched it (the page posts its one-time
    claim just after signing in), or None after timeout_s."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        found = [c for c in context.cookies() if c["name"] == SESSION_COOKIE and c["value"]]
        if found:
            return found[0]
        if time.monotonic() > deadline:
            return None
        time.sleep(0.1)


def open_signed_in(browser, url: str, user: str, *, width: int = 1400, height: int = 1000, remember: bool = True,
                   **context_options):
    """(context, page) of a new browser context at `url` (a page of a dashboard server), signed in as `user`.

    The first time for a server and user, through the sign-in form; after that (unless remember=False, for a
    server of one test) the new context starts with the session cookie that sign-in left (as a new tab or a
    reload does), so the page opens without the form. If that session has ended meanwhile (idle limit), the
    form again."""
    from urllib.parse import urlsplit

    base = "{0.scheme}://{0.netloc}".format(urlsplit(url))
    state = _SIGNED_IN.get((base, user))
    context = browser.new_context(viewport={"width": width, "height": height}, storage_state=state, **context_options)
    context.set_default_timeout(120_000)  # clicks and waits on a loaded 2-core machine take more than 30 s at times
    pg = context.new_page()
    pg.goto(url)
    if state is not None:
        signed_out = pg.get_by_role("heading", name="Sign in", level=1)
        pg.locator("h1").first.wait_for(timeout=120_000)
        pg.wait_for_function(IDLE, timeout=120_000)
        if signed_out.count() == 0:
            return context, pg
        _SIGNED_IN.pop((base, user), None)
    sign_in(pg, user)
    if remember and session_cookie(context, timeout_s=10):
        _SIGNED_IN[(base, user)] = context.storage_state()
    return context, pg


def forget_sign_ins(url: str) -> None:
    """A server at `url` stopped: its sessions are gone with it (conftest.serve_dashboard calls this)."""
    for key in [k for k in _SIGNED_IN if k[0] == url]:
        del _SIGNED_IN[key]
