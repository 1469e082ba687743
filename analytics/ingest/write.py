"""The short write phase: checks that need the store, then inserts and updates.

Runs inside the caller's transaction on a connection from
`store.transaction`; everything row-sized happens in SQL over the validated
rows (a frame registered, not copied, or a large file's rows staged in a
database file of their own), so the write lock is held for a few set
operations rather than a Python loop.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa

from .. import scales, store
from .rules import Validated

ITEMS = scales.item_columns()

# Value columns compared and written per kind; optional ones only when the source had them.
_VALUES = {
    "patients": ["site", "clinician", "birth_year", "sex", "diagnosis", "comorbidities", "prior_failed_trials", "enrolled_on"],
    "treatments": ["has_time", "route", "dose_mg_per_kg", "phase"],
    "assessments": ["has_time", "rater", *ITEMS, "total", "total_method"],
}
_ALWAYS = {
    "patients": {"site", "clinician", "enrolled_on"},
    "treatments": {"has_time", "route"},
    "assessments": {"has_time", *ITEMS, "total", "total_method"},
}
_SOURCE_COLUMN = {"birth_year": "birth_year", "has_time": "administered_on", "total_method": "total"}


def _record_key(con, kind: str) -> str:
    """The record_history key of a row of `kind` (alias t), e.g. "P1|2024-01-08T09:30:00"."""
    if kind == "patients":
        return "t.patient_id"
    stamp = store.stamp_text(con, "t.administered_at")
    return f"t.patient_id || '|' || {stamp}" if kind == "treatments" else f"t.patient_id || '|' || t.instrument || '|' || {stamp}"


def _old_values(con, kind: str) -> str:
    """SQL for a row's replaced values as JSON (alias t); a patient's with its attributes."""
    if kind != "patients":
        return "to_json(t)"
    if store.dialect(con) == "postgres":
        return """to_jsonb(t) || jsonb_build_object('attributes', coalesce(
                   (SELECT jsonb_object_agg(a.name, a.value) FROM patient_attributes a WHERE a.patient_id = t.patient_id),
                   '{}'::jsonb))"""
    return """json_merge_patch(to_json(t), json_object('attributes', coalesce(
               (SELECT json_group_object(a.name, a.value) FROM patient_attributes a WHERE a.patient_id = t.patient_id),
               '{}'::JSON)))"""

# Inserts of at least this many rows are numbered from their rows, ids reserved at once (see `_bulk`).
BULK_INSERT_ROWS = 100_000

UNKNOWN_PATIENT = "unknown patient: no patient with this patient_id (import the patients file first, or in the same command)"


@dataclass
class Written:
    batch_id: int
    inserted: int
    updated: int
    unchanged: int
    db_rejects: pd.DataFrame  # _row, _line, column, reason


def _bulk(con, new_rows: int) -> bool:
    """Number a large insert's ids from its rows (`_insert_numbered`: ids reserved at once) instead of one
    sequence call per row? On DuckDB, for an insert of at least BULK_INSERT_ROWS rows (the keys were checked
    above: unknown patients and repeated keys are rejected rows, never inserted)."""
    return new_rows >= BULK_INSERT_ROWS and store.dialect(con) == "duckdb"


def check_keys_unique(con, table: str, batch_id: int, whole_table: bool = False) -> None:
    """The second guard of the keys on DuckDB, which holds them without an index since schema v9 (PostgreSQL's
    constraints are the guard there): no row this batch inserted into `table` shares its key with another row
    (an update changes no key). The writer's own checks come first (a repeated key within a file is a rejected
    row, a stored key is an update); were they to miss one, this raises and the whole transaction is rolled
    back. `whole_table`: the batch wrote every row (a first import): one pass over the keys (0.4 s at 4.9 M
    assessments, where building the unique index cost 2.4-3.9 s). The error names the table and how many keys,
    never a patient."""
    if store.dialect(con) != "duckdb":
        return
    repeated = store.repeated_keys(con, table, None if whole_table else batch_id)
    if repeated:
        raise duckdb.ConstraintException(f"duplicate key: {repeated} key(s) ({', '.join(store.KEYS[table])}) of "
                                         f"{table} would be held by more than one row; nothing was written")


def _insert_numbered(con, v: Validated, picked: str, low: int, high: int, batch_id: int) -> None:
    """Insert the rows `picked` (SQL after FROM, alias i) into `v`'s table, numbered from their `_row` (distinct,
    between `low` and `high`) with ids reserved at once, not row by row."""
    insert_columns, select = _insert_select(v)
    id_column, _ = store.ID_SEQUENCES[v.kind]
    first = store.reserve_ids(con, v.kind, high - low + 1)
    con.execute(f"""INSERT INTO {v.kind} ({id_column}, {', '.join(insert_columns)}, batch_id)
                    SELECT ? + (i._row - ?), {select}, ? FROM {picked}""", [first, low, batch_id])


def _insert_select(v: Validated) -> tuple[list[str], str]:
    """The columns an insert of `v`'s new rows writes, and the SELECT list over the incoming rows (alias i)."""
    insert_columns = [*store.KEYS[v.kind], *_written_columns(v)]
    select = ", ".join(
        f"CAST(round(i.{c}) AS SMALLINT)" if c in ITEMS else
        ("coalesce(i.comorbidities, '')" if c == "comorbidities" else f"i.{c}")
        for c in insert_columns
    )
    return insert_columns, select


def _arrow(frame: pd.DataFrame) -> pa.Table:
    return pa.Table.from_pandas(frame, preserve_index=False)


def _written_columns(v: Validated) -> list[str]:
    given = v.given
    return [c for c in _VALUES[v.kind] if c in _ALWAYS[v.kind] or _SOURCE_COLUMN.get(c, c) in given]


def start_batch(con: store.Connection, *, source: str, file_name: str, sha256: str, kind: str, user: str, rows_total: int) -> int:
    """The batch row of one file's import."""
    return con.execute(
        """INSERT INTO import_batches (source, file_name, sha256, kind, imported_by, rows_total)
           VALUES (?, ?, ?, ?, ?, ?) RETURNING batch_id""",
        [source, file_name, sha256, kind, user, rows_total],
    ).fetchall()[0][0]


def finish_batch(con, batch_id: int, inserted: int, updated: int, unchanged: int, rejected: int) -> None:
    con.execute(
        """UPDATE import_batches SET rows_inserted = ?, rows_updated = ?, rows_unchanged = ?, rows_rejected = ?
           WHERE batch_id = ?""",
        [inserted, updated, unchanged, rejected, batch_id],
    )


def write(con: store.Connection, v: Validated, batch_id: int, *, staged: Path | None = None) -> Written:
    """Check against the store and write `v`'s rows: `v.clean`, or when `staged` is given the rows of
    that Parquet file, with the same columns (a large file's staged rows)."""
    kind = v.kind
    table = kind
    columns = _written_columns(v)
    keys = store.KEYS[kind]
    on = " AND ".join(f"t.{k} = i.{k}" for k in keys)
    differs = " OR ".join(f"t.{c} IS DISTINCT FROM i.{c}" for c in columns) or "FALSE"
    # A view over the staged file on DuckDB; PostgreSQL cannot read it, so its rows are copied in.
    as_view = staged is not None and store.dialect(con) == "duckdb"
    first_import = refused = False  # an empty table: no status of every row (below)
    if staged is None:
        # Registered as Arrow: DuckDB scans it natively, about twice as fast as scanning a DataFrame.
        con.register("ingest_incoming", _arrow(v.clean))
    elif as_view:
        quoted = str(staged).replace("'", "''")
        con.execute(f"CREATE OR REPLACE TEMP VIEW ingest_incoming AS SELECT * FROM read_parquet('{quoted}')")
    else:
        con.register("ingest_incoming", staged)
    try:
        if kind == "patients":
            con.register("ingest_attributes", _arrow(v.attributes))
            names = list(v.attribute_names)
            con.execute(
                f"""CREATE OR REPLACE TEMP TABLE ingest_status AS
                    WITH current_attrs AS (
                        SELECT a.* FROM patient_attributes a
                        WHERE a.name = ANY(?) AND a.patient_id IN (SELECT patient_id FROM ingest_incoming)),
                    attr_changed AS (
                        SELECT DISTINCT coalesce(c.patient_id, n.patient_id) AS patient_id
                        FROM current_attrs c FULL JOIN ingest_attributes n
                          ON c.patient_id = n.patient_id AND c.name = n.name
                        WHERE c.value IS DISTINCT FROM n.value)
                    SELECT i._row, i.patient_id,
                           CASE WHEN t.patient_id IS NULL THEN 'new'
                                WHEN ({differs}) OR d.patient_id IS NOT NULL THEN 'changed'
                                ELSE 'same' END AS status
                    FROM ingest_incoming i
                    LEFT JOIN patients t ON {on}
                    LEFT JOIN attr_changed d ON d.patient_id = i.patient_id""",
                [names],
            )
            db_rejects = pd.DataFrame({"_row": pd.Series([], dtype="int64"), "_line": pd.Series([], dtype="int64"),
                                       "column": [], "reason": []})
        else:
            early = ""
            if kind == "treatments":
                early = "WHEN p.enrolled_on IS NOT NULL AND CAST(i.administered_at AS DATE) < p.enrolled_on THEN 'before_enrolment'"
            id_column = "treatment_id" if kind == "treatments" else "assessment_id"
            # An empty table (a first import): every row is new unless its patient is unknown or it is
            # dated before the enrolment, so only those few rows are looked up; no status of every row
            # (4.7 M at 100,000 patients) is built, and the insert reads the incoming rows once.
            first_import = con.execute(f"SELECT count(*) FROM (SELECT 1 FROM {table} LIMIT 1) t").fetchall()[0][0] == 0
            if first_import:
                too_early = ("OR (p.enrolled_on IS NOT NULL AND CAST(i.administered_at AS DATE) < p.enrolled_on)"
                             if kind == "treatments" else "")
                bad = con.execute(
                    f"""SELECT i._row, i._line,
                               CASE WHEN p.patient_id IS NULL THEN 'unknown_patient' ELSE 'before_enrolment' END AS status,
                               p.enrolled_on
                        FROM ingest_incoming i LEFT JOIN patients p ON p.patient_id = i.patient_id
                        WHERE p.patient_id IS NULL {too_early} ORDER BY i._row"""
                ).df()
            else:
                con.execute(
                    f"""CREATE OR REPLACE TEMP TABLE ingest_status AS
                        SELECT i._row, i._line, t.{id_column} AS existing_id, p.enrolled_on,
                               CASE WHEN p.patient_id IS NULL THEN 'unknown_patient'
                                    {early}
                                    WHEN t.{id_column} IS NULL THEN 'new'
                                    WHEN {differs} THEN 'changed'
                                    ELSE 'same' END AS status
                        FROM ingest_incoming i
                        LEFT JOIN patients p ON p.patient_id = i.patient_id
                        LEFT JOIN {table} t ON {on}"""
                )
                bad = con.execute(
                    """SELECT _row, _line, status, enrolled_on FROM ingest_status
                       WHERE status IN ('unknown_patient', 'before_enrolment') ORDER BY _row"""
                ).df()
            reasons = [
                UNKNOWN_PATIENT if status == "unknown_patient"
                else f"administered_on is before the patient's enrolment on {pd.Timestamp(enrolled).date().isoformat()}"
                for status, enrolled in zip(bad["status"], bad["enrolled_on"])
            ]
            db_rejects = pd.DataFrame({
                "_row": bad["_row"].astype("int64"),
                "_line": bad["_line"].astype("int64"),
                "column": ["patient_id" if s == "unknown_patient" else "administered_on" for s in bad["status"]],
                "reason": reasons,
            })

        if first_import:
            [(incoming,)] = con.execute("SELECT count(*) FROM ingest_incoming").fetchall()
            counts = {"new": incoming - len(bad), **bad["status"].value_counts().to_dict()}
            if len(bad):
                con.register("ingest_refused", bad[["_row"]].astype("int64"))
                refused = True
        else:
            counts = dict(con.execute("SELECT status, count(*) FROM ingest_status GROUP BY status").fetchall())
        set_list = ", ".join(f"{c} = i.{c}" for c in columns)
        if counts.get("changed"):
            old = _old_values(con, kind)
            con.execute(
                f"""INSERT INTO record_history (table_name, record_key, old_values, batch_id)
                    SELECT '{table}', {_record_key(con, kind)}, {old}, ?
                    FROM {table} t JOIN ingest_incoming i ON {on}
                    JOIN ingest_status s ON s._row = i._row WHERE s.status = 'changed'""",
                [batch_id],
            )
            key_match = " AND ".join(f"{table}.{k} = i.{k}" for k in keys)
            con.execute(
                f"""UPDATE {table} SET {set_list}, batch_id = ?
                    FROM ingest_incoming i JOIN ingest_status s ON s._row = i._row
                    WHERE s.status = 'changed' AND {key_match}""",
                [batch_id],
            )
        if counts.get("new"):
            insert_columns, select = _insert_select(v)
            # Every row new (a first import): no join with the status of 4.7 M rows to pick them.
            if counts["new"] == sum(counts.values()):
                picked = "ingest_incoming i"
            elif first_import:
                picked = "ingest_incoming i WHERE i._row NOT IN (SELECT _row FROM ingest_refused)"
            else:
                picked = "ingest_incoming i JOIN ingest_status s ON s._row = i._row WHERE s.status = 'new'"
            if kind != "patients" and _bulk(con, counts["new"]):  # ids numbered from _row (distinct)
                [(low, high)] = con.execute(f"SELECT min(i._row), max(i._row) FROM {picked}").fetchall()
                _insert_numbered(con, v, picked, low, high, batch_id)
            else:
                con.execute(f"INSERT INTO {table} ({', '.join(insert_columns)}, batch_id) SELECT {select}, ? FROM {picked}",
                            [batch_id])
        if kind != "patients" and counts.get("new"):
            check_keys_unique(con, table, batch_id, whole_table=first_import)
        if kind == "patients" and v.attribute_names and (counts.get("new") or counts.get("changed")):
            con.execute(
                """DELETE FROM patient_attributes WHERE name = ANY(?) AND patient_id IN
                   (SELECT patient_id FROM ingest_status WHERE status = 'changed')""",
                [list(v.attribute_names)],
            )
            con.execute(
                """INSERT INTO patient_attributes (patient_id, name, value)
                   SELECT n.patient_id, n.name, n.value FROM ingest_attributes n
                   JOIN ingest_status s ON s.patient_id = n.patient_id WHERE s.status IN ('new', 'changed')"""
            )
        if not first_import:
            con.execute("DROP TABLE ingest_status")
    finally:
        if refused:
            con.unregister("ingest_refused")
        if as_view:
            con.execute("DROP VIEW IF EXISTS ingest_incoming")
        else:
            con.unregister("ingest_incoming")
        if kind == "patients":
            con.unregister("ingest_attributes")
    return Written(batch_id, counts.get("new", 0), counts.get("changed", 0), counts.get("same", 0), db_rejects)


def quarantine(con: store.Connection, batch_id: int, file_name: str, rejects: pd.DataFrame) -> None:
    """Store rejected rows (line, column, reason, raw).

    A row is not quarantined again when a file of the same content (sha256 of the batch) had the
    same line rejected for the same reason, whatever the file was called: a dashboard upload
    arrives under a new temporary path every time."""
    if rejects.empty:
        return
    frame = pd.DataFrame({
        "line": rejects["_line"].astype("int64"),
        "column_name": rejects["column"].astype(object),
        "reason": rejects["reason"].astype(object),
        "raw_line": rejects["raw"].astype(object),
    })
    con.register("ingest_rejects", frame)
    try:
        con.execute(
            """INSERT INTO rejected_rows (batch_id, file_name, line, column_name, reason, raw_line)
               SELECT ?, ?, r.line, r.column_name, r.reason, r.raw_line FROM ingest_rejects r
               WHERE NOT EXISTS (
                   SELECT 1 FROM rejected_rows x JOIN import_batches b ON b.batch_id = x.batch_id
                   WHERE b.sha256 = (SELECT sha256 FROM import_batches WHERE batch_id = ?)
                   AND x.line IS NOT DISTINCT FROM r.line
                   AND x.column_name IS NOT DISTINCT FROM r.column_name AND x.reason = r.reason)
               ORDER BY r.line""",
            [batch_id, file_name, batch_id],
        )
    finally:
        con.unregister("ingest_rejects")
