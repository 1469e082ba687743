"""The clinic's coded vocabulary: the values a route, phase, comorbidity or sex may take.

One home for what the import checks (ingest/rules.py), the store's CHECK constraints
(store.py), the visit forms and the durability covariates (course.py) all agree on.
Adding a value here also needs a store migration: the schema's CHECK lists were
written from these tuples when each database was created.
"""
from __future__ import annotations

ROUTES = ("iv", "im", "intranasal", "oral", "sublingual")
ROUTE_NAMES = {"iv": "intravenous (IV)", "im": "intramuscular (IM)", "intranasal": "intranasal", "oral": "oral",
               "sublingual": "sublingual"}  # as pages show them
PHASES = ("induction", "maintenance", "rescue")
COMORBIDITIES = ("anxiety", "ptsd", "substance_use", "chronic_pain", "ocd", "bipolar")
SEXES = ("F", "M", "X", "U")
