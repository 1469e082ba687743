"""The CSV scan's line descriptions (`csv._lines`) wherever the reading chunks end.

A chunk without quotes takes a shorter path (per-line comma counts, no list of every comma) than one with
quotes; the two must describe every line the same, and both must agree with a straightforward reading of
the bytes (split at newlines, count per line) for what such a reading can tell: where lines begin and end,
their commas, odd quotes, CRLF ends, control characters, the sha256, and which line is not UTF-8.
"""
from __future__ import annotations

import hashlib
import os
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from analytics.ingest import csv as ingest_csv
from test_ingest import ASSESSMENTS_HEADER, phq

FIELDS = ("starts", "stops", "flags", "fields", "commas", "tail")
CHUNKS = [1, 2, 3, 5, 7, 8, 9, 16, 64, 4096]
# Pieces real damage is made of: quotes (doubled, stray), commas, every line end, a BOM, controls, spaces,
# multi-byte UTF-8 (2, 3 and 4 bytes; NEL is a C1 control), and bytes that are not UTF-8.
ATOMS = [b"a", b"P1", b"1", b",", b",", b",", b'"', b'""', b"\n", b"\r\n", b"\r", b" ", b"\t", b"\x00", b"\x7f",
         "é".encode(), "\u0085".encode(), "\u3000".encode(), "😀".encode(), b"\xef\xbb\xbf", b"\xff", b"\xc3"]


def describe(path, chunk_bytes: int, *, exact_only: bool = False):
    """`_lines` of a file with this chunk size (and every chunk on the quote-aware path when `exact_only`)."""
    default = ingest_csv.CHUNK_BYTES, ingest_csv._EXACT_ONLY
    ingest_csv.CHUNK_BYTES, ingest_csv._EXACT_ONLY = chunk_bytes, exact_only
    try:
        sha, bom, lines, trim = ingest_csv._lines(path)
    except ingest_csv.FileRefused as exc:
        return ("refused", str(exc))
    finally:
        ingest_csv.CHUNK_BYTES, ingest_csv._EXACT_ONLY = default
    return ("read", sha, bom, trim, {f: (str(getattr(lines, f).dtype), getattr(lines, f).tolist()) for f in FIELDS})


def straightforward(data: bytes, chunk_bytes: int = ingest_csv.CHUNK_BYTES) -> dict:
    """Each line read on its own in Python: what a plain split can tell (no quote roles). (A BOM is looked
    for in the first chunk: one of 1 or 2 bytes, as only tests make, cannot hold it.)"""
    bom = 3 if data.startswith(b"\xef\xbb\xbf") and chunk_bytes >= 3 else 0
    starts, stops, commas, odd, cr, control = [], [], [], [], [], []
    start = bom
    lone_cr = {m.start() for m in re.finditer(rb"\r(?!\n|\Z)", data)}
    for stop in [i for i, b in enumerate(data) if b == 10] + ([len(data)] if not data.endswith(b"\n") else []):
        if stop == start == len(data) and data:
            break
        line = data[start:stop]
        starts.append(start)
        stops.append(stop)
        commas.append(line.count(b","))
        odd.append(line.count(b'"') % 2 == 1)
        cr.append(line.endswith(b"\r"))
        control.append(bool(re.search(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\xc2[\x80-\x9f]", line))
                       or any(start <= i < stop for i in lone_cr))
        start = stop + 1
    return {"sha256": hashlib.sha256(data).hexdigest(), "bom": bom, "starts": starts, "stops": stops,
            "commas": commas, "odd": odd, "cr": cr, "control": control}


def not_utf8_line(data: bytes) -> int | None:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return data[:exc.start].count(b"\n") + 1
    return None


def check_against_straightforward(data: bytes, described, chunk_bytes: int) -> None:
    bad_line = not_utf8_line(data)
    if described[0] == "refused":
        reason = described[1]
        if bad_line is not None and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
            assert f": line {bad_line}: the file is not UTF-8 text" in reason
        else:
            assert bad_line is not None or "is empty" in reason or "UTF-16" in reason, reason
        return
    assert bad_line is None
    _, sha, bom, _, lines = described
    plain = straightforward(data, chunk_bytes)
    assert (sha, bom) == (plain["sha256"], plain["bom"])
    assert lines["starts"][1] == plain["starts"] and lines["stops"][1] == plain["stops"]
    assert lines["commas"][1] == plain["commas"]
    flags = np.array(lines["flags"][1], dtype=np.uint8)
    assert ((flags & ingest_csv.ODD_QUOTES) != 0).tolist() == plain["odd"]
    assert ((flags & ingest_csv.ENDS_WITH_CR) != 0).tolist() == plain["cr"]
    assert ((flags & ingest_csv.CONTROL) != 0).tolist() == plain["control"]
    if b'"' not in data:  # no quotes: every comma separates fields, and all come after the last (no) quote
        assert lines["fields"][1] == [c + 1 for c in plain["commas"]]
        assert lines["tail"][1] == plain["commas"]
    assert [d for d, _ in lines.values()] == ["int64", "int64", "uint8", "int32", "int32", "int32"]


def rows_with_quotes_here_and_there(seed: int) -> bytes:
    """Assessment rows, a few with quoted values (a line break, a comma, doubled quotes) among plain ones,
    so that small chunks without quotes follow chunks with quoted commas and open values."""
    rng = np.random.default_rng(seed)
    rows = [ASSESSMENTS_HEADER]
    for i in range(12):
        row = phq(f"P{i}", f"2024-01-{i + 1:02d}", [i % 4] * 9)
        pick = rng.integers(6)
        if pick == 0:
            row = row.replace(",self,", ',"Dr A, MD",')
        elif pick == 1:
            row = row.replace(",self,", ',"Dr A\nsecond line",')
        elif pick == 2:
            row = row.replace(",self,", ',"say ""hi""",')
        rows.append(row)
    return ("\n".join(rows) + "\n").encode()


CRAFTED = [
    b"a,b\n" + b'"x,\ny",1\n' * 3,                                 # a quoted line break and comma across edges
    b"a,b\r\nc,d\r\n\r\ne,f",                                      # CRLF (split across chunks), no last newline
    b"\xef\xbb\xbfa,b\n1,2\n",                                     # a BOM split across chunks of 1 or 2 bytes
    "a,b\né,😀\n\u3000,\u0085\n".encode(),                         # multi-byte characters split across chunks
    b"a,b\n1,2\n" * 3 + b"3,\xff\n4,5\n",                          # not UTF-8 in a later chunk: its line named
    b"a,b\n1,\xc3",                                                # a character cut by the end of the file
    b"a,b\n1,\xc3\n",                                              # ... by its line's end
    b'a,b\n"1\n2,3\n4",5\n6,7\n',                                  # a value left open for lines, commas inside
    b'a,b\nx"y,1\n"",2\n"a""b",3\n',                               # stray, empty and doubled quotes
    b"a,b\r1,2\r\n3\x004,5\n\x7f,\n",                              # a lone CR, NUL, DEL
    b"\n\n \n",                                                    # no text
    rows_with_quotes_here_and_there(1),
    rows_with_quotes_here_and_there(2),
]


@pytest.mark.parametrize("chunk_bytes", CHUNKS)
@pytest.mark.parametrize("data", CRAFTED, ids=range(len(CRAFTED)))
def test_crafted_files_are_described_the_same_on_both_paths_and_as_read_line_by_line(tmp_path, data, chunk_bytes):
    path = tmp_path / "a.csv"
    path.write_bytes(data)
    described = describe(path, chunk_bytes)
    assert described == describe(path, chunk_bytes, exact_only=True)
    check_against_straightforward(data, described, chunk_bytes)


@settings(max_examples=int(os.environ.get("INGEST_PROPERTY_EXAMPLES", 60)), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(ATOMS), max_size=120), st.sampled_from(CHUNKS))
@example([b'"', b",", b"\n", b",", b",", b"\n", b'"', b",", b"\n"], 3)
def test_any_bytes_are_described_the_same_on_both_paths_and_as_read_line_by_line(tmp_path, atoms, chunk_bytes):
    data = b"".join(atoms)
    path = tmp_path / "a.csv"
    path.write_bytes(data)
    described = describe(path, chunk_bytes)
    assert described == describe(path, chunk_bytes, exact_only=True)
    check_against_straightforward(data, described, chunk_bytes)


@pytest.mark.parametrize("told", [0, 5, 100])
def test_a_file_longer_than_its_size_when_opened_is_read_whole(tmp_path, monkeypatch, told):
    """The window and the line arrays are sized from the file's size; a file that grows while it is read
    (or a size the system gets wrong) still gets every byte read, in the same chunks."""
    data = rows_with_quotes_here_and_there(3)
    path = tmp_path / "a.csv"
    path.write_bytes(data)
    expected = describe(path, 7)
    real = os.fstat

    class Told:
        def __init__(self, fd):
            self.st_size = told if fd == opened[-1] else real(fd).st_size

    opened: list[int] = []
    real_open = open

    def open_and_note(*args, **kwargs):
        handle = real_open(*args, **kwargs)
        opened.append(handle.fileno())
        return handle

    monkeypatch.setattr(ingest_csv, "open", open_and_note, raising=False)
    monkeypatch.setattr(ingest_csv.os, "fstat", Told)
    assert describe(path, 7) == expected
    assert describe(path, 4096) == describe(path, 4096, exact_only=True)


def test_every_row_good_gives_each_row_its_own_line_span(tmp_path):
    """A file whose every line after the header is a good row keeps the lines' spans as they are."""
    rows = [phq("P1", f"2024-01-{d:02d}", [d % 4] * 9) for d in range(1, 8)]
    data = ("\r\n".join([ASSESSMENTS_HEADER, *rows]) + "\r\n").encode()
    path = tmp_path / "a.csv"
    path.write_bytes(data)

    index = ingest_csv.scan_csv(path)

    plain = straightforward(data)
    assert index.good_lines.tolist() == list(range(2, 9))
    assert index._good_starts.tolist() == plain["starts"][1:] and index._good_stops.tolist() == plain["stops"][1:]
    assert index.raw_lines([2, 8]) == rows[:1] + rows[-1:]
