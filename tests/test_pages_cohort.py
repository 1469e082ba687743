"""Cohort outcomes page and the figures behind it."""
import math
import re

import pandas as pd
import pytest

from analytics.access import DataAccess
from analytics.screens import cohort
from oracles import cohort as reference


def _treated_count(at) -> int:
    caption = next(c.value for c in at.caption if "treated patients" in c.value)
    return int(re.search(r"(\d+) treated patients", caption).group(1))


def test_headline_figures_and_charts_render(open_page, text_of):
    at = open_page("cohort")
    assert not at.exception
    labels = [m.label for m in at.metric]
    assert "Active patients" in labels
    assert any(label.startswith("Response (") for label in labels)
    text = text_of(at)
    assert "95% CI" in text
    assert "Median durability (PHQ-9)" in text
    # the headline is the measurement model's estimate with its interval; the literal figure is beside it, labelled
    assert re.search(r"95% CI \d+ to \d+ days", text)
    assert "definitions read literally (sensitivity)" in text
    assert len(at.get("plotly_chart")) == 5  # waterfall, trajectory, severity, funnel, completeness


def test_site_filter_changes_the_cohort_counts(open_page, demo_db):
    patients = DataAccess(demo_db).patients()
    site = patients["site"].value_counts().index[-1]  # the smallest site
    expected = int((patients["site"] == site).sum())

    at = open_page("cohort")
    everyone = _treated_count(at)
    at.selectbox(key="cohort_subset").set_value(f"site: {site}").run()
    filtered = _treated_count(at)

    assert not at.exception
    assert filtered < everyone
    # every demo patient is treated, so the treated count is the site's patient count
    assert filtered == expected


def test_a_period_holding_nobody_says_what_to_do(open_page, demo_db):
    """Filters reach the screen as Filters: a period outside every first infusion selects nobody."""
    from datetime import date

    from analytics.access import SYSTEM
    from analytics.screens.workspace import Workspace

    ws = Workspace(DataAccess(demo_db, SYSTEM))
    screen = cohort.cohort_screen(ws, cohort.Filters(start=date(2030, 1, 1), end=date(2030, 2, 1)), date(2026, 11, 21))
    assert screen.headline["patients"] == 0
    at = open_page("cohort")
    assert not at.exception


def test_wilson_interval_matches_the_closed_form():
    k, n, z = 54, 97, 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    rate = cohort.wilson(k, n)
    assert rate.low == pytest.approx(centre - half, abs=1e-9)
    assert rate.high == pytest.approx(centre + half, abs=1e-9)
    assert cohort.wilson(3, 8, min_cell=11).suppressed
    assert "not shown" in cohort.wilson(3, 8, min_cell=11).text()


def _induction_frame(rows):
    return pd.DataFrame(rows, columns=["patient_id", "evaluable", "responded", "remitted"])


def test_funnel_limits_narrow_with_size_and_hide_small_groups():
    rows = [(f"a{i}", True, i < 30, False) for i in range(60)] + [(f"b{i}", True, i < 2, False) for i in range(20)] \
        + [(f"c{i}", True, True, False) for i in range(4)]
    induction = _induction_frame(rows)
    patients = pd.DataFrame({"patient_id": induction["patient_id"], "site": [p[0] for p in induction["patient_id"]]})
    data = cohort.funnel(induction, patients, "site", min_cell=5)
    groups = data["groups"].set_index("site")
    assert "c" not in groups.index and data["hidden_groups"] == 1
    assert data["clinic_rate"] == pytest.approx(36 / 84)
    limits = data["limits"]
    assert (limits["hi95"].diff().dropna() <= 1e-12).all()  # upper limit falls as n grows
    assert groups.loc["b", "position"] != "within limits"  # 10% of 20 against a 43% clinic rate
    assert groups.loc["a", "position"] == "within limits"


def test_waterfall_orders_by_best_change_and_labels_response():
    induction = pd.DataFrame({
        "patient_id": ["p1", "p2", "p3"], "baseline_score": [20.0, 10.0, 16.0], "best_score": [8.0, 11.0, 4.0],
        "best_percent_change": [-60.0, 10.0, -75.0],
    })
    w = cohort.waterfall(induction)
    assert list(w["patient_id"]) == ["p2", "p1", "p3"]
    assert list(w["outcome"]) == ["no improvement or worse", "response (50% or more fall)", "response (50% or more fall)"]


def test_completeness_counts_an_assessment_up_to_seven_days_before():
    t = pd.DataFrame({"patient_id": ["p", "p", "p"],
                      "administered_at": pd.to_datetime(["2026-01-10", "2026-01-20", "2026-02-10"])})
    a = pd.DataFrame({"patient_id": ["p", "p"], "instrument": ["PHQ-9", "PHQ-9"],
                      "administered_at": pd.to_datetime(["2026-01-03", "2026-01-20"])})
    c = cohort.completeness(t, a).set_index("month")
    assert c.loc[pd.Timestamp("2026-01-01"), "assessed"] == 2  # 7 days before, and the same day
    assert c.loc[pd.Timestamp("2026-02-01"), "assessed"] == 0  # 21 days is too long ago


def test_trajectory_counts_each_patient_once_a_week(demo_db):
    data = DataAccess(demo_db)
    selected = reference.filter_cohort(data.patients(), data.treatments(), data.assessments(), cohort.Filters())
    band = reference.trajectory_band(selected, "PHQ-9")
    assert band.loc[band["week"] == 0, "n"].iloc[0] <= len(selected.patients)
    assert (band["q1"] <= band["median"]).all() and (band["median"] <= band["q3"]).all()
    assert (band["n"] >= 5).all()


def test_director_asking_for_two_filters_at_once_sees_nothing_and_why(open_page, monkeypatch, demo_db):
    data = DataAccess(demo_db)
    patients = data.patients()
    site = patients["site"].value_counts().index[0]
    monkeypatch.setenv("OUTCOMES_ROLE", "director")

    at = open_page("cohort")
    at.selectbox(key="cohort_subset").set_value(f"site: {site}")
    labels = at.select_slider(key="cohort_period").options
    at.select_slider(key="cohort_period").set_value((labels[1], labels[-1])).run()

    assert not at.exception
    assert any("one at a time" in w.value for w in at.warning)
    assert not at.metric and not at.get("plotly_chart")


def test_trajectory_week_zero_is_the_baseline():
    t = pd.DataFrame({"patient_id": ["p"], "administered_at": pd.to_datetime(["2026-03-10"])})
    a = pd.DataFrame({"patient_id": "p", "instrument": "PHQ-9", "total": [20.0, 18.0, 10.0, 8.0],
                      "administered_at": pd.to_datetime(["2026-03-07", "2026-03-10", "2026-03-15", "2026-03-17"])})
    selected = reference.Cohort(patients=pd.DataFrame({"patient_id": ["p"]}), treatments=t, assessments=a)
    band = reference.trajectory_band(selected, "PHQ-9", min_n=1).set_index("week")
    assert band.loc[0, "median"] == 19.0  # the two pre-treatment scores, averaged: one value per patient
    assert band.loc[1, "median"] == 9.0   # days 5 and 7 after the first infusion
    assert list(band["n"]) == [1, 1]


def test_trajectory_patient_counts_are_explained_in_the_caption_not_as_a_legend_entry():
    """The counts under the weeks showed in the legend as "Aa n patients"; the caption under the chart says what they are."""
    from analytics import charts

    band = pd.DataFrame({"week": [0, 1, 2], "median": [18.0, 12.0, 9.0], "q1": [15.0, 9.0, 6.0], "q3": [21.0, 15.0, 12.0],
                         "n": [120, 80, 60]})
    fig = charts.trajectory(band, "PHQ-9", 5)
    counts = next(t for t in fig.data if t.mode == "text")
    assert list(counts.text) == ["120", "80", "60"] and counts.showlegend is False
    assert {t.name for t in fig.data if t.showlegend is not False} == {"median", "interquartile range"}


def test_page_pdf_and_json_carry_the_same_median_durability(open_page, demo_db, capsys):
    """One clinic, three places a user reads how long response lasts: the cohort page's headline, the printable
    cohort report and `durability --json` give the measurement model's median and interval, and the literal
    definitions' figure as the labelled sensitivity analysis."""
    import json
    from datetime import date

    from analytics import cli, printable
    from analytics.access import SYSTEM
    from analytics.screens.workspace import Workspace

    assert cli.main(["durability", "--db", str(demo_db), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["estimate_source"] == "measurement model"
    median, (low, high), literal = out["median_days"], out["median_ci"], out["definitions_median_days"]
    assert abs(median - literal) >= 1  # the two figures differ on the demo clinic: the test tells them apart

    at = open_page("cohort")
    metric = next(m for m in at.metric if m.label == "Median durability (PHQ-9)")
    assert metric.value == f"{median:.0f} days"
    caption = next(c.value for c in at.caption if "response cycles" in c.value)
    assert f"95% CI {low:.0f} to {high:.0f} days" in caption
    assert f"definitions read literally (sensitivity): {literal:.0f} days" in caption
    assert f"{out['n_cycles']} response cycles, {out['n_events']} ended in loss" in caption

    screen = cohort.cohort_screen(Workspace(DataAccess(demo_db, SYSTEM)), cohort.Filters(), date.fromisoformat("2026-11-21"))
    rows = {name: value for name, value, _ in printable.cohort_report_content(screen, date(2026, 11, 21), n_boot=0).headline}
    assert rows["Median durability (PHQ-9)"] == f"{median:.0f} days (95% CI {low:.0f} to {high:.0f} days)"
    assert rows["Median, definitions literal"] == f"{literal:.0f} days"
