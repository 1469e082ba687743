"""One scope's view of one version of the data, and the cohort-wide tables every screen starts from.

A `Workspace` holds a `DataAccess` (the scope) and builds each table at most once, on first
use: the four frames, each instrument's durability cycles (`cohort_cycles`) and interval
suggestions (`interval_suggestions`), and whatever a screen module memoises through `once`.
The durability model and the suggestions are not the scope's: they come from the whole
clinic's one fit per data version (intervals.clinic_model, read with the system scope), of
which a workspace shows only its own patients' rows, so every viewer gets the same answer.
The dashboard keeps one per (database, data version, scope) (pages/_cache.py), shared by that
scope's sessions and reruns, so its tables are read-only; the benchmark and the tests make
their own. Builds of different tables may run at once; the same table is built once.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from datetime import date
from typing import Callable, TypeVar

import numpy as np
import pandas as pd

from .. import course, intervals, scales
from ..access import SYSTEM, DataAccess
from ..outcomes import DEFAULT_RULES, OutcomeRules

T = TypeVar("T")
MAX_TABLES = 64  # a workspace forgets its least recently used table beyond this (durability by many subgroups...)


class Workspace:
    def __init__(self, data: DataAccess):
        self.data = data
        self._tables: OrderedDict = OrderedDict()
        self._building: dict = {}
        self._guard = threading.Lock()

    def once(self, key: tuple, build: Callable[[], T]) -> T:
        """The table called `key`, built by `build()` the first time it is asked for."""
        with self._guard:
            if key in self._tables:
                self._tables.move_to_end(key)
                return self._tables[key]
            lock = self._building.setdefault(key, threading.Lock())
        with lock:
            with self._guard:
                if key in self._tables:
                    return self._tables[key]
            value = build()
            with self._guard:
                self._tables[key] = value
                while len(self._tables) > MAX_TABLES:
                    self._tables.popitem(last=False)
            return value

    def frames(self) -> dict[str, pd.DataFrame]:
        """patients, treatments, assessments and attributes of every patient the scope may compute with."""
        return self.once(("frames",), lambda: {
            "patients": self.data.patients(), "treatments": self.data.treatments(),
            "assessments": self.data.assessments(), "attributes": self.data.attributes()})

    def cycles(self, instrument: str = scales.PRIMARY) -> pd.DataFrame:
        def build():
            f = self.frames()
            return cohort_cycles(f["patients"], f["treatments"], f["assessments"], instrument, attributes=f["attributes"])
        return self.once(("cycles", scales.get(instrument).code), build)

    def clinic(self, instrument: str = scales.PRIMARY) -> intervals.ClinicModel:
        """The whole clinic's cycles and durability model of this data version (one fit per process
        and data version, shared by every scope; its aggregate parameters identify no one)."""
        return intervals.clinic_model(self.clinic_data(), scales.get(instrument).code, DEFAULT_RULES)

    def clinic_data(self) -> DataAccess:
        """The whole clinic's rows, for the one model only: nothing of it is shown beyond this scope's rows."""
        return DataAccess(self.data.db, SYSTEM)

    def suggestions(self, instrument: str = scales.PRIMARY, today: date | None = None) -> pd.DataFrame:
        """This scope's patients' rows of the clinic's suggestions as of `today` (default: today)."""
        today = today or date.today()
        return self.once(("suggestions", scales.get(instrument).code, today),
                         lambda: interval_suggestions(self.clinic_data(), self.frames()["patients"]["patient_id"],
                                                      instrument, today=today))


def cohort_cycles(patients: pd.DataFrame, treatments: pd.DataFrame, assessments: pd.DataFrame,
                  instrument: str = scales.PRIMARY, rules: OutcomeRules = DEFAULT_RULES,
                  attributes: pd.DataFrame | None = None) -> pd.DataFrame:
    """Durability cycles (course.py), with `length_days`: to the loss if it happened, else to the last score in response."""
    built = course.build_course(treatments, assessments, instrument, rules)
    cycles = course.cycles_from_course(built, patients, attributes, rules)
    cycles["length_days"] = np.where(cycles["event"], cycles["right_days"], cycles["left_days"])
    return cycles


def interval_suggestions(clinic_data, patient_ids=None, instrument: str = scales.PRIMARY, target: float = 0.8,
                         today: date | None = None) -> pd.DataFrame:
    """Next-infusion suggestions from the whole clinic's model of this data version
    (intervals.clinic_suggestions: one fit, the same answer for every viewer), the rows of
    `patient_ids` only (the viewer's own patients; None: everyone). One row per treated patient:
    `status` says whether they get a suggestion and, if not, why. `clinic_data`: a DataAccess
    with the system scope."""
    result = intervals.clinic_suggestions(clinic_data, scales.get(instrument).code, target, today, DEFAULT_RULES)
    return result.table if patient_ids is None else result.for_patients(patient_ids)
