"""Durability and maintenance (director): how long response lasts, what goes with it, is the clinic tapering."""
import streamlit as st

from analytics import charts
from analytics.screens import durability
from pages._page import open_page
from pages._text import plain


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
        st.plotly_chart(page.figure(("survival", instrument, by), lambda: charts.survival(screen.curves, screen.title)),
                        key="survival")
        st.caption(screen.curve_note)
    else:
        st.info(f"No curve can be shown: every {'group' if by else 'curve'} holds fewer than {screen.min_cell} patients "
                "(or could be worked out from the others). Compare fewer, larger groups.")
    if screen.hidden_groups:
        st.caption(f"{screen.hidden_groups} group(s) not shown and left out of the comparison: fewer than "
                   f"{screen.min_cell} patients, losses or cycles without a loss, or a group the others would give back.")
    if not screen.table.empty:
        st.dataframe(screen.table, hide_index=True, width="stretch")
    st.caption(screen.method_note)

    st.subheader("What goes with longer or shorter response")
    covariates = st.multiselect("Model terms", list(durability.MODEL_TERM_CHOICES),
                                default=list(durability.DEFAULT_MODEL_TERMS), key="dur_covariates",
                                format_func=durability.term_choice_label)
    if covariates:
        with st.spinner("Fitting the durability model..."):
            model = durability.model_screen(ws, instrument, tuple(covariates))
        if not model.estimated:
            st.warning(f"The durability model could not be shown for these terms ({plain(model.problem)}): try other terms.")
        else:
            st.plotly_chart(page.figure(("forest", instrument, tuple(covariates)), lambda: charts.forest(model.rows, "time ratio")),
                            key="forest")
            st.caption(model.caption)
    else:
        st.info("Choose at least one model term to see what goes with longer or shorter response.")

st.subheader("Maintenance")
left, right = st.columns(2)
with left:
    if screen.interval_bins.empty:
        st.info("No suggested interval to show yet: patients need response cycles"
                + (f", and each bar at least {screen.min_cell} of them." if screen.min_cell else "."))
    else:
        st.plotly_chart(page.figure(("intervals",), lambda: charts.interval_histogram(screen.interval_bins)), key="intervals")
        if screen.bins_blanked:
            st.caption(f"Blank bars: fewer than {screen.min_cell} patients, none included (small-number rule).")
with right:
    monthly = screen.monthly
    if monthly.empty or monthly["per_patient"].isna().all():
        st.info("No month with enough infused patients to show infusions per patient"
                + (f" (each needs at least {screen.min_cell})." if screen.min_cell else "."))
    else:
        st.plotly_chart(page.figure(("per_month", page.today), lambda: charts.infusions_per_month(monthly)), key="per_month")
        notes = ["A falling maintenance line means the clinic is tapering (longer gaps between maintenance infusions)."]
        if monthly.attrs.get("partial"):
            notes.append(f"{monthly.attrs['partial']} is left out: the month is still in progress, so it would look like a fall.")
        if screen.min_cell and monthly["maintenance_per_patient"].isna().any():
            notes.append(f"Gaps: months with fewer than {screen.min_cell} patients, or (maintenance line) fewer than "
                         f"{screen.min_cell} patients on maintenance or on other infusions.")
        st.caption(" ".join(notes))

st.subheader("Maintenance policies compared")
st.caption("A simulation, not this clinic's patients: the same 1,000 simulated patients treated under fixed 2/3/4-weekly "
           "schedules (with or without rescue: an infusion within days of a score out of response), rescue only, the "
           "personalised interval suggestion (at a 75% and at the default 80% chance of still responding at the next "
           "infusion), and an oracle that knows each patient's true durability (a best case no clinic can reach).")
if st.toggle("Run the policy comparison (takes about twenty seconds)", key="run_policy"):
    with st.spinner("Simulating every policy on the same patients..."):
        table = _schedule_table()
    st.plotly_chart(charts.policy_tradeoff(table), key="policy")
    st.dataframe(durability.schedule_table(table), hide_index=True, width="stretch")
    st.caption(durability.schedule_note(table))
    st.caption("Lower left is better on both counts. Days out of response: the share of days after induction when "
               "the simulated patient's true symptoms were not 50% below baseline. Rescue infusions: the share of all "
               "maintenance and rescue infusions given because symptoms returned.")
