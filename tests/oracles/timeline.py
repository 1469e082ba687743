"""The patient timeline as charts.patient_timeline built it before the page drew it from plain values
(wave 8): pandas selections per instrument and phase, plotly's figure made from them. The product's
figure (and the spec the page hands Streamlit) must give the same JSON (tests/test_patient_timeline.py)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from analytics import scales
from analytics.charts import (PHASE_STYLE, _axis, _band_colour, _band_label, _cycle_spans, _markup_free, _panels_layout,
                              cycle_labels_that_fit, cycles_lost)


def patient_timeline(assessments: pd.DataFrame, treatments: pd.DataFrame, thresholds: dict[str, dict],
                     cycles: pd.DataFrame | None = None, patient_id: str = "") -> go.Figure:
    """One timeline: a panel per instrument (own axis, severity bands shaded, baseline,
    response and remission lines) above an infusion strip (phase and dose), durability
    cycles drawn in the strip with their length and how they ended.

    The traces and the layout are collected as plain values and the figure is made (and checked by
    plotly) once: every add_trace, update_layout and add_hline copies and re-checks the figure
    (~0.2 s a chart at 10,000 patients, docs/performance.md).
    """
    codes = [c for c in thresholds]
    rows = len(codes) + 1
    layout = json.loads(_panels_layout(len(codes)))
    traces: list[dict] = []

    def add(trace: dict, row: int) -> None:
        traces.append({**trace, "type": trace.get("type", "scatter"), "xaxis": f"x{row if row > 1 else ''}",
                       "yaxis": f"y{row if row > 1 else ''}"})

    shapes, notes = [], []
    for r, code in enumerate(codes, start=1):
        th = thresholds[code]
        bands = th["bands"]
        x_domain, y_axis = f"x{r if r > 1 else ''} domain", f"y{r if r > 1 else ''}"
        for i, (low, high, label) in enumerate(bands):
            shapes.append(dict(type="rect", xref=x_domain, x0=0, x1=1, yref=y_axis, y0=low - 0.5 if low else 0,
                               y1=high + 0.5, fillcolor=_band_colour(i, len(bands)), line=dict(width=0), layer="below"))
            notes.append(dict(text=label, xref="x domain", x=1.0, xanchor="right", y=(low + high) / 2, yref=y_axis,
                              showarrow=False, font=dict(size=10), opacity=0.6))

        def hline(y, line: dict, text: str, label_below: bool = False) -> None:
            shapes.append(dict(type="line", xref=x_domain, x0=0, x1=1, yref=y_axis, y0=y, y1=y, line=line))
            notes.append(dict(text=text, showarrow=False, xref=x_domain, x=0, xanchor="left", yref=y_axis, y=y,
                              yanchor="top" if label_below else "bottom"))
        a = assessments[(assessments["instrument"] == code) & assessments["total"].notna()].sort_values("administered_at")
        hover = [f"{code} {t:g} ({b})<br>{d:%a %d %b %Y}" for t, b, d in
                 zip(a["total"], [_band_label(bands, v) for v in a["total"]], a["administered_at"])]
        scale = scales.get(code)
        safety, n = scale.safety_column, scale.safety_item
        if safety and safety in a:
            hover = [h + (f"<br><b>item {n} = {int(v)}</b>" if pd.notna(v) and v > 0 else "") for h, v in zip(hover, a[safety])]
        add(dict(x=a["administered_at"], y=a["total"], mode="lines+markers", name=code,
                 line=dict(color=scale.colour, width=2), marker=dict(size=7), hovertext=hover, hoverinfo="text"), r)
        if safety and safety in a:
            # A strip of small marks along the top of the panel, not a mark over each point: in some
            # patients most scores carry a positive item 9, and large marks hid the line.
            flagged = a[a[safety].fillna(0) > 0]
            if len(flagged):
                add(dict(x=flagged["administered_at"], y=np.full(len(flagged), th["max"] * 0.96),
                         mode="markers", name=f"{code} item {n} above 0",
                         marker=dict(symbol="triangle-down", size=8, color="#d62728"),
                         hovertext=[f"{code} item {n} ({scale.safety_meaning or 'safety item'}) = {int(v)}"
                                    f"<br>{d:%a %d %b %Y}" for v, d in zip(flagged[safety], flagged["administered_at"])],
                         hoverinfo="text"), r)
        if th["baseline"] is not None:
            hline(th["baseline"], dict(dash="dot", color="#888"), f"baseline {th['baseline']:g}")
            hline(th["response_at_or_below"], dict(dash="dash", color="#2ca02c"),
                  f"response ≤ {th['response_at_or_below']:g}")
        op = "≤" if th["remission_inclusive"] else "<"
        hline(th["remission_cut"], dict(dash="dash", color="#17becf"), f"remission {op} {th['remission_cut']:g}",
              label_below=True)
        layout[_axis("y", r)].update(range=[0, th["max"]], title=dict(text=f"{code} (points)"))
    strip = rows
    for phase, (colour, symbol) in PHASE_STYLE.items():
        t = treatments[treatments["phase"].isna()] if phase is None else treatments[treatments["phase"] == phase]
        if t.empty:
            continue
        dose = t["dose_mg_per_kg"]
        add(dict(
            x=t["administered_at"], y=np.full(len(t), 1.0), mode="markers",
            name=f"{phase or 'phase not recorded'} infusion",
            marker=dict(symbol=symbol, color=colour, size=8 + 6 * dose.fillna(0.5).clip(0, 2).to_numpy()),
            hovertext=[f"{phase or 'infusion'}: {r.upper()} {d:g} mg/kg<br>{w:%a %d %b %Y}" if pd.notna(d) else f"{phase}: {r}"
                       for r, d, w in zip(t["route"], dose, t["administered_at"])], hoverinfo="text"), strip)
    if cycles is not None and len(cycles):
        starts, ends, labels = _cycle_spans(cycles)
        stamps = [pd.to_datetime(d) for d in (assessments["administered_at"], treatments["administered_at"]) if len(d)]
        first = min([s.min() for s in stamps] + [starts.min()])
        last = max([s.max() for s in stamps] + [ends.max()])
        shown = cycle_labels_that_fit(starts, ends, first, last)
        for s, e, text, lost, show in zip(starts, ends, labels, cycles_lost(cycles), shown):
            add(dict(x=[s, e], y=[0.4, 0.4], mode="lines+text", line=dict(color="#d62728" if lost else "#2ca02c", width=5),
                     text=[text.split(",")[0] if show else "", ""], textposition="top right", textfont=dict(size=10),
                     showlegend=False, hovertext=[text, text], hoverinfo="text"), strip)
    layout[_axis("y", strip)].update(range=[0, 1.6], showticklabels=False, title=dict(text="infusions"))
    layout[_axis("x", strip)].update(title=dict(text="date"))
    title = f"Patient {_markup_free(patient_id)}: scores and infusions" if patient_id else "Scores and infusions"
    # full width: the legend fits on one line above the plot (the other charts put it below: _layout)
    layout.update(shapes=shapes, annotations=notes, title=dict(text=title, x=0, xanchor="left"),
                  height=260 * len(codes) + 200, margin=dict(l=10, r=10, t=70, b=10), hovermode="closest",
                  legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1))
    # Plotly's per-property checks (a third of the chart's time) are skipped: every value above is of a
    # kind plotly takes as is, and tests/test_patient_timeline.py checks the figure equals its checked copy.
    return go.Figure(data=traces, layout=layout, _validate=False)
