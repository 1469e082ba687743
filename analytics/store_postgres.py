"""The PostgreSQL backend of the store: a clinic network's one database behind many servers.

`analytics.store` stays the only place connections come from; when `--db` / OUTCOMES_DB is a
`postgresql://` URL it hands the work to this module, and callers keep writing the same SQL
(with `?` placeholders) against the same small connection surface (`execute(...).fetchall()`,
`.df()`, `register`/`unregister`, `arrow`). Why it is built this way (docs/deployment.md):

- psycopg 3 for every connection and write; ADBC (`adbc-driver-postgresql`) for the large
  whole-cohort reads straight into Arrow (about 1.5x faster than psycopg, same peak memory).
  The statistics stay on DuckDB and pandas: nothing here computes.
- Connections are kept in a small pool per database and process (a psycopg connect costs
  ~60 ms, an ADBC one ~0.6 s). Read connections are read-only sessions.
- No file locks: concurrency is PostgreSQL's. What DuckDB's single writer used to serialise
  is serialised explicitly: the schema migration and the audit chain's head take advisory
  locks (`lock`), held until their transaction ends. Lock waits are bounded by
  OUTCOMES_LOCK_WAIT through `lock_timeout`, and a wait that runs out is `StoreBusy`.
- Errors leave here as this module's `DatabaseError` (and `MissingTable`, `Conflict`), so
  callers catch `store.DatabaseError` / `store.MissingTable` on both backends and psycopg is
  imported only when a PostgreSQL URL is used.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import threading
from typing import Iterator
from urllib.parse import urlsplit, urlunsplit

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

URL_PREFIXES = ("postgresql://", "postgres://")
POOL_SIZE = 4  # idle connections kept per database, kind and process


class DatabaseError(RuntimeError):
    """PostgreSQL refused or failed a statement (the message is the server's first line)."""


class MissingTable(DatabaseError):
    """A table the statement names does not exist (42P01)."""


class MissingColumn(DatabaseError):
    """A column the statement names does not exist (42703)."""


class Conflict(DatabaseError):
    """A unique or primary key would be violated (23505): another writer got there first."""


class LockTimeout(DatabaseError):
    """A lock wait ran out (55P03); the store turns it into StoreBusy."""


class Unavailable(DatabaseError):
    """The server cannot be used for this at all, and nothing was changed: `kind` is `unreachable`
    (no answer at the host and port, or the server is starting, stopping or out of connection
    slots), `auth` (the user or password was refused), `missing` (no database of that name),
    `read_only` (a replica in recovery or a read-only database) or `disk` (the server's disk is
    full). analytics/failures.py gives each its exit code; the message names the server, the
    database and the user, never the password."""

    def __init__(self, kind: str, message: str):
        self.kind = kind
        super().__init__(message)


def is_url(value) -> bool:
    return isinstance(value, str) and value.startswith(URL_PREFIXES)


class Target:
    """A PostgreSQL database named by URL: what `store.db_path` returns instead of a file path.

    `str()` is the URL itself (connections need it); `label` is the URL without its password,
    for messages and logs."""

    __slots__ = ("url",)

    def __init__(self, url: str):
        self.url = url

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"PostgreSQL({self.label})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Target) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)

    @property
    def label(self) -> str:
        parts = urlsplit(self.url)
        if parts.password is None:
            return self.url
        netloc = parts.netloc.rsplit("@", 1)
        user = (parts.username or "")
        return urlunsplit(parts._replace(netloc=f"{user}@{netloc[1]}" if len(netloc) == 2 else netloc[0]))

    @property
    def name(self) -> str:
        return urlsplit(self.url).path.lstrip("/") or "postgres"

    def resolve(self) -> "Target":
        return self

    def exists(self) -> bool:
        """Can we connect, and does the database hold the store's schema?"""
        try:
            with _pooled(self, read=True) as conn:
                return conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()[0]
        except Unavailable as exc:
            if exc.kind == "missing":  # no database of that name: as a file that is not there
                return False
            raise  # a server that cannot be reached is not an empty one


# --- SQL: one text for both backends ------------------------------------------------------

_LITERAL_OR_MARK = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"])*\"|--[^\n]*|\?|%")
_CREATE_OR_REPLACE_TEMP_TABLE = re.compile(r"^\s*CREATE\s+OR\s+REPLACE\s+TEMP\s+TABLE\s+(\w+)\s+AS\b", re.I)
_TEMPORARY = re.compile(r"^\s*CREATE\s+(OR\s+REPLACE\s+)?TEMP(ORARY)?\b", re.I)
_DDL = re.compile(r"^\s*CREATE\s+(TEMP\s+)?TABLE\b", re.I)


def translate(sql: str, with_params: bool = True) -> str:
    """The store's SQL (DuckDB's dialect, `?` placeholders) as psycopg runs it: `?` outside string
    literals and comments becomes `%s`, a literal `%` is doubled when parameters are passed (psycopg
    reads the text for placeholders only then), and in CREATE TABLE the two column types
    PostgreSQL spells differently (DOUBLE, JSON) are renamed."""
    percent = "%%" if with_params else "%"

    def swap(match: re.Match) -> str:
        text = match.group(0)
        if text == "?":
            return "%s"
        if text == "%":
            return percent
        return text.replace("%", percent) if text[0] in "'\"" else ""
    out = _LITERAL_OR_MARK.sub(swap, sql)
    if _DDL.match(out):
        out = re.sub(r"\bDOUBLE\b(?!\s+PRECISION)", "DOUBLE PRECISION", out)
        out = re.sub(r"\bJSON\b", "JSONB", out)
    return out


# --- connections --------------------------------------------------------------------------

def _psycopg():
    import psycopg  # imported on first use: a clinic on a DuckDB file never needs it
    return psycopg


# What libpq and the server say when the database cannot be used at all (a failed connection has no
# SQLSTATE in psycopg, so its text decides): (kind, pattern, SQLSTATE classes or codes).
_UNAVAILABLE = (
    ("auth", re.compile(r"password authentication failed|no password supplied|authentication failed|"
                        r"role \S+ does not exist|no pg_hba\.conf entry", re.I), ("28",)),
    ("missing", re.compile(r"database \S+ does not exist", re.I), ("3D000",)),
    ("read_only", re.compile(r"read-only transaction|during recovery|hot standby", re.I), ("25006",)),
    ("disk", re.compile(r"no space left on device|could not extend file|disk quota exceeded", re.I), ("53100",)),
    ("unreachable", re.compile(r"connection refused|could not connect|failed to resolve host|could not translate host|"
                               r"name or service not known|no route to host|timeout expired|timed out|"
                               r"server closed the connection|connection to server .* failed|terminating connection|"
                               r"the database system is (starting up|shutting down|in recovery mode)|too many clients|"
                               r"connection slots are reserved|network is unreachable|ssl connection has been closed", re.I),
     ("08", "57P", "53300")),
)


def _reason(text: str) -> str:
    """libpq's reason alone: 'connection to server at "h", port p failed: FATAL:  x' -> 'x'."""
    text = (text.strip().splitlines() or [""])[0]
    text = re.sub(r"^(IO: )?(\[libpq\] )?(Failed to connect: |Failed to prepare query: |connection failed: )?", "", text)
    text = re.sub(r"^connection to server (at|on) .*? failed: ", "", text)
    text = re.sub(r"\bFATAL:\s+", "", text)
    return re.sub(r"\s+", " ", text).strip().rstrip(".")[:160] or "no reason given"


def unavailable(exc: BaseException, target: "Target") -> Unavailable | None:
    """The Unavailable that `exc` (psycopg's or ADBC's) means for `target`, or None for any other error."""
    text = str(exc)
    state = getattr(exc, "sqlstate", None) or ""
    for kind, pattern, states in _UNAVAILABLE:
        if (state and state.startswith(states)) or pattern.search(text):
            break
    else:
        return None
    parts = urlsplit(target.url)
    server = f"the PostgreSQL server at {parts.hostname or 'localhost'}:{parts.port or 5432}"
    reason = _reason(text)
    message = {
        "unreachable": f"cannot use {server} ({reason}): check that it runs and accepts connections, and the host "
                       "and port in --db / OUTCOMES_DB",
        "auth": f"{server} refused the sign-in of user \"{parts.username or ''}\" ({reason}): check the user and "
                "password (in the URL, $PGPASSWORD or ~/.pgpass)",
        "missing": f"{server} has no database \"{target.name}\": create it (createdb {target.name}) or correct the name "
                   "in --db / OUTCOMES_DB",
        "read_only": f"{server} accepts only reads ({reason}): it is a replica in recovery or the database is read-only; "
                     "point --db / OUTCOMES_DB at the primary",
        "disk": f"{server} has no disk space left ({reason}): free space on the database server",
    }[kind]
    return Unavailable(kind, message)


def _wrap_error(exc: Exception, target: "Target | None" = None) -> DatabaseError:
    psycopg = _psycopg()
    if target is not None:
        refused = unavailable(exc, target)
        if refused is not None:
            return refused
    message = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if isinstance(exc, psycopg.errors.UndefinedTable):
        return MissingTable(message)
    if isinstance(exc, psycopg.errors.UndefinedColumn):
        return MissingColumn(message)
    if isinstance(exc, psycopg.errors.UniqueViolation):
        return Conflict(message)
    if isinstance(exc, (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled)):
        return LockTimeout(message)
    return DatabaseError(message)


class _Pool:
    """Idle connections of this process, per (database, read or write)."""

    def __init__(self) -> None:
        self.guard = threading.Lock()
        self.pid = os.getpid()
        self.idle: dict[tuple[str, bool], list] = {}

    def take(self, url: str, read: bool):
        with self.guard:
            if self.pid != os.getpid():  # a forked child must not share its parent's sockets
                self.pid, self.idle = os.getpid(), {}
            idle = self.idle.setdefault((url, read), [])
            while idle:
                conn = idle.pop()
                if not conn.closed and not conn.broken:
                    return conn
        psycopg = _psycopg()
        try:
            conn = psycopg.connect(url, autocommit=True, application_name="outcomes")
            # JSON as its text, as DuckDB gives it (callers parse what they need)
            from psycopg.types.string import TextLoader
            for name in ("json", "jsonb"):
                conn.adapters.register_loader(name, TextLoader)
            conn.execute("SET TIME ZONE 'UTC'")  # current_timestamp defaults store UTC, as on DuckDB
            if read:
                conn.execute("SET default_transaction_read_only = on")
        except psycopg.Error as exc:
            raise _wrap_error(exc, Target(url)) from None
        return conn

    def give(self, url: str, read: bool, conn) -> None:
        psycopg = _psycopg()
        if conn.closed or conn.broken or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            with contextlib.suppress(Exception):
                conn.close()
            return
        with self.guard:
            idle = self.idle.setdefault((url, read), [])
            if len(idle) < POOL_SIZE and self.pid == os.getpid():
                idle.append(conn)
                return
        conn.close()

    def close_all(self, url: str | None = None) -> None:
        with self.guard:
            for key in [k for k in self.idle if url is None or k[0] == url]:
                for conn in self.idle.pop(key):
                    with contextlib.suppress(Exception):
                        conn.close()


_pool = _Pool()


@contextlib.contextmanager
def _pooled(target: Target, read: bool):
    conn = _pool.take(target.url, read)
    try:
        yield conn
    finally:
        _pool.give(target.url, read, conn)


def close_all(target: Target | None = None) -> None:
    """Close this process's idle connections (to drop or copy a database, or before exit)."""
    _pool.close_all(None if target is None else target.url)
    with _adbc_guard:
        for key in [k for k in _adbc if target is None or k[1] == target.url]:
            with contextlib.suppress(Exception):
                _adbc.pop(key).close()


# PostgreSQL type oids -> the Arrow type DuckDB would give the same column (others are inferred).
_ARROW_TYPES = {16: pa.bool_(), 20: pa.int64(), 21: pa.int16(), 23: pa.int32(), 700: pa.float32(),
                701: pa.float64(), 1700: pa.float64(), 25: pa.string(), 1043: pa.string(), 114: pa.string(),
                3802: pa.string(), 1082: pa.date32(), 1114: pa.timestamp("us")}


class Result:
    """What `Connection.execute` returns: the rows fetched at once (DuckDB results stream; these do not)."""

    def __init__(self, names: list[str], types: list[int], rows: list[tuple]):
        self.names, self.types, self.rows = names, types, rows

    def fetchall(self) -> list[tuple]:
        return self.rows

    def fetchone(self):
        return self.rows[0] if self.rows else None

    def arrow(self) -> pa.Table:
        columns = {}
        for i, (name, oid) in enumerate(zip(self.names, self.types)):
            values = [row[i] for row in self.rows]
            kind = _ARROW_TYPES.get(oid)
            if kind == pa.float64() and oid == 1700:  # numeric (a sum of integers): DuckDB gives a number
                values = [None if v is None else float(v) for v in values]
            try:
                columns[name] = pa.array(values, kind)
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                columns[name] = pa.array([None if v is None else str(v) for v in values], pa.string())
        return pa.table(columns) if columns else pa.table({})

    def df(self) -> pd.DataFrame:
        from .arrowframes import pandas_like_df
        table = self.arrow()
        return pandas_like_df(table.column_names, list(table.columns))


class Connection:
    """One pooled psycopg connection in the shape the store's callers use (DuckDB's, where it matters)."""

    dialect = "postgres"

    def __init__(self, target: Target, conn, write: bool):
        self.target, self.conn, self.write = target, conn, write
        self.made_temporary = False

    def execute(self, sql: str, params=None) -> Result:
        psycopg = _psycopg()
        replaced = _CREATE_OR_REPLACE_TEMP_TABLE.match(sql)
        if _TEMPORARY.match(sql):
            self.made_temporary = True
        try:
            if replaced:
                name = replaced.group(1)
                self.conn.execute(f"DROP TABLE IF EXISTS {name}")
                sql = (f"CREATE TEMP TABLE {name}{' ON COMMIT DROP' if self._in_transaction() else ''} AS"
                       + sql[replaced.end():])
            params = list(params) if params else None
            cursor = self.conn.execute(translate(sql, params is not None), params)
            if cursor.description is None:
                return Result([], [], [])
            return Result([d.name for d in cursor.description], [d.type_code for d in cursor.description],
                          cursor.fetchall())
        except psycopg.Error as exc:
            error = _wrap_error(exc, self.target)
            if isinstance(error, Unavailable) and error.kind == "unreachable":
                close_all(self.target)  # a restart or failover killed the idle ones too: the next use reconnects
            raise error from None

    def _in_transaction(self) -> bool:
        return self.conn.info.transaction_status != _psycopg().pq.TransactionStatus.IDLE

    # -- rows from Python, as DuckDB's register/unregister ------------------------------
    def register(self, name: str, data) -> None:
        """Make `data` (an Arrow table, a DataFrame, or the path of a staged Parquet file) a temporary
        table called `name` for the statements that follow (dropped at commit inside a transaction)."""
        if isinstance(data, pd.DataFrame):
            data = pa.Table.from_pandas(data, preserve_index=False)
        parquet = None if isinstance(data, pa.Table) else pq.ParquetFile(str(data))
        schema = data.schema if parquet is None else parquet.schema_arrow
        columns = ", ".join(f'"{field.name}" {_pg_type(field.type)}' for field in schema)
        self.execute(f"DROP TABLE IF EXISTS {name}")
        self.execute(f"CREATE TEMP TABLE {name} ({columns})"
                     + (" ON COMMIT DROP" if self._in_transaction() else ""))
        batches = data.to_batches(max_chunksize=20_000) if parquet is None else parquet.iter_batches(20_000)
        psycopg = _psycopg()
        try:
            with self.conn.cursor().copy(f"COPY {name} FROM STDIN (FORMAT csv)") as copy:
                for batch in batches:
                    buffer = io.BytesIO()
                    pacsv.write_csv(pa.Table.from_batches([_csv_ready(batch)]), buffer,
                                    pacsv.WriteOptions(include_header=False))
                    copy.write(buffer.getvalue())
        except psycopg.Error as exc:
            raise _wrap_error(exc) from None

    def unregister(self, name: str) -> None:
        if self.conn.info.transaction_status == _psycopg().pq.TransactionStatus.INERROR:
            # A statement failed: the rollback on its way drops the table, and a DROP now would fail with
            # "current transaction is aborted" in place of the error being raised (a repeated key, say).
            return
        self.execute(f"DROP TABLE IF EXISTS {name}")

    # -- the bulk read -------------------------------------------------------------------
    def arrow(self, sql: str, params=()) -> pa.Table:
        """A large read straight into Arrow through ADBC (its own kept connection; the parameters
        are bound into the text by psycopg's quoting, since ADBC cannot bind lists)."""
        psycopg = _psycopg()
        try:
            params = list(params) if params else None
            text = psycopg.ClientCursor(self.conn).mogrify(translate(sql, params is not None), params)
        except psycopg.Error as exc:
            raise _wrap_error(exc) from None
        return _adbc_read(self.target, text)

    def close(self) -> None:
        pass  # the pool keeps it


def _pg_type(arrow_type: pa.DataType) -> str:
    if pa.types.is_boolean(arrow_type):
        return "BOOLEAN"
    if pa.types.is_integer(arrow_type):
        return "BIGINT"
    if pa.types.is_floating(arrow_type):
        return "DOUBLE PRECISION"
    if pa.types.is_timestamp(arrow_type):
        return "TIMESTAMP"
    if pa.types.is_date(arrow_type):
        return "DATE"
    return "TEXT"


def _csv_ready(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Columns the CSV writer cannot write (dictionaries, nulls) as text."""
    arrays = []
    for column in batch.columns:
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        elif pa.types.is_null(column.type):
            column = pa.nulls(len(column), pa.string())
        arrays.append(column)
    return pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)


_holds_store: set[str] = set()  # databases seen to hold the schema by this process

_adbc: dict[tuple[int, str], object] = {}
_adbc_guard = threading.Lock()


def _adbc_read(target: Target, sql: str) -> pa.Table:
    """One ADBC connection per database and process (connecting costs ~0.6 s); ADBC connections
    are not thread-safe, so reads through it take turns (a psycopg read runs meanwhile)."""
    import adbc_driver_postgresql.dbapi as adbc

    key = (os.getpid(), target.url)
    with _adbc_guard:
        conn = _adbc.get(key)
        try:
            if conn is None:
                conn = _adbc[key] = adbc.connect(target.url, autocommit=True)
            cursor = conn.cursor()
            try:
                cursor.execute(sql)
                table = cursor.fetch_arrow_table()
            finally:
                cursor.close()
        except Exception as exc:  # noqa: BLE001 - ADBC raises its own DB-API errors; the connection may be broken
            _adbc.pop(key, None)
            with contextlib.suppress(Exception):
                conn.close()
            refused = unavailable(exc, target)
            if refused is not None and refused.kind == "unreachable":
                _pool.close_all(target.url)  # the pooled ones went with it (a restart, a failover)
            raise refused or DatabaseError((str(exc).strip().splitlines() or [type(exc).__name__])[0]) from None
    return table.replace_schema_metadata(None).cast(pa.schema([f.remove_metadata() for f in table.schema]))


def _lock_key(name: str) -> str:
    return f"hashtextextended('outcomes:{name}', 0)"


def lock(con: Connection, name: str) -> None:
    """Take the named advisory lock until the transaction ends (waits at most lock_timeout)."""
    con.execute(f"SELECT pg_advisory_xact_lock({_lock_key(name)})")


@contextlib.contextmanager
def connect(target: Target, *, write: bool, wait: float, is_current, ensure_current) -> Iterator[Connection]:
    """A pooled connection: read-only for reads; writes get `lock_timeout` = `wait` and, when
    `is_current` says the schema is behind, `ensure_current` under an advisory lock (two servers
    starting at once: the second waits, then finds it current)."""
    with _pooled(target, read=not write) as conn:
        con = Connection(target, conn, write)
        if not write and target.url not in _holds_store:
            # as a read of a missing file: once a database holds the schema it keeps it, so asked once
            if not con.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()[0]:
                raise MissingTable("the database holds no outcomes store yet (no schema_version table)")
            _holds_store.add(target.url)
        if write:
            con.execute(f"SET lock_timeout = '{max(1, int(wait * 1000))}ms'")
            if not is_current(con):
                con.execute(f"SELECT pg_advisory_lock({_lock_key('migrate')})")
                try:
                    ensure_current(con)
                finally:
                    con.execute(f"SELECT pg_advisory_unlock({_lock_key('migrate')})")
        try:
            yield con
        finally:
            if con._in_transaction():  # a caller that left a transaction open: never hand it to the next
                with contextlib.suppress(Exception):
                    conn.execute("ROLLBACK")
            if con.made_temporary:  # temporary tables end with their use, as on DuckDB
                with contextlib.suppress(Exception):
                    conn.execute("DISCARD TEMP")


def change_stamp(target: Target) -> tuple:
    """Moves whenever a write transaction begins or ends anywhere in the cluster (the snapshot's
    xmin, xmax and in-progress list), and never for reads: one cheap round trip."""
    try:
        with _pooled(target, read=True) as conn:
            return ("pg", str(conn.execute("SELECT pg_current_snapshot()").fetchone()[0]))
    except Exception:  # noqa: BLE001 - unreachable: a stamp that never matches, the read then says why
        return ("pg", object())
