"""Cohort outcomes (director): headline figures, waterfall, trajectory, severity movement, funnel, completeness."""
from datetime import date

import streamlit as st

from analytics import charts, outcomes, scales, suppress, views
from analytics.permissions import may
from pages import _session as session

st.title("Cohort outcomes")
scope = session.current_scope()
# Roles without patient-level access see counts under the minimum cell size as "<11" (analytics.suppress).
min_cell = scope.suppression_threshold
if not session.has_data():
    session.no_database_message()
    st.stop()

with st.sidebar:
    st.header("Filters")
    instrument = st.selectbox("Instrument", list(scales.codes()), key="cohort_instrument")
# Per-patient summaries computed once per data version (pages/_session.py): a rerun aggregates those,
# never the raw assessments (analytics.views.cohort_view).
with st.spinner("Preparing the cohort (once after each import)..."):
    summary = session.cohort_summary(scope, instrument)
base = summary.base
if not base.has_infusions:
    st.info("No infusions yet: import treatments on the Data page (or build the demo clinic) to see cohort outcomes.")
    st.stop()

options = base.options
first_day, last_day = base.period
with st.sidebar:
    period = st.date_input("First infusion between", value=(first_day, last_day), min_value=first_day,
                           max_value=max(last_day, session.today()), key="cohort_period")
    sites = st.multiselect("Site", options["sites"], key="cohort_sites")
    clinicians = st.multiselect("Clinician", options["clinicians"], key="cohort_clinicians")
    routes = st.multiselect("Route (of the first infusion)", options["routes"], key="cohort_routes")
    comorbidities = st.multiselect("Comorbidity", options["comorbidities"], key="cohort_comorbidities")

start, end = (period[0], period[1]) if isinstance(period, (tuple, list)) and len(period) == 2 else (first_day, last_day)
filters = views.Filters(instrument=instrument, sites=tuple(sites), clinicians=tuple(clinicians), routes=tuple(routes),
                        comorbidities=tuple(comorbidities),
                        start=None if start == first_day else start, end=None if end == last_day else end)

with st.spinner("Computing cohort outcomes..."):
    view = views.cohort_view(summary, filters, session.today(), min_cell)
head, induction, cycle_counts = view["headline"], view["induction"], view["cycles"]

st.caption(f"Period and filters: {head['period']}. {suppress.count(head['treated'], min_cell)} treated patients, "
           f"{suppress.count(head['evaluable'], min_cell)} with a baseline and a score within 21 days after induction (the rates' denominator).")
if head["patients"] == 0:
    st.info("No patients match these filters: widen the date range or clear a filter in the sidebar.")
    st.stop()

c1, c2, c3, c4, c5 = st.columns(5)
c1.metric("Active patients", suppress.count(head["active_patients"], min_cell), help=f"An infusion or assessment in the last {views.ACTIVE_DAYS} days.")
c2.metric(f"Infusions in {head['month']}", suppress.count(head["infusions_this_month"], min_cell))
resp, remi = head["response"], head["remission"]
c3.metric(f"Response after induction ({instrument})", "-" if resp.value is None else f"{100 * resp.value:.0f}%",
          help="At least 50% below baseline at the first score after induction. 95% Wilson interval.")
c3.caption(resp.text())
cut, inclusive = outcomes.remission_threshold(instrument)
c4.metric(f"Remission after induction ({instrument})", "-" if remi.value is None else f"{100 * remi.value:.0f}%",
          help=f"{instrument} {'≤' if inclusive else '<'} {cut:g} at the first score after induction. 95% Wilson interval.")
c4.caption(remi.text())
median = head["median_durability_days"]
n_cycle_patients = cycle_counts["n_patients"]
median_text = "not reached" if median is None else f"{median:.0f} days"
c5.metric("Median durability (PHQ-9)", suppress.figure(median_text, n_cycle_patients, min_cell),
          help="Median time from an infusion given in response to loss of response (Turnbull estimate; "
               "loss lies between two scores).")
c5.caption(f"{suppress.count(cycle_counts['n_cycles'], min_cell)} response cycles, "
           f"{suppress.count(cycle_counts['n_losses'], min_cell)} ended in loss")

left, right = st.columns(2)
with left:
    w = view["waterfall"]
    if w.empty:
        st.info(f"No patient has both a {instrument} baseline and a later score yet.")
    else:
        bars = views.waterfall_bars(w)
        st.plotly_chart(charts.waterfall(bars, instrument, show_ids=may(scope, "see_patient_rows")), key="waterfall")
        if bars is not w:
            st.caption(f"{len(w):,} patients: each bar is one percentile of them (1/{views.WATERFALL_BINS}, in order "
                       f"of best change), drawn at its median; hover for its range. One bar per patient is shown "
                       f"up to {views.WATERFALL_MAX_BARS:,} patients.")
with right:
    band = view["trajectory"]
    if band.empty:
        st.info(f"Too few {instrument} scores after the first infusion to draw a cohort trajectory.")
    else:
        st.plotly_chart(charts.trajectory(band, instrument, cut), key="trajectory")
        st.caption("Line: median; band: interquartile range; numbers along the bottom: patients with a score that week.")

left, right = st.columns(2)
with left:
    table = view["severity"]
    if table.fillna(0).to_numpy().sum() == 0 and not table.isna().to_numpy().any():
        st.info(f"No patient has a {instrument} baseline and a later score yet.")
    else:
        st.plotly_chart(charts.severity_movement(table, instrument, suppress.label(min_cell)), key="severity")
with right:
    by = st.radio("Compare", ["site", "clinician"], horizontal=True, key="funnel_by")
    outcome = st.radio("Outcome", ["responded", "remitted"], horizontal=True, key="funnel_outcome",
                       format_func=lambda o: {"responded": "response", "remitted": "remission"}[o])
    data = views.funnel(induction, view["patients"], by, outcome, min_cell=min_cell)
    if data["clinic_rate"] is None or data["groups"].empty:
        st.info("Not enough evaluable patients to compare groups.")
    else:
        st.plotly_chart(charts.funnel(data, by, {"responded": "response", "remitted": "remission"}[outcome]), key="funnel")
        if data.get("hidden_groups"):
            st.caption(f"{data['hidden_groups']} group(s) with fewer than {min_cell} patients are not shown.")
        st.caption("A point outside the funnel differs from the clinic rate by more than chance would explain "
                   "for a group of that size; inside it, differences are compatible with chance.")

comp = view["completeness"]
if min_cell:  # a share from fewer infusions than the minimum cell size is not shown
    comp = comp[comp["infusions"] >= min_cell].assign(
        assessed_shown=lambda c: [suppress.count(int(a), min_cell) for a in c["assessed"]])
if comp.empty:
    st.info("No infusions in this selection, so no completeness figure.")
else:
    total = comp["assessed"].sum() / comp["infusions"].sum()
    st.plotly_chart(charts.completeness(comp), key="completeness")
    st.caption(f"Overall {100 * total:.0f}% of {int(comp['infusions'].sum())} infusions had an assessment (any instrument) "
               f"in the {views.COMPLETENESS_DAYS} days before, the infusion day included.")
