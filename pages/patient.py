"""Patient trajectory (clinician): one patient's scores, infusions, cycles and next infusion."""
import streamlit as st

from analytics import charts, printable
from analytics.screens import patient
from pages import _visit_forms
from pages._page import open_page
from pages._text import plain

page = open_page("patient", "Patient trajectory")
ws = page.workspace

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
matches = patient.patient_search(ws, search)
if not matches:
    st.warning(f"No patient in your caseload has an id containing '{plain(search)}'.")
    st.stop()
default = matches.index(wanted) if wanted in matches else (matches.index(search) if search in matches else 0)
patient_id = st.selectbox(f"{len(matches)} match{'es' if len(matches) != 1 else ''}"
                          + (f" (first {patient.SEARCH_LIMIT})" if len(matches) == patient.SEARCH_LIMIT else ""),
                          matches, index=default)
if st.query_params.get("patient") != patient_id:
    st.query_params["patient"] = patient_id

# Cycles and suggestions come from the whole caseload's fit (cached), so a patient with
# little history borrows the clinic's pattern.
with st.spinner("Working out response cycles and the next infusion..."):
    screen = patient.patient_screen(ws, patient_id, page.today)
if screen.refused:
    st.error(plain(screen.refused))
    st.stop()

info = screen.info
st.caption(f"{plain(info['patient_id'])} · site {plain(info['site'] or '-')} · clinician {plain(info['clinician'] or '-')} · "
           f"{plain(info['diagnosis'] or 'diagnosis not recorded')}"
           + (f" · comorbidities: {plain(info['comorbidities'].replace(';', ', '))}" if info["comorbidities"] else ""))

if screen.empty:
    st.info("No assessments or infusions yet for this patient: record one below, or import them on the Data page.")
    _visit_forms.visit_entry(page.scope, patient_id, page.today, screen.treatments, screen.assessments)
    st.stop()

for message in screen.alerts:
    st.error(plain(message), icon=":material/warning:")

# A lower score is better on every instrument here: a fall is green with a down arrow, a rise red
# with an up arrow, and a change that rounds to 0% is "no change", grey with no arrow (never "+0%").
CHANGE = {"better": ("green", "down"), "worse": ("red", "up"), "same": ("gray", "off"), "": ("gray", "off")}
cards = patient.score_cards(screen.latest)
cols = st.columns(max(len(cards), 1) + 1)
for col, card in zip(cols, cards):
    colour, arrow = CHANGE[card.direction]
    with col.container(border=True):
        st.metric(f"Latest {card.instrument} ({card.on:%d %b %Y})", card.score, delta=card.change or None,
                  delta_color=colour, delta_arrow=arrow)
        st.markdown(f"**{card.band}**")
last_inf = screen.last_infusion
with cols[-1].container(border=True):
    st.metric("Last infusion", f"{last_inf:%d %b %Y}" if last_inf is not None else "none",
              delta=screen.last_infusion_ago if last_inf is not None else None, delta_color="gray", delta_arrow="off")

st.info(screen.suggestion_text, icon=":material/event:")

if screen.thresholds:
    st.plotly_chart(page.figure(("timeline", patient_id, page.today, screen.fingerprint),
                                lambda: charts.drawn(charts.patient_timeline_spec(
                                    screen.assessments, screen.treatments, screen.thresholds, screen.cycles,
                                    patient_id))), key="timeline")
    st.caption("Shaded: severity bands. Dotted: baseline (last score up to 30 days before the first infusion). "
               "Dashed green: response (50% below baseline). Dashed blue: remission. Red marks along the top of a "
               "panel: its safety item (PHQ-9 item 9, thoughts of death or self-harm) above 0. Bottom strip: infusions "
               "(marker size = dose) and response cycles (green: no loss seen yet; red: ended in loss of response; "
               "lengths written where they fit, every cycle on hover).")
else:
    st.info("No assessments yet: import or record one to see the trajectory.")

left, right = st.columns(2)
with left:
    st.subheader("Item answers")
    if not screen.items:
        st.info("No item-level answers recorded yet.")
    else:
        pick = st.radio("Items of", list(screen.items), horizontal=True, key="heatmap_instrument")
        matrix, item_max = screen.items[pick]
        if matrix.empty or matrix.isna().all().all():
            st.info(f"No item-level answers recorded for {pick}.")
        else:
            st.plotly_chart(page.figure(("items", patient_id, pick, screen.fingerprint),
                                        lambda: charts.drawn(charts.item_heatmap_spec(matrix, pick, item_max))),
                            key="items")
with right:
    st.subheader("Response cycles")
    if screen.cycles.empty:
        st.write("No response cycle yet: a cycle starts with an infusion given while in response.")
    else:
        st.dataframe(screen.cycle_rows, hide_index=True, width="stretch")

st.subheader("Recent history")
st.dataframe(screen.history, hide_index=True, width="stretch",
             column_config={"date": st.column_config.TextColumn("date", width="small"),
                            "record": st.column_config.TextColumn("record", width="medium")})
# Each file is built when its button is clicked (a deferred download), audited then with the patient
# it holds, never kept on the server. Both buttons sit in one row.
csv_col, pdf_col, _ = st.columns([1, 1, 1])
csv_col.download_button("Download this patient's data (CSV)", lambda: patient.audited_csv(ws, screen),
                        file_name=f"{patient_id}.csv", mime="text/csv", icon=":material/download:", on_click="ignore")


def _audited_summary_pdf() -> bytes:
    ws.data.log("export", page="patient", patients=[patient_id], detail={"what": "patient summary (PDF)"})
    return printable.patient_summary_pdf(screen, page.today)


pdf_col.download_button("Download a one-page summary (PDF)", _audited_summary_pdf,
                        file_name=f"{patient_id}-summary.pdf", mime="application/pdf", icon=":material/picture_as_pdf:",
                        key="patient_pdf", on_click="ignore",
                        help="Trajectory, latest scores, infusions and the suggested next infusion, for "
                             "the chart or a referring psychiatrist.")

# Infusion, MADRS, self-report link, correcting or voiding a record (clinicians; analytics.visits / selfreport).
_visit_forms.visit_entry(page.scope, patient_id, page.today, screen.treatments, screen.assessments)
