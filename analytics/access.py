"""The one scoped data layer: every read of patient rows goes through here.

A `Scope` says who is asking and what they may see; `DataAccess` applies it in
SQL (parameterised only) so a page cannot forget it. Command-line tools run
with `SYSTEM` scope (the operator owns the file).

A voided infusion or assessment (analytics/visits.py `void_record`) is left out of every
read here except `voided_rows`, which the record's history and the export use.
"""
from __future__ import annotations

import bisect
import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterable, Sequence

import pandas as pd
import pyarrow.compute as pc

from . import audit, memory, scales, store, suppress
from .arrowframes import pandas_like_df
from .permissions import ROLES, SYSTEM_ROLE, may


class AccessDenied(PermissionError):
    """The signed-in user may not see what was asked for."""


@dataclass(frozen=True)
class Scope:
    user: str
    role: str  # clinician, director, admin, system (analytics/permissions.py says what each may do)
    clinician: str | None = None  # a clinician sees patients whose `clinician` is this
    patient_level: bool = True  # may see per-patient rows
    min_cell: int = 11  # small-cell suppression threshold for cohort figures
    granted: frozenset[str] = frozenset()  # patients this user was granted drill-down on (analytics.auth)
    identifiable: bool = True  # False: attributes that may identify a patient are withheld

    @property
    def cache_key(self) -> tuple:
        return (self.user, self.role, self.clinician, self.patient_level, self.min_cell,
                tuple(sorted(self.granted)), self.identifiable)

    @property
    def view_key(self) -> tuple:
        """What this scope can see (its `cache_key` without the user's name): scopes with equal view keys
        read exactly the same rows, so cohort-wide tables built for one serve the other (two directors).
        Never for anything audited or written as the user: that takes the scope itself."""
        return self.cache_key[1:]

    @property
    def suppression_threshold(self) -> int:
        """Counts below this are shown as "<n" in cohort views; 0 for patient-level roles."""
        return 0 if self.patient_level else self.min_cell


class PatientIds:
    """Patient ids in the order the patients table sorts them, searchable by a case-insensitive substring
    as `strpos(lower(patient_id), lower(text)) > 0` finds it: in one string of the lowered ids, one per line
    (a C-level find per match, not a Python loop over 100,000 ids)."""

    def __init__(self, ids: list[str]):
        self.ids = list(ids)
        lowered = [i.lower() for i in self.ids]
        self._one_line = all("\n" not in i for i in lowered) and all(len(i) == len(j) for i, j in zip(lowered, self.ids))
        self._text = "\n".join(lowered) + "\n"
        self._starts = []
        at = 0
        for i in lowered:
            self._starts.append(at)
            at += len(i) + 1

    def searchable(self, text: str) -> bool:
        """Can `containing` answer for `text`? (No line breaks, and lowering changed no id's length.)"""
        return self._one_line and "\n" not in text

    def containing(self, text: str, limit: int) -> list[str]:
        """The first `limit` ids (in order) containing `text`, case-insensitively."""
        needle = text.lower()
        found: list[str] = []
        at = self._text.find(needle)
        while 0 <= at < len(self._text) - 1 and len(found) < limit:  # (an empty text is also found past the end)
            row = bisect.bisect_right(self._starts, at) - 1
            found.append(self.ids[row])
            at = self._text.find(needle, self._starts[row + 1] if row + 1 < len(self._starts) else len(self._text))
        return found

    def __len__(self) -> int:
        return len(self.ids)


SYSTEM = Scope(user="system", role=SYSTEM_ROLE, clinician=None, patient_level=True, min_cell=0)

# Patient attributes (free-form extra import columns) whose names suggest they identify a
# person; withheld from de-identified roles. A deny-list, so see docs/security.md.
IDENTIFYING_ATTRIBUTE = re.compile(
    r"name|mrn|medical.?record|external|identifier|^id$|_id$|email|e-?mail|phone|mobile|address|street|"
    r"post.?code|zip|ssn|social.?security|nhs|insurance|passport|licen[cs]e|birth.?date|date.?of.?birth|^dob$",
    re.IGNORECASE,
)


# Pages locate the database through here, never through analytics.store.
db_path = store.db_path

_DATA_VERSIONS: dict[str, tuple[tuple, tuple]] = {}  # database -> (change stamp, data version) last read
StoreBusy = store.StoreBusy  # pages meet it here: a write that could not get the lock in time


def page_run():
    """The dashboard runs each page inside this: its audit entries are journaled, never waiting for
    the write lock nor making other pages wait (store.writes_in_passing_journaled)."""
    return store.writes_in_passing_journaled()


def write_in_progress(db: str | os.PathLike | None = None) -> bool:
    """Is another process writing to the database now (e.g. an import)? Reads then show its last commit."""
    return store.write_in_progress(db)


def scope_for(session, db: str | os.PathLike | None = None) -> Scope:
    """The scope of a signed-in `analytics.auth.Session` (grants read from the store)."""
    if session.role not in ROLES:
        raise AccessDenied(f"unknown role {session.role!r}")
    return Scope(session.username, session.role,
                 clinician=session.clinician if may(session, "open_caseload_records") else None,
                 patient_level=may(session, "see_patient_rows"), min_cell=suppress.default_min_cell(),
                 granted=frozenset(_granted_patients(db, session.username)),
                 identifiable=may(session, "see_identifying_attributes"))


def _granted_patients(db, username: str) -> list[str]:
    """The user's patient grants; read again only when something was written since the last read
    (`store.change_stamp`: every grant and revocation is a write), so not on every page run."""
    stamp = store.change_stamp(db)
    key = (str(store.db_path(db)), username)
    known = _GRANTS.get(key)
    if known is not None and known[0] == stamp:
        return known[1]
    try:
        with store.connect(db) as con:
            rows = con.execute("SELECT patient_id FROM patient_grants WHERE username = ?", [username]).fetchall()
    except store.MissingTable:
        rows = []  # a database from before schema v2 has no grants
    granted = [r[0] for r in rows]
    if len(_GRANTS) > 10_000:
        _GRANTS.clear()
    _GRANTS[key] = (stamp, granted)
    return granted


_GRANTS: dict[tuple, tuple[tuple, list[str]]] = {}  # (database, user) -> (change stamp, grants) last read

_FLAGS: dict[tuple, tuple[tuple, pd.DataFrame]] = {}  # (database, scope, open only) -> (change stamp, flags) last read

RECORDS_KEPT = 256  # patient records kept in the process (DataAccess.patient_record): a few dozen rows each
_RECORDS: "OrderedDict[tuple, dict[str, pd.DataFrame]]" = OrderedDict()  # (db, scope, patient, version) -> record
_RECORDS_GUARD = threading.Lock()


def _kept_record(key: tuple) -> dict[str, pd.DataFrame] | None:
    with _RECORDS_GUARD:
        record = _RECORDS.get(key)
        if record is not None:
            _RECORDS.move_to_end(key)
        return record


def _keep_record(key: tuple, record: dict[str, pd.DataFrame]) -> None:
    with _RECORDS_GUARD:
        _RECORDS[key] = record
        while len(_RECORDS) > RECORDS_KEPT:
            _RECORDS.popitem(last=False)

_pandas_like_df = pandas_like_df  # the frame DuckDB's `.df()` gives (analytics/arrowframes.py)


def _read_at_current_schema(db, work):
    """`work()`, a read. Reads name columns of the newest schema (voided_at); a file that no write has
    opened since the product was upgraded lacks them: it is migrated (a write opening brings it up to
    date, analytics/store.py) and read again."""
    try:
        return work()
    except store.MissingColumn as exc:
        if "voided_at" not in str(exc):
            raise
    store.initialise(db)
    return work()


ASSESSMENT_ORDER = ("patient_id", "administered_at", "instrument")


def assessment_columns() -> list[str]:
    """The columns of `DataAccess.assessments()`, in order."""
    return ["assessment_id", "patient_id", "instrument", "administered_at", "has_time", "rater",
            *scales.item_columns(), "total", "total_method"]


class DataAccess:
    def __init__(self, db: str | os.PathLike | None = None, scope: Scope = SYSTEM):
        self.db = store.db_path(db)
        self.scope = scope

    def __reduce__(self):
        # st.cache_data hashes arguments through __reduce__: the scope (user, role, grants)
        # is part of the key, so a cached result is never served to another user.
        return (DataAccess, (str(self.db), self.scope))

    # -- the scope filter, the only place it is written --------------------------
    def _scope_sql(self, alias: str = "p") -> tuple[str, list]:
        """Rows the scope may compute with: a clinician's caseload, everything for cohort roles."""
        if may(self.scope, "compute_over_all_patients"):
            return "TRUE", []
        if may(self.scope, "open_caseload_records"):
            return self._drill_sql(alias)
        return "FALSE", []  # an unknown role sees nothing

    def _drill_sql(self, alias: str = "p") -> tuple[str, list]:
        """Patients whose individual record the scope may open."""
        granted = sorted(self.scope.granted)
        if may(self.scope, "open_any_record"):
            return "TRUE", []
        if may(self.scope, "open_caseload_records"):
            return f"({alias}.clinician = ? OR {alias}.patient_id = ANY(?))", [self.scope.clinician, granted]
        return f"{alias}.patient_id = ANY(?)", [granted]

    def _query(self, sql: str, params: Sequence = (), con: store.Connection | None = None) -> pd.DataFrame:
        """Run on `con` when given (several reads sharing one opening), else on a read connection of its own."""
        if con is not None:
            return con.execute(sql, list(params)).df()
        def read():
            with store.connect(self.db) as own:
                return own.execute(sql, list(params)).df()
        return _read_at_current_schema(self.db, read)

    def _patient_filter(self, patient_ids: Iterable[str] | None) -> tuple[str, list]:
        scope_sql, params = self._scope_sql("p")
        clause = f"x.patient_id IN (SELECT p.patient_id FROM patients p WHERE {scope_sql})"
        if patient_ids is not None:
            ids = [str(i) for i in patient_ids]
            if not self.scope.patient_level and not set(ids) <= self.scope.granted:
                # cohort roles compute over everyone but may not pick individuals out
                raise AccessDenied("you may not open individual patients' rows without a grant")
            if len(ids) == 1:  # one patient (the patient page): an equality is answered from the patient_id index,
                # and the scope's subquery looks at that patient only (the same rows; no semi-join over every patient)
                clause = (f"x.patient_id IN (SELECT p.patient_id FROM patients p WHERE p.patient_id = ? AND {scope_sql})"
                          " AND x.patient_id = ?")
                params = ids + params + ids
            else:
                clause += " AND x.patient_id = ANY(?)"
                params = params + [ids]
        return clause, params

    def _frame(self, sql: str, params: Sequence, order: Sequence[str]) -> pd.DataFrame:
        """A whole-cohort read (`sql` without ORDER BY) as a frame sorted by the unique key `order`.

        Fetched as Arrow and sorted there: DuckDB's ORDER BY over 4.7 M assessments held about
        1 GB more, which its allocator then kept; the rows and their order are the same.
        """
        def read():
            with store.connect(self.db) as con:
                return store.read_arrow(con, sql, params)
        table = _read_at_current_schema(self.db, read)
        positions = None
        if table.num_rows > 1:
            positions = pc.sort_indices(table, sort_keys=[(c, "ascending") for c in order])
        names, columns = table.column_names, list(table.columns)
        del table  # the columns list alone holds the rows now, and lets go of each once converted
        frame = _pandas_like_df(names, columns, positions)
        memory.release_freed()  # the Arrow copy freed above would stay resident otherwise
        return frame

    # -- reads --------------------------------------------------------------------
    def patients(self) -> pd.DataFrame:
        scope_sql, params = self._scope_sql("p")
        return self._frame(
            f"""SELECT p.patient_id, p.site, p.clinician, p.birth_year, p.sex, p.diagnosis,
                       p.comorbidities, p.prior_failed_trials, p.enrolled_on
                FROM patients p WHERE {scope_sql}""",
            params, ["patient_id"],
        )

    def attributes(self) -> pd.DataFrame:
        """Free-form patient attributes; de-identified scopes never get identifying-looking ones."""
        clause, params = self._patient_filter(None)
        frame = self._frame(
            f"SELECT x.patient_id, x.name, x.value FROM patient_attributes x WHERE {clause}",
            params, ["patient_id", "name"],
        )
        if not self.scope.identifiable:
            frame = frame[~frame["name"].astype(str).str.contains(IDENTIFYING_ATTRIBUTE)].reset_index(drop=True)
        return frame

    def _treatments_sql(self, patient_ids: Iterable[str] | None, ordered: bool = True) -> tuple[str, list]:
        clause, params = self._patient_filter(patient_ids)
        return (f"""SELECT x.treatment_id, x.patient_id, x.administered_at, x.has_time, x.route,
                           x.dose_mg_per_kg, x.phase
                    FROM treatments x WHERE {clause} AND x.voided_at IS NULL
                    {'ORDER BY x.patient_id, x.administered_at' if ordered else ''}""", params)

    def treatments(self, patient_ids: Iterable[str] | None = None) -> pd.DataFrame:
        return self._frame(*self._treatments_sql(patient_ids, ordered=False), ["patient_id", "administered_at"])

    def _assessments_sql(self, patient_ids: Iterable[str] | None, instrument: str | None,
                         ordered: bool = True, columns: Sequence[str] | None = None) -> tuple[str, list]:
        clause, params = self._patient_filter(patient_ids)
        if instrument is not None:
            clause += " AND x.instrument = ?"
            params = params + [scales.get(instrument).code]
        names = assessment_columns()
        if columns is not None:
            unknown = sorted(set(columns) - set(names))
            if unknown:
                raise ValueError(f"assessments: no column(s) {unknown}")
            names = [c for c in names if c in columns or c in ASSESSMENT_ORDER]
        return (f"""SELECT {", ".join("x." + c for c in names)}
                    FROM assessments x WHERE {clause} AND x.voided_at IS NULL
                    {'ORDER BY x.patient_id, x.administered_at, x.instrument' if ordered else ''}""", params)

    def assessments(
        self, patient_ids: Iterable[str] | None = None, instrument: str | None = None,
        columns: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """Assessments in (patient_id, administered_at, instrument) order. `columns`: only these of
        `assessment_columns()` (the order keys always come too), for a read that needs few of them:
        at 100,000 patients the whole frame is 0.5 GB, a course needs a fifth of it."""
        return self._frame(*self._assessments_sql(patient_ids, instrument, ordered=False, columns=columns),
                           list(ASSESSMENT_ORDER))

    def last_assessed(self) -> pd.Series:
        """Per patient (index patient_id, sorted), when their latest assessment of any instrument was
        taken: what `assessments()` would give grouped by patient, without reading every row."""
        clause, params = self._patient_filter(None)
        frame = self._frame(
            f"""SELECT x.patient_id, max(x.administered_at) AS administered_at FROM assessments x
                WHERE {clause} AND x.voided_at IS NULL GROUP BY x.patient_id""", params, ["patient_id"])
        return frame.set_index("patient_id")["administered_at"]

    def _can_see(self, con: store.Connection, patient_id: str) -> bool:
        drill_sql, params = self._drill_sql("p")
        rows = con.execute(f"SELECT count(*) FROM patients p WHERE p.patient_id = ? AND {drill_sql}",
                           [str(patient_id), *params]).fetchall()
        return bool(rows[0][0])

    def can_see_patient(self, patient_id: str) -> bool:
        """May this scope open the patient's individual record (own caseload, or granted)?"""
        with store.connect(self.db) as con:
            return self._can_see(con, patient_id)

    def patient_record(self, patient_id: str, *, page: str | None = None) -> dict[str, pd.DataFrame]:
        """One patient's rows; refuses a patient outside the scope. Both outcomes are audited,
        and the view is recorded (committed, or journaled and fsynced while another process
        writes: store.write_or_journal) before any row is handed out (no audit, no data).

        One read does the scope check (the patient's row read under the scope's filter) and the reads, so
        the record is one consistent snapshot; a read never waits for a writer (store.connect), so neither
        does opening a record. The rows are kept per scope (`Scope.cache_key`: never another user's), patient
        and data version (`RECORDS_KEPT` records in all): the same patient opened again (a rerun, another tab)
        is audited again but not read again until patient rows may have changed (a new data version).
        The frames handed out are shared: callers only read them.
        """
        patient_id = str(patient_id)
        ids = [patient_id]
        key = (str(self.db), self.scope.cache_key, patient_id, tuple(self.data_version()))  # the version first
        record = _kept_record(key)
        if record is None:
            record = self._read_record(patient_id)
            if record is not None:
                _keep_record(key, record)
        if record is None:  # raised only once the refusal is recorded
            self.log("view_patient", outcome="denied", page=page, patients=[patient_id[:64]])
            raise AccessDenied(f"patient {patient_id[:64]!r} is not in your caseload, or does not exist: "
                               "ask an administrator for access if you need it")
        self.log("view_patient", page=page, patients=ids)
        return dict(record)

    def _read_record(self, patient_id: str) -> dict[str, pd.DataFrame] | None:
        """patient_record's rows, or None when the scope may not open the patient (or there is none)."""
        ids = [patient_id]
        scope_sql, params = self._drill_sql("p")
        with store.connect(self.db) as con:
            patient = self._query(
                f"""SELECT p.patient_id, p.site, p.clinician, p.birth_year, p.sex, p.diagnosis,
                           p.comorbidities, p.prior_failed_trials, p.enrolled_on
                    FROM patients p WHERE p.patient_id = ? AND {scope_sql}""",
                [patient_id, *params], con=con)
            if patient.empty:  # outside the scope (what _can_see answers), or no such patient
                return None
            return {"patient": patient,
                    "treatments": self._query(*self._treatments_sql(ids), con=con),
                    "assessments": self._query(*self._assessments_sql(ids, None), con=con)}

    def search_patient_ids(self, text: str, limit: int = 20, *, page: str | None = None,
                           among: "PatientIds | None" = None) -> list[str]:
        """Patient ids containing `text` that this scope may open, for search-as-you-type (never the whole list).

        Typing the exact id of a patient outside the scope returns nothing and is audited as refused.
        `among`: this scope's `patient_ids()` of the current data (kept by the caller, e.g. a workspace), searched
        in memory instead of scanning the patients table on every keystroke; the same answer.
        """
        text = (text or "")[:64]
        if among is not None and among.searchable(text):
            found = among.containing(text, int(limit))
            if not text or text in found or may(self.scope, "open_any_record"):
                return found  # nothing hidden to look for
        drill_sql, params = self._drill_sql("p")
        with store.connect(self.db) as con:
            if among is None or not among.searchable(text):
                found = [row[0] for row in con.execute(
                    f"""SELECT p.patient_id FROM patients p
                        WHERE {drill_sql} AND strpos(lower(p.patient_id), lower(?)) > 0
                        ORDER BY p.patient_id LIMIT ?""",
                    [*params, text, int(limit)],
                ).fetchall()]
            hidden = bool(text and text not in found and not may(self.scope, "open_any_record") and con.execute(
                "SELECT count(*) FROM patients p WHERE p.patient_id = ?", [text]).fetchall()[0][0])
        if hidden:
            self.log("search_patients", outcome="denied", page=page, patients=[text])
        return found

    def patient_ids(self) -> "PatientIds":
        """Every patient id this scope may open, for `search_patient_ids(among=)`: read once per data version by
        its caller (a new patient is a new data version)."""
        drill_sql, params = self._drill_sql("p")
        with store.connect(self.db) as con:
            ids = [row[0] for row in con.execute(
                f"SELECT p.patient_id FROM patients p WHERE {drill_sql} ORDER BY p.patient_id", params).fetchall()]
        return PatientIds(ids)

    def data_version(self) -> tuple:
        """Changes whenever patient rows can have changed: every such write is an import batch.
        Audit entries and sign-ins leave it alone, so they do not empty the dashboard's caches.
        Read from the database only when `store.change_stamp` says something was written since the
        last read (a few stats), so every page run may ask for it."""
        stamp = store.change_stamp(self.db)
        key = str(self.db)
        known = _DATA_VERSIONS.get(key)
        if known is not None and known[0] == stamp:
            return known[1]
        frame = self._query(
            "SELECT coalesce(max(batch_id), 0) AS last, count(*) AS n, CAST(max(imported_at) AS VARCHAR) AS at"
            " FROM import_batches"
        )
        row = frame.iloc[0]
        version = (int(row["last"]), int(row["n"]), str(row["at"]))
        _DATA_VERSIONS[key] = (stamp, version)
        return version

    def log(self, action: str, *, outcome: str = "ok", page: str | None = None,
            patients: Iterable[str] = (), detail: dict | None = None,
            con: store.Connection | None = None) -> int:
        """Append an audit entry as this scope's user (exports, downloads, imports from pages);
        on `con`, an open write transaction, when the entry belongs with what that transaction does."""
        return audit.append(self.db, self.scope.user, action, role=self.scope.role, outcome=outcome,
                            page=page, patients=patients, detail=detail, con=con)

    def import_history(self, limit: int = 200) -> pd.DataFrame:
        """Recent import batches (file names and row counts; no patient rows), admins only."""
        if not may(self.scope, "view_import_history"):
            raise AccessDenied("import history is visible to administrators only")
        return self._query(
            """SELECT b.batch_id, b.imported_at, b.imported_by, b.source, b.file_name, b.kind, b.rows_total,
                      b.rows_inserted, b.rows_updated, b.rows_unchanged, b.rows_rejected
               FROM import_batches b ORDER BY b.batch_id DESC LIMIT ?""",
            [int(limit)],
        )

    def rejected_rows(self) -> pd.DataFrame:
        """Quarantined import rows. Their raw text cannot be scoped to a caseload, so admins only."""
        if not may(self.scope, "view_rejected_rows"):
            raise AccessDenied("rejected import rows are visible to administrators only")
        return self._query(
            """SELECT r.batch_id, r.file_name, r.line, r.column_name, r.reason, r.raw_line
               FROM rejected_rows r ORDER BY r.batch_id, r.file_name, r.line"""
        )

    # -- visit entry and self-report (analytics/visits.py, analytics/selfreport.py) --
    def _tolerant_query(self, sql: str, params: Sequence, columns: list[str]) -> pd.DataFrame:
        """A read of a schema v3 table: a database from before v3 simply has none of its rows."""
        try:
            return self._query(sql, params)
        except store.MissingTable:
            return pd.DataFrame(columns=columns)

    def _drill_filter(self) -> tuple[str, list]:
        drill_sql, params = self._drill_sql("p")
        return f"x.patient_id IN (SELECT p.patient_id FROM patients p WHERE {drill_sql})", params

    def treatment_details(self, patient_ids: Iterable[str] | None = None) -> pd.DataFrame:
        """Weight, dose in mg and notes typed at the infusion (not part of the CSV contract)."""
        clause, params = self._patient_filter(patient_ids)
        columns = ["patient_id", "administered_at", "weight_kg", "dose_mg", "notes"]
        voided = ("NOT EXISTS (SELECT 1 FROM treatments t WHERE t.patient_id = x.patient_id "
                  "AND t.administered_at = x.administered_at AND t.voided_at IS NOT NULL)")
        return self._tolerant_query(
            f"SELECT {', '.join('x.' + c for c in columns)} FROM treatment_details x WHERE {clause} AND {voided} ORDER BY 1, 2",
            params, columns)

    def voided_rows(self, patient_ids: Iterable[str] | None = None) -> dict[str, pd.DataFrame]:
        """Voided infusions and assessments in the scope, kept for the record (who voided each, when
        and why) and left out of every other read: {"treatments": ..., "assessments": ...}, each with
        the read's columns plus voided_at, voided_by, void_reason, newest void first."""
        out = {}
        for kind, (sql, params) in (("treatments", self._treatments_sql(patient_ids, ordered=False)),
                                    ("assessments", self._assessments_sql(patient_ids, None, ordered=False))):
            sql = sql.replace("x.voided_at IS NULL", "x.voided_at IS NOT NULL").replace(
                " FROM ", ", x.voided_at, x.voided_by, x.void_reason FROM ", 1)
            out[kind] = self._query(sql + " ORDER BY x.voided_at DESC, x.patient_id", params)
        return out

    def record_versions(self, patient_id: str, table: str, record_key: str) -> pd.DataFrame:
        """Replaced versions of one record (oldest first) from record_history; only a patient the scope may open."""
        if table not in ("treatments", "assessments", "treatment_details"):
            raise ValueError(f"no version history is kept for {table!r}")
        if not record_key.startswith(f"{patient_id}|") or not self.can_see_patient(patient_id):
            raise AccessDenied(f"patient {str(patient_id)[:64]!r} is not in your caseload, or does not exist")
        return self._query(
            """SELECT h.replaced_at, h.batch_id, CAST(h.old_values AS VARCHAR) AS old_values FROM record_history h
               WHERE h.table_name = ? AND h.record_key = ? ORDER BY h.replaced_at, h.batch_id""",
            [table, record_key])

    def safety_flags(self, open_only: bool = True) -> pd.DataFrame:
        """Safety flags (positive PHQ-9 item 9 on a self-report) of patients whose record the scope may open.
        Read again only when something was written since this scope's last read (`store.change_stamp`: raising
        and acknowledging a flag are writes, in any process), so every page run may ask for them (the Patient
        page and the Due list do); the frame handed out is shared: callers only read it."""
        stamp = store.change_stamp(self.db)
        key = (str(self.db), self.scope.cache_key, bool(open_only))
        known = _FLAGS.get(key)
        if known is not None and known[0] == stamp:
            return known[1]
        flags = self._read_safety_flags(open_only)  # after the stamp: a write in between is read again next time
        if len(_FLAGS) > 1_000:
            _FLAGS.clear()
        _FLAGS[key] = (stamp, flags)
        return flags

    def _read_safety_flags(self, open_only: bool) -> pd.DataFrame:
        clause, params = self._drill_filter()
        columns = ["flag_id", "patient_id", "raised_at", "reason", "acknowledged_at", "acknowledged_by", "acknowledgement_note"]
        where = clause + (" AND x.acknowledged_at IS NULL" if open_only else "")
        return self._tolerant_query(
            f"SELECT {', '.join('x.' + c for c in columns)} FROM safety_flags x WHERE {where} ORDER BY x.raised_at DESC",
            params, columns)

    def self_report_links(self) -> pd.DataFrame:
        """Self-report links of patients whose record the scope may open (never the token hash)."""
        clause, params = self._drill_filter()
        columns = ["link_id", "patient_id", "instruments", "created_at", "created_by", "expires_at", "used_at"]
        return self._tolerant_query(
            f"SELECT {', '.join('x.' + c for c in columns)} FROM self_report_links x WHERE {clause} ORDER BY x.created_at",
            params, columns)
