"""The DuckDB store: schema, migrations and connections.

The public surface is small and says nothing about DuckDB, so another backend can sit behind
it (docs/architecture.md, "The store"): `connect` (a read, or a write with `write=True`),
`transaction` (one write transaction, all or nothing), `change_stamp` (cheap: has anything
changed?), and the journal (`write_or_journal`, `journal`, `flush_journal`) for writes that must
not wait for another writer.

DuckDB allows one process to hold a database file for writing and then no other process may
open it, even read-only; several processes may read it together while none writes. The
dashboard, the command line and other dashboard processes must coexist, so nothing here keeps a
file open between uses: every use attaches the file, does its work and detaches it, retrying
while another process holds the lock.

Within a process the uses run in parallel. One in-memory DuckDB instance lives for the process
(starting one costs ~15 ms of CPU, attaching a file ~4 ms) and each use gets its own cursor on
it, so temporary tables and registered frames still end with the use. The process-wide guard
is held only while a file is attached or detached, never across a use:

- reads share the file's attachment and run at once (a 5 ms read no longer waits behind a 1 s
  one);
- writes of one file run one at a time in a process (a reentrant lock per file; a write nested
  in another in the same thread shares it). A write waits for the process's readers of a
  read-only attachment to finish (readers arriving meanwhile wait behind it), then attaches the
  file for writing; readers arriving while it is attached for writing share that attachment and
  read the last committed data (DuckDB's MVCC), so an import running in the dashboard's own
  process never blocks its pages;
- a read that finds the file locked by another process's write reads the published snapshot
  instead when it holds everything committed (analytics/sidecars.py), else retries.

A long write (an import) asks for `snapshot=True`: before writing it checkpoints and copies the
file to `DB.snapshot` (by rename), so while it runs other processes read the last committed
version instead of waiting for it. Every write moves the state's generation on, so a snapshot
is read only while nothing was committed after it.

Writes a page makes in passing (the audit entry of a record view, sign-in bookkeeping) go through
`write_or_journal`: written at once when the lock is free within a short wait, else appended to
the database's journal (fsynced) and applied in order at the start and end of the next write, by
whichever process makes it. DuckDB's allocator returns memory only when its instance closes, so
after a use that grew the process a lot (a large read or an import) the instance is closed too.

Pages never come here directly: they go through `analytics.access`, which applies the
signed-in user's scope.
"""
from __future__ import annotations

import contextlib
import os
import random
import shutil
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, Union

import duckdb

from . import archive, scales, sidecars, store_postgres
from .vocabulary import PHASES, ROUTES, SEXES

DEFAULT_DB = Path(__file__).resolve().parent.parent / "data" / "outcomes.duckdb"
LOCK_WAIT_SECONDS = float(os.environ.get("OUTCOMES_LOCK_WAIT", "120"))
# How long a write that may go to the journal waits for the lock before it does.
JOURNAL_AFTER_SECONDS = float(os.environ.get("OUTCOMES_JOURNAL_AFTER", "0.5"))

# Test hook: when set, detaching a database opened for writing fails after the detach, as it does
# when the checkpoint finds the disk full (tests/test_ingest_outcome.py; a real full disk is in docs/import.md).
FAIL_CHECKPOINT_ENV = "OUTCOMES_TEST_FAIL_CHECKPOINT"

# DuckDB's allocator keeps what a large query used until its instance closes (a sorted read of
# 4.7 M assessments leaves ~0.5 GB resident): after a use that grew the process by more than
# this, the shared instance is closed and the next use starts a new one (~15 ms).
RECYCLE_AFTER_GROWTH_BYTES = 128 * 2**20


class Refused(RuntimeError):
    """The store will not do what was asked, for a reason its message gives in full, and nothing was
    changed: commands exit 2 with the message, the dashboard shows it (analytics/failures.py)."""


class StoreBusy(Refused):
    """Another writer held the database for longer than we were willing to wait."""


class SchemaTooNew(Refused):
    """The database was written by a newer version of the software: this one neither reads nor writes it."""

    def __init__(self, path: Path, found: int):
        self.path = path if isinstance(path, store_postgres.Target) else Path(path)
        self.found, self.known = found, SCHEMA_VERSION
        super().__init__(f"the database {getattr(path, 'label', path)} has schema version {found}, newer than this software's {SCHEMA_VERSION}: "
                         "upgrade the software to open it (nothing was changed)")


class ReadOnlyDatabase(Refused):
    """A write was asked of a database file (or folder) that may only be read."""


class MigrationRefused(Refused):
    """A schema migration was due, but the backup taken before every migration could not be written."""


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


# What a caller catches on either backend: a statement the database refused, a table not there.
DatabaseError = (duckdb.Error, store_postgres.DatabaseError)
MissingTable = (duckdb.CatalogException, store_postgres.MissingTable)
MissingColumn = (duckdb.BinderException, store_postgres.MissingColumn)
Conflict = (duckdb.ConstraintException, store_postgres.Conflict)
PostgresTarget = store_postgres.Target
PostgresUnavailable = store_postgres.Unavailable  # the server cannot be used at all; `.kind` says why (failures.py)
Connection = Union[duckdb.DuckDBPyConnection, store_postgres.Connection]  # what connect and transaction yield


def db_path(explicit: str | os.PathLike | None = None) -> Path | PostgresTarget:
    """--db beats OUTCOMES_DB beats data/outcomes.duckdb. A `postgresql://` URL names a PostgreSQL
    database (a network's shared store) and gives a `PostgresTarget` instead of a path."""
    value = explicit if explicit else os.environ.get("OUTCOMES_DB")
    if isinstance(value, PostgresTarget):
        return value
    if store_postgres.is_url(str(value) if value else None):
        return PostgresTarget(str(value))
    return Path(value) if value else DEFAULT_DB


def is_postgres(path: str | os.PathLike | None = None) -> bool:
    """Is the database (as `db_path` resolves it) a PostgreSQL one?"""
    return isinstance(db_path(path), PostgresTarget)


def label(path: str | os.PathLike | None = None) -> str:
    """The database's name for messages and logs (a URL without its password)."""
    target = db_path(path)
    return target.label if isinstance(target, PostgresTarget) else str(target)


def dialect(con) -> str:
    """"postgres" or "duckdb": for the few statements written differently (see store_postgres)."""
    return getattr(con, "dialect", "duckdb")


def lock(con, name: str) -> None:
    """Hold the named lock until `con`'s transaction ends. On DuckDB the single writer already
    serialises every write, so there is nothing to take; on PostgreSQL an advisory lock."""
    if dialect(con) == "postgres":
        store_postgres.lock(con, name)


def read_arrow(con, sql: str, params=()):
    """A large read as an Arrow table (DuckDB's own reader; ADBC on PostgreSQL)."""
    if dialect(con) == "postgres":
        return con.arrow(sql, params)
    return con.sql(sql, params=list(params)).to_arrow_reader(1 << 17).read_all()


def stamp_text(con, column: str) -> str:
    """SQL for a timestamp as 'YYYY-MM-DDTHH:MM:SS' (record keys in record_history)."""
    if dialect(con) == "postgres":
        return f"""to_char({column}, 'YYYY-MM-DD"T"HH24:MI:SS')"""
    return f"strftime({column}, '%Y-%m-%dT%H:%M:%S')"


def _has_write_bits(path: Path) -> bool:
    return bool(stat.S_IMODE(path.stat().st_mode) & 0o222)


def _refuse_unwritable(target: Path) -> None:
    """A file (or, for a new one, its folder) that may only be read is refused before DuckDB opens it.

    Judged by the permission bits as well as by access(2): root may write a file marked 0444, but
    such a file (a snapshot, a copy kept for reference) is meant to be read, and a write would change
    it silently. The folder counts too: DuckDB writes its write-ahead log beside the file."""
    folder = target.parent if target.parent.exists() else None
    try:
        blocked = [p for p in ([target] if target.exists() else []) + ([folder] if folder else [])
                   if not os.access(p, os.W_OK) or not _has_write_bits(p)]
    except OSError:
        return  # let DuckDB say what is wrong
    if blocked:
        what = "file" if blocked[0] == target else "folder"
        raise ReadOnlyDatabase(f"the database {target} cannot be written (its {what} {blocked[0]} is read-only): "
                               "nothing was changed")


def refuse_newer_schema(con: duckdb.DuckDBPyConnection, target: Path) -> int:
    """The open database's schema version; SchemaTooNew when it is newer than this software knows.

    Every connection asks, reads included: an older version neither writes into a newer schema nor
    shows figures from tables whose meaning it does not know."""
    version = current_version(con)
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(target, version)
    return version


# --- companion files ---------------------------------------------------------------

@dataclass(frozen=True)
class Companion:
    """A file that belongs to a database but lives outside it: backed up and restored with it.

    `files(db)` lists the ones that exist for the database at `db`; `place(db, name)` is where a
    file of that name goes for a database restored at `db`. When that place already holds a
    different file, restore refuses, unless `aside` (the file there belongs to the path, not to a
    database: it is moved aside, and is moved aside even when the backup holds none, e.g. the audit
    anchor of a database that was at the path before) or `alternative(dest, copy)` names where the
    backup's copy goes instead (a key kept under its id). A `secret` one (a key) goes into a backup
    only when asked (`backup --include-secrets`): a backup holding the key of the audit trail's
    signatures would let whoever holds the backup rewrite that trail."""
    name: str
    files: Callable[[Path], list[Path]]
    place: Callable[[Path, str], Path]
    secret: bool = False
    aside: bool = False
    alternative: Callable[[Path, Path], Path] | None = None
    pending: bool = False  # holds changes not yet in the database: placed once the restored file is verified


def beside(name: str, suffix: str, *, secret: bool = False) -> Companion:
    """A companion kept next to the database as `<database file name><suffix>` (e.g. `.journal`)."""
    def files(db: Path) -> list[Path]:
        path = Path(f"{db}{suffix}")
        return [path] if path.is_file() else []

    return Companion(name, files, lambda db, _name: Path(f"{db}{suffix}"), secret)


def _anchor_files(db: Path) -> list[Path]:
    from . import keys

    path = keys.anchor_path(db)
    return [path] if path.is_file() else []


def _anchor_place(db: Path, _name: str) -> Path:
    from . import keys

    return keys.anchor_path(db)


def _key_files(_db: Path) -> list[Path]:
    from . import keys

    folder = keys.key_dir()
    return sorted(p for p in folder.glob("*.key") if p.is_file()) if folder.is_dir() else []


def _key_place(_db: Path, name: str) -> Path:
    from . import keys

    return keys.key_dir() / name


def _key_by_id(dest: Path, copy: Path) -> Path:
    """A key from a backup whose name is taken by another key: kept as `<name>-<id>.key`, where
    keys.find looks for a retired key by the id its entries carry."""
    from . import keys

    name = dest.stem.split("-", 1)[0]
    return dest.with_name(f"{name}-{keys.key_id_of(bytes.fromhex(copy.read_text().strip()))}.key")


def _journal_files(db: Path) -> list[Path]:
    """The journal of writes made in passing and not yet applied (analytics/sidecars.py), with any
    flush left behind by a process that died: applied by the restored database's next write."""
    journal = sidecars.journal_path(db)
    return ([journal] if journal.is_file() else []) + sidecars._flushing_files(db)


def _journal_place(db: Path, name: str) -> Path:
    return Path(f"{db}{name[name.index('.journal'):]}") if ".journal" in name else sidecars.journal_path(db)


# Every kind of companion file, listed here so that a backup finds them whatever the process
# imported. Add a row with the feature that writes such a file (an audit anchor, a write journal).
# Not companions: `<db>.wal` (DuckDB's own, always copied with the file), read-only snapshots and
# state files that are rebuilt from the database, and the backup log (`archive.log_path`).
COMPANIONS: list[Companion] = [
    # the anchor of the audit trail (analytics/keys.py): what `audit --verify` checks the trail's end against
    Companion("audit-anchor", _anchor_files, _anchor_place, aside=True),
    # writes journaled while another process held the write lock, not yet in the database
    Companion("journal", _journal_files, _journal_place, pending=True),
    # the audit and pseudonym keys: kept out of backups unless asked (docs/security.md, "Keys and anchors")
    Companion("keys", _key_files, _key_place, secret=True, alternative=_key_by_id),
]


def companion_files(path: str | os.PathLike | None = None, *, secrets: bool = False) -> list[tuple[Companion, Path]]:
    """The companion files that exist for the database at `path`, secrets only when asked for."""
    target = db_path(path)
    return [(c, f) for c in COMPANIONS if secrets or not c.secret for f in c.files(target)]


def _private_spill_dir() -> str:
    # Inside the process's work folder: removed at exit, or by the next process after a kill -9.
    from .workdir import work_dir

    return str(work_dir() / "duckdb-spill")


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc).lower()
    return "lock" in text or "conflicting" in text or "being used by another process" in text


class _File:
    """One file's attachment to the shared instance (guarded by `_Attachments.guard`)."""
    __slots__ = ("alias", "mode", "users", "write_users", "writers_waiting", "waiting_since")

    def __init__(self):
        self.alias: str | None = None
        self.mode: str | None = None  # None, "r" (read-only), "w" (for writing), "closing"
        self.users = 0
        self.write_users = 0  # of `users`, the write uses
        self.writers_waiting = 0
        self.waiting_since = 0.0  # monotonic time the first of the writers now waiting began to wait


class _Attachments:
    """The process's one DuckDB instance and the files attached to it."""

    def __init__(self) -> None:
        self.guard = threading.Condition(threading.Lock())
        self.pid = -1
        self.instance: duckdb.DuckDBPyConnection | None = None
        self.generation = 0  # of the instance: a use begun on a discarded one never touches its successor
        self.files: dict[str, _File] = {}
        self.writer_locks: dict[str, threading.RLock] = {}
        self.write_depth: dict[str, int] = {}  # only the thread holding the key's writer lock touches its entry
        self.reading = threading.local()  # keys this thread holds read uses of, with their counts
        self.serial = 0
        self.rss_before = 0  # resident bytes when the first of the current uses began

    def base(self) -> duckdb.DuckDBPyConnection:
        """The instance (guard held)."""
        if self.instance is None or self.pid != os.getpid():
            if self.pid != os.getpid():  # after a fork the parent's instance, files and locks are not ours
                self.files, self.writer_locks, self.write_depth = {}, {}, {}
                self.reading = threading.local()
            # An in-memory instance would spill to ".tmp" in the working directory: keep spilled
            # patient rows in a private (0700) folder that goes with the process instead.
            self.instance = duckdb.connect(":memory:", config={"temp_directory": _private_spill_dir()})
            self.instance.execute("SET enable_progress_bar = false")
            self.pid, self.serial = os.getpid(), 0
            self.generation += 1
        return self.instance

    def writer_lock(self, key: str) -> threading.RLock:
        with self.guard:
            self.base()
            return self.writer_locks.setdefault(key, threading.RLock())

    def held_for_reading(self) -> dict:
        counts = getattr(self.reading, "counts", None)
        if counts is None:
            counts = self.reading.counts = {}
        return counts

    def want_write(self, key: str) -> None:
        """A write of `key` waits for the file, from now until `done_waiting`: this process's new reads
        hold back for up to INTENT_YIELD_SECONDS, so its attachment closes and the write can get in."""
        with self.guard:
            self.base()
            entry = self.files.setdefault(key, _File())
            if not entry.writers_waiting:
                entry.waiting_since = time.monotonic()
            entry.writers_waiting += 1

    def renew_waiting(self, key: str) -> None:
        with self.guard:
            entry = self.files.get(key)
            if entry is not None and entry.writers_waiting:
                entry.waiting_since = time.monotonic()

    def done_waiting(self, key: str) -> None:
        with self.guard:
            entry = self.files.get(key)
            if entry is not None and entry.writers_waiting > 0:
                entry.writers_waiting -= 1
                if not entry.writers_waiting and not entry.users and entry.mode is None:
                    del self.files[key]
            self.guard.notify_all()

    def acquire(self, key: str, target: Path, write: bool, deadline: float):
        """Share or make `target`'s attachment; (cursor on it, instance generation). Raises DuckDB's lock
        errors (another process holds the file) and StoreBusy when this process's own readers or a
        closing attachment did not make way before `deadline`."""
        with self.guard:
            self.base()
            entry = self.files.setdefault(key, _File())
            if write:
                if self.held_for_reading().get(key):
                    raise duckdb.ConnectionException(
                        f"cannot open {target} for writing while this process reads it (open the write connection first)")
                if not entry.writers_waiting:
                    entry.waiting_since = time.monotonic()
                entry.writers_waiting += 1
                try:
                    while entry.mode in ("r", "closing"):
                        if time.monotonic() - entry.waiting_since > 3 * sidecars.INTENT_YIELD_SECONDS:
                            entry.waiting_since = time.monotonic()  # the readers' next pause (see _attach)
                        self._wait(deadline, target)
                finally:
                    entry.writers_waiting -= 1
            else:
                # Wait behind a writer of this process (for at most INTENT_YIELD_SECONDS from when it began to
                # wait, and never in a thread that already reads the file: the write waits for that read), and
                # do not keep a finished write's attachment alive by joining it (other processes could never
                # read): let it close, attach read-only.
                nested = bool(self.held_for_reading().get(key))
                while True:
                    yield_until = entry.waiting_since + sidecars.INTENT_YIELD_SECONDS
                    yielding = (entry.writers_waiting and entry.mode in ("r", None) and not nested
                                and time.monotonic() < yield_until)
                    if not (entry.mode == "closing" or yielding or (entry.mode == "w" and not entry.write_users)):
                        break
                    self._wait(deadline, target, until=yield_until if yielding else None)
                    entry = self.files.setdefault(key, _File())  # a closed attachment's entry is replaced
            base = self.base()  # after any wait: the instance may have been recycled meanwhile
            if entry.mode not in ("r", "w"):
                if not any(f.users for f in self.files.values()):
                    self.rss_before = _resident_bytes()
                self.serial += 1
                alias = f"store_{self.serial}"
                quoted = str(target).replace("'", "''")
                base.execute(f"ATTACH '{quoted}' AS {alias}" + ("" if write else " (READ_ONLY)"))
                entry.alias, entry.mode = alias, ("w" if write else "r")
            entry.users += 1
            entry.write_users += int(write)
            try:
                con = base.cursor()
            except BaseException:
                self._drop_user(key, entry, write)
                raise
            return con, entry.alias, self.generation

    def _wait(self, deadline: float, target: Path, until: float | None = None) -> None:
        now = time.monotonic()
        remaining = deadline - now
        if remaining <= 0:
            raise StoreBusy(f"database {target} is busy (this process is writing to it); try again shortly")
        self.guard.wait(max(0.0, min(remaining, 1.0, until - now if until is not None else 1.0)))

    def _drop_user(self, key: str, entry: _File, write: bool) -> str | None:
        """One use fewer (guard held); the alias to detach when it was the last."""
        entry.users -= 1
        entry.write_users -= int(write)
        if entry.users > 0:
            if write and not entry.write_users:
                self.guard.notify_all()  # readers waiting for the write to end may go on
            return None
        entry.mode = "closing"
        return entry.alias

    def release(self, key: str, write: bool, generation: int) -> None:
        with self.guard:
            if generation != self.generation:
                return  # the instance was discarded meanwhile: its attachments went with it
            entry = self.files.get(key)
            if entry is None or entry.users <= 0:
                return
            written = entry.mode == "w"
            alias = self._drop_user(key, entry, write)
            if alias is None:
                return
            detacher = self.instance.cursor()
        try:
            # Outside the guard: detaching a file written to checkpoints it, which can take a while.
            detacher.execute(f"DETACH DATABASE IF EXISTS {alias}")
        finally:
            with contextlib.suppress(Exception):
                detacher.close()
            with self.guard:
                if generation == self.generation:
                    entry.alias, entry.mode = None, None
                    if not entry.writers_waiting and self.files.get(key) is entry:
                        del self.files[key]
                    if (not any(f.users or f.mode == "closing" for f in self.files.values())
                            and _resident_bytes() - self.rss_before > RECYCLE_AFTER_GROWTH_BYTES):
                        self._close()
                self.guard.notify_all()
        if written and os.environ.get(FAIL_CHECKPOINT_ENV):
            # What DuckDB raises when the checkpoint of a DETACH finds the disk full (the file is detached).
            raise duckdb.IOException(f"Detached database '{alias}', but CHECKPOINT during DETACH failed. "
                                     f"(injected by {FAIL_CHECKPOINT_ENV}: No space left on device)")

    def discard(self) -> None:
        """Drop the instance after a fatal DuckDB error (it refuses all further work); the next use starts afresh."""
        with self.guard:
            self._close()
            self.guard.notify_all()

    def _close(self) -> None:
        instance, self.instance = self.instance, None
        self.files = {key: entry for key, entry in self.files.items() if entry.writers_waiting}
        for entry in self.files.values():
            entry.alias, entry.mode, entry.users, entry.write_users = None, None, 0, 0
        self.generation += 1
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


def _yield_to_other_writers(target: Path, deadline: float) -> None:
    """Before a read attaches `target`: while another process has just announced a write of it (and the
    snapshot is not current), start nothing, so this process's attachment can close and the writer get in.
    A few microseconds when nobody waits; at most INTENT_YIELD_SECONDS after the writer's announcement."""
    delay = 0.005
    while time.monotonic() < deadline and sidecars.foreign_write_waiting(target) and not sidecars.snapshot_current(target):
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _attach(target: Path, key: str, write: bool, deadline: float):
    """Attach `target` (or, for a read while another process writes it, its current snapshot), retrying
    while another process holds it; (key used, cursor, instance generation).

    A write says so first (sidecars.announce_write, and to this process's readers), so that readers here
    and in other processes let their attachments close instead of keeping the file open without a pause
    (under load they always have a read going on, and DuckDB gives the file to a writer only when no other
    process has it open). The announcement is renewed every 3 x INTENT_YIELD_SECONDS while it waits."""
    if not write:
        if not _attachments.held_for_reading().get(key):
            _yield_to_other_writers(target, deadline)
        return _attach_retrying(target, key, write, deadline)
    intent = sidecars.announce_write(target)
    _attachments.want_write(key)
    try:
        return _attach_retrying(target, key, write, deadline, intent)
    finally:
        _attachments.done_waiting(key)
        sidecars.withdraw_write(intent)


def _attach_retrying(target: Path, key: str, write: bool, deadline: float, intent: Path | None = None):
    delay = 0.01
    announced = time.monotonic()
    while True:
        try:
            con, alias, generation = _attachments.acquire(key, target, write, deadline)
            return key, con, alias, generation
        except (duckdb.IOException, duckdb.ConnectionException) as exc:
            if not _is_lock_error(exc):
                raise
            if not write and sidecars.snapshot_current(target):
                snapshot = sidecars.snapshot_path(target)
                try:
                    used = f"snapshot:{snapshot}:{os.stat(snapshot).st_ino}"  # a newer copy is another attachment
                    con, alias, generation = _attachments.acquire(used, snapshot, False, deadline)
                    return used, con, alias, generation
                except (OSError, duckdb.IOException, duckdb.ConnectionException):
                    pass  # replaced or removed just now: look again
            if time.monotonic() >= deadline:
                raise StoreBusy(f"database {target} is busy (another process is writing); try again shortly") from exc
            if intent is not None and time.monotonic() - announced > 3 * sidecars.INTENT_YIELD_SECONDS:
                with contextlib.suppress(OSError):
                    os.utime(intent)  # the readers' next pause
                announced = time.monotonic()
                _attachments.renew_waiting(key)  # and this process's readers'
            time.sleep(min(delay * (1 + random.random()), max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 0.25)


@contextlib.contextmanager
def connect(
    path: str | os.PathLike | None = None,
    *,
    write: bool = False,
    wait: float | None = None,
    snapshot: bool = False,
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A short-lived connection of its own; retries while another process holds the file.

    Read connections on a missing file raise FileNotFoundError rather than
    creating an empty database. A write connection brings an old schema up to
    date first (`ensure_current`) and applies the journal. `snapshot=True` (a
    long write): publish the snapshot first, so other processes read the last
    committed version meanwhile. `wait`: seconds to wait for the lock (default
    OUTCOMES_LOCK_WAIT, 120) before StoreBusy.
    """
    target = db_path(path)
    if isinstance(target, PostgresTarget):
        with _connect_postgres(target, write, wait) as con:
            yield con
        return
    if not write and not target.exists():
        raise FileNotFoundError(f"no database at {target}: run `python -m analytics demo` or import data")
    if write:
        _refuse_unwritable(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + (LOCK_WAIT_SECONDS if wait is None else wait)
    key = str(target.resolve())
    writer = None
    if write:
        writer = _attachments.writer_lock(key)
        if not writer.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise StoreBusy(f"database {target} is busy (this process is writing to it); try again shortly")
    precopy = None
    try:
        outermost = write and _attachments.write_depth.get(key, 0) == 0
        if write:
            _attachments.write_depth[key] = _attachments.write_depth.get(key, 0) + 1
        # A long write copies the file for the snapshot before it takes the file, while the others read on
        # (taking the file first left them waiting for the copy); the copy is used only if nothing was
        # written meanwhile (_begin_write), else it is made again under the lock as before.
        precopy = _precopy_snapshot(target) if (outermost and snapshot) else None
        try:
            used, con, alias, generation = _attach(target, key, write, deadline)
            reading = _attachments.held_for_reading()
            if not write:
                reading[key] = reading.get(key, 0) + 1
            try:
                try:
                    # No progress bar: a long query would draw one over the CLI's output and the server log.
                    con.execute("SET enable_progress_bar = false")
                    con.execute(f"USE {alias}")
                    refuse_newer_schema(con, target)  # neither read nor written by older software
                    if outermost:
                        ensure_current(con)
                        _begin_write(con, target, snapshot, precopy)
                    try:
                        yield con
                    except BaseException:
                        if outermost:
                            # The error being raised is the one to report: the state's write on a full disk
                            # must not replace it (the next write finds the state of a writer that stopped).
                            with contextlib.suppress(Exception):
                                _end_write(con, target, snapshot)
                        raise
                    if outermost:
                        _end_write(con, target, snapshot)
                finally:
                    con.close()
            except (duckdb.FatalException, duckdb.InternalException):
                _attachments.discard()  # DuckDB invalidates the whole instance after these
                failed = True
                raise
            except BaseException:
                failed = True
                raise
            else:
                failed = False
            finally:
                if not write:
                    reading[key] -= 1
                    if not reading[key]:
                        del reading[key]
                if failed:
                    # The error being raised is the one to report: a detach that fails after it (its
                    # checkpoint on a full disk) must not replace it.
                    with contextlib.suppress(Exception):
                        _attachments.release(used, write, generation)
                else:
                    _attachments.release(used, write, generation)
        finally:
            if precopy is not None:
                precopy[0].unlink(missing_ok=True)  # not used (it was renamed into place if it was)
            if write:
                _attachments.write_depth[key] -= 1
    finally:
        if writer is not None:
            writer.release()


# Work to do once a transaction has committed (the audit anchor, analytics/keys.py), by id of its
# connection; dropped on rollback. A connection outside `transaction` runs such work at once.
_after_commit: dict[int, list[Callable[[], None]]] = {}


def commit(con: duckdb.DuckDBPyConnection) -> None:
    """COMMIT; when DuckDB checkpointed at the COMMIT (a large transaction) and that failed (a full disk), the
    COMMIT fails, the file keeps its last committed version, and DuckDB gives up its instance ("Failed to commit:
    Checkpoint failed ... The database has been invalidated. Original error: Could not write file ...: No space
    left on device"): the instance is dropped (the next use starts afresh) and the write's own error is raised."""
    try:
        con.execute("COMMIT")
    except duckdb.Error as exc:
        text = str(exc)
        if "invalidated" not in text or "Original error: " not in text:
            raise
        _attachments.discard()
        raise duckdb.IOException(text.split("Original error: ", 1)[1]) from exc


def after_commit(con: duckdb.DuckDBPyConnection, work: Callable[[], None]) -> None:
    """Run `work` when `con`'s transaction commits (now, if `con` is not inside `transaction`)."""
    pending = _after_commit.get(id(con))
    if pending is None:
        work()
    else:
        pending.append(work)


@contextlib.contextmanager
def _connect_postgres(target: PostgresTarget, write: bool, wait: float | None):
    """store_postgres.connect, with a lock wait that ran out as StoreBusy, a missing schema as
    FileNotFoundError and a newer schema refused on reads too (a write's migration refuses it), the
    same as for a file."""
    try:
        with store_postgres.connect(target, write=write, wait=LOCK_WAIT_SECONDS if wait is None else wait,
                                    is_current=_is_current, ensure_current=ensure_current) as con:
            if not write:
                refuse_newer_schema(con, target)  # one indexed read: another server may have migrated meanwhile
            yield con
    except store_postgres.LockTimeout as exc:
        raise StoreBusy(f"database {target.label} is busy (another writer holds what this write needs); "
                        "try again shortly") from exc
    except store_postgres.MissingTable as exc:
        if write or target.exists():
            raise
        raise FileNotFoundError(f"no database at {target.label}: run `python -m analytics demo --db <url>` "
                                "or import data") from exc


@contextlib.contextmanager
def transaction(path: str | os.PathLike | None = None, wait: float | None = None,
                snapshot: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    """A write connection inside one transaction: all or nothing (`snapshot`: as for `connect`).

    Any error raised out of it means nothing was committed, except `CommittedButFailed`:
    the COMMIT succeeded and a step after it (applying the journal, closing the connection,
    DETACH and its checkpoint) failed, so callers can say truthfully what happened to the database.
    Work registered with `after_commit` (the audit anchor) runs once the COMMIT succeeded.
    """
    committed = False
    step = "writing the database file after the commit (checkpoint on detach)"
    pending: list[Callable[[], None]] = []
    try:
        with connect(path, write=True, wait=wait, snapshot=snapshot) as con:
            con.execute("BEGIN TRANSACTION")
            _after_commit[id(con)] = pending
            try:
                yield con
            except BaseException:
                _after_commit.pop(id(con), None)
                con.execute("ROLLBACK")
                raise
            try:
                commit(con)
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


def change_stamp(path: str | os.PathLike | None = None) -> tuple:
    """A value that changes whenever the database may have changed (no database read: a few stats);
    for caches of what is read from it (analytics.access.DataAccess.data_version). On PostgreSQL one
    cheap query (store_postgres.change_stamp)."""
    target = db_path(path)
    if isinstance(target, PostgresTarget):
        return store_postgres.change_stamp(target)
    return sidecars.change_stamp(target)


def write_in_progress(path: str | os.PathLike | None = None) -> bool:
    """Is another process writing to the database right now (its writes not yet visible to others)?
    Never on PostgreSQL: readers there never wait for writers, and there is no snapshot to fall back on."""
    target = db_path(path)
    if isinstance(target, PostgresTarget):
        return False
    writer = sidecars.read_state(target).get("writer")
    return writer is not None and writer != os.getpid() and sidecars.pid_alive(writer)


# --- writes in progress: the state, the snapshot and the journal -------------------------------

def _precopy_snapshot(target: Path) -> tuple[Path, int] | None:
    """(a copy of `target`, the generation it holds), made before a long write takes the file, or None when
    none can be made now (another write in progress, a write-ahead log, no room, the snapshot already current)."""
    state = sidecars.read_state(target)
    wal = Path(str(target) + ".wal")
    if (state.get("writer") is not None or state.get("snapshot") == state["generation"] or not target.exists()
            or (wal.exists() and wal.stat().st_size) or not _room_for_snapshot(target)):
        return None
    try:
        return sidecars.copy_for_snapshot(target), state["generation"]
    except (OSError, subprocess.CalledProcessError):
        return None


def _begin_write(con: duckdb.DuckDBPyConnection, target: Path, snapshot: bool,
                 precopy: tuple[Path, int] | None = None) -> None:
    """The first thing a write does (lock held, nothing written yet): mark the state as being written,
    publish the snapshot when asked (`precopy`, made before the lock, when nothing was written since), apply
    the journal."""
    state = sidecars.read_state(target)
    crashed = state.get("writer") is not None
    if crashed:
        state["generation"] += 1  # the last writer did not finish: it may have committed
    if (snapshot and state.get("snapshot") != state["generation"] and precopy is not None and not crashed
            and precopy[1] == state["generation"] and _checkpointed(con, target)):
        try:
            sidecars.adopt_snapshot(target, precopy[0])  # nothing was committed since the copy was made
            state["snapshot"] = state["generation"]
        except OSError:
            pass  # made again below
    if (snapshot and state.get("snapshot") != state["generation"] and _room_for_snapshot(target)
            and _checkpointed(con, target)):
        try:
            sidecars.publish_snapshot(target)
            state["snapshot"] = state["generation"]
        except (OSError, subprocess.CalledProcessError) as exc:
            # Without a snapshot other processes wait for this write instead of reading the last
            # version: slower for them, never a reason to refuse the write.
            print(f"store: no read-only snapshot for this write ({type(exc).__name__}); "
                  "other processes wait for it", file=sys.stderr)
    state["writer"] = os.getpid()
    sidecars.write_state(target, state)
    _flush(con, target)
    drop_bulk_leftovers(con)


def _room_for_snapshot(target: Path) -> bool:
    """Is there room to copy the file and still leave the write as much again, plus 64 MB? A snapshot
    must never be what fills the disk under the write it was made for."""
    try:
        size = os.stat(target).st_size
        return shutil.disk_usage(target.parent).free > 2 * size + 64 * 2**20
    except OSError:
        return False


def _checkpointed(con: duckdb.DuckDBPyConnection, target: Path) -> bool:
    """Is everything committed in the file itself (no write-ahead log), after a checkpoint? Only then is a
    copy of the file the last committed version."""
    with contextlib.suppress(duckdb.Error):
        con.execute("CHECKPOINT")
    wal = Path(str(target) + ".wal")
    return not wal.exists() or wal.stat().st_size == 0


def _end_write(con: duckdb.DuckDBPyConnection, target: Path, snapshot: bool = False) -> None:
    """The last thing a write does (lock still held): apply what was journaled meanwhile, move the generation
    on. A long write (`snapshot`) checkpoints first, while the others still read the snapshot: the checkpoint
    of DETACH then has little left to write, and they wait only for that (a failing checkpoint is left to
    DETACH, which reports it)."""
    try:
        _flush(con, target)
        if snapshot:
            with contextlib.suppress(duckdb.Error):
                con.execute("CHECKPOINT")
    except duckdb.Error:
        pass  # left in the journal for the next write; never in the way of the caller's own outcome
    finally:
        state = sidecars.read_state(target)
        state["generation"] += 1
        state["writer"] = None
        sidecars.write_state(target, state)


# Journal kinds: name -> (apply(con, payload) -> result, applied(con, payload) -> bool)
_JOURNAL_KINDS: dict[str, tuple[Callable, Callable | None]] = {}
_JOURNAL_MANY: dict[str, Callable] = {}  # name -> apply_many(con, payloads): several entries in one go


def register_journal_kind(kind: str, apply: Callable, applied: Callable | None = None,
                          apply_many: Callable | None = None) -> None:
    """Let `kind` be journaled: `apply(con, payload)` writes one entry inside an open transaction (and
    returns what `write_or_journal` returns when written at once); `applied(con, payload)` says whether
    an entry is already in the database (asked only of entries a flush that died may have applied);
    `apply_many(con, payloads)`, when given, writes consecutive entries of the kind exactly as `apply`
    on each in turn would, in one go: a flush holds the file, and every other process's reads wait, for
    as long as it takes (200 audit entries one at a time took 2 s of CPU)."""
    _JOURNAL_KINDS[kind] = (apply, applied)
    if apply_many is not None:
        _JOURNAL_MANY[kind] = apply_many
    else:
        _JOURNAL_MANY.pop(kind, None)


_in_passing = threading.local()


@contextlib.contextmanager
def writes_in_passing_journaled() -> Iterator[None]:
    """Within this block (a dashboard page run, in its own thread), `write_or_journal` always journals:
    a page never waits for a writer nor makes this process's readers wait for its write (attaching
    the file for writing, then checkpointing it on detach). Its audit entries cost an fsynced append
    each and are applied together by `keep_journal_flushed` (gathered for 10 to 30 s: `flush_wait`)."""
    before = getattr(_in_passing, "journaled", False)
    _in_passing.journaled = True
    try:
        yield
    finally:
        _in_passing.journaled = before


def journal(path: str | os.PathLike | None, kind: str, payload: dict) -> str:
    """Queue one write for the next writer: durable (fsynced) when this returns; its id."""
    if kind not in _JOURNAL_KINDS:
        raise ValueError(f"journal kind {kind!r} is not registered")
    if is_postgres(path):  # no single writer to wait for: written at once
        with transaction(path) as con:
            _JOURNAL_KINDS[kind][0](con, payload)
        return ""
    return sidecars.journal_append(db_path(path), kind, payload)


def write_or_journal(path: str | os.PathLike | None, kind: str, payload: dict, *, wait: float | None = None):
    """Write `payload` now (in its own transaction, after anything journaled before it) if the lock
    is free within `wait` seconds (default OUTCOMES_JOURNAL_AFTER, 0.5), else journal it; returns what
    the kind's `apply` returned, or None when journaled. Either way it is durable when this returns."""
    if kind not in _JOURNAL_KINDS:
        raise ValueError(f"journal kind {kind!r} is not registered")
    if is_postgres(path):  # PostgreSQL has no single writer: the write goes in at once, never queued
        with transaction(path, wait=wait) as con:
            return _JOURNAL_KINDS[kind][0](con, payload)
    if getattr(_in_passing, "journaled", False):
        journal(path, kind, payload)
        return None
    try:
        with transaction(path, wait=JOURNAL_AFTER_SECONDS if wait is None else wait) as con:
            return _JOURNAL_KINDS[kind][0](con, payload)
    except StoreBusy:
        journal(path, kind, payload)
        return None


def journal_pending(path: str | os.PathLike | None = None, kind: str | None = None) -> list[dict]:
    """Entries waiting to be applied, oldest first ({"id", "kind", "queued_at", "payload"})."""
    if is_postgres(path):
        return []  # nothing is ever journaled there
    return sidecars.pending_entries(db_path(path), kind)


def flush_journal(path: str | os.PathLike | None = None, wait: float = 0.0) -> bool:
    """Apply the journal now if the lock is free within `wait` seconds; True when nothing is left."""
    target = db_path(path)
    if isinstance(target, PostgresTarget) or not sidecars.journal_pending(target):
        return True
    if not target.exists():
        return False
    try:
        with connect(target, write=True, wait=wait):
            pass  # a write applies the journal when it begins
    except StoreBusy:
        return False
    return not sidecars.journal_pending(target)


def _flush(con: duckdb.DuckDBPyConnection, target: Path) -> int:
    """Apply every journaled entry in order in one transaction (lock held); the number applied."""
    if not sidecars.journal_pending(target):
        return 0
    taken = sidecars.take_journal(target)
    batches = [(path, recovered, sidecars.journal_entries(path)) for path, recovered in taken]
    unknown = {e.get("kind") for _, _, entries in batches for e in entries} - set(_JOURNAL_KINDS)
    if unknown:
        return 0  # a kind this process does not know: a process that does will apply them (renamed files are kept)
    applied = 0
    pending: list[Callable[[], None]] = []  # after_commit work of the entries (the audit anchor)
    con.execute("BEGIN TRANSACTION")
    outer = _after_commit.get(id(con))
    _after_commit[id(con)] = pending
    try:
        for _path, recovered, entries in batches:
            run: list[dict] = []  # consecutive entries of one kind applied together (never from a recovered file)

            def apply_run() -> None:
                if run:
                    _JOURNAL_MANY[run[0]["kind"]](con, [e["payload"] for e in run])
                    run.clear()
            for entry in entries:
                kind = entry["kind"]
                apply, already = _JOURNAL_KINDS[kind]
                if recovered and already is not None and already(con, entry["payload"]):
                    continue
                if not recovered and kind in _JOURNAL_MANY:
                    if run and run[0]["kind"] != kind:
                        apply_run()
                    run.append(entry)
                else:
                    apply_run()
                    apply(con, entry["payload"])
                applied += 1
            apply_run()
        con.execute("COMMIT")
    except duckdb.Error as exc:
        pending.clear()
        con.execute("ROLLBACK")
        if _is_lock_error(exc) or isinstance(exc, (duckdb.IOException, duckdb.FatalException)):
            raise
        # An entry the database refuses would stop every later write: set its file aside for the operator.
        for path, _recovered, _entries in batches:
            path.replace(path.with_suffix(".failed"))
        print(f"store: journaled writes could not be applied ({type(exc).__name__}); kept in "
              f"{target.name}.journal.*.failed for an operator", file=sys.stderr)
        return 0
    finally:
        if outer is None:
            _after_commit.pop(id(con), None)
        else:
            _after_commit[id(con)] = outer
    for path, _recovered, _entries in batches:
        sidecars.journal_done(path)
    for work in pending:
        work()
    return applied


_flushers: dict[str, threading.Thread] = {}
_flushers_guard = threading.Lock()


def keep_journal_flushed(path: str | os.PathLike | None = None, every: float = 1.0) -> None:
    """A daemon thread (one per database and process) that applies the journal, gathering entries first.

    Applying takes the file for writing, and every other process's reads wait while it does (about 0.1 s
    on a quiet machine, a second at load 10, mostly fixed costs: attaching, committing, checkpointing),
    so it is done rarely and for many entries at once: see `flush_wait`. Reading the audit trail applies
    the journal first (analytics/audit.py), so the trail a user reads is complete."""
    target = db_path(path)
    if isinstance(target, PostgresTarget):
        return  # nothing is journaled on PostgreSQL
    key = f"{os.getpid()}:{target.resolve()}"
    with _flushers_guard:
        if key in _flushers and _flushers[key].is_alive():
            return

        def loop() -> None:
            pending_since = None  # when this thread first saw entries waiting
            while True:
                time.sleep(every)
                try:
                    if not sidecars.journal_pending(target):
                        pending_since = None
                        continue
                    now = time.monotonic()
                    pending_since = now if pending_since is None else pending_since
                    wait = flush_wait(now - pending_since)
                    if wait is not None and flush_journal(target, wait=wait):
                        pending_since = None
                except Exception:  # noqa: BLE001 - retried next time; a page's own write reports errors
                    pass

        thread = threading.Thread(target=loop, name=f"journal-flusher-{target.name}", daemon=True)
        _flushers[key] = thread
        thread.start()


# Journaled entries are gathered for JOURNAL_GATHER_SECONDS, then applied when the file is free at once
# (no wait: a wait holds this process's new reads back), and after JOURNAL_MAX_WAIT_SECONDS waiting up to a
# second for it. Any write applies the journal first as well. Applied every second, with two dashboard
# processes under 20 users the other process's reads waited for a flush about every 3 s.
JOURNAL_GATHER_SECONDS = float(os.environ.get("OUTCOMES_JOURNAL_GATHER", "10"))
JOURNAL_MAX_WAIT_SECONDS = float(os.environ.get("OUTCOMES_JOURNAL_MAX_WAIT", "30"))


def flush_wait(pending_for: float) -> float | None:
    """Seconds the flusher waits for the lock now, the journal having held entries for `pending_for`
    seconds; None: not yet."""
    if pending_for < JOURNAL_GATHER_SECONDS:
        return None
    return 1.0 if pending_for >= JOURNAL_MAX_WAIT_SECONDS else 0.0


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


VOID_COLUMNS = ("voided_at", "voided_by", "void_reason")


def _schema_v6() -> list[str]:
    """Voiding a mistaken infusion or assessment (docs/self-report.md): the row stays, with who voided
    it, when and why, and every read of analytics/access.py leaves it out. A voided row keeps its key,
    so re-importing the file that carried it does not bring it back."""
    return [f"ALTER TABLE {table} ADD COLUMN {column} {kind}"
            for table in ("treatments", "assessments")
            for column, kind in zip(VOID_COLUMNS, ("TIMESTAMP", "VARCHAR", "VARCHAR"))]


# The two large tables: on DuckDB their keys were unique indexes (v7: treatments_key, assessments_key), v8 dropped
# the indexes on their ids and v9 those on their keys, which their one writer holds (ingest/write.py,
# `check_keys_unique`).
# On PostgreSQL the same keys stay constraints (v1, v4).
BULK_TABLES = ("treatments", "assessments")
# Each table's key: one row per key (PostgreSQL's constraints; on DuckDB, for the two large tables, their one writer
# and its `check_keys_unique`, and the full health check's `keys`).
KEYS = {"patients": ("patient_id",), "treatments": ("patient_id", "administered_at"),
        "assessments": ("patient_id", "instrument", "administered_at")}
# What v7 built (a released migration: its statements never change).
_V7_INDEXES = (
    "CREATE UNIQUE INDEX treatments_key ON treatments (patient_id, administered_at)",
    "CREATE UNIQUE INDEX treatments_id ON treatments (treatment_id)",
    "CREATE UNIQUE INDEX assessments_key ON assessments (patient_id, instrument, administered_at)",
    "CREATE UNIQUE INDEX assessments_id ON assessments (assessment_id)",
)


def _schema_v7() -> list[str]:
    """DuckDB only (PostgreSQL keeps its constraints): the keys of treatments and assessments become unique
    indexes, and their references (a known patient, an instrument of the registry) are checked by the
    tables' one writer, analytics/ingest/write.py, which every import, visit entry and self-report goes
    through. DuckDB maintains a primary, unique or foreign key row by row on every insert (over half of
    a 100,000-patient import) and cannot add one to a filled table, but it builds a unique index on a
    filled table in one pass: so a large import inserts into a table without indexes and builds them
    after (`keys_built_after`). The columns, their order, defaults and checks are those of v1/v4 and v6.
    Rebuilt as v4 was: rows kept aside, tables dropped, created anew and filled back."""
    item_cols = ",\n    ".join(f"item_{i} SMALLINT CHECK (item_{i} BETWEEN 0 AND {STORE_ITEM_MAX})"
                                for i in range(1, STORE_ITEM_COLUMNS + 1))
    voids = ",\n    ".join(f"{column} {kind}" for column, kind in zip(VOID_COLUMNS, ("TIMESTAMP", "VARCHAR", "VARCHAR")))
    return [
        "CREATE TEMP TABLE v7_treatments AS SELECT * FROM treatments",
        "CREATE TEMP TABLE v7_assessments AS SELECT * FROM assessments",
        "DROP TABLE treatments",
        "DROP TABLE assessments",
        f"""CREATE TABLE treatments (
    treatment_id BIGINT NOT NULL DEFAULT nextval('treatment_seq'),
    patient_id VARCHAR NOT NULL,
    administered_at TIMESTAMP NOT NULL,
    has_time BOOLEAN NOT NULL DEFAULT false,
    route VARCHAR NOT NULL CHECK (route IN ({_in_list(ROUTES)})),
    dose_mg_per_kg DOUBLE CHECK (dose_mg_per_kg > 0 AND dose_mg_per_kg <= 5),
    phase VARCHAR CHECK (phase IN ({_in_list(PHASES)})),
    batch_id BIGINT,
    {voids}
)""",
        f"""CREATE TABLE assessments (
    assessment_id BIGINT NOT NULL DEFAULT nextval('assessment_seq'),
    patient_id VARCHAR NOT NULL,
    instrument VARCHAR NOT NULL,
    administered_at TIMESTAMP NOT NULL,
    has_time BOOLEAN NOT NULL DEFAULT false,
    rater VARCHAR,
    {item_cols},
    total DOUBLE CHECK (total >= 0),
    total_method VARCHAR NOT NULL CHECK (total_method IN ('items', 'prorated', 'given')),
    batch_id BIGINT,
    {voids}
)""",
        "INSERT INTO treatments SELECT * FROM v7_treatments",
        "INSERT INTO assessments SELECT * FROM v7_assessments",
        "DROP TABLE v7_treatments",
        "DROP TABLE v7_assessments",
        *_V7_INDEXES,
    ]


def _schema_v8() -> list[str]:
    """DuckDB only: the unique indexes on the id columns go. The store numbers every id itself (the
    sequences of v1, `reserve_ids` for a bulk insert), nothing finds a row by its id (every read, change
    and void finds it by its key, which keeps its unique index), and building the two indexes took
    0.7 s of a 100,000-patient import (docs/performance.md, wave 12). PostgreSQL keeps its primary keys."""
    return ["DROP INDEX IF EXISTS treatments_id", "DROP INDEX IF EXISTS assessments_id"]


def _schema_v9() -> list[str]:
    """DuckDB only: the unique indexes on the keys go too. No read uses them (DuckDB scans a table for a
    filter on a composite key, with or without its index: the same plan and time), and the keys stay unique
    because the tables' one writer, analytics/ingest/write.py (every import, visit entry and self-report),
    refuses a repeated key within a file and sorts each incoming row against the stored one of its key
    (insert, update or unchanged) inside its write transaction, while the file's single writer keeps any
    other write out, as v7 already did for the references. Building them cost 2.4-3.9 s of a
    100,000-patient import of 15.5 s (docs/performance.md, wave 13). PostgreSQL keeps its constraints."""
    return ["DROP INDEX IF EXISTS treatments_key", "DROP INDEX IF EXISTS assessments_key"]


# Each migration is a list of statements; never edit a released one, append.
MIGRATIONS: list[Callable[[], list[str]]] = [_schema_v1, _schema_v2, _schema_v3, _schema_v4, _schema_security,
                                             _schema_v6, _schema_v7, _schema_v8, _schema_v9]
SCHEMA_VERSION = len(MIGRATIONS)
# Migrations whose statements run on DuckDB only; on PostgreSQL only their version is recorded.
DUCKDB_ONLY = (_schema_v7, _schema_v8, _schema_v9)


# Each large table's id column and the sequence that numbers it (v1).
ID_SEQUENCES = {"treatments": ("treatment_id", "treatment_seq"), "assessments": ("assessment_id", "assessment_seq")}


def reserve_ids(con, table: str, count: int) -> int:
    """The first of `count` consecutive ids of `table` taken from its sequence at once (inside the
    caller's transaction): a bulk insert numbers its rows itself, which lets DuckDB insert them on every
    core instead of calling the sequence row by row. The next id the sequence gives is first + count."""
    _, sequence = ID_SEQUENCES[table]
    [(first,)] = con.execute(f"SELECT nextval('{sequence}')").fetchall()
    if count > 1:
        con.execute(f"SELECT setval('{sequence}', ?)", [first + count - 1]).fetchall()
    return first


def repeated_keys(con, table: str, batch_id: int | None = None) -> int:
    """How many keys (`KEYS`) of `table` are held by more than one row; with `batch_id`, only keys of that batch's
    rows (DuckDB reads only the row groups that can hold them: 2.4 ms for a visit's one row at 4.9 M rows; the
    whole table 0.4 s). The guard of the keys on DuckDB, which holds no index on them since v9."""
    keys = ", ".join(KEYS[table])
    mine = "" if batch_id is None else f"WHERE ({keys}) IN (SELECT {keys} FROM {table} WHERE batch_id = ?)"
    return con.execute(f"SELECT count(*) FROM (SELECT 1 FROM {table} {mine} GROUP BY {keys} HAVING count(*) > 1) t",
                       [] if batch_id is None else [batch_id]).fetchall()[0][0]


def bulk_name(table: str) -> str:
    """The table a first large import of versions before 2026-12-02 filled and committed ahead of its
    transaction, to take `table`'s place in it (wave 12's `prebuild`, removed once schema v9 left it
    nothing to save); a killed import left it behind, never read (`drop_bulk_leftovers`)."""
    return f"{table}_bulk"


def drop_bulk_leftovers(con) -> None:
    """Drop what a large first import of an earlier version left behind when it was stopped (a `bulk_name`
    table committed before its transaction): its rows never took their table's place. Every write does it."""
    for table in BULK_TABLES:  # 0.15 ms each when there is none (a catalog query cost 1.6 ms), and nothing written
        con.execute(f"DROP TABLE IF EXISTS {bulk_name(table)}")


def current_version(con: duckdb.DuckDBPyConnection) -> int:
    """The schema version of the open database (0: not a store yet)."""
    try:
        rows = con.execute("SELECT max(version) FROM schema_version").fetchall()
    except MissingTable:
        return 0
    return rows[0][0] or 0


def _is_current(con) -> bool:
    return current_version(con) == SCHEMA_VERSION and _instruments_in_sync(con)


def ensure_current(con: duckdb.DuckDBPyConnection) -> int:
    """`migrate` only when something is behind; two small reads when nothing is (every write open runs this)."""
    if _is_current(con):
        return SCHEMA_VERSION
    return migrate(con)


def migrate(con: duckdb.DuckDBPyConnection) -> int:
    """Bring the schema up to date, keeping existing data; returns the version.

    A database that already holds a schema is backed up first (`backup_before_migration`); a
    database with a newer schema than this software's is refused (SchemaTooNew), never written."""
    version = current_version(con)
    if version > SCHEMA_VERSION:
        database = con.target if dialect(con) == "postgres" else archive.attached_file(con)
        raise SchemaTooNew(database or Path(":memory:"), version)
    if version < SCHEMA_VERSION:
        if version >= 1:
            backup_before_migration(con, version)
        con.execute("BEGIN TRANSACTION")
        try:
            # IF NOT EXISTS: a file can hold the table but no version row yet
            con.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at TIMESTAMP NOT NULL DEFAULT current_timestamp)")
            for number in range(version + 1, SCHEMA_VERSION + 1):
                migration = MIGRATIONS[number - 1]
                for statement in [] if migration in DUCKDB_ONLY and dialect(con) == "postgres" else migration():
                    con.execute(statement)
                con.execute("INSERT INTO schema_version (version) VALUES (?)", [number])
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        version = SCHEMA_VERSION
    sync_instruments(con)
    return version


# Before every migration the store writes a backup (the archive format of `python -m analytics
# backup`) into $OUTCOMES_BACKUP_DIR, else a `backups` folder beside the database, and keeps the
# newest PRE_MIGRATION_BACKUPS_KEPT of them per database file (docs/operations.md).
BACKUP_DIR_ENV = "OUTCOMES_BACKUP_DIR"
PRE_MIGRATION_BACKUPS_KEPT = 3


def backup_dir(path: str | os.PathLike | None = None) -> Path:
    """Where automatic backups of the database at `path` go."""
    explicit = os.environ.get(BACKUP_DIR_ENV)
    return Path(explicit) if explicit else db_path(path).resolve().parent / "backups"


def backup_before_migration(con: duckdb.DuckDBPyConnection, version: int) -> Path | None:
    """Back up the open database (write lock held) before migrating it from `version`; its path.

    MigrationRefused when the backup cannot be written: then nothing is migrated. Not on PostgreSQL,
    whose migrations are one transaction that rolls back whole, and whose backups are the operator's
    (pg_dump, base backups: docs/deployment.md)."""
    if dialect(con) == "postgres":
        return None
    source = archive.attached_file(con)
    if source is None:
        return None  # an in-memory database: nothing to keep
    folder = backup_dir(source)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    dest = folder / f"{source.name}.v{version}-before-v{SCHEMA_VERSION}.{stamp}{archive.SUFFIX}"
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        con.execute("CHECKPOINT")  # everything committed is in the file: the copy needs no write-ahead log
        manifest = archive.write(con, source, dest, open_copy=connect, kind="before-migration",
                                 companions=[(c.name, f) for c, f in companion_files(source)])
    except (OSError, duckdb.Error, archive.BackupFileError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MigrationRefused(
            f"the database {source} has schema version {version} and this software migrates it to {SCHEMA_VERSION}, "
            f"after a backup; the backup could not be written into {folder} ({reason}). Nothing was changed: free disk "
            f"space there or set {BACKUP_DIR_ENV} to a folder with room") from exc
    archive.record(source, dest, manifest)
    kept = sorted(folder.glob(f"{source.name}.v*-before-v*{archive.SUFFIX}"),
                  key=lambda p: p.name[len(source.name):].split(".")[2])  # by the time stamp in the name
    for old in kept[:-PRE_MIGRATION_BACKUPS_KEPT]:
        with contextlib.suppress(OSError):
            old.unlink()
    return dest


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


def initialise(path: str | os.PathLike | None = None) -> Path | PostgresTarget:
    """Create (or migrate) the database (a file, or the schema in a PostgreSQL database) and return it."""
    target = db_path(path)
    with connect(target, write=True):
        pass
    return target
