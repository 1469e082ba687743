"""What a valid patients, treatments or assessments row is: checked column-wise.

Everything here works on whole columns of raw strings (no per-row Python;
parsing of dates, numbers and codes is done once per distinct value) and
needs no database: the checks that do (unknown patient, treatment before
enrolment) run in SQL inside the import transaction, see `write.py`.

Each row gets at most one problem, the first found in column order, so the
message a clinic sees points at one cell it can fix.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable

import numpy as np
import pandas as pd

from .. import clinic_time, scales, vocabulary

KINDS = ("patients", "treatments", "assessments")  # also the order of import

PATIENT_COLUMNS = (
    "patient_id", "site", "clinician", "birth_year", "sex", "diagnosis",
    "comorbidities", "prior_failed_trials", "enrolled_on",
)
TREATMENT_COLUMNS = ("patient_id", "administered_on", "route", "dose_mg_per_kg", "phase")
ASSESSMENT_COLUMNS = ("patient_id", "instrument", "administered_on", "rater", *scales.item_columns(), "total")
COLUMNS = {"patients": PATIENT_COLUMNS, "treatments": TREATMENT_COLUMNS, "assessments": ASSESSMENT_COLUMNS}
REQUIRED = {
    "patients": ("patient_id", "site", "clinician", "enrolled_on"),
    "treatments": ("patient_id", "administered_on", "route"),
    "assessments": ("patient_id", "instrument", "administered_on"),
}
# Free-text cells: neutralised against spreadsheet formula injection on export.
TEXT_COLUMNS = {
    "patients": ("patient_id", "site", "clinician", "diagnosis"),
    "treatments": ("patient_id",),
    "assessments": ("patient_id", "rater"),
}
# A cell starting with one of these runs as a formula in a spreadsheet (OWASP, CSV injection: = + - @,
# tab, carriage return); exports prefix a quote to it, and to a cell starting with a quote so the
# importer can undo exactly that prefix.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")
# The key of each kind as the duplicate-key message names it.
KEY_SHOWN = {"patients": "patient_id", "treatments": "patient_id, administered_on",
             "assessments": "patient_id, instrument, administered_on"}

SEX_CODES = {
    "f": "F", "female": "F", "m": "M", "male": "M",
    "x": "X", "other": "X", "u": "U", "unknown": "U",
}
MAX_ID_LENGTH = 64
MAX_DOSE_MG_PER_KG = 5.0
EARLIEST_DATE = np.datetime64("1900-01-01", "us")  # earlier dates are typing errors (0024 for 2024)
# A date, or a date-time with an optional ISO 8601 offset (Z, +01, +0100, +01:00).
_WHEN = re.compile(r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?(?:[Zz]|[+-]\d{2}(?::?\d{2})?)?)?")
_OFFSET = re.compile(r"(?:[Zz]|[+-]\d{2}(?::?\d{2})?)$")
# Control characters are refused in every value (a NUL breaks other tools; the others are invisible):
# C0 and C1 controls and DEL, and a carriage return that does not end a line. Tab and line breaks are text.
CONTROL_CHARACTERS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]|\r(?!\n)")
_CONTROL_NAMES = {0x00: "NUL", 0x07: "BEL", 0x08: "backspace", 0x0B: "vertical tab", 0x0C: "form feed",
                  0x0D: "carriage return without a line feed", 0x1B: "ESC", 0x7F: "DEL"}
_ITEM_COLUMN = re.compile(r"item_(\d+)")


def detect_kind(header: list[str]) -> str | None:
    """Which kind of file a header describes (any file name)."""
    names = set(header)
    if "instrument" in names or "total" in names or any(_ITEM_COLUMN.fullmatch(n) for n in names):
        return "assessments"
    if names & {"route", "dose_mg_per_kg", "administered_on"}:
        return "treatments"
    if names & set(PATIENT_COLUMNS):
        return "patients"
    return None


def missing_columns(kind: str, header) -> list[str]:
    return [c for c in REQUIRED[kind] if c not in set(header)]


def attribute_columns(kind: str, header) -> list[str]:
    """Patients only: any column beyond the format is a patient attribute."""
    if kind != "patients":
        return []
    return [c for c in header if c not in PATIENT_COLUMNS and not c.startswith("_")]


def ignored_columns(kind: str, header) -> list[str]:
    if kind == "patients":
        return []
    return [c for c in header if c not in COLUMNS[kind] and not c.startswith("_")]


def escape_formula(values: pd.Series) -> pd.Series:
    """Prefix a quote to cells a spreadsheet would run as a formula (export side)."""
    text = values.astype("str")
    risky = text.str.startswith(FORMULA_START).fillna(False).astype(bool)
    return text.where(~risky, "'" + text)


def unescape_text(kind: str, frame: pd.DataFrame) -> None:
    """Undo `escape_formula` on a CSV's free-text cells, in place, so exports read back exactly."""
    for column in (*TEXT_COLUMNS[kind], *attribute_columns(kind, frame.columns)):
        if column not in frame.columns:
            continue
        text = frame[column]
        if not text.str.startswith("'").fillna(False).any():
            continue
        escaped = text.str.match(r"'[=+\-@'\t\r]").fillna(False).astype(bool)
        if escaped.any():
            frame[column] = text.where(~escaped, text.str.slice(1))


def control_character_reason(value: str) -> str:
    """Why a value holding a control character is refused (the same words for CSV and other sources)."""
    found = CONTROL_CHARACTERS.search(value)
    code = ord(found.group()[0]) if found else 0
    name = _CONTROL_NAMES.get(code)
    return f"control character U+{code:04X}{f' ({name})' if name else ''} is not allowed in a value"


# --- problems -------------------------------------------------------------------

class Problems:
    """The first problem of each row: (column, reason), in column order."""

    def __init__(self, n: int):
        self.column = np.full(n, None, dtype=object)
        self.reason = np.full(n, None, dtype=object)
        self._ok = np.ones(n, dtype=bool)  # kept beside `column`: pd.isna of an object column per check was ~9% of validate

    @property
    def ok(self) -> np.ndarray:
        return self._ok.copy()

    def flag(self, mask, column: str, reason: str | Callable[[np.ndarray], list[str]]) -> None:
        mask = np.asarray(mask, dtype=bool) & self._ok
        if not mask.any():
            return
        positions = np.flatnonzero(mask)
        self.column[positions] = column
        self._ok[positions] = False
        if isinstance(reason, str):
            self.reason[positions] = reason
        else:
            self.reason[positions] = list(reason(positions))


def _shown(value) -> str:
    text = str(value)
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _text(frame: pd.DataFrame, column: str, trimmed: bool) -> pd.Series:
    """Raw cells as strings with NA for empty; absent column = all empty."""
    if column not in frame.columns:
        return pd.Series(pd.NA, index=frame.index, dtype="str")
    values = frame[column]
    if values.dtype != "str":
        values = values.astype(object).where(values.notna(), None).astype("str")
    if trimmed:  # the CSV reader already trimmed cells and made empty ones NA
        return values
    values = values.str.strip()
    return values.where(values != "", None)


def _present(values: pd.Series) -> np.ndarray:
    return values.notna().to_numpy()


def _map_distinct(values: pd.Series, convert: Callable[[pd.Series], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """`convert` applied once per distinct value, spread back to every row; also the mask of NA rows."""
    codes, uniques = pd.factorize(values)
    converted = np.asarray(convert(pd.Series(uniques, dtype="str")))
    out = converted[np.where(codes < 0, 0, codes)] if len(converted) else np.empty(len(codes), dtype=converted.dtype)
    return out, codes < 0


def _number(values: pd.Series, column: str, problems: Problems) -> np.ndarray:
    def convert(u: pd.Series) -> np.ndarray:
        return pd.to_numeric(u, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    if not _present(values).any():
        return np.full(len(values), np.nan)
    numbers, missing = _map_distinct(values, convert)
    numbers = np.where(missing, np.nan, numbers).astype("float64")
    bad = _present(values) & np.isnan(numbers)
    raw = values.array  # indexed only for the few flagged rows
    problems.flag(bad, column, lambda pos: [f"{column} {_shown(raw[p])} is not a number" for p in pos])
    return numbers


def _whole(values: pd.Series, column: str, lo: int, hi: int, problems: Problems) -> pd.Series:
    numbers = _number(values, column, problems)
    finite = ~np.isnan(numbers)
    bad = finite & ((numbers != np.floor(numbers)) | (numbers < lo) | (numbers > hi))
    problems.flag(bad, column, lambda pos: [f"{column} must be a whole number {lo}-{hi}, got {numbers[p]:g}" for p in pos])
    return pd.Series(np.where(finite & ~bad, numbers, np.nan), index=values.index).astype("Int64")


def _when(values: pd.Series, column: str, problems: Problems, now: datetime, required: bool, date_only: bool = False):
    """ISO date or date-time -> (timestamp, has_time); future and malformed dates flagged."""
    present = _present(values)
    if required:
        problems.flag(~present, column, f"{column} is empty")
    today = pd.Timestamp(now.date())
    now_ts = pd.Timestamp(now)

    def convert(u: pd.Series) -> pd.DataFrame:
        shaped = u.str.fullmatch(_WHEN).fillna(False).astype(bool)
        has_time = (u.str.len() > 10).fillna(False).astype(bool).to_numpy()
        offset = (shaped & has_time & u.str.contains(_OFFSET).fillna(False).astype(bool)).to_numpy()
        parsed = pd.to_datetime(u.where(shaped & ~offset), format="ISO8601", errors="coerce")
        stamps = pd.Series(parsed).astype("datetime64[us]").to_numpy().copy()
        if offset.any():  # an instant: the clinic's wall-clock time of it is stored
            instants = pd.to_datetime(u[offset], format="ISO8601", errors="coerce", utc=True)
            local = instants.dt.tz_convert(clinic_time.zone()).dt.tz_localize(None)
            stamps[offset] = local.astype("datetime64[us]").to_numpy()
        limit = np.where(has_time, now_ts.to_datetime64(), today.to_datetime64())
        status = np.where(~shaped, 1, np.where(pd.isna(stamps), 2, np.where(stamps > limit.astype("datetime64[us]"), 3, 0)))
        status = np.where((status == 0) & (stamps < EARLIEST_DATE), 5, status)
        if date_only:
            status = np.where((status == 0) & has_time, 4, status)
        return stamps, has_time, status

    codes, uniques = pd.factorize(values)
    if len(uniques):
        stamps_u, has_time_u, status_u = convert(pd.Series(uniques, dtype="str"))
        take = np.where(codes < 0, 0, codes)
        stamps = np.where(codes < 0, np.datetime64("NaT"), stamps_u[take]).astype("datetime64[us]")
        has_time = np.where(codes < 0, False, has_time_u[take])
        status = np.where(codes < 0, 0, status_u[take])
    else:
        stamps = np.full(len(values), np.datetime64("NaT"), dtype="datetime64[us]")
        has_time = np.zeros(len(values), dtype=bool)
        status = np.zeros(len(values), dtype=int)
    raw = values.array  # indexed only for the few flagged rows
    shape = "a date YYYY-MM-DD" if date_only else "an ISO date YYYY-MM-DD or date-time YYYY-MM-DDTHH:MM[:SS][+HH:MM]"
    problems.flag(status == 1, column, lambda pos: [f"{column} {_shown(raw[p])} is not {shape}" for p in pos])
    problems.flag(status == 2, column, lambda pos: [f"{column} {_shown(raw[p])} is not a valid calendar date or time" for p in pos])
    problems.flag(status == 5, column, lambda pos: [f"{column} {_shown(raw[p])} is before 1900" for p in pos])
    problems.flag(status == 3, column, lambda pos: [f"{column} {_shown(raw[p])} is in the future" for p in pos])
    problems.flag(status == 4, column, lambda pos: [f"{column} {_shown(raw[p])} must be a date without a time" for p in pos])
    return stamps, has_time


def _code(values: pd.Series, column: str, allowed: dict[str, str], problems: Problems, what: str, required: bool):
    present = _present(values)
    if required:
        problems.flag(~present, column, f"{column} is empty")
    codes, uniques = pd.factorize(values)
    mapped_u = np.array([allowed.get(str(u).lower()) for u in uniques] + [None], dtype=object)
    mapped = mapped_u[np.where(codes < 0, len(uniques), codes)]
    bad = present & pd.isna(mapped)
    raw = values.array  # indexed only for the few flagged rows
    problems.flag(bad, column, lambda pos: [f"unknown {what} {_shown(raw[p])}; expected one of {', '.join(sorted(set(allowed.values())))}" for p in pos])
    return mapped


def _id(values: pd.Series, problems: Problems) -> None:
    problems.flag(~_present(values), "patient_id", "patient_id is empty")
    too_long = (values.str.len() > MAX_ID_LENGTH).fillna(False).to_numpy(dtype=bool)
    problems.flag(too_long, "patient_id", f"patient_id is longer than {MAX_ID_LENGTH} characters")


def _duplicates(frame: pd.DataFrame, keys: list[str], lines: np.ndarray, problems: Problems, shown: str) -> None:
    """Later rows repeating an earlier good row's key are rejected, naming the first."""
    ok = problems.ok
    candidates = frame.loc[ok, keys]
    repeated = candidates.duplicated(keep="first")
    if not repeated.any():
        return
    firsts = candidates[~candidates.duplicated(keep="first")].copy()
    firsts["_first_line"] = lines[ok][~repeated.to_numpy()]
    dup_rows = candidates[repeated].reset_index().merge(firsts, on=keys, how="left")
    mask = np.zeros(len(frame), dtype=bool)
    positions = frame.index.get_indexer(dup_rows["index"])
    mask[positions] = True
    first_line = dict(zip(positions, dup_rows["_first_line"]))
    problems.flag(mask, keys[0], lambda pos: [f"duplicate key ({shown}) in this file: line {first_line[p]} has the same one" for p in pos])


# --- the three kinds ------------------------------------------------------------

@dataclass
class Validated:
    kind: str
    clean: pd.DataFrame  # typed rows ready for the store, with _row and _line
    rejects: pd.DataFrame  # _row, _line, column, reason
    attributes: pd.DataFrame | None = None  # patients: patient_id, name, value (non-empty only)
    attribute_names: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    given: frozenset[str] = frozenset()  # columns the source had: absent optional ones keep stored values


def validate(kind: str, frame: pd.DataFrame, *, now: datetime | None = None, trimmed: bool = False) -> Validated:
    """Check raw string rows of one kind; `frame` may carry _line (else ordinals 1..n)."""
    now = now or clinic_time.now()
    frame = frame.reset_index(drop=True)
    n = len(frame)
    lines = frame["_line"].to_numpy(dtype="int64") if "_line" in frame.columns else np.arange(1, n + 1, dtype="int64")
    problems = Problems(n)
    if not trimmed:  # the CSV reader refuses control characters itself, before parsing (csv.py)
        _control_characters(frame, kind, problems)
    text = {c: _text(frame, c, trimmed) for c in COLUMNS[kind]}
    clean = pd.DataFrame(index=frame.index)
    _id(text["patient_id"], problems)
    clean["patient_id"] = text["patient_id"]
    notes = [f"column {_shown(c)} is not part of the {kind} format and was ignored" for c in ignored_columns(kind, frame.columns)]
    attributes = None
    attribute_names: list[str] = []

    if kind == "patients":
        for c in ("site", "clinician"):
            clean[c] = text[c]
        this_year = now.year
        clean["birth_year"] = _whole(text["birth_year"], "birth_year", 1900, this_year, problems)
        clean["sex"] = _code(text["sex"], "sex", SEX_CODES, problems, "sex", required=False)
        clean["diagnosis"] = text["diagnosis"]
        clean["comorbidities"] = _comorbidities(text["comorbidities"], problems)
        clean["prior_failed_trials"] = _whole(text["prior_failed_trials"], "prior_failed_trials", 0, 50, problems)
        stamps, _ = _when(text["enrolled_on"], "enrolled_on", problems, now, required=False, date_only=True)
        clean["enrolled_on"] = pd.Series(stamps).dt.date
        _duplicates(clean, ["patient_id"], lines, problems, KEY_SHOWN[kind])
        attribute_names = attribute_columns(kind, frame.columns)
        long = []
        ok = problems.ok
        for name in attribute_names:
            values = _text(frame, name, trimmed)
            keep = ok & _present(values)
            long.append(pd.DataFrame({"patient_id": clean["patient_id"][keep], "name": name, "value": values[keep]}))
        attributes = (pd.concat(long, ignore_index=True) if long
                      else pd.DataFrame({"patient_id": pd.Series([], dtype="str"), "name": pd.Series([], dtype="str"), "value": pd.Series([], dtype="str")}))
        attributes = attributes.astype({"patient_id": "str", "name": "str", "value": "str"})

    elif kind == "treatments":
        stamps, has_time = _when(text["administered_on"], "administered_on", problems, now, required=True)
        clean["administered_at"] = stamps
        clean["has_time"] = has_time
        clean["route"] = _code(text["route"], "route", {r: r for r in vocabulary.ROUTES}, problems, "route", required=True)
        dose = _number(text["dose_mg_per_kg"], "dose_mg_per_kg", problems)
        bad = ~np.isnan(dose) & ((dose <= 0) | (dose > MAX_DOSE_MG_PER_KG))
        problems.flag(bad, "dose_mg_per_kg", lambda pos: [f"dose_mg_per_kg must be above 0 and at most {MAX_DOSE_MG_PER_KG:g}, got {dose[p]:g}" for p in pos])
        clean["dose_mg_per_kg"] = dose
        clean["phase"] = _code(text["phase"], "phase", {p: p for p in vocabulary.PHASES}, problems, "phase", required=False)
        _duplicates(clean, ["patient_id", "administered_at"], lines, problems, KEY_SHOWN[kind])

    else:  # assessments
        problems.flag(~_present(text["instrument"]), "instrument", "instrument is empty")
        codes, uniques = pd.factorize(text["instrument"])
        resolved_u = np.array([(s.code if (s := scales.resolve(u)) else None) for u in uniques] + [None], dtype=object)
        instrument = resolved_u[np.where(codes < 0, len(uniques), codes)]
        raw = text["instrument"].array
        problems.flag(_present(text["instrument"]) & pd.isna(instrument), "instrument",
                      lambda pos: [f"unknown instrument {_shown(raw[p])}; known: {', '.join(scales.codes())}" for p in pos])
        clean["instrument"] = instrument
        stamps, has_time = _when(text["administered_on"], "administered_on", problems, now, required=True)
        clean["administered_at"] = stamps
        clean["has_time"] = has_time
        clean["rater"] = text["rater"]
        item_cols = scales.item_columns()
        items = pd.DataFrame({c: _number(text[c], c, problems) for c in item_cols}, index=frame.index)
        given = _number(text["total"], "total", problems)
        total = np.full(n, np.nan)
        method = np.full(n, None, dtype=object)
        for code in scales.codes():
            rows = np.flatnonzero(instrument == code)
            if not len(rows):
                continue
            scored = scales.score_frame(scales.get(code), items.iloc[rows], pd.Series(given[rows]))
            bad_rows = rows[scored["problem_column"].notna().to_numpy()]
            if len(bad_rows):
                bad_mask = np.zeros(n, dtype=bool)
                bad_mask[bad_rows] = True
                columns_u = scored["problem_column"].to_numpy()
                reasons_u = scored["problem_reason"].to_numpy()
                lookup = {r: (c, why) for r, c, why in zip(rows, columns_u, reasons_u) if c is not None}
                for column in set(c for c, _ in lookup.values()):
                    col_mask = np.zeros(n, dtype=bool)
                    col_mask[[r for r, (c, _) in lookup.items() if c == column]] = True
                    problems.flag(col_mask, column, lambda pos: [lookup[p][1] for p in pos])
            total[rows] = scored["total"].to_numpy()
            method[rows] = scored["method"].to_numpy()
        for c in item_cols:
            clean[c] = items[c]
        clean["total"] = total
        clean["total_method"] = method
        _duplicates(clean, ["patient_id", "instrument", "administered_at"], lines, problems, KEY_SHOWN[kind])

    clean["_row"] = np.arange(n, dtype="int64")
    clean["_line"] = lines
    ok = problems.ok
    rejects = pd.DataFrame({
        "_row": np.flatnonzero(~ok).astype("int64"),
        "_line": lines[~ok],
        "column": problems.column[~ok],
        "reason": problems.reason[~ok],
    })
    return Validated(kind, clean[ok].reset_index(drop=True), rejects, attributes, attribute_names, notes, frozenset(frame.columns))


def _control_characters(frame: pd.DataFrame, kind: str, problems: Problems) -> None:
    for column in (*COLUMNS[kind], *attribute_columns(kind, frame.columns)):
        if column not in frame.columns:
            continue
        values = frame[column]
        if values.dtype != "str":
            values = values.astype(object).where(values.notna(), None).astype("str")
        bad = values.str.contains(CONTROL_CHARACTERS).fillna(False).to_numpy(dtype=bool)
        if bad.any():
            raw = values.array
            problems.flag(bad, column, lambda pos: [control_character_reason(raw[p]) for p in pos])


def _comorbidities(values: pd.Series, problems: Problems) -> np.ndarray:
    allowed = vocabulary.COMORBIDITIES

    def normalise(cell: str) -> tuple[str, str | None]:
        tokens = [t.strip().lower() for t in cell.split(";") if t.strip()]
        unknown = [t for t in tokens if t not in allowed]
        if unknown:
            return "", f"unknown comorbidity {_shown(unknown[0])}; allowed: {', '.join(allowed)} (separate with ;)"
        return ";".join(c for c in allowed if c in tokens), None

    codes, uniques = pd.factorize(values)
    pairs = [normalise(str(u)) for u in uniques] + [("", None)]
    canonical = np.array([p[0] for p in pairs], dtype=object)[np.where(codes < 0, len(uniques), codes)]
    reasons = np.array([p[1] for p in pairs], dtype=object)[np.where(codes < 0, len(uniques), codes)]
    problems.flag(pd.notna(reasons), "comorbidities", lambda pos: [reasons[p] for p in pos])
    return canonical
