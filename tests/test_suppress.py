"""Small-cell suppression: nothing under 11 shown or recoverable by subtraction."""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from analytics import suppress


def _site_table():
    return pd.DataFrame(
        {"responders": [30, 4, 25, 40], "non_responders": [20, 30, 12, 50], "n": [50, 34, 37, 90],
         "response_rate": [0.6, 4 / 34, 25 / 37, 40 / 90]},
        index=pd.Index(["a", "b", "c", "d"], name="site"),
    )


def test_small_count_is_shown_as_less_than_eleven_with_its_rate():
    out = suppress.table(_site_table(), ["responders", "non_responders"], "n", 11, row_totals=True)
    assert out.loc["b", "responders"] == "<11"
    assert out.loc["b", "response_rate"] == "<11"  # 4/34 would give the 4 back
    assert out.loc["a", "responders"] == 30 and out.loc["d", "response_rate"] == pytest.approx(40 / 90)


def test_single_suppressed_cell_gets_a_complement_in_its_row_and_column():
    hidden = suppress.mask(_site_table(), ["responders", "non_responders"], "n", 11, row_totals=True)
    # row b: responders + non_responders = n, so non_responders must go too
    assert hidden.loc["b", "non_responders"]
    # column responders: the cohort total is known, so one more (the smallest other) goes
    assert hidden["responders"].sum() >= 2 and hidden.loc["c", "responders"]
    for col in ["responders", "non_responders"]:
        assert hidden[col].sum() != 1
    for site in hidden.index:
        assert hidden.loc[site, ["responders", "non_responders"]].sum() != 1


def test_rows_from_fewer_than_eleven_patients_are_blank_entirely():
    df = pd.DataFrame({"n": [40, 7, 30], "median_weeks": [6.5, 3.0, 8.0]}, index=["x", "y", "z"])
    out = suppress.table(df, [], "n", 11)
    assert out.loc["y"].tolist() == ["<11", "<11"]
    # the n column total is known, so a second row's n is hidden as its complement
    assert (out["n"] == "<11").sum() == 2
    assert out.loc["z", "median_weeks"] == 8.0 or out.loc["x", "median_weeks"] == 6.5


def test_zero_counts_are_suppressed_too_and_threshold_is_configurable(monkeypatch):
    df = pd.DataFrame({"count": [0, 15, 20]})
    assert suppress.table(df, ["count"], min_cell=11)["count"].tolist()[0] == "<11"
    assert suppress.table(df, ["count"], min_cell=0).equals(df)
    assert suppress.table(df, ["count"], min_cell=5)["count"].tolist() == ["<5", "<5", 20]
    monkeypatch.setenv("OUTCOMES_MIN_CELL", "20")
    assert suppress.default_min_cell() == 20
    monkeypatch.setenv("OUTCOMES_MIN_CELL", "eleven")
    with pytest.raises(ValueError, match="OUTCOMES_MIN_CELL"):
        suppress.default_min_cell()


def test_total_row_is_never_used_as_a_complement():
    df = pd.DataFrame({"count": [3, 40, 50, 93]}, index=["a", "b", "c", "All"])
    hidden = suppress.mask(df, ["count"], min_cell=11, total_row="All")
    assert hidden["count"].tolist() == [True, True, False, False]


def test_blank_gives_nan_for_charts_and_single_figures():
    out = suppress.blank(_site_table(), ["responders", "non_responders"], "n", 11, row_totals=True)
    assert np.isnan(out.loc["b", "responders"]) and out.loc["a", "responders"] == 30
    assert suppress.figure(12.5, 10) == "<11" and suppress.figure(12.5, 11) == 12.5
    assert suppress.count(10) == "<11" and suppress.count(11) == 11


def test_unknown_column_is_a_clear_error():
    with pytest.raises(KeyError, match="not in the table"):
        suppress.table(_site_table(), ["nope"], "n")


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(st.integers(0, 60), min_size=2, max_size=4), min_size=2, max_size=6).filter(
    lambda rows: len({len(r) for r in rows}) == 1))
def test_no_small_cell_survives_and_no_row_or_column_has_a_lone_hidden_cell(rows):
    cols = [f"c{i}" for i in range(len(rows[0]))]
    df = pd.DataFrame(rows, columns=cols)
    df["n"] = df[cols].sum(axis=1)
    hidden = suppress.mask(df, cols, "n", 11, row_totals=True, column_totals=True)
    values = df[cols + ["n"]].to_numpy()
    shown = ~hidden[cols + ["n"]].to_numpy()
    assert not (shown & (values < 11)).any()
    for i in range(len(df)):
        assert hidden.loc[i, cols].sum() != 1
    for col in cols + ["n"]:
        assert hidden[col].sum() != 1
