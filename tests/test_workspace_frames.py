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


def test_the_clinic_model_of_a_whole_clinic_view_reads_nothing_and_is_the_model_of_the_reads(demo_db, monkeypatch):
    """A view that sees the whole clinic hands the clinic's model its frames and its cycle table (no second
    read, no second cycle table): the course, the scores it is fitted to, the latest activity and the cycles
    equal those of a model built from the system scope's reads."""
    from analytics import intervals
    from analytics.screens import workspace

    intervals.forget_fits()
    monkeypatch.setattr(workspace, "_WHOLE_CLINIC", {})
    system = DataAccess(demo_db, SYSTEM)
    read = intervals.clinic_model(system, "PHQ-9")  # (fitted only when its model is asked for)
    intervals.forget_fits()

    ws = Workspace(DataAccess(demo_db, SYSTEM))
    ws.frames()
    cycles = ws.cycles("PHQ-9")
    held = workspace.whole_clinic_data(system)
    assert isinstance(held, workspace.HeldClinicData)
    pd.testing.assert_series_equal(held.last_assessed(), system.last_assessed(), check_exact=True)
    columns = ["patient_id", "instrument", "administered_at", "total"]
    mine, theirs = held.assessments(instrument="PHQ-9", columns=columns), system.assessments(instrument="PHQ-9", columns=columns)
    pd.testing.assert_frame_equal(mine.astype({"instrument": theirs["instrument"].dtype}), theirs, check_exact=True)

    def no_read(*args, **kwargs):
        raise AssertionError("the whole clinic was read again")
    for name in ("patients", "treatments", "assessments", "attributes", "last_assessed"):
        monkeypatch.setattr(DataAccess, name, no_read)
    model = ws.clinic("PHQ-9")
    assert model is intervals.clinic_model(system, "PHQ-9")  # the suggestions' model too (interval_suggestions)
    assert model.cycles is cycles  # the view's own table, not a copy
    pd.testing.assert_frame_equal(model.scores, read.scores, check_exact=True)
    pd.testing.assert_series_equal(model.last_activity, read.last_activity, check_exact=True)
    pd.testing.assert_frame_equal(model.course.infusions, read.course.infusions, check_exact=True)
    pd.testing.assert_frame_equal(model.course.scores, read.course.scores, check_exact=True)
    # the view's table holds its labels as categoricals (workspace.cycle_labels_as_categories): the same values
    pd.testing.assert_frame_equal(workspace.categories_as_text(model.cycles.drop(columns="length_days")), read.cycles,
                                  check_exact=True)
    intervals.forget_fits()


def test_a_caseload_view_never_stands_in_for_the_whole_clinic(demo_db, monkeypatch):
    from analytics.access import Scope
    from analytics.screens import workspace

    monkeypatch.setattr(workspace, "_WHOLE_CLINIC", {})
    patients = DataAccess(demo_db, SYSTEM).patients()
    clinician = Scope("c", "clinician", clinician=str(patients["clinician"].iloc[0]))
    Workspace(DataAccess(demo_db, clinician)).frames()
    system = DataAccess(demo_db, SYSTEM)
    assert workspace.whole_clinic_data(system) is system
    director = Scope("d", "director", patient_level=False, identifiable=False)
    Workspace(DataAccess(demo_db, director)).frames()  # every patient, but identifying attributes withheld
    assert workspace.whole_clinic_data(system) is system


def test_arrow_labels_become_the_categoricals_python_labels_do():
    values = ["self", None, "clinician", "Self", "self", "ärzt", "clinician"]
    arrow = pd.DataFrame({"rater": pd.Series(values, dtype="str")})
    python = pd.DataFrame({"rater": pd.Series(values, dtype=object)})
    labels_as_categories(arrow, ["rater"])
    labels_as_categories(python, ["rater"])
    pd.testing.assert_frame_equal(arrow, python, check_exact=True)
    pd.testing.assert_index_equal(arrow["rater"].cat.categories, pd.Index(["Self", "clinician", "self", "ärzt"]),
                                  exact=True)
