"""Validated import of patients, treatments and assessments (CSV, or frames from other sources).

The work is split so the store's write lock is held briefly: files are read
and every check that needs no database runs first, in memory; then one short
transaction checks what needs the store (unknown patient, treatment before
enrolment) in SQL and writes. One command is one transaction: all files
land, or (on a refused file, an error or a kill) none of them.

A treatments or assessments CSV file of more than `BLOCK_ROWS` rows is
parsed and checked a block at a time, and its good rows are staged in a
Parquet file of their own (compressed, on disk), where keys repeated across
blocks are found in SQL; the transaction then reads them from there. Memory
holds one block, whatever the file's size, and the write lock is still held
only for the set operations of the write.

Public API: `import_files`, `import_tables`, `cli_import`, `ImportReport`.
Rules and their reasons: rules.py; the format: docs/import.md.
"""
from __future__ import annotations

import csv as stdlib_csv
import hashlib
import io
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple

import queue
import shutil
import threading

import duckdb
import numpy as np
import pandas as pd

from .. import clinic_time, store, workdir
from . import rules, write
from ..progress import Progress
from .csv import BLOCK_ROWS, CsvIndex, FileRefused, read_csv, scan_csv

# Test hook: when set to a path, the import writes its pid there after writing
# and before COMMIT, then waits (OUTCOMES_IMPORT_HOLD_SECONDS, default 60) with
# the write lock held, so a test can kill it mid-transaction or read meanwhile.
HOLD_BEFORE_COMMIT_ENV = "OUTCOMES_IMPORT_HOLD_BEFORE_COMMIT"
HOLD_SECONDS_ENV = "OUTCOMES_IMPORT_HOLD_SECONDS"
MESSAGES_PER_FILE = 20


class Reject(NamedTuple):
    file: str
    line: int
    column: str | None
    reason: str


@dataclass
class FileResult:
    file: str
    kind: str | None
    rows_total: int = 0
    rows_inserted: int = 0
    rows_updated: int = 0
    rows_unchanged: int = 0
    rows_rejected: int = 0
    rejects: list[Reject] = field(default_factory=list)
    batch_id: int | None = None
    refused: str | None = None  # why the whole file was refused (then nothing at all was written)
    notes: list[str] = field(default_factory=list)
    # CSV: every physical line is the header, blank, or a line of a row (stored or rejected):
    # lines_total = 1 + lines_blank + rows_total + lines_continued (None for other sources).
    lines_total: int | None = None
    lines_blank: int | None = None
    lines_continued: int | None = None  # lines that continue a row (line breaks inside quoted values)

    @property
    def rows_accepted(self) -> int:
        return self.rows_inserted + self.rows_updated + self.rows_unchanged


@dataclass
class ImportReport:
    files: list[FileResult] = field(default_factory=list)
    error: str | None = None  # the transaction failed: nothing was written
    committed: bool = False  # the transaction committed: the rows counted as stored are in the database
    warnings: list[str] = field(default_factory=list)  # e.g. a step after the commit failed (the rows are stored)

    @property
    def rejects(self) -> list[Reject]:
        return [r for f in self.files for r in f.rejects]

    @property
    def batch_ids(self) -> list[int]:
        return [f.batch_id for f in self.files if f.batch_id is not None]

    @property
    def written(self) -> bool:
        return self.error is None and not any(f.refused for f in self.files)

    @property
    def exit_code(self) -> int:
        """0 every row accepted, 1 some rows rejected (good ones stored), 2 nothing imported.

        It says what is stored: a failure after the commit (a checkpoint on a full disk) does not
        change it, and is reported in `warnings` (3, an unexpected failure, is `cli_import`'s)."""
        if not self.written:
            return 2
        accepted = sum(f.rows_accepted for f in self.files)
        rejected = sum(f.rows_rejected for f in self.files)
        if rejected == 0:
            return 0
        return 1 if accepted else 2

    def messages(self, per_file: int = MESSAGES_PER_FILE) -> list[str]:
        """Human-readable lines: each rejected row as file:line: column: reason, then a summary."""
        out: list[str] = []
        if self.error:
            out.append(f"import failed, nothing was changed: {self.error}")
        for warning in self.warnings:
            out.append(f"warning: {warning}")
        for f in self.files:
            if f.refused:
                out.append(f"{f.refused}")
        for f in self.files:
            for note in f.notes:
                out.append(f"{f.file}: note: {note}")
            for r in f.rejects[:per_file]:
                out.append(f"{r.file}:{r.line}: {r.column or '(row)'}: {r.reason}")
            if len(f.rejects) > per_file:
                out.append(f"{f.file}: ... and {len(f.rejects) - per_file} more rejected rows "
                           "(all are kept in rejected_rows; `python -m analytics export DIR` writes rejected.csv)")
        if not self.written:
            if any(f.refused for f in self.files) and not self.error:
                out.append("nothing was imported: fix the file(s) above and run the same command again")
            return out
        for f in self.files:
            out.append(
                f"{f.file}: {f.kind}: {f.rows_total} rows, {f.rows_inserted} new, {f.rows_updated} updated, "
                f"{f.rows_unchanged} unchanged, {f.rows_rejected} rejected (batch {f.batch_id}){_lines_shown(f)}"
            )
        return out

    def to_dict(self, max_rejects: int = 1000) -> dict:
        files = []
        for f in self.files:
            files.append({
                "file": f.file, "kind": f.kind, "batch_id": f.batch_id, "refused": f.refused,
                "rows_total": f.rows_total, "rows_inserted": f.rows_inserted, "rows_updated": f.rows_updated,
                "rows_unchanged": f.rows_unchanged, "rows_rejected": f.rows_rejected, "notes": f.notes,
                "rejects": [r._asdict() for r in f.rejects[:max_rejects]],
                "rejects_truncated": len(f.rejects) > max_rejects,
                "lines_total": f.lines_total, "lines_blank": f.lines_blank, "lines_continued": f.lines_continued,
            })
        return {"exit_code": self.exit_code, "error": self.error, "files": files,
                "committed": self.committed, "warnings": list(self.warnings)}


def _lines_shown(f: FileResult) -> str:
    """How the file's physical lines add up, so that rows and lines can be compared at a glance."""
    if f.lines_total is None:
        return ""
    parts = ["1 header"]
    if f.lines_blank:
        parts.append(f"{f.lines_blank} blank")
    parts.append(f"{f.rows_total} rows")
    if f.lines_continued:
        parts.append(f"{f.lines_continued} continuing a row (line breaks inside quoted values)")
    return f"; {f.lines_total} lines = " + " + ".join(parts)


@dataclass
class _Staged:
    """A large file's good rows, in a Parquet file of their own (with `_row` and `_line`)."""
    path: Path
    rows_total: int


@dataclass
class _Job:
    file_name: str
    source: str
    sha256: str
    validated: rules.Validated  # clean is None when the rows are staged (then its rejects are the file's)
    raw_for: Callable[[np.ndarray, np.ndarray], list[str]]  # (rows, lines) -> raw text
    result: FileResult
    staged: _Staged | None = None

    @property
    def rows_total(self) -> int:
        if self.staged is not None:
            return self.staged.rows_total
        return len(self.validated.clean) + len(self.validated.rejects)


def _with_malformed(rejects: pd.DataFrame, malformed: list[tuple[int, str | None, str]]) -> pd.DataFrame:
    """Rows the CSV scan set aside (wrong number of fields) join the rejects, with `_row` -1."""
    if not malformed:
        return rejects
    extra = pd.DataFrame({
        "_row": np.full(len(malformed), -1, dtype="int64"),
        "_line": [m[0] for m in malformed],
        "column": [m[1] for m in malformed],
        "reason": [m[2] for m in malformed],
    })
    return pd.concat([rejects, extra], ignore_index=True)


def _read_small(index: CsvIndex) -> rules.Validated:
    """A file of at most one block: parsed and checked in memory."""
    [frame] = index.blocks(block_rows=max(1, len(index.good_lines)))
    validated = rules.validate(index.kind, frame, trimmed=True)
    validated.rejects = _with_malformed(validated.rejects, index.malformed)
    return validated


_KEYS = {"treatments": ("patient_id", "administered_at"), "assessments": ("patient_id", "instrument", "administered_at")}


def _stage(index: CsvIndex, stage_dir: Path, block_rows: int,
           progress: Progress | None = None) -> tuple[rules.Validated, _Staged]:
    """Check a large treatments or assessments file a block at a time and stage its good rows (Parquet).

    Keys repeated within a block are found by `rules.validate`; across blocks here, in SQL:
    the first good row is kept and the later ones are rejected naming its line, as for a small file.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    kind = index.kind
    path = stage_dir / f"{len(list(stage_dir.iterdir()))}.parquet"
    found: list[pd.DataFrame] = [_with_malformed(pd.DataFrame({"_row": pd.Series([], dtype="int64"),
                                                              "_line": pd.Series([], dtype="int64"),
                                                              "column": [], "reason": []}), index.malformed)]
    notes: list[str] = []
    given: frozenset[str] = frozenset()
    writer: pq.ParquetWriter | None = None
    offset = blocks = 0
    try:
        for frame in _read_ahead(index.blocks(block_rows)):
            v = rules.validate(kind, frame, trimmed=True)
            del frame
            if not blocks:
                notes, given = v.notes, v.given
            found.append(v.rejects)
            table = write._arrow(v.clean.assign(_row=np.arange(offset, offset + len(v.clean), dtype="int64")))
            table = table.replace_schema_metadata(None)
            # A column empty in a block comes out typed null: every block gets the same types.
            table = pa.table([c.cast(pa.large_string()) if pa.types.is_null(c.type) else c for c in table.columns],
                             names=table.column_names)
            if writer is None:
                # No dictionary pages: encoding them cost more time than the smaller file saves.
                writer = pq.ParquetWriter(path, table.schema, compression="snappy", use_dictionary=False)
            writer.write_table(table.cast(writer.schema))
            offset += len(v.clean)
            blocks += 1
            if progress:
                checked = min(blocks * block_rows, index.rows_total)
                progress(f"{Path(index.path).name}: checked {checked:,} of {index.rows_total:,} rows")
            del v, table
    finally:
        if writer is not None:
            writer.close()
    if blocks > 1:
        found.append(_repeated_across_blocks(kind, path))
    rejects = pd.concat(found, ignore_index=True)
    rejects["_row"] = -1  # not rows of a frame: raw text comes from the lines
    validated = rules.Validated(kind, None, rejects, None, [], notes, given)
    return validated, _Staged(path, index.rows_total)


def _read_ahead(blocks: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """`blocks`, the next one parsed in a thread while the caller checks this one: DuckDB parses
    without holding the GIL, so on two cores parsing mostly hides behind the checks. At most one
    block waits; when the caller stops early the thread stops after the block it is parsing."""
    slot: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()
    end = object()

    def hand_over(item) -> bool:
        while not stop.is_set():
            try:
                slot.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for block in blocks:
                if not hand_over(block):
                    return
            hand_over(end)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            hand_over(exc)
        finally:
            blocks.close()  # the generator's own clean-up (temporary copy, parser cursor), in this thread

    thread = threading.Thread(target=produce, name="ingest-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item = slot.get()
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
            del item
    finally:
        stop.set()
        thread.join()


def _return_freed_memory() -> None:
    """Give back what a large file's blocks freed before the write, so the write's own peak (DuckDB's
    indexes) does not stack on it: Arrow's pool and glibc both keep freed memory (~200 MB at 4.7 M rows)."""
    import ctypes

    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def _repeated_across_blocks(kind: str, path: Path) -> pd.DataFrame:
    """Rows whose key an earlier line of the file already has: rejected, and removed from the staged rows."""
    from .csv import _parser_cursor

    keys = ", ".join(_KEYS[kind])
    con = _parser_cursor()
    try:
        repeated = con.execute(
            f"""SELECT r._row, r._line, f.first_line FROM read_parquet($path) r
                JOIN (SELECT {keys}, min(_line) AS first_line FROM read_parquet($path)
                      GROUP BY {keys} HAVING count(*) > 1) f USING ({keys})
                WHERE r._line > f.first_line ORDER BY r._line""", {"path": str(path)}).df()
        if len(repeated):
            kept = path.with_suffix(".kept.parquet")
            con.register("ingest_repeated", repeated[["_row"]])
            con.execute(f"""COPY (SELECT * FROM read_parquet('{_quoted(path)}')
                                  WHERE _row NOT IN (SELECT _row FROM ingest_repeated) ORDER BY _row)
                            TO '{_quoted(kept)}' (FORMAT parquet)""")
            os.replace(kept, path)
    finally:
        con.close()
    return pd.DataFrame({
        "_row": np.full(len(repeated), -1, dtype="int64"),
        "_line": repeated["_line"].astype("int64").to_numpy(),
        "column": "patient_id",
        "reason": [f"duplicate key ({rules.KEY_SHOWN[kind]}) in this file: line {int(f)} has the same one"
                   for f in repeated["first_line"]],
    })


def _quoted(path: Path) -> str:
    """A path of our own temporary directory as an SQL string body (COPY and views take no parameters)."""
    return str(path).replace("'", "''")


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


def _all_rejects(job: _Job, db_rejects: pd.DataFrame | None) -> pd.DataFrame:
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


def _run(jobs: list[_Job], report: ImportReport, db, user: str, after_write=None) -> ImportReport:
    """The write phase: one transaction for every job, patients first."""
    if not report.written:
        return report
    jobs = sorted(jobs, key=lambda j: rules.KINDS.index(j.validated.kind))
    try:
        with store.transaction(db) as con:
            for job in jobs:
                _write_job(con, job, user)
            if after_write is not None:  # the caller's own rows (visit entry, self-report), same transaction
                after_write(con, report)
            _audit_import(db, user, report, "ok", con=con)  # in the same transaction: no import unrecorded
            _hold_for_tests()
        report.committed = True
    except store.CommittedButFailed as exc:
        # The rows are stored (in the write-ahead log at least); only the step after the commit failed.
        report.committed = True
        report.warnings.append(
            f"the import was committed and its rows are stored, but {exc.step} failed: "
            f"{_first_line(exc.error).rstrip('. ')}. The database is consistent: the committed rows are in its "
            f"write-ahead log ({Path(store.db_path(db)).name}.wal) and are moved into the file the next time it is "
            "opened with room to do so. Free disk space; the files need not be imported again")
    except (duckdb.Error, store.StoreBusy) as exc:
        for job in jobs:
            job.result.batch_id = None
            job.result.rows_inserted = job.result.rows_updated = job.result.rows_unchanged = 0
        report.error = _first_line(exc)
    return report


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _write_job(con, job: _Job, user: str) -> None:
    v = job.validated
    result = job.result
    result.rows_total = job.rows_total
    batch_id = write.start_batch(con, source=job.source, file_name=job.file_name, sha256=job.sha256,
                                 kind=v.kind, user=user, rows_total=result.rows_total)
    if job.staged is not None:
        written = write.write(con, v, batch_id, source=f"read_parquet('{_quoted(job.staged.path)}')")
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
    from .. import audit

    detail = {"files": [f.file for f in report.files], "batches": report.batch_ids,
              "rows_accepted": sum(f.rows_accepted for f in report.files),
              "rows_rejected": sum(f.rows_rejected for f in report.files)}
    audit.append(db, user, "import", outcome=outcome, detail=detail, con=con)


def _may_be_fhir(path) -> bool:
    """FHIR JSON starts with "{" (after a byte-order mark or blanks); anything else is left to the CSV reader,
    so a CSV-only import never loads the FHIR modules."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
    except OSError:
        return False
    return head.removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n").startswith(b"{")


def import_files(paths: Iterable[str | os.PathLike], db=None, user: str = "system",
                 block_rows: int = BLOCK_ROWS, progress: Progress | None = None) -> ImportReport:
    """Import CSV files (kind recognised by header); patients files go first whatever the order.

    `block_rows`: a treatments or assessments file with more rows is checked in blocks of this
    many and staged on disk (memory holds one block); the outcome is the same whatever the size.
    `progress` receives a line per file, per block checked and before the write.
    """
    report = ImportReport()
    jobs: list[_Job] = []
    paths = list(paths)
    if not _clinic_zone_ok(report):
        return report
    # FHIR JSON (Bundle or NDJSON) is recognised by content, whatever the file name (docs/fhir.md).
    fhir_paths = []
    if any(_may_be_fhir(p) for p in paths):
        from .. import fhir
        fhir_paths = [p for p in paths if fhir.is_fhir_file(p)]
        if fhir_paths:
            fhir.add_import_jobs(fhir_paths, report, jobs, user, db=db)
    stage_dir: Path | None = None
    try:
        for path in paths:
            if path in fhir_paths:
                continue
            name = str(path)
            staged = None
            try:
                if progress:
                    progress(f"{Path(name).name}: reading")
                index = scan_csv(path)
                if progress:
                    progress(f"{Path(name).name}: checking {index.rows_total:,} rows")
                if index.rows_total > block_rows and index.kind in _KEYS:
                    stage_dir = stage_dir or workdir.new_dir("import-stage-")
                    validated, staged = _stage(index, stage_dir, block_rows, progress)
                    _return_freed_memory()
                else:
                    validated = _read_small(index)
            except FileRefused as exc:
                report.files.append(FileResult(file=name, kind=None, refused=str(exc)))
                continue
            except (duckdb.Error, OSError) as exc:  # staging failed (e.g. no space for it): nothing is written
                report.error = f"{name}: {_first_line(exc)}"
                return report
            result = FileResult(file=name, kind=index.kind, notes=validated.notes, lines_total=index.lines_total,
                                lines_blank=index.lines_blank, lines_continued=index.lines_continued)
            report.files.append(result)
            jobs.append(_Job(name, "csv", index.sha256, validated,
                             lambda rows, lines, index=index: index.raw_lines(lines), result, staged))
        report.files.sort(key=lambda f: rules.KINDS.index(f.kind) if f.kind in rules.KINDS else -1)
        if progress and report.written:
            progress("writing the checked rows (one transaction)")
        return _run(jobs, report, db, user)
    finally:
        if stage_dir is not None:
            shutil.rmtree(stage_dir, ignore_errors=True)


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
    report = ImportReport()
    jobs: list[_Job] = []
    if not _clinic_zone_ok(report):
        return report
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
        jobs.append(_Job(file_name, source, digest, validated, _csv_line(frame), result))
    unknown = sorted(set(tables) - set(rules.KINDS))
    if unknown:
        report.files.append(FileResult(file=file_name, kind=None, refused=f"{file_name}: unknown table kind(s) {', '.join(unknown)}; expected {', '.join(rules.KINDS)}"))
    return _run(jobs, report, db, user, after_write)


def _clinic_zone_ok(report: ImportReport) -> bool:
    """A wrong OUTCOMES_TIMEZONE stops the import before anything is read (times would be wrong)."""
    try:
        clinic_time.zone()
    except clinic_time.TimeZoneSettingError as exc:
        report.error = str(exc)
        return False
    return True


def cli_import(args) -> int:
    """Exit 0 all stored, 1 some rows rejected (the rest stored), 2 nothing stored, 3 an unexpected
    failure (one line on stderr naming a log file with the details; never a traceback)."""
    from ..cli import EXIT_UNEXPECTED, print_json, report_unexpected
    from ..progress import clear, terminal_progress

    as_json = getattr(args, "json", False)
    progress = terminal_progress("import", not as_json)
    report: ImportReport | None = None
    try:
        report = import_files(args.files, db=getattr(args, "db", None), user=os.environ.get("USER", "system"),
                              progress=progress)
        clear(progress)
        if as_json:
            print_json(report.to_dict())
        else:
            stream = sys.stdout if report.exit_code == 0 and not report.warnings else sys.stderr
            for line in report.messages():
                print(line, file=stream)
        return report.exit_code
    except (KeyboardInterrupt, BrokenPipeError):
        raise
    except Exception as exc:  # noqa: BLE001 - the one place an unexpected failure becomes exit 3
        clear(progress)
        committed = report is not None and report.committed
        state = "the import was committed (its rows are stored)" if committed else "nothing was changed"
        message, log = report_unexpected("import", exc, state)
        if as_json:
            print_json({"exit_code": EXIT_UNEXPECTED, "error": message, "files": [], "committed": committed,
                        "warnings": [], "log": str(log) if log else None})
        return EXIT_UNEXPECTED


__all__ = ["import_files", "import_tables", "cli_import", "ImportReport", "FileResult", "Reject", "FileRefused"]
