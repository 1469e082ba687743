"""The measurement model's fit, made several times cheaper (its per-step arrays built in place, summed
by sparse sums, EM on exp(P) reused across steps), estimates what it did before: the reference is the
fit written the direct way (tests/oracles/measured.py, the code before the change).

Tolerances: both compute in float32 where the grids are large, in a different order, so the objective
differs in about the 7th digit; the outer search then takes the same steps. The estimates (median, its
95% interval, noise, shape, within- and between-patient spread) must agree within 0.5%, each patient's
posterior within 1e-4, and every patient's suggestion to the day.
"""
from datetime import date

import numpy as np
import pandas as pd
import pytest

from analytics import course, intervals, simulate
from analytics.durability import measured
from analytics.durability.measured import MU_GRID, MeasuredDurability
from oracles.measured import reference_fit

TODAY = date(2026, 11, 21)
REL = 0.005


@pytest.fixture(scope="module")
def small_clinic():
    sim = simulate.simulate_clinic(160, 5)
    return course.frames_from_csv_tables(sim.tables)


def _same_fit(new: MeasuredDurability, old: MeasuredDurability) -> None:
    assert new.mode_ == old.mode_
    for name in ("median_days_", "noise_sd_", "within_sd_", "between_sd_"):
        assert getattr(new, name) == pytest.approx(getattr(old, name), rel=REL), name
    if new.mode_ == "trend":
        assert new.shape_ == pytest.approx(old.shape_, rel=REL)
    assert np.allclose(new.quantile_ci(0.5), old.quantile_ci(0.5), rtol=REL)
    assert np.allclose(new.survival([28, 56]), old.survival([28, 56]), atol=1e-3)
    assert np.allclose(new.depth_weights_, old.depth_weights_, atol=1e-4)
    assert np.array_equal(new.patient_ids_, old.patient_ids_)
    assert np.abs(new._post_mu - old._post_mu).max() < 1e-4


@pytest.mark.parametrize("instrument, mode", [("PHQ-9", "trend"), ("MADRS", "threshold")])
def test_the_fit_estimates_what_the_direct_computation_did(small_clinic, instrument, mode):
    cm = intervals.fit_clinic_model(small_clinic, instrument)
    kwargs = dict(scale_max=cm.scale_max, fit_patients=40, registry_noise_sd=cm.registry_noise_sd)
    new = MeasuredDurability(fit_patients=40, registry_noise_sd=cm.registry_noise_sd).fit(
        cm.scores, scale_max=cm.scale_max)
    old = reference_fit(cm.scores, **kwargs)
    assert new.mode_ == mode
    _same_fit(new, old)
    # every patient's suggestion, range and taper signal, as the pages and `intervals --json` give them
    a = intervals.suggest_intervals(new, cm.course, cm.cycles, today=TODAY, last_activity=cm.last_activity)
    b = intervals.suggest_intervals(old, cm.course, cm.cycles, today=TODAY, last_activity=cm.last_activity)
    assert (a["status"] == "suggested").sum() > 20
    for column in ("status", "suggested_interval_days", "interval_low_days", "interval_high_days", "taper",
                   "estimate_source"):
        assert a[column].fillna(-1).tolist() == b[column].fillna(-1).tolist(), column


def test_a_patient_far_from_the_prior_is_computed_in_log_space():
    """The EM's shortcut (exp of each patient's likelihood once, then products) would underflow for a
    patient whose likelihood is negligible wherever the prior has mass; such a patient is computed in
    log space and gets the same answer as the direct computation."""
    rng = np.random.default_rng(0)
    P = rng.normal(-50, 5, size=(30, len(MU_GRID), 3))
    P[0, :, :] = -5000.0
    P[0, -1, :] = 0.0        # only the longest median fits this patient: the prior there is ~1e-300
    depth_w = np.array([0.5, 0.3, 0.2])
    prior = measured._prior_mu(np.log(10.0), 0.12)
    ll, post, mean_depth = measured._Marginal(P).stats(prior, depth_w, depth=True)
    ll_ref, post_ref = measured._log_posterior(P, prior, depth_w)
    assert np.isfinite(ll).all()
    assert np.allclose(ll, ll_ref, rtol=1e-12)
    assert np.allclose(post, post_ref.sum(axis=2), atol=1e-12)
    assert np.allclose(mean_depth, post_ref.sum(axis=1).mean(axis=0), atol=1e-12)
    assert post[0].argmax() == len(MU_GRID) - 1


def test_unusable_or_text_scores_are_left_out_as_before_and_the_callers_frame_is_untouched(small_clinic):
    """The fit reads the scores without copying them when they are numbers and all usable; text numbers,
    missing values, negative days and lines at 0 are still converted or left out, the same fit results, and
    the caller's frame is not changed."""
    cm = intervals.fit_clinic_model(small_clinic, "PHQ-9")
    clean = cm.scores
    fitted = MeasuredDurability(fit_patients=40).fit(clean, scale_max=cm.scale_max)
    extra = clean.iloc[:4].copy()
    extra["days"] = [float("nan"), -1.0, 3.0, 5.0]
    extra.loc[extra.index[2], "line"] = 0.0
    extra.loc[extra.index[3], "total"] = float("nan")
    messy = pd.concat([clean, extra], ignore_index=True)
    messy["days"] = messy["days"].astype(str)   # numbers as text, as a CSV may give them
    before = messy.copy()
    again = MeasuredDurability(fit_patients=40).fit(messy, scale_max=cm.scale_max)
    pd.testing.assert_frame_equal(messy, before)
    assert again.n_excluded_scores_ == 4 and fitted.n_excluded_scores_ == 0
    for name in ("median_days_", "noise_sd_", "shape_", "within_sd_", "between_sd_", "loglik_"):
        assert getattr(again, name) == getattr(fitted, name), name
    assert np.array_equal(again._post_mu, fitted._post_mu)


def test_the_trend_tests_made_a_few_cycles_at_a_time_give_the_same_patients_slopes_and_p_values(small_clinic, monkeypatch):
    """trend_tests builds each cycle's likelihood over the fine grid of medians a batch of cycles at a time (the
    whole table was 243 MB at 100,000 patients and set the suggestions' peak memory): the batches' size must not
    change a patient's slope or p-value in any digit."""
    cm = intervals.fit_clinic_model(small_clinic, "PHQ-9")
    monkeypatch.setattr(measured, "TREND_BLOCK_CYCLES", 10**9)
    whole = cm.model.trend_tests(cm.scores, min_cycles=intervals.TREND_MIN_CYCLES)
    monkeypatch.setattr(measured, "TREND_BLOCK_CYCLES", 3)
    blocks = cm.model.trend_tests(cm.scores, min_cycles=intervals.TREND_MIN_CYCLES)
    assert len(whole) >= 20 and (whole["trend_p"] < 1).any()   # patients tested, some with a slope
    pd.testing.assert_frame_equal(blocks, whole, check_exact=True)
