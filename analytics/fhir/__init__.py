"""FHIR R4 import and export (issue 7). See docs/fhir.md.

Import: FHIR files go through `analytics.ingest.import_files` like CSV (it
recognises them by content and calls `add_import_jobs`), or directly through
`import_fhir_files`. Bundles (collection, searchset, transaction, batch),
single resources and NDJSON bulk-export files are read, every resource is
validated with the `fhir.resources` R4B models, converted to the same
raw-string row tables as CSV and checked by the same rules, in the same single
transaction as the rest of the command.

Export: `export_fhir(directory, db=None, scope=SYSTEM) -> {type: path}`.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Union

import numpy as np
import pandas as pd

from . import codes
from .convert import Conversion, Converter
from .export import export_fhir
from .parse import Located, Reject, iter_text, looks_like_fhir, sniff_file

__all__ = [
    "export_fhir", "import_fhir_files", "convert_files", "add_import_jobs", "preview", "looks_like_fhir",
    "sniff_file", "is_fhir_file", "FileTables", "IDENTIFIER_ENV",
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


def add_import_jobs(paths: Iterable[FileInput], report, jobs: list, user: str | None = None,
                    identifier_system_: str | None = None, db=None) -> None:
    """Append FHIR files to an ingest run: a FileResult per (file, table kind) and a job for each.

    Rows are checked by `ingest.rules.validate` exactly like CSV rows; the
    resource-level rejects join the rejects of the batch of their kind
    (Observation -> assessments, ...; other types -> the file's first batch),
    with `_row` -1 like CSV rows that could not be parsed.
    """
    from .. import ingest
    from ..ingest import rules

    parts = convert_files(paths, identifier_system_)
    stored = _stored_patients(db, {pid for part in parts for pid in part.tables["patients"]["patient_id"]})
    for part in parts:
        if part.refused:
            report.files.append(ingest.FileResult(file=part.file_name, kind=None, refused=part.refused))
            continue
        part.tables["patients"] = _keep_stored_values(part.tables["patients"], stored, part.derived_enrolment)
        kinds_with_rows = [k for k in rules.KINDS if len(part.tables[k])]
        fallback = kinds_with_rows[0] if kinds_with_rows else "assessments"
        reject_kind = [KIND_OF_TYPE.get(t, fallback) for t in part.rejects["resource_type"]]
        first = True
        kinds_in_jobs = [k for k in rules.KINDS if len(part.tables[k]) or k in reject_kind]
        for kind in rules.KINDS:
            frame = part.tables[kind]
            extra = part.rejects[[k == kind for k in reject_kind]] if len(part.rejects) else part.rejects
            if frame.empty and extra.empty:
                continue
            validated = rules.validate(kind, frame)
            if len(extra):
                validated.rejects = pd.concat([validated.rejects, pd.DataFrame({
                    "_row": np.full(len(extra), -1, dtype="int64"),
                    "_line": extra["line"].fillna(0).astype("int64").to_numpy(),
                    "column": extra["column"].to_numpy(),
                    "reason": extra["reason"].to_numpy(),
                })], ignore_index=True)
            notes = list(validated.notes) + [text for note_kind, text in part.notes
                                             if note_kind == kind or (first and note_kind not in kinds_in_jobs)]
            first = False
            result = ingest.FileResult(file=part.file_name, kind=kind, notes=notes)
            report.files.append(result)
            jobs.append(ingest._Job(part.file_name, "fhir", part.sha256, validated, _raw_for(frame, extra), result))
        if first:  # nothing at all in the file
            report.files.append(ingest.FileResult(file=part.file_name, kind=None, notes=["no resources in this file"]))


def _stored_patients(db, patient_ids: set[str]) -> pd.DataFrame | None:
    """The stored rows of these patients (read through the scoped data layer), or None."""
    from .. import access, store

    if not patient_ids or not store.db_path(db).exists():
        return None
    frame = access.DataAccess(db).patients()
    return frame[frame["patient_id"].isin(patient_ids)].set_index("patient_id")


def _keep_stored_values(patients: pd.DataFrame, stored: pd.DataFrame | None, derived: frozenset) -> pd.DataFrame:
    """A FHIR Patient sets what it states and never clears a stored value.

    An element the resource does not carry (no managingOrganization, no
    diagnosis extension...) keeps what the store has; so does an enrolment
    date that was only derived from the patient's data in this import.
    """
    if stored is None or patients.empty:
        return patients
    patients = patients.copy()
    known = patients["patient_id"].isin(stored.index)
    for column in patients.columns:
        if column.startswith("_") or column == "patient_id" or column not in stored.columns:
            continue
        values = patients[column]
        take = known & (values == "")
        if column == "enrolled_on":
            take = known & ((values == "") | patients["patient_id"].isin(derived))
        for i in np.flatnonzero(take.to_numpy()):
            old = stored.at[patients["patient_id"].iat[i], column]
            if old is not None and not pd.isna(old):
                patients.iat[i, patients.columns.get_loc(column)] = _as_raw(old)
    return patients


def _as_raw(value) -> str:
    """A stored value as the raw text a CSV cell would hold."""
    if hasattr(value, "strftime"):
        return value.strftime("%Y-%m-%d")
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _raw_for(frame: pd.DataFrame, extra: pd.DataFrame):
    """Raw text of rejected rows: the resource JSON of the row, or of the rejected resource (row -1)."""
    row_raw = frame["_raw"].to_numpy() if "_raw" in frame.columns else np.array([], dtype=object)
    line_raw: dict[int, str] = {}
    for line, raw in zip(extra["line"].fillna(0).astype("int64"), extra["raw"]):
        line_raw.setdefault(int(line), raw)

    def raw_for(rows, lines) -> list[str | None]:
        return [str(row_raw[r]) if r >= 0 else line_raw.get(int(line)) for r, line in zip(rows, lines)]
    return raw_for


def import_fhir_files(files: Iterable[FileInput], db=None, user: str = "system", identifier_system: str | None = None):
    """Import FHIR files (paths or (name, bytes) uploads) in one transaction; an ingest ImportReport."""
    from .. import ingest

    report = ingest.ImportReport()
    jobs: list = []
    add_import_jobs(files, report, jobs, user, identifier_system, db)
    return ingest._run(jobs, report, db, user)


def preview(paths: Iterable[FileInput], db=None) -> list[dict]:
    """What importing these FHIR files would do, without writing: one dict per
    (file, table kind) with the keys of `analytics.views.preview_upload` rows
    (file, kind, rows, accepted, rejected, refused, rejects: line/column/reason).
    Checks that need the store's rows (unknown patient) happen at import."""
    from .. import ingest

    report = ingest.ImportReport()
    jobs: list = []
    add_import_jobs(paths, report, jobs, db=db)
    by_result = {id(job.result): job for job in jobs}
    out = []
    for result in report.files:
        job = by_result.get(id(result))
        if job is None:
            out.append({"file": result.file, "kind": result.kind, "rows": 0, "accepted": 0, "rejected": 0,
                        "refused": result.refused, "rejects": pd.DataFrame(columns=["line", "column", "reason"])})
            continue
        rejects = job.validated.rejects.rename(columns={"_line": "line"})[["line", "column", "reason"]]
        rejects = rejects.sort_values("line", kind="stable").reset_index(drop=True)
        total = len(job.validated.clean) + len(job.validated.rejects)
        out.append({"file": result.file, "kind": result.kind, "rows": total, "accepted": len(job.validated.clean),
                    "rejected": len(job.validated.rejects), "refused": None, "rejects": rejects})
    return out
