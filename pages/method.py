"""Method: what each definition and figure means, read from the code that computes it."""
import streamlit as st

from analytics.screens.method import method_screen
from pages._page import open_page

page = open_page("method", "Method", needs_database=False)
st.caption("Every number below is read from the same definitions the dashboard and the command line calculate "
           "with, so this page cannot drift from the calculations.")

method = method_screen(min_cell=page.scope.suppression_threshold)
rules = method.rules

st.header("Rating scales")
# one column per instrument: the long texts (bands, missing-item rules) wrap instead of scrolling sideways
st.table(method.scales.set_index("instrument").T.rename_axis(None))
st.markdown(
    f"Sources: {method.scale_sources}; missing items as each scale's column says (PHQ-9: NHS Data Dictionary). "
    f"{method.safety} "
    "Reliable change follows Jacobson & Truax 1991: a change is reliable when it is at least "
    f"{rules.rci_z:g} × SD × √(2(1 − r)) points, with r and SD from each scale's published reliability."
)

st.header("Outcome definitions")
st.markdown(f"""
- **Baseline**: the last score on or before the first infusion, at most {rules.baseline_window_days} days before it.
- **Response**: at least {100 * rules.response_fall:.0f}% below baseline (the definition in every trial cited:
  Murrough 2013, McInnes 2022, SUSTAIN-1). Baselines below {rules.min_baseline:g} cannot show a response.
- **Response / remission after induction** (cohort page): judged at the first score after the last induction
  infusion, within 21 days of it. Patients without a baseline or such a score are not in the denominator;
  the page says how many were evaluable. Rates carry 95% Wilson score intervals.
- **Remission**: {method.remission}.
- **Loss of response**: {'two consecutive assessments no longer meeting response' if rules.loss_rule == 'two_consecutive'
  else f'MADRS {rules.madrs_relapse_score:g} or more on two consecutive assessments (SUSTAIN-1)'}; one
  out-of-response score followed by an infusion also counts (the clinic acted on it).
- **Induction**: the infusions recorded as induction; where the phase is not recorded, the opening run until a
  gap longer than {rules.induction_max_gap_days:g} days or {rules.induction_max_infusions} infusions (McInnes 2022:
  real-world induction is 4-8 infusions over 7-28 days).
- **Durability cycle**: from an infusion given while in response to loss of response. The loss lies between the
  last score still in response and the first score out of it, so it is *interval-censored*; a cycle without a
  loss is censored at its last score in response (at the next infusion or the end of the data).
""")

st.header("Figures")
st.markdown(f"""
- **Active patients**: an infusion or an assessment in the last {method.active_days} days.
- **Waterfall**: each patient's best (lowest) score after treatment began, as percent change from baseline;
  below −50% is a response.
- **Cohort trajectory**: weeks since the first infusion; each patient counts once a week (mean of that week's
  scores); the line is the median, the band the interquartile range, the numbers how many patients each week holds.
  Weeks with fewer than 5 patients are not drawn.
- **Severity movement**: patients by baseline band and latest band.
- **Funnel plot**: each site's or clinician's rate against the clinic rate, with 95% and 99.8% limits that
  narrow as groups grow (Spiegelhalter 2005). It is not a league table: points inside the funnel differ only by chance.
- **Measurement completeness**: share of infusions with any assessment in the {method.completeness_days} days before
  (the infusion day included).
- **Durability curves**: share of cycles still in response by days since the starting infusion, estimated with the
  Turnbull nonparametric maximum likelihood estimator (the interval-censored form of Kaplan-Meier); 95% intervals
  from a bootstrap that resamples patients (one patient's cycles are correlated). Subgroups are compared with an
  interval-censored log-rank test.
- **Forest plot**: time ratios from an interval-censored Weibull model with patient-clustered standard errors;
  above 1, response lasts longer. Associations in this clinic's data, not causes.
- **Due list**: most urgent first: item 9 positive, overdue for the suggested infusion, lost response, reliable
  worsening, due within 7 days, no recent assessment, taper candidates.
- **Small numbers**: for roles that see the whole clinic, figures resting on fewer patients than the minimum cell
  size (11) are not shown, nor figures that subtraction from another view would narrow to fewer; see the glossary.
""")

st.header("Glossary")
st.markdown("\n".join(f"- **{term}**: {meaning}" for term, meaning in method.glossary))

st.header("All outcome rule settings")
st.dataframe(method.rule_settings, hide_index=True, width="stretch")
st.caption("Literature figures for comparison: McInnes 2022 (537 patients, PHQ-9): response 53.6%, "
           "remission 28.9%, about 80% of responders still responding at 4 weeks and 60% at 8 weeks; Murrough 2013: "
           "median 18 days to relapse after six infusions.")
