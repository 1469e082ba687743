"""Estimators recover known truth from simulated interval-censored cycles.

Inspection schedules are random (gap drawn per cycle from 7-28 days, random first
assessment), censoring is random, so the loss of response is only known to lie
between two assessments, as in the clinic.
"""
import numpy as np
import pandas as pd
import pytest

from analytics.durability import turnbull, weibull_aft
from analytics.durability.bootstrap import cluster_bootstrap_turnbull
from analytics.durability.ictest import finkelstein_scores, robust_score_test
from oracles.frailty import fit_weibull_frailty, patient_durability
from oracles.km import kaplan_meier
from oracles.synthetic import simulate_cycles

SHAPE, SCALE = 1.5, 35.0
TRUE_MEDIAN = SCALE * np.log(2) ** (1 / SHAPE)


def test_weibull_fit_recovers_shape_scale_and_median():
    d = simulate_cycles(800, seed=11, shape=SHAPE, scale=SCALE, mean_cycles=1)
    fit = weibull_aft(d.left_days, d.right_days)
    assert fit.shape[0] == pytest.approx(SHAPE, abs=0.15)
    assert np.exp(fit.coef[0]) == pytest.approx(SCALE, rel=0.06)
    assert fit.quantile(0.5) == pytest.approx(TRUE_MEDIAN, rel=0.06)


def test_weibull_confidence_intervals_cover_at_about_95_percent():
    covered_scale = covered_shape = 0
    reps = 40
    for seed in range(reps):
        d = simulate_cycles(250, seed=100 + seed, shape=SHAPE, scale=SCALE, mean_cycles=1)
        fit = weibull_aft(d.left_days, d.right_days)
        b, se = fit.coef[0], fit.se[0]
        covered_scale += abs(b - np.log(SCALE)) <= 1.96 * se
        ls, se_ls = fit.log_sigma[0], fit.se[1]
        covered_shape += abs(ls - np.log(1 / SHAPE)) <= 1.96 * se_ls
    # 95% nominal: expected 38 of 40; 33 or fewer would be a 3.6-SD shortfall
    assert covered_scale >= 34
    assert covered_shape >= 34


def test_turnbull_median_is_unbiased_where_right_end_dating_is_not():
    d = simulate_cycles(4000, seed=5, shape=SHAPE, scale=SCALE, mean_cycles=1, gaps=(28,))
    npmle = turnbull(d.left_days, d.right_days)
    assert npmle.median == pytest.approx(TRUE_MEDIAN, abs=2.0)
    # dating each loss at the later assessment (plain KM on right_days) overshoots,
    # by about half the 28-day gap
    right_dated = np.where(d.event, d.right_days, d.left_days)
    km = kaplan_meier(right_dated, d.event)
    assert km.median - TRUE_MEDIAN > 7.0


def test_cluster_bootstrap_median_ci_covers_truth():
    """Patients differ (log-normal frailty, tau = 0.5), so cycles are correlated."""
    tau = 0.5
    big = simulate_cycles(50000, seed=999, shape=SHAPE, scale=SCALE, tau=tau, return_truth=True)
    true_median = float(np.median(big.true_days))
    reps, covered = 25, 0
    for seed in range(reps):
        d = simulate_cycles(120, seed=seed, shape=SHAPE, scale=SCALE, tau=tau)
        bt = cluster_bootstrap_turnbull(d.left_days, d.right_days, d.patient_id, n_boot=100, seed=seed)
        lo, hi = bt.quantile_ci[0.5]
        covered += lo is not None and hi is not None and lo <= true_median <= hi
    # nominal 95%: expected ~24 of 25; 20 or fewer is very unlikely if the CI is right
    assert covered >= 21


def test_robust_group_test_holds_its_level_with_correlated_cycles():
    rejections = 0
    reps = 40
    for seed in range(reps):
        d = simulate_cycles(150, seed=500 + seed, tau=0.6, mean_cycles=4)
        scores = finkelstein_scores(d.left_days, d.right_days)
        p = robust_score_test(scores, d.site, d.patient_id)["p"]
        rejections += p < 0.05
    assert rejections <= 6          # expected 2 of 40 at the 5% level


def test_robust_group_test_detects_a_real_difference():
    d = simulate_cycles(200, seed=3, tau=0.3, severe_time_ratio=0.5)
    scores = finkelstein_scores(d.left_days, d.right_days)
    assert robust_score_test(scores, d.baseline_band, d.patient_id)["p"] < 1e-4


# ---------------------------------------------------------------- frailty / per-patient
@pytest.fixture(scope="module")
def cohort_fit():
    d = simulate_cycles(1500, seed=3, tau=0.5, shape=SHAPE, scale=SCALE, mean_cycles=4)
    return fit_weibull_frailty(d)


def test_frailty_fit_recovers_population_parameters(cohort_fit):
    assert cohort_fit.tau == pytest.approx(0.5, abs=0.08)
    assert 1 / cohort_fit.sigma == pytest.approx(SHAPE, abs=0.12)
    assert cohort_fit.coef[0] == pytest.approx(np.log(SCALE), abs=0.06)


@pytest.mark.parametrize("shift", [-0.7, 0.0, 0.7])
def test_patient_with_many_cycles_recovers_own_scale(cohort_fit, shift):
    own = simulate_cycles(1, seed=int(10 * (shift + 1)), shape=SHAPE, scale=SCALE * np.exp(shift),
                          mean_cycles=40, censor_days=(150, 200))
    assert len(own) >= 25
    pdur = patient_durability(cohort_fit, own)
    assert pdur.posterior_mean_log_scale == pytest.approx(np.log(SCALE) + shift, abs=0.2)
    assert pdur.weight_personal > 0.85
    point, lo, hi = pdur.time_at_survival(0.5, interval=0.8)
    own_median = SCALE * np.exp(shift) * np.log(2) ** (1 / SHAPE)
    assert lo < point < hi
    assert lo * 0.9 < own_median < hi * 1.1


def test_patient_without_cycles_gets_the_cohort_curve(cohort_fit):
    empty = pd.DataFrame(columns=["patient_id", "left_days", "right_days"])
    pdur = patient_durability(cohort_fit, empty)
    t = np.array([5.0, 20.0, 40.0, 90.0])
    np.testing.assert_allclose(pdur.survival(t), cohort_fit.marginal_survival(t), atol=1e-4)
    assert pdur.weight_personal == 0.0
    assert (pdur.n_cycles, pdur.n_events) == (0, 0)


def test_few_cycles_are_shrunk_toward_the_cohort(cohort_fit):
    """One short cycle: the estimate moves toward short, but much less than the data alone say."""
    one = pd.DataFrame({"patient_id": ["A"], "left_days": [3.0], "right_days": [7.0]})
    pdur = patient_durability(cohort_fit, one)
    cohort_log_scale = cohort_fit.coef[0]
    assert np.log(5.0) < pdur.posterior_mean_log_scale < cohort_log_scale
    assert 0.0 < pdur.weight_personal < 0.6
    more = pd.concat([one] * 6, ignore_index=True)
    assert patient_durability(cohort_fit, more).weight_personal > pdur.weight_personal


def test_right_censored_cycles_move_the_estimate_up(cohort_fit):
    long = pd.DataFrame({"patient_id": ["B"] * 3, "left_days": [80.0, 90.0, 85.0], "right_days": [np.inf] * 3})
    pdur = patient_durability(cohort_fit, long)
    assert pdur.posterior_mean_log_scale > cohort_fit.coef[0]
    assert pdur.n_events == 0 and pdur.n_cycles == 3


def test_frailty_fit_with_a_covariate_and_patient_placement():
    d = simulate_cycles(1200, seed=8, tau=0.4, severe_time_ratio=0.5, mean_cycles=3)
    d["severe"] = (d.baseline_band == "severe").astype(float)
    fit = fit_weibull_frailty(d, ["severe"])
    assert np.exp(fit.coef[1]) == pytest.approx(0.5, abs=0.07)
    # a severe patient with no informative cycles sits on the severe cohort curve
    censored_early = pd.DataFrame({"patient_id": ["S"], "left_days": [0.0], "right_days": [np.inf], "severe": [1.0]})
    pdur = patient_durability(fit, censored_early)
    np.testing.assert_allclose(pdur.survival([20.0]), fit.marginal_survival([20.0], {"severe": 1.0}), atol=1e-3)
    with pytest.raises(ValueError, match="severe"):
        patient_durability(fit, censored_early.assign(severe=np.nan))
