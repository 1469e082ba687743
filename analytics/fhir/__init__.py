"""FHIR R4 import and export (issue 7). See docs/fhir.md.

Import: `import_fhir_files(files, db=..., user=...)` reads Bundles (collection,
searchset, transaction, batch), single resources and NDJSON bulk-export files,
validates every resource with the `fhir.resources` R4B models, converts them to
the same raw-string row tables as CSV and hands each file to
`analytics.ingest.import_tables`, so the CSV validation rules apply unchanged.

Export: `export_fhir(directory, db=None, scope=SYSTEM) -> {type: path}`.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Union

import pandas as pd

from . import codes
from .convert import Conversion, convert
from .export import export_fhir
from .parse import Located, Reject, looks_like_fhir, read_file, read_text, sniff_file

__all__ = [
    "export_fhir", "import_fhir_files", "convert_files", "looks_like_fhir", "sniff_file",
    "FileTables", "IDENTIFIER_ENV",
]

# Which Patient.identifier system holds the pseudonymous patient id; without
# one (or when a Patient has none of it) the resource id is used.
IDENTIFIER_ENV = "OUTCOMES_FHIR_PATIENT_SYSTEM"

FileInput = Union[str, os.PathLike, tuple[str, bytes]]
REJECT_COLUMNS = ["line", "column", "reason", "raw"]


@dataclass
class FileTables:
    """What one FHIR file contributes: row tables, its rejects, and notes."""

    file_name: str
    sha256: str
    tables: dict[str, pd.DataFrame]
    rejects: pd.DataFrame  # columns line, column, reason, raw
    notes: list[str]
    resources: int  # resources read from the file (valid or not)


def _load(item: FileInput) -> tuple[str, bytes]:
    if isinstance(item, tuple):
        name, content = item
        return str(name), bytes(content)
    path = Path(item)
    return path.name, path.read_bytes()


def identifier_system(explicit: str | None = None) -> str:
    return explicit or os.environ.get(IDENTIFIER_ENV) or codes.LOCAL_PATIENT_ID


def convert_files(files: Iterable[FileInput], identifier_system_: str | None = None) -> list[FileTables]:
    """Read and convert FHIR files together (a bulk export's Observation.ndjson
    refers to patients in Patient.ndjson), then split the rows back per file.

    Files holding Patients come first, so importing them in the returned order
    creates patients before the rows that refer to them.
    """
    loaded = [_load(item) for item in files]
    located: list[Located] = []
    parse_rejects: list[Reject] = []
    counts: dict[str, int] = {}
    hashes: dict[str, str] = {}
    for name, content in loaded:
        hashes[name] = hashlib.sha256(content).hexdigest()
        try:
            text = content.decode("utf-8")
        except UnicodeDecodeError as exc:
            parse_rejects.append(Reject(name, None, "", f"not UTF-8 text (byte {exc.start}): FHIR JSON must be UTF-8", ""))
            counts[name] = 0
            continue
        good, bad = read_text(text, name)
        located += good
        parse_rejects += bad
        counts[name] = len(good) + len(bad)

    result: Conversion = convert(located, identifier_system(identifier_system_))
    rejects = parse_rejects + result.rejects
    out = []
    for name, _content in loaded:
        tables = {
            kind: frame[frame["_file"] == name].drop(columns="_file").reset_index(drop=True)
            for kind, frame in result.tables.items()
        }
        mine = [r for r in rejects if r.file_name == name]
        mine.sort(key=lambda r: (r.line is None, r.line or 0))
        frame = pd.DataFrame(
            [{"line": r.line, "column": r.column, "reason": r.reason, "raw": r.raw} for r in mine],
            columns=REJECT_COLUMNS,
        )
        notes = [n for n in result.notes if n.startswith(name + " ")]
        out.append(FileTables(name, hashes[name], tables, frame, notes, counts[name]))
    out.sort(key=lambda f: 0 if len(f.tables["patients"]) else 1)
    return out


def import_fhir_files(files: Iterable[FileInput], db=None, user: str | None = None, identifier_system: str | None = None):
    """Import FHIR files through the CSV pipeline; one ingest report per file.

    `files` are paths or (name, bytes) pairs (uploads). Each file is one
    import batch, all or nothing, exactly like a CSV file.
    """
    from .. import ingest  # late: ingest dispatches FHIR content here

    reports = []
    for part in convert_files(files, identifier_system):
        report = ingest.import_tables(
            part.tables, file_name=part.file_name, source="fhir", db=db, sha256=part.sha256,
            user=user, rejects=part.rejects,
        )
        if part.notes:
            _attach_notes(report, part.notes)
        reports.append(report)
    return reports


def _attach_notes(report, notes: list[str]) -> None:
    if isinstance(report, dict):
        report.setdefault("notes", []).extend(notes)
    elif hasattr(report, "notes") and isinstance(report.notes, list):
        report.notes.extend(notes)
