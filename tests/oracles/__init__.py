"""Reference implementations the tests hold the product to; none of them ships in analytics/.

- km, logrank, cox: right-censored estimators, checked against R in test_durability_reference.py
  and used there to show what the interval-censored product estimators avoid;
- synthetic: durability cycles simulated with known truth;
- frailty: a log-normal-frailty Weibull AFT per-patient model, a cross-check of the
  interval-censored Weibull fit (the product's per-patient model is durability.measured.MeasuredDurability);
- cohort: the cohort page's figures computed straight from the frames, slowly, which the
  page's per-patient summaries must equal.
- timeline: the patient timeline as plotly's figure of pandas selections (the builder before wave 8),
  which the spec the Patient page draws must equal (test_patient_timeline.py).
"""
