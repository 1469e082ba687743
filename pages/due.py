"""Due list (clinician): the caseload ordered by urgency."""
import pandas as pd
import streamlit as st

from analytics import selfreport, views
from pages import _session as session
from pages import _visit_forms

st.title("Due list")
scope = session.current_scope()
if not session.has_data():
    session.no_database_message()
    st.stop()

if not scope.patient_level:
    st.info("The due list names individual patients, so it is for clinicians: your role sees cohort figures "
            "(Cohort outcomes, Durability and maintenance).", icon=":material/lock:")
    st.stop()

today = session.today()
no_score_days = st.slider("Flag patients with no assessment for at least (days)", 7, 90, 28, step=7)
show_inactive = st.toggle(f"Also list patients no longer in active care (no infusion and no score for "
                          f"{views.ACTIVE_DAYS} days; no due date)", value=False, key="due_inactive")
with st.spinner("Checking every patient in your caseload..."):
    f = session.frames(scope)
    suggestions = session.suggestions(scope)
    # Open safety flags and self-report cadence (analytics.selfreport); flags are read fresh, never cached.
    self_report = selfreport.due_columns(
        f["patients"], f["assessments"], session.data_access(scope).safety_flags(), today,
        suggestions[["patient_id", "next_due_on"]] if suggestions is not None and len(suggestions) else None)
    due = views.due_list(f["patients"], f["treatments"], f["assessments"], today,
                         no_score_days=no_score_days, suggestions=suggestions, self_report=self_report,
                         include_inactive=show_inactive)

if f["patients"].empty:
    st.info("No patients in your caseload yet: import patients on the Data page.")
    st.stop()
if suggestions is None:
    st.caption("Suggested infusion dates are not available yet (the interval model is not installed): "
               "overdue, due-this-week and taper flags are missing from this list.")

counts = {name: int(due["reasons"].str.contains(name, regex=False).sum()) for name, _ in views.URGENCY}
cols = st.columns(len(counts))
for col, (name, n) in zip(cols, counts.items()):
    col.metric(name, n)
_visit_forms.safety_flags(scope, page="due")

if due.empty:
    st.success(f"Nobody needs attention as of {today:%d %b %Y}: no one overdue, no positive item 9, "
               f"no lost response, and everyone assessed within {no_score_days} days.")
    st.stop()

st.caption(f"{len(due)} patients need attention as of {today:%a %d %b %Y}, most urgent first "
           "(order: safety flag, item 9 positive, overdue, lost response, reliable worsening, due this week, no recent score, "
           "taper candidate, self-report due; then, if shown, no longer in active care). "
           "Click a patient id to open their trajectory.")
shown = due.assign(
    open=[f"patient?patient={p}" for p in due["patient_id"]],
    next_due_on=pd.to_datetime(due["next_due_on"]).dt.date,
    last_infusion=pd.to_datetime(due["last_infusion"]).dt.date,
    last_assessment=pd.to_datetime(due["last_assessment"]).dt.date,
)
st.dataframe(
    shown[["open", "reasons", "next_due_on", "last_infusion", "last_assessment", "days_since_score", "latest_phq9",
           "self_report_reason"]],
    hide_index=True, width="stretch",
    column_config={
        "open": st.column_config.LinkColumn("patient", display_text=r"patient\?patient=(.*)"),
        "reasons": st.column_config.TextColumn("why", width="large"),
        "next_due_on": st.column_config.DateColumn("suggested next infusion"),
        "last_infusion": st.column_config.DateColumn("last infusion"),
        "last_assessment": st.column_config.DateColumn("last assessment"),
        "days_since_score": st.column_config.NumberColumn("days since a score"),
        "latest_phq9": st.column_config.NumberColumn("latest PHQ-9", format="%d"),
        "self_report_reason": st.column_config.TextColumn("self-report due"),
    },
)

# Reminders without a messaging vendor: create a single-use link to copy, or print as a QR code.
wanting = due.loc[due["self_report_due"], "patient_id"].tolist()
if wanting:
    with st.expander(f"Self-report links ({len(wanting)} due)", icon=":material/qr_code:"):
        chosen = st.selectbox("Patient", wanting, key="due_link_patient")
        _visit_forms.self_report_link(scope, chosen)
