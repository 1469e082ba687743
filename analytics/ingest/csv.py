"""Reading one CSV file into raw strings, with editor line numbers.

No per-row Python: record boundaries are found with numpy (a newline ends a
record when an even number of double quotes precede it, which is exactly
RFC 4180's rule since an escaped quote is two quotes), and DuckDB parses the
fields. Rows with the wrong number of fields are set aside here with their
line number, so one ragged row never costs the whole file.
"""
from __future__ import annotations

import csv as stdlib_csv
import hashlib
import os
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from . import rules


class FileRefused(ValueError):
    """The whole file cannot be imported (not CSV, not UTF-8, missing column...)."""


@dataclass
class CsvFile:
    path: Path
    sha256: str
    kind: str
    header: list[str]
    frame: pd.DataFrame  # raw strings (NA = empty), the header's columns plus _line
    malformed: list[tuple[int, str | None, str]] = field(default_factory=list)  # (line, column, reason)
    _data: bytes = field(default=b"", repr=False)
    # Where each record is: its first line, and its byte span in _data (for the quarantine's raw text).
    _record_lines: np.ndarray | None = field(default=None, repr=False)
    _record_starts: np.ndarray | None = field(default=None, repr=False)
    _record_stops: np.ndarray | None = field(default=None, repr=False)

    def raw_lines(self, lines) -> list[str]:
        """The text of the records starting at these (1-based) lines, for the quarantine."""
        at = np.searchsorted(self._record_lines, np.asarray(lines, dtype="int64"))
        data = self._data
        return [data[a:b].decode("utf-8", errors="replace").rstrip("\r")
                for a, b in zip(self._record_starts[at].tolist(), self._record_stops[at].tolist())]


def _header_names(text: str, path: Path) -> list[str]:
    row = next(stdlib_csv.reader([text]), [])
    names = [name.strip().lower() for name in row]
    if not names or all(not n for n in names):
        raise FileRefused(f"{path.name}: line 1: the header row is empty")
    blank = [i + 1 for i, n in enumerate(names) if not n]
    if blank:
        raise FileRefused(f"{path.name}: line 1: header column {blank[0]} has no name")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise FileRefused(f"{path.name}: line 1: column {name!r} appears twice in the header")
        seen.add(name)
    return names


def read_csv(path: str | os.PathLike) -> CsvFile:
    """Parse `path` into raw strings; refuse it whole (FileRefused) when it cannot be used."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FileRefused(f"{path}: cannot read the file ({exc.strerror or exc})") from exc
    sha256 = hashlib.sha256(data).hexdigest()
    bom = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    try:
        data[bom:].decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise FileRefused(f"{path.name}: line {line}: the file is not UTF-8 text (save it as CSV UTF-8)") from None
    if not data[bom:].strip():
        raise FileRefused(f"{path.name}: the file is empty (a header row is required)")

    buf = np.frombuffer(data, dtype=np.uint8)
    newlines = np.flatnonzero(buf == 10)
    quotes = np.flatnonzero(buf == 34)
    if len(quotes):
        ends = newlines[np.searchsorted(quotes, newlines) % 2 == 0]
    else:
        ends = newlines
    starts = np.concatenate(([bom], ends + 1))
    stops = np.concatenate((ends, [len(data)]))
    if starts[-1] >= len(data):  # the file ends with a newline
        starts, stops = starts[:-1], stops[:-1]
    lines = np.searchsorted(newlines, starts) + 1
    lengths = stops - starts
    first_byte = buf[np.minimum(starts, len(data) - 1)]
    blank = (lengths == 0) | ((lengths == 1) & (first_byte == 13))

    commas = np.flatnonzero(buf == 44)
    if len(quotes) and len(commas):
        commas = commas[np.searchsorted(quotes, commas) % 2 == 0]
    fields = np.searchsorted(commas, stops) - np.searchsorted(commas, starts) + 1

    non_blank = np.flatnonzero(~blank)
    header_record = int(non_blank[0])
    header_text = data[starts[header_record]:stops[header_record]].decode("utf-8").rstrip("\r")
    header = _header_names(header_text, path)
    kind = rules.detect_kind(header)
    if kind is None:
        raise FileRefused(
            f"{path.name}: line {int(lines[header_record])}: cannot tell what this file holds from its header; "
            "expected patients (patient_id, site, clinician, ...), treatments (patient_id, administered_on, route, ...) "
            "or assessments (patient_id, instrument, administered_on, item_1 ... item_10, total)"
        )
    missing = rules.missing_columns(kind, header)
    if missing:
        raise FileRefused(
            f"{path.name}: line 1: the {kind} file has no column {', '.join(missing)} (required: "
            f"{', '.join(rules.REQUIRED[kind])}); nothing was imported"
        )

    is_data = ~blank
    is_data[: header_record + 1] = False
    ragged = is_data & (fields != len(header))
    malformed = [
        (int(lines[i]), None, f"expected {len(header)} fields like the header, found {int(fields[i])}")
        for i in np.flatnonzero(ragged)
    ]
    good = is_data & ~ragged
    good_lines = lines[good]

    if len(good_lines) == 0:
        frame = pd.DataFrame({name: pd.Series([], dtype="str") for name in header})
    elif blank.any() or ragged.any() or header_record > 0:
        # Hand DuckDB only the well-formed records: a copy without the others.
        keep = np.flatnonzero(good)
        pieces = [data[starts[header_record]:stops[header_record]], b"\n"]
        run_start = keep[0]
        previous = keep[0]
        for i in keep[1:]:
            if i != previous + 1:
                pieces += [data[starts[run_start]:stops[previous]], b"\n"]
                run_start = i
            previous = i
        pieces += [data[starts[run_start]:stops[previous]], b"\n"]
        with tempfile.NamedTemporaryFile("wb", suffix=".csv", delete=False) as tmp:
            tmp.write(b"".join(pieces))
        try:
            frame = _duckdb_read(tmp.name, header)
        finally:
            os.unlink(tmp.name)
    else:
        frame = _duckdb_read(str(path), header)
    if len(frame) != len(good_lines):
        raise FileRefused(f"{path.name}: the CSV could not be parsed consistently (found {len(frame)} rows, expected {len(good_lines)})")
    frame["_line"] = good_lines.astype("int64")
    rules.unescape_text(kind, frame)
    return CsvFile(path, sha256, kind, header, frame, malformed, data, lines, starts, stops)


_parser: duckdb.DuckDBPyConnection | None = None  # one in-memory parser per process (opening one is slow)
_parser_lock = threading.Lock()
_ARROW_STRINGS = {
    pa.string(): pd.StringDtype("pyarrow", na_value=np.nan),
    pa.large_string(): pd.StringDtype("pyarrow", na_value=np.nan),
    pa.string_view(): pd.StringDtype("pyarrow", na_value=np.nan),
}


def _duckdb_read(path: str, header: list[str]) -> pd.DataFrame:
    # Columns are read by position (c0, c1, ...) and named afterwards: header text never enters SQL.
    columns = {f"c{i}": "VARCHAR" for i in range(len(header))}
    select = ", ".join(f"nullif(trim(c{i}), '') AS c{i}" for i in range(len(header)))
    global _parser
    with _parser_lock:
        if _parser is None:
            _parser = duckdb.connect()  # in memory, so parsing holds no lock on the store
            _parser.execute("SET enable_progress_bar = false")
        try:
            table = _parser.sql(
                f"""SELECT {select} FROM read_csv($path, columns = $columns, header = true, delim = ',', quote = '"',
                    escape = '"', comment = '', skip = 0, auto_detect = false, strict_mode = true)""",
                params={"path": path, "columns": columns},
            ).to_arrow_table()
        except duckdb.Error as exc:
            raise FileRefused(f"{Path(path).name}: not a readable CSV file: {str(exc).splitlines()[0]}") from None
    # Arrow-backed strings: no copy into Python objects, and fast vectorised string methods.
    frame = table.to_pandas(types_mapper=_ARROW_STRINGS.get)
    frame.columns = header
    return frame
