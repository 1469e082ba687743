"""The cohort page's summary path (cohort.cohort_base/cohort_summary/cohort_view) gives exactly the
figures of the raw definitions (filter_cohort + headline, waterfall, trajectory_band,
severity_movement, funnel, completeness on the full frames), with and without filters."""
from datetime import date

import numpy as np
import pandas as pd
import pytest

from analytics import charts
from analytics.access import DataAccess
from analytics.screens import cohort, workspace
from oracles import cohort as reference

TODAY = date(2026, 11, 21)


@pytest.fixture(scope="module")
def frames(demo_db):
    data = DataAccess(demo_db)
    p, t, a = data.patients(), data.treatments(), data.assessments()
    # edge cases the demo lacks: two patients never infused, one never assessed, one without comorbidities
    never_infused = p["patient_id"].iloc[:2].tolist()
    never_assessed = p["patient_id"].iloc[2]
    t = t[~t["patient_id"].isin(never_infused)].reset_index(drop=True)
    a = a[a["patient_id"] != never_assessed].reset_index(drop=True)
    p = p.copy()
    p.loc[3, "comorbidities"] = None
    return {"patients": p, "treatments": t, "assessments": a, "attributes": data.attributes()}


@pytest.fixture(scope="module")
def cycles(frames):
    return workspace.cohort_cycles(frames["patients"], frames["treatments"], frames["assessments"], "PHQ-9",
                               attributes=frames["attributes"])


@pytest.fixture(scope="module")
def base(frames, cycles):
    return cohort.cohort_base(frames["patients"], frames["treatments"], frames["assessments"], cycles)


def raw_view(frames, cycles, filters, min_cell):
    """What pages/cohort.py computed on every rerun before the summaries (the reference)."""
    p, t, a = frames["patients"], frames["treatments"], frames["assessments"]
    selected = reference.filter_cohort(p, t, a, filters)
    induction_all = cohort.induction_outcomes(t, a, filters.instrument)
    induction = induction_all[cohort.isin(induction_all["patient_id"], selected.patients["patient_id"])]
    chosen = cycles[cohort.isin(cycles["patient_id"], selected.patients["patient_id"])]
    return {
        "patients": selected.patients, "induction": induction,
        "cycles": {"n_cycles": len(chosen), "n_patients": int(chosen["patient_id"].nunique()),
                   "n_losses": int(chosen["event"].sum())},
        "headline": reference.headline(selected, induction, TODAY, min_cell, cycles=chosen),
        "waterfall": cohort.waterfall(induction),
        "trajectory": reference.trajectory_band(selected, filters.instrument, min_n=max(5, min_cell)),
        "severity": cohort.severity_movement(induction, filters.instrument, min_cell),
        "completeness": cohort.completeness(selected.treatments, selected.assessments),
    }


def _filter_cases(frames):
    p, t = frames["patients"], frames["treatments"]
    site = p["site"].value_counts().index[-1]
    clinician = p["clinician"].value_counts().index[0]
    comorbidity = cohort.filter_options(p, t)["comorbidities"][0]
    route = t["route"].value_counts().index[-1]
    first = t.groupby("patient_id")["administered_at"].min().sort_values()
    middle = first.iloc[len(first) // 2].date()
    pairs = set(zip(p["site"], p["clinician"]))
    nobody = next((s, c) for s in p["site"].unique() for c in p["clinician"].unique() if (s, c) not in pairs)
    return {
        "no filter": {},
        "site": {"sites": (site,)},
        "clinician": {"clinicians": (clinician,)},
        "comorbidity": {"comorbidities": (comorbidity,)},
        "route of the first infusion": {"routes": (route,)},
        "started from": {"start": middle},
        "started until": {"end": middle},
        "everything at once": {"sites": tuple(p["site"].unique()[:2]), "comorbidities": (comorbidity, "no such"),
                               "start": first.iloc[5].date(), "end": first.iloc[-5].date()},
        "nobody": {"sites": (nobody[0],), "clinicians": (nobody[1],)},
    }


@pytest.mark.parametrize("min_cell", [0, 11])
@pytest.mark.parametrize("instrument", ["PHQ-9", "MADRS", "GAD-7"])
def test_summary_view_equals_the_raw_computation(frames, cycles, base, instrument, min_cell):
    induction = cohort.induction_outcomes(frames["treatments"], frames["assessments"], instrument)
    summary = cohort.cohort_summary(base, frames["assessments"], induction, instrument)
    for name, kwargs in _filter_cases(frames).items():
        filters = cohort.Filters(instrument=instrument, **kwargs)
        expected = raw_view(frames, cycles, filters, min_cell)
        got = cohort.cohort_view(summary, filters, TODAY, min_cell)
        where = f"{instrument}, min_cell {min_cell}, {name}"
        assert got["headline"] == expected["headline"], where
        assert got["cycles"] == expected["cycles"], where
        for key in ("patients", "induction", "waterfall", "trajectory", "severity", "completeness"):
            pd.testing.assert_frame_equal(got[key], expected[key], check_exact=True, obj=f"{key} ({where})")
        for by in ("site", "clinician"):
            want = cohort.funnel(expected["induction"], expected["patients"], by, min_cell=min_cell)
            have = cohort.funnel(got["induction"], got["patients"], by, min_cell=min_cell)
            assert have["clinic_rate"] == want["clinic_rate"], where
            pd.testing.assert_frame_equal(have["groups"], want["groups"], check_exact=True)


def test_the_cases_exercise_the_filters(frames, base):
    """Each filter case above selects a real, smaller cohort (so the equality means something)."""
    everyone = len(frames["patients"])
    for name, kwargs in _filter_cases(frames).items():
        keep = cohort.select_patients(base, cohort.Filters(**kwargs))
        if name == "no filter":
            assert keep is None
        elif name == "nobody":
            assert not keep.any()
        else:
            assert 0 < keep.sum() < everyone, name


def test_the_page_period_and_options_come_from_the_base(frames, base):
    t = frames["treatments"]
    assert base.period == (t["administered_at"].min().date(), t["administered_at"].max().date())
    assert base.options == cohort.filter_options(frames["patients"], t)
    assert base.has_infusions


def test_a_summary_for_another_instrument_is_refused(frames, base):
    induction = cohort.induction_outcomes(frames["treatments"], frames["assessments"], "GAD-7")
    summary = cohort.cohort_summary(base, frames["assessments"], induction, "GAD-7")
    with pytest.raises(ValueError, match="summary is for GAD-7"):
        cohort.cohort_view(summary, cohort.Filters(instrument="PHQ-9"), TODAY)


def _waterfall(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    induction = pd.DataFrame({"patient_id": [f"P{i:06d}" for i in range(n)], "baseline_score": 20.0,
                              "best_score": 0.0, "best_percent_change": rng.uniform(-100, 60, n).round(1)})
    return cohort.waterfall(induction)


def test_a_large_waterfall_is_one_bar_per_percentile_without_patient_ids():
    w = _waterfall(5000)
    bars = cohort.waterfall_bars(w)
    assert len(bars) == cohort.WATERFALL_BINS
    assert "patient_id" not in bars.columns
    assert bars["n"].sum() == 5000 and (bars["n"] == 50).all()
    assert (bars["low"] <= bars["best_percent_change"]).all() and (bars["best_percent_change"] <= bars["high"]).all()
    assert bars["best_percent_change"].is_monotonic_decreasing  # the waterfall's order: most worsened first
    # bar 1 is the 50 most worsened patients
    assert bars["low"].iloc[0] == w["best_percent_change"].iloc[:50].min()
    fig = charts.waterfall(bars, "PHQ-9", show_ids=True)
    assert sum(len(trace.x) for trace in fig.data) == cohort.WATERFALL_BINS
    hover = " ".join(text for trace in fig.data for text in trace.hovertext)
    assert "P00" not in hover and "patients" in hover


def test_a_small_waterfall_keeps_one_bar_per_patient():
    w = _waterfall(300)
    assert cohort.waterfall_bars(w) is w
    fig = charts.waterfall(w, "PHQ-9", show_ids=True)
    assert sum(len(trace.x) for trace in fig.data) == 300


def test_funnel_limits_for_a_large_site_are_a_few_hundred_points_on_the_exact_curve():
    n = 30_000
    induction = pd.DataFrame({"patient_id": [f"P{i}" for i in range(n)], "evaluable": True,
                              "responded": np.arange(n) % 5 < 2, "remitted": False})
    patients = pd.DataFrame({"patient_id": induction["patient_id"], "site": np.where(np.arange(n) < 25_000, "a", "b")})
    data = cohort.funnel(induction, patients, "site")
    limits = data["limits"]
    assert len(limits) < 500
    assert limits["n"].is_monotonic_increasing and limits["n"].iloc[-1] >= 25_000
    assert list(limits["n"].iloc[:5]) == [5, 6, 7, 8, 9]  # every size where the funnel bends
    p0 = data["clinic_rate"]
    assert p0 == pytest.approx(0.4)
    se = np.sqrt(p0 * (1 - p0) / limits["n"])
    assert np.allclose(limits["hi95"], np.clip(p0 + 1.96 * se, 0, 1))
    assert np.allclose(limits["lo998"], np.clip(p0 - 3.09 * se, 0, 1))


def test_the_page_draws_a_large_waterfall_by_percentile_and_says_so(open_page, monkeypatch, demo_db):
    monkeypatch.setattr(cohort, "WATERFALL_MAX_BARS", 50)  # the 120-patient demo counts as large
    at = open_page("cohort")
    assert not at.exception
    assert any("each bar is one percentile" in c.value for c in at.caption)
    figure = at.get("plotly_chart")[0].proto.spec
    assert "percentile" in figure
    ids = DataAccess(demo_db).patients()["patient_id"]
    assert not any(pid in figure for pid in ids)


@pytest.mark.parametrize("seed", range(6))
def test_a_selections_weekly_band_is_read_at_positions_with_pandas_own_figures(seed):
    """cohort_view reads each week's median and quartiles at positions of the rows sorted once (the summary's
    weekly table); the same floats as band_by_week's pandas groupby, bit for bit: tied scores, weeks of one or
    two patients, odd and even sizes, weeks under the minimum dropped, no rows at all."""
    rng = np.random.default_rng(seed)
    rows = 0 if seed == 0 else int(rng.integers(1, 400))
    frame = pd.DataFrame({"week": rng.integers(0, 27, rows).astype(np.int64),
                          "patient_id": rng.integers(0, 60, rows).astype(np.int32),
                          # a patient's weekly mean: whole scores, and thirds and halves of them
                          "total": rng.integers(0, 28, rows) / rng.choice([1.0, 2.0, 3.0], rows)})
    ordered = frame.iloc[np.lexsort((frame["total"].to_numpy(), frame["week"].to_numpy()))]
    for min_n in (1, 2, 5, 11):
        expected = cohort.band_by_week(frame, min_n)
        got = cohort._band(ordered["week"].to_numpy(), ordered["total"].to_numpy(), min_n)
        pd.testing.assert_frame_equal(got, expected, check_exact=True, check_index_type=False,
                                      obj=f"seed {seed}, {rows} rows, min_n {min_n}")
