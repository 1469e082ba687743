"""The import source interface: how a file format hands its rows to the import.

A source has a `format` (recorded with each import batch), `recognises(path)` (by content,
cheaply), and `read(paths, reading, db=..., block_rows=..., progress=..., scratch=...)`,
which checks the files and adds to `reading` a `FileResult` per file (and table kind) and a
`FileJob` per table to write, or refuses a file whole with the reason. Sources never write:
the import writes every job in one transaction (jobs.py), and `preview` summarises the same
reading without writing. CSV and FHIR are the sources; a new format is one more class here
(before CSV, which reads whatever no other source claims).
"""
from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Protocol

import pandas as pd

from .. import workdir
from ..progress import Progress
from .csv import BLOCK_ROWS
from .csv_source import CsvSource
from .fhir_source import FhirSource
from .jobs import FileJob
from .report import FileResult


@dataclass
class Reading:
    """What the sources made of a command's files: results, jobs, or an error that stops the command."""
    files: list[FileResult] = field(default_factory=list)
    jobs: list[FileJob] = field(default_factory=list)
    error: str | None = None


class ImportSource(Protocol):
    format: str

    def recognises(self, path) -> bool: ...

    def read(self, paths: list, reading: Reading, *, db=None, block_rows: int = BLOCK_ROWS,
             progress: Progress | None = None, scratch=None) -> None: ...


SOURCES: tuple[ImportSource, ...] = (FhirSource(), CsvSource())


@contextlib.contextmanager
def read_files(paths: Iterable[str | os.PathLike], *, db=None, block_rows: int = BLOCK_ROWS,
               progress: Progress | None = None) -> Iterator[Reading]:
    """Each file read by the first source that recognises it, the sources in the order of `SOURCES`.
    The scratch directory large files are staged in lives until the block ends (after the write)."""
    paths = list(paths)
    stage_dir: list[Path] = []

    def scratch() -> Path:
        if not stage_dir:  # in the process's work folder: removed even after a kill -9 (workdir.py)
            stage_dir.append(workdir.new_dir("import-stage-"))
        return stage_dir[0]

    reading = Reading()
    unclaimed = list(range(len(paths)))
    try:
        for source in SOURCES:
            mine = [i for i in unclaimed if source.recognises(paths[i])]
            unclaimed = [i for i in unclaimed if i not in mine]
            if mine:
                source.read([paths[i] for i in mine], reading, db=db, block_rows=block_rows, progress=progress,
                            scratch=scratch)
            if reading.error:
                break
        yield reading
    finally:
        if stage_dir:
            shutil.rmtree(stage_dir[0], ignore_errors=True)


def preview(paths: Iterable[str | os.PathLike], db=None) -> pd.DataFrame:
    """What importing these files would do, without writing anything: the sources' own reading and row
    checks; checks that need the store's rows (a patient not yet known) happen at import.

    One row per file and table kind: file (its base name), kind, rows, accepted, rejected, refused, and
    `rejects` (a frame of line, column, reason).
    """
    with read_files(paths, db=db) as reading:
        by_result = {id(job.result): job for job in reading.jobs}
        rows = []
        for result in reading.files:
            job = by_result.get(id(result))
            name = Path(str(result.file)).name
            if job is None:
                rows.append({"file": name, "kind": result.kind, "rows": 0, "accepted": 0, "rejected": 0,
                             "refused": result.refused, "rejects": pd.DataFrame(columns=["line", "column", "reason"])})
                continue
            rejects = job.validated.rejects.rename(columns={"_line": "line"})[["line", "column", "reason"]]
            rejects = rejects.sort_values("line", kind="stable").reset_index(drop=True)
            total = job.rows_total
            rows.append({"file": name, "kind": result.kind, "rows": total, "accepted": total - len(rejects),
                         "rejected": len(rejects), "refused": None, "rejects": rejects})
    columns = ["file", "kind", "rows", "accepted", "rejected", "refused", "rejects"]
    text = {"kind", "refused", "rejects"}  # kept as given: None stays None (a refused file has no kind)
    return pd.DataFrame({c: pd.Series([r[c] for r in rows], dtype=object if c in text else None) for c in columns})
