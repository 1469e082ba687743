"""What a valid patients, treatments or assessments row is: checked column-wise.

Everything here works on whole columns of raw strings (no per-row Python;
parsing of dates, numbers and codes is done once per distinct value, except
two fast paths with the same answers: a column of plain ASCII digits is cast,
plain ISO dates are computed from their bytes) and needs no database: the
checks that do (unknown patient, treatment before enrolment) run in SQL
inside the import transaction, see `write.py`.

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
import pyarrow as pa
import pyarrow.compute as pc

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
        self._ok = np.ones(n, dtype=bool)  # kept beside `column`: pd.isna of an object column per check was ~9% of validate
        self._column: np.ndarray | None = None  # made at the first problem: most blocks have none
        self._reason: np.ndarray | None = None

    @property
    def ok(self) -> np.ndarray:
        return self._ok.copy()

    @property
    def column(self) -> np.ndarray:
        if self._column is None:
            self._column = np.full(len(self._ok), None, dtype=object)
        return self._column

    @property
    def reason(self) -> np.ndarray:
        if self._reason is None:
            self._reason = np.full(len(self._ok), None, dtype=object)
        return self._reason

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


def _arrow_strings(values: pd.Series) -> pa.ChunkedArray | None:
    """The Arrow strings behind a str column; None when it is not held in Arrow."""
    if not (isinstance(values.dtype, pd.StringDtype) and values.dtype.storage == "pyarrow"):
        return None
    chunked = values.array.__arrow_array__()
    if not isinstance(chunked, pa.ChunkedArray):
        chunked = pa.chunked_array([chunked])
    return chunked if pa.types.is_large_string(chunked.type) or pa.types.is_string(chunked.type) else None


def _bytes_of(chunk: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A string chunk's offsets (length + 1) and its whole data buffer, as numpy views."""
    _, offsets, data = chunk.buffers()
    width = 8 if pa.types.is_large_string(chunk.type) else 4
    off = np.frombuffer(offsets, dtype=np.int64 if width == 8 else np.int32, count=len(chunk) + 1,
                        offset=chunk.offset * width)
    return off, (np.frombuffer(data, dtype=np.uint8) if data is not None else np.empty(0, dtype=np.uint8))


_MAX_PLAIN_DIGITS = 15  # a whole number of up to 15 digits is exact in float64 however it is summed


def _plain_digits(values: pd.Series) -> np.ndarray | None:
    """Float64 of a column whose cells are all NA or 1-15 plain ASCII digits (NaN for NA); None for any other.

    Such a cell is the integer it spells for `pd.to_numeric` and none is refused, so the column needs no
    distinct values: its numbers are read from the string bytes (item columns are nearly always this, and
    hashing every row cost more than the rest of the check). Anything else (a sign, a point, a space, "0x10",
    non-ASCII digits, an empty string) is left to the per-distinct-value path and its reasons."""
    chunked = _arrow_strings(values)
    if chunked is None:
        return None
    out = np.empty(len(values))
    at = 0
    for chunk in chunked.chunks:
        n = len(chunk)
        if not n:
            continue
        number = out[at:at + n]
        at += n
        off, data = _bytes_of(chunk)
        lengths = np.diff(off)
        valid = None
        if chunk.null_count:
            bitmap = np.frombuffer(chunk.buffers()[0], dtype=np.uint8)
            valid = np.unpackbits(bitmap, bitorder="little")[chunk.offset:chunk.offset + n].astype(bool)
        if valid is None or np.array_equal(lengths > 0, valid):  # no NA, or the NAs hold no bytes
            if valid is None and lengths.min() == 0:
                return None  # an empty string
            width = int(lengths.max())
        else:
            given = lengths[valid]
            if given.min() == 0:
                return None
            width = int(given.max())
        if width > _MAX_PLAIN_DIGITS:
            return None
        text = data[off[0]:off[-1]]
        if ((text - np.uint8(48)) > 9).any():
            return None
        if valid is not None:
            number[:] = np.nan
        if width == 0:
            continue
        if width == 1 and len(text) == n - chunk.null_count:  # a digit a cell and none under an NA: in order
            if valid is None:
                number[:] = text
            else:
                number[valid] = text
            number -= 48
            continue
        text = np.concatenate([text, np.zeros(width, dtype=np.uint8)])  # reads past a short value land here
        starts = off[:-1] - off[0]
        parsed = text[starts].astype(np.float64) - 48
        for j in range(1, width):
            parsed = np.where(lengths > j, parsed * 10 + (text[starts + j].astype(np.float64) - 48), parsed)
        if valid is None:
            number[:] = parsed
        else:
            number[valid] = parsed[valid]
    return out


def _map_distinct(values: pd.Series, convert: Callable[[pd.Series], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """`convert` applied once per distinct value, spread back to every row; also the mask of NA rows."""
    codes, uniques = pd.factorize(values)
    converted = np.asarray(convert(pd.Series(uniques, dtype="str")))
    out = converted[np.where(codes < 0, 0, codes)] if len(converted) else np.empty(len(codes), dtype=converted.dtype)
    return out, codes < 0


def _number(values: pd.Series, column: str, problems: Problems) -> np.ndarray:
    def convert(u: pd.Series) -> np.ndarray:
        return pd.to_numeric(u, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    plain = _plain_digits(values)
    if plain is not None:
        return plain
    present = _present(values)
    if not present.any():
        return np.full(len(values), np.nan)
    numbers, missing = _map_distinct(values, convert)
    numbers = np.where(missing, np.nan, numbers).astype("float64")
    bad = present & np.isnan(numbers)
    raw = values.array  # indexed only for the few flagged rows
    problems.flag(bad, column, lambda pos: [f"{column} {_shown(raw[p])} is not a number" for p in pos])
    return numbers


def _whole(values: pd.Series, column: str, lo: int, hi: int, problems: Problems) -> pd.Series:
    numbers = _number(values, column, problems)
    finite = ~np.isnan(numbers)
    bad = finite & ((numbers != np.floor(numbers)) | (numbers < lo) | (numbers > hi))
    problems.flag(bad, column, lambda pos: [f"{column} must be a whole number {lo}-{hi}, got {numbers[p]:g}" for p in pos])
    return pd.Series(np.where(finite & ~bad, numbers, np.nan), index=values.index).astype("Int64")


_DAYS_IN_MONTH = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])
_DIGIT_AT = {10: (0, 1, 2, 3, 5, 6, 8, 9), 16: (11, 12, 14, 15), 19: (17, 18)}


def _plain_stamps(u: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Which distinct values are a plain YYYY-MM-DD, YYYY-MM-DDTHH:MM or YYYY-MM-DDTHH:MM:SS (T or space)
    naming a real day and time of 1900-2199, and their timestamps (int64 microseconds; 0 elsewhere).

    These are nearly all of a file's dates, and any ISO parser reads them the same way, so they are
    computed from their bytes; every other value (fractions, offsets, odd fields, errors) goes through
    `pd.to_datetime` as before. A date-time column has about a quarter as many distinct values as rows."""
    n = len(u)
    plain = np.zeros(n, dtype=bool)
    micros = np.zeros(n, dtype=np.int64)
    chunked = _arrow_strings(u)
    if chunked is None or n == 0:
        return plain, micros
    strings = chunked.combine_chunks()
    if strings.null_count:
        return plain, micros
    off, data = _bytes_of(strings)
    lengths = np.diff(off)
    rows = np.flatnonzero((lengths == 10) | (lengths == 16) | (lengths == 19))
    if not len(rows):
        return plain, micros
    starts = off[rows].astype(np.int64)
    data = np.concatenate([data, np.zeros(19, dtype=np.uint8)])  # reads past a short value land in the padding
    length = lengths[rows]

    def byte(at: int) -> np.ndarray:
        return data[starts + at]

    def digit(at: int) -> np.ndarray:
        return byte(at).astype(np.int64) - 48

    good = (byte(4) == 45) & (byte(7) == 45)  # '-'
    for at in _DIGIT_AT[10]:
        good &= (byte(at) - np.uint8(48)) <= 9
    timed = length >= 16
    seconds = length == 19
    sep = byte(10)
    good &= ~timed | (((sep == 84) | (sep == 32)) & (byte(13) == 58))  # 'T' or ' ', ':'
    for at in _DIGIT_AT[16]:
        good &= ~timed | ((byte(at) - np.uint8(48)) <= 9)
    good &= ~seconds | (byte(16) == 58)
    for at in _DIGIT_AT[19]:
        good &= ~seconds | ((byte(at) - np.uint8(48)) <= 9)
    year = digit(0) * 1000 + digit(1) * 100 + digit(2) * 10 + digit(3)
    month = digit(5) * 10 + digit(6)
    day = digit(8) * 10 + digit(9)
    hour = np.where(timed, digit(11) * 10 + digit(12), 0)
    minute = np.where(timed, digit(14) * 10 + digit(15), 0)
    second = np.where(seconds, digit(17) * 10 + digit(18), 0)
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    good &= (year >= 1900) & (year <= 2199) & (month >= 1) & (month <= 12)
    last_day = _DAYS_IN_MONTH[np.clip(month, 0, 12)] + ((month == 2) & leap)
    good &= (day >= 1) & (day <= last_day) & (hour <= 23) & (minute <= 59) & (second <= 59)
    # Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil).
    y = year - (month <= 2)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (month + np.where(month > 2, -3, 9)) + 2) // 5 + day - 1
    days = era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468
    plain[rows] = good
    micros[rows] = np.where(good, ((days * 24 + hour) * 60 + minute) * 60 + second, 0) * 1_000_000
    return plain, micros


def _when(values: pd.Series, column: str, problems: Problems, now: datetime, required: bool, date_only: bool = False):
    """ISO date or date-time -> (timestamp, has_time, codes of equal timestamps); future and malformed dates flagged."""
    present = _present(values)
    if required:
        problems.flag(~present, column, f"{column} is empty")
    today = pd.Timestamp(now.date())
    now_ts = pd.Timestamp(now)

    def parse(u: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        shaped = u.str.fullmatch(_WHEN).fillna(False).astype(bool)
        has_time = (u.str.len() > 10).fillna(False).astype(bool).to_numpy()
        offset = (shaped & has_time & u.str.contains(_OFFSET).fillna(False).astype(bool)).to_numpy()
        parsed = pd.to_datetime(u.where(shaped & ~offset), format="ISO8601", errors="coerce")
        stamps = pd.Series(parsed).astype("datetime64[us]").to_numpy().copy()
        if offset.any():  # an instant: the clinic's wall-clock time of it is stored
            instants = pd.to_datetime(u[offset], format="ISO8601", errors="coerce", utc=True)
            local = instants.dt.tz_convert(clinic_time.zone()).dt.tz_localize(None)
            stamps[offset] = local.astype("datetime64[us]").to_numpy()
        return stamps, has_time, shaped.to_numpy()

    def convert(u: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        plain, micros = _plain_stamps(u)
        stamps = micros.view("datetime64[us]").copy()
        has_time = (u.str.len() > 10).fillna(False).astype(bool).to_numpy().copy()
        shaped = np.ones(len(u), dtype=bool)
        if not plain.all():
            other = np.flatnonzero(~plain)
            stamps[other], has_time[other], shaped[other] = parse(u.iloc[other].reset_index(drop=True))
        limit = np.where(has_time, now_ts.to_datetime64(), today.to_datetime64())
        status = np.where(~shaped, 1, np.where(pd.isna(stamps), 2, np.where(stamps > limit.astype("datetime64[us]"), 3, 0)))
        status = np.where((status == 0) & (stamps < EARLIEST_DATE), 5, status)
        if date_only:
            status = np.where((status == 0) & has_time, 4, status)
        return stamps, has_time, status

    codes, uniques = pd.factorize(values)
    # One value more at the end for NA rows: code -1 reads it.
    stamps_u, has_time_u, status_u = convert(pd.Series(uniques, dtype="str"))
    stamps = np.append(stamps_u, np.datetime64("NaT", "us"))[codes]
    has_time = np.append(has_time_u, False)[codes]
    # Equal instants, equal codes (two spellings of one time too): a key column for `_duplicates`.
    same = codes if not pd.Series(stamps_u).duplicated().any() else np.append(pd.factorize(stamps_u)[0], -1)[codes]
    if status_u.any():
        status = np.append(status_u, 0)[codes]
        raw = values.array  # indexed only for the few flagged rows
        shape = "a date YYYY-MM-DD" if date_only else "an ISO date YYYY-MM-DD or date-time YYYY-MM-DDTHH:MM[:SS][+HH:MM]"
        problems.flag(status == 1, column, lambda pos: [f"{column} {_shown(raw[p])} is not {shape}" for p in pos])
        problems.flag(status == 2, column, lambda pos: [f"{column} {_shown(raw[p])} is not a valid calendar date or time" for p in pos])
        problems.flag(status == 5, column, lambda pos: [f"{column} {_shown(raw[p])} is before 1900" for p in pos])
        problems.flag(status == 3, column, lambda pos: [f"{column} {_shown(raw[p])} is in the future" for p in pos])
        problems.flag(status == 4, column, lambda pos: [f"{column} {_shown(raw[p])} must be a date without a time" for p in pos])
    return stamps, has_time, same


def _labels(codes: np.ndarray, labels) -> pd.api.extensions.ExtensionArray | np.ndarray:
    """`labels[codes]` (None where a code is -1) as the column pandas makes of that object array: str when a
    row holds a string, else the object array of None. Built by an Arrow take from the few labels: letting
    pandas infer it from half a million Python strings cost more than the check that made them."""
    labels = list(labels)
    codes = np.asarray(codes)
    if all(label is not None for label in labels):
        strings = bool(len(codes)) and bool((codes >= 0).any())
    else:
        used = np.flatnonzero(np.bincount(codes + 1, minlength=len(labels) + 1)[1:]) if len(codes) else []
        strings = any(labels[i] is not None for i in used)
    if not strings:
        return np.full(len(codes), None, dtype=object)
    dictionary = pa.array(labels + [None], type=pa.large_string())
    return pd.array(pc.take(dictionary, pa.array(np.where(codes < 0, len(labels), codes))), dtype="str")


def _code(values: pd.Series, column: str, allowed: dict[str, str], problems: Problems, what: str, required: bool):
    codes, uniques = pd.factorize(values)
    if required:
        problems.flag(codes < 0, column, f"{column} is empty")
    mapped_u = [allowed.get(str(u).lower()) for u in uniques]
    known = np.array([m is not None for m in mapped_u] + [True])  # the last one: NA rows (code -1)
    raw = values.array  # indexed only for the few flagged rows
    problems.flag(~known[codes], column, lambda pos: [f"unknown {what} {_shown(raw[p])}; expected one of {', '.join(sorted(set(allowed.values())))}" for p in pos])
    return _labels(codes, mapped_u)


def _id(values: pd.Series, problems: Problems) -> None:
    problems.flag(~_present(values), "patient_id", "patient_id is empty")
    chunked = _arrow_strings(values)
    if chunked is not None and all(np.diff(_bytes_of(c)[0]).max() <= MAX_ID_LENGTH for c in chunked.chunks if len(c)):
        return  # no value (nor NA slot) holds more bytes than the limit: no value has more characters
    too_long = (values.str.len() > MAX_ID_LENGTH).fillna(False).to_numpy(dtype=bool)
    problems.flag(too_long, "patient_id", f"patient_id is longer than {MAX_ID_LENGTH} characters")


def _duplicates(keys: list[np.ndarray], column: str, lines: np.ndarray, problems: Problems, shown: str) -> None:
    """Later rows repeating an earlier good row's key are rejected, naming the first.

    `keys` are the key columns' codes (equal values, equal codes; any value for rows already refused): one
    int64 per row from them, hashed once, instead of DataFrame.duplicated on the columns."""
    ok = problems.ok
    at = np.flatnonzero(ok)
    if len(at) < 2:
        return
    key = np.zeros(len(at), dtype=np.int64)
    for codes in keys:
        part = np.asarray(codes)[at].astype(np.int64)
        part -= part.min()
        if (int(key.max()) + 1) * (int(part.max()) + 1) >= 2 ** 62:  # keep the combined code within int64
            key = pd.factorize(key)[0].astype(np.int64)
        key = key * (int(part.max()) + 1) + part
    if not pd.Series(key, copy=False).duplicated().any():  # the usual answer, and cheaper than numbering the keys
        return
    codes, _ = pd.factorize(key)  # numbered in order of first appearance
    first = np.empty(len(at), dtype=bool)
    first[0] = True
    first[1:] = codes[1:] > np.maximum.accumulate(codes)[:-1]
    first_line = lines[at[first]]  # code c's first row is the c-th first one
    repeated = np.flatnonzero(~first)
    line_of = np.zeros(len(ok), dtype=lines.dtype)
    line_of[at[repeated]] = first_line[codes[repeated]]
    mask = np.zeros(len(ok), dtype=bool)
    mask[at[repeated]] = True
    problems.flag(mask, column, lambda pos: [f"duplicate key ({shown}) in this file: line {line_of[p]} has the same one" for p in pos])


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
    _id(text["patient_id"], problems)
    clean = {"patient_id": text["patient_id"]}  # the clean frame's columns, made one DataFrame at the end
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
        stamps, _, _ = _when(text["enrolled_on"], "enrolled_on", problems, now, required=False, date_only=True)
        clean["enrolled_on"] = pd.Series(stamps).dt.date
        _duplicates([pd.factorize(text["patient_id"])[0]], "patient_id", lines, problems, KEY_SHOWN[kind])
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
        stamps, has_time, same = _when(text["administered_on"], "administered_on", problems, now, required=True)
        clean["administered_at"] = stamps
        clean["has_time"] = has_time
        clean["route"] = _code(text["route"], "route", {r: r for r in vocabulary.ROUTES}, problems, "route", required=True)
        dose = _number(text["dose_mg_per_kg"], "dose_mg_per_kg", problems)
        bad = ~np.isnan(dose) & ((dose <= 0) | (dose > MAX_DOSE_MG_PER_KG))
        problems.flag(bad, "dose_mg_per_kg", lambda pos: [f"dose_mg_per_kg must be above 0 and at most {MAX_DOSE_MG_PER_KG:g}, got {dose[p]:g}" for p in pos])
        clean["dose_mg_per_kg"] = dose
        clean["phase"] = _code(text["phase"], "phase", {p: p for p in vocabulary.PHASES}, problems, "phase", required=False)
        _duplicates([pd.factorize(text["patient_id"])[0], same], "patient_id", lines, problems, KEY_SHOWN[kind])

    else:  # assessments
        codes, uniques = pd.factorize(text["instrument"])
        problems.flag(codes < 0, "instrument", "instrument is empty")
        known = list(scales.codes())
        # Each row's instrument as its place in `known` (-1: empty or unknown); the last entry is read by code -1.
        which = np.array([known.index(s.code) if (s := scales.resolve(u)) else -1 for u in uniques] + [-1])[codes]
        raw = text["instrument"].array
        problems.flag((codes >= 0) & (which < 0), "instrument",
                      lambda pos: [f"unknown instrument {_shown(raw[p])}; known: {', '.join(scales.codes())}" for p in pos])
        clean["instrument"] = _labels(which, known)
        stamps, has_time, same = _when(text["administered_on"], "administered_on", problems, now, required=True)
        clean["administered_at"] = stamps
        clean["has_time"] = has_time
        clean["rater"] = text["rater"]
        items = {c: _number(text[c], c, problems) for c in scales.item_columns()}
        given = _number(text["total"], "total", problems)
        total = np.full(n, np.nan)
        method = np.full(n, -1)
        for j, code in enumerate(known):
            rows = np.flatnonzero(which == j)
            if not len(rows):
                continue
            scored = scales.score_columns(scales.get(code), {c: v[rows] for c, v in items.items()}, given[rows])
            bad = np.flatnonzero(~scored.ok)
            if len(bad):
                reason_at = np.empty(n, dtype=object)
                reason_at[rows[bad]] = scored.problem_reason[bad]
                for column in dict.fromkeys(scored.problem_column[bad]):  # one scored problem per row: any order
                    mask = np.zeros(n, dtype=bool)
                    mask[rows[bad[scored.problem_column[bad] == column]]] = True
                    problems.flag(mask, column, lambda pos: list(reason_at[pos]))
            total[rows] = scored.total
            method[rows] = scored.method
        clean.update(items)
        clean["total"] = total
        clean["total_method"] = _labels(method, scales.METHODS)
        _duplicates([pd.factorize(text["patient_id"])[0], which, same], "patient_id", lines, problems, KEY_SHOWN[kind])

    clean["_row"] = np.arange(n, dtype="int64")
    clean["_line"] = lines
    ok = problems.ok
    rejected = np.flatnonzero(~ok)
    rejects = pd.DataFrame({
        "_row": rejected.astype("int64"),
        "_line": lines[rejected],
        "column": problems.column[rejected] if len(rejected) else np.empty(0, dtype=object),
        "reason": problems.reason[rejected] if len(rejected) else np.empty(0, dtype=object),
    })
    return Validated(kind, _kept(clean, ok), rejects, attributes, attribute_names, notes, frozenset(frame.columns))


def _kept(columns: dict, ok: np.ndarray) -> pd.DataFrame:
    """The good rows of `columns` as one frame (0..m-1), made once rather than grown a column at a time.

    Nearly always every row is good: the columns are then used as they are, each Arrow string column
    as a new array over the same (immutable) Arrow data and any numpy array that is not its own (the
    caller's _line) copied, so the frame shares nothing the caller could change."""
    if ok.all():
        taken = {}
        for name, values in columns.items():
            values = values.array if isinstance(values, pd.Series) else values
            if isinstance(values, pd.api.extensions.ExtensionArray):
                taken[name] = values.copy()  # Arrow strings: O(1)
            else:
                values = np.asarray(values)
                taken[name] = values if values.flags.owndata and values.flags.writeable else values.copy()
        return pd.DataFrame(taken, index=pd.RangeIndex(len(ok)), copy=False)
    at = np.flatnonzero(ok)
    taken = {}
    for name, values in columns.items():
        values = values.array if isinstance(values, pd.Series) else values
        taken[name] = values.take(at) if isinstance(values, pd.api.extensions.ExtensionArray) else np.asarray(values)[at]
    return pd.DataFrame(taken, index=pd.RangeIndex(len(at)), copy=False)


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


def _comorbidities(values: pd.Series, problems: Problems):
    allowed = vocabulary.COMORBIDITIES

    def normalise(cell: str) -> tuple[str, str | None]:
        tokens = [t.strip().lower() for t in cell.split(";") if t.strip()]
        unknown = [t for t in tokens if t not in allowed]
        if unknown:
            return "", f"unknown comorbidity {_shown(unknown[0])}; allowed: {', '.join(allowed)} (separate with ;)"
        return ";".join(c for c in allowed if c in tokens), None

    codes, uniques = pd.factorize(values)
    pairs = [normalise(str(u)) for u in uniques] + [("", None)]
    reasons = np.array([p[1] for p in pairs], dtype=object)[np.where(codes < 0, len(uniques), codes)]
    problems.flag(pd.notna(reasons), "comorbidities", lambda pos: [reasons[p] for p in pos])
    return _labels(np.where(codes < 0, len(uniques), codes), [p[0] for p in pairs])
