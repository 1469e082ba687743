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

import hashlib
import json
import math
from dataclasses import dataclass, field
from datetime import date, datetime

import pandas as pd

from . import scales
from .access import AccessDenied, DataAccess, Scope
from .permissions import may
from .ingest import import_tables, rules
from .vocabulary import PHASES, ROUTE_NAMES, ROUTES  # noqa: F401  (the form's choices)

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


# The import's messages name its CSV columns (right for a file); a form shows the field's name instead.
FIELD_WORDS = {"administered_on": "date", "dose_mg_per_kg": "dose (mg/kg)", "patient_id": "patient id",
               **{c: c.replace("_", " ") for c in scales.item_columns()}}


def form_words(reason: str) -> str:
    """An import message in a form's words: "dose_mg_per_kg must be ..." -> "dose (mg/kg) must be ..."."""
    for column, words in FIELD_WORDS.items():
        if reason.startswith(column + " "):
            return words + reason[len(column):]
    return reason


def _first_problems(validated) -> dict[str, str]:
    return {str(c): form_words(str(r)) for c, r in zip(validated.rejects["column"], validated.rejects["reason"])}


def _row_outcome(report, correct: bool, what: str, voided: bool = False) -> str:
    """Turn the import's counts for a one-row entry into new/corrected/unchanged, or refuse.
    `voided`: the key holds a voided record, which a new entry restores (a correction may not)."""
    result = next(f for f in report.files if f.kind in rules.KINDS)
    if result.rejects:
        r = result.rejects[0]
        raise _Refused({r.column or FORM: form_words(r.reason)})
    if voided:
        if correct:
            raise _Refused({"administered_on": f"nothing to correct: {what} at this date and time was voided; "
                                               "record it again (without 'corrects') if it did happen"})
        return "new"
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


def _audit(con, db, scope: Scope, patient_id: str, detail: dict, action: str = "record_visit") -> None:
    from . import audit

    audit.append(db, scope.user, action, role=scope.role, page="patient", patients=[patient_id],
                 detail=detail, con=con)


# --- voided records -------------------------------------------------------------------------
# A mistaken record is voided, never deleted: the row stays with who voided it, when and why
# (store schema v6), every read of analytics/access.py leaves it out, and its key stays taken,
# so re-importing the file that carried it does not bring it back. A new entry at that key
# restores it as a new version (the voided one goes to record_history).

MAX_REASON = 500


def _key_sql(table: str, instrument: str | None) -> str:
    return "patient_id = ? AND administered_at = ?" + (" AND instrument = ?" if table == "assessments" else "")


def _key_params(patient_id: str, at, instrument: str | None) -> list:
    return [patient_id, at] + ([instrument] if instrument else [])


def _voided_at(con, table: str, patient_id: str, at, instrument: str | None = None) -> bool:
    rows = con.execute(f"SELECT voided_at FROM {table} WHERE {_key_sql(table, instrument)}",
                       _key_params(patient_id, at, instrument)).fetchall()
    return bool(rows) and rows[0][0] is not None


def _restore_if_voided(con, table: str, patient_id: str, at, instrument: str | None, report) -> None:
    """A new entry at the key of a voided record: the voided version goes to record_history (unless the
    import's update already put it there) and the record counts again."""
    if not _voided_at(con, table, patient_id, at, instrument):
        return
    result = next(f for f in report.files if f.kind in rules.KINDS)
    where, params = _key_sql(table, instrument), _key_params(patient_id, at, instrument)
    if not result.rows_updated:  # the import changed nothing, so it kept no copy of the voided version
        con.execute(f"""INSERT INTO record_history (table_name, record_key, old_values, batch_id)
                        SELECT '{table}', ?, to_json(t), ? FROM {table} t WHERE {where}""",
                    [record_key(patient_id, at, instrument), report.batch_ids[0], *params])
    con.execute(f"UPDATE {table} SET voided_at = NULL, voided_by = NULL, void_reason = NULL WHERE {where}", params)


def _reason_problem(reason: str, field_name: str) -> dict[str, str]:
    if len(reason) < 3:
        return {field_name: "say why (for example: entered for the wrong patient, or entered twice)"}
    if len(reason) > MAX_REASON:
        return {field_name: f"the reason is limited to {MAX_REASON} characters, got {len(reason)}"}
    return {}


def _what(instrument: str | None, at) -> str:
    return f"{'the infusion' if instrument is None else 'the ' + instrument} of {pd.Timestamp(at):%d %b %Y %H:%M}"


def _void_row(con, scope: Scope, table: str, patient_id: str, at, instrument: str | None, reason: str,
              batch_id: int, now: datetime) -> bool:
    """Keep the current version in record_history, then mark the row voided. False when no current row."""
    where, params = _key_sql(table, instrument), _key_params(patient_id, at, instrument)
    con.execute(f"""INSERT INTO record_history (table_name, record_key, old_values, batch_id)
                    SELECT '{table}', ?, to_json(t), ? FROM {table} t WHERE {where} AND voided_at IS NULL""",
                [record_key(patient_id, at, instrument), batch_id, *params])
    changed = con.execute(
        f"""UPDATE {table} SET voided_at = ?, voided_by = ?, void_reason = ?, batch_id = ?
            WHERE {where} AND voided_at IS NULL RETURNING 1""",
        [now, scope.user, reason, batch_id, *params]).fetchall()
    return bool(changed)


def void_record(db, scope: Scope, patient_id: str, administered_at, instrument: str | None = None, *,
                reason: str, now: datetime | None = None) -> VisitResult:
    """Void a mistaken infusion (instrument None) or assessment: it leaves every analysis (cycles,
    suggestions, the due list, exports of the data) and stays in the record's history with who
    voided it, when and why. One transaction with its audit entry (`void_record`)."""
    from . import clinic_time, store
    from .ingest import write

    patient_id = str(patient_id).strip()
    errors = _check_scope(db, scope, patient_id, {"kind": "infusion" if instrument is None else "assessment",
                                                  "instrument": None if instrument is None else str(instrument)[:20],
                                                  "version": "void"})
    reason = (reason or "").strip()
    errors = errors or _reason_problem(reason, "void_reason")
    if errors:
        return VisitResult(False, errors, message="nothing was voided")
    table = "treatments" if instrument is None else "assessments"
    code = None if instrument is None else scales.get(instrument).code
    at = pd.Timestamp(administered_at)
    now = now or clinic_time.now()
    key = record_key(patient_id, at, code)
    with store.transaction(db) as con:
        live = con.execute(f"SELECT count(*) FROM {table} WHERE {_key_sql(table, code)} AND voided_at IS NULL",
                           _key_params(patient_id, at, code)).fetchall()[0][0]
        if not live:  # nothing written yet: the transaction commits nothing
            return VisitResult(False, {FORM: f"nothing to void: no {_what(code, at)[4:]} is recorded "
                                             "(it may have been voided or corrected already)"}, message="nothing was voided")
        batch = write.start_batch(con, source="ui", file_name=f"void ({table})", kind=table, user=scope.user, rows_total=1,
                                  sha256=hashlib.sha256(f"void|{key}|{now.isoformat()}".encode()).hexdigest())
        _void_row(con, scope, table, patient_id, at, code, reason, batch, now)
        write.finish_batch(con, batch, 0, 1, 0, 0)
        _audit(con, db, scope, patient_id, {"kind": "infusion" if code is None else "assessment", "instrument": code,
                                            "administered_at": at.isoformat(), "reason": reason[:200]},
               action="void_record")
    return VisitResult(True, {}, version="voided", message=f"{_what(code, at).capitalize()} was voided.")


def correct_date(db, scope: Scope, patient_id: str, administered_at, new_administered_at, instrument: str | None = None,
                 *, reason: str, now: datetime | None = None) -> VisitResult:
    """Move a record entered at the wrong date or time: the record at the right time is a new
    version (its history shows the earlier date), the one at the wrong time is voided with the
    reason, and the same rules apply as to a new entry (no future date, not before enrolment,
    no record already there). `new_administered_at`: a date (no time known) or a date-time."""
    patient_id = str(patient_id).strip()
    errors = _check_scope(db, scope, patient_id, {"kind": "infusion" if instrument is None else "assessment",
                                                  "instrument": None if instrument is None else str(instrument)[:20],
                                                  "version": "date corrected"})
    reason = (reason or "").strip()
    errors = errors or _reason_problem(reason, "correction_reason")
    if errors:
        return VisitResult(False, errors, message="nothing was changed")
    data = DataAccess(db, scope)
    at = pd.Timestamp(administered_at)
    if instrument is None:
        current = data.treatments([patient_id])
        table, code = "treatments", None
    else:
        code = scales.get(instrument).code
        current = data.assessments([patient_id], code)
        table = "assessments"
    current = current[current["administered_at"] == at]
    if current.empty:
        return VisitResult(False, {FORM: f"nothing to correct: no {_what(code, at)[4:]} is recorded"},
                           message="nothing was changed")
    old = current.iloc[0]
    if code is None:
        row = {"patient_id": patient_id, "administered_on": _when_text(new_administered_at), "route": str(old["route"]),
               "dose_mg_per_kg": _number_text(None if pd.isna(old["dose_mg_per_kg"]) else float(old["dose_mg_per_kg"])),
               "phase": "" if pd.isna(old["phase"]) else str(old["phase"])}
        what = "an infusion"
    else:
        items = {n: (None if pd.isna(old[f"item_{n}"]) else int(old[f"item_{n}"])) for n in scales.get(code).all_items}
        total = float(old["total"]) if old["total_method"] == "given" and pd.notna(old["total"]) else None
        row = assessment_row(patient_id, code, new_administered_at, items, total, "" if pd.isna(old["rater"]) else str(old["rater"]))
        what = f"a {code}"
    validated = rules.validate(table, pd.DataFrame([row], dtype="str"), now=now)
    errors = _first_problems(validated)
    if errors:
        return VisitResult(False, {"new_administered_on" if k == "administered_on" else k: v for k, v in errors.items()},
                           message="nothing was changed")
    new_at = pd.Timestamp(validated.clean["administered_at"].iloc[0])
    if new_at == at:
        return VisitResult(False, {"new_administered_on": "this is the date and time already recorded"},
                           message="nothing was changed")
    from . import clinic_time

    stamp = (now or clinic_time.now())
    note = f"date corrected to {new_at:%Y-%m-%d %H:%M}: {reason}"

    def after(con, report):
        try:
            version = _row_outcome(report, False, what, voided=_voided_at(con, table, patient_id, new_at, code))
        except _Refused as refused:
            raise _Refused({"new_administered_on" if k == "administered_on" else k: v
                            for k, v in refused.errors.items()}) from None
        _restore_if_voided(con, table, patient_id, new_at, code, report)
        batch = report.batch_ids[0]
        # The new record's history starts with the version at the wrong time.
        con.execute(f"""INSERT INTO record_history (table_name, record_key, old_values, batch_id)
                        SELECT '{table}', ?, to_json(t), ? FROM {table} t WHERE {_key_sql(table, code)}""",
                    [record_key(patient_id, new_at, code), batch, *_key_params(patient_id, at, code)])
        if not _void_row(con, scope, table, patient_id, at, code, note, batch, stamp):
            raise _Refused({FORM: f"{_what(code, at)} was changed meanwhile: open it again"})
        if code is None:  # weight, mg and notes go with the infusion
            con.execute("""INSERT INTO treatment_details (patient_id, administered_at, weight_kg, dose_mg, notes)
                           SELECT patient_id, ?, weight_kg, dose_mg, notes FROM treatment_details
                           WHERE patient_id = ? AND administered_at = ?
                           ON CONFLICT (patient_id, administered_at) DO UPDATE SET weight_kg = excluded.weight_kg,
                           dose_mg = excluded.dose_mg, notes = excluded.notes""", [new_at, patient_id, at])
        _audit(con, db, scope, patient_id, {"kind": "infusion" if code is None else "assessment", "instrument": code,
                                            "version": "date corrected", "from": at.isoformat(),
                                            "administered_at": new_at.isoformat(), "reason": reason[:200], "new": version})

    result = _import_one(db, scope, table, row, after)
    if result.ok:
        result.version = "date corrected"
        result.message = f"{_what(code, at).capitalize()} now stands at {new_at:%d %b %Y %H:%M}."
    return result


# --- infusions -----------------------------------------------------------------------

DOSE_MISSING = ("give the dose (mg/kg, or mg with the patient's weight), or choose 'dose not recorded' "
                "if it is not known")


@dataclass
class InfusionCheck:
    """An infusion as it would be saved (the form's summary before saving), or why it cannot be."""
    errors: dict[str, str]
    row: dict[str, str] = field(default_factory=dict)  # the import's raw CSV row
    administered_at: pd.Timestamp | None = None
    has_time: bool = False
    route: str = ""
    dose_mg_per_kg: float | None = None
    phase: str | None = None
    details: dict = field(default_factory=dict)  # weight_kg, dose_mg, notes

    @property
    def ok(self) -> bool:
        return not self.errors


def check_infusion(
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
    dose_not_recorded: bool = False,
    correct: bool = False,
    now: datetime | None = None,
) -> InfusionCheck:
    """Every check of `record_infusion` that needs no write: what would be saved, or each problem by field.

    A dose is required, as mg/kg or as mg with the patient's weight (then mg/kg = mg / weight),
    unless `dose_not_recorded` says it is not known (a file import may leave it empty)."""
    patient_id = str(patient_id).strip()
    errors = _check_scope(db, scope, patient_id, {"kind": "infusion", "correct": bool(correct)})
    if errors:
        return InfusionCheck(errors)
    notes = (notes or "").strip() or None
    if notes and len(notes) > MAX_NOTES:
        errors["notes"] = f"notes are limited to {MAX_NOTES} characters, got {len(notes)}"
    if weight_kg is not None and not (MIN_WEIGHT_KG <= float(weight_kg) <= MAX_WEIGHT_KG):
        errors["weight_kg"] = f"weight must be {MIN_WEIGHT_KG:g}-{MAX_WEIGHT_KG:g} kg, got {float(weight_kg):g}"
    if dose_mg is not None and float(dose_mg) <= 0:
        errors["dose_mg"] = f"dose in mg must be above 0, got {float(dose_mg):g}"
    per_kg = dose_mg_per_kg
    if dose_not_recorded and (dose_mg is not None or dose_mg_per_kg is not None):
        errors["dose_mg_per_kg"] = "a dose is given but 'dose not recorded' is chosen: keep one of them"
    elif not dose_not_recorded and dose_mg is None and dose_mg_per_kg is None:
        errors["dose_mg_per_kg"] = DOSE_MISSING
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
        return InfusionCheck(errors)
    clean = validated.clean.iloc[0]
    return InfusionCheck(
        {}, row, pd.Timestamp(clean["administered_at"]), bool(clean["has_time"]), str(clean["route"]),
        None if pd.isna(clean["dose_mg_per_kg"]) else float(clean["dose_mg_per_kg"]),
        None if pd.isna(clean["phase"]) or clean["phase"] == "" else str(clean["phase"]),
        {"weight_kg": None if weight_kg is None else float(weight_kg),
         "dose_mg": None if dose_mg is None else float(dose_mg), "notes": notes})


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
    dose_not_recorded: bool = False,
    correct: bool = False,
    now: datetime | None = None,
) -> VisitResult:
    """Store one infusion (or, with correct=True, a new version of a stored one).

    The dose is mg/kg, or mg with the patient's weight (then mg/kg = mg / weight), and is
    required unless `dose_not_recorded`. Notes (side effects: blood pressure rise,
    dissociation, ...) and weight are kept in treatment_details, outside the CSV contract.
    """
    patient_id = str(patient_id).strip()
    checked = check_infusion(db, scope, patient_id, administered_at=administered_at, route=route,
                             dose_mg_per_kg=dose_mg_per_kg, dose_mg=dose_mg, weight_kg=weight_kg, phase=phase,
                             notes=notes, dose_not_recorded=dose_not_recorded, correct=correct, now=now)
    if not checked.ok:
        return VisitResult(False, checked.errors, message="nothing was saved")
    at, details = checked.administered_at, checked.details
    outcome: dict[str, str] = {}

    def after(con, report):
        version = _row_outcome(report, correct, "an infusion", voided=_voided_at(con, "treatments", patient_id, at))
        if version == "new":
            _restore_if_voided(con, "treatments", patient_id, at, None, report)
        if _write_details(con, patient_id, at, details, report.batch_ids[0]) and version == "unchanged":
            version = "corrected"
        outcome["version"] = version
        _audit(con, db, scope, patient_id, {"kind": "infusion", "version": version,
                                            "administered_at": pd.Timestamp(at).isoformat()})

    result = _import_one(db, scope, "treatments", checked.row, after)
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
        outcome["version"] = _row_outcome(report, correct, f"a {code}", voided=_voided_at(con, "assessments", patient_id, at, code))
        if outcome["version"] == "new":
            _restore_if_voided(con, "assessments", patient_id, at, code, report)
        _audit(con, db, scope, patient_id, {"kind": "assessment", "instrument": code, "version": outcome["version"],
                                            "administered_at": pd.Timestamp(at).isoformat()})

    result = _import_one(db, scope, "assessments", row, after)
    result.version = outcome.get("version") if result.ok else None
    return result


# --- history of a record -----------------------------------------------------------------

TREATMENT_FIELDS = ["route", "dose_mg_per_kg", "phase", "weight_kg", "dose_mg", "notes"]
VOID_FIELDS = ["voided_at", "voided_by", "void_reason"]


def _stamp(value):
    return None if value is None or (not isinstance(value, str) and pd.isna(value)) else pd.Timestamp(value)


def record_history(db, scope: Scope, patient_id: str, administered_at, instrument: str | None = None) -> pd.DataFrame:
    """Every version of one infusion (instrument None) or assessment, newest first, a voided one included.

    Columns: version (1 = first), state ("current", "voided" or "replaced"), replaced_at, then
    administered_at, the record's values and, for a voided version, voided_at, voided_by and
    void_reason. The values of each replaced version are what was stored before the replacement;
    an infusion's extras (weight, mg, notes) are versioned separately and merged here by time. A
    record whose date was corrected starts with its version at the earlier date.
    """
    data = DataAccess(db, scope)
    if not data.can_see_patient(patient_id):  # refused before any read, and audited
        data.log("view_patient", outcome="denied", page="patient", patients=[str(patient_id)[:64]],
                 detail={"what": "record history"})
        raise AccessDenied(f"patient {str(patient_id)[:64]!r} is not in your caseload, or does not exist")
    at = pd.Timestamp(administered_at)
    if instrument is None:
        current = data.treatments([patient_id])
        voided = data.voided_rows([patient_id])["treatments"]
        details = data.treatment_details([patient_id])
        details = details[details["administered_at"] == at]
        fields = ["administered_at", *TREATMENT_FIELDS]
        key = record_key(patient_id, at)
        changes = [("treatments", data.record_versions(patient_id, "treatments", key)),
                   ("treatment_details", data.record_versions(patient_id, "treatment_details", key))]
    else:
        code = scales.get(instrument).code
        current = data.assessments([patient_id], code)
        voided = data.voided_rows([patient_id])["assessments"]
        voided = voided[voided["instrument"] == code]
        details = pd.DataFrame()
        fields = ["administered_at", "rater", *[f"item_{n}" for n in scales.get(code).all_items], "total", "total_method"]
        key = record_key(patient_id, at, code)
        changes = [("assessments", data.record_versions(patient_id, "assessments", key))]
    current = current[current["administered_at"] == at]
    state = "current"
    if current.empty:
        current, state = voided[voided["administered_at"] == at], "voided"
    columns = ["version", "state", "replaced_at", *fields, *VOID_FIELDS]
    if current.empty:
        return pd.DataFrame(columns=columns)
    row = current.iloc[0]
    now_values = {c: (row[c] if c in row else None) for c in fields + VOID_FIELDS}
    if instrument is None:
        if len(details):
            now_values.update({c: details[c].iloc[0] for c in ("weight_kg", "dose_mg", "notes")})
        elif state == "voided":  # a voided infusion's extras are not read back: take them from the table's history
            now_values.update({c: None for c in ("weight_kg", "dose_mg", "notes")})
    # Walk back from the current values: each correction (one batch, possibly touching both the
    # row and its extras) restores the fields it replaced.
    corrections: dict[tuple, dict] = {}
    for table, frame in changes:
        for r in frame.itertuples():
            old = json.loads(r.old_values)
            if table == "treatment_details":
                touched = ("weight_kg", "dose_mg", "notes")
            else:  # a version from before voiding existed has no void fields: it was not voided
                touched = [c for c in fields if c in old] + VOID_FIELDS
            corrections.setdefault((pd.Timestamp(r.replaced_at), r.batch_id), {}).update({c: old.get(c) for c in touched})
    versions = [{"state": state, "replaced_at": None, **now_values}]
    values = dict(now_values)
    for (replaced_at, _), old in sorted(corrections.items(), key=lambda kv: kv[0], reverse=True):
        values = {**values, **old}
        versions.append({"state": "replaced", "replaced_at": replaced_at, **values})
    frame = pd.DataFrame(versions)
    frame["administered_at"] = frame["administered_at"].map(_stamp)
    frame["voided_at"] = frame["voided_at"].map(_stamp)
    frame.insert(0, "version", range(len(frame), 0, -1))
    return frame[columns]


__all__ = ["VisitResult", "InfusionCheck", "check_infusion", "record_infusion", "record_assessment", "void_record",
           "correct_date", "record_history", "record_key", "assessment_row"]
