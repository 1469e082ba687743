"""Durability and maintenance page."""
import pandas as pd
import pytest

from analytics.screens import durability


def test_durability_page_shows_medians_and_the_forest_plot(open_page, text_of, demo_db):
    from analytics.access import DataAccess
    from analytics.durability import turnbull
    from analytics.screens.workspace import cohort_cycles

    at = open_page("durability")
    assert not at.exception
    table = at.dataframe[0].value
    # the headline reads the scores through the measurement model; the definitions read literally
    # stay beside it as a labelled sensitivity analysis (issue 12)
    assert list(table["group"]) == ["every cycle", "first cycle after induction", durability.DEFINITIONS_LABEL]
    assert table["median, days (95% CI)"].str.match(r"^(\d+ \(\S+ to \S+\)|not reached)$").all()
    assert not any("_" in c for c in table.columns)
    # the sensitivity row is the Turnbull median of every cycle, recomputed here from the rows
    f = {k: getattr(DataAccess(demo_db), k)() for k in ("patients", "treatments", "assessments")}
    cycles = cohort_cycles(f["patients"], f["treatments"], f["assessments"])
    literal = turnbull(cycles["left_days"].to_numpy(float), cycles["right_days"].to_numpy(float)).median
    shown = table.set_index("group").loc[durability.DEFINITIONS_LABEL, "median, days (95% CI)"]
    assert shown.startswith(f"{literal:.0f} (")
    assert len(at.get("plotly_chart")) >= 3  # curves, forest, infusions per month (+ intervals)
    assert "Turnbull" in text_of(at)


def test_subgroups_give_one_row_per_group_and_a_logrank_p(open_page, demo_db):
    from analytics.access import DataAccess

    sites = sorted(DataAccess(demo_db).patients()["site"].unique())
    at = open_page("durability")
    at.selectbox(key="dur_by").set_value("site").run()
    assert not at.exception
    assert sorted(at.dataframe[0].value["group"]) == sites


def test_forest_rows_keep_only_estimable_terms():
    model = {"terms": [
        {"term": "a", "time_ratio": 1.5, "lo": 1.1, "hi": 2.0, "p": 0.01},
        {"term": "b", "time_ratio": float("inf"), "lo": float("nan"), "hi": float("nan"), "p": float("nan")},
    ]}
    rows = durability.forest_rows(model)
    assert list(rows["term"]) == ["a"]


def test_infusions_per_patient_month():
    t = pd.DataFrame({"patient_id": ["a", "a", "b", "a"], "phase": ["maintenance", "maintenance", "induction", "maintenance"],
                      "administered_at": pd.to_datetime(["2026-01-02", "2026-01-20", "2026-01-05", "2026-02-03"])})
    m = durability.infusions_per_patient_month(t).set_index("month")
    assert m.loc[pd.Timestamp("2026-01-01"), "per_patient"] == pytest.approx(1.5)
    assert m.loc[pd.Timestamp("2026-01-01"), "maintenance_per_patient"] == pytest.approx(2.0)
    assert m.loc[pd.Timestamp("2026-02-01"), "per_patient"] == pytest.approx(1.0)


def test_policy_comparison_runs_on_demand(open_page):
    at = open_page("durability")
    assert not any("symptom-triggered" in str(df.value.to_dict()) for df in at.dataframe)
    at.toggle(key="run_policy").set_value(True).run()
    assert not at.exception
    table = at.dataframe[-1].value
    assert {"policy", "infusions per patient-year", "days out of response"} <= set(table.columns)
    assert not any("_" in c for c in table.columns)
    # the README's comparison (target 0.75) and the default (0.8) both, in words; shares in %, one decimal
    assert (table["policy"] == "personalised, 75% target").any()
    assert (table["policy"] == "personalised, 80% target (the default)").any()
    assert not table["policy"].str.contains("q0.2").any() and table["policy"].str.startswith("oracle (knows").any()
    assert (table["policy"] == "symptom-triggered").any()
    assert table["days out of response"].str.match(r"^\d+\.\d%$").all()
    assert table["infusions per patient-year"].str.match(r"^\d+\.\d$").all()
    assert any("patient-years after induction" in c.value and "target" in c.value for c in at.caption)


def test_suggested_intervals_are_binned_and_small_bins_suppressed():
    days = pd.Series([20.5] * 30 + [28.0] * 12 + [40.0] * 5 + [float("nan")])
    bins = durability.interval_distribution(days, width=3)
    assert list(zip(bins["start_day"], bins["end_day"], bins["patients"])) == [(18, 21, 30), (27, 30, 12), (39, 42, 5)]
    suppressed = durability.interval_distribution(days, width=3, min_cell=11)
    # 5 is under 11, and so are the empty bins between (none is a small number too); 12 goes as well, or the
    # total (47) minus the bars shown would give the hidden 5 back; blank bins at the ends are left out
    assert suppressed["patients"].tolist() == [30]
    both = durability.interval_distribution(pd.Series([20.5] * 30 + [28.0] * 12 + [24.0] * 11), width=3, min_cell=11)
    assert list(both["start_day"]) == [18, 21, 24, 27]
    assert both["patients"].isna().tolist() == [False, True, False, False]  # an empty bin between is blank, not 0


def test_interval_chart_sends_bins_not_one_value_per_patient(open_page):
    at = open_page("durability")
    chart = next(c for c in at.get("plotly_chart") if "suggested maintenance intervals" in c.proto.spec)
    import base64
    import json

    import numpy as np

    def values(array):  # plotly sends numeric arrays as base64 typed arrays
        if isinstance(array, dict):
            return np.frombuffer(base64.b64decode(array["bdata"]), dtype=array["dtype"])
        return np.asarray(array, dtype=float)

    trace = json.loads(chart.proto.spec)["data"][0]
    assert trace["type"] == "bar"
    counts = values(trace["y"])
    assert np.nansum(counts) > len(counts)  # each bar holds several patients, not one value per patient


def test_survival_chart_leaves_room_for_the_at_risk_numbers_at_day_0():
    """The at-risk numbers under day 0 were cut in half at the plot's left edge ("002" for 4,002)."""
    import numpy as np

    from analytics import charts

    curve = {"label": "every cycle", "times": np.array([10.0, 30.0, 60.0]), "survival": np.array([0.9, 0.6, 0.4]),
             "lower": np.array([0.85, 0.5, 0.3]), "upper": np.array([0.95, 0.7, 0.5]), "n": "4,002 cycles",
             "end": 60.0, "at_risk": [(0, 4002), (30, 229), (60, 62)]}
    fig = charts.survival([curve], "t")
    low, high = fig.layout.xaxis.range
    assert low < 0 and high > 60  # the numbers at day 0 and at the last day are centred inside the plot



def test_each_curve_ends_on_the_day_its_note_gives(demo_db):
    """The note said "stops at day 74" while the line ended at its last step (day 66): for the operator (every
    step drawn) the line holds level to that day; for a director, whose steps of few losses are not drawn, the
    note gives the day of the last step shown."""
    from analytics.access import SYSTEM, DataAccess, Scope
    from analytics.screens import durability
    from analytics.screens.workspace import Workspace

    DIRECTOR = Scope(user="director", role="director", patient_level=False, identifiable=False, min_cell=11)

    for scope in (SYSTEM, DIRECTOR):
        ws = Workspace(DataAccess(demo_db, scope))
        screen = durability.durability_screen(ws, "PHQ-9", n_boot=20)
        assert screen.curves
        for curve in screen.curves:
            assert curve["times"][-1] == curve["end"] and f"{curve['label']} at day {curve['end']:.0f}" in screen.curve_note
            assert curve["survival"][-1] > 0


def test_policy_labels_of_neighbouring_points_go_on_opposite_sides():
    """"21 d + rescue" and "personalised 75%" sat on top of each other in the policy chart."""
    import pandas as pd

    from analytics import charts

    table = pd.DataFrame({"policy": ["every 21 days + rescue", "personalised (target 0.75)", "every 14 days"],
                          "infusions_per_patient_year": [18.9, 19.1, 25.5],
                          "share_days_out_of_response": [0.095, 0.090, 0.082], "rescue_share": [0.26, 0.25, 0.0]})
    sides = list(charts.policy_tradeoff(table).data[0].textposition)
    assert sides[0] != sides[1] and sides[2] == "top center"


def test_a_median_without_an_interval_is_not_shown_as_one_that_never_closes():
    curve = {"n_patients": 40, "n_cycles": 90, "n_events": 60, "median_days": 51.0, "quartiles_days": [30.0, 80.0]}
    no_interval = durability.durability_table({**curve, "median_ci": None})
    assert no_interval["median, days (95% CI)"].tolist() == ["51 (no interval)"]
    open_ended = durability.durability_table({**curve, "median_ci": [40.0, None]})
    assert open_ended["median, days (95% CI)"].tolist() == ["51 (40 to not reached)"]
