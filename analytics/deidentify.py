"""The de-identified export an administrator takes from the dashboard (docs/security.md, "Exports").

Administrators run the clinic's data, not its care: the dashboard gives them the store in the
import format with
- a pseudonymous id per patient instead of the patient id: "S" and 12 hex digits of an
  HMAC-SHA256 of the id under the pseudonym key kept outside the database (analytics/keys.py),
  so the same patient has the same pseudonym in every export, and nobody without the key can
  go back (or test a guessed id);
- no birth year, no free-form patient attributes, no rater names (only "self"/"clinician");
- every date of a patient shifted back by the same number of days, 1 to 364, derived from the
  same key: intervals between a patient's infusions and scores (and the time of day) are kept,
  calendar dates and weekdays are not. This is REDCap's "shift all dates by a value between 0
  and 364 days" de-identification, with a per-patient amount that is fixed across exports;
- rejected import rows as file, line, column and a reason with the offending values taken out
  (no raw line).
Identifiable data leave only through the command line (`python -m analytics export`, the
operator's system scope) or, in the dashboard, under a break-glass grant (analytics/auth.py).
Every export's audit entry lists every patient in it.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd

from . import access, keys
from .export import format_assessments, format_patients, format_treatments, write_frames
from .permissions import may

KEY_NAME = "pseudonym"
MAX_SHIFT_DAYS = 364
KNOWN_RATERS = ("self", "clinician")


def pseudonym(patient_id: str) -> str:
    return "S" + keys.derive(KEY_NAME, "patient-id", str(patient_id))[:12]


def shift_days(patient_id: str) -> int:
    """How many days this patient's dates move back (1-364, the same in every export)."""
    return 1 + int(keys.derive(KEY_NAME, "date-shift", str(patient_id))[:8], 16) % MAX_SHIFT_DAYS


_QUOTED = re.compile(r"""'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*\"""")
_GOT = re.compile(r"\bgot\s+[^\s;,)]+")
_DATE = re.compile(r"\b\d{4}-\d{2}-\d{2}(?:[T ][\d:.]+)?\b")


def redact_reason(reason: str) -> str:
    """A rejection reason without the values it quoted: quoted text, a value "got" and dates become "…",
    the rule and its limits stay (e.g. "item_3 must be a whole number 0-3, got …")."""
    return _DATE.sub("…", _GOT.sub("got …", _QUOTED.sub("…", str(reason or ""))))


def _shift(frame: pd.DataFrame, column: str, days: pd.Series) -> pd.Series:
    stamps = pd.to_datetime(frame[column])
    return stamps - pd.to_timedelta(days.to_numpy(), unit="D")


def deidentified_frames(data: access.DataAccess) -> tuple[dict[str, pd.DataFrame], pd.Series]:
    """(the export's frames, the real ids of the patients in it)."""
    patients = data.patients()
    ids = patients["patient_id"].astype(str)
    codes = {pid: pseudonym(pid) for pid in ids}
    shifts = {pid: shift_days(pid) for pid in ids}

    p = patients.copy()
    p["enrolled_on"] = _shift(p, "enrolled_on", p["patient_id"].map(shifts))
    p["birth_year"] = pd.NA
    p["patient_id"] = p["patient_id"].map(codes)
    t = data.treatments().copy()
    t["administered_at"] = _shift(t, "administered_at", t["patient_id"].map(shifts))
    t["patient_id"] = t["patient_id"].map(codes)
    a = data.assessments().copy()
    a["administered_at"] = _shift(a, "administered_at", a["patient_id"].map(shifts))
    a["patient_id"] = a["patient_id"].map(codes)
    a["rater"] = a["rater"].where(a["rater"].isin(KNOWN_RATERS) | a["rater"].isna(), "other")
    frames = {
        "patients": format_patients(p, None),
        "treatments": format_treatments(t.sort_values(["patient_id", "administered_at"], kind="stable")),
        "assessments": format_assessments(a.sort_values(["patient_id", "administered_at", "instrument"], kind="stable")),
    }
    if may(data.scope, "view_rejected_rows"):
        frames["rejected"] = redacted_rejects(data.rejected_rows())
    return frames, ids


def redacted_rejects(rejected: pd.DataFrame) -> pd.DataFrame:
    """Quarantined rows as file, line, column and a reason without values (no raw line)."""
    return pd.DataFrame({
        "batch_id": rejected["batch_id"].astype("str"),
        "file": rejected["file_name"].astype("str"),
        "line": rejected["line"].astype("Int64").astype("str").fillna("").astype("str"),
        "column": rejected["column_name"].fillna("").astype("str"),
        "reason": [redact_reason(r) for r in rejected["reason"]],
    })


def export_csv(directory: str | os.PathLike, db=None, scope: access.Scope = access.SYSTEM,
               page: str | None = None) -> dict[str, Path]:
    """Write the de-identified patients/treatments/assessments.csv (and rejected.csv) into `directory`;
    audited with the real ids of every patient in it."""
    data = access.DataAccess(db, scope)
    frames, ids = deidentified_frames(data)
    return write_frames(directory, frames, data, ids, page=page,
                        detail={"format": "csv", "identifiable": False, "deidentified": "pseudonyms, dates shifted per patient"})
