"""Visit entry: one infusion or one assessment typed in the browser (docs/self-report.md).

Every entry goes through the import's own path (`ingest.import_tables`, source "ui"), so
the same rules apply as to a CSV file: ranges, dates, unknown patient, treatment before
enrolment. Two rules are stricter than a file import, because a form is one record:
- a new entry whose key (patient, time[, instrument]) is already stored is refused as a
  duplicate (a file would update it); changing a stored record is an explicit correction,
- a correction must name a stored record.
Corrections are new versions: the import keeps the replaced values in record_history,
and so does this module for the extras (weight, dose in mg, notes) in treatment_details.
Nothing is saved half-way: the extras, the audit entry and the rows share one
transaction, and any refusal found inside it rolls all of it back (even the quarantine).

Errors are returned keyed by the field they concern (the CSV column names, plus
weight_kg, dose_mg and notes), so a form can show each reason next to its field.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import date, datetime

import pandas as pd

from . import scales
from .access import AccessDenied, DataAccess, Scope
from .permissions import may
from .ingest import import_tables, rules
from .vocabulary import PHASES, ROUTES  # noqa: F401  (the form's choices)

MIN_WEIGHT_KG, MAX_WEIGHT_KG = 20.0, 400.0
MAX_NOTES = 2000
FORM = "form"  # error key for problems that belong to no single field
# mg/kg typed and mg / weight typed must agree within this (rounding of a typed dose).
DOSE_AGREEMENT = 0.02


@dataclass
class VisitResult:
    ok: bool
    errors: dict[str, str] = field(default_factory=dict)
    version: str | None = None  # "new", "corrected" or "unchanged"
    message: str = ""


class _Refused(Exception):
    def __init__(self, errors: dict[str, str]):
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


def _when_text(value: datetime | date | str) -> str:
    """The import's date text: YYYY-MM-DD, or YYYY-MM-DDTHH:MM[:SS] when a time is known."""
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds" if value.second else "minutes")
    if isinstance(value, date):
        return value.isoformat()
    return str(value).strip()


def _number_text(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return repr(round(float(value), 6)) if isinstance(value, (int, float)) else str(value).strip()


def record_key(patient_id: str, administered_at, instrument: str | None = None) -> str:
    """The key record_history uses (ingest/write.py `_RECORD_KEY`)."""
    stamp = pd.Timestamp(administered_at).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{patient_id}|{instrument}|{stamp}" if instrument else f"{patient_id}|{stamp}"


def _check_scope(db, scope: Scope, patient_id: str, detail: dict) -> dict[str, str]:
    """Refusals of the role or the patient, each audited as a denied record_visit (a write that did not happen)."""
    if not may(scope, "record_visit"):
        errors = {FORM: f"the {scope.role} role cannot record visits; a clinician records them"}
    elif not DataAccess(db, scope).can_see_patient(patient_id):
        errors = {"patient_id": "no patient with this id in your caseload"}
    else:
        return {}
    from . import audit

    audit.append(db, scope.user, "record_visit", role=scope.role, outcome="denied", page="patient",
                 patients=[str(patient_id)[:64]], detail={**detail, "reason": next(iter(errors.values()))})
    return errors


def _first_problems(validated) -> dict[str, str]:
    return {str(c): str(r) for c, r in zip(validated.rejects["column"], validated.rejects["reason"])}


def _row_outcome(report, correct: bool, what: str) -> str:
    """Turn the import's counts for a one-row entry into new/corrected/unchanged, or refuse."""
    result = next(f for f in report.files if f.kind in rules.KINDS)
    if result.rejects:
        r = result.rejects[0]
        raise _Refused({r.column or FORM: r.reason})
    if not correct and (result.rows_updated or result.rows_unchanged):
        raise _Refused({"administered_on": f"duplicate: {what} is already recorded at this date and time; "
                                           "open it and save a correction instead"})
    if correct and result.rows_inserted:
        raise _Refused({"administered_on": f"nothing to correct: no {what} is recorded at this date and time"})
    return "new" if result.rows_inserted else ("corrected" if result.rows_updated else "unchanged")


def _import_one(db, scope: Scope, kind: str, row: dict[str, str], after) -> VisitResult:
    try:
        report = import_tables({kind: pd.DataFrame([row], dtype="str")}, file_name=f"visit entry ({kind})",
                               source="ui", db=db, user=scope.user, after_write=after)
    except _Refused as refused:
        return VisitResult(False, refused.errors, message="nothing was saved")
    if report.error or not report.written:
        reason = report.error or "; ".join(report.messages())
        return VisitResult(False, {FORM: f"nothing was saved: {reason}"}, message="nothing was saved")
    return VisitResult(True, {}, message="saved")


def _audit(con, db, scope: Scope, patient_id: str, detail: dict) -> None:
    from . import audit

    audit.append(db, scope.user, "record_visit", role=scope.role, page="patient", patients=[patient_id],
                 detail=detail, con=con)


# --- infusions -----------------------------------------------------------------------

def record_infusion(
    db,
    scope: Scope,
    patient_id: str,
    *,
    administered_at: datetime | date | str,
    route: str,
    dose_mg_per_kg: float | None = None,
    dose_mg: float | None = None,
    weight_kg: float | None = None,
    phase: str | None = None,
    notes: str | None = None,
    correct: bool = False,
    now: datetime | None = None,
) -> VisitResult:
    """Store one infusion (or, with correct=True, a new version of a stored one).

    The dose is mg/kg, or mg with the patient's weight (then mg/kg = mg / weight).
    Notes (side effects: blood pressure rise, dissociation, ...) and weight are kept in
    treatment_details, outside the CSV contract.
    """
    patient_id = str(patient_id).strip()
    errors = _check_scope(db, scope, patient_id, {"kind": "infusion", "correct": bool(correct)})
    if errors:
        return VisitResult(False, errors, message="nothing was saved")
    notes = (notes or "").strip() or None
    if notes and len(notes) > MAX_NOTES:
        errors["notes"] = f"notes are limited to {MAX_NOTES} characters, got {len(notes)}"
    if weight_kg is not None and not (MIN_WEIGHT_KG <= float(weight_kg) <= MAX_WEIGHT_KG):
        errors["weight_kg"] = f"weight must be {MIN_WEIGHT_KG:g}-{MAX_WEIGHT_KG:g} kg, got {float(weight_kg):g}"
    if dose_mg is not None and float(dose_mg) <= 0:
        errors["dose_mg"] = f"dose in mg must be above 0, got {float(dose_mg):g}"
    per_kg = dose_mg_per_kg
    if dose_mg is not None and "dose_mg" not in errors:
        if weight_kg is None:
            errors["weight_kg"] = "give the patient's weight to record a dose in mg"
        elif "weight_kg" not in errors:
            from_mg = float(dose_mg) / float(weight_kg)
            if per_kg is None:
                per_kg = from_mg
            elif abs(from_mg - float(per_kg)) > DOSE_AGREEMENT * float(per_kg):
                errors["dose_mg"] = (f"{float(dose_mg):g} mg for {float(weight_kg):g} kg is {from_mg:.3g} mg/kg, "
                                     f"not the {float(per_kg):g} mg/kg given; give one or make them agree")
    row = {"patient_id": patient_id, "administered_on": _when_text(administered_at), "route": (route or "").strip().lower(),
           "dose_mg_per_kg": _number_text(per_kg), "phase": (phase or "").strip().lower()}
    validated = rules.validate("treatments", pd.DataFrame([row], dtype="str"), now=now)
    errors = {**_first_problems(validated), **errors}
    if errors:
        return VisitResult(False, errors, message="nothing was saved")
    at = validated.clean["administered_at"].iloc[0]
    details = {"weight_kg": None if weight_kg is None else float(weight_kg),
               "dose_mg": None if dose_mg is None else float(dose_mg), "notes": notes}

    outcome: dict[str, str] = {}

    def after(con, report):
        version = _row_outcome(report, correct, "an infusion")
        if _write_details(con, patient_id, at, details, report.batch_ids[0]) and version == "unchanged":
            version = "corrected"
        outcome["version"] = version
        _audit(con, db, scope, patient_id, {"kind": "infusion", "version": version,
                                            "administered_at": pd.Timestamp(at).isoformat()})

    result = _import_one(db, scope, "treatments", row, after)
    result.version = outcome.get("version") if result.ok else None
    return result


def _write_details(con, patient_id: str, at, details: dict, batch_id: int) -> bool:
    """Upsert the infusion's extras; a replaced version goes to record_history. True when changed."""
    old = con.execute(
        "SELECT weight_kg, dose_mg, notes, to_json(t) FROM treatment_details t WHERE patient_id = ? AND administered_at = ?",
        [patient_id, at]).fetchall()
    wanted = (details["weight_kg"], details["dose_mg"], details["notes"])
    if old:
        if tuple(old[0][:3]) == wanted:
            return False
        con.execute("INSERT INTO record_history (table_name, record_key, old_values, batch_id) VALUES ('treatment_details', ?, ?, ?)",
                    [record_key(patient_id, at), old[0][3], batch_id])
        con.execute("UPDATE treatment_details SET weight_kg = ?, dose_mg = ?, notes = ? WHERE patient_id = ? AND administered_at = ?",
                    [*wanted, patient_id, at])
        return True
    if wanted == (None, None, None):
        return False
    con.execute("INSERT INTO treatment_details (patient_id, administered_at, weight_kg, dose_mg, notes) VALUES (?, ?, ?, ?, ?)",
                [patient_id, at, *wanted])
    return True


# --- assessments -----------------------------------------------------------------------

def assessment_row(patient_id: str, instrument: str, administered_at, items: dict[int, int | None],
                   total: float | None = None, rater: str = "clinician") -> dict[str, str]:
    """One assessment as the import's raw CSV row."""
    row = {"patient_id": str(patient_id).strip(), "instrument": instrument, "administered_on": _when_text(administered_at),
           "rater": rater, "total": _number_text(total)}
    for n in range(1, scales.max_items() + 1):
        row[f"item_{n}"] = _number_text(items.get(n))
    return row


def record_assessment(
    db,
    scope: Scope,
    patient_id: str,
    instrument: str,
    *,
    administered_at: datetime | date | str,
    items: dict[int, int | None],
    total: float | None = None,
    rater: str = "clinician",
    correct: bool = False,
    now: datetime | None = None,
) -> VisitResult:
    """Store one rated assessment (e.g. a clinician's MADRS) or, with correct=True, a new version."""
    patient_id = str(patient_id).strip()
    errors = _check_scope(db, scope, patient_id, {"kind": "assessment", "instrument": str(instrument)[:20],
                                                  "correct": bool(correct)})
    if errors:
        return VisitResult(False, errors, message="nothing was saved")
    row = assessment_row(patient_id, instrument, administered_at, items, total, rater)
    validated = rules.validate("assessments", pd.DataFrame([row], dtype="str"), now=now)
    errors = _first_problems(validated)
    if errors:
        return VisitResult(False, errors, message="nothing was saved")
    at = validated.clean["administered_at"].iloc[0]
    code = validated.clean["instrument"].iloc[0]
    outcome: dict[str, str] = {}

    def after(con, report):
        outcome["version"] = _row_outcome(report, correct, f"a {code}")
        _audit(con, db, scope, patient_id, {"kind": "assessment", "instrument": code, "version": outcome["version"],
                                            "administered_at": pd.Timestamp(at).isoformat()})

    result = _import_one(db, scope, "assessments", row, after)
    result.version = outcome.get("version") if result.ok else None
    return result


# --- history of a record -----------------------------------------------------------------

TREATMENT_FIELDS = ["route", "dose_mg_per_kg", "phase", "weight_kg", "dose_mg", "notes"]


def record_history(db, scope: Scope, patient_id: str, administered_at, instrument: str | None = None) -> pd.DataFrame:
    """Every version of one infusion (instrument None) or assessment, newest first.

    Columns: version (1 = first), state ("current" or "replaced"), replaced_at, then the
    record's values. The values of each replaced version are what was stored before the
    replacement; an infusion's extras (weight, mg, notes) are versioned separately and
    merged here by time.
    """
    data = DataAccess(db, scope)
    if not data.can_see_patient(patient_id):  # refused before any read, and audited
        data.log("view_patient", outcome="denied", page="patient", patients=[str(patient_id)[:64]],
                 detail={"what": "record history"})
        raise AccessDenied(f"patient {str(patient_id)[:64]!r} is not in your caseload, or does not exist")
    at = pd.Timestamp(administered_at)
    if instrument is None:
        current = data.treatments([patient_id])
        current = current[current["administered_at"] == at]
        details = data.treatment_details([patient_id])
        details = details[details["administered_at"] == at]
        fields = TREATMENT_FIELDS
        key = record_key(patient_id, at)
        changes = [("treatments", data.record_versions(patient_id, "treatments", key)),
                   ("treatment_details", data.record_versions(patient_id, "treatment_details", key))]
        now_values = {c: (current[c].iloc[0] if len(current) and c in current else None) for c in fields}
        if len(details):
            now_values.update({c: details[c].iloc[0] for c in ("weight_kg", "dose_mg", "notes")})
    else:
        code = scales.get(instrument).code
        current = data.assessments([patient_id], code)
        current = current[current["administered_at"] == at]
        fields = ["rater", *[f"item_{n}" for n in scales.get(code).all_items], "total", "total_method"]
        key = record_key(patient_id, at, code)
        changes = [("assessments", data.record_versions(patient_id, "assessments", key))]
        now_values = {c: (current[c].iloc[0] if len(current) else None) for c in fields}
    if not len(current):
        return pd.DataFrame(columns=["version", "state", "replaced_at", *fields])
    # Walk back from the current values: each correction (one batch, possibly touching both the
    # row and its extras) restores the fields it replaced.
    corrections: dict[tuple, dict] = {}
    for table, frame in changes:
        for r in frame.itertuples():
            old = json.loads(r.old_values)
            touched = ("weight_kg", "dose_mg", "notes") if table == "treatment_details" else [c for c in fields if c in old]
            corrections.setdefault((pd.Timestamp(r.replaced_at), r.batch_id), {}).update({c: old.get(c) for c in touched})
    versions = [{"state": "current", "replaced_at": None, **now_values}]
    values = dict(now_values)
    for (replaced_at, _), old in sorted(corrections.items(), key=lambda kv: kv[0], reverse=True):
        values = {**values, **old}
        versions.append({"state": "replaced", "replaced_at": replaced_at, **values})
    frame = pd.DataFrame(versions)
    frame.insert(0, "version", range(len(frame), 0, -1))
    return frame[["version", "state", "replaced_at", *fields]]


__all__ = ["VisitResult", "record_infusion", "record_assessment", "record_history", "record_key", "assessment_row"]
