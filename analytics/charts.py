"""Plotly figure builders for the dashboard (no Streamlit here).

Every figure has a title, axis titles with units and hover text. Colours are
semi-transparent or mid-tone so the same figure reads on Streamlit's light and
dark themes (pages draw them with the Streamlit theme).
"""
from __future__ import annotations

import base64
import functools
import json

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from . import scales

# Severity bands from mild (green) to severe (red); alpha keeps them behind the data on both themes.
BAND_COLOURS = ["rgba(46,160,67,0.13)", "rgba(160,200,60,0.13)", "rgba(240,180,40,0.15)",
                "rgba(240,120,40,0.16)", "rgba(220,50,50,0.17)"]
PHASE_STYLE = {
    "induction": ("#1f77b4", "circle"),
    "maintenance": ("#2ca02c", "diamond"),
    "rescue": ("#d62728", "triangle-up"),
    None: ("#7f7f7f", "square"),
}


def _markup_free(value) -> str:
    """A data value (patient id, site, subgroup label) as plotly text: plotly reads a subset of HTML
    (<a href>, <b>, <br>) in titles, labels and hover text, so its markup characters are escaped."""
    return str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _layout(fig: go.Figure, title: str, height: int = 420) -> go.Figure:
    # Legend under the plot: above it, legends wrap into the title on half-width charts.
    fig.update_layout(title=dict(text=title, x=0, xanchor="left"), height=height,
                      margin=dict(l=10, r=10, t=50, b=10), hovermode="closest",
                      legend=dict(orientation="h", yanchor="top", y=-0.22, xanchor="left", x=0))
    return fig


def _band_colour(i: int, n: int) -> str:
    # map n bands onto the 5-colour ramp
    return BAND_COLOURS[round(i * (len(BAND_COLOURS) - 1) / max(n - 1, 1))]


@functools.lru_cache(maxsize=8)
def _panels_layout(panels: int) -> str:
    """The layout `make_subplots` gives `panels` score panels above the infusion strip (shared x axis),
    without its template, as JSON: built once per number of panels, copied for each chart."""
    fig = make_subplots(rows=panels + 1, cols=1, shared_xaxes=True, vertical_spacing=0.04,
                        row_heights=[1.0] * panels + [0.45])
    layout = fig.layout.to_plotly_json()
    layout.pop("template", None)
    return json.dumps(layout)


def _axis(kind: str, row: int) -> str:
    return f"{kind}axis{row if row > 1 else ''}"


def patient_timeline(assessments: pd.DataFrame, treatments: pd.DataFrame, thresholds: dict[str, dict],
                     cycles: pd.DataFrame | None = None, patient_id: str = "") -> go.Figure:
    """One timeline: a panel per instrument (own axis, severity bands shaded, baseline,
    response and remission lines) above an infusion strip (phase and dose), durability
    cycles drawn in the strip with their length and how they ended.

    The traces and the layout are collected as plain values and the figure is made (and checked by
    plotly) once: every add_trace, update_layout and add_hline copies and re-checks the figure
    (~0.2 s a chart at 10,000 patients, docs/performance.md). The page draws `patient_timeline_spec`,
    the same figure as the dict this one's `to_dict()` gives, without making plotly's objects.
    """
    traces, layout = _timeline_parts(assessments, treatments, thresholds, cycles, patient_id)
    # Plotly's per-property checks (a third of the chart's time) are skipped: every value above is of a
    # kind plotly takes as is, and tests/test_patient_timeline.py checks the figure equals its checked copy.
    return go.Figure(data=traces, layout=layout, _validate=False)


def patient_timeline_spec(assessments: pd.DataFrame, treatments: pd.DataFrame, thresholds: dict[str, dict],
                          cycles: pd.DataFrame | None = None, patient_id: str = "") -> dict:
    """`patient_timeline(...).to_dict()`, what st.plotly_chart sends, made from the same traces and layout
    without plotly's figure objects (building them and copying them out again was most of a new patient's
    chart: 37 of 40 ms CPU at 10,000 patients). Draw it with `drawn(spec)`."""
    return figure_spec(*_timeline_parts(assessments, treatments, thresholds, cycles, patient_id))


def figure_spec(traces: list[dict], layout: dict) -> dict:
    """What `go.Figure(data=traces, layout=layout).to_dict()` gives for traces and a layout of values plotly
    keeps as they are (lists, strings, numbers; numpy arrays in the traces only): the traces' float arrays
    as typed-array specs, as plotly's `to_dict` writes them, and the default template added to the layout.
    Only the traces are walked: a layout of plain values has nothing to convert (plotly's own walk over
    every shape and note cost as much as building the traces)."""
    data = [_typed_arrays(trace) for trace in traces]
    # the template is shared by every spec and never changed: Streamlit only reads and sends it
    return {"data": data, "layout": {**layout, "template": _default_template()}}


def _typed_arrays(value):
    """`value` with every non-empty float64 numpy array in it as plotly's typed-array spec (what
    `_plotly_utils.utils.to_typed_array_spec` makes of one); other values as they are."""
    if isinstance(value, dict):
        return {key: _typed_arrays(v) for key, v in value.items()}
    if isinstance(value, list):
        return [_typed_arrays(v) for v in value]
    if isinstance(value, np.ndarray) and value.dtype == np.float64 and value.ndim == 1 and value.size:
        return {"dtype": "f8", "bdata": base64.b64encode(np.ascontiguousarray(value)).decode("ascii")}
    return value


def _default_template() -> dict:
    """The template plotly's `to_dict()` puts in a figure's layout (pio.templates.default's), as a dict."""
    import plotly.io as pio

    return _template_of(pio.templates.default)


@functools.lru_cache(maxsize=4)
def _template_of(name) -> dict:
    return go.Figure().to_dict()["layout"].get("template", {})


def drawn(spec: dict) -> go.Figure:
    """A figure for st.plotly_chart that hands out `spec` (a `to_dict()` result) as its `to_dict()`:
    Streamlit only reads that dict, so plotly's objects for its traces are never made. Pickled or copied it
    becomes the full figure of `spec`."""
    figure = go.Figure()
    object.__setattr__(figure, "to_dict", lambda: dict(spec))  # past plotly's property checks: a plain attribute
    return figure


def _timeline_parts(assessments: pd.DataFrame, treatments: pd.DataFrame, thresholds: dict[str, dict],
                    cycles: pd.DataFrame | None, patient_id: str) -> tuple[list[dict], dict]:
    """patient_timeline's traces and layout, from plain values and numpy arrays (a record is a few dozen rows,
    where each pandas selection cost more than the rows)."""
    codes = [c for c in thresholds]
    rows = len(codes) + 1
    layout = json.loads(_panels_layout(len(codes)))
    traces: list[dict] = []

    def add(trace: dict, row: int) -> None:
        traces.append({**trace, "type": trace.get("type", "scatter"), "xaxis": f"x{row if row > 1 else ''}",
                       "yaxis": f"y{row if row > 1 else ''}"})

    shapes, notes = [], []
    instrument = assessments["instrument"].to_numpy(dtype=object)
    total = assessments["total"].to_numpy(dtype=float, na_value=np.nan)
    at = assessments["administered_at"].to_numpy()
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
        mine = np.flatnonzero((instrument == code) & ~np.isnan(total))
        mine = mine[np.argsort(at[mine], kind="stable")]  # by date (one score per instrument and time)
        days, totals = at[mine], total[mine]
        hover = [f"{code} {t:g} ({_band_label(bands, t)})<br>{d:%a %d %b %Y}"
                 for t, d in zip(totals.tolist(), _datetimes(days))]
        scale = scales.get(code)
        safety, n = scale.safety_column, scale.safety_item
        item = None
        if safety and safety in assessments:
            item = assessments[safety].to_numpy(dtype=float, na_value=np.nan)[mine]
            hover = [h + (f"<br><b>item {n} = {int(v)}</b>" if v > 0 else "") for h, v in zip(hover, item.tolist())]
        add(dict(x=days, y=totals, mode="lines+markers", name=code,
                 line=dict(color=scale.colour, width=2), marker=dict(size=7), hovertext=hover, hoverinfo="text"), r)
        if item is not None:
            # A strip of small marks along the top of the panel, not a mark over each point: in some
            # patients most scores carry a positive item 9, and large marks hid the line.
            flagged = np.flatnonzero(item > 0)
            if len(flagged):
                add(dict(x=days[flagged], y=np.full(len(flagged), th["max"] * 0.96),
                         mode="markers", name=f"{code} item {n} above 0",
                         marker=dict(symbol="triangle-down", size=8, color="#d62728"),
                         hovertext=[f"{code} item {n} ({scale.safety_meaning or 'safety item'}) = {int(v)}"
                                    f"<br>{d:%a %d %b %Y}" for v, d in zip(item[flagged].tolist(), _datetimes(days[flagged]))],
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
    phases = treatments["phase"].to_numpy(dtype=object, na_value=None)
    given = treatments["administered_at"].to_numpy()
    doses = treatments["dose_mg_per_kg"].to_numpy(dtype=float, na_value=np.nan)
    routes = treatments["route"].to_numpy(dtype=object, na_value=None)
    for phase, (colour, symbol) in PHASE_STYLE.items():
        mine = np.flatnonzero(np.array([p is None for p in phases], dtype=bool) if phase is None else phases == phase)
        if not len(mine):
            continue
        dose = doses[mine]
        add(dict(
            x=given[mine], y=np.full(len(mine), 1.0), mode="markers",
            name=f"{phase or 'phase not recorded'} infusion",
            marker=dict(symbol=symbol, color=colour, size=8 + 6 * np.clip(np.where(np.isnan(dose), 0.5, dose), 0, 2)),
            hovertext=[f"{phase or 'infusion'}: {r.upper()} {d:g} mg/kg<br>{w:%a %d %b %Y}" if not np.isnan(d)
                       else f"{phase}: {r}" for r, d, w in zip(routes[mine], dose.tolist(), _datetimes(given[mine]))],
            hoverinfo="text"), strip)
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
    return traces, layout


def _datetimes(values: np.ndarray) -> list:
    """datetime64 values as Python datetimes (formatted as pandas Timestamps are, at a fraction of the cost)."""
    return values.astype("datetime64[us]").tolist()


def _band_label(bands, value) -> str:
    for low, high, label in bands:
        if low <= value <= high:
            return label
    return ""


def _cycle_spans(cycles: pd.DataFrame):
    starts = pd.to_datetime(cycles["started_at"])
    ends = starts + pd.to_timedelta(cycles["length_days"], unit="D")
    labels = [f"{d:.0f} d, {'lost response' if lost else 'no loss seen'}" for d, lost in zip(cycles["length_days"], cycles_lost(cycles))]
    return starts, ends, labels


# A cycle's label ("83 d") takes about this share of the timeline's width (10-px text, ~1,000 px of plot).
CYCLE_LABEL_WIDTH = 0.045


def cycle_labels_that_fit(starts: pd.Series, ends: pd.Series, first, last, width: float = CYCLE_LABEL_WIDTH) -> list[bool]:
    """Which cycles get a length label: only one whose bar is as wide as its label and whose label
    starts after the previous label ends (induction cycles of a few days each would print
    "3 d 0 d 0 d 0 d" over each other); every cycle keeps its hover text."""
    day = pd.Timedelta(days=1)
    first = pd.Timestamp(first)
    span = max((pd.Timestamp(last) - first) / day, 1.0)
    x0 = ((pd.to_datetime(pd.Series(starts)) - first) / day / span).to_numpy(dtype=float)
    x1 = ((pd.to_datetime(pd.Series(ends)) - first) / day / span).to_numpy(dtype=float)
    shown = np.zeros(len(x0), dtype=bool)
    free_from = -np.inf
    for i in np.argsort(x0, kind="stable"):
        if x1[i] - x0[i] >= width and x0[i] >= free_from:
            shown[i] = True
            free_from = x0[i] + width
    return shown.tolist()


def cycles_lost(cycles: pd.DataFrame) -> list[bool]:
    return cycles["event"].fillna(False).astype(bool).tolist()


def item_heatmap(matrix: pd.DataFrame, instrument: str, item_max: int) -> go.Figure:
    """Items (rows, labelled by their short names) by assessment date; hover shows each item's full
    wording (`matrix.attrs["wording"]`, screens.patient.item_matrix). The page draws `item_heatmap_spec`."""
    heatmap, layout = _heatmap_parts(matrix, instrument, item_max)
    return go.Figure(data=[heatmap], layout=layout)


def item_heatmap_spec(matrix: pd.DataFrame, instrument: str, item_max: int) -> dict:
    """`item_heatmap(...).to_dict()` made without plotly's figure objects (the named colour scale as plotly
    spells it out, the arrays as `to_dict` writes them); draw it with `drawn(spec)`."""
    from _plotly_utils.utils import convert_to_base64

    heatmap, layout = _heatmap_parts(matrix, instrument, item_max)
    data = [{**heatmap, "colorscale": _colour_scale(heatmap["colorscale"])}]
    convert_to_base64(data)  # one trace: plotly's own conversion (z as a typed array with its shape)
    return {"data": data, "layout": {**layout, "template": _default_template()}}


@functools.lru_cache(maxsize=8)
def _colour_scale(name: str) -> list:
    """A named colour scale as plotly's checks spell it out in a figure ([[position, colour], ...]); shared by
    every spec and never changed."""
    return go.Heatmap(colorscale=name).to_plotly_json()["colorscale"]


def _heatmap_parts(matrix: pd.DataFrame, instrument: str, item_max: int) -> tuple[dict, dict]:
    wording = matrix.attrs.get("wording") or list(matrix.index)
    words = np.array([[w] * matrix.shape[1] for w in wording], dtype=object)
    # made in one go (as _layout would set it): each update_* call copies and re-checks the figure
    heatmap = dict(type="heatmap", z=matrix.to_numpy(), x=list(matrix.columns), y=list(matrix.index), zmin=0,
                   zmax=item_max, colorscale="YlOrRd", colorbar=dict(title=dict(text="score")), customdata=words, xgap=1,
                   ygap=1, hovertemplate="%{customdata}<br>%{x}: %{z} of " + str(item_max) + "<extra></extra>")
    return heatmap, dict(
        yaxis=dict(autorange="reversed", title=dict(text="item")),
        xaxis=dict(title=dict(text="assessment date"), type="category"),
        title=dict(text=f"{instrument} items over time (which symptoms move)", x=0, xanchor="left"), height=360,
        margin=dict(l=10, r=10, t=50, b=10), hovermode="closest",
        legend=dict(orientation="h", yanchor="top", y=-0.22, xanchor="left", x=0))


def waterfall(w: pd.DataFrame, instrument: str, show_ids: bool = True) -> go.Figure:
    """screens.cohort.waterfall_bars: one bar per patient, or (with an `n` column) one bar per group of patients
    (with `low`/`high`: the group's range; without: a group of at least the minimum cell size, median only)."""
    colours = {"response (50% or more fall)": "#2ca02c", "some improvement": "#9ecae1", "no improvement or worse": "#d62728"}
    grouped = "n" in w.columns
    total = w.attrs.get("patients", int(w["n"].sum()) if grouped else len(w))
    least = w.attrs.get("min_cell") or (int(w["n"].min()) if grouped and len(w) and w["n"].notna().all() else None)
    fig = go.Figure()
    for outcome, colour in colours.items():
        d = w[w["outcome"] == outcome]
        if grouped and "low" in w.columns:  # never patient ids: a bar is a group of patients
            hover = [f"patients {a:,}-{b:,} of {total:,} by best change: "
                     f"median {c:+.0f}% (from {lo:+.0f}% to {hi:+.0f}%)"
                     for a, b, c, lo, hi in zip(d["first_rank"], d["last_rank"], d["best_percent_change"], d["low"], d["high"])]
        elif grouped:  # groups of at least the minimum cell size: no ranks or sizes (they add up to a count)
            hover = [f"group {r:,} of {len(w):,} in order of best change ({least} patients or more): median {c:+.0f}%"
                     for r, c in zip(d["rank"], d["best_percent_change"])]
        else:
            hover = [(f"{_markup_free(p)}: " if show_ids else "") + f"baseline {b:g}, best {s:g} ({c:+.0f}%)"
                     for p, b, s, c in zip(d["patient_id"], d["baseline_score"], d["best_score"], d["best_percent_change"])]
        fig.add_trace(go.Bar(x=d["rank"], y=d["best_percent_change"], name=outcome, marker_color=colour,
                             hovertext=hover, hoverinfo="text"))
    fig.add_hline(y=-50, line=dict(dash="dash", color="#2ca02c"), annotation_text="response: 50% fall",
                  annotation_position="top left")
    fig.update_layout(bargap=0.05)
    if grouped and "low" not in w.columns:
        axis = f"groups of at least {least} patients (ordered by best change)"
        title = f"Best {instrument} change, groups of patients"
    elif grouped:
        axis, title = "percentiles of patients (ordered by best change)", f"Best {instrument} change, by percentile"
    else:
        axis, title = "patients (ordered by best change)", f"Best {instrument} change, per patient"
    fig.update_xaxes(title_text=axis, showticklabels=False)
    fig.update_yaxes(title_text=f"best change in {instrument} from baseline (%)")
    return _layout(fig, title)


def trajectory(band: pd.DataFrame, instrument: str, remission_cut: float) -> go.Figure:
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=band["week"], y=band["q3"], mode="lines", line=dict(width=0), showlegend=False, hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=band["week"], y=band["q1"], mode="lines", line=dict(width=0), fill="tonexty",
                             fillcolor="rgba(99,110,250,0.25)", name="interquartile range", hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=band["week"], y=band["median"], mode="lines+markers", name="median",
                             line=dict(color="#636efa", width=3),
                             hovertext=[f"week {w}: median {m:g} (IQR {a:g}-{b:g}), n = {n}" for w, m, a, b, n in
                                        zip(band["week"], band["median"], band["q1"], band["q3"], band["n"])],
                             hoverinfo="text"))
    step = 1 if len(band) <= 14 else 2 if len(band) <= 28 else 4
    fig.add_trace(go.Scatter(x=band["week"], y=np.full(len(band), -0.5),
                             mode="text", text=[str(n) if i % step == 0 else "" for i, n in enumerate(band["n"])],
                             textfont=dict(size=10), showlegend=False, hoverinfo="skip"))  # the caption explains them
    # label at the left end: at the right the median sits on the cut-off and covers it
    fig.add_hline(y=remission_cut, line=dict(dash="dash", color="#17becf"), annotation_text=f"remission cut-off {remission_cut:g}",
                  annotation_position="top left")
    fig.update_xaxes(title_text="weeks since first infusion (week 0 = baseline)")
    fig.update_yaxes(title_text=f"{instrument} total (points)", rangemode="tozero")
    return _layout(fig, f"Cohort {instrument} by week since first infusion")


def severity_movement(table: pd.DataFrame, instrument: str, hidden_label: str = "") -> go.Figure:
    """Blank (NaN) cells are suppressed small counts: labelled `hidden_label` (e.g. "<11")."""
    z = table.to_numpy(dtype=float)
    text = np.where(np.isnan(z), hidden_label, np.nan_to_num(z).astype(int).astype(str))
    fig = go.Figure(go.Heatmap(z=z, x=list(table.columns), y=list(table.index), colorscale="Blues",
                               text=text, texttemplate="%{text}", colorbar=dict(title="patients"),
                               hovertemplate="baseline %{y} → latest %{x}: %{z} patients<extra></extra>"))
    fig.update_xaxes(title_text=f"latest {instrument} band")
    fig.update_yaxes(title_text=f"baseline {instrument} band", autorange="reversed")
    return _layout(fig, f"Severity: baseline to latest {instrument} band")


def funnel(data: dict, by: str, outcome_label: str) -> go.Figure:
    g, lim, p0 = data["groups"], data["limits"], data["clinic_rate"]
    fig = go.Figure()
    for col, name, dash in (("hi998", "99.8% limits", "dot"), ("lo998", None, "dot"), ("hi95", "95% limits", "dash"), ("lo95", None, "dash")):
        fig.add_trace(go.Scatter(x=lim["n"], y=100 * lim[col], mode="lines", line=dict(color="#888", dash=dash),
                                 name=name or "", showlegend=name is not None, hoverinfo="skip"))
    # the clinic rate's label at the left end of its line: the groups' points sit to the right, near their size
    fig.add_hline(y=100 * p0, line=dict(color="#444"), annotation_text=f"clinic rate {100 * p0:.0f}%",
                  annotation_position="bottom left")
    fig.add_trace(go.Scatter(x=g["n"], y=100 * g["rate"], mode="markers+text", text=g[by].map(_markup_free),
                             textposition="top center" if len(g) > 1 else "middle left",
                             textfont=dict(shadow="auto"),  # a halo: the limit lines pass under the labels
                             marker=dict(size=12, color="#636efa"), name=by,
                             hovertext=[f"{_markup_free(name)}: {100 * r:.0f}% of {n} evaluable patients ({pos})"
                                        for name, n, r, pos in zip(g[by], g["n"], g["rate"], g["position"])],
                             hoverinfo="text"))
    fig.update_xaxes(title_text="evaluable patients (n)", range=[0, float(max(lim["n"].max() if len(lim) else 10, 10))])
    fig.update_yaxes(title_text=f"{outcome_label} rate (%)", range=[0, 100])
    return _layout(fig, f"{outcome_label.capitalize()} by {by} vs the clinic rate")


def completeness(c: pd.DataFrame) -> go.Figure:
    """screens.cohort completeness rows: exact shares solid; bounds (`bound` "at least"/"at most") pale, drawn at
    the bound; the month in progress (`partial`) hatched."""
    bound = c["bound"] if "bound" in c else pd.Series([None] * len(c), index=c.index)
    partial = c["partial"] if "partial" in c else pd.Series(False, index=c.index)
    texts = c["share_text"] if "share_text" in c else [f"{100 * s:.0f}%" for s in c["share"]]
    hover = [f"{m:%b %Y}: {n:,.0f} infusions, {s} with an assessment in the 7 days before"
             + (" (month in progress)" if p else "") for m, n, s, p in zip(c["month"], c["infusions"], texts, partial)]
    fig = go.Figure(go.Bar(
        x=c["month"], y=100 * c["share"], hovertext=hover, hoverinfo="text", name="share assessed",
        marker=dict(color=["rgba(0,162,168,0.35)" if pd.notna(b) else "#00a2a8" for b in bound],
                    pattern=dict(shape=["/" if p else "" for p in partial], fillmode="overlay"),
                    line=dict(color="#00a2a8", width=1))))
    fig.update_xaxes(title_text="month")
    fig.update_yaxes(title_text="infusions with a score in the 7 days before (%)", range=[0, 105])
    return _layout(fig, "Infusions assessed in the 7 days before", height=340)


def survival(curves: list[dict], title: str) -> go.Figure:
    """curves: [{"label", "times", "survival", "lower", "upper", "n", "end", "at_risk"}] (screens.durability.survival_curves):
    each curve with its 95% band, stopping at its last observed day, and its cycles at risk under the plot."""
    palette = ["#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3"]
    fig = go.Figure()
    rows = len(curves)
    for i, c in enumerate(curves):
        colour = palette[i % len(palette)]
        t = np.concatenate([[0.0], c["times"]])
        s = np.concatenate([[1.0], c["survival"]])
        lo = np.concatenate([[1.0], c["lower"]])
        hi = np.concatenate([[1.0], c["upper"]])
        fig.add_trace(go.Scatter(x=t, y=100 * hi, mode="lines", line=dict(width=0), showlegend=False, hoverinfo="skip"))
        fig.add_trace(go.Scatter(x=t, y=100 * lo, mode="lines", line=dict(width=0), fill="tonexty",
                                 fillcolor=_alpha(colour, 0.18), showlegend=False, hoverinfo="skip"))
        fig.add_trace(go.Scatter(x=t, y=100 * s, mode="lines", line=dict(color=colour, width=2.5),
                                 name=f"{_markup_free(c['label'])} ({c['n']})",
                                 hovertext=[f"{_markup_free(c['label'])}: day {x:g}, {100 * y:.0f}% still in response (95% CI {100 * a:.0f}-{100 * b:.0f}%)"
                                            for x, y, a, b in zip(t, s, lo, hi)], hoverinfo="text"))
        if c.get("end") is not None and len(c["times"]):
            fig.add_trace(go.Scatter(x=[c["times"][-1]], y=[100 * c["survival"][-1]], mode="markers",
                                     marker=dict(symbol="line-ns", size=14, line=dict(width=2, color=colour)),
                                     showlegend=False, hovertext=[f"{_markup_free(c['label'])}: the curve stops here (day {c['end']:.0f}), "
                                                                  "the last day enough cycles were still seen in response"],
                                     hoverinfo="text"))
        risk = c.get("at_risk") or []
        if risk:
            fig.add_trace(go.Scatter(x=[d for d, _ in risk], y=[-9.0 * (i + 1)] * len(risk), mode="text",
                                     text=[f"{n:,}" if isinstance(n, (int, np.integer)) else str(n) for _, n in risk],
                                     textfont=dict(size=10, color=colour), showlegend=False,
                                     hovertext=[f"{_markup_free(c['label'])}: {n} cycles still seen in response at day {d:g} or later"
                                                for d, n in risk], hoverinfo="text"))
    fig.add_hline(y=50, line=dict(dash="dot", color="#888"), annotation_text="median", annotation_position="top right")
    # room left of day 0 and right of the last day, so the at-risk numbers there are not cut in half
    last = max([float(c["times"][-1]) for c in curves if len(c["times"])]
               + [float(d) for c in curves for d, _ in (c.get("at_risk") or [])] + [1.0])
    fig.update_xaxes(title_text="days since the infusion that started the cycle (numbers below: cycles still at risk)",
                     range=[-0.04 * last, 1.04 * last])
    fig.update_yaxes(title_text="still in response (%)", range=[-9.0 * rows - 6, 102], tickvals=[0, 25, 50, 75, 100])
    return _layout(fig, title, height=420 + 18 * rows)


def _alpha(hex_colour: str, a: float) -> str:
    h = hex_colour.lstrip("#")
    return f"rgba({int(h[0:2], 16)},{int(h[2:4], 16)},{int(h[4:6], 16)},{a})"


def forest(rows: pd.DataFrame, measure: str = "hazard ratio") -> go.Figure:
    """rows: term, estimate, low, high (ratios; 1 = no difference)."""
    fig = go.Figure(go.Scatter(
        x=rows["estimate"], y=rows["term"], mode="markers", marker=dict(size=11, symbol="square", color="#636efa"),
        error_x=dict(type="data", symmetric=False, array=rows["high"] - rows["estimate"], arrayminus=rows["estimate"] - rows["low"]),
        hovertext=[f"{t}: {e:.2f} (95% CI {lo:.2f}-{hi:.2f})" for t, e, lo, hi in zip(rows["term"], rows["estimate"], rows["low"], rows["high"])],
        hoverinfo="text", name=measure))
    fig.add_vline(x=1, line=dict(dash="dash", color="#888"))
    fig.update_xaxes(type="log", title_text=f"{measure} (log scale; 1 = no difference)")
    fig.update_yaxes(title_text="", autorange="reversed")
    return _layout(fig, f"Longer or shorter response: {measure}s (95% CI)", height=max(260, 70 * len(rows) + 120))


def interval_histogram(bins: pd.DataFrame) -> go.Figure:
    """Bars of `screens.durability.interval_distribution` (binned on the server; blank bins are suppressed counts)."""
    width = bins["end_day"] - bins["start_day"]
    fig = go.Figure(go.Bar(x=bins["start_day"] + width / 2, y=bins["patients"], width=width, marker_color="#00a2a8",
                           customdata=np.stack([bins["start_day"], bins["end_day"] - 1], axis=1) if len(bins) else None,
                           hovertemplate="%{customdata[0]}-%{customdata[1]} days: %{y} patients<extra></extra>"))
    fig.update_xaxes(title_text="suggested interval between infusions (days)")
    fig.update_yaxes(title_text="patients")
    return _layout(fig, "Distribution of suggested maintenance intervals", height=340)


def infusions_per_month(m: pd.DataFrame) -> go.Figure:
    """screens.durability.infusions_per_patient_month: every infusion and maintenance only; blank months are
    suppressed (too few patients); the month in progress (m.attrs["partial"]) is left out and said so."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=m["month"], y=m["per_patient"], mode="lines+markers", name="all infusions",
                             line=dict(color="#636efa", width=4), marker=dict(size=9), opacity=0.75,
                             hovertext=[f"{mo:%b %Y}: {i:,.0f} infusions, {p:,.0f} patients ({r:.2f} each)"
                                        if pd.notna(r) else f"{mo:%b %Y}: not shown (too few patients)"
                                        for mo, i, p, r in zip(m["month"], m["infusions"], m["patients"], m["per_patient"])],
                             hoverinfo="text"))
    fig.add_trace(go.Scatter(x=m["month"], y=m["maintenance_per_patient"], mode="lines+markers", name="maintenance only",
                             line=dict(color="#ef553b", width=2, dash="dash"), marker=dict(symbol="diamond", size=7),
                             hovertext=[f"{mo:%b %Y}: {r:.2f} maintenance infusions per patient on maintenance"
                                        if pd.notna(r) else f"{mo:%b %Y}: maintenance figure not shown"
                                        for mo, r in zip(m["month"], m["maintenance_per_patient"])], hoverinfo="text"))
    partial = m.attrs.get("partial")
    title = "Infusions per patient per month"
    if partial:
        title += f"<br><sup>{partial} not shown: month in progress</sup>"
    fig.update_xaxes(title_text="month")
    fig.update_yaxes(title_text="infusions per infused patient per month", rangemode="tozero")
    return _layout(fig, title, height=360)


def _policy_short(name: str) -> str:
    if name.startswith("oracle"):
        return "oracle (best case)"
    if name.startswith("personalised (target"):
        return f"personalised {100 * float(name.split('target')[1].strip(' )')):.0f}%"
    return name.replace("every ", "").replace(" days", " d")


def _label_sides(x, y, near_x: float = 1.5, near_y: float = 1.5) -> list[str]:
    """Above each point, or below it when a point nearby already has its label above (labels would overlap)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    sides: list[str] = []
    for i in range(len(x)):
        crowded = any(sides[j] == "top center" and abs(x[i] - x[j]) < near_x and abs(y[i] - y[j]) < near_y
                      for j in range(i))
        sides.append("bottom center" if crowded else "top center")
    return sides


def policy_tradeoff(table: pd.DataFrame) -> go.Figure:
    """Infusions per patient-year against time out of response: lower-left is better on both."""
    fig = go.Figure(go.Scatter(
        x=table["infusions_per_patient_year"], y=100 * table["share_days_out_of_response"], mode="markers+text",
        text=[_policy_short(p) for p in table["policy"]], textposition=_label_sides(
            table["infusions_per_patient_year"], 100 * table["share_days_out_of_response"]),
        textfont=dict(size=10, shadow="auto"),
        marker=dict(size=12, color="#ab63fa"),
        hovertext=[f"{p}: {i:.1f} infusions per patient-year, {100 * d:.1f}% of days out of response, "
                   f"{100 * r:.0f}% of infusions were rescues" for p, i, d, r in
                   zip(table["policy"], table["infusions_per_patient_year"], table["share_days_out_of_response"],
                       table["rescue_share"])], hoverinfo="text"))
    fig.update_xaxes(title_text="maintenance and rescue infusions per patient-year")
    fig.update_yaxes(title_text="days out of response after induction (%)", rangemode="tozero")
    return _layout(fig, "Maintenance policies (simulated clinic)", height=440)
