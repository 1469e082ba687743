"""The store as CSV files in the import format (`python -m analytics export DIR`).

patients.csv, treatments.csv and assessments.csv import back into an empty
database to the same content (tests/test_export_roundtrip.py); rejected.csv
lists every quarantined row; voided.csv every voided infusion and assessment (who voided it,
when and why), which the import does not read back: its columns name no kind of record. Free-text cells a spreadsheet would run as a
formula (= + - @, and a leading quote so the rule can be undone) get a quote
prefixed; the importer removes exactly that prefix (docs/import.md).

Files are written into a staging folder inside the target and moved into place only when every
one is complete (`staged_directory`): an export that fails part-way (a full disk) leaves no
partial files. A database that cannot be written (a read-only file or snapshot) can still be
exported by the operator; the audit entry it cannot take is written beside the files
(`export-audit.json`) instead (`record_export`).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from . import access, audit, scales, store
from .permissions import may
from .ingest import rules

AUDIT_NOTE = "export-audit.json"


def _number(values: pd.Series) -> pd.Series:
    """Shortest text that reads back as the same float; whole numbers without '.0'."""
    def show(v) -> str:
        if pd.isna(v):
            return ""
        text = repr(float(v))
        return text[:-2] if text.endswith(".0") else text
    return values.map(show).astype("str")


def _when(stamps: pd.Series, has_time: pd.Series) -> pd.Series:
    stamps = pd.to_datetime(stamps)
    with_seconds = stamps.dt.strftime("%Y-%m-%dT%H:%M:%S")
    with_fraction = stamps.dt.strftime("%Y-%m-%dT%H:%M:%S.%f")
    date_only = stamps.dt.strftime("%Y-%m-%d")
    has_fraction = (stamps.dt.microsecond != 0).to_numpy()
    timed = has_time.astype(bool).to_numpy()
    return pd.Series(np.where(timed, np.where(has_fraction, with_fraction, with_seconds), date_only), index=stamps.index, dtype="str")


def _text(values: pd.Series) -> pd.Series:
    present = values.notna()
    out = pd.Series("", index=values.index, dtype="str")
    if present.any():
        out[present] = rules.escape_formula(values[present].astype("str"))
    return out


def patients_frame(data: access.DataAccess) -> pd.DataFrame:
    return format_patients(data.patients(), data.attributes())


def format_patients(patients: pd.DataFrame, attributes: pd.DataFrame | None) -> pd.DataFrame:
    """Patients rows (DataAccess.patients) and their attributes as the patients.csv columns."""
    out = pd.DataFrame(index=patients.index)
    for column in rules.PATIENT_COLUMNS:
        values = patients[column]
        if column in rules.TEXT_COLUMNS["patients"]:
            out[column] = _text(values)
        elif column == "enrolled_on":
            out[column] = pd.to_datetime(values).dt.strftime("%Y-%m-%d").fillna("").astype("str")
        elif column in ("birth_year", "prior_failed_trials"):
            out[column] = values.astype("Int64").astype("str").fillna("").astype("str")
        else:
            out[column] = values.fillna("").astype("str")
    if attributes is not None and len(attributes):
        wide = attributes.pivot(index="patient_id", columns="name", values="value")
        for name in sorted(wide.columns):
            values = patients["patient_id"].map(wide[name])
            out[name] = _text(values)
    return out


def treatments_frame(data: access.DataAccess) -> pd.DataFrame:
    return format_treatments(data.treatments())


def format_treatments(t: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "patient_id": _text(t["patient_id"]),
        "administered_on": _when(t["administered_at"], t["has_time"]),
        "route": t["route"].astype("str"),
        "dose_mg_per_kg": _number(t["dose_mg_per_kg"]),
        "phase": t["phase"].fillna("").astype("str"),
    })


def assessments_frame(data: access.DataAccess) -> pd.DataFrame:
    return format_assessments(data.assessments())


def format_assessments(a: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame({
        "patient_id": _text(a["patient_id"]),
        "instrument": a["instrument"].astype("str"),
        "administered_on": _when(a["administered_at"], a["has_time"]),
        "rater": _text(a["rater"]),
    })
    for column in scales.item_columns():
        out[column] = _number(a[column].astype("float64"))
    out["total"] = _number(a["total"])
    return out


VOIDED_COLUMNS = ["record", "patient", "date", "values", "voided_at", "voided_by", "void_reason"]


def voided_frame(data: access.DataAccess) -> pd.DataFrame:
    """Voided infusions and assessments, newest void first, kept for the record."""
    rows = []
    voided = data.voided_rows()
    for r in voided["treatments"].to_dict("records"):
        dose = f"{r['dose_mg_per_kg']:g} mg/kg" if pd.notna(r["dose_mg_per_kg"]) else "dose not recorded"
        rows.append(("infusion", r, f"{r['route']} {dose} {r['phase'] if pd.notna(r['phase']) else ''}".strip()))
    for r in voided["assessments"].to_dict("records"):
        rows.append((r["instrument"], r, f"total {r['total']:g}" if pd.notna(r["total"]) else "no total"))
    frame = pd.DataFrame([{
        "record": kind, "patient": r["patient_id"],
        "date": _when(pd.Series([r["administered_at"]]), pd.Series([r["has_time"]])).iloc[0],
        "values": values, "voided_at": pd.Timestamp(r["voided_at"]).strftime("%Y-%m-%dT%H:%M:%S"),
        "voided_by": r["voided_by"], "void_reason": r["void_reason"],
    } for kind, r, values in rows], columns=VOIDED_COLUMNS)
    for column in ("patient", "voided_by", "void_reason"):
        frame[column] = _text(frame[column].astype(object))
    return frame.sort_values("voided_at", ascending=False, kind="stable").reset_index(drop=True)


def rejected_frame(data: access.DataAccess) -> pd.DataFrame:
    r = data.rejected_rows()
    return pd.DataFrame({
        "batch_id": r["batch_id"].astype("str"),
        "file": _text(r["file_name"]),
        "line": r["line"].astype("Int64").astype("str").fillna("").astype("str"),
        "column": r["column_name"].fillna("").astype("str"),
        "reason": _text(r["reason"]),
        "raw_line": _text(r["raw_line"]),
    })


@contextlib.contextmanager
def staged_directory(directory: str | os.PathLike) -> Iterator[Path]:
    """A private folder inside `directory` to write into; its files are moved into `directory` when
    the block ends without error, and it is removed either way (no partial export is left)."""
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    stage = target / f".export-{os.getpid()}-{datetime.now().strftime('%H%M%S%f')}"
    stage.mkdir(mode=0o700)
    try:
        yield stage
        for path in sorted(stage.iterdir()):
            os.replace(path, target / path.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def record_export(data: access.DataAccess, directory: Path, detail: dict, page: str | None = None,
                  patients: list[str] | None = None) -> Path | None:
    """Audit an export before any of its files is written: an export that cannot be audited does not happen.

    On a database that cannot be written (store.ReadOnlyDatabase), the operator's export (action
    `export_from_read_only_database`) is recorded in `directory/export-audit.json` instead, with
    the newest entry of the database's own audit trail; returns that file (None when audited in
    the database)."""
    try:
        data.log("export", page=page, patients=patients, detail=detail)
        return None
    except store.ReadOnlyDatabase:
        if not may(data.scope, "export_from_read_only_database"):
            raise
    newest = audit.entries(data.db, limit=1)
    note = {
        "action": "export", "actor": data.scope.user, "role": data.scope.role,
        "at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "database": str(Path(data.db).resolve()),
        "why_here": "the database cannot be written (read-only), so this export is not in its audit trail",
        "audit_trail_head": ({"seq": int(newest["seq"].iloc[0]), "hash": newest["hash"].iloc[0]} if len(newest) else None),
        "detail": detail, "patients": patients or [],
    }
    path = Path(directory) / AUDIT_NOTE
    path.write_text(json.dumps(note, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    return path


def export_csv(directory: str | os.PathLike, db=None, scope: access.Scope = access.SYSTEM,
               page: str | None = None, detail: dict | None = None) -> dict[str, Path]:
    """Write patients/treatments/assessments.csv, voided.csv (and rejected.csv for admins) into
    `directory`; the audit entry lists every patient in it."""
    data = access.DataAccess(db, scope)
    patients = data.patients()
    frames = {
        "patients": format_patients(patients, data.attributes()),
        "treatments": treatments_frame(data),
        "assessments": assessments_frame(data),
        "voided": voided_frame(data),
    }
    if may(scope, "view_rejected_rows"):
        frames["rejected"] = rejected_frame(data)
    return write_frames(directory, frames, data, patients["patient_id"], page=page,
                        detail={"format": "csv", "identifiable": True, **(detail or {})})


def write_frames(directory: str | os.PathLike, frames: dict[str, pd.DataFrame], data: access.DataAccess, patient_ids,
                 *, page: str | None, detail: dict) -> dict[str, Path]:
    """Audit an export (with every patient in it), then write its CSV files into `directory`, all or none."""
    target = Path(directory)
    detail = {**detail, "directory": str(target), "rows": {name: len(frame) for name, frame in frames.items()}}
    patients = [str(p) for p in patient_ids]
    written: dict[str, Path] = {}
    with staged_directory(target) as stage:
        note = record_export(data, stage, detail, page=page, patients=patients)  # before any file is written
        with recorded_failure(data, note, detail, page):
            for name, frame in frames.items():
                frame.to_csv(stage / f"{name}.csv", index=False, lineterminator="\n", encoding="utf-8")
                written[name] = target / f"{name}.csv"
        if note is not None:
            written["audit"] = target / note.name
    return written


@contextlib.contextmanager
def recorded_failure(data: access.DataAccess, note: Path | None, detail: dict, page: str | None = None) -> Iterator[None]:
    """An export that fails after its audit entry (a full disk) gets a second entry saying it failed."""
    try:
        yield
    except OSError as exc:
        if note is None:
            with contextlib.suppress(Exception):  # the disk that is full may hold the database too
                data.log("export", outcome="failed", page=page, detail={**detail, "error": exc.strerror or type(exc).__name__})
        raise
