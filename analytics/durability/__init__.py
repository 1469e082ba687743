"""Survival estimators for how long a response lasts (durability cycles).

One estimator per module; inputs are DataFrames/arrays, never the database.
"""
from .turnbull import TurnbullFit, turnbull
from .ictest import ic_logrank_test
from .weibull import WeibullAFT, weibull_aft
from .cohort import cohort_durability, durability_model

__all__ = ["TurnbullFit", "turnbull", "ic_logrank_test", "WeibullAFT", "weibull_aft", "cohort_durability",
           "durability_model"]
