"""The one scoped data layer: every read of patient rows goes through here.

A `Scope` says who is asking and what they may see; `DataAccess` applies it in
SQL (parameterised only) so a page cannot forget it. Command-line tools run
with `SYSTEM` scope (the operator owns the file).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Sequence

import pandas as pd

from . import scales, store


class AccessDenied(PermissionError):
    """The signed-in user may not see what was asked for."""


@dataclass(frozen=True)
class Scope:
    user: str
    role: str  # clinician, director, admin, system
    clinician: str | None = None  # a clinician sees patients whose `clinician` is this
    patient_level: bool = True  # may see per-patient rows
    min_cell: int = 11  # small-cell suppression threshold for cohort figures

    @property
    def cache_key(self) -> tuple:
        return (self.user, self.role, self.clinician, self.patient_level, self.min_cell)


SYSTEM = Scope(user="system", role="system", clinician=None, patient_level=True, min_cell=0)

_ITEMS = ", ".join(scales.item_columns())


class DataAccess:
    def __init__(self, db: str | os.PathLike | None = None, scope: Scope = SYSTEM):
        self.db = store.db_path(db)
        self.scope = scope

    # -- the scope filter, the only place it is written --------------------------
    def _scope_sql(self, alias: str = "p") -> tuple[str, list]:
        if self.scope.role == "clinician":
            return f"{alias}.clinician = ?", [self.scope.clinician]
        return "TRUE", []

    def _query(self, sql: str, params: Sequence = ()) -> pd.DataFrame:
        with store.connect(self.db) as con:
            return con.execute(sql, list(params)).df()

    def _patient_filter(self, patient_ids: Iterable[str] | None) -> tuple[str, list]:
        scope_sql, params = self._scope_sql("p")
        clause = f"x.patient_id IN (SELECT p.patient_id FROM patients p WHERE {scope_sql})"
        if patient_ids is not None:
            ids = list(patient_ids)
            clause += " AND list_contains(?, x.patient_id)"
            params = params + [ids]
        return clause, params

    # -- reads --------------------------------------------------------------------
    def patients(self) -> pd.DataFrame:
        scope_sql, params = self._scope_sql("p")
        return self._query(
            f"""SELECT p.patient_id, p.site, p.clinician, p.birth_year, p.sex, p.diagnosis,
                       p.comorbidities, p.prior_failed_trials, p.enrolled_on
                FROM patients p WHERE {scope_sql} ORDER BY p.patient_id""",
            params,
        )

    def attributes(self) -> pd.DataFrame:
        clause, params = self._patient_filter(None)
        return self._query(
            f"SELECT x.patient_id, x.name, x.value FROM patient_attributes x WHERE {clause} ORDER BY 1, 2",
            params,
        )

    def treatments(self, patient_ids: Iterable[str] | None = None) -> pd.DataFrame:
        clause, params = self._patient_filter(patient_ids)
        return self._query(
            f"""SELECT x.treatment_id, x.patient_id, x.administered_at, x.has_time, x.route,
                       x.dose_mg_per_kg, x.phase
                FROM treatments x WHERE {clause}
                ORDER BY x.patient_id, x.administered_at""",
            params,
        )

    def assessments(
        self, patient_ids: Iterable[str] | None = None, instrument: str | None = None
    ) -> pd.DataFrame:
        clause, params = self._patient_filter(patient_ids)
        if instrument is not None:
            clause += " AND x.instrument = ?"
            params = params + [scales.get(instrument).code]
        return self._query(
            f"""SELECT x.assessment_id, x.patient_id, x.instrument, x.administered_at, x.has_time,
                       x.rater, {_ITEMS}, x.total, x.total_method
                FROM assessments x WHERE {clause}
                ORDER BY x.patient_id, x.administered_at, x.instrument""",
            params,
        )

    def can_see_patient(self, patient_id: str) -> bool:
        if not self.scope.patient_level:
            return False
        scope_sql, params = self._scope_sql("p")
        rows = self._query(
            f"SELECT count(*) AS n FROM patients p WHERE p.patient_id = ? AND {scope_sql}",
            [patient_id, *params],
        )
        return bool(rows["n"].iloc[0])

    def patient_record(self, patient_id: str) -> dict[str, pd.DataFrame]:
        """One patient's rows; refuses a patient outside the scope."""
        if not self.can_see_patient(patient_id):
            raise AccessDenied(f"patient {patient_id!r} is not in your caseload or does not exist")
        ids = [patient_id]
        return {
            "patient": self.patients().query("patient_id == @patient_id"),
            "treatments": self.treatments(ids),
            "assessments": self.assessments(ids),
        }

    def search_patient_ids(self, text: str, limit: int = 20) -> list[str]:
        """Patient ids containing `text`, for search-as-you-type (never the whole list)."""
        scope_sql, params = self._scope_sql("p")
        frame = self._query(
            f"""SELECT p.patient_id FROM patients p
                WHERE {scope_sql} AND contains(lower(p.patient_id), lower(?))
                ORDER BY p.patient_id LIMIT ?""",
            [*params, text or "", int(limit)],
        )
        return frame["patient_id"].tolist()

    def import_history(self, limit: int = 200) -> pd.DataFrame:
        """Recent import batches (file names and row counts; no patient rows), admins only."""
        if self.scope.role not in ("system", "admin"):
            raise AccessDenied("import history is visible to administrators only")
        return self._query(
            """SELECT b.batch_id, b.imported_at, b.imported_by, b.source, b.file_name, b.kind, b.rows_total,
                      b.rows_inserted, b.rows_updated, b.rows_unchanged, b.rows_rejected
               FROM import_batches b ORDER BY b.batch_id DESC LIMIT ?""",
            [int(limit)],
        )

    def rejected_rows(self) -> pd.DataFrame:
        """Quarantined import rows. Their raw text cannot be scoped to a caseload, so admins only."""
        if self.scope.role not in ("system", "admin"):
            raise AccessDenied("rejected import rows are visible to administrators only")
        return self._query(
            """SELECT r.batch_id, r.file_name, r.line, r.column_name, r.reason, r.raw_line
               FROM rejected_rows r ORDER BY r.batch_id, r.file_name, r.line"""
        )
