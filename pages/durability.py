"""Durability and maintenance (director): how long response lasts, what goes with it, is the clinic tapering."""
import streamlit as st

from analytics import charts, views
from pages import _session as session



@st.cache_data(ttl=24 * 3600, show_spinner=False)
def _policy_table():
    # simulated patients only: no clinic data, so no scope in the key
    return views.policy_comparison(n_patients=1000, seed=0)


st.title("Durability and maintenance")
scope = session.current_scope()
min_cell = scope.suppression_threshold  # groups under it are not shown
if not session.has_data():
    session.no_database_message()
    st.stop()

f = session.frames(scope)
if f["treatments"].empty:
    st.info("No infusions yet: import treatments on the Data page to see how long response lasts.")
    st.stop()

left, right = st.columns([1, 2])
instrument = left.selectbox("Instrument", ["PHQ-9", "MADRS"], key="dur_instrument")
by = right.selectbox("Compare subgroups", [None, *views.SUBGROUPS], key="dur_by",
                     format_func=lambda k: "no subgroups (every cycle and post-induction)" if k is None else views.SUBGROUPS[k])

with st.spinner("Estimating durability (bootstrap over patients)..."):
    cycles = session.cycles(scope, instrument)
    result = session.durability(scope, instrument, by) if len(cycles) else None

if result is None or not result.get("n_cycles"):
    st.info(f"No response cycles on {instrument} yet: a cycle starts with an infusion given while in response, "
            "so patients need a baseline, a response and a later infusion.")
else:
    curves = views.survival_curves(result, min_cell)
    title = f"Still in response by days since the infusion ({instrument})"
    if by and result.get("logrank_p") is not None:
        title += f": log-rank p = {result['logrank_p']:.3f}"
    if curves:
        st.plotly_chart(charts.survival(curves, title), key="survival")
    st.dataframe(views.durability_table(result, min_cell), hide_index=True, width="stretch")
    st.caption(f"Curve: {result['method']['curve']}. CI: {result['method']['ci']}. "
               + (f"Group test: {result['method']['group_test']}. " if by else "")
               + "Loss of response is only known to lie between two assessments, so the curve is the "
               "interval-censored analogue of Kaplan-Meier (Turnbull). " + result.get("groups_note", ""))

    st.subheader("What goes with longer or shorter response")
    covariates = st.multiselect(
        "Model terms", ["baseline_score", "has_anxiety", "has_ptsd", "prior_failed_trials", "route", "sex"],
        default=["baseline_score", "has_anxiety", "prior_failed_trials"], key="dur_covariates")
    if covariates:
        with st.spinner("Fitting the durability model..."):
            model = session.durability_model(scope, instrument, tuple(covariates))
        rows = views.forest_rows(model)
        if rows.empty or not model.get("converged", True):
            st.warning("The durability model could not be estimated for these terms "
                       f"({model.get('note', 'the fit did not converge')}): try fewer terms.")
        else:
            st.plotly_chart(charts.forest(rows, "time ratio"), key="forest")
            st.caption(f"{model['model']}. A time ratio above 1 means response lasts longer. "
                       f"{model['n_cycles']} cycles from {model['n_patients']} patients, {model['n_events']} losses. "
                       "Associations in this clinic's data, not causes.")

st.subheader("Maintenance")
left, right = st.columns(2)
with left:
    suggestions = session.suggestions(scope, "PHQ-9")
    if suggestions is None:
        st.info("Suggested intervals: not available yet (the interval model is not installed).")
    elif suggestions.empty or suggestions["suggested_interval_days"].dropna().empty:
        st.info("No patient has enough response cycles for an interval suggestion yet.")
    else:
        bins = views.interval_distribution(suggestions["suggested_interval_days"], min_cell=min_cell)
        st.plotly_chart(charts.interval_histogram(bins), key="intervals")
        if bins["patients"].isna().any():
            st.caption(f"Blank bars: fewer than {min_cell} patients (small-cell suppression).")
with right:
    monthly = views.infusions_per_patient_month(f["treatments"])
    st.plotly_chart(charts.infusions_per_month(monthly), key="per_month")

st.subheader("Maintenance policies compared")
st.caption("A simulation, not this clinic's patients: the same simulated patients treated under fixed 2/3/4-weekly "
           "schedules, symptom-triggered rescue only, and the personalised interval suggestion (analytics.schedules).")
if views.optional("schedules") is None:
    st.info("Policy comparison: not available yet (the policy module is not installed).")
elif st.toggle("Run the policy comparison (takes about ten seconds)", key="run_policy"):
    with st.spinner("Simulating every policy on the same patients..."):
        table = _policy_table()
    st.plotly_chart(charts.policy_tradeoff(table), key="policy")
    st.dataframe(table, hide_index=True, width="stretch")
