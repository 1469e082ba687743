"""The DuckDB store: schema, migrations and connections.

DuckDB allows one process to hold a database file for writing and then no
other process may open it, even read-only. The dashboard and a nightly import
must coexist, so nothing here keeps a database file open: every use attaches
the file, does its work and detaches it, retrying while another process holds
the lock (`connect`). Within one process the same file cannot be opened twice
with different settings either, so a process-wide lock serialises openings.

Starting a DuckDB instance costs ~15 ms of CPU (its function catalogue) whatever
the file, while attaching a file to a running instance costs ~4 ms; a page that
opens the store a few times per click pays that difference on every click. So
one in-memory instance lives for the process and files are ATTACHed to it and
DETACHed when the last user is done: detaching checkpoints and releases the
file lock exactly as closing a connection did. Each `connect` gets its own
cursor, so temporary tables and registered frames still end with it. DuckDB's
allocator returns memory only when its instance closes, so after a use that
grew the process a lot (a large read or an import) the instance is closed too.

Pages never come here directly: they go through `analytics.access`, which
applies the signed-in user's scope.
"""
from __future__ import annotations

import contextlib
import os
import random
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import duckdb

from . import scales
from .vocabulary import PHASES, ROUTES, SEXES

DEFAULT_DB = Path(__file__).resolve().parent.parent / "data" / "outcomes.duckdb"
LOCK_WAIT_SECONDS = float(os.environ.get("OUTCOMES_LOCK_WAIT", "120"))

# Test hook: when set, detaching a database opened for writing fails after the detach, as it does
# when the checkpoint finds the disk full (tests/test_ingest_outcome.py; a real full disk is in docs/import.md).
FAIL_CHECKPOINT_ENV = "OUTCOMES_TEST_FAIL_CHECKPOINT"

_process_lock = threading.RLock()
# DuckDB's allocator keeps what a large query used until its instance closes (a sorted read of
# 4.7 M assessments leaves ~0.5 GB resident): after a use that grew the process by more than
# this, the shared instance is closed and the next use starts a new one (~15 ms).
RECYCLE_AFTER_GROWTH_BYTES = 128 * 2**20


class StoreBusy(RuntimeError):
    """Another process held the database for longer than we were willing to wait."""


class CommittedButFailed(RuntimeError):
    """The transaction was committed (its changes are stored), then a later step failed.

    Typically the checkpoint that DETACH runs, on a full disk: the committed changes are in
    the write-ahead log (`<db>.wal`), and DuckDB moves them into the database file the next
    time the file is opened with room to do so. `step` names what failed; `__cause__` is the error.
    """

    def __init__(self, step: str, error: BaseException):
        self.step = step
        self.error = error
        super().__init__(f"committed; then {step} failed: {str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__}")


def db_path(explicit: str | os.PathLike | None = None) -> Path:
    """--db beats OUTCOMES_DB beats data/outcomes.duckdb."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("OUTCOMES_DB")
    return Path(env) if env else DEFAULT_DB


def _private_spill_dir() -> str:
    # Inside the process's work folder: removed at exit, or by the next process after a kill -9.
    from .workdir import work_dir

    return str(work_dir() / "duckdb-spill")


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc).lower()
    return "lock" in text or "conflicting" in text or "being used by another process" in text


class _Attachments:
    """The process's one DuckDB instance and the store files attached to it (guarded by `_process_lock`)."""

    def __init__(self) -> None:
        self.pid = -1
        self.instance: duckdb.DuckDBPyConnection | None = None
        self.attached: dict[str, list] = {}  # resolved path -> [alias, write, users]
        self.serial = 0
        self.rss_before = 0  # resident bytes when the first of the current attachments was made

    def base(self) -> duckdb.DuckDBPyConnection:
        if self.instance is None or self.pid != os.getpid():
            # After a fork the parent's instance is not ours to use (nor to close).
            # An in-memory instance would spill to ".tmp" in the working directory: keep spilled
            # patient rows in a private (0700) folder that goes with the process instead.
            self.instance = duckdb.connect(":memory:", config={"temp_directory": _private_spill_dir()})
            self.instance.execute("SET enable_progress_bar = false")
            self.pid, self.attached, self.serial = os.getpid(), {}, 0
        return self.instance

    def attach(self, target: Path, write: bool) -> str:
        """Attach `target` (or share its attachment) and return its alias; raises DuckDB's lock errors."""
        key = str(target.resolve())
        entry = self.attached.get(key)
        if entry is not None and entry[2] == 0:
            self._detach(key)  # left behind by an interrupted detach
            entry = None
        base = self.base()
        if entry is not None:
            if write and not entry[1]:
                raise duckdb.ConnectionException(
                    f"cannot open {target} for writing while this process reads it (open the write connection first)")
            entry[2] += 1
            return entry[0]
        if not self.attached:
            self.rss_before = _resident_bytes()
        self.serial += 1
        alias = f"store_{self.serial}"
        quoted = str(target).replace("'", "''")
        base.execute(f"ATTACH '{quoted}' AS {alias}" + ("" if write else " (READ_ONLY)"))
        self.attached[key] = [alias, write, 1]
        return alias

    def release(self, target: Path) -> None:
        key = str(target.resolve())
        entry = self.attached.get(key)
        if entry is None:
            return
        entry[2] -= 1
        if entry[2] <= 0:
            self._detach(key)

    def _detach(self, key: str) -> None:
        entry = self.attached[key]
        entry[2] = 0  # if DETACH fails, the next attach of this file tries again
        self.base().execute(f"DETACH DATABASE IF EXISTS {entry[0]}")
        if entry[1] and os.environ.get(FAIL_CHECKPOINT_ENV):
            del self.attached[key]
            # What DuckDB raises when the checkpoint of a DETACH finds the disk full (the file is detached).
            raise duckdb.IOException(f"Detached database '{entry[0]}', but CHECKPOINT during DETACH failed. "
                                     f"(injected by {FAIL_CHECKPOINT_ENV}: No space left on device)")
        del self.attached[key]
        if not self.attached and _resident_bytes() - self.rss_before > RECYCLE_AFTER_GROWTH_BYTES:
            self.discard()

    def discard(self) -> None:
        """Drop the instance after a fatal DuckDB error (it refuses all further work); the next use starts afresh."""
        instance, self.instance, self.attached = self.instance, None, {}
        if instance is not None and self.pid == os.getpid():
            with contextlib.suppress(Exception):
                instance.close()  # releases every file it held


def _resident_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0  # not Linux: never recycled


_attachments = _Attachments()


@contextlib.contextmanager
def connect(
    path: str | os.PathLike | None = None,
    *,
    write: bool = False,
    wait: float | None = None,
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A short-lived connection; retries while another process holds the file.

    Read connections on a missing file raise FileNotFoundError rather than
    creating an empty database. A write connection brings an old schema up to
    date first (`ensure_current`).
    """
    target = db_path(path)
    if not write and not target.exists():
        raise FileNotFoundError(f"no database at {target}: run `python -m analytics demo` or import data")
    target.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + (LOCK_WAIT_SECONDS if wait is None else wait)
    delay = 0.02
    with _process_lock:
        while True:
            try:
                alias = _attachments.attach(target, write)
                break
            except (duckdb.IOException, duckdb.ConnectionException) as exc:
                if not _is_lock_error(exc) or time.monotonic() >= deadline:
                    if _is_lock_error(exc):
                        raise StoreBusy(f"database {target} is busy (another process is writing); try again shortly") from exc
                    raise
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 0.5)
        try:
            con = _attachments.base().cursor()
            try:
                # No progress bar: a long query would draw one over the CLI's output and the server log.
                con.execute("SET enable_progress_bar = false")
                con.execute(f"USE {alias}")
                if write:
                    ensure_current(con)
                yield con
            finally:
                con.close()
        except (duckdb.FatalException, duckdb.InternalException):
            _attachments.discard()  # DuckDB invalidates the whole instance after these
            with contextlib.suppress(Exception):
                _attachments.release(target)
            raise
        except BaseException:
            # The error being raised is the one to report: a detach that fails after it (its
            # checkpoint on a full disk) must not replace it.
            with contextlib.suppress(Exception):
                _attachments.release(target)
            raise
        _attachments.release(target)


# Work to do once a transaction has committed (the audit anchor, analytics/keys.py), by id of its
# connection; dropped on rollback. A connection outside `transaction` runs such work at once.
_after_commit: dict[int, list[Callable[[], None]]] = {}


def after_commit(con: duckdb.DuckDBPyConnection, work: Callable[[], None]) -> None:
    """Run `work` when `con`'s transaction commits (now, if `con` is not inside `transaction`)."""
    pending = _after_commit.get(id(con))
    if pending is None:
        work()
    else:
        pending.append(work)


@contextlib.contextmanager
def transaction(path: str | os.PathLike | None = None, wait: float | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    """A write connection inside one transaction: all or nothing.

    Any error raised out of it means nothing was committed, except `CommittedButFailed`:
    the COMMIT succeeded and a step after it (closing the connection, DETACH and its
    checkpoint) failed, so callers can say truthfully what happened to the database.
    Work registered with `after_commit` (the audit anchor) runs once the COMMIT succeeded.
    """
    committed = False
    step = "writing the database file after the commit (checkpoint on detach)"
    pending: list[Callable[[], None]] = []
    try:
        with connect(path, write=True, wait=wait) as con:
            con.execute("BEGIN TRANSACTION")
            _after_commit[id(con)] = pending
            try:
                yield con
            except BaseException:
                _after_commit.pop(id(con), None)
                con.execute("ROLLBACK")
                raise
            try:
                con.execute("COMMIT")
            finally:
                _after_commit.pop(id(con), None)
            committed = True
            try:
                for work in pending:
                    work()
            except Exception as exc:
                raise CommittedButFailed("updating the audit anchor after the commit", exc) from exc
    except CommittedButFailed:
        raise
    except Exception as exc:
        if committed:
            raise CommittedButFailed(step, exc) from exc
        raise


# --- schema -------------------------------------------------------------------

def _in_list(values) -> str:
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values)


def _schema_v1() -> list[str]:
    item_cols = ",\n    ".join(f"item_{i} SMALLINT CHECK (item_{i} BETWEEN 0 AND 6)" for i in range(1, 11))
    return [
        """CREATE TABLE instruments (
    code VARCHAR PRIMARY KEY,
    name VARCHAR NOT NULL,
    rater VARCHAR NOT NULL,
    scored_items INTEGER NOT NULL CHECK (scored_items BETWEEN 1 AND 10),
    item_max INTEGER NOT NULL,
    total_max INTEGER NOT NULL
)""",
        "CREATE SEQUENCE batch_seq START 1",
        """CREATE TABLE import_batches (
    batch_id BIGINT PRIMARY KEY DEFAULT nextval('batch_seq'),
    source VARCHAR NOT NULL,            -- csv, fhir, demo, ui
    file_name VARCHAR NOT NULL,
    sha256 VARCHAR NOT NULL,
    kind VARCHAR,                       -- patients, treatments, assessments, fhir
    imported_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
    imported_by VARCHAR,
    rows_total INTEGER NOT NULL DEFAULT 0 CHECK (rows_total >= 0),
    rows_inserted INTEGER NOT NULL DEFAULT 0 CHECK (rows_inserted >= 0),
    rows_updated INTEGER NOT NULL DEFAULT 0 CHECK (rows_updated >= 0),
    rows_unchanged INTEGER NOT NULL DEFAULT 0 CHECK (rows_unchanged >= 0),
    rows_rejected INTEGER NOT NULL DEFAULT 0 CHECK (rows_rejected >= 0)
)""",
        f"""CREATE TABLE patients (
    patient_id VARCHAR PRIMARY KEY CHECK (length(patient_id) BETWEEN 1 AND 64),
    site VARCHAR,
    clinician VARCHAR,
    birth_year INTEGER CHECK (birth_year BETWEEN 1900 AND 2100),
    sex VARCHAR CHECK (sex IN ({_in_list(SEXES)})),
    diagnosis VARCHAR,
    comorbidities VARCHAR NOT NULL DEFAULT '',
    prior_failed_trials INTEGER CHECK (prior_failed_trials BETWEEN 0 AND 50),
    enrolled_on DATE,
    batch_id BIGINT
)""",
        """CREATE TABLE patient_attributes (
    patient_id VARCHAR NOT NULL REFERENCES patients (patient_id),
    name VARCHAR NOT NULL CHECK (length(name) > 0),
    value VARCHAR,
    PRIMARY KEY (patient_id, name)
)""",
        "CREATE SEQUENCE treatment_seq START 1",
        f"""CREATE TABLE treatments (
    treatment_id BIGINT PRIMARY KEY DEFAULT nextval('treatment_seq'),
    patient_id VARCHAR NOT NULL REFERENCES patients (patient_id),
    administered_at TIMESTAMP NOT NULL,
    has_time BOOLEAN NOT NULL DEFAULT false,
    route VARCHAR NOT NULL CHECK (route IN ({_in_list(ROUTES)})),
    dose_mg_per_kg DOUBLE CHECK (dose_mg_per_kg > 0 AND dose_mg_per_kg <= 5),
    phase VARCHAR CHECK (phase IN ({_in_list(PHASES)})),
    batch_id BIGINT,
    UNIQUE (patient_id, administered_at)
)""",
        "CREATE SEQUENCE assessment_seq START 1",
        f"""CREATE TABLE assessments (
    assessment_id BIGINT PRIMARY KEY DEFAULT nextval('assessment_seq'),
    patient_id VARCHAR NOT NULL REFERENCES patients (patient_id),
    instrument VARCHAR NOT NULL REFERENCES instruments (code),
    administered_at TIMESTAMP NOT NULL,
    has_time BOOLEAN NOT NULL DEFAULT false,
    rater VARCHAR,
    {item_cols},
    total DOUBLE CHECK (total >= 0 AND total <= 60),
    total_method VARCHAR NOT NULL CHECK (total_method IN ('items', 'prorated', 'given')),
    batch_id BIGINT,
    UNIQUE (patient_id, instrument, administered_at)
)""",
        """CREATE TABLE rejected_rows (
    batch_id BIGINT NOT NULL,
    file_name VARCHAR NOT NULL,
    line INTEGER,
    column_name VARCHAR,
    reason VARCHAR NOT NULL,
    raw_line VARCHAR
)""",
        # Corrections are new versions: the replaced values are kept here.
        """CREATE TABLE record_history (
    table_name VARCHAR NOT NULL,
    record_key VARCHAR NOT NULL,
    old_values JSON NOT NULL,
    replaced_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
    batch_id BIGINT
)""",
    ]


def _schema_v2() -> list[str]:
    """Accounts, patient-level grants and the append-only audit trail (see docs/security.md)."""
    return [
        """CREATE TABLE users (
    username VARCHAR PRIMARY KEY CHECK (length(username) BETWEEN 2 AND 64),
    role VARCHAR NOT NULL CHECK (role IN ('clinician', 'director', 'admin')),
    clinician VARCHAR,                  -- the patients.clinician handle a clinician's caseload is filed under
    password_hash VARCHAR,              -- argon2id; NULL for accounts that only sign in through OIDC
    disabled BOOLEAN NOT NULL DEFAULT false,
    session_epoch INTEGER NOT NULL DEFAULT 0,   -- bumped to end every open session of the account
    failed_attempts INTEGER NOT NULL DEFAULT 0 CHECK (failed_attempts >= 0),
    locked_until TIMESTAMP,
    created_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
    created_by VARCHAR,
    last_sign_in TIMESTAMP
)""",
        """CREATE TABLE patient_grants (
    username VARCHAR NOT NULL,          -- checked against users in analytics.auth (no FK: parent updates)
    patient_id VARCHAR NOT NULL,
    granted_by VARCHAR NOT NULL,
    granted_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
    reason VARCHAR,
    PRIMARY KEY (username, patient_id)
)""",
        # Append-only: the product has no UPDATE or DELETE on it; each row carries the hash of
        # the previous one so that an edit made outside the product breaks the chain.
        """CREATE TABLE audit_log (
    seq BIGINT PRIMARY KEY CHECK (seq >= 1),
    logged_at TIMESTAMP NOT NULL,
    actor VARCHAR NOT NULL,
    role VARCHAR,
    action VARCHAR NOT NULL,
    outcome VARCHAR NOT NULL CHECK (outcome IN ('ok', 'denied', 'failed')),
    page VARCHAR,
    patients VARCHAR NOT NULL,          -- JSON list of patient ids
    detail VARCHAR NOT NULL,            -- JSON object
    prev_hash VARCHAR NOT NULL,
    hash VARCHAR NOT NULL UNIQUE
)""",
    ]


def _schema_v3() -> list[str]:
    """Visit entry extras, self-report links and safety flags (docs/self-report.md)."""
    return [
        # What a clinician types at an infusion that the CSV contract does not carry.
        # Keyed like treatments; replaced values go to record_history as 'treatment_details'.
        """CREATE TABLE treatment_details (
    patient_id VARCHAR NOT NULL,
    administered_at TIMESTAMP NOT NULL,
    weight_kg DOUBLE CHECK (weight_kg > 0 AND weight_kg <= 400),
    dose_mg DOUBLE CHECK (dose_mg > 0),
    notes VARCHAR,
    PRIMARY KEY (patient_id, administered_at)
)""",
        "CREATE SEQUENCE self_report_link_seq START 1",
        # The token itself is never stored: only its SHA-256.
        """CREATE TABLE self_report_links (
    link_id BIGINT PRIMARY KEY DEFAULT nextval('self_report_link_seq'),
    token_sha256 VARCHAR NOT NULL UNIQUE CHECK (length(token_sha256) = 64),
    patient_id VARCHAR NOT NULL,
    instruments VARCHAR NOT NULL,       -- comma-separated scale codes
    created_at TIMESTAMP NOT NULL,
    created_by VARCHAR NOT NULL,
    expires_at TIMESTAMP NOT NULL,
    used_at TIMESTAMP
)""",
        "CREATE SEQUENCE safety_flag_seq START 1",
        """CREATE TABLE safety_flags (
    flag_id BIGINT PRIMARY KEY DEFAULT nextval('safety_flag_seq'),
    patient_id VARCHAR NOT NULL,
    raised_at TIMESTAMP NOT NULL,
    reason VARCHAR NOT NULL,
    link_id BIGINT,
    acknowledged_at TIMESTAMP,
    acknowledged_by VARCHAR,
    acknowledgement_note VARCHAR
)""",
    ]


# What the store holds of one assessment since schema v4: a scale of up to this many items,
# each scored 0 to STORE_ITEM_MAX, with any total of 0 or more (the scale registry checks the
# rest). Fixed with the migration that made them: a larger scale needs a new migration.
STORE_ITEM_COLUMNS = 30
STORE_ITEM_MAX = 10


def _schema_v4() -> list[str]:
    """Room for longer scales (BDI-II: 21 items, 0-63): assessments get item columns up to
    STORE_ITEM_COLUMNS and lose the 0-60 total and 0-6 item limits of v1; instruments lose the
    1-10 item limit. DuckDB can neither drop a CHECK nor rename a table another references, so
    both tables are rebuilt: rows kept aside, tables dropped, created anew and filled back."""
    items_v1 = ", ".join(f"item_{i}" for i in range(1, 11))
    item_cols = ",\n    ".join(f"item_{i} SMALLINT CHECK (item_{i} BETWEEN 0 AND {STORE_ITEM_MAX})"
                                for i in range(1, STORE_ITEM_COLUMNS + 1))
    kept = ("assessment_id, patient_id, instrument, administered_at, has_time, rater, "
            f"{items_v1}, total, total_method, batch_id")
    return [
        "CREATE TEMP TABLE v4_assessments AS SELECT * FROM assessments",
        "CREATE TEMP TABLE v4_instruments AS SELECT * FROM instruments",
        "DROP TABLE assessments",
        "DROP TABLE instruments",
        """CREATE TABLE instruments (
    code VARCHAR PRIMARY KEY,
    name VARCHAR NOT NULL,
    rater VARCHAR NOT NULL,
    scored_items INTEGER NOT NULL CHECK (scored_items >= 1),
    item_max INTEGER NOT NULL,
    total_max INTEGER NOT NULL
)""",
        "INSERT INTO instruments SELECT code, name, rater, scored_items, item_max, total_max FROM v4_instruments",
        f"""CREATE TABLE assessments (
    assessment_id BIGINT PRIMARY KEY DEFAULT nextval('assessment_seq'),
    patient_id VARCHAR NOT NULL REFERENCES patients (patient_id),
    instrument VARCHAR NOT NULL REFERENCES instruments (code),
    administered_at TIMESTAMP NOT NULL,
    has_time BOOLEAN NOT NULL DEFAULT false,
    rater VARCHAR,
    {item_cols},
    total DOUBLE CHECK (total >= 0),
    total_method VARCHAR NOT NULL CHECK (total_method IN ('items', 'prorated', 'given')),
    batch_id BIGINT,
    UNIQUE (patient_id, instrument, administered_at)
)""",
        f"INSERT INTO assessments ({kept}) SELECT {kept} FROM v4_assessments",
        "DROP TABLE v4_assessments",
        "DROP TABLE v4_instruments",
    ]


def _schema_security() -> list[str]:
    """Keyed audit entries, server-side sessions, OpenID Connect identities and break-glass grants
    (docs/security.md). Self-contained: creates only its own tables and one audit_log column."""
    return [
        # The id of the HMAC key (analytics/keys.py) that signed the entry; NULL: an entry written
        # before the key existed (plain SHA-256 chain).
        "ALTER TABLE audit_log ADD COLUMN key_id VARCHAR",
        # One row per sign-in. The browser holds only a random token whose SHA-256 is in
        # session_tokens; a one-time claim code (session_claims) lets it fetch that token as an
        # HttpOnly cookie. No indexed column is ever updated (DuckDB checks such updates eagerly).
        """CREATE TABLE sessions (
    session_id VARCHAR PRIMARY KEY,     -- random, server-side handle
    username VARCHAR NOT NULL,
    epoch INTEGER NOT NULL,             -- users.session_epoch at sign-in
    via VARCHAR NOT NULL,               -- password, oidc
    created_at TIMESTAMP NOT NULL,
    last_seen TIMESTAMP NOT NULL,
    ended_at TIMESTAMP,
    end_reason VARCHAR
)""",
        """CREATE TABLE session_tokens (
    token_sha256 VARCHAR PRIMARY KEY CHECK (length(token_sha256) = 64),
    session_id VARCHAR NOT NULL,
    issued_at TIMESTAMP NOT NULL
)""",
        """CREATE TABLE session_claims (
    claim_sha256 VARCHAR PRIMARY KEY CHECK (length(claim_sha256) = 64),
    session_id VARCHAR NOT NULL,
    expires_at TIMESTAMP NOT NULL
)""",
        # An identity provider's account (issuer, subject) bound to one local account.
        """CREATE TABLE oidc_identities (
    issuer VARCHAR NOT NULL,
    subject VARCHAR NOT NULL,
    username VARCHAR NOT NULL,
    linked_by VARCHAR NOT NULL,         -- 'oidc' (created at first sign-in) or the admin who linked it
    linked_at TIMESTAMP NOT NULL,
    PRIMARY KEY (issuer, subject)
)""",
        "CREATE SEQUENCE break_glass_seq START 1",
        # A time-limited permission for one admin to take identifiable exports, with its reason.
        """CREATE TABLE break_glass (
    grant_id BIGINT PRIMARY KEY DEFAULT nextval('break_glass_seq'),
    username VARCHAR NOT NULL,
    reason VARCHAR NOT NULL CHECK (length(reason) >= 10),
    granted_by VARCHAR NOT NULL,
    granted_at TIMESTAMP NOT NULL,
    expires_at TIMESTAMP NOT NULL,
    ended_at TIMESTAMP
)""",
    ]


# Each migration is a list of statements; never edit a released one, append.
MIGRATIONS: list[Callable[[], list[str]]] = [_schema_v1, _schema_v2, _schema_v3, _schema_v4, _schema_security]
SCHEMA_VERSION = len(MIGRATIONS)


def current_version(con: duckdb.DuckDBPyConnection) -> int:
    """The schema version of the open database (0: not a store yet)."""
    try:
        rows = con.execute("SELECT max(version) FROM schema_version").fetchall()
    except duckdb.CatalogException:
        return 0
    return rows[0][0] or 0


def ensure_current(con: duckdb.DuckDBPyConnection) -> int:
    """`migrate` only when something is behind; two small reads when nothing is (every write open runs this)."""
    if current_version(con) == SCHEMA_VERSION and _instruments_in_sync(con):
        return SCHEMA_VERSION
    return migrate(con)


def migrate(con: duckdb.DuckDBPyConnection) -> int:
    """Bring the schema up to date, keeping existing data; returns the version."""
    version = current_version(con)
    if version < SCHEMA_VERSION:
        con.execute("BEGIN TRANSACTION")
        try:
            # IF NOT EXISTS: a file can hold the table but no version row yet
            con.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at TIMESTAMP NOT NULL DEFAULT current_timestamp)")
            for number in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[number - 1]():
                    con.execute(statement)
                con.execute("INSERT INTO schema_version (version) VALUES (?)", [number])
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        version = SCHEMA_VERSION
    sync_instruments(con)
    return version


def _registry_rows() -> set[tuple]:
    return {(s.code, s.name, s.rater, s.scored_items, s.item_max, s.total_max) for s in scales.SCALES.values()}


def _instruments_in_sync(con: duckdb.DuckDBPyConnection) -> bool:
    """Does the instruments table already hold every scale of the registry, unchanged?"""
    rows = con.execute("SELECT code, name, rater, scored_items, item_max, total_max FROM instruments").fetchall()
    return _registry_rows() <= set(rows)


def check_fits(scale: scales.Scale) -> None:
    """Refuse a registered scale the store cannot hold (more item columns or a wider item range)."""
    widest = max(scale.item_range(i)[1] for i in scale.all_items)
    if max(scale.all_items) > STORE_ITEM_COLUMNS or scale.item_min < 0 or widest > STORE_ITEM_MAX:
        raise ValueError(f"{scale.code}: the store holds scales of up to {STORE_ITEM_COLUMNS} items scored "
                         f"0-{STORE_ITEM_MAX}; a larger one needs a schema migration (analytics/store.py)")


def sync_instruments(con: duckdb.DuckDBPyConnection) -> None:
    """Mirror the scale registry into the instruments table (FK target)."""
    for s in scales.SCALES.values():
        check_fits(s)
        con.execute(
            """INSERT INTO instruments VALUES (?, ?, ?, ?, ?, ?)
               ON CONFLICT (code) DO UPDATE SET name = excluded.name, rater = excluded.rater,
               scored_items = excluded.scored_items, item_max = excluded.item_max, total_max = excluded.total_max""",
            [s.code, s.name, s.rater, s.scored_items, s.item_max, s.total_max],
        )


def initialise(path: str | os.PathLike | None = None) -> Path:
    """Create (or migrate) the database file and return its path."""
    target = db_path(path)
    with connect(target, write=True):
        pass
    return target
