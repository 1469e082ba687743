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


_EMPTY_TEMPLATE: Path | None = None


def _empty_template() -> Path:
    """One freshly migrated empty database per test process, copied by make_db (migrating is the slow part)."""
    global _EMPTY_TEMPLATE
    if _EMPTY_TEMPLATE is None or not _EMPTY_TEMPLATE.exists():
        from analytics import store
        folder = tempfile.mkdtemp(prefix="outcomes-template-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        _EMPTY_TEMPLATE = store.initialise(Path(folder) / "empty.duckdb")
    return _EMPTY_TEMPLATE


def make_db(tmp_path: Path, patients=(), treatments=(), assessments=(), *, name: str = "test.duckdb",
            strict: bool = True) -> Path:
    """A database file in `tmp_path` holding exactly these rows (schema created even when empty)."""
    path = Path(tmp_path) / name
    template = _empty_template()
    shutil.copyfile(template, path)
    wal = Path(f"{template}.wal")
    if wal.exists():
        shutil.copyfile(wal, Path(f"{path}.wal"))
    add_rows(path, patients=patients, treatments=treatments, assessments=assessments, strict=strict)
    return path


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
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' ORDER BY 1").fetchall()]
        return {name: sorted(con.execute(f'SELECT * FROM "{name}"').fetchall(), key=repr) for name in names}


ITEM_COLUMNS = scales.item_columns()
