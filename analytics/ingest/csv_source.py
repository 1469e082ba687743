"""CSV files behind the import source interface (ingest/sources.py).

The kind of each file is recognised from its header (csv.py scans it). A file of at
most `block_rows` rows is parsed and checked in memory; a larger treatments or
assessments file is parsed and checked a block at a time, and its good rows are staged
in a Parquet file of their own (compressed, on disk), where keys repeated across blocks
are found in SQL; the write then reads them from there. Memory holds one block, whatever
the file's size, and the write lock is held only for the set operations of the write.
"""
from __future__ import annotations

import concurrent.futures as cf
import os
import queue
import threading
from pathlib import Path
from typing import Iterator

import duckdb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from .. import clinic_time, memory
from ..progress import Progress
from . import checkers, rules
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
        whole. `scratch()` gives the directory large files are staged in (it outlives the write)."""
        with checkers.Workers() as workers:
            if checkers.wanted(checkers.PARALLEL_ROWS) and any(_size(p) >= checkers.PARALLEL_BYTES for p in paths):
                workers.start()  # the workers start up while the first file is scanned
            self._read(paths, reading, block_rows, progress, scratch, workers)

    def _read(self, paths, reading, block_rows, progress, scratch, workers) -> None:
        # The next file is scanned in a thread while this one is checked (numpy and the disk mostly
        # run without the GIL): on two cores the scan then costs the import little time of its own.
        with cf.ThreadPoolExecutor(1, thread_name_prefix="ingest-scan") as scanner:
            scans = [scanner.submit(scan_csv, paths[0])] if paths else []
            try:
                for i, path in enumerate(paths):
                    if i + 1 < len(paths):
                        scans.append(scanner.submit(scan_csv, paths[i + 1]))
                    if not self._read_one(path, scans[i], reading, block_rows, progress, scratch, workers):
                        return
            finally:
                for scan in scans:
                    scan.cancel()

    def _read_one(self, path, scan: cf.Future, reading, block_rows, progress, scratch, workers) -> bool:
        """One file into `reading`; False when the command must stop (`reading.error`)."""
        name = str(path)
        staged = None
        try:
            if progress:
                progress(f"{Path(name).name}: reading")
            index = scan.result()
            if progress:
                progress(f"{Path(name).name}: checking {index.rows_total:,} rows")
            if index.rows_total > block_rows and index.kind in _KEYS:
                validated, staged = _stage(index, scratch(), block_rows, progress, workers)
                memory.release_freed()  # what the blocks freed, before the write's own peak
            else:
                validated = _read_small(index)
        except FileRefused as exc:
            reading.files.append(FileResult(file=name, kind=None, refused=str(exc)))
            return True
        except (duckdb.Error, OSError) as exc:  # staging failed (e.g. no space for it): nothing is written
            text = str(exc).strip()
            reading.error = f"{name}: {text.splitlines()[0] if text else type(exc).__name__}"
            return False
        result = FileResult(file=name, kind=index.kind, notes=validated.notes, lines_total=index.lines_total,
                            lines_blank=index.lines_blank, lines_continued=index.lines_continued)
        reading.files.append(result)
        reading.jobs.append(FileJob(name, self.format, index.sha256, validated,
                                    lambda rows, lines, index=index: index.raw_lines(lines), result, staged))
        return True


def _size(path) -> int:
    try:
        return os.stat(path).st_size
    except (OSError, TypeError, ValueError):
        return 0


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


def _stage(index: CsvIndex, stage_dir: Path, block_rows: int, progress: Progress | None = None,
           workers: checkers.Workers | None = None) -> tuple[rules.Validated, Staged]:
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
    writer: pq.ParquetWriter | None = None
    offset = blocks = 0
    now = clinic_time.now()  # one clock for every block, wherever it is checked
    if workers is None or not (checkers.wanted(index.rows_total) and workers.start()):
        workers = checkers.Workers()  # none: checked here
    checked = workers.checked(kind, _read_ahead(index.blocks(block_rows)), now)
    try:
        for rejects, table, block_notes, block_given in checked:
            if not blocks:
                notes, given = block_notes, block_given
            found.append(rejects)
            table = checkers.numbered(table, offset)
            if writer is None:
                # No dictionary pages: encoding them cost more time than the smaller file saves.
                writer = pq.ParquetWriter(path, table.schema, compression="snappy", use_dictionary=False)
            writer.write_table(table.cast(writer.schema))
            offset += table.num_rows
            blocks += 1
            if progress:
                done = min(blocks * block_rows, index.rows_total)
                progress(f"{Path(index.path).name}: checked {done:,} of {index.rows_total:,} rows")
            del table
    finally:
        checked.close()  # on an error: the workers stop and the parsing thread ends
        if writer is not None:
            writer.close()
    if blocks > 1:
        found.append(_repeated_across_blocks(kind, path))
    rejects = pd.concat(found, ignore_index=True)
    rejects["_row"] = -1  # not rows of a frame: raw text comes from the lines
    validated = rules.Validated(kind, None, rejects, None, [], notes, given)
    return validated, Staged(path, index.rows_total)


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


def _repeated_across_blocks(kind: str, path: Path) -> pd.DataFrame:
    """Rows whose key an earlier line of the file already has: rejected, and removed from the staged rows."""
    keys = ", ".join(_KEYS[kind])
    con = parser_cursor()
    try:
        repeated = con.execute(
            f"""SELECT r._row, r._line, f.first_line FROM read_parquet($path) r
                JOIN (SELECT {keys}, min(_line) AS first_line FROM read_parquet($path)
                      GROUP BY {keys} HAVING count(*) > 1) f USING ({keys})
                WHERE r._line > f.first_line ORDER BY r._line""", {"path": str(path)}).df()
        if len(repeated):
            kept = path.with_suffix(".kept.parquet")
            con.register("ingest_repeated", repeated[["_row"]])
            con.execute(f"""COPY (SELECT * FROM read_parquet('{sql_path(path)}')
                                  WHERE _row NOT IN (SELECT _row FROM ingest_repeated) ORDER BY _row)
                            TO '{sql_path(kept)}' (FORMAT parquet)""")
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
