"""Validated import of patients, treatments and assessments: files (CSV, FHIR) or frames from other sources.

Files are read by their source (sources.py: csv_source.py, fhir_source.py) and every
check that needs no database runs first, in memory or a block at a time; then one short
transaction checks what needs the store (unknown patient, treatment before enrolment) in
SQL and writes (jobs.py, write.py). One command is one transaction: all files land, or
(on a refused file, an error or a kill) none of them. `preview` reads the same way and
writes nothing.

Public API: `import_files`, `import_tables`, `import_fhir_files`, `preview`, `ImportReport`
(`python -m analytics import`: analytics/commands/import_files.py). Rules and their
reasons: rules.py; the format: docs/import.md.
"""
from __future__ import annotations

import csv as stdlib_csv
import hashlib
import io
import os
from typing import Callable, Iterable

import numpy as np
import pandas as pd

from .. import clinic_time
from ..progress import Progress
from . import rules
from .csv import BLOCK_ROWS, FileRefused
from .fhir_source import FhirSource
from .jobs import FileJob, run
from .report import FileResult, ImportReport, Reject
from .sources import Reading, preview, read_files


def import_files(paths: Iterable[str | os.PathLike], db=None, user: str = "system",
                 block_rows: int = BLOCK_ROWS, progress: Progress | None = None) -> ImportReport:
    """Import CSV and FHIR files (each recognised by content: a CSV's kind by its header); patients
    files go first whatever the order.

    `block_rows`: a treatments or assessments CSV with more rows is checked in blocks of this
    many and staged on disk (memory holds one block); the outcome is the same whatever the size.
    `progress` receives a line per file, per block checked and before the write.
    """
    if zone_error := _clinic_zone_error():
        return ImportReport(error=zone_error)
    with read_files(paths, db=db, block_rows=block_rows, progress=progress) as reading:
        report = ImportReport(files=reading.files, error=reading.error)
        if reading.error:
            return report
        report.files.sort(key=lambda f: rules.KINDS.index(f.kind) if f.kind in rules.KINDS else -1)
        if progress and report.written:
            progress("writing the checked rows (one transaction)")
        return run(reading.jobs, report, db, user, snapshot=True)


def import_fhir_files(files, db=None, user: str = "system", identifier_system: str | None = None) -> ImportReport:
    """Import FHIR files only (paths or (name, bytes) uploads) in one transaction; `identifier_system`
    names the Patient.identifier system that holds the patient id (docs/fhir.md)."""
    reading = Reading()
    FhirSource().read(list(files), reading, db=db, identifier_system=identifier_system)
    return run(reading.jobs, ImportReport(files=reading.files), db, user, snapshot=True)


def import_tables(
    tables: dict[str, pd.DataFrame],
    *,
    file_name: str,
    source: str,
    db=None,
    sha256: str | None = None,
    user: str = "system",
    after_write=None,
) -> ImportReport:
    """Import frames of raw strings (CSV column names, optional _line and _raw) through the CSV checks.

    `after_write(con, report)`, if given, runs inside the import's transaction after the rows are
    written; raising there rolls everything back (analytics.visits, analytics.selfreport).
    """
    if zone_error := _clinic_zone_error():
        return ImportReport(error=zone_error)
    report = ImportReport()
    jobs: list[FileJob] = []
    digest = sha256 or _frame_sha256(tables)
    for kind in rules.KINDS:
        if kind not in tables:
            continue
        frame = tables[kind].reset_index(drop=True)
        frame.columns = [str(c).strip().lower() if not str(c).startswith("_") else str(c) for c in frame.columns]
        missing = rules.missing_columns(kind, frame.columns)
        if missing:
            report.files.append(FileResult(file=file_name, kind=kind, refused=(
                f"{file_name}: the {kind} table has no column {', '.join(missing)} "
                f"(required: {', '.join(rules.REQUIRED[kind])}); nothing was imported")))
            continue
        validated = rules.validate(kind, frame)
        result = FileResult(file=file_name, kind=kind, notes=validated.notes)
        report.files.append(result)
        jobs.append(FileJob(file_name, source, digest, validated, _csv_line(frame), result))
    unknown = sorted(set(tables) - set(rules.KINDS))
    if unknown:
        report.files.append(FileResult(file=file_name, kind=None, refused=f"{file_name}: unknown table kind(s) {', '.join(unknown)}; expected {', '.join(rules.KINDS)}"))
    return run(jobs, report, db, user, after_write)



def _clinic_zone_error() -> str | None:
    """A wrong OUTCOMES_TIMEZONE stops an import before anything is read (its times would be wrong)."""
    try:
        clinic_time.zone()
    except clinic_time.TimeZoneSettingError as exc:
        return str(exc)
    return None


def _csv_line(frame: pd.DataFrame) -> Callable[[np.ndarray, np.ndarray], list[str]]:
    """Raw text for rejected rows: the `_raw` column, else the row's cells re-joined as CSV."""
    if "_raw" in frame.columns:
        raw = frame["_raw"].to_numpy()
        return lambda rows, lines: [None if pd.isna(raw[r]) else str(raw[r]) for r in rows]
    cells = frame[[c for c in frame.columns if not c.startswith("_")]]

    def join(rows, lines):
        out = []
        for r in rows:
            buffer = io.StringIO()
            stdlib_csv.writer(buffer, lineterminator="").writerow(["" if pd.isna(v) else v for v in cells.iloc[int(r)]])
            out.append(buffer.getvalue())
        return out
    return join


def _frame_sha256(tables: dict[str, pd.DataFrame]) -> str:
    digest = hashlib.sha256()
    for kind in sorted(tables):
        digest.update(kind.encode())
        digest.update(pd.util.hash_pandas_object(tables[kind].astype(str), index=False).to_numpy().tobytes())
    return digest.hexdigest()


__all__ = ["import_files", "import_tables", "import_fhir_files", "preview", "ImportReport", "FileResult", "Reject",
           "FileRefused"]
