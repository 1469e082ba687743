"""The patient page computes a patient's status from that patient's rows alone; the cohort
views compute everyone's at once. Both must say the same about each patient."""
from __future__ import annotations

import pandas as pd
import pytest

from analytics import outcomes
from analytics.access import DataAccess


@pytest.mark.parametrize("instrument", ["PHQ-9", "MADRS", "GAD-7"])
def test_one_patients_status_is_their_row_of_the_cohorts(demo_db, instrument):
    data = DataAccess(demo_db)
    treatments, assessments = data.treatments(), data.assessments()
    cohort = outcomes.patient_status(treatments, assessments, instrument).set_index("patient_id")
    assert cohort["alert"].any() and not cohort["alert"].all()  # the demo holds both kinds
    for pid in cohort.index[:: max(1, len(cohort) // 25)]:
        alone = outcomes.patient_status(treatments[treatments["patient_id"] == pid],
                                        assessments[assessments["patient_id"] == pid], instrument)
        assert alone["patient_id"].tolist() == [pid]
        pd.testing.assert_series_equal(alone.set_index("patient_id").iloc[0], cohort.loc[pid], check_names=False)


def test_a_patient_without_infusions_has_no_status(demo_db):
    data = DataAccess(demo_db)
    pid = data.patients()["patient_id"].iloc[0]
    status = outcomes.patient_status(data.treatments().iloc[:0], data.assessments([pid]), "PHQ-9")
    assert status.empty and "alert_reasons" in status.columns
