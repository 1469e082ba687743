"""Patient trajectory (clinician): one patient's scores, infusions, cycles and next infusion."""
import functools

import pandas as pd
import streamlit as st

from analytics import charts, scales, views
from analytics.access import AccessDenied
from pages import _session as session
from pages import _visit_forms

st.title("Patient trajectory")
scope = session.current_scope()
if not session.has_data():
    session.no_database_message()
    st.stop()

# ?patient=ID opens that patient; choosing another updates the URL so the link can be shared.
wanted = st.query_params.get("patient", "")
if "patient_search" not in st.session_state:
    st.session_state["patient_search"] = wanted  # only the first load fills the box from the link
search = st.text_input("Find a patient by id", placeholder="type part of a patient id, e.g. P0001",
                       help="Searches only your caseload as you type; shows at most 20 matches.",
                       key="patient_search", live="300ms").strip()
if not search:
    st.info("Type part of a patient id above to find a patient, or open a link with ?patient=ID.", icon=":material/search:")
    st.stop()
matches = session.search(scope, search)
if not matches:
    st.warning(f"No patient in your caseload has an id containing '{search}'.")
    st.stop()
default = matches.index(wanted) if wanted in matches else (matches.index(search) if search in matches else 0)
patient_id = st.selectbox(f"{len(matches)} match{'es' if len(matches) != 1 else ''}" + (" (first 20)" if len(matches) == 20 else ""),
                          matches, index=default)
if st.query_params.get("patient") != patient_id:
    st.query_params["patient"] = patient_id

try:
    record = session.patient_record(scope, patient_id)
except AccessDenied as exc:
    st.error(str(exc))
    st.stop()

treatments, assessments = record["treatments"], record["assessments"]
info = record["patient"].iloc[0]
today = session.today()
st.caption(f"{info['patient_id']} · site {info['site'] or '-'} · clinician {info['clinician'] or '-'} · "
           f"{info['diagnosis'] or 'diagnosis not recorded'}"
           + (f" · comorbidities: {info['comorbidities'].replace(';', ', ')}" if info["comorbidities"] else ""))

if assessments.empty and treatments.empty:
    st.info("No assessments or infusions yet for this patient: record one below, or import them on the Data page.")
    _visit_forms.visit_entry(scope, patient_id, today, treatments, assessments)
    st.stop()

with st.spinner("Working out response cycles and the next infusion..."):
    alerts = views.patient_alerts(record)
    thresholds = views.patient_thresholds(treatments, assessments)
    # Cycles and suggestions come from the whole caseload's fit (cached), so a patient with
    # little history borrows the clinic's pattern.
    all_cycles = session.cycles(scope, "PHQ-9")
    cycles = all_cycles[all_cycles["patient_id"] == patient_id]
    suggestions = session.suggestions(scope, "PHQ-9")
    suggestion = None
    if suggestions is not None and len(suggestions):
        rows = suggestions[suggestions["patient_id"] == patient_id]
        suggestion = rows.iloc[0].to_dict() if len(rows) else None

for message in alerts:
    st.error(message, icon=":material/warning:")

latest = views.latest_scores(assessments, {c: t["baseline"] for c, t in thresholds.items()})
cols = st.columns(max(len(latest), 1) + 1)
for col, row in zip(cols, latest.itertuples()):
    delta = None
    if row.change_percent is not None and pd.notna(row.change_percent):
        delta = f"{row.change_percent:+.0f}% from baseline {row.baseline:g}"
    col.metric(f"Latest {row.instrument} ({row.on:%d %b %Y})", f"{row.latest:g} / {row.max} · {row.band}",
               delta=delta, delta_color="inverse")
last_inf = treatments["administered_at"].max() if len(treatments) else None
cols[-1].metric("Last infusion", f"{last_inf:%d %b %Y}" if last_inf is not None else "none",
                delta=f"{(pd.Timestamp(today) - last_inf).days} days ago" if last_inf is not None else None, delta_color="off")

if suggestions is None:
    st.info("Next-infusion suggestion: not available yet (the interval model is not installed).", icon=":material/event:")
else:
    st.info(views.describe_suggestion(suggestion, today), icon=":material/event:")

if thresholds:
    st.plotly_chart(charts.patient_timeline(assessments, treatments, thresholds, cycles, patient_id),
                    key="timeline")
    st.caption("Shaded: severity bands. Dotted: baseline (last score up to 30 days before the first infusion). "
               "Dashed green: response (50% below baseline). Dashed blue: remission. Bottom strip: infusions "
               "(marker size = dose) and response cycles (green: no loss seen yet; red: ended in loss of response).")
else:
    st.info("No assessments yet: import or record one to see the trajectory.")

left, right = st.columns(2)
with left:
    instrument_options = [c for c in scales.codes() if (assessments["instrument"] == c).any()]
    if instrument_options:
        pick = st.radio("Items of", instrument_options, horizontal=True, key="heatmap_instrument")
        matrix = views.item_matrix(assessments, pick)
        if matrix.empty or matrix.isna().all().all():
            st.info(f"No item-level answers recorded for {pick}.")
        else:
            st.plotly_chart(charts.item_heatmap(matrix, pick, scales.get(pick).item_max), key="items")
with right:
    st.subheader("Response cycles")
    if cycles.empty:
        st.write("No response cycle yet: a cycle starts with an infusion given while in response.")
    else:
        shown = cycles.assign(
            started=cycles["started_at"].dt.strftime("%d %b %Y"),
            length=cycles["length_days"].round(0).astype(int).astype(str) + " days",
            ended=cycles["censor_reason"].map({"loss": "loss of response", "next_infusion": "next infusion (no loss seen)",
                                                "end_of_follow_up": "still in response"}).fillna(cycles["censor_reason"]),
        )[["cycle_no", "started", "length", "ended"]]
        st.dataframe(shown, hide_index=True, width="stretch")

st.subheader("Recent history")
st.dataframe(views.patient_history(record), hide_index=True, width="stretch")
# The CSV is built when the button is clicked, not on every view of the record.
st.download_button("Download this patient's data (CSV)", functools.partial(views.patient_csv, record),
                   file_name=f"{patient_id}.csv",
                   mime="text/csv", icon=":material/download:",
                   on_click=lambda: session.data_access(scope).log(  # every download is audited
                       "export", page="patient", patients=[patient_id], detail={"what": "patient CSV"}))

# Infusion, MADRS, self-report link, versions of a record (clinicians; analytics.visits / selfreport).
_visit_forms.visit_entry(scope, patient_id, today, treatments, assessments)
