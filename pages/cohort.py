"""Cohort outcomes (director): headline figures, waterfall, trajectory, severity movement, funnel, completeness."""
import streamlit as st

from analytics import charts, printable
from analytics.screens import cohort
from pages._page import open_page
from pages._text import plain

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

labels = list(choices.periods["label"])
with st.sidebar:
    if len(labels) > 1:
        first, last = st.select_slider("First infusion between", options=labels, value=(labels[0], labels[-1]),
                                       key="cohort_period",
                                       help="Whole months" + (f", in periods of at least {page.scope.suppression_threshold} "
                                                              "first infusions" if page.scope.suppression_threshold else "")
                                            + ": a narrower range could single out a few patients.")
    else:
        first = last = labels[0]
    subset = st.selectbox("Patients", list(choices.subsets), key="cohort_subset",
                          help="Every patient, or one site, clinician, route of the first infusion or comorbidity. "
                               "Small groups are pooled (e.g. two clinicians together).")
    if page.scope.suppression_threshold:
        st.caption("One filter at a time: a period, or one group over the whole period. Combinations could be "
                   "subtracted from one another to single out a few patients (small-number rules, Method page).")

filters = cohort.chosen_filters(instrument, subset, choices.periods, first, last)
with st.spinner("Computing cohort outcomes..."):
    screen = cohort.cohort_page(ws, filters, page.today)
head, cycle_counts = screen.headline, screen.cycle_counts

if screen.refused:
    st.warning(f"Nothing is shown for this selection: {plain(screen.refused)}. Widen the period or choose a larger group.",
               icon=":material/visibility_off:")
    st.caption(f"Selection: {plain(screen.description)}.")
    st.stop()
if head["patients"] == 0:
    st.info("No patients match these filters: widen the period or choose every patient in the sidebar.")
    st.stop()

st.caption(f"Selection: {plain(screen.description)}. {head['treated']} treated patients. Evaluable (a baseline and a score "
           f"within 21 days after induction, the rates' denominator): {head['evaluable']}.")
c1, c2, c3, c4, c5 = st.columns(5)
c1.metric("Active patients", head["active_patients"], help=f"An infusion or assessment in the last {cohort.ACTIVE_DAYS} days.")
month = head["month"].split()
c2.metric(f"Infusions in {month[0][:3]} {month[1]}", head["infusions_this_month"],
          help=f"{head['month']}" + (", month to date." if head["month_to_date"] else "."))
if head["month_to_date"]:
    c2.caption("month to date")
resp, remi = head["response"], head["remission"]
cut, inclusive = screen.remission_cut, screen.remission_inclusive
c3.metric(f"Response ({instrument})", "not shown" if resp.value is None else f"{100 * resp.value:.0f}%",
          help="At least 50% below baseline at the first score after induction. 95% Wilson interval.")
c3.caption(resp.text())
c4.metric(f"Remission ({instrument})", "not shown" if remi.value is None else f"{100 * remi.value:.0f}%",
          help=f"{instrument} {'≤' if inclusive else '<'} {cut:g} at the first score after induction. 95% Wilson interval.")
c4.caption(remi.text())
modelled = head["median_source"] == "measurement model"
c5.metric(f"Median durability ({screen.durability_instrument})", head["median_durability"],
          help=cohort.MEDIAN_HELP if modelled else cohort.MEDIAN_HELP_LITERAL)
c5.caption(head["median_note"] or cohort.median_caption(head, cycle_counts))

left, right = st.columns(2)
with left:
    bars = screen.waterfall_bars
    if bars.empty:
        st.info(f"No waterfall: {screen.notes[0] if screen.notes else f'no patient has both a {instrument} baseline and a later score yet.'}")
    elif len(bars) == 1 and screen.min_cell:  # one bar is not a waterfall: say its one figure instead
        st.info(f"Best {instrument} change: the patients with a baseline and a later score make a single group "
                f"(at least {screen.min_cell}), so no waterfall is drawn; their median best change is "
                f"{bars['best_percent_change'].iloc[0]:+.0f}% from baseline.")
    else:
        st.plotly_chart(page.figure(("waterfall", filters, page.today),
                                    lambda: charts.waterfall(bars, instrument, show_ids=screen.show_ids)), key="waterfall")
        if "n" in bars.columns and screen.min_cell:
            counted = screen.waterfall_patients
            st.caption(f"{f'{counted:,} patients' if isinstance(counted, int) else 'Patients with a baseline and a later score'}"
                       f" in order of best change; each bar is a group of at least {screen.min_cell} of them (no bar "
                       "shows one patient), drawn at the group's median.")
        elif "n" in bars.columns:
            st.caption(f"{screen.waterfall_patients:,} patients: each bar is one percentile of them "
                       f"(1/{cohort.WATERFALL_BINS}, in order of best change), drawn at its median; hover for its range. "
                       f"One bar per patient is shown up to {cohort.WATERFALL_MAX_BARS:,} patients.")
with right:
    band = screen.trajectory
    if band.empty or (len(band) == 1 and screen.min_cell):
        st.info(f"Too few {instrument} scores after the first infusion to draw a cohort trajectory"
                + (f" (a week is drawn only when at least {screen.min_cell} patients have a score in it)."
                   if screen.min_cell else "."))
    else:
        st.plotly_chart(page.figure(("trajectory", filters, page.today), lambda: charts.trajectory(band, instrument, cut)),
                        key="trajectory")
        st.caption("Line: median; band: interquartile range; numbers along the bottom: patients with a score that week"
                   + (f" (weeks with fewer than {max(5, screen.min_cell)} are not drawn)." if screen.min_cell else "."))

left, right = st.columns(2)
with left:
    table = screen.severity
    if screen.severity_note:
        st.info(f"Severity movement not shown: {screen.severity_note}.")
    elif table.empty or (table.fillna(0).to_numpy().sum() == 0 and not table.isna().to_numpy().any()):
        st.info(f"No patient has a {instrument} baseline and a later score yet.")
    else:
        st.plotly_chart(page.figure(("severity", filters, page.today),
                                    lambda: charts.severity_movement(table, instrument, screen.severity_label)), key="severity")
        if table.isna().to_numpy().any():
            st.caption(f"Cells marked {screen.severity_label} hold fewer than {screen.min_cell} patients, or could be "
                       "worked out from the others by subtraction.")
with right:
    by = st.radio("Compare", ["site", "clinician"], horizontal=True, key="funnel_by")
    outcome = st.radio("Outcome", ["responded", "remitted"], horizontal=True, key="funnel_outcome",
                       format_func=lambda o: {"responded": "response", "remitted": "remission"}[o])
    data = page.workspace.memo(("funnel", filters, page.today, by, outcome), lambda: screen.funnel(by, outcome))
    if data["clinic_rate"] is None or data["groups"].empty:
        st.info(f"No {by} to compare: {data.get('note') or 'not enough evaluable patients'}")
    else:
        st.plotly_chart(page.figure(("funnel", filters, page.today, by, outcome), lambda: charts.funnel(
            data, by, {"responded": "response", "remitted": "remission"}[outcome])), key="funnel")
        if data.get("note"):
            st.caption(data["note"])
        st.caption("A point outside the funnel differs from the clinic rate by more than chance would explain "
                   "for a group of that size; inside it, differences are compatible with chance.")

comp = screen.completeness
if comp.empty:
    st.info("No month of this selection can be shown for measurement completeness"
            + (f" (each needs at least {screen.min_cell} infusions from as many patients)." if screen.min_cell else "."))
else:
    st.plotly_chart(page.figure(("completeness", filters, page.today), lambda: charts.completeness(comp)), key="completeness")
    notes = []
    if screen.completeness_overall:
        notes.append(f"Overall {screen.completeness_overall} had an assessment (any instrument) in the "
                     f"{cohort.COMPLETENESS_DAYS} days before, the infusion day included.")
    if comp["bound"].notna().any():
        notes.append(f"Pale bars are bounds: fewer than {screen.min_cell} infusions of that month lacked (or had) "
                     "an assessment, so the exact share is not shown.")
    if screen.completeness_hidden:
        notes.append(f"{screen.completeness_hidden} month(s) with too few infusions or patients are left out.")
    if comp["partial"].any():
        notes.append("The hatched bar is the month in progress.")
    st.caption(" ".join(notes))

st.divider()
st.download_button(
    "Download a board report of this selection (PDF)",
    data=lambda: printable.cohort_report_pdf(screen, page.today),
    file_name=f"cohort-report-{page.today:%Y-%m-%d}.pdf", mime="application/pdf", icon=":material/picture_as_pdf:",
    key="cohort_pdf",
    on_click=lambda: ws.data.log(  # an aggregate export: no patient's rows are in it
        "export", page="cohort", patients=[],
        detail={"what": "cohort report (PDF)", "aggregate": True, "selection": screen.description,
                "min_cell": screen.min_cell}))
st.caption("The report holds the figures on this page, under the same small-number rules, with the definitions.")
