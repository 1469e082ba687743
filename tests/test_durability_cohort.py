"""cohort_durability / durability_model: the contract the dashboard and CLI rely on."""
import json

import numpy as np
import pandas as pd
import pytest

from analytics.durability import cohort_durability, durability_model
from oracles.synthetic import simulate_cycles

TOP_KEYS = {"instrument", "n_patients", "n_cycles", "n_events", "n_censored", "median_days", "median_ci",
            "quartiles_days", "survival", "post_induction", "groups", "logrank_p"}
POST_KEYS = {"median_days", "median_ci", "quartiles_days", "n_cycles", "n_events", "survival"}
GROUP_KEYS = {"n_patients", "n_cycles", "n_events", "median_days", "median_ci", "survival"}


@pytest.fixture(scope="module")
def cycles():
    return simulate_cycles(240, seed=21, tau=0.3, severe_time_ratio=0.5)


@pytest.fixture(scope="module")
def summary(cycles):
    return cohort_durability(cycles, instrument="PHQ-9", by="baseline_band", n_boot=100, seed=1)


def test_contract_keys_and_json(summary):
    assert TOP_KEYS <= summary.keys()
    assert POST_KEYS <= summary["post_induction"].keys()
    assert set(summary["groups"]) == {"moderate", "severe"}
    for g in summary["groups"].values():
        assert GROUP_KEYS <= g.keys()
    assert {"day", "s", "lo", "hi"} == set(summary["survival"][0])
    json.dumps(summary, allow_nan=False)   # JSON-ready: no numpy types, no NaN/inf


def test_counts(summary, cycles):
    assert summary["instrument"] == "PHQ-9"
    assert summary["n_cycles"] == len(cycles)
    assert summary["n_patients"] == cycles.patient_id.nunique()
    assert summary["n_events"] == int(cycles.event.sum())
    assert summary["n_events"] + summary["n_censored"] == summary["n_cycles"]
    assert summary["post_induction"]["n_cycles"] == int(cycles.post_induction.sum())
    assert sum(g["n_cycles"] for g in summary["groups"].values()) == len(cycles)


def test_estimates_and_intervals_are_coherent(summary):
    q25, q75 = summary["quartiles_days"]
    lo, hi = summary["median_ci"]
    assert q25 < summary["median_days"] < q75
    assert lo <= summary["median_days"] <= hi
    s = [p["s"] for p in summary["survival"]]
    assert s[0] == 1.0 and all(a >= b for a, b in zip(s, s[1:]))
    assert all(p["lo"] <= p["s"] <= p["hi"] for p in summary["survival"])


def test_subgroups_differ_when_durations_do(summary):
    severe, moderate = summary["groups"]["severe"], summary["groups"]["moderate"]
    # severe cycles last half as long in the simulation
    assert severe["median_days"] < moderate["median_days"]
    assert severe["median_ci"][1] < moderate["median_ci"][0]
    assert summary["logrank_p"] < 1e-3


def test_no_subgroup_test_without_by(cycles):
    res = cohort_durability(cycles, instrument="MADRS", n_boot=20)
    assert res["groups"] == {} and res["logrank_p"] is None


def test_median_not_reached_is_none_with_a_note():
    # durations far beyond follow-up: most cycles are right-censored
    d = simulate_cycles(80, seed=2, scale=2000.0, censor_days=(20, 60))
    res = cohort_durability(d, instrument="PHQ-9", n_boot=30)
    assert res["median_days"] is None
    assert "not reached" in res["note"]
    json.dumps(res, allow_nan=False)


def test_bad_rows_are_quarantined_and_good_rows_kept(cycles):
    bad = cycles.head(3).copy()
    bad.loc[bad.index[0], "right_days"] = bad.loc[bad.index[0], "left_days"] - 1   # ends before it starts
    bad.loc[bad.index[1], "patient_id"] = None
    bad.loc[bad.index[2], "left_days"] = np.nan
    d = pd.concat([cycles, bad], ignore_index=True)
    res = cohort_durability(d, instrument="PHQ-9", n_boot=10)
    assert res["n_cycles"] == len(cycles)
    assert res["excluded_cycles"] == 3
    reasons = " | ".join(e["reason"] for e in res["exclusions"])
    assert "right_days" in reasons and "patient_id" in reasons and "left_days" in reasons
    assert [e["row"] for e in res["exclusions"]] == [len(cycles), len(cycles) + 1, len(cycles) + 2]


def test_missing_column_is_a_clear_error(cycles):
    with pytest.raises(ValueError, match="right_days"):
        cohort_durability(cycles.drop(columns=["right_days"]), instrument="PHQ-9")
    with pytest.raises(ValueError, match="no column 'clinic'"):
        cohort_durability(cycles, instrument="PHQ-9", by="clinic")


def test_same_seed_same_answer(cycles):
    a = cohort_durability(cycles, instrument="PHQ-9", n_boot=40, seed=3)
    b = cohort_durability(cycles, instrument="PHQ-9", n_boot=40, seed=3)
    assert a == b


def test_interval_censored_median_is_below_right_end_dating(cycles):
    """Dating each loss at the later assessment would overstate durability."""
    from oracles.km import kaplan_meier
    res = cohort_durability(cycles, instrument="PHQ-9", n_boot=0)
    naive = kaplan_meier(np.where(cycles.event, cycles.right_days, cycles.left_days), cycles.event).median
    assert res["median_days"] < naive


def test_durability_model_time_ratios(cycles):
    res = durability_model(cycles, ["baseline_band", "site"])
    terms = {t["term"]: t for t in res["terms"]}
    sev = terms["baseline_band=severe"]
    assert sev["reference"] == "moderate"          # most common level is the reference
    assert sev["lo"] < 0.5 < sev["hi"]             # simulated time ratio 0.5
    for name in ("site=east", "site=south", "site=north"):
        if name in terms:                          # site has no effect
            assert terms[name]["lo"] < 1.0 < terms[name]["hi"]
    assert res["n_cycles"] == len(cycles)
    json.dumps(res, allow_nan=False)


def test_durability_model_numeric_and_missing_covariates(cycles):
    d = cycles.copy()
    d["severe"] = (d.baseline_band == "severe").astype(float)
    d.loc[d.index[:5], "severe"] = np.nan
    res = durability_model(d, ["severe"])
    assert res["n_dropped_missing_covariate"] == 5
    assert res["terms"][0]["term"] == "severe"
    with pytest.raises(ValueError, match="prior_failed_trials"):
        durability_model(d, ["prior_failed_trials"])


def test_no_losses_at_all():
    d = simulate_cycles(30, seed=1)
    d["right_days"], d["event"] = np.inf, False
    res = cohort_durability(d, instrument="PHQ-9", by="site", n_boot=20)
    assert res["n_events"] == 0 and res["median_days"] is None
    assert all(p["s"] == 1.0 for p in res["survival"])
    assert res["logrank_p"] is None          # nothing to compare
    json.dumps(res, allow_nan=False)


def test_single_patient_has_estimates_but_no_intervals():
    d = simulate_cycles(1, seed=4, mean_cycles=6)
    res = cohort_durability(d, instrument="PHQ-9", n_boot=20)
    assert res["median_days"] is not None
    assert res["median_ci"] == [None, None]
    assert "no confidence intervals" in res["note"]


def test_event_flag_contradicting_right_days_is_quarantined(cycles):
    d = cycles.copy()
    d.loc[0, "event"] = not bool(d.loc[0, "event"])
    res = cohort_durability(d, instrument="PHQ-9", n_boot=5)
    assert res["excluded_cycles"] == 1
    assert "event flag" in res["exclusions"][0]["reason"]


def test_large_cohorts_use_fewer_replicates_and_normal_intervals(cycles, monkeypatch):
    from analytics.durability import cohort as cohort_module
    monkeypatch.setattr(cohort_module, "LARGE_COHORT_PATIENTS", 50)
    res = cohort_durability(cycles, instrument="PHQ-9", n_boot=200)
    assert res["n_boot"] == cohort_module.LARGE_COHORT_BOOT
    assert "SD" in res["method"]["ci"]
    lo, hi = res["median_ci"]
    assert lo < res["median_days"] < hi
    # symmetric by construction
    assert (res["median_days"] - lo) == pytest.approx(hi - res["median_days"], abs=0.02)


def test_the_measurement_model_carries_the_headline_and_the_definitions_stay_as_sensitivity():
    """cohort_durability(model=...): median_days and survival are the model's; the literal figures
    are kept under definitions_*; the counts are the cycles clinicians see."""
    from analytics import course, intervals, simulate

    sim = simulate.simulate_clinic(250, 8)
    frames = course.frames_from_csv_tables(sim.tables)
    cm = intervals.fit_clinic_model(frames, "PHQ-9", fit_patients=100)
    plain = cohort_durability(cm.cycles, instrument="PHQ-9", n_boot=20)
    res = cohort_durability(cm.cycles, instrument="PHQ-9", by="site", n_boot=20, model=cm.model)
    json.dumps(res, allow_nan=False)
    assert res["estimate_source"] == "measurement model" and plain["estimate_source"] == "definitions"
    assert res["definitions_median_days"] == plain["median_days"]
    assert res["definitions_survival"] == plain["survival"]
    assert res["median_days"] == pytest.approx(cm.model.median_days_, abs=0.01)
    assert res["survival_56d"] == pytest.approx(float(cm.model.survival(56)), abs=1e-3)
    assert (res["n_cycles"], res["n_events"]) == (plain["n_cycles"], plain["n_events"]) == (len(cm.cycles), int(cm.cycles["event"].sum()))
    lo, hi = res["median_ci"]
    assert lo < res["median_days"] < hi
    for g in res["groups"].values():
        assert g["estimate_source"] == "measurement model" and "definitions_median_days" in g
    # the model given as a function (a fit from scratch): called on a thread of its own while the definitions'
    # figures are computed, the same result; its failure is the caller's; no thread left behind
    import threading

    callers = []

    def fitted():
        callers.append(threading.get_ident())
        return cm.model

    def failing():
        raise RuntimeError("the fit failed")

    before = threading.active_count()
    few = cm.cycles.iloc[:300]
    given = cohort_durability(few, instrument="PHQ-9", n_boot=5, model=fitted)
    assert json.dumps(given, sort_keys=True) == json.dumps(
        cohort_durability(few, instrument="PHQ-9", n_boot=5, model=cm.model), sort_keys=True)
    assert len(callers) == 1 and callers[0] != threading.get_ident()
    with pytest.raises(RuntimeError, match="the fit failed"):
        cohort_durability(few, instrument="PHQ-9", n_boot=5, model=failing)
    assert threading.active_count() == before


def test_the_bootstrap_gives_the_same_figures_on_any_number_of_threads_and_batches(cycles):
    """The replicates' weights are drawn once, in order, and each replicate's EM is its own: one, two or three
    workers and batches of any size give the same curves, bands and quantile intervals, bit for bit; and so do
    the replicates' pair weights summed in float32 (whole numbers, exact) or in float64."""
    import threading

    from analytics.durability.bootstrap import cluster_bootstrap_turnbull

    args = (cycles["left_days"].to_numpy(), cycles["right_days"].to_numpy(), cycles["patient_id"].to_numpy())
    before = threading.active_count()
    runs = [cluster_bootstrap_turnbull(*args, n_boot=40, seed=3, workers=w, max_chunk_cells=cells)
            for w, cells in ((1, 5_000_000), (2, 5_000_000), (3, 2_000))]
    from analytics.durability import bootstrap

    exact, bootstrap.EXACT_FLOAT32 = bootstrap.EXACT_FLOAT32, 0.0   # the replicates' pair weights in float64
    try:
        runs.append(cluster_bootstrap_turnbull(*args, n_boot=40, seed=3))
    finally:
        bootstrap.EXACT_FLOAT32 = exact
    assert threading.active_count() == before
    for other in runs[1:]:
        for field in ("s_lo", "s_hi"):
            assert np.array_equal(getattr(runs[0], field), getattr(other, field))
        assert runs[0].quantile_ci == other.quantile_ci and runs[0].quantiles == other.quantiles


def test_a_batch_of_replicates_reusing_its_arrays_gives_each_replicates_own_em(cycles):
    """turnbull.em on a batch (its temporaries made in reused arrays) gives every row the masses that row gets
    alone (the plain path), to the last bit, and the same number of cycles."""
    from analytics.durability.bootstrap import aggregate_days, patient_bootstrap_weights
    from analytics.durability.turnbull import em, make_design
    from scipy import sparse

    uL, uR, pair = aggregate_days(cycles["left_days"].to_numpy(), cycles["right_days"].to_numpy())
    design = make_design(uL, uR)
    clus = pd.factorize(cycles["patient_id"])[0]
    M = sparse.csr_matrix((np.ones(pair.size), (pair, clus)), shape=(uL.size, clus.max() + 1))
    weights = np.asarray((M @ patient_bootstrap_weights(clus.max() + 1, 12, seed=5).astype(float).T).T)
    p0 = np.bincount(pair, minlength=uL.size).astype(float)
    start = em(design, p0, tol=1e-7, max_iter=50000)[0][0]
    batch, cycles_used = em(design, weights, p0=start, tol=1e-5, max_iter=100, ll_tol=1e-9)
    alone = [em(design, w, p0=start, tol=1e-5, max_iter=100, ll_tol=1e-9) for w in weights]
    assert np.array_equal(batch, np.vstack([p for p, _ in alone]))
    assert cycles_used == max(it for _, it in alone)


@pytest.mark.parametrize("kind", ["text", "categorical", "integer"])
def test_the_patients_the_models_figures_read_are_every_cycles_ids_in_order(kind):
    """cohort_durability makes the distinct patient ids the model's figures read from the column's distinct values
    (while the fit runs): the same ids, as text, in the same order as from every cycle's id."""
    from analytics.durability import cohort

    ids = ["p10", "p2", "p10", "p7", "p2", "p1", "p7", "p10"]
    column = {"text": pd.Series(ids, dtype="str"), "categorical": pd.Series(ids, dtype="category"),
              "integer": pd.Series([int(p[1:]) for p in ids])}[kind]
    good = pd.DataFrame({"patient_id": column})
    expected = cohort._distinct_ids(good["patient_id"].astype(str).to_numpy())
    found = cohort._cycle_patients(good)
    assert list(found) == list(expected) and all(type(k) is str for k in found)


def test_the_whole_clinics_model_figures_are_worked_out_once_and_each_caller_gets_its_own():
    """The cohort page asks for the whole clinic's model figures on every run: worked out once per fitted
    model, the same as from scratch, and a caller changing its copy changes nobody else's. A selection of
    fewer than 99% of the fitted patients still reads its own patients' curves."""
    from analytics import course, intervals, simulate
    from analytics.durability import cohort

    sim = simulate.simulate_clinic(150, 3)
    frames = course.frames_from_csv_tables(sim.tables)
    model = intervals.fit_clinic_model(frames, "PHQ-9", fit_patients=60).model
    ids = np.asarray(model.patient_ids_, dtype=object)
    fresh = cohort._whole_summary(model, True)
    first = cohort.model_figures(model, ids)
    assert first == fresh
    first["survival"][0]["s"], first["median_ci"][0], first["median_days"] = -1.0, -1.0, -1.0
    assert cohort.model_figures(model, ids[::-1]) == fresh  # the same patients in any order: the whole clinic
    assert cohort.model_figures(model, ids, ci=False) == cohort._whole_summary(model, False)
    few = ids[: int(0.98 * len(ids))]
    subset = cohort.model_figures(model, few)
    assert subset == cohort._subset_summary(model, cohort._distinct_ids(few), True)
    assert subset["survival"] != fresh["survival"]
