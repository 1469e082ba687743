"""Due list (clinician): the caseload ordered by urgency."""
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
show_inactive = st.toggle(f"Also list patients no longer in active care (no infusion and no score for "
                          f"{due.ACTIVE_DAYS} days; no due date)", value=False, key="due_inactive")
with st.spinner("Checking every patient in your caseload..."):
    screen = due.due_screen(page.workspace, today, no_score_days, include_inactive=show_inactive)

if not screen.has_patients:
    st.info("No patients in your caseload yet: import patients on the Data page.")
    st.stop()

cols = st.columns(len(screen.counts))
for col, (name, n) in zip(cols, screen.counts.items()):
    col.metric(name, n)
_visit_forms.safety_flags(page.scope, page="due", flags=screen.flags)

listed = screen.due
if listed.empty:
    st.success(f"Nobody needs attention as of {today:%d %b %Y}: no one overdue, no positive item 9, "
               f"no lost response, and everyone assessed within {no_score_days} days.")
    st.stop()

# The list names patients: each distinct view of it is audited with the patients it showed.
view = (str(today), no_score_days, show_inactive, _context.db_version())
if st.session_state.get("due_list_viewed") != view:
    due.log_view(page.workspace, screen)
    st.session_state["due_list_viewed"] = view

st.caption(f"{len(listed)} patients need attention as of {today:%a %d %b %Y}, most urgent first "
           "(order: safety flag, item 9 positive, overdue, lost response, reliable worsening, due this week, no recent score, "
           "taper candidate, self-report due; then, if shown, no longer in active care). "
           "Select a row to open that patient's trajectory here.")
# Every column fits the page at 1440 px (no sideways scroll): short headers, dates as "04 Dec 2026",
# the self-report's reason inside "why" (screen.rows).
DAY = "DD MMM YYYY"
shown = screen.rows
picked = st.dataframe(
    shown, hide_index=True, width="stretch", key="due_table", on_select="rerun", selection_mode="single-row",
    column_config={
        "patient_id": st.column_config.TextColumn("patient", width="small"),
        "why": st.column_config.TextColumn("why"),
        "next_due_on": st.column_config.DateColumn("next infusion", format=DAY, width="small",
                                                   help="Suggested date of the next maintenance infusion (empty: "
                                                        "not enough response cycles yet to suggest one)"),
        "last_infusion": st.column_config.DateColumn("last infusion", format=DAY, width="small"),
        "last_assessment": st.column_config.DateColumn("last score", format=DAY, width="small"),
        "days_since_score": st.column_config.NumberColumn("days since", width="small",
                                                          help="Calendar days since the last score, in the clinic's time zone"),
        "latest_phq9": st.column_config.NumberColumn("PHQ-9", format="%d", width="small", help="Latest PHQ-9 total"),
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
        _visit_forms.self_report_link(page.scope, chosen, page="due")
