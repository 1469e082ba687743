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
