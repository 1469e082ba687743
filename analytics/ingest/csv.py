"""Reading one CSV file into raw strings, with editor line numbers, block by block.

No per-row Python for well-formed rows. A first pass (`_lines`) reads the
file in chunks of bytes and describes every physical line with numpy: where it
is, whether it holds an odd number of double quotes, whether every quote in it
sits where RFC 4180 allows one (opening a value, closing it, or doubled inside
it), how many fields it has, and whether it holds a control character. It also
computes the sha256 and checks the encoding.

`scan_csv` then turns lines into records. A line with an even number of
well-placed quotes is a record of its own. Only the rare other lines are looked
at one by one: a quoted value that runs past the end of its line is a record
spanning several lines when it closes properly and gives the header's number of
fields within `MAX_RECORD_BYTES`, unless its first line already holds all the
row's remaining fields after the quote, or its last line a whole row's commas
(then a stray quote would pair with a stray quote of another row); otherwise the quote is unbalanced, that line alone is rejected, and
reading resumes on the next line, so a stray quote never costs the rows after it. Lines that are too long, hold control characters
or have the wrong number of fields are rejected one by one too. Every physical
line ends up counted exactly once: the header, blank, part of a good record or
part of a rejected one (checked, `lines_total`).

Then DuckDB parses the fields of the good records only (`CsvIndex.blocks`),
streaming: memory holds one block of rows at a time, whatever the file's size.
"""
from __future__ import annotations

import bisect
import codecs
import hashlib
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from . import rules
from .. import workdir

CHUNK_BYTES = 16 << 20  # the scan's reading unit: bounds its memory, large enough for numpy to be fast
BLOCK_ROWS = 500_000  # rows parsed, checked and written at a time: bounds the import's memory
# A row (all its lines) may hold at most this many bytes: a real row is well under 1 KB, so a longer
# one is damage (a runaway quote, a pasted document) and is rejected alone rather than read.
MAX_RECORD_BYTES = 1 << 20
# Rejected rows keep at most this much of their text in the quarantine (the file's sha256 names the rest).
MAX_RAW_BYTES = 64 << 10
MAX_COLUMN_NAME = 200  # characters: longer is not a header (patient attribute names come from it)
_BOM = b"\xef\xbb\xbf"
PARSER_MEMORY_MB = 256

QUOTE, COMMA, NEWLINE, CR = 34, 44, 10, 13
# Per-line flags of `_Lines.flags`.
ODD_QUOTES, MISPLACED_QUOTE, CONTROL, ENDS_WITH_CR, MISPLACED_IF_INSIDE = 1, 2, 4, 8, 16
_CONTROL_BYTES = np.zeros(256, dtype=bool)
_CONTROL_BYTES[[*range(0, 9), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F]] = True

UNBALANCED_QUOTE = ('unbalanced quote: a double quote may only open or close a whole value; inside a value, '
                    'write it twice and quote the value ("O""Brien")')
UNCLOSED_QUOTE = "unbalanced quote: the quoted value opened here is not closed on this line; the next line is read as a new row"


class FileRefused(ValueError):
    """The whole file cannot be imported (not CSV, not UTF-8, missing column...)."""


@dataclass
class CsvIndex:
    """Where the rows of one CSV file are, without their values (`scan_csv`)."""
    path: Path
    sha256: str
    kind: str
    header: list[str]
    malformed: list[tuple[int, str | None, str]]  # (line, column, reason) of rows rejected while reading
    good_lines: np.ndarray  # first editor line of each well-formed data record, in file order
    _good_starts: np.ndarray = field(repr=False)
    _good_stops: np.ndarray = field(repr=False)
    _malformed_spans: dict[int, tuple[int, int]] = field(default_factory=dict, repr=False)
    _runs: list[tuple[int, int]] | None = field(default=None, repr=False)  # byte spans to copy when not clean
    lines_total: int = 0  # physical lines, as an editor counts them
    lines_blank: int = 0  # empty lines (skipped)
    lines_continued: int = 0  # lines that continue a row begun on an earlier line (a quoted value with line breaks)
    # Could a value begin or end with a space DuckDB's trim() removes (Unicode Zs)? False only when no space
    # byte touches a comma, a quote or a line end and the file is ASCII (after a BOM): then the parse skips trim.
    needs_trim: bool = True

    @property
    def rows_total(self) -> int:
        return len(self.good_lines) + len(self.malformed)

    def raw_lines(self, lines) -> list[str]:
        """The text of the records starting at these (1-based) lines, for the quarantine
        (at most MAX_RAW_BYTES of each, marked when cut)."""
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
                text = handle.read(min(stop - start, MAX_RAW_BYTES)).decode("utf-8", errors="replace").rstrip("\r")
                if stop - start > MAX_RAW_BYTES:
                    text += f"... [cut: the row has {stop - start:,} bytes]"
                out.append(text)
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
        if self._runs is not None:  # blank lines, rejected rows or blank lines before the header: DuckDB gets only the good records
            copy = self._write_good_records()
            source = str(copy)
        try:
            done = 0
            for frame in _duckdb_blocks(source, self.header, block_rows, self.path.name, trim=self.needs_trim):
                n = len(frame)
                if done + n > len(self.good_lines):
                    raise FileRefused(f"{self.path.name}: the CSV could not be parsed consistently "
                                      f"(more rows than the {len(self.good_lines)} records found); nothing was imported")
                frame["_line"] = self.good_lines[done:done + n]
                done += n
                rules.unescape_text(self.kind, frame)
                yield frame
            if done != len(self.good_lines):
                raise FileRefused(f"{self.path.name}: the CSV could not be parsed consistently "
                                  f"(found {done} rows, expected {len(self.good_lines)}); nothing was imported")
        finally:
            if copy is not None:
                copy.unlink(missing_ok=True)

    def _write_good_records(self) -> Path:
        target = workdir.new_file(".csv")
        try:
            with open(self.path, "rb") as src, open(target, "wb") as tmp:
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
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        return target


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


# --- one record's fields (only for the few records looked at one by one) ---------------

_FIELD = re.compile(rb'"[^"]*(?:""[^"]*)*"|[^",\n]*')


def _split(record: bytes) -> tuple[list[bytes], int | None]:
    """The fields of one record as RFC 4180 reads them (quotes kept), and the index of the field
    where the record stops being valid CSV (None when it is valid)."""
    if record.endswith(b"\r"):
        record = record[:-1]
    fields: list[bytes] = []
    pos = 0
    while True:
        match = _FIELD.match(record, pos)
        fields.append(match.group())
        pos = match.end()
        if pos == len(record):
            return fields, None
        if record[pos] != COMMA:
            return fields, len(fields) - 1
        pos += 1
        if pos == len(record):
            fields.append(b"")
            return fields, None


def _value(field_bytes: bytes) -> str:
    text = field_bytes.decode("utf-8", errors="replace")
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        return text[1:-1].replace('""', '"')
    return text


def _column_name(header: list[str], index: int | None) -> str | None:
    return header[index] if index is not None and 0 <= index < len(header) else None


# --- the pass over the bytes -----------------------------------------------------------

@dataclass
class _Lines:
    """Every physical line of a file (editor line i + 1 is index i)."""
    starts: np.ndarray  # int64 byte offset of the line's first byte
    stops: np.ndarray  # int64 byte offset of its newline (or the end of the file)
    flags: np.ndarray  # uint8: ODD_QUOTES | MISPLACED_QUOTE | MISPLACED_IF_INSIDE | CONTROL | ENDS_WITH_CR
    fields: np.ndarray  # int32: fields when the line is read on its own (commas outside quotes + 1)
    commas: np.ndarray  # int32: all its commas
    tail: np.ndarray  # int32: commas after its last quote (all its commas when it has none)


_LINE_DTYPES = (np.int64, np.int64, np.uint8, np.int32, np.int32, np.int32)  # the fields of `_Lines`, in order
# _EXACT_ONLY: every chunk takes the quote-aware path (tests compare it with the path for chunks without quotes).
_EXACT_ONLY = False
# The bytes 0..r-1 of a machine word set, as a word (native byte order), for r = 0..7: counts a word's first r bytes.
_WORD_HEADS = np.frombuffer(b"".join(bytes([0xFF] * r + [0] * (8 - r)) for r in range(8)), dtype=np.uint64)


class _LineArrays:
    """`_Lines` filled chunk by chunk in arrays allocated once for the file's estimated number of lines
    (grown when it has more): no list of pieces joined and copied at the end (that was a fifth of the scan)."""

    def __init__(self):
        self.arrays: list[np.ndarray] | None = None
        self.n = 0

    def take(self, m: int, estimate) -> list[np.ndarray]:
        """The next `m` lines' slots; `estimate()`: how many lines the file may have in all."""
        if self.arrays is None or self.n + m > len(self.arrays[0]):
            capacity = max(self.n + m, estimate())
            grown = [np.empty(capacity, dtype=dtype) for dtype in _LINE_DTYPES]
            if self.arrays is not None:
                for new, old in zip(grown, self.arrays):
                    new[:self.n] = old[:self.n]
            self.arrays = grown
        at = slice(self.n, self.n + m)
        self.n += m
        return [a[at] for a in self.arrays]

    def lines(self) -> _Lines:
        if self.arrays is None:
            return _Lines(*(np.empty(0, dtype=dtype) for dtype in _LINE_DTYPES))
        return _Lines(*(a[:self.n] for a in self.arrays))


class _Scratch:
    """Arrays reused chunk after chunk: a new array of a chunk's size costs its page faults each time (the
    import's allocator gives blocks of 4 MiB and more back to the system when freed)."""

    def __init__(self):
        self.arrays: dict[str, np.ndarray] = {}

    def __call__(self, name: str, size: int, dtype) -> np.ndarray:
        have = self.arrays.get(name)
        if have is None or len(have) < size:
            have = self.arrays[name] = np.empty(max(size, 2 * len(have) if have is not None else 0), dtype=dtype)
        return have[:size]


def _counts_before(mask: np.ndarray, n: int, at: np.ndarray, scratch: _Scratch) -> tuple[np.ndarray, int]:
    """How many of the first `n` bytes of a 0/1 byte `mask` (at least n + 8 long) are 1 before each position
    of `at` (< n), and in all `n`. Counted 8 bytes at a time (popcount of a machine word: its number of 1
    bytes) instead of listing every 1 (a comma list was 8 times the size of the newline list, then searched).
    The counts returned are scratch: used before the next call."""
    words_n = n // 8 + 1
    mask[n:words_n * 8] = False
    words = mask[:words_n * 8].view(np.uint64)
    before = scratch("before", words_n + 1, np.int64)  # before[w]: ones in the words before word w
    before[0] = 0
    np.bitwise_count(words, out=before[1:], casting="unsafe")
    np.cumsum(before[1:], out=before[1:])
    m = len(at)
    index = np.right_shift(at, 3, out=scratch("index", m, np.int64))
    counts = np.take(before, index, out=scratch("counts", m, np.int64), mode="clip")  # (in range: "clip" is 10x faster)
    word = np.take(words, index, out=scratch("word", m, np.uint64), mode="clip")
    np.bitwise_and(at, 7, out=index)
    word &= np.take(_WORD_HEADS, index, out=scratch("head", m, np.uint64), mode="clip")  # its bytes before `at`
    counts += np.bitwise_count(word, out=scratch("ones", m, np.uint8))
    return counts, int(before[-1])


def _lines(path: Path) -> tuple[str, int, _Lines, bool]:
    """One pass over the bytes in chunks: sha256, UTF-8 check, and every physical line described.

    Every line is described as if it began outside quotes (as a record's first line does): then
    a quote is misplaced when, opening a value, it does not follow a comma or the line's start, or,
    closing one, it is not followed by a comma, a quote (a doubled one) or the line's end. It is
    also described as if it began inside a quoted value (as a line continuing a record does):
    MISPLACED_IF_INSIDE.

    A chunk without quotes (most chunks of most files) takes a shorter path: every comma of its lines is
    outside quotes or, after an odd quote before it, inside, and only each line's comma count is needed.

    Also whether a value may begin or end with a space that trim() removes (`CsvIndex.needs_trim`).
    """
    digest = hashlib.sha256()
    needs_trim = False
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        handle = open(path, "rb", buffering=0)  # read straight into `window`
    except OSError as exc:
        raise FileRefused(f"{path}: cannot read the file ({exc.strerror or exc})") from exc
    out = _LineArrays()
    # Running totals before this chunk, and the partial line carried into it.
    quotes_before = commas_before = outside_before = newlines_before = 0
    offset = 0
    prev_byte = NEWLINE  # "before the file" counts as a line start
    bom = 0
    carry_start = 0
    carry_quotes = carry_commas = carry_outside = 0  # totals at the carried line's start
    carry_last_quote = -1  # comma total at the carried line's last quote (-1: it has none yet)
    last_odd_stop = -MAX_RECORD_BYTES - 1  # where the last line with an odd number of quotes ended
    carry_flags = 0
    has_text = False
    none = np.empty(0, dtype=np.int64)
    scratch = _Scratch()
    wanted = CHUNK_BYTES + 2  # a chunk and two bytes of look-ahead: a quote's next bytes
    with handle:
        try:
            size = os.fstat(handle.fileno()).st_size
        except OSError as exc:
            raise FileRefused(f"{path}: cannot read the file ({exc.strerror or exc})") from exc

        def estimate() -> int:  # lines in the file, from those so far (at most one per byte)
            seen = offset + len(chunk)
            rate = (newlines_before + len(newlines)) / max(seen, 1)
            return min(int(rate * max(size, seen) * 1.05) + 64, max(size, seen) + 1)

        # The bytes read, then two newlines (past the end of the file reads as a line end). A small file
        # gets a window of its size; one that grows while read gets the whole chunk's.
        window = bytearray(min(wanted, size + 2) + 2)
        held = 0  # look-ahead bytes of the previous chunk, moved to the window's start
        while True:
            got = held
            try:
                while got < wanted:
                    if got == len(window) - 2:
                        window = window[:got] + bytearray(wanted + 2 - got)
                    read = handle.readinto(memoryview(window)[got:min(wanted, len(window) - 2)])
                    if not read:
                        break
                    got += read
            except OSError as exc:
                raise FileRefused(f"{path}: cannot read the file ({exc.strerror or exc})") from exc
            if not got:
                break
            n = min(got, CHUNK_BYTES)
            window[got:got + 2] = b"\n\n"
            padded = np.frombuffer(window, dtype=np.uint8, count=got + 2)
            buf = padded[:n]
            chunk = memoryview(window)[:n]
            if offset == 0:
                if window.startswith((b"\xff\xfe", b"\xfe\xff"), 0, n):
                    raise FileRefused(f"{path.name}: the file is UTF-16 text (Excel's \"Unicode Text\"); "
                                      "save it as \"CSV UTF-8 (comma delimited)\" and import that")
                if window.startswith(_BOM, 0, n):
                    bom = carry_start = 3
            digest.update(chunk)
            mask = scratch("mask", n + 8, bool)  # for byte tests: n + 8 for `_counts_before`
            top = int(buf.max())
            if not needs_trim:
                needs_trim = _edge_space(buf, padded, bom if offset == 0 else 0, top, mask)
            newlines = np.flatnonzero(np.equal(buf, NEWLINE, out=mask[:n]))
            buffered = len(decoder.getstate()[0])
            if top >= 0x80 or buffered:  # ASCII bytes after a whole character are UTF-8 as they are
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError as exc:
                    at = exc.start - buffered  # position in this chunk (negative: in the previous one)
                    line = newlines_before + int(np.searchsorted(newlines, max(at, 0))) + 1
                    raise FileRefused(f"{path.name}: line {line}: the file is not UTF-8 text (save it as CSV UTF-8)") from None
            if not has_text:
                skip = bom if offset == 0 else 0
                # Whitespace is at most 0x20: a larger byte is text (strip() would copy the chunk to say so).
                has_text = (int(buf[skip:].max(initial=0)) if skip else top) > 0x20 or bool(window[skip:n].strip())
            # Cheap tests first: most files hold no byte below 0x20 but newlines, and none above 0x7E.
            low = np.count_nonzero(np.less(buf, 0x20, out=mask[:n])) > len(newlines)
            high = top >= 0x7F
            lows = np.flatnonzero(buf < 0x20) if low else none  # newlines, CRs of CRLF files, tabs, controls
            controls = lows[_CONTROL_BYTES[buf[lows]]]
            if high:
                controls = np.concatenate((controls, np.flatnonzero(buf == 0x7F)))
            crs = lows[buf[lows] == CR]
            if len(crs):
                lone = crs[padded[crs + 1] != NEWLINE]  # (a CR ending the file ends its last line)
                controls = np.concatenate((controls, lone))
            # UTF-8 lead byte of U+0080-U+00BF: C1 controls are U+0080-U+009F
            c2 = np.flatnonzero(buf == 0xC2) if high else none
            if len(c2):
                second = padded[c2 + 1]
                controls = np.concatenate((controls, c2[(second >= 0x80) & (second <= 0x9F)]))
            m = len(newlines)  # lines completed in this chunk (local 0 continues the carried line)
            if _EXACT_ONLY or window.find(b'"', 0, n) >= 0:
                quotes = np.flatnonzero(buf == QUOTE)
                commas = np.flatnonzero(buf == COMMA)
                n_lines = m + 1  # local lines: 0 continues the carried line, the last is carried on
                # Totals at each newline of the chunk: the end of one line and the start of the next.
                q_at = quotes_before + np.searchsorted(quotes, newlines)
                c_at = commas_before + np.searchsorted(commas, newlines)
                q_start = np.empty(n_lines, dtype=np.int64)
                q_start[0] = carry_quotes
                q_start[1:] = q_at
                c_start = np.empty(n_lines, dtype=np.int64)
                c_start[0] = carry_commas
                c_start[1:] = c_at
                # Commas outside quotes by the quote count from the file's start; a line whose start
                # follows an odd count is read the other way round (it is described on its own).
                if len(quotes):
                    outside = commas[(quotes_before + np.searchsorted(quotes, commas)) % 2 == 0]
                else:
                    outside = commas if quotes_before % 2 == 0 else commas[:0]
                if len(quotes) or quotes_before % 2:
                    o_at = outside_before + np.searchsorted(outside, newlines)
                else:  # every comma of the chunk is outside quotes: the same search as c_at
                    o_at = outside_before + (c_at - commas_before)
                o_start = np.empty(n_lines, dtype=np.int64)
                o_start[0] = carry_outside
                o_start[1:] = o_at
                flags = np.zeros(n_lines, dtype=np.uint8)
                flags[0] = carry_flags
                if len(quotes):
                    def starts_value(at: np.ndarray) -> np.ndarray:  # follows a line start, a comma or a quote
                        before = padded[at - 1]
                        if len(at) and at[0] == 0:
                            before[0] = prev_byte
                        ok = (before == NEWLINE) | (before == COMMA) | (before == QUOTE)
                        return ok | (at == bom) if offset == 0 and bom else ok

                    def ends_value(at: np.ndarray) -> np.ndarray:  # followed by a comma, a quote or the line's end
                        after1, after2 = padded[at + 1], padded[at + 2]
                        return ((after1 == COMMA) | (after1 == QUOTE) | (after1 == NEWLINE)
                                | ((after1 == CR) & (after2 == NEWLINE)))

                    parity = q_start & 1
                    if parity.min() == parity.max():
                        # No line of the chunk has an odd number of quotes: on every line, every other quote opens.
                        first = (quotes_before + int(parity[0])) % 2  # index of the first opening quote
                        openers, closers = quotes[first::2], quotes[1 - first::2]
                        misplaced = np.concatenate((openers[~starts_value(openers)], closers[~ends_value(closers)]))
                        flags[np.searchsorted(newlines, misplaced)] |= MISPLACED_QUOTE
                        # Read as continuing a value, a line matters only within a record's reach of an odd line.
                        near = quotes[:np.searchsorted(quotes, last_odd_stop + MAX_RECORD_BYTES - offset)]
                        if len(near):
                            openers, closers = near[1 - first::2], near[first::2]
                            misplaced = np.concatenate((openers[~starts_value(openers)], closers[~ends_value(closers)]))
                            flags[np.searchsorted(newlines, misplaced)] |= MISPLACED_IF_INSIDE
                    else:
                        # Each quote checked in both roles; which it has on its line depends on the parity of
                        # the quotes before the line ("global" roles, even index opens, when it is even).
                        opens = (quotes_before + np.arange(len(quotes))) % 2 == 0
                        can_start, can_end = starts_value(quotes), ends_value(quotes)
                        bad_global = np.zeros(n_lines, dtype=bool)
                        bad_global[np.searchsorted(newlines, quotes[np.where(opens, ~can_start, ~can_end)])] = True
                        bad_other = np.zeros(n_lines, dtype=bool)
                        bad_other[np.searchsorted(newlines, quotes[np.where(opens, ~can_end, ~can_start)])] = True
                        odd_start = parity.astype(bool)
                        flags |= np.where(np.where(odd_start, bad_other, bad_global), MISPLACED_QUOTE, 0).astype(np.uint8)
                        flags |= np.where(np.where(odd_start, bad_global, bad_other), MISPLACED_IF_INSIDE, 0).astype(np.uint8)
                if len(controls):
                    flags[np.searchsorted(newlines, controls)] |= CONTROL
                # Commas after each line's last quote: from the comma total at that quote.
                at_last = np.full(n_lines, -1, dtype=np.int64)
                at_last[0] = carry_last_quote
                if len(quotes):
                    q_end = np.append(q_at, quotes_before + len(quotes))  # quotes before each local line's end
                    local = q_end > np.maximum(q_start, quotes_before)  # the line has a quote in this chunk
                    last = quotes[q_end[local] - 1 - quotes_before]
                    at_last[local] = commas_before + np.searchsorted(commas, last)
                if m:
                    # Lines completed in this chunk: local 0 .. n_lines - 2.
                    done_q = q_at - q_start[:-1]
                    done_c = c_at - c_start[:-1]
                    done_o = o_at - o_start[:-1]
                    own_outside = np.where(q_start[:-1] % 2 == 0, done_o, done_c - done_o)
                    done_flags = flags[:-1]
                    done_flags |= np.where(done_q % 2 == 1, ODD_QUOTES, 0).astype(np.uint8)
                    last_byte = np.where(newlines > 0, buf[np.maximum(newlines - 1, 0)], prev_byte)
                    line_starts = np.concatenate(([carry_start], offset + newlines[:-1] + 1))
                    has_cr = (last_byte == CR) & (offset + newlines > line_starts)
                    done_flags |= np.where(has_cr, ENDS_WITH_CR, 0).astype(np.uint8)
                    starts, stops, l_flags, l_fields, l_commas, l_tail = out.take(m, estimate)
                    starts[:] = line_starts
                    stops[:] = offset + newlines
                    l_flags[:] = done_flags
                    l_fields[:] = own_outside + 1
                    l_commas[:] = done_c
                    l_tail[:] = np.where(at_last[:-1] >= 0, c_at - at_last[:-1], done_c)
                    odd_here = np.flatnonzero(done_q % 2 == 1)
                    if len(odd_here):
                        last_odd_stop = offset + int(newlines[odd_here[-1]])
                    carry_start = offset + int(newlines[-1]) + 1
                carry_quotes, carry_commas, carry_outside = int(q_start[-1]), int(c_start[-1]), int(o_start[-1])
                carry_flags = int(flags[-1])
                carry_last_quote = int(at_last[-1])
                quotes_before += len(quotes)
                commas_before += len(commas)
                outside_before += len(outside)
            else:
                # No quote in the chunk: its lines' commas are all outside quotes when the quotes before it
                # are even, all inside when odd; either way a line read on its own has commas + 1 fields,
                # except the carried line (local 0), which may hold quotes from the previous chunk.
                np.equal(buf, COMMA, out=mask[:n])
                at_nl, chunk_commas = _counts_before(mask, n, newlines, scratch)
                even = quotes_before % 2 == 0
                chunk_outside = chunk_commas if even else 0
                control_line = np.searchsorted(newlines, controls) if len(controls) else none
                if m:
                    starts, stops, l_flags, l_fields, l_commas, l_tail = out.take(m, estimate)
                    starts[0] = carry_start
                    np.add(newlines[:-1], offset + 1, out=starts[1:])
                    np.add(newlines, offset, out=stops)
                    l_commas[0] = commas_before + int(at_nl[0]) - carry_commas
                    np.subtract(at_nl[1:], at_nl[:-1], out=l_commas[1:], casting="same_kind")
                    np.add(l_commas, 1, out=l_fields)
                    l_tail[:] = l_commas
                    l_flags[:] = 0
                    # The carried line: quotes and outside commas from where it began.
                    first_outside = (int(at_nl[0]) if even else 0) + outside_before - carry_outside
                    l_fields[0] = (first_outside if carry_quotes % 2 == 0 else int(l_commas[0]) - first_outside) + 1
                    if carry_last_quote >= 0:
                        l_tail[0] = commas_before + int(at_nl[0]) - carry_last_quote
                    first_flags = carry_flags
                    if (quotes_before - carry_quotes) % 2:
                        first_flags |= ODD_QUOTES
                        last_odd_stop = offset + int(newlines[0])
                    l_flags[0] = first_flags
                    if len(crs):
                        last_byte = np.where(newlines > 0, buf[np.maximum(newlines - 1, 0)], prev_byte)
                        l_flags[(last_byte == CR) & (stops > starts)] |= ENDS_WITH_CR
                    elif newlines[0] == 0 and prev_byte == CR and offset > carry_start:
                        l_flags[0] |= ENDS_WITH_CR  # the CR ended the previous chunk
                    if len(control_line):
                        l_flags[control_line[control_line < m]] |= CONTROL
                    carry_start = offset + int(newlines[-1]) + 1
                    carry_quotes = quotes_before
                    carry_commas = commas_before + int(at_nl[-1])
                    carry_outside = outside_before + (int(at_nl[-1]) if even else 0)
                    carry_last_quote = -1
                    carry_flags = 0
                if len(control_line) and (control_line == m).any():  # (not sorted: controls of several kinds)
                    carry_flags |= CONTROL
                commas_before += chunk_commas
                outside_before += chunk_outside
            newlines_before += m
            offset += n
            prev_byte = int(buf[-1])
            held = got - n
            window[:held] = window[n:got]
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise FileRefused(f"{path.name}: line {newlines_before + 1}: the file is not UTF-8 text (save it as CSV UTF-8)") from None
    if not has_text:
        raise FileRefused(f"{path.name}: the file is empty (a header row is required)")
    if carry_start < offset:  # the last line has no newline
        q = quotes_before - carry_quotes
        c = commas_before - carry_commas
        o = outside_before - carry_outside
        own_outside = o if carry_quotes % 2 == 0 else c - o
        flags = carry_flags | (ODD_QUOTES if q % 2 else 0) | (ENDS_WITH_CR if prev_byte == CR else 0)
        starts, stops, l_flags, l_fields, l_commas, l_tail = out.take(1, lambda: 1)
        starts[0], stops[0], l_flags[0], l_fields[0], l_commas[0] = carry_start, offset, flags, own_outside + 1, c
        l_tail[0] = commas_before - carry_last_quote if carry_last_quote >= 0 else c
    return digest.hexdigest(), bom, out.lines(), needs_trim


def _edge_space(buf: np.ndarray, padded: np.ndarray, skip: int, top: int, mask: np.ndarray) -> bool:
    """Could a value in this chunk begin or end with a space trim() removes? Any non-ASCII byte (Unicode has
    other spaces; a BOM of `skip` bytes aside), or a space byte next to a comma, a quote, a line end or the
    chunk's edge (the neighbour there is not looked up: counted as an edge). `top`: the chunk's largest byte;
    `mask`: scratch of the chunk's size."""
    if top >= 0x80 and (buf[skip:] >= 0x80).any():
        return True
    spaces = np.flatnonzero(np.equal(buf, 0x20, out=mask[:len(buf)]))
    if not len(spaces):
        return False
    if spaces[0] <= skip:  # the first byte of the chunk (or the one after a BOM)
        return True
    around = np.concatenate((padded[spaces - 1], padded[spaces + 1]))
    return bool(((around == COMMA) | (around == QUOTE) | (around == NEWLINE) | (around == CR)).any())


def _read(path: Path, start: int, stop: int) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(start)
        return handle.read(stop - start)


def _header_names(path: Path, lines: _Lines, at: int) -> list[str]:
    line = at + 1
    flags = int(lines.flags[at])
    size = int(lines.stops[at] - lines.starts[at])
    if size > MAX_RECORD_BYTES:
        raise FileRefused(f"{path.name}: line {line}: the header row is {size:,} bytes long; a header may have at most "
                          f"{MAX_RECORD_BYTES:,}: this is not a header of this format")
    text = _read(path, int(lines.starts[at]), int(lines.stops[at]))
    if flags & CONTROL:
        if b"\x00" in text:
            raise FileRefused(f"{path.name}: line {line}: the header holds NUL bytes: the file looks like UTF-16 text; "
                              "save it as \"CSV UTF-8 (comma delimited)\" and import that")
        if b"\r" in text.rstrip(b"\r"):
            raise FileRefused(f"{path.name}: line {line}: lines end with a carriage return alone (old Mac format); "
                              "save the file with Windows or Unix line ends (CSV UTF-8)")
        raise FileRefused(f"{path.name}: line {line}: the header holds a control character; "
                          "the file is not a CSV text file of this format")
    if flags & (ODD_QUOTES | MISPLACED_QUOTE):
        raise FileRefused(f"{path.name}: line {line}: unbalanced quote in the header row")
    fields, _ = _split(text)
    names = [_value(f).strip().lower() for f in fields]
    if len(names) == 1:
        for delimiter, what in ((";", "semicolon"), ("\t", "tab")):
            if delimiter in names[0] and len(names[0].split(delimiter)) > 1:
                raise FileRefused(
                    f"{path.name}: line {line}: the file is {what}-delimited; the import reads comma-delimited CSV. "
                    "Save it again as \"CSV UTF-8 (comma delimited)\" (with a decimal point in numbers), "
                    "or export it from the source system with commas")
    if not names or all(not n for n in names):
        raise FileRefused(f"{path.name}: line {line}: the header row is empty")
    long_name = next((i for i, n in enumerate(names) if len(n) > MAX_COLUMN_NAME), None)
    if long_name is not None:
        raise FileRefused(f"{path.name}: line {line}: header column {long_name + 1} has a name of "
                          f"{len(names[long_name]):,} characters; a column name may have at most {MAX_COLUMN_NAME}")
    blank = [i + 1 for i, n in enumerate(names) if not n]
    if blank:
        hint = " (a trailing comma? remove it, or name the column)" if blank == [len(names)] else ""
        raise FileRefused(f"{path.name}: line {line}: header column {blank[0]} has no name{hint}")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise FileRefused(f"{path.name}: line {line}: column {name!r} appears twice in the header")
        seen.add(name)
    return names


def _control_column(record: bytes, header: list[str]) -> tuple[str | None, str]:
    """The first field of a record holding a control character, and why it is refused."""
    fields, _ = _split(record)
    for i, f in enumerate(fields):
        value = _value(f)
        if rules.CONTROL_CHARACTERS.search(value):
            return _column_name(header, i), rules.control_character_reason(value)
    return None, rules.control_character_reason(record.decode("utf-8", errors="replace"))


def scan_csv(path: str | os.PathLike) -> CsvIndex:
    """Check a CSV file's encoding, header and records; refuse it whole (FileRefused) when it cannot be used.

    Rows that cannot be read (an unbalanced quote, too long, a control character, the wrong
    number of fields) are set aside one by one with their line and reason (`malformed`).
    """
    path = Path(path)
    sha256, bom, lines, needs_trim = _lines(path)
    n = len(lines.starts)
    length = lines.stops - lines.starts
    flags = lines.flags
    blank = length <= 1  # empty, or a CR alone (the test of flags only where it can matter)
    short = np.flatnonzero(blank)
    blank[short] = (length[short] == 0) | ((flags[short] & ENDS_WITH_CR) != 0)
    nonblank = ~blank
    header_at = int(nonblank.argmax())  # the first line that is not blank (the file has text: one is)
    if not nonblank[header_at]:
        header_at = int(np.flatnonzero(nonblank)[0])
    del nonblank
    header = _header_names(path, lines, header_at)
    kind = rules.detect_kind(header)
    if kind is None:
        raise FileRefused(
            f"{path.name}: line {header_at + 1}: cannot tell what this file holds from its header; "
            "expected patients (patient_id, site, clinician, ...), treatments (patient_id, administered_on, route, ...) "
            "or assessments (patient_id, instrument, administered_on, item_1 ... item_10, total)"
        )
    missing = rules.missing_columns(kind, header)
    if missing:
        raise FileRefused(
            f"{path.name}: line {header_at + 1}: the {kind} file has no column {', '.join(missing)} (required: "
            f"{', '.join(rules.REQUIRED[kind])}); nothing was imported"
        )
    with open(path, "rb") as handle:
        records = _Records(handle, lines, header, header_at, blank=blank, length=length)
    index = _index(path, sha256, kind, header, header_at, lines, blank, records)
    index.needs_trim = needs_trim
    return index


class _Records:
    """The lines that are not a well-formed row of their own, made into records one by one.

    `looked`: (first line, last line, column, reason or None for a good record), in line order.
    `paired_first`, `paired_last`: good records of several lines taken together (arrays).
    Lines opening a quoted value that runs past their end pair with the next such line (which
    closes it) when the record checks out; the usual case, many such records in a row, is checked
    for all of them at once, and only from a record that does not check out on one by one.
    """

    def __init__(self, handle, lines: _Lines, header: list[str], header_at: int, blank: np.ndarray | None = None,
                 length: np.ndarray | None = None):
        self.handle, self.lines, self.header, self.width = handle, lines, header, len(header)
        n = len(lines.starts)
        flags = lines.flags
        if length is None:
            length = lines.stops - lines.starts
        if blank is None:
            blank = (length == 0) | ((length == 1) & ((flags & ENDS_WITH_CR) != 0))
        after = np.ones(n, dtype=bool)
        after[:header_at + 1] = False
        self.too_long = length > MAX_RECORD_BYTES
        self.looked: list[tuple[int, int, str | None, str | None]] = []
        odd = np.flatnonzero(after & ((flags & ODD_QUOTES) != 0))
        self.odd = odd
        self.paired_first: list[np.ndarray] = []
        self.paired_last: list[np.ndarray] = []
        single = self._odd_lines(odd)
        starts = np.concatenate([*self.paired_first, np.array([c[0] for c in single], dtype=np.int64)])
        ends = np.concatenate([*self.paired_last, np.array([c[1] for c in single], dtype=np.int64)])
        self.paired_first = np.concatenate(self.paired_first) if self.paired_first else np.empty(0, dtype=np.int64)
        self.paired_last = np.concatenate(self.paired_last) if self.paired_last else np.empty(0, dtype=np.int64)
        special = np.flatnonzero(after & ~blank & (self.too_long | ((flags & (MISPLACED_QUOTE | CONTROL)) != 0))
                                 & ((flags & ODD_QUOTES) == 0))
        if len(starts) and len(special):  # lines inside a record of several lines are part of it
            order = np.argsort(starts, kind="stable")
            starts, ends = starts[order], ends[order]
            k = np.searchsorted(starts, special, side="right") - 1
            special = special[(k < 0) | (special > ends[np.maximum(k, 0)])]
        for at in special.tolist():
            self._single(at)
        self.looked.sort(key=lambda r: r[0])

    def _read(self, start: int, stop: int) -> bytes:
        self.handle.seek(start)
        return self.handle.read(stop - start)

    def _line(self, at: int) -> bytes:
        return self._read(int(self.lines.starts[at]), int(self.lines.stops[at]))

    def _single(self, at: int) -> None:
        """A line of its own (even quotes) that is too long, holds a misplaced quote or a control character."""
        if self.too_long[at]:
            self.looked.append((at, at, None, f"the row is {int(self.lines.stops[at] - self.lines.starts[at]):,} "
                                              f"bytes long; a row may have at most {MAX_RECORD_BYTES:,} bytes (1 MB)"))
        elif self.lines.flags[at] & MISPLACED_QUOTE:
            _, broken = _split(self._line(at))
            self.looked.append((at, at, _column_name(self.header, broken), UNBALANCED_QUOTE))
        elif int(self.lines.fields[at]) == self.width:  # a control character; else left to the field count
            self.looked.append((at, at, *_control_column(self._line(at), self.header)))

    def _odd_lines(self, odd: np.ndarray) -> list[tuple[int, int]]:
        """Lines with an odd number of quotes: records of several lines, or rejected alone.
        Returns the spans of the records of several lines looked at one by one (good or rejected
        as a whole); those taken together go to `paired_first` and `paired_last`.

        Each such line opens a record closed by the next one, unless it is rejected alone; then the
        next one opens. Every consecutive pair is judged at once; runs of good pairs are taken
        whole, and a pair that is not is looked at closely (`_opening`)."""
        spans: list[tuple[int, int]] = []
        m = len(odd)
        ok = self._pairs_check_out(odd[:-1], odd[1:]) if m > 1 else np.zeros(0, dtype=bool)
        failing = [np.flatnonzero(~ok[parity::2]) * 2 + parity for parity in (0, 1)]
        i = 0
        while i < m:
            f = failing[i % 2]
            k = int(np.searchsorted(f, i))
            stop = min(int(f[k]) if k < len(f) else m, m - 1)  # pairs start before the next failing one
            taken = range(i, stop, 2)
            if len(taken):
                self.paired_first.append(odd[taken.start:taken.stop:2])
                self.paired_last.append(odd[taken.start + 1:taken.stop + 1:2])
            i += 2 * len(taken)
            if i >= m:
                break
            end = self._opening(int(odd[i]), int(odd[i + 1]) if i + 1 < m else None)
            if end is None:
                i += 1  # rejected alone: the next odd line opens
            else:
                spans.append((int(odd[i]), end))
                i += 2
        return spans

    def _pairs_check_out(self, opening: np.ndarray, closing: np.ndarray) -> np.ndarray:
        """Which (opening, closing) line pairs are good records, judged from the line descriptions alone."""
        lines, width = self.lines, self.width
        flags = lines.flags
        inside_bad = np.concatenate(([0], np.cumsum((flags & (MISPLACED_IF_INSIDE | CONTROL)) != 0)))
        # commas outside quotes on a line continuing a value = its commas not outside when read on its own
        continued = np.concatenate(([0], np.cumsum(lines.commas.astype(np.int64) - (lines.fields - 1))))
        opened = lines.fields[opening].astype(np.int64) - 1  # the field the quote opens
        fields = lines.fields[opening] + continued[closing + 1] - continued[opening + 1]
        return ((flags[opening] & (MISPLACED_QUOTE | CONTROL)) == 0) & ~self.too_long[opening] \
            & (lines.stops[closing] - lines.starts[opening] <= MAX_RECORD_BYTES) \
            & (inside_bad[closing + 1] - inside_bad[opening + 1] == 0) & (fields == width) \
            & ~((opened < width - 1) & (lines.tail[opening] == width - 1 - opened)) \
            & ~((opened > 0) & (lines.commas[closing] == width - 1))

    def _opening(self, at: int, end: int | None) -> int | None:
        """One line with an odd number of quotes, looked at closely: its record's last line, or None
        when it is rejected alone."""
        lines, header, width = self.lines, self.header, self.width
        if self.too_long[at]:
            self.looked.append((at, at, None, f"the row is {int(lines.stops[at] - lines.starts[at]):,} bytes long; "
                                              f"a row may have at most {MAX_RECORD_BYTES:,} bytes (1 MB)"))
            return None
        text = self._line(at)
        if lines.flags[at] & MISPLACED_QUOTE:
            _, broken = _split(text)
            self.looked.append((at, at, _column_name(header, broken), UNBALANCED_QUOTE))
            return None
        own, opened = _split(text)
        column = _column_name(header, opened)
        rest = text[len(b",".join(own)):].count(b",")  # commas after the opening quote
        if opened is not None and opened < width - 1 and rest == width - 1 - opened:
            # The line holds its row's remaining fields after the quote: a whole row with a stray
            # quote, not a value continued on the next line (which could pair it with a later stray).
            self.looked.append((at, at, column, UNCLOSED_QUOTE))
            return None
        if end is None or int(lines.stops[end] - lines.starts[at]) > MAX_RECORD_BYTES:
            self.looked.append((at, at, column, UNCLOSED_QUOTE))
            return None
        record = self._read(int(lines.starts[at]), int(lines.stops[end]))
        if opened == width - 1 and record[record.rfind(b"\n") + 1:].count(b",") == width - 1:
            # The quote opened the last column and the closing line holds a whole row's commas: a row with a
            # stray quote, not the end of a value. (Where the quote opens an earlier column, a value's last
            # line holding that many commas is as likely: "North<line break>side, east" then the next columns.)
            self.looked.append((at, at, column, UNCLOSED_QUOTE))
            return None
        fields, broken = _split(record)
        if broken is not None or len(fields) != width:
            why = UNCLOSED_QUOTE if broken is not None else (
                f"{UNCLOSED_QUOTE} (closing it on line {end + 1} would give {len(fields)} fields, "
                f"not {width} like the header)")
            self.looked.append((at, at, column, why))
            return None
        if np.any((lines.flags[at:end + 1] & CONTROL) != 0):
            self.looked.append((at, end, *_control_column(record, header)))
        else:
            self.looked.append((at, end, None, None))
        return end


def _index(path: Path, sha256: str, kind: str, header: list[str], header_at: int, lines: _Lines,
           blank: np.ndarray, records: _Records) -> CsvIndex:
    """Every line's part: the header, blank, a line of a good record or of a rejected one."""
    n = len(lines.starts)
    width = len(header)
    looked = records.looked
    first = np.concatenate(([r[0] for r in looked], records.paired_first)).astype(np.int64)
    last = np.concatenate(([r[1] for r in looked], records.paired_last)).astype(np.int64)
    several = last > first
    if several.any():
        continued = np.zeros(n + 1, dtype=np.int64)  # +1 at a record's second line, -1 after its last
        np.add.at(continued, first[several] + 1, 1)
        np.add.at(continued, last[several] + 1, -1)
        continued = np.cumsum(continued[:n]) > 0
        blank = blank & ~continued  # a blank line inside a quoted value is part of its record
    else:
        continued = None
    # Records of one line (not blank, not continuing a record, not looked at), checked by their field count.
    plain = ~blank
    plain[:header_at + 1] = False
    if continued is not None:
        plain &= ~continued
    plain[first] = False
    ragged = plain & (lines.fields != width)
    good_single = plain & ~ragged
    del plain

    malformed: list[tuple[int, str | None, str]] = []
    spans: dict[int, tuple[int, int]] = {}
    with open(path, "rb") as handle:
        for at in np.flatnonzero(ragged).tolist():
            found = int(lines.fields[at])
            hint = ""
            if found == width + 1:
                handle.seek(max(int(lines.stops[at]) - 2, int(lines.starts[at])))
                if handle.read(int(lines.stops[at]) - handle.tell()).rstrip(b"\r").endswith(b","):
                    hint = " (a trailing comma?)"
            malformed.append((at + 1, None, f"expected {width} fields like the header, found {found}{hint}"))
            spans[at + 1] = (int(lines.starts[at]), int(lines.stops[at]))
    good = np.concatenate(([r[2] is None and r[3] is None for r in looked],
                           np.ones(len(records.paired_first), dtype=bool))).astype(bool)
    for a, b, column, reason in looked:
        if reason is not None:
            malformed.append((a + 1, column, reason))
            spans[a + 1] = (int(lines.starts[a]), int(lines.stops[b]))
    malformed.sort(key=lambda m: m[0])
    if np.count_nonzero(good_single) == n - header_at - 1:  # every line after the header (no search for them)
        g_first = g_last = np.arange(header_at + 1, n, dtype=np.int64)
    else:
        g_first = g_last = np.flatnonzero(good_single).astype(np.int64, copy=False)
    del good_single
    if good.any():
        g_first = np.concatenate((g_first, first[good]))
        g_last = np.concatenate((g_last, last[good]))
        order = np.argsort(g_first, kind="stable")
        g_first, g_last = g_first[order], g_last[order]

    # Every physical line is counted once: header, blank, or a line of a (good or rejected) record.
    lines_blank = int(np.count_nonzero(blank)) - int(blank[header_at])
    lines_continued = int(np.count_nonzero(continued)) if continued is not None else 0
    accounted = 1 + lines_blank + len(g_first) + len(malformed) + lines_continued
    if accounted != n:
        raise FileRefused(f"{path.name}: {n:,} lines read but {accounted:,} accounted for (header, blank lines, rows); "
                          "nothing was imported from it. Please report this with the file's shape (not its data)")

    runs = None
    if lines_blank or malformed or header_at > 0:
        # Spans of consecutive good records (with the header first), copied for DuckDB.
        runs = [(int(lines.starts[header_at]), int(lines.stops[header_at]))]
        if len(g_first):
            breaks = np.flatnonzero(g_first[1:] != g_last[:-1] + 1)
            run_first = np.concatenate(([g_first[0]], g_first[breaks + 1]))
            run_last = np.concatenate((g_last[breaks], [g_last[-1]]))
            runs += list(zip(lines.starts[run_first].tolist(), lines.stops[run_last].tolist()))
    if len(g_first) == n - header_at - 1 and len(g_first) and g_first[0] == header_at + 1 and g_last[-1] == n - 1:
        # Every line after the header is a good row of its own (the usual file): its spans are the lines'.
        good_starts, good_stops = lines.starts[header_at + 1:], lines.stops[header_at + 1:]
    else:
        good_starts, good_stops = lines.starts[g_first], lines.stops[g_last]
    g_first += 1  # editor lines (a new array, not needed as indexes any more)
    return CsvIndex(path, sha256, kind, header, malformed, g_first, good_starts, good_stops, spans, runs,
                    lines_total=n, lines_blank=lines_blank, lines_continued=lines_continued)


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
            spill = str(workdir.work_dir() / "parser-spill").replace("'", "''")
            _parser.execute(f"SET temp_directory = '{spill}'")  # private, and removed even after a kill -9
        return _parser.cursor()


def _duckdb_blocks(path: str, header: list[str], block_rows: int, name: str, trim: bool = True) -> Iterator[pd.DataFrame]:
    """Exactly `block_rows` rows at a time (the last block fewer), in file order. `trim`: False when no value
    can begin or end with a space (`CsvIndex.needs_trim`): trim() of every cell was about 40% of the parse."""
    # Columns are read by position (c0, c1, ...) and named afterwards: header text never enters SQL.
    columns = {f"c{i}": "VARCHAR" for i in range(len(header))}
    cell = "nullif(trim(c{i}), '') AS c{i}" if trim else "nullif(c{i}, '') AS c{i}"
    select = ", ".join(cell.format(i=i) for i in range(len(header)))
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
                    escape = '"', comment = '', skip = 0, auto_detect = false, strict_mode = true,
                    max_line_size = $max_line_size)""",
                params={"path": path, "columns": columns, "max_line_size": 4 * MAX_RECORD_BYTES},
            ).to_arrow_reader(min(block_rows, 1 << 17))
        except (duckdb.Error, OSError) as exc:
            raise FileRefused(f"{name}: not a readable CSV file: {str(exc).splitlines()[0]}") from None
        pending: list[pa.RecordBatch] = []
        pending_rows = 0
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            except (duckdb.Error, pa.ArrowException, OSError) as exc:  # Arrow's reader raises DuckDB's errors as OSError
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
