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
