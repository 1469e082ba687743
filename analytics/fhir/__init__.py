"""FHIR R4 conversion and export. See docs/fhir.md.

Import: `convert_files` reads Bundles (collection, searchset, transaction, batch),
single resources and NDJSON bulk-export files, validates every resource with the
`fhir.resources` R4B models and converts them to the same raw-string row tables as
CSV. The import itself is analytics.ingest's: FHIR is one of its sources
(ingest/fhir_source.py), checked by the same rules in the same single transaction as
the rest of the command. Nothing here imports the import or the store.

Export: `analytics.fhir.export.export_fhir(directory, db=None, scope=SYSTEM) -> {type: path}`
(it reads through the scoped data layer, so this package does not import it).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Union

import pandas as pd

from . import codes
from .convert import Conversion, Converter
from .parse import Located, Reject, iter_text, looks_like_fhir, sniff_file

__all__ = [
    "convert_files", "looks_like_fhir", "sniff_file", "is_fhir_file", "FileTables", "IDENTIFIER_ENV",
    "KIND_OF_TYPE",
]

# Which Patient.identifier system holds the pseudonymous patient id; without
# one (or when a Patient has none of it) the resource id is used.
IDENTIFIER_ENV = codes.IDENTIFIER_ENV

FileInput = Union[str, os.PathLike, tuple[str, bytes]]
REJECT_COLUMNS = ["line", "column", "reason", "raw", "resource_type"]
# Optional columns: when no resource in a file has a value for one, the column
# is left out, so the import does not blank what an earlier import (e.g. a
# patients CSV with diagnoses) stored there; ingest writes only given columns.
OPTIONAL_COLUMNS = {
    "patients": ("birth_year", "sex", "diagnosis", "comorbidities", "prior_failed_trials"),
    "treatments": ("dose_mg_per_kg", "phase"),
    "assessments": ("rater",),
}
# The batch (table kind) a rejected resource is counted in.
KIND_OF_TYPE = {
    "Patient": "patients",
    "Observation": "assessments",
    "QuestionnaireResponse": "assessments",
    "MedicationAdministration": "treatments",
    "Procedure": "treatments",
    "Medication": "treatments",
}


@dataclass
class FileTables:
    """What one FHIR file contributes: row tables, its rejects, and notes."""

    file_name: str
    sha256: str
    tables: dict[str, pd.DataFrame]
    rejects: pd.DataFrame  # columns line, column, reason, raw, resource_type
    notes: list[tuple[str, str]]  # (table kind, message)
    resources: int  # resources read from the file (valid or not)
    refused: str | None = None  # the whole file is unusable: why
    derived_enrolment: frozenset = frozenset()  # patient_ids whose enrolled_on was derived


def is_fhir_file(path) -> bool:
    """Content sniff for ingest: False (let the CSV reader explain) when unreadable."""
    try:
        return sniff_file(path)
    except OSError:
        return False


def _load(item: FileInput) -> tuple[str, bytes]:
    if isinstance(item, tuple):
        name, content = item
        return str(name), bytes(content)
    return str(item), Path(item).read_bytes()


def identifier_system(explicit: str | None = None) -> str:
    return explicit or os.environ.get(IDENTIFIER_ENV) or codes.LOCAL_PATIENT_ID


def _without_empty_optional(kind: str, frame: pd.DataFrame) -> pd.DataFrame:
    empty = [c for c in OPTIONAL_COLUMNS[kind] if c in frame.columns and not (frame[c] != "").any()]
    return frame.drop(columns=empty)


def convert_files(files: Iterable[FileInput], identifier_system_: str | None = None) -> list[FileTables]:
    """Read and convert FHIR files together (a bulk export's Observation.ndjson
    refers to patients in Patient.ndjson), then split the rows back per file.

    Files holding Patients come first.
    """
    loaded: list[str] = []
    converter = Converter(identifier_system(identifier_system_))
    parse_rejects: list[Reject] = []
    counts: dict[str, int] = {}
    hashes: dict[str, str] = {}
    for item in files:
        name, content = _load(item)
        loaded.append(name)
        hashes[name] = hashlib.sha256(content).hexdigest()
        counts[name] = 0
        try:
            text = content.decode("utf-8")
        except UnicodeDecodeError as exc:
            parse_rejects.append(Reject(name, None, "", f"not UTF-8 text (byte {exc.start}): FHIR JSON must be UTF-8", "", "", True))
            continue
        del content
        for parsed in iter_text(text, name):
            counts[name] += 1
            if isinstance(parsed, Located):
                converter.add(parsed)
            else:
                parse_rejects.append(parsed)
        del text

    result: Conversion = converter.finish()
    rejects = parse_rejects + result.rejects
    out = []
    for name in loaded:
        tables = {
            kind: _without_empty_optional(kind, frame[frame["_file"] == name].drop(columns="_file").reset_index(drop=True))
            for kind, frame in result.tables.items()
        }
        mine = [r for r in rejects if r.file_name == name]
        fatal = next((r for r in mine if r.fatal), None)
        refused = None
        if fatal is not None:
            where = f"line {fatal.line}: " if fatal.line else ""
            refused = f"{name}: {where}{fatal.reason}; nothing was imported from it"
        mine.sort(key=lambda r: (r.line is None, r.line or 0))
        frame = pd.DataFrame(
            [{"line": r.line, "column": r.column, "reason": r.reason, "raw": r.raw, "resource_type": r.resource_type} for r in mine],
            columns=REJECT_COLUMNS,
        )
        notes = [(kind, text) for file, kind, text in result.notes if file == name]
        out.append(FileTables(name, hashes[name], tables, frame, notes, counts[name], refused, frozenset(result.derived_enrolment)))
    out.sort(key=lambda f: 0 if len(f.tables["patients"]) else 1)
    return out
