"""The workspace's cycle table holds its repeated text (how a cycle ended, phase, route, start, instrument, each
patient's covariates) as categoricals (analytics/screens/workspace.cycle_labels_as_categories): the same values as
the text table the course gives, and every reader of those columns gives what it gave on the text table: the
durability curves and their small-cell rules by every subgroup, on the whole table and on a part of it, the
covariate model, the clinic's suggestions, and the patient screen, which shows its rows as text."""
from __future__ import annotations

import math
from datetime import date

import numpy as np
import pandas as pd
import pytest

from analytics import course, intervals
from analytics.access import SYSTEM, DataAccess
from analytics.durability import cohort_durability, durability_model
from analytics.screens import durability as durability_screen, patient
from analytics.screens.workspace import Workspace, categories_as_text, cycle_labels_as_categories

TODAY = date(2026, 11, 21)


@pytest.fixture(scope="module")
def tables(demo_db):
    """The workspace's cycle table and the text table the course gives for the same frames."""
    ws = Workspace(DataAccess(demo_db, SYSTEM))
    f = ws.frames()
    built = course.build_course(f["treatments"], f["assessments"], "PHQ-9", columns=course.CYCLE_COLUMNS_READ)
    text = course.cycles_from_course(built, f["patients"], f["attributes"])
    text["length_days"] = np.where(text["event"], text["right_days"], text["left_days"])
    return ws, ws.cycles("PHQ-9"), text


def _same(a, b, where="result"):
    """Exactly the same result: dicts, lists, arrays, frames and numbers, NaN equal to NaN."""
    if isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b, check_exact=True, obj=where)
    elif isinstance(a, pd.Series):
        pd.testing.assert_series_equal(a, b, check_exact=True, obj=where)
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b, err_msg=where)
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            _same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), where
    else:
        assert a == b and type(a) is type(b), (where, a, b)


def test_the_cycle_table_holds_its_labels_as_categories_of_the_same_values(tables):
    _, held, text = tables
    labels = [c for c in text.columns if c != "patient_id" and isinstance(text[c].dtype, pd.StringDtype)]
    assert {"censor_reason", "phase", "route", "site", "sex", "baseline_band"} <= set(labels)
    for name in labels:
        assert isinstance(held[name].dtype, pd.CategoricalDtype), name
        assert list(held[name].cat.categories) == sorted(text[name].dropna().unique()), name
    assert held["patient_id"].dtype == text["patient_id"].dtype  # joined, searched, listed by id: text
    pd.testing.assert_frame_equal(categories_as_text(held), text, check_exact=True)
    empty = text.iloc[:0].copy()
    cycle_labels_as_categories(empty)
    pd.testing.assert_frame_equal(empty, text.iloc[:0])  # an empty table keeps its column types


def test_a_table_made_with_its_labels_as_categoricals_is_the_text_table_made_so(tables):
    """course.cycles_from_course(labels_as_categoricals=True) makes each patient's text covariates categoricals
    before taking them for every cycle: the same frame as the text table's labels made categoricals after."""
    ws, _, _ = tables
    f = ws.frames()
    built = course.build_course(f["treatments"], f["assessments"], "PHQ-9", columns=course.CYCLE_COLUMNS_READ)
    patients = f["patients"].copy()
    # a site only patients without a cycle have (never in response): not a category of the cycles
    cycled = set(course.cycles_from_course(built)["patient_id"])
    uncycled = [p for p in built.baselines["patient_id"].astype(str) if p not in cycled]
    assert uncycled
    patients["site"] = patients["site"].where(~patients["patient_id"].astype(str).isin(uncycled[:3]), "Only uncycled")
    for attributes in (f["attributes"], None):
        text = course.cycles_from_course(built, patients, attributes)
        cycle_labels_as_categories(text)
        made = course.cycles_from_course(built, patients, attributes, labels_as_categoricals=True)
        pd.testing.assert_frame_equal(made, text, check_exact=True)
        assert "Only uncycled" not in list(made["site"].cat.categories)
    none = course.build_course(f["treatments"].iloc[:0], f["assessments"].iloc[:0], "PHQ-9")
    pd.testing.assert_frame_equal(course.cycles_from_course(none, patients, f["attributes"], labels_as_categoricals=True),
                                  course.cycles_from_course(none, patients, f["attributes"]), check_exact=True)


@pytest.mark.parametrize("part", ["whole", "one site"])
def test_durability_by_text_subgroups_and_its_small_cells_are_those_of_the_text_table(tables, part):
    _, held, text = tables
    if part == "one site":  # a part of the table: categories it no longer has are no groups
        site = text["site"].dropna().iloc[0]
        held, text = held[held["site"] == site], text[text["site"] == site]
        assert held["site"].cat.categories.size > 1
    # the subgroups of text (the others are numbers or yes/no, held as they were)
    for by in ("site", "route") if part == "whole" else ("site",):
        mine, theirs = (cohort_durability(c, instrument="PHQ-9", by=by, n_boot=0) for c in (held, text))
        _same(mine, theirs, by)
        assert list(durability_screen.group_keys(held, by)) == list(durability_screen.group_keys(text, by))
        for min_cell in (0, 11):
            assert durability_screen.shown_groups(mine, held, by, min_cell) == \
                durability_screen.shown_groups(theirs, text, by, min_cell)
            _same(durability_screen.survival_curves(mine, held, by, min_cell),
                  durability_screen.survival_curves(theirs, text, by, min_cell), f"curves {by}")
            _same(durability_screen.durability_table(mine, held, by, min_cell),
                  durability_screen.durability_table(theirs, text, by, min_cell), f"table {by}")
    if part == "one site":
        assert list(mine["groups"]) == [site]  # the other sites' categories: no empty groups


def test_the_covariate_model_and_its_hidden_terms_are_those_of_the_text_table(tables):
    _, held, text = tables
    for covariates in (["site"], ["sex", "baseline_band"], ["diagnosis", "route", "phase", "has_anxiety"]):
        mine, theirs = durability_model(held, covariates), durability_model(text, covariates)
        _same(mine, theirs, str(covariates))
        for term in mine["terms"]:
            assert durability_screen._term_groups_ok(held, term, 11) == durability_screen._term_groups_ok(text, term, 11)


def test_the_suggestions_are_those_of_the_text_table(tables):
    ws, held, text = tables
    intervals.forget_fits()
    cm = intervals.fit_clinic_model(ws.frames(), "PHQ-9", cycles=text)  # the fit reads the course, not the cycles
    kwargs = dict(today=TODAY, target=0.8, last_activity=cm.last_activity, instrument="PHQ-9", read_scores=cm.scores)
    _same(intervals.suggest_intervals(cm.model, cm.course, held, **kwargs),
          intervals.suggest_intervals(cm.model, cm.course, text, **kwargs))


def test_the_patient_screen_shows_its_cycles_as_text(tables):
    ws, held, text = tables
    pid = text.loc[text["censor_reason"] == "loss", "patient_id"].iloc[0]
    screen = patient.patient_screen(ws, pid, TODAY)
    pd.testing.assert_frame_equal(screen.cycles, text[text["patient_id"] == pid], check_exact=True)
    pd.testing.assert_frame_equal(screen.cycle_rows, patient.cycle_rows(text[text["patient_id"] == pid]),
                                  check_exact=True)
