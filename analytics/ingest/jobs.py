"""The write phase every source ends in: checked files as `FileJob`s, written in one transaction.

Patients go first; the store checks what needs it (unknown patient, treatment before
enrolment) in SQL (write.py); rejected rows are quarantined with their raw text; the
import's audit entry is written in the same transaction, so no import is unrecorded and
a failed one changes nothing.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from .. import audit, auth, store
from . import rules, write
from .report import FileResult, ImportReport, Reject

# Test hook: when set to a path, the import writes its pid there after writing
# and before COMMIT, then waits (OUTCOMES_IMPORT_HOLD_SECONDS, default 60) with
# the write lock held, so a test can kill it mid-transaction or read meanwhile.
HOLD_BEFORE_COMMIT_ENV = "OUTCOMES_IMPORT_HOLD_BEFORE_COMMIT"
HOLD_SECONDS_ENV = "OUTCOMES_IMPORT_HOLD_SECONDS"
# Sources that are not an import of real data: the demo generator and entries made in the browser
# (visits, self-reports). Any other import ends the demo accounts (auth.disable_demo_accounts).
DEMO_LIKE_SOURCES = ("demo", "ui")


@dataclass
class Staged:
    """A large file's good rows, in a Parquet file of their own (with `_row` and `_line`)."""
    path: Path
    rows_total: int


@dataclass
class FileJob:
    """One file's (or one table's) checked rows, as a source hands them to the write: the unit of the
    import source interface (ingest/sources.py)."""
    file_name: str
    source: str
    sha256: str
    validated: rules.Validated  # clean is None when the rows are staged (then its rejects are the file's)
    raw_for: Callable[[np.ndarray, np.ndarray], list[str]]  # (rows, lines) -> raw text
    result: FileResult
    staged: Staged | None = None

    @property
    def rows_total(self) -> int:
        if self.staged is not None:
            return self.staged.rows_total
        return len(self.validated.clean) + len(self.validated.rejects)


def sql_path(path: Path) -> str:
    """A path of the import's own temporary directory as an SQL string body (COPY and views take no parameters)."""
    return str(path).replace("'", "''")


def _all_rejects(job: FileJob, db_rejects: pd.DataFrame | None) -> pd.DataFrame:
    v = job.validated
    rejects = v.rejects
    if db_rejects is not None and len(db_rejects) and v.clean is None:  # staged rows: lines straight from SQL
        extra = pd.DataFrame({"_row": np.full(len(db_rejects), -1, dtype="int64"), "_line": db_rejects["_line"].to_numpy(),
                              "column": db_rejects["column"].to_numpy(), "reason": db_rejects["reason"].to_numpy()})
        rejects = pd.concat([rejects, extra], ignore_index=True)
    elif db_rejects is not None and len(db_rejects):
        # db_rejects index rows of the clean frame: translate to the source rows and lines.
        clean_rows = v.clean["_row"].to_numpy()[db_rejects["_row"].to_numpy()]
        clean_lines = v.clean["_line"].to_numpy()[db_rejects["_row"].to_numpy()]
        extra = pd.DataFrame({"_row": clean_rows, "_line": clean_lines,
                              "column": db_rejects["column"].to_numpy(), "reason": db_rejects["reason"].to_numpy()})
        rejects = pd.concat([rejects, extra], ignore_index=True)
    rejects = rejects.sort_values("_line", kind="stable").reset_index(drop=True)
    rejects["raw"] = job.raw_for(rejects["_row"].to_numpy(), rejects["_line"].to_numpy()) if len(rejects) else []
    return rejects


def _hold_for_tests() -> None:
    marker = os.environ.get(HOLD_BEFORE_COMMIT_ENV)
    if marker:
        Path(marker).write_text(str(os.getpid()))
        time.sleep(float(os.environ.get(HOLD_SECONDS_ENV, "60")))


def run(jobs: list[FileJob], report: ImportReport, db, user: str, after_write=None,
        snapshot: bool = False) -> ImportReport:
    """The write phase: one transaction for every job, patients first. `snapshot` (an import of files,
    which may write for a while): other processes read the last committed version meanwhile
    (store.connect)."""
    if not report.written:
        return report
    jobs = sorted(jobs, key=lambda j: rules.KINDS.index(j.validated.kind))
    try:
        with store.transaction(db, snapshot=snapshot) as con:
            # Imports (visit entries and self-reports included) write one at a time: on a file the
            # single writer sees to it; on PostgreSQL this lock, so two imports of overlapping rows
            # never meet at a key (one would fail whole) and each sees the other's rows.
            store.lock(con, "import")
            for job in jobs:
                _write_job(con, job, user)
            if after_write is not None:  # the caller's own rows (visit entry, self-report), same transaction
                after_write(con, report)
            if any(job.source not in DEMO_LIKE_SOURCES for job in jobs):
                report.demo_accounts_disabled = auth.disable_demo_accounts(con, db, actor=user)
            _audit_import(db, user, report, "ok", con=con)  # in the same transaction: no import unrecorded
            _hold_for_tests()
        report.committed = True
    except store.CommittedButFailed as exc:
        # The rows are stored (in the write-ahead log at least); only the step after the commit failed.
        report.committed = True
        report.warnings.append(
            f"the import was committed and its rows are stored, but {exc.step} failed: "
            f"{_first_line(exc.error).rstrip('. ')}. The database is consistent: the committed rows are in its "
            f"write-ahead log ({store.db_path(db).name}.wal) and are moved into the file the next time it is "
            "opened with room to do so. Free disk space; the files need not be imported again")
    except (*store.DatabaseError, store.Refused) as exc:  # busy, read-only, a newer schema: nothing was written
        report.demo_accounts_disabled = []
        for job in jobs:
            job.result.batch_id = None
            job.result.rows_inserted = job.result.rows_updated = job.result.rows_unchanged = 0
        report.error = _first_line(exc)
    return report


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _write_job(con, job: FileJob, user: str) -> None:
    v = job.validated
    result = job.result
    result.rows_total = job.rows_total
    batch_id = write.start_batch(con, source=job.source, file_name=job.file_name, sha256=job.sha256,
                                 kind=v.kind, user=user, rows_total=result.rows_total)
    if job.staged is not None:
        written = write.write(con, v, batch_id, staged=job.staged.path)
    else:
        # In SQL `_row` is the position in the clean frame; _all_rejects maps it back to the source row.
        clean = v.clean.copy(deep=False)  # copy-on-write: the new _row column leaves v.clean alone
        clean["_row"] = np.arange(len(clean), dtype="int64")
        written = write.write(con, rules.Validated(v.kind, clean, v.rejects, v.attributes, v.attribute_names, v.notes, v.given), batch_id)
    rejects = _all_rejects(job, written.db_rejects)
    write.quarantine(con, batch_id, job.file_name, rejects)
    result.batch_id = batch_id
    result.rows_inserted, result.rows_updated, result.rows_unchanged = written.inserted, written.updated, written.unchanged
    result.rows_rejected = len(rejects)
    result.rejects = [Reject(job.file_name, int(line), None if pd.isna(col) else str(col), str(reason))
                      for line, col, reason in zip(rejects["_line"], rejects["column"], rejects["reason"])]
    write.finish_batch(con, batch_id, written.inserted, written.updated, written.unchanged, len(rejects))


def _audit_import(db, user: str, report: ImportReport, outcome: str, con) -> None:
    """Every import that writes goes into the audit trail, inside the import's transaction (docs/security.md).
    A refused or failed import writes nothing at all, not even an audit entry."""
    detail = {"files": [f.file for f in report.files], "batches": report.batch_ids,
              "rows_accepted": sum(f.rows_accepted for f in report.files),
              "rows_rejected": sum(f.rows_rejected for f in report.files)}
    audit.append(db, user, "import", outcome=outcome, detail=detail, con=con)
