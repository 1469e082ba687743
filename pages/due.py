"""Due list (clinician): the caseload ordered by urgency."""
import pandas as pd
import streamlit as st

from analytics import views
from pages import _session as session

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
with st.spinner("Checking every patient in your caseload..."):
    f = session.frames(scope)
    suggestions = session.suggestions(scope)
    due = views.due_list(f["patients"], f["treatments"], f["assessments"], today,
                         no_score_days=no_score_days, suggestions=suggestions)

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

if due.empty:
    st.success(f"Nobody needs attention as of {today:%d %b %Y}: no one overdue, no positive item 9, "
               f"no lost response, and everyone assessed within {no_score_days} days.")
    st.stop()

st.caption(f"{len(due)} patients need attention as of {today:%a %d %b %Y}, most urgent first "
           "(order: item 9 positive, overdue, lost response, reliable worsening, due this week, no recent score, taper candidate). "
           "Click a patient id to open their trajectory.")
shown = due.assign(
    open=[f"patient?patient={p}" for p in due["patient_id"]],
    next_due_on=pd.to_datetime(due["next_due_on"]).dt.date,
    last_infusion=pd.to_datetime(due["last_infusion"]).dt.date,
    last_assessment=pd.to_datetime(due["last_assessment"]).dt.date,
)
st.dataframe(
    shown[["open", "reasons", "next_due_on", "last_infusion", "last_assessment", "days_since_score", "latest_phq9"]],
    hide_index=True, width="stretch",
    column_config={
        "open": st.column_config.LinkColumn("patient", display_text=r"patient\?patient=(.*)"),
        "reasons": st.column_config.TextColumn("why", width="large"),
        "next_due_on": st.column_config.DateColumn("suggested next infusion"),
        "last_infusion": st.column_config.DateColumn("last infusion"),
        "last_assessment": st.column_config.DateColumn("last assessment"),
        "days_since_score": st.column_config.NumberColumn("days since a score"),
        "latest_phq9": st.column_config.NumberColumn("latest PHQ-9", format="%d"),
    },
)
