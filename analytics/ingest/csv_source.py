"""CSV files behind the import source interface (ingest/sources.py).

The kind of each file is recognised from its header (csv.py scans it). A file of at
most `block_rows` rows is parsed and checked in memory; a larger treatments or
assessments file is parsed and checked a block at a time, and its good rows are staged
in a Parquet file of their own (compressed, on disk), where keys repeated across blocks
are found in SQL; the write then reads them from there. Memory holds one block, whatever
the file's size, and the write lock is held only for the set operations of the write.
"""
from __future__ import annotations

import concurrent.futures
import os
import queue
import threading
from pathlib import Path
from typing import Iterator

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .. import memory
from ..progress import Progress
from . import rules, write
from .csv import CsvIndex, FileRefused, parser_cursor, scan_csv
from .jobs import FileJob, Staged, sql_path
from .report import FileResult


class CsvSource:
    """Any file another source does not claim is read as CSV (and refused with the reason when it is not one)."""
    format = "csv"

    def recognises(self, path) -> bool:
        return True

    def read(self, paths, reading, *, db=None, block_rows: int, progress: Progress | None = None, scratch) -> None:
        """Check each file and add its result and job to `reading`; a file that cannot be used is refused
        whole. `scratch()` gives the directory large files are staged in (it outlives the write).

        The next file's bytes are scanned (`scan_csv`) in a thread while this one is checked: the scan is
        numpy and hashing, which mostly run without the GIL, beside the checks, which hold it."""
        paths = list(paths)
        with _ScanAhead(paths) as scans:
            self._read(paths, scans, reading, block_rows, progress, scratch)

    def _read(self, paths, scans, reading, block_rows, progress, scratch) -> None:
        for at, path in enumerate(paths):
            name = str(path)
            staged = None
            try:
                if progress:
                    progress(f"{Path(name).name}: reading")
                index = scans.result(at)
                if progress:
                    progress(f"{Path(name).name}: checking {index.rows_total:,} rows")
                if index.rows_total > block_rows and index.kind in _KEYS:
                    validated, staged = _stage(index, scratch(), block_rows, progress)
                    memory.release_freed()  # what the blocks freed, before the write's own peak
                else:
                    validated = _read_small(index)
            except FileRefused as exc:
                reading.files.append(FileResult(file=name, kind=None, refused=str(exc)))
                continue
            except (duckdb.Error, OSError) as exc:  # staging failed (e.g. no space for it): nothing is written
                text = str(exc).strip()
                reading.error = f"{name}: {text.splitlines()[0] if text else type(exc).__name__}"
                return
            result = FileResult(file=name, kind=index.kind, notes=validated.notes, lines_total=index.lines_total,
                                lines_blank=index.lines_blank, lines_continued=index.lines_continued)
            reading.files.append(result)
            reading.jobs.append(FileJob(name, self.format, index.sha256, validated,
                                        lambda rows, lines, index=index: index.raw_lines(lines), result, staged))


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
           progress: Progress | None = None) -> tuple[rules.Validated, Staged]:
    """Check a large treatments or assessments file a block at a time and stage its good rows (Parquet).

    Keys repeated within a block are found by `rules.validate`; across blocks here, in SQL:
    the first good row is kept and the later ones are rejected naming its line, as for a small file.
    """
    kind = index.kind
    path = stage_dir / f"{len(list(stage_dir.iterdir()))}.parquet"
    found: list[pd.DataFrame] = [_with_malformed(pd.DataFrame({"_row": pd.Series([], dtype="int64"),
                                                              "_line": pd.Series([], dtype="int64"),
                                                              "column": [], "reason": []}), index.malformed)]
    notes: list[str] = []
    given: frozenset[str] = frozenset()
    writer: _BlockWriter | None = None
    offset = blocks = 0
    patients: list[pd.Series] = []  # each block's patients: a key repeated across blocks has its patient in two
    try:
        for frame in _read_ahead(index.blocks(block_rows)):
            v = rules.validate(kind, frame, trimmed=True)
            del frame
            if not blocks:
                notes, given = v.notes, v.given
            found.append(v.rejects)
            patients.append(pd.Series(v.clean["patient_id"].unique()))
            table = write._arrow(v.clean.assign(_row=np.arange(offset, offset + len(v.clean), dtype="int64")))
            table = table.replace_schema_metadata(None)
            # A column empty in a block comes out typed null: every block gets the same types.
            table = pa.table([c.cast(pa.large_string()) if pa.types.is_null(c.type) else c for c in table.columns],
                             names=table.column_names)
            if writer is None:
                # No dictionary pages: encoding them cost more time than the smaller file saves.
                writer = _BlockWriter(pq.ParquetWriter(path, table.schema, compression="snappy", use_dictionary=False))
            writer.write(table)
            offset += len(v.clean)
            blocks += 1
            if progress:
                checked = min(blocks * block_rows, index.rows_total)
                progress(f"{Path(index.path).name}: checked {checked:,} of {index.rows_total:,} rows")
            del v, table
    except BaseException:
        if writer is not None:
            writer.close(quiet=True)  # the error being raised is the one to report
        raise
    if writer is not None:
        writer.close()
    if blocks > 1:
        everyone = pd.concat(patients, ignore_index=True)
        found.append(_repeated_across_blocks(kind, path, everyone[everyone.duplicated()].unique()))
    rejects = pd.concat(found, ignore_index=True)
    rejects["_row"] = -1  # not rows of a frame: raw text comes from the lines
    validated = rules.Validated(kind, None, rejects, None, [], notes, given)
    return validated, Staged(path, index.rows_total)


class _ScanAhead:
    """`scan_csv` of each path, the next one scanned in a thread while the caller works on this one.
    `result(i)` gives path i's index or raises what its scan raised, in the caller's thread. At most one
    scan runs ahead; on leaving, a scan still running is waited for (no thread outlives the reading)."""

    def __init__(self, paths: list):
        self.paths = paths
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-scan-ahead")
        self.futures: dict[int, concurrent.futures.Future] = {}

    def __enter__(self) -> "_ScanAhead":
        return self

    def __exit__(self, *exc) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def _submit(self, at: int) -> None:
        if at < len(self.paths) and at not in self.futures:
            self.futures[at] = self.pool.submit(scan_csv, self.paths[at])

    def result(self, at: int) -> CsvIndex:
        self._submit(at)
        future = self.futures.pop(at)
        try:
            return future.result()
        finally:
            del future
            self._submit(at + 1)  # the next file's scan starts once this one's is done


class _BlockWriter:
    """A ParquetWriter whose blocks are written in a thread while the caller checks the next block
    (pyarrow writes without the GIL). One block is written at a time, in order; a failed write raises
    in the caller's thread at the next `write` or at `close`."""

    def __init__(self, writer: pq.ParquetWriter):
        self.writer = writer
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-stage-writer")
        self.pending: concurrent.futures.Future | None = None

    def _wait(self) -> None:
        if self.pending is not None:
            pending, self.pending = self.pending, None
            pending.result()

    def write(self, table: pa.Table) -> None:
        self._wait()
        self.pending = self.pool.submit(lambda: self.writer.write_table(table.cast(self.writer.schema)))

    def close(self, quiet: bool = False) -> None:
        """Wait for the last block's write and close the file (`quiet`: a failed write is not raised)."""
        try:
            self._wait()
        except BaseException:
            if not quiet:
                raise
        finally:
            self.pool.shutdown(wait=True)
            try:
                self.writer.close()
            except BaseException:
                if not quiet:
                    raise


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


def _repeated_across_blocks(kind: str, path: Path, shared) -> pd.DataFrame:
    """Rows whose key an earlier line of the file already has: rejected, and removed from the staged rows.

    `shared`: the patients with good rows in more than one block. Keys repeated within a block are
    rejected already, so a key repeated across blocks is one of these patients': only their rows are
    grouped (none: no SQL at all). A file sorted by patient shares a patient or so per block."""
    keys = ", ".join(_KEYS[kind])
    if not len(shared):
        repeated = pd.DataFrame({"_row": pd.Series([], dtype="int64"), "_line": pd.Series([], dtype="int64"),
                                 "first_line": pd.Series([], dtype="int64")})
        return _repeated_rejects(kind, repeated)
    con = parser_cursor()
    try:
        con.register("ingest_shared", pd.DataFrame({"patient_id": pd.Series(shared, dtype="str")}))
        mine = "WHERE patient_id IN (SELECT patient_id FROM ingest_shared)"
        repeated = con.execute(
            f"""SELECT r._row, r._line, f.first_line FROM (SELECT * FROM read_parquet($path) {mine}) r
                JOIN (SELECT {keys}, min(_line) AS first_line FROM read_parquet($path) {mine}
                      GROUP BY {keys} HAVING count(*) > 1) f USING ({keys})
                WHERE r._line > f.first_line ORDER BY r._line""", {"path": str(path)}).df()
        con.unregister("ingest_shared")
        if len(repeated):
            kept = path.with_suffix(".kept.parquet")
            con.register("ingest_repeated", repeated[["_row"]])
            con.execute(f"""COPY (SELECT * FROM read_parquet('{sql_path(path)}')
                                  WHERE _row NOT IN (SELECT _row FROM ingest_repeated) ORDER BY _row)
                            TO '{sql_path(kept)}' (FORMAT parquet)""")
            os.replace(kept, path)
    finally:
        con.close()
    return _repeated_rejects(kind, repeated)


def _repeated_rejects(kind: str, repeated: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "_row": np.full(len(repeated), -1, dtype="int64"),
        "_line": repeated["_line"].astype("int64").to_numpy(),
        "column": "patient_id",
        "reason": [f"duplicate key ({rules.KEY_SHOWN[kind]}) in this file: line {int(f)} has the same one"
                   for f in repeated["first_line"]],
    })
