"""Survival estimators for how long a response lasts (durability cycles).

One estimator per module; inputs are DataFrames/arrays, never the database.
"""
from .km import KaplanMeier, kaplan_meier
from .logrank import logrank_test
from .cox import cox_fit
from .turnbull import TurnbullFit, turnbull
from .ictest import ic_logrank_test
from .weibull import WeibullAFT, weibull_aft
from .cohort import cohort_durability, durability_model
from .frailty import CohortWeibullFit, PatientDurability, fit_weibull_frailty, patient_durability

__all__ = ["KaplanMeier", "kaplan_meier", "logrank_test", "cox_fit", "TurnbullFit", "turnbull",
           "ic_logrank_test", "WeibullAFT", "weibull_aft", "cohort_durability", "durability_model",
           "CohortWeibullFit", "PatientDurability", "fit_weibull_frailty", "patient_durability"]
