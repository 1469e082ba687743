"""Maintenance schedules compared on the demo generator."""
import numpy as np
import pandas as pd
import pytest

from analytics import schedules, simulate


@pytest.fixture(scope="module")
def prior():
    return schedules.cohort_prior(1500, seed=101)


# the targets at which the personalised schedule beats each fixed one on this simulator (docs/schedules.md)
@pytest.mark.parametrize("fixed, target", [(simulate.Fixed(21, rescue=True), 0.85), (simulate.Fixed(21), 0.8)])
def test_personalised_beats_everyone_every_three_weeks(prior, fixed, target):
    """Fewer infusions per patient-year AND fewer days out of response (same patients, same durations)."""
    base = simulate.evaluate_policy(fixed, n_patients=1500, seed=2)
    mine = simulate.evaluate_policy(schedules.personalised_policy(prior, target), n_patients=1500, seed=2)
    assert mine["patients_maintained"] == base["patients_maintained"] > 100
    assert mine["infusions_per_patient_year"] < base["infusions_per_patient_year"]
    assert mine["share_days_out_of_response"] < base["share_days_out_of_response"]


def test_a_stricter_target_buys_fewer_days_out_with_more_infusions(prior):
    loose = simulate.evaluate_policy(schedules.personalised_policy(prior, 0.75), n_patients=800, seed=3)
    strict = simulate.evaluate_policy(schedules.personalised_policy(prior, 0.9), n_patients=800, seed=3)
    assert strict["infusions_per_patient_year"] > loose["infusions_per_patient_year"]
    assert strict["share_days_out_of_response"] < loose["share_days_out_of_response"]
