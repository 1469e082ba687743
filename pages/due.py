"""Due list (clinician): the caseload ordered by urgency."""
import pandas as pd
import streamlit as st

from analytics.permissions import may
from analytics.screens import due
from pages import _context, _visit_forms
from pages._page import open_page

page = open_page("due", "Due list")

if not may(page.scope, "see_patient_rows"):
    st.info("The due list names individual patients, so it is for clinicians: your role sees cohort figures "
            "(Cohort outcomes, Durability and maintenance).", icon=":material/lock:")
    st.stop()

today = page.today
no_score_days = st.slider("Flag patients with no assessment for at least (days)", 7, 90, 28, step=7)
with st.spinner("Checking every patient in your caseload..."):
    screen = due.due_screen(page.workspace, today, no_score_days)

if not screen.has_patients:
    st.info("No patients in your caseload yet: import patients on the Data page.")
    st.stop()

cols = st.columns(len(screen.counts))
for col, (name, n) in zip(cols, screen.counts.items()):
    col.metric(name, n)
_visit_forms.safety_flags(page.scope, page="due")

listed = screen.due
if listed.empty:
    st.success(f"Nobody needs attention as of {today:%d %b %Y}: no one overdue, no positive item 9, "
               f"no lost response, and everyone assessed within {no_score_days} days.")
    st.stop()

# The list names patients: each distinct view of it is audited with the patients it showed.
view = (str(today), no_score_days, _context.db_version())
if st.session_state.get("due_list_viewed") != view:
    due.log_view(page.workspace, screen)
    st.session_state["due_list_viewed"] = view

st.caption(f"{len(listed)} patients need attention as of {today:%a %d %b %Y}, most urgent first "
           "(order: safety flag, item 9 positive, overdue, lost response, reliable worsening, due this week, no recent score, "
           "taper candidate, self-report due). "
           "Select a row to open that patient's trajectory here.")
shown = listed.assign(
    next_due_on=pd.to_datetime(listed["next_due_on"]).dt.date,
    last_infusion=pd.to_datetime(listed["last_infusion"]).dt.date,
    last_assessment=pd.to_datetime(listed["last_assessment"]).dt.date,
)
picked = st.dataframe(
    shown[["patient_id", "reasons", "next_due_on", "last_infusion", "last_assessment", "days_since_score", "latest_phq9",
           "self_report_reason"]],
    hide_index=True, width="stretch", key="due_table", on_select="rerun", selection_mode="single-row",
    column_config={
        "patient_id": st.column_config.TextColumn("patient"),
        "reasons": st.column_config.TextColumn("why", width="large"),
        "next_due_on": st.column_config.DateColumn("suggested next infusion"),
        "last_infusion": st.column_config.DateColumn("last infusion"),
        "last_assessment": st.column_config.DateColumn("last assessment"),
        "days_since_score": st.column_config.NumberColumn("days since a score"),
        "latest_phq9": st.column_config.NumberColumn("latest PHQ-9", format="%d"),
        "self_report_reason": st.column_config.TextColumn("self-report due"),
    },
)
rows = picked.selection.rows if picked is not None else []
if rows:  # opens in this tab (a link column would open a new one)
    st.switch_page("pages/patient.py", query_params={"patient": str(shown["patient_id"].iloc[rows[0]])})

# Reminders without a messaging vendor: create a single-use link to copy, or print as a QR code.
wanting = screen.links_wanted
if wanting:
    with st.expander(f"Self-report links ({len(wanting)} due)", icon=":material/qr_code:"):
        chosen = st.selectbox("Patient", wanting, key="due_link_patient")
        _visit_forms.self_report_link(page.scope, chosen)
