"""Cohort outcomes (director): headline figures, waterfall, trajectory, severity movement, funnel, completeness."""
import streamlit as st

from analytics import charts
from analytics.screens import cohort
from pages._page import open_page

page = open_page("cohort", "Cohort outcomes")
ws = page.workspace

with st.sidebar:
    st.header("Filters")
    instrument = st.selectbox("Instrument", list(cohort.instruments()), key="cohort_instrument")
# Per-patient summaries computed once per data version: a rerun aggregates those, never the raw assessments.
with st.spinner("Preparing the cohort (once after each import)..."):
    choices = cohort.cohort_choices(ws, instrument)
if not choices.has_infusions:
    st.info("No infusions yet: import treatments on the Data page (or build the demo clinic) to see cohort outcomes.")
    st.stop()

options = choices.options
first_day, last_day = choices.period
with st.sidebar:
    period = st.date_input("First infusion between", value=(first_day, last_day), min_value=first_day,
                           max_value=max(last_day, page.today), key="cohort_period")
    sites = st.multiselect("Site", options["sites"], key="cohort_sites")
    clinicians = st.multiselect("Clinician", options["clinicians"], key="cohort_clinicians")
    routes = st.multiselect("Route (of the first infusion)", options["routes"], key="cohort_routes")
    comorbidities = st.multiselect("Comorbidity", options["comorbidities"], key="cohort_comorbidities")

start, end = (period[0], period[1]) if isinstance(period, (tuple, list)) and len(period) == 2 else (first_day, last_day)
filters = cohort.Filters(instrument=instrument, sites=tuple(sites), clinicians=tuple(clinicians), routes=tuple(routes),
                         comorbidities=tuple(comorbidities),
                         start=None if start == first_day else start, end=None if end == last_day else end)

with st.spinner("Computing cohort outcomes..."):
    screen = cohort.cohort_screen(ws, filters, page.today)
head, cycle_counts = screen.headline, screen.cycle_counts

st.caption(f"Period and filters: {head['period']}. {screen.count(head['treated'])} treated patients, "
           f"{screen.count(head['evaluable'])} with a baseline and a score within 21 days after induction (the rates' denominator).")
if head["patients"] == 0:
    st.info("No patients match these filters: widen the date range or clear a filter in the sidebar.")
    st.stop()

c1, c2, c3, c4, c5 = st.columns(5)
c1.metric("Active patients", screen.count(head["active_patients"]), help=f"An infusion or assessment in the last {cohort.ACTIVE_DAYS} days.")
c2.metric(f"Infusions in {head['month']}", screen.count(head["infusions_this_month"]))
resp, remi = head["response"], head["remission"]
c3.metric(f"Response after induction ({instrument})", "-" if resp.value is None else f"{100 * resp.value:.0f}%",
          help="At least 50% below baseline at the first score after induction. 95% Wilson interval.")
c3.caption(resp.text())
cut, inclusive = screen.remission_cut, screen.remission_inclusive
c4.metric(f"Remission after induction ({instrument})", "-" if remi.value is None else f"{100 * remi.value:.0f}%",
          help=f"{instrument} {'≤' if inclusive else '<'} {cut:g} at the first score after induction. 95% Wilson interval.")
c4.caption(remi.text())
median = head["median_durability_days"]
median_text = "not reached" if median is None else f"{median:.0f} days"
c5.metric(f"Median durability ({screen.durability_instrument})", screen.figure(median_text, cycle_counts["n_patients"]),
          help="Median time from an infusion given in response to loss of response (Turnbull estimate; "
               "loss lies between two scores).")
c5.caption(f"{screen.count(cycle_counts['n_cycles'])} response cycles, "
           f"{screen.count(cycle_counts['n_losses'])} ended in loss")

left, right = st.columns(2)
with left:
    w, bars = screen.waterfall, screen.waterfall_bars
    if w.empty:
        st.info(f"No patient has both a {instrument} baseline and a later score yet.")
    else:
        st.plotly_chart(charts.waterfall(bars, instrument, show_ids=screen.show_ids), key="waterfall")
        if bars is not w:
            st.caption(f"{len(w):,} patients: each bar is one percentile of them (1/{cohort.WATERFALL_BINS}, in order "
                       f"of best change), drawn at its median; hover for its range. One bar per patient is shown "
                       f"up to {cohort.WATERFALL_MAX_BARS:,} patients.")
with right:
    band = screen.trajectory
    if band.empty:
        st.info(f"Too few {instrument} scores after the first infusion to draw a cohort trajectory.")
    else:
        st.plotly_chart(charts.trajectory(band, instrument, cut), key="trajectory")
        st.caption("Line: median; band: interquartile range; numbers along the bottom: patients with a score that week.")

left, right = st.columns(2)
with left:
    table = screen.severity
    if table.fillna(0).to_numpy().sum() == 0 and not table.isna().to_numpy().any():
        st.info(f"No patient has a {instrument} baseline and a later score yet.")
    else:
        st.plotly_chart(charts.severity_movement(table, instrument, screen.severity_label), key="severity")
with right:
    by = st.radio("Compare", ["site", "clinician"], horizontal=True, key="funnel_by")
    outcome = st.radio("Outcome", ["responded", "remitted"], horizontal=True, key="funnel_outcome",
                       format_func=lambda o: {"responded": "response", "remitted": "remission"}[o])
    data = screen.funnel(by, outcome)
    if data["clinic_rate"] is None or data["groups"].empty:
        st.info("Not enough evaluable patients to compare groups.")
    else:
        st.plotly_chart(charts.funnel(data, by, {"responded": "response", "remitted": "remission"}[outcome]), key="funnel")
        if data.get("hidden_groups"):
            st.caption(f"{data['hidden_groups']} group(s) with fewer than {screen.min_cell} patients are not shown.")
        st.caption("A point outside the funnel differs from the clinic rate by more than chance would explain "
                   "for a group of that size; inside it, differences are compatible with chance.")

comp = screen.completeness
if comp.empty:
    st.info("No infusions in this selection, so no completeness figure.")
else:
    total = comp["assessed"].sum() / comp["infusions"].sum()
    st.plotly_chart(charts.completeness(comp), key="completeness")
    st.caption(f"Overall {100 * total:.0f}% of {int(comp['infusions'].sum())} infusions had an assessment (any instrument) "
               f"in the {cohort.COMPLETENESS_DAYS} days before, the infusion day included.")
