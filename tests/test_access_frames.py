"""The cohort frames the pages load are fetched through Arrow and sorted there (less memory at scale):
they must be exactly what the ordered SQL read gave before (rows, order, dtypes), so no caller changes."""
from __future__ import annotations

import pandas as pd
import pytest

from analytics import store
from analytics.access import DataAccess, Scope, SYSTEM
from fixtures import assessment, make_db, patient, treatment

pytestmark = pytest.mark.usefixtures("backend")  # every test on a DuckDB file and on PostgreSQL


def ordered_read(db, sql: str, params) -> pd.DataFrame:
    """The reference: DuckDB's own ORDER BY and DataFrame conversion."""
    with store.connect(db) as con:
        return con.execute(sql, list(params)).df()


def references(data: DataAccess) -> dict[str, pd.DataFrame]:
    scope_sql, scope_params = data._scope_sql("p")
    clause, params = data._patient_filter(None)
    return {
        "patients": ordered_read(data.db, f"""SELECT p.patient_id, p.site, p.clinician, p.birth_year, p.sex, p.diagnosis,
                   p.comorbidities, p.prior_failed_trials, p.enrolled_on
                   FROM patients p WHERE {scope_sql} ORDER BY p.patient_id""", scope_params),
        "attributes": ordered_read(data.db, f"""SELECT x.patient_id, x.name, x.value FROM patient_attributes x
                   WHERE {clause} ORDER BY 1, 2""", params),
        "treatments": ordered_read(data.db, *data._treatments_sql(None)),
        "assessments": ordered_read(data.db, *data._assessments_sql(None, None)),
    }


def loaded(data: DataAccess) -> dict[str, pd.DataFrame]:
    return {"patients": data.patients(), "attributes": data.attributes(), "treatments": data.treatments(),
            "assessments": data.assessments()}


@pytest.fixture()
def db(tmp_path):
    # Inserted out of order, with NULLs in some integer and text columns and none in others.
    return make_db(
        tmp_path,
        patients=[patient("P3", birth_year=None, sex="", support_system="good"), patient("P1", clinician="dr_b"),
                  patient("P2", prior_failed_trials=None, stress_level="high")],
        treatments=[treatment("P3", "2024-02-01"), treatment("P1", "2024-01-10T14:30", phase="induction"),
                    treatment("P1", "2024-01-03", dose_mg_per_kg=None)],
        assessments=[assessment("P2", "PHQ-9", "2024-01-05", items=[1] * 9),
                     assessment("P1", "PHQ-9", "2024-01-10", items=[2] * 9),
                     assessment("P1", "GAD-7", "2024-01-10", items=[1] * 7, rater="dr_b"),
                     assessment("P1", "MADRS", "2024-01-02", total=30)],
    )


@pytest.mark.parametrize("scope", [SYSTEM, Scope("b", "clinician", clinician="dr_b")], ids=["system", "clinician"])
def test_frames_equal_the_ordered_sql_read(db, scope):
    data = DataAccess(db, scope)
    got, expected = loaded(data), references(data)
    for name in expected:
        # DuckDB gives an empty text column dtype object; the Arrow read keeps it str, as when it has rows.
        pd.testing.assert_frame_equal(got[name], expected[name], check_exact=True, obj=name,
                                      check_dtype=not expected[name].empty)
    if scope is SYSTEM:
        assert got["assessments"]["patient_id"].tolist() == ["P1", "P1", "P1", "P2"]
        assert got["assessments"]["instrument"].tolist() == ["MADRS", "GAD-7", "PHQ-9", "PHQ-9"]


def test_frames_of_an_empty_database_keep_their_columns_and_dtypes(tmp_path):
    data = DataAccess(make_db(tmp_path), SYSTEM)
    got, expected = loaded(data), references(data)
    for name in expected:
        assert got[name].empty and got[name].columns.tolist() == expected[name].columns.tolist()
        text = [c for c in ("patient_id", "name", "instrument", "route") if c in got[name].columns]
        assert all(got[name][c].dtype == "str" for c in text)


@pytest.mark.parametrize("scope", [SYSTEM, Scope("b", "clinician", clinician="dr_b")], ids=["system", "clinician"])
def test_last_assessed_is_each_patients_latest_assessment_of_any_instrument(db, scope):
    # What the clinic model reads instead of every instrument's rows (intervals.clinic_model)
    data = DataAccess(db, scope)
    every = data.assessments()
    expected = every.groupby(every["patient_id"].astype(str))["administered_at"].max()
    got = data.last_assessed()
    assert got.index.tolist() == expected.index.tolist()
    assert got.tolist() == expected.tolist()
    if scope is SYSTEM:
        assert got["P1"] == pd.Timestamp("2024-01-10")  # the later of P1's PHQ-9/GAD-7 and MADRS


@pytest.mark.parametrize("instrument", [None, "PHQ-9"])
def test_a_read_of_some_columns_is_those_columns_of_the_whole_read(db, instrument):
    # What the clinic model reads for its course (intervals.clinic_model): same rows, order and dtypes
    from analytics import course

    data = DataAccess(db, SYSTEM)
    wanted = course.assessment_columns("PHQ-9")
    whole = data.assessments(instrument=instrument)
    got = data.assessments(instrument=instrument, columns=wanted)
    assert got.columns.tolist() == [c for c in whole.columns if c in wanted]
    pd.testing.assert_frame_equal(got, whole[got.columns], check_exact=True)
    with pytest.raises(ValueError):
        data.assessments(columns=["total", "1; DROP TABLE assessments"])
