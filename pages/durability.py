"""Durability and maintenance (director): how long response lasts, what goes with it, is the clinic tapering."""
import streamlit as st

from analytics import charts
from analytics.screens import durability
from pages._page import open_page


@st.cache_data(ttl=24 * 3600, show_spinner=False)
def _schedule_table():
    # simulated patients only: no clinic data, so no scope in the key
    return durability.schedule_comparison(n_patients=1000, seed=0)


page = open_page("durability", "Durability and maintenance")
ws = page.workspace
if not durability.has_infusions(ws):
    st.info("No infusions yet: import treatments on the Data page to see how long response lasts.")
    st.stop()

left, right = st.columns([1, 2])
instrument = left.selectbox("Instrument", list(durability.instruments()), key="dur_instrument")
by = right.selectbox("Compare subgroups", [None, *durability.SUBGROUPS], key="dur_by",
                     format_func=lambda k: "no subgroups (every cycle and post-induction)" if k is None else durability.SUBGROUPS[k])

with st.spinner("Estimating durability (bootstrap over patients)..."):
    screen = durability.durability_screen(ws, instrument, by, today=page.today)

if not screen.has_cycles:
    st.info(f"No response cycles on {instrument} yet: a cycle starts with an infusion given while in response, "
            "so patients need a baseline, a response and a later infusion.")
else:
    if screen.curves:
        st.plotly_chart(charts.survival(screen.curves, screen.title), key="survival")
    st.dataframe(screen.table, hide_index=True, width="stretch")
    st.caption(screen.method_note)

    st.subheader("What goes with longer or shorter response")
    covariates = st.multiselect("Model terms", list(durability.MODEL_TERM_CHOICES),
                                default=list(durability.DEFAULT_MODEL_TERMS), key="dur_covariates")
    if covariates:
        with st.spinner("Fitting the durability model..."):
            model = durability.model_screen(ws, instrument, tuple(covariates))
        if not model.estimated:
            st.warning(f"The durability model could not be estimated for these terms ({model.problem}): try fewer terms.")
        else:
            st.plotly_chart(charts.forest(model.rows, "time ratio"), key="forest")
            st.caption(model.caption)

st.subheader("Maintenance")
left, right = st.columns(2)
with left:
    if screen.interval_bins.empty:
        st.info("No patient has enough response cycles for an interval suggestion yet.")
    else:
        st.plotly_chart(charts.interval_histogram(screen.interval_bins), key="intervals")
        if screen.bins_blanked:
            st.caption(f"Blank bars: fewer than {screen.min_cell} patients (small-cell suppression).")
with right:
    st.plotly_chart(charts.infusions_per_month(screen.monthly), key="per_month")

st.subheader("Maintenance policies compared")
st.caption("A simulation, not this clinic's patients: the same simulated patients treated under fixed 2/3/4-weekly "
           "schedules, symptom-triggered rescue only, and the personalised interval suggestion (analytics.schedules).")
if st.toggle("Run the policy comparison (takes about ten seconds)", key="run_policy"):
    with st.spinner("Simulating every policy on the same patients..."):
        table = _schedule_table()
    st.plotly_chart(charts.policy_tradeoff(table), key="policy")
    st.dataframe(table, hide_index=True, width="stretch")
