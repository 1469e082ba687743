"""One scope's view of one version of the data, and the cohort-wide tables every screen starts from.

A `Workspace` holds a `DataAccess` (the scope) and builds each table at most once, on first
use: the four frames, each instrument's durability cycles (`cohort_cycles`) and interval
suggestions (`interval_suggestions`), and whatever a screen module memoises through `once`.
The dashboard keeps one per (database, data version, scope) (pages/_cache.py), shared by that
scope's sessions and reruns, so its tables are read-only; the benchmark and the tests make
their own. Builds of different tables may run at once; the same table is built once.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, TypeVar

import numpy as np
import pandas as pd

from .. import course, intervals, scales
from ..access import DataAccess
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

    def suggestions(self, instrument: str = scales.PRIMARY) -> pd.DataFrame:
        return self.once(("suggestions", scales.get(instrument).code),
                         lambda: interval_suggestions(self.cycles(instrument), self.frames()["treatments"], instrument))


def cohort_cycles(patients: pd.DataFrame, treatments: pd.DataFrame, assessments: pd.DataFrame,
                  instrument: str = scales.PRIMARY, rules: OutcomeRules = DEFAULT_RULES,
                  attributes: pd.DataFrame | None = None) -> pd.DataFrame:
    """Durability cycles (course.py), with `length_days`: to the loss if it happened, else to the last score in response."""
    built = course.build_course(treatments, assessments, instrument, rules)
    cycles = intervals.with_trajectories(course.cycles_from_course(built, patients, attributes, rules), built,
                                         rules.response_fall)
    cycles["length_days"] = np.where(cycles["event"], cycles["right_days"], cycles["left_days"])
    return cycles


def interval_suggestions(cycles: pd.DataFrame, treatments: pd.DataFrame, instrument: str = scales.PRIMARY,
                         target: float = 0.8) -> pd.DataFrame:
    """Per-patient next-infusion suggestions (intervals.suggest_intervals) fitted on these cycles:
    patient_id, suggested_interval_days, interval_low_days, interval_high_days, basis, n_cycles,
    last_infusion_on, next_due_on, taper, taper_reason; an empty frame when there are no cycles to learn from."""
    if cycles is None or cycles.empty:
        return pd.DataFrame(columns=["patient_id", "suggested_interval_days", "interval_low_days", "interval_high_days",
                                     "basis", "n_cycles", "last_infusion_on", "next_due_on", "taper", "taper_reason"])
    last = treatments.groupby("patient_id")["administered_at"].max()
    table, _fit = intervals.suggest_intervals(cycles, target=target, last_infusions=last, instrument=instrument)
    return table


