"""Reading one CSV file into raw strings, with editor line numbers, block by block.

No per-row Python. A first pass (`scan_csv`) reads the file in chunks of
bytes and finds where each record is with numpy: a newline ends a record when
an even number of double quotes precede it, which is exactly RFC 4180's rule
since an escaped quote is two quotes. It also checks the encoding, the header
and the number of fields of every record, so a file that cannot be used is
refused before anything is written, and rows with the wrong number of fields
are set aside with their line number (one ragged row never costs the whole
file). Then DuckDB parses the fields (`CsvIndex.blocks`), streaming: memory
holds one block of rows at a time, whatever the size of the file.
"""
from __future__ import annotations

import codecs
import csv as stdlib_csv
import hashlib
import os
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from . import rules

CHUNK_BYTES = 16 << 20  # the scan's reading unit: bounds its memory, large enough for numpy to be fast
BLOCK_ROWS = 500_000  # rows parsed, checked and written at a time: bounds the import's memory
_BOM = b"\xef\xbb\xbf"
PARSER_MEMORY_MB = 256


class FileRefused(ValueError):
    """The whole file cannot be imported (not CSV, not UTF-8, missing column...)."""


@dataclass
class CsvIndex:
    """Where the rows of one CSV file are, without their values (`scan_csv`)."""
    path: Path
    sha256: str
    kind: str
    header: list[str]
    malformed: list[tuple[int, str | None, str]]  # (line, column, reason) of rows with the wrong field count
    good_lines: np.ndarray  # first editor line of each well-formed data record, in file order
    _good_starts: np.ndarray = field(repr=False)
    _good_stops: np.ndarray = field(repr=False)
    _malformed_spans: dict[int, tuple[int, int]] = field(default_factory=dict, repr=False)
    _runs: list[tuple[int, int]] | None = field(default=None, repr=False)  # byte spans to copy when not clean

    @property
    def rows_total(self) -> int:
        return len(self.good_lines) + len(self.malformed)

    def raw_lines(self, lines) -> list[str]:
        """The text of the records starting at these (1-based) lines, for the quarantine."""
        lines = np.asarray(lines, dtype="int64")
        at = np.searchsorted(self.good_lines, lines)
        out = []
        with open(self.path, "rb") as handle:
            for line, i in zip(lines.tolist(), at.tolist()):
                if i < len(self.good_lines) and self.good_lines[i] == line:
                    start, stop = int(self._good_starts[i]), int(self._good_stops[i])
                else:
                    start, stop = self._malformed_spans[line]
                handle.seek(start)
                out.append(handle.read(stop - start).decode("utf-8", errors="replace").rstrip("\r"))
        return out

    def blocks(self, block_rows: int = BLOCK_ROWS) -> Iterator[pd.DataFrame]:
        """The well-formed rows as raw strings (NA = empty; the header's columns plus _line), in blocks.

        Raises FileRefused when DuckDB cannot parse what the scan found well-formed.
        """
        if len(self.good_lines) == 0:
            yield pd.DataFrame({**{name: pd.Series([], dtype="str") for name in self.header},
                                "_line": pd.Series([], dtype="int64")})
            return
        copy = None
        source = str(self.path)
        if self._runs is not None:  # blank lines, ragged rows or text before the header: DuckDB gets only the good records
            copy = self._write_good_records()
            source = copy
        try:
            done = 0
            for frame in _duckdb_blocks(source, self.header, block_rows, self.path.name):
                n = len(frame)
                if done + n > len(self.good_lines):
                    raise FileRefused(f"{self.path.name}: the CSV could not be parsed consistently "
                                      f"(more rows than the {len(self.good_lines)} records found)")
                frame["_line"] = self.good_lines[done:done + n]
                done += n
                rules.unescape_text(self.kind, frame)
                yield frame
            if done != len(self.good_lines):
                raise FileRefused(f"{self.path.name}: the CSV could not be parsed consistently "
                                  f"(found {done} rows, expected {len(self.good_lines)})")
        finally:
            if copy is not None:
                os.unlink(copy)

    def _write_good_records(self) -> str:
        with open(self.path, "rb") as src, tempfile.NamedTemporaryFile("wb", suffix=".csv", delete=False) as tmp:
            for start, stop in self._runs:
                src.seek(start)
                remaining = stop - start
                while remaining > 0:
                    piece = src.read(min(CHUNK_BYTES, remaining))
                    if not piece:
                        break
                    tmp.write(piece)
                    remaining -= len(piece)
                tmp.write(b"\n")
        return tmp.name


@dataclass
class CsvFile:
    """A whole CSV file in memory (previews; the import reads `CsvIndex.blocks` instead)."""
    path: Path
    sha256: str
    kind: str
    header: list[str]
    frame: pd.DataFrame  # raw strings (NA = empty), the header's columns plus _line
    malformed: list[tuple[int, str | None, str]] = field(default_factory=list)  # (line, column, reason)
    index: CsvIndex | None = field(default=None, repr=False)

    def raw_lines(self, lines) -> list[str]:
        return self.index.raw_lines(lines)


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


@dataclass
class _Records:
    starts: np.ndarray
    stops: np.ndarray
    lines: np.ndarray
    fields: np.ndarray
    blank: np.ndarray


def _records(path: Path) -> tuple[str, int, _Records]:
    """One pass over the bytes in chunks: sha256, UTF-8 check, and every record's span, line and field count."""
    digest = hashlib.sha256()
    decoder = codecs.getincrementaldecoder("utf-8")()
    ends, end_ordinals, end_commas, end_cr = [], [], [], []
    quotes_before = newlines_before = commas_before = 0
    offset = 0
    last_byte = -1
    bom = 0
    has_text = False
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise FileRefused(f"{path}: cannot read the file ({exc.strerror or exc})") from exc
    with handle:
        while True:
            try:
                chunk = handle.read(CHUNK_BYTES)
            except OSError as exc:
                raise FileRefused(f"{path}: cannot read the file ({exc.strerror or exc})") from exc
            if not chunk:
                break
            if offset == 0 and chunk.startswith(_BOM):
                bom = 3
            digest.update(chunk)
            buffered = len(decoder.getstate()[0])
            buf = np.frombuffer(chunk, dtype=np.uint8)
            newlines = np.flatnonzero(buf == 10)
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                at = exc.start - buffered  # position in this chunk (negative: in the previous one)
                line = newlines_before + int(np.searchsorted(newlines, max(at, 0))) + 1
                raise FileRefused(f"{path.name}: line {line}: the file is not UTF-8 text (save it as CSV UTF-8)") from None
            if not has_text:
                has_text = bool(chunk[bom if offset == 0 else 0:].strip())
            quotes = np.flatnonzero(buf == 34)
            commas = np.flatnonzero(buf == 44)
            if len(quotes):
                record_end = (quotes_before + np.searchsorted(quotes, newlines)) % 2 == 0
                commas = commas[(quotes_before + np.searchsorted(quotes, commas)) % 2 == 0]
            else:
                record_end = np.full(len(newlines), quotes_before % 2 == 0)
                if quotes_before % 2:
                    commas = commas[:0]
            which = np.flatnonzero(record_end)
            local_ends = newlines[which]
            ends.append(local_ends + offset)
            end_ordinals.append(which + newlines_before)
            end_commas.append(np.searchsorted(commas, local_ends) + commas_before)
            before = buf[np.maximum(local_ends - 1, 0)]
            end_cr.append(np.where(local_ends > 0, before == 13, last_byte == 13))
            quotes_before += len(quotes)
            newlines_before += len(newlines)
            commas_before += len(commas)
            offset += len(chunk)
            last_byte = int(buf[-1])
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise FileRefused(f"{path.name}: line {newlines_before + 1}: the file is not UTF-8 text (save it as CSV UTF-8)") from None
    if not has_text:
        raise FileRefused(f"{path.name}: the file is empty (a header row is required)")
    size = offset
    ends_ = np.concatenate(ends) if ends else np.empty(0, dtype="int64")
    ordinals = np.concatenate(end_ordinals) if end_ordinals else np.empty(0, dtype="int64")
    commas_at = np.concatenate(end_commas) if end_commas else np.empty(0, dtype="int64")
    cr = np.concatenate(end_cr) if end_cr else np.empty(0, dtype=bool)
    del ends, end_ordinals, end_commas, end_cr
    starts = np.concatenate(([bom], ends_ + 1)).astype("int64")
    stops = np.concatenate((ends_, [size])).astype("int64")
    lines = np.concatenate(([1], ordinals + 2)).astype("int64")
    commas_start = np.concatenate(([0], commas_at))
    commas_stop = np.concatenate((commas_at, [commas_before]))
    first_is_cr = np.concatenate((cr, [last_byte == 13]))
    if starts[-1] >= size:  # the file ends with a newline
        starts, stops, lines = starts[:-1], stops[:-1], lines[:-1]
        commas_start, commas_stop, first_is_cr = commas_start[:-1], commas_stop[:-1], first_is_cr[:-1]
    lengths = stops - starts
    blank = (lengths == 0) | ((lengths == 1) & first_is_cr)
    fields = commas_stop - commas_start + 1
    return digest.hexdigest(), bom, _Records(starts, stops, lines, fields, blank)


def scan_csv(path: str | os.PathLike) -> CsvIndex:
    """Check a CSV file's encoding, header and record shapes; refuse it whole (FileRefused) when it cannot be used."""
    path = Path(path)
    sha256, bom, rec = _records(path)
    non_blank = np.flatnonzero(~rec.blank)
    header_record = int(non_blank[0])
    with open(path, "rb") as handle:
        handle.seek(int(rec.starts[header_record]))
        header_text = handle.read(int(rec.stops[header_record] - rec.starts[header_record])).decode("utf-8").rstrip("\r")
    header = _header_names(header_text, path)
    kind = rules.detect_kind(header)
    if kind is None:
        raise FileRefused(
            f"{path.name}: line {int(rec.lines[header_record])}: cannot tell what this file holds from its header; "
            "expected patients (patient_id, site, clinician, ...), treatments (patient_id, administered_on, route, ...) "
            "or assessments (patient_id, instrument, administered_on, item_1 ... item_10, total)"
        )
    missing = rules.missing_columns(kind, header)
    if missing:
        raise FileRefused(
            f"{path.name}: line 1: the {kind} file has no column {', '.join(missing)} (required: "
            f"{', '.join(rules.REQUIRED[kind])}); nothing was imported"
        )
    is_data = ~rec.blank
    is_data[: header_record + 1] = False
    ragged = is_data & (rec.fields != len(header))
    ragged_at = np.flatnonzero(ragged)
    malformed = [(int(rec.lines[i]), None, f"expected {len(header)} fields like the header, found {int(rec.fields[i])}")
                 for i in ragged_at]
    spans = {int(rec.lines[i]): (int(rec.starts[i]), int(rec.stops[i])) for i in ragged_at}
    good = is_data & ~ragged
    runs = None
    if rec.blank.any() or len(ragged_at) or header_record > 0:
        # Spans of consecutive good records (with the header first), copied for DuckDB.
        keep = np.flatnonzero(good)
        runs = [(int(rec.starts[header_record]), int(rec.stops[header_record]))]
        if len(keep):
            breaks = np.flatnonzero(np.diff(keep) != 1)
            first = np.concatenate(([keep[0]], keep[breaks + 1]))
            last = np.concatenate((keep[breaks], [keep[-1]]))
            runs += list(zip(rec.starts[first].tolist(), rec.stops[last].tolist()))
    return CsvIndex(path, sha256, kind, header, malformed, rec.lines[good].copy(), rec.starts[good].copy(),
                    rec.stops[good].copy(), spans, runs)


def read_csv(path: str | os.PathLike) -> CsvFile:
    """The whole file parsed into raw strings (for a preview); refuse it whole (FileRefused) when it cannot be used."""
    index = scan_csv(path)
    frames = list(index.blocks(block_rows=max(1, len(index.good_lines))))
    frame = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    return CsvFile(index.path, index.sha256, index.kind, index.header, frame, index.malformed, index)


_parser: duckdb.DuckDBPyConnection | None = None  # one in-memory parser database per process (opening one is slow)
_parser_lock = threading.Lock()
_ARROW_STRINGS = {
    pa.string(): pd.StringDtype("pyarrow", na_value=np.nan),
    pa.large_string(): pd.StringDtype("pyarrow", na_value=np.nan),
    pa.string_view(): pd.StringDtype("pyarrow", na_value=np.nan),
}


def parser_cursor() -> duckdb.DuckDBPyConnection:
    """A connection of its own to the in-memory parser database (so parsing holds no lock on the store)."""
    global _parser
    with _parser_lock:
        if _parser is None:
            _parser = duckdb.connect()
            _parser.execute("SET enable_progress_bar = false")
            # Parsing streams and the duplicate check across blocks may spill to disk: the import's
            # memory is for the store's write, which cannot spill (docs/performance.md).
            _parser.execute(f"SET memory_limit = '{PARSER_MEMORY_MB}MB'")
            spill = os.path.join(tempfile.gettempdir(), "outcomes-ingest-spill").replace("'", "''")
            _parser.execute(f"SET temp_directory = '{spill}'")  # not the working directory
        return _parser.cursor()


def _duckdb_blocks(path: str, header: list[str], block_rows: int, name: str) -> Iterator[pd.DataFrame]:
    """Exactly `block_rows` rows at a time (the last block fewer), in file order."""
    # Columns are read by position (c0, c1, ...) and named afterwards: header text never enters SQL.
    columns = {f"c{i}": "VARCHAR" for i in range(len(header))}
    select = ", ".join(f"nullif(trim(c{i}), '') AS c{i}" for i in range(len(header)))
    cursor = parser_cursor()

    def frame_of(batches: list[pa.RecordBatch]) -> pd.DataFrame:
        # Arrow-backed strings: no copy into Python objects, and fast vectorised string methods.
        frame = pa.Table.from_batches(batches).to_pandas(types_mapper=_ARROW_STRINGS.get)
        frame.columns = header
        return frame

    try:
        try:
            reader = cursor.sql(
                f"""SELECT {select} FROM read_csv($path, columns = $columns, header = true, delim = ',', quote = '"',
                    escape = '"', comment = '', skip = 0, auto_detect = false, strict_mode = true)""",
                params={"path": path, "columns": columns},
            ).to_arrow_reader(min(block_rows, 1 << 17))
        except duckdb.Error as exc:
            raise FileRefused(f"{name}: not a readable CSV file: {str(exc).splitlines()[0]}") from None
        pending: list[pa.RecordBatch] = []
        pending_rows = 0
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            except (duckdb.Error, pa.ArrowException) as exc:
                raise FileRefused(f"{name}: not a readable CSV file: {str(exc).splitlines()[0]}") from None
            while len(batch):
                take = min(len(batch), block_rows - pending_rows)
                pending.append(batch.slice(0, take))
                pending_rows += take
                batch = batch.slice(take)
                if pending_rows == block_rows:
                    yield frame_of(pending)
                    pending, pending_rows = [], 0
        if pending_rows:
            yield frame_of(pending)
    finally:
        cursor.close()
