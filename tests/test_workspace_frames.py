"""The workspace's cohort frames are held smaller than the whole read (analytics/screens/workspace.py: the
assessments without row ids and non-safety items, repeated labels as categoricals): the same rows and values,
and every cohort-wide figure computed from them is the one the whole read gives."""
from __future__ import annotations

from datetime import date

import pandas as pd
import pytest

from analytics import scales, selfreport
from analytics.access import SYSTEM, DataAccess
from analytics.screens import cohort, data as data_screen, due
from analytics.screens.workspace import LABEL_COLUMNS, Workspace, frame_assessment_columns, labels_as_categories

TODAY = date(2026, 11, 21)


@pytest.fixture(scope="module")
def both(demo_db):
    """The workspace's frames and the whole reads of the same clinic."""
    data = DataAccess(demo_db, SYSTEM)
    whole = {"patients": data.patients(), "treatments": data.treatments(), "assessments": data.assessments(),
             "attributes": data.attributes()}
    return Workspace(data).frames(), whole, data.safety_flags()


def test_the_assessments_are_the_columns_the_screens_read_with_the_same_values(both):
    held, whole, _ = both
    a = held["assessments"]
    assert list(a.columns) == frame_assessment_columns()
    assert {s.safety_column for s in scales.SCALES.values() if s.safety_column} <= set(a.columns)
    for name in LABEL_COLUMNS:
        assert isinstance(a[name].dtype, pd.CategoricalDtype)
        assert list(a[name].cat.categories) == sorted(whole["assessments"][name].dropna().unique())
    plain = a.astype({name: whole["assessments"][name].dtype for name in LABEL_COLUMNS})
    pd.testing.assert_frame_equal(plain, whole["assessments"][list(a.columns)], check_exact=True)
    for name in ("patients", "treatments", "attributes"):
        pd.testing.assert_frame_equal(held[name], whole[name], check_exact=True)


def test_a_missing_label_stays_missing_as_a_category():
    frame = pd.DataFrame({"rater": pd.Series(["self", None, "clinician", "self"], dtype="str")})
    labels_as_categories(frame, ["rater", "not_there"])
    assert list(frame["rater"].cat.categories) == ["clinician", "self"]
    assert frame["rater"].isna().tolist() == [False, True, False, False]
    assert (frame["rater"].astype("str").str.lower() == "self").tolist() == [True, False, False, True]


def test_the_cohort_wide_figures_from_the_held_frames_are_those_of_the_whole_read(both):
    held, whole, flags = both

    def figures(f):
        self_report = selfreport.due_columns(f["patients"], f["assessments"], flags, TODAY)
        return {
            "data_quality": data_screen.data_quality(f["patients"], f["treatments"], f["assessments"]),
            "completeness": cohort.completeness(f["treatments"], f["assessments"]),
            "completeness_phq9": cohort.completeness(f["treatments"], f["assessments"], "PHQ-9"),
            "self_report": self_report,
            "due": due.due_list(f["patients"], f["treatments"], f["assessments"], TODAY, self_report=self_report,
                                include_inactive=True),
            **{f"induction_{code}": cohort.induction_outcomes(f["treatments"], f["assessments"], code)
               for code in scales.codes()},
            "weekly": cohort.weekly_means(f["treatments"].groupby("patient_id")["administered_at"].min(),
                                          f["assessments"], "PHQ-9"),
        }
    mine, reference = figures(held), figures(whole)
    assert mine["data_quality"]["count"].sum() > 0 and len(mine["self_report"]) and len(mine["induction_PHQ-9"])
    for name in reference:
        pd.testing.assert_frame_equal(mine[name], reference[name], check_exact=True, obj=name)
