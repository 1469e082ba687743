"""The checks' fast paths give what the per-distinct-value paths give, on awkward cells.

`rules._plain_digits` (a column of ASCII digits, cast per row) and `rules._plain_stamps` (plain ISO dates and
date-times, computed from their bytes) stand in for `pd.to_numeric` / `pd.to_datetime` of each distinct value;
turned off, every cell goes the old way. Both ways must give the same Validated: the same clean rows and
dtypes, the same rejects, lines and reason texts.
"""
from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from analytics.ingest import rules

NOW = datetime(2026, 12, 1, 8, 0, 0)
AWKWARD_NUMBERS = ["1.0", " 2", "1e0", "abc", "", "١", "+1", ".5", "1.", "inf", "nan", "-0", "-0.0", "0x10", "1_000",
                   "007", "99999999999999999999", "9223372036854775808", "１", "²", "3 ", "-1", "2.5", "10", "1e3", None]
AWKWARD_DATES = ["2024-02-29", "2023-02-29", "2024-02-30", "2024-04-31T10:00", "1900-01-01", "1899-12-31", "0024-01-01",
                 "2199-12-31T23:59:59", "2200-01-01", "9999-12-31", "2024-01-01 10:00", "2024-01-01t10:00",
                 "2024-01-01T24:00", "2024-01-01T23:60", "2024-01-01T10:00:60", "2024-01-01T10:00:00.5",
                 "2024-01-01T10:00Z", "2024-01-01T10:00+01:00", "2024-01-01T10:00-0130", "2024-13-01", "2024-00-10",
                 "2024-01-00", "20240101", "2024-1-1", "٢٠٢٤-01-01", "２０２４-01-01", "2024/06/15", "2024-06-15T12",
                 "2024-06-15T1:30", "2024-06-15X12:30", "2026-12-01", "2026-12-02", "2026-12-01T07:59",
                 "2026-12-01T08:01", "2100-02-29", "2000-02-29", "1900-02-29", "", None]


def _trimmed(frame: pd.DataFrame) -> pd.DataFrame:
    """As the CSV reader gives a block: str columns, cells trimmed, empty ones NA, and _line."""
    out = pd.DataFrame({c: pd.Series([None if pd.isna(v) or str(v).strip() == "" else str(v).strip() for v in frame[c]],
                                     dtype="str") for c in frame.columns})
    out["_line"] = np.arange(2, len(frame) + 2, dtype="int64")
    return out


def _both_ways(monkeypatch, kind: str, frame: pd.DataFrame, trimmed: bool) -> tuple[rules.Validated, rules.Validated]:
    fast = rules.validate(kind, frame, now=NOW, trimmed=trimmed)
    with monkeypatch.context() as m:
        m.setattr(rules, "_plain_digits", lambda values: None)
        m.setattr(rules, "_plain_stamps", lambda u: (np.zeros(len(u), dtype=bool), np.zeros(len(u), dtype=np.int64)))
        slow = rules.validate(kind, frame, now=NOW, trimmed=trimmed)
    return fast, slow


def _assert_same(fast: rules.Validated, slow: rules.Validated) -> None:
    pd.testing.assert_frame_equal(fast.clean, slow.clean, check_exact=True)
    assert list(fast.clean.dtypes.astype(str)) == list(slow.clean.dtypes.astype(str))
    pd.testing.assert_frame_equal(fast.rejects, slow.rejects, check_exact=True)
    assert fast.notes == slow.notes and fast.given == slow.given


def _assessments(rng: np.random.Generator, n: int) -> pd.DataFrame:
    instrument = rng.choice(np.array(["PHQ-9", "GAD-7", "MADRS", "phq9", "bdi"], dtype=object), n)
    frame = pd.DataFrame({"patient_id": [f"P{i % 300}" for i in range(n)], "instrument": instrument,
                          "administered_on": rng.choice(np.array(AWKWARD_DATES[:-2] + ["2024-06-15", "2024-06-15T12:30"] * 60,
                                                                 dtype=object), n),
                          "rater": "self"})
    for i in range(1, 11):  # items 1-4 plain digits (the cast), the others with awkward cells (to_numeric)
        odd = AWKWARD_NUMBERS if i > 4 else ["10", "007", "99"]
        frame[f"item_{i}"] = rng.choice(np.array(["0", "1", "2", "3"] * 80 + [None] * 4 + odd, dtype=object), n)
    frame["total"] = rng.choice(np.array([None] * 300 + [str(t) for t in range(0, 30)] + AWKWARD_NUMBERS, dtype=object), n)
    return frame


@pytest.mark.parametrize("trimmed", [True, False])
def test_awkward_numbers_and_dates_give_what_the_distinct_values_give(monkeypatch, trimmed):
    rng = np.random.default_rng(11)
    raw = _assessments(rng, 3000)
    frame = _trimmed(raw) if trimmed else raw
    fast, slow = _both_ways(monkeypatch, "assessments", frame, trimmed)
    _assert_same(fast, slow)
    reasons = " ".join(fast.rejects["reason"])
    for expected in ("is not a number", "'0x10'", "'١'", "is not a valid calendar date", "is in the future",
                     "is before 1900", "is not an ISO date", "must be a whole number", "duplicate key"):
        assert expected in reasons


def test_every_cell_plain_digits_takes_the_cast_and_a_digit_column_with_one_odd_cell_does_not():
    digits = pd.Series(["0", "3", None, "007", "10"], dtype="str")
    assert rules._plain_digits(digits).tolist()[:2] == [0.0, 3.0]
    np.testing.assert_array_equal(rules._plain_digits(digits), [0, 3, np.nan, 7, 10])
    for odd in ("0x10", "+1", " 1", "١", "1.0", "", "99999999999999999999"):
        assert rules._plain_digits(pd.Series(["1", odd, "2"], dtype="str")) is None, odd
    assert rules._plain_digits(pd.Series(["1", "2"], dtype=object)) is None  # not Arrow strings
    # Arrow's own layouts: a slice (offsets not from 0), an NA slot that holds bytes, several chunks
    sliced = pa.array(["9", "12", None, "3", "4"], type=pa.large_string()).slice(1, 4)
    long = pa.array([None, "1"] * 20, type=pa.large_string())
    for start in range(0, 20):  # a validity bitmap read from a byte boundary or not
        part = pd.Series(pd.arrays.ArrowStringArray(pa.chunked_array([long.slice(start, 13)]), dtype=pd.StringDtype("pyarrow", np.nan)))
        np.testing.assert_array_equal(rules._plain_digits(part), pd.to_numeric(part).to_numpy(dtype="float64", na_value=np.nan))
    holding = pa.Array.from_buffers(pa.large_string(), 3, [pa.py_buffer(np.packbits([1, 0, 1], bitorder="little").tobytes()),
                                                           pa.py_buffer(np.array([0, 1, 2, 3], dtype=np.int64).tobytes()),
                                                           pa.py_buffer(b"152")], null_count=1)
    column = pd.Series(pd.arrays.ArrowStringArray(pa.chunked_array([sliced, holding]), dtype=pd.StringDtype("pyarrow", np.nan)))
    np.testing.assert_array_equal(rules._plain_digits(column), [12, np.nan, 3, 4, 1, np.nan, 2])
    np.testing.assert_array_equal(rules._plain_digits(column), pd.to_numeric(column).to_numpy(dtype="float64", na_value=np.nan))


def test_every_day_and_odd_time_of_some_years_gives_what_pandas_gives(monkeypatch):
    years = ["1899", "1900", "1970", "2000", "2023", "2024", "2100", "2199", "2200"]
    values = [f"{y}-{m:02d}-{d:02d}" for y in years for m in range(0, 14) for d in range(0, 33)]
    values += [f"2024-02-{d}{sep}{h:02d}:{mi:02d}" for d in (28, 29, 30) for sep in "T t" for h in (0, 23, 24, 99)
               for mi in (0, 59, 60)]
    values += [f"2024-02-29T{h:02d}:{mi:02d}:{s:02d}" for h in (0, 23, 24) for mi in (0, 59, 60) for s in (0, 59, 60, 99)]
    treatments = _trimmed(pd.DataFrame({"patient_id": [f"P{i}" for i in range(len(values))], "administered_on": values,
                                        "route": "iv", "dose_mg_per_kg": "0.5", "phase": "induction"}))
    fast, slow = _both_ways(monkeypatch, "treatments", treatments, True)
    _assert_same(fast, slow)
    assert 0 < len(fast.clean) < len(values)
    patients = _trimmed(pd.DataFrame({"patient_id": [f"P{i}" for i in range(len(values))], "site": "s", "clinician": "c",
                                      "enrolled_on": values}))
    fast, slow = _both_ways(monkeypatch, "patients", patients, True)
    _assert_same(fast, slow)
    assert "must be a date without a time" in " ".join(fast.rejects["reason"])


def test_a_key_repeated_in_another_spelling_is_a_duplicate_naming_the_first_good_line():
    frame = _trimmed(pd.DataFrame({
        "patient_id": ["P1", "P1", "P1", "P1", "P1", "P1", "P2"],
        "instrument": ["PHQ-9", "PHQ9", "GAD-7", "phq 9", "PHQ-9", "GAD-7", "PHQ-9"],
        "administered_on": ["2024-01-01T10:00", "2024-01-01 10:00:00", "2024-01-01T10:00", "2024-01-01T10:00",
                            "2024-01-02", "2024-01-01T10:00:00", "2024-01-01T10:00"],
        "rater": "self",
        **{f"item_{i}": ["1", "1", "1", "1", "1", "1", "1"] for i in range(1, 8)},
        **{f"item_{i}": ["1", "1", None, "1", "1", None, "1"] for i in range(8, 11)},
        "total": ["9", "9", "7", "9", "x", "7", "9"],
    }))
    v = rules.validate("assessments", frame, now=NOW, trimmed=True)
    shown = "patient_id, instrument, administered_on"
    assert list(zip(v.rejects["_line"], v.rejects["column"], v.rejects["reason"])) == [
        (3, "patient_id", f"duplicate key ({shown}) in this file: line 2 has the same one"),
        (5, "patient_id", f"duplicate key ({shown}) in this file: line 2 has the same one"),
        (6, "total", "total 'x' is not a number"),
        (7, "patient_id", f"duplicate key ({shown}) in this file: line 4 has the same one"),
    ]
    assert v.clean["_line"].tolist() == [2, 4, 8]
    assert v.clean["instrument"].tolist() == ["PHQ-9", "GAD-7", "PHQ-9"]


def test_a_refused_row_is_not_the_first_of_its_key():
    frame = _trimmed(pd.DataFrame({"patient_id": ["P1", "P1", "P1"], "administered_on": ["2024-01-01"] * 3,
                                   "route": ["iv", "iv", "iv"], "dose_mg_per_kg": ["9", "0.5", "0.5"]}))
    v = rules.validate("treatments", frame, now=NOW, trimmed=True)
    assert v.rejects["reason"].tolist() == ["dose_mg_per_kg must be above 0 and at most 5, got 9",
                                            "duplicate key (patient_id, administered_on) in this file: line 3 has the same one"]


@pytest.mark.parametrize("labels, codes", [
    (["a", "b"], [0, 1, -1, 1]), ([None, "b"], [0, 0, -1]), ([None, "b"], [1]), ([None], [0, -1]), (["a"], []),
    (["a", "b"], [-1, -1]), (["PHQ-9", "GAD-7", "MADRS"], [2, 2, 0]),
])
def test_labels_are_the_column_pandas_makes_of_the_object_array(labels, codes):
    codes = np.array(codes, dtype=np.int64)
    objects = np.array([labels[c] if c >= 0 else None for c in codes], dtype=object)
    expected = pd.DataFrame({"x": objects})["x"]
    made = pd.DataFrame({"x": rules._labels(codes, labels)})["x"]
    pd.testing.assert_series_equal(made, expected, check_exact=True)


def test_every_row_refused_keeps_the_columns_types_and_a_clean_frame_shares_nothing_with_the_input():
    frame = _trimmed(pd.DataFrame({"patient_id": ["P1", "P2"], "instrument": ["BDI", "BDI"],
                                   "administered_on": ["2024-01-01", "2024-01-02"], "item_1": ["1", "2"]}))
    v = rules.validate("assessments", frame, now=NOW, trimmed=True)
    assert v.clean.empty and v.clean["instrument"].dtype == object and v.clean["total_method"].dtype == object
    good = _trimmed(pd.DataFrame({"patient_id": ["P1"], "administered_on": ["2024-01-01"], "route": ["iv"]}))
    v = rules.validate("treatments", good, now=NOW, trimmed=True)
    v.clean.loc[0, "_line"] = 99
    v.clean.loc[0, "patient_id"] = "P9"
    assert good["_line"].tolist() == [2] and good["patient_id"].tolist() == ["P1"]


@pytest.mark.parametrize("rater", [["dr_a", None, "O'Brien", "dr_b"], ["'=cmd", "O'Brien", "''x", "'plain"], [None, None, None, None]])
def test_unescaping_skips_a_column_without_an_apostrophe_and_undoes_only_the_export_prefix(rater):
    chunks = pa.chunked_array([pa.array(rater[:2], type=pa.large_string()), pa.array(rater[2:], type=pa.large_string())])
    frame = pd.DataFrame({"patient_id": pd.Series(["P1", "P2", "P3", "P4"], dtype="str"),
                          "rater": pd.Series(pd.arrays.ArrowStringArray(chunks, dtype=pd.StringDtype("pyarrow", np.nan)))})
    as_objects = frame.astype({"rater": object})  # not Arrow strings: every value's start is tested
    rules.unescape_text("assessments", frame)
    rules.unescape_text("assessments", as_objects)
    expected = [None if v is None else v[1:] if v[:2] in ("'=", "''") else v for v in rater]
    assert [None if pd.isna(v) else v for v in frame["rater"]] == expected
    assert [None if pd.isna(v) else v for v in as_objects["rater"]] == expected
