"""FHIR files behind the import source interface (ingest/sources.py).

A FHIR file is recognised by content (JSON naming a resourceType), whatever its name.
analytics.fhir converts the files to the same raw-string row tables as CSV (a bulk
export's Observation.ndjson refers to patients in Patient.ndjson, so a command's FHIR
files are converted together); here those tables are checked by the CSV rules, and each
resource that could not be converted joins the rejects of the batch of its kind
(Observation -> assessments, ...; other types -> the file's first batch), with `_row` -1
like CSV rows that could not be parsed. The FHIR modules are loaded only when a file
looks like FHIR, so a CSV-only import never pays for them.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

from .. import access, store
from . import rules
from .jobs import FileJob
from .report import FileResult


class FhirSource:
    format = "fhir"

    def recognises(self, path) -> bool:
        # A cheap look first: FHIR JSON starts with "{" (after a byte-order mark or blanks).
        try:
            with open(path, "rb") as handle:
                head = handle.read(4096)
        except OSError:
            return False
        if not head.removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n").startswith(b"{"):
            return False
        from .. import fhir

        return fhir.is_fhir_file(path)

    def read(self, paths: Iterable, reading, *, db=None, identifier_system: str | None = None, **_) -> None:
        """Convert the files together and add a FileResult per (file, table kind), with a job for each, to `reading`.
        `paths` may also be (name, bytes) uploads."""
        from .. import fhir

        parts = fhir.convert_files(paths, identifier_system)
        stored = _stored_patients(db, {pid for part in parts for pid in part.tables["patients"]["patient_id"]})
        for part in parts:
            if part.refused:
                reading.files.append(FileResult(file=part.file_name, kind=None, refused=part.refused))
                continue
            part.tables["patients"] = _keep_stored_values(part.tables["patients"], stored, part.derived_enrolment)
            kinds_with_rows = [k for k in rules.KINDS if len(part.tables[k])]
            fallback = kinds_with_rows[0] if kinds_with_rows else "assessments"
            reject_kind = [fhir.KIND_OF_TYPE.get(t, fallback) for t in part.rejects["resource_type"]]
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
                result = FileResult(file=part.file_name, kind=kind, notes=notes)
                reading.files.append(result)
                reading.jobs.append(FileJob(part.file_name, self.format, part.sha256, validated, _raw_for(frame, extra), result))
            if first:  # nothing at all in the file
                reading.files.append(FileResult(file=part.file_name, kind=None, notes=["no resources in this file"]))


def _stored_patients(db, patient_ids: set[str]) -> pd.DataFrame | None:
    """The stored rows of these patients (read through the scoped data layer), or None."""
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
