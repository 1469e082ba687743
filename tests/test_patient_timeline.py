"""The patient timeline draws each instrument's severity bands and its baseline, response and
remission lines on that instrument's own panel, labelled with their values."""
from __future__ import annotations

from analytics import charts, scales
from analytics.access import DataAccess
from analytics.screens import patient


def test_each_panel_has_its_bands_and_threshold_lines_at_the_patients_values(demo_db):
    data = DataAccess(demo_db)
    treated = data.treatments()["patient_id"]
    assessed = data.assessments()
    both = assessed[assessed["patient_id"].isin(treated)].groupby("patient_id")["instrument"].nunique()
    pid = both[both >= 2].index[0]  # two panels, so the second axis is exercised too
    record = data.patient_record(pid)
    thresholds = patient.patient_thresholds(record["treatments"], record["assessments"])
    fig = charts.patient_timeline(record["assessments"], record["treatments"], thresholds, None, pid)
    for row, (code, th) in enumerate(thresholds.items(), start=1):
        axis = f"y{row if row > 1 else ''}"
        rects = [s for s in fig.layout.shapes if s.type == "rect" and s.yref == axis]
        assert len(rects) == len(scales.get(code).bands)
        lines = {s.y0 for s in fig.layout.shapes if s.type == "line" and s.yref == axis}
        labels = {a.text for a in fig.layout.annotations if a.yref == axis}
        assert th["remission_cut"] in lines and any(t.startswith("remission") for t in labels)
        assert {b[2] for b in th["bands"]} <= labels
        if th["baseline"] is not None:
            assert {th["baseline"], th["response_at_or_below"]} <= lines
            assert f"baseline {th['baseline']:g}" in labels


def test_cycle_labels_never_overlap_and_short_cycles_go_unlabelled():
    import pandas as pd

    day = pd.Timedelta(days=1)
    t0 = pd.Timestamp("2025-01-01")
    # five induction cycles of 2-3 days, then two long maintenance cycles, over one year
    starts = pd.Series([t0 + k * 3 * day for k in range(5)] + [t0 + 20 * day, t0 + 200 * day])
    ends = pd.Series([s + 3 * day for s in starts[:5]] + [t0 + 200 * day, t0 + 365 * day])
    shown = charts.cycle_labels_that_fit(starts, ends, t0, t0 + 365 * day)
    assert shown == [False] * 5 + [True, True]
    width = charts.CYCLE_LABEL_WIDTH * 365
    lefts = sorted((s - t0) / day for s, keep in zip(starts, shown) if keep)
    assert all(b - a >= width for a, b in zip(lefts, lefts[1:]))


def test_safety_item_marks_sit_along_the_top_not_over_the_scores(demo_db):
    data = DataAccess(demo_db)
    a = data.assessments()
    phq = a[a["instrument"] == "PHQ-9"]
    pid = phq[phq["item_9"].fillna(0) > 0]["patient_id"].value_counts().index[0]
    record = data.patient_record(pid)
    thresholds = patient.patient_thresholds(record["treatments"], record["assessments"])
    fig = charts.patient_timeline(record["assessments"], record["treatments"], thresholds, None, pid)
    marks = [t for t in fig.data if "item 9" in (t.name or "")]
    assert marks
    top = scales.get("PHQ-9").total_max
    assert all(y > 0.9 * top for t in marks for y in t.y)
    assert all(t.marker.size <= 8 for t in marks)


def test_the_timeline_has_make_subplots_panels_with_each_trace_on_its_own_panel(demo_db):
    """The figure is made in one go (charts.patient_timeline): its axes are those make_subplots gives the same
    panels (shared dates, the strip below), every score trace sits on its instrument's panel and every
    infusion on the strip."""
    from plotly.subplots import make_subplots

    data = DataAccess(demo_db)
    assessed = data.assessments()
    both = assessed[assessed["patient_id"].isin(data.treatments()["patient_id"])].groupby("patient_id")["instrument"].nunique()
    pid = both[both >= 2].index[0]
    record = data.patient_record(pid)
    thresholds = patient.patient_thresholds(record["treatments"], record["assessments"])
    fig = charts.patient_timeline(record["assessments"], record["treatments"], thresholds, None, pid)
    codes = list(thresholds)
    grid = make_subplots(rows=len(codes) + 1, cols=1, shared_xaxes=True, vertical_spacing=0.04,
                         row_heights=[1.0] * len(codes) + [0.45])
    for row in range(1, len(codes) + 2):
        for kind in "xy":
            name = f"{kind}axis{row if row > 1 else ''}"
            assert fig.layout[name].domain == grid.layout[name].domain and fig.layout[name].anchor == grid.layout[name].anchor
            assert fig.layout[name].matches == grid.layout[name].matches
    strip = f"y{len(codes) + 1}"
    for trace in fig.data:
        if trace.name in codes:
            row = codes.index(trace.name) + 1
            assert (trace.xaxis, trace.yaxis) == (f"x{row if row > 1 else ''}", f"y{row if row > 1 else ''}")
        elif trace.name.endswith(" infusion"):
            assert trace.yaxis == strip
    assert fig.layout[f"yaxis{len(codes) + 1}"].title.text == "infusions"
    assert fig.layout.title.text == f"Patient {pid}: scores and infusions" and fig.layout.template.layout.font is not None
    # made without plotly's property checks: the same figure as plotly's checked copy of it
    import json

    import plotly.graph_objects as go
    import plotly.io as pio

    assert json.loads(pio.to_json(fig, validate=False)) == json.loads(pio.to_json(go.Figure(fig.to_dict())))


def test_a_shared_figure_gives_streamlit_the_same_spec_on_every_run(demo_db):
    """pages/_page.drawn_once: the spec st.plotly_chart sends is the one a fresh figure gives, on every run,
    and after the figure was pickled (saved tables) or deep-copied."""
    import copy
    import pickle

    import plotly.io
    import plotly.tools

    from pages._page import drawn_once

    def spec(fig) -> str:  # what st.plotly_chart sends
        return plotly.io.to_json(plotly.tools.return_figure_from_figure_or_data(fig, validate_figure=True),
                                 validate=False)
    data = DataAccess(demo_db)
    pid = data.treatments()["patient_id"].iloc[0]
    record = data.patient_record(pid)
    thresholds = patient.patient_thresholds(record["treatments"], record["assessments"])
    def draw():
        return charts.patient_timeline(record["assessments"], record["treatments"], thresholds, None, pid)
    shared, fresh = drawn_once(draw()), draw()
    want = spec(fresh)
    assert spec(shared) == want and spec(shared) == want
    # pickled (saved tables) or copied, it is what a fresh figure becomes so
    assert spec(pickle.loads(pickle.dumps(shared))) == spec(pickle.loads(pickle.dumps(draw())))
    assert spec(copy.deepcopy(shared)) == spec(copy.deepcopy(draw()))
    assert spec(shared) == want  # pickling did not change what it hands out


def test_the_page_draws_the_timeline_the_previous_builder_drew_for_demo_patients(demo_db):
    """The page hands Streamlit `charts.drawn(charts.patient_timeline_spec(...))`, made from plain values without
    plotly's objects: what st.plotly_chart sends is what it sent for the previous builder's figure
    (tests/oracles/timeline.py: pandas selections, plotly's figure and its to_dict), and `patient_timeline`'s
    figure is the same too, on a spread of demo patients (cycles, safety marks, one or more panels)."""
    import json

    import plotly.io
    import plotly.tools

    from analytics import access
    from analytics.screens.workspace import Workspace
    from tests.oracles import timeline as previous

    def sent(fig) -> dict:  # what st.plotly_chart sends for a figure, as JSON
        return json.loads(plotly.io.to_json(plotly.tools.return_figure_from_figure_or_data(fig, validate_figure=True),
                                            validate=False))
    ws = Workspace(DataAccess(demo_db))
    cycles = ws.cycles()  # the clinic's cycles (no model fit needed: the chart draws cycles, not suggestions)
    kinds = set()
    with access.page_run():
        for pid in list(ws.data.patients()["patient_id"])[::5]:
            record = ws.data.patient_record(pid)
            thresholds = patient.patient_thresholds(record["treatments"], record["assessments"])
            if not thresholds:
                continue
            mine = patient.patient_rows(ws, ("cycles", scales.PRIMARY), lambda: cycles, pid)
            args = (record["assessments"], record["treatments"], thresholds, mine, pid)
            want = sent(previous.patient_timeline(*args))
            assert sent(charts.drawn(charts.patient_timeline_spec(*args))) == want, pid
            assert sent(charts.patient_timeline(*args)) == want, pid
            kinds |= {t.get("name", "cycle") for t in want["data"]}
    assert {"cycle", "PHQ-9 item 9 above 0", "induction infusion", "maintenance infusion"} <= kinds


def test_the_page_draws_the_item_heatmap_plotly_would(demo_db):
    """The item heatmap the page hands Streamlit (`charts.drawn(charts.item_heatmap_spec(...))`, no figure objects
    made) sends what plotly's checked figure of the same matrix sends, for every instrument of some demo patients."""
    import json

    import plotly.io
    import plotly.tools

    def sent(fig) -> dict:
        return json.loads(plotly.io.to_json(plotly.tools.return_figure_from_figure_or_data(fig, validate_figure=True),
                                            validate=False))
    data = DataAccess(demo_db)
    drawn = 0
    for pid in list(data.patients()["patient_id"])[::10]:
        assessments = data.patient_record(pid)["assessments"]
        for code in sorted(set(assessments["instrument"])):
            matrix = patient.item_matrix(assessments, code)
            if matrix.empty:
                continue
            item_max = scales.get(code).item_max
            assert sent(charts.drawn(charts.item_heatmap_spec(matrix, code, item_max))) == \
                sent(charts.item_heatmap(matrix, code, item_max)), (pid, code)
            drawn += 1
    assert drawn >= 10
