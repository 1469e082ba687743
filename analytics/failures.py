"""What a failure means for the person in front of it: one explanation shared by every command and the dashboard.

`explain(exc, db)` sorts an exception into a kind, an exit code and a one-line message that
says what happened to the database and what to do:

| kind | exit | when |
|---|---|---|
| `busy` | 2 | another process held the database longer than the wait (store.StoreBusy) |
| `schema_newer` | 2 | the database was written by a newer version of the software |
| `read_only` | 2 | a write was asked of a read-only database file or folder |
| `refused` | 2 | any other refusal with its reason (a migration without room for its backup, a restore into an existing database) |
| `missing` | 2 | no database (or no input file) at the path |
| `disk` | 2 | a file could not be written: disk full, read-only file system, permission denied |
| `damaged` | 2 | DuckDB found the database file damaged (a checksum that does not match, a file cut short) |
| `unreachable` | 2 | the PostgreSQL server did not answer at the URL's host and port (or is starting, stopping, out of connection slots) |
| `auth` | 2 | the PostgreSQL server refused the URL's user or password |

On PostgreSQL (store.PostgresUnavailable) a database name the server does not have is `missing`, a
replica in recovery or a read-only database asked to write is `read_only`, and the server's full
disk is `disk`; each message names the server, database and user, never the password.
| `committed` | 3 | a change was committed, then writing the database file failed (store.CommittedButFailed) |
| `unexpected` | 3 | anything else: a defect to report |

The last three also write a log file (`write_log`): the traceback, with every quoted value of
the error messages masked (messages may quote data), readable by its owner only, in
`$OUTCOMES_LOG_DIR` (default `<system temp>/outcomes-logs`). A traceback never reaches a terminal
or a browser.
"""
from __future__ import annotations

import errno
import os
import platform
import re
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import duckdb

from . import archive, store

EXIT_OK, EXIT_PARTIAL, EXIT_FAILED, EXIT_UNEXPECTED = 0, 1, 2, 3
LOG_DIR_ENV = "OUTCOMES_LOG_DIR"

# What DuckDB 2.0 says about a damaged database file or write-ahead log (tests/test_exit_codes.py
# damages copies of a database in these ways): a block or header checksum that does not match, a
# file that is not a database, a file cut short, a log that cannot be replayed.
_DAMAGE = re.compile(r"corrupt database file|corrupt wal file|not a valid duckdb database file|"
                     r"could not read enough bytes from file|failure while replaying wal|"
                     r"does not match stored checksum", re.IGNORECASE)
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}
_DISK_TEXT = re.compile(r"no space left on device|disk quota exceeded|read-only file system|permission denied|"
                        r"file too large", re.IGNORECASE)


def is_damage(exc: BaseException) -> bool:
    """Did DuckDB find the database file (or its write-ahead log) damaged?"""
    return isinstance(exc, duckdb.Error) and bool(_DAMAGE.search(str(exc)))


def first_line(exc: BaseException) -> str:
    """The first line of an error's message (DuckDB's run on with context), or its type's name."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _disk_reason(exc: BaseException) -> str | None:
    if isinstance(exc, OSError) and exc.errno in _DISK_ERRNOS:
        where = f" {exc.filename}" if exc.filename else ""
        return f"cannot write{where}: {exc.strerror or os.strerror(exc.errno)}"
    if isinstance(exc, duckdb.Error):
        found = _DISK_TEXT.search(str(exc))
        if found:
            return f"cannot write the database's files: {found.group(0)}"
    return None


@dataclass(frozen=True)
class Failure:
    kind: str
    exit_code: int
    message: str  # one line: what happened, what it did to the database, what to do
    log: Path | None = None

    def as_dict(self) -> dict:
        return {"exit_code": self.exit_code, "kind": self.kind, "error": self.message,
                "log": str(self.log) if self.log else None}


def restore_advice(db: Path) -> str:
    """What to do with a damaged database, naming the last backup when the backup log knows one."""
    last = archive.last_backup(db)
    backup = f"the last backup, {last['file']} ({last['at']})" if last else "the last backup"
    return (f"Move the damaged file aside (keep it), then restore {backup}: "
            f"python -m analytics restore BACKUP --db {db} (docs/operations.md)")


def kind_of(exc: BaseException) -> str:
    """The kind of failure (the table above), without writing anything."""
    if isinstance(exc, store.PostgresUnavailable):
        return exc.kind
    for cls, kind in ((store.StoreBusy, "busy"), (store.SchemaTooNew, "schema_newer"), (store.ReadOnlyDatabase, "read_only"),
                      (store.Refused, "refused"), (FileNotFoundError, "missing")):
        if isinstance(exc, cls):
            return kind
    if is_damage(exc):
        return "damaged"
    if isinstance(exc, store.CommittedButFailed):
        return "committed"
    return "disk" if _disk_reason(exc) is not None else "unexpected"


def explain(exc: BaseException, db=None, *, context: str = "command") -> Failure:
    """The Failure an exception means; writes the log file for the kinds that need one."""
    path = store.db_path(db)
    kind = kind_of(exc)
    if kind == "busy":
        return Failure(kind, EXIT_FAILED, f"{exc}; nothing was changed")
    if isinstance(exc, store.PostgresUnavailable):
        return Failure(kind, EXIT_FAILED, f"{exc}; nothing was changed")
    if kind in ("schema_newer", "read_only", "refused", "missing"):
        return Failure(kind, EXIT_FAILED, first_line(exc))
    if kind == "disk":
        return Failure(kind, EXIT_FAILED, f"{_disk_reason(exc)}; nothing was changed")
    if kind == "damaged":
        log = write_log(context, exc, "damaged database")
        where = f"; details: {log}" if log else ""
        return Failure(kind, EXIT_FAILED, f"the database {path} is damaged ({first_line(exc)[:160]}); nothing was "
                                          f"changed. {restore_advice(path)}{where}", log)
    if kind == "committed":
        state = (f"its change was committed and is stored, but {exc.step} failed afterwards "
                 f"({first_line(exc.error)[:160]}): free disk space; the database is consistent")
        log = write_log(context, exc, state)
        return Failure(kind, EXIT_UNEXPECTED, f"{state}{'; details: ' + str(log) if log else ''}", log)
    log = write_log(context, exc, "nothing was changed")
    where = f"details for a bug report: {log}" if log else "no log file could be written"
    return Failure(kind, EXIT_UNEXPECTED, f"failed unexpectedly ({type(exc).__name__}); nothing was changed. {where}", log)


# --- the private log file ----------------------------------------------------------------------

def masked(text: str) -> str:
    """A message with every quoted value replaced: error messages can quote a row's values."""
    return re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", text)


def log_dir() -> Path:
    return Path(os.environ.get(LOG_DIR_ENV) or Path(tempfile.gettempdir()) / "outcomes-logs")


def write_log(context: str, exc: BaseException, database: str) -> Path | None:
    """The details of a failure in a new file only its owner can read; None when none could be written."""
    folder = log_dir()
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        name = re.sub(r"[^A-Za-z0-9_-]", "_", context)
        path = folder / f"{name}-{stamp}-{os.getpid()}-{time.monotonic_ns() % 10**6}.log"
        lines = [f"command: {context}", f"when: {stamp}", f"database: {database}",
                 f"python {platform.python_version()} on {platform.platform()}", f"duckdb {duckdb.__version__}"]
        chain: list[BaseException] = []
        current: BaseException | None = exc
        while current is not None and current not in chain and len(chain) < 5:
            chain.append(current)
            current = current.__cause__ or current.__context__
        for error in reversed(chain):
            lines.append("")
            lines.append(f"{type(error).__module__}.{type(error).__qualname__}: {masked(str(error))[:2000]}")
            frames = traceback.extract_tb(error.__traceback__)
            if len(frames) > 60:  # a RecursionError repeats one frame a thousand times
                frames = frames[:30] + frames[-30:]
            for frame in frames:
                lines.append(f"  {frame.filename}:{frame.lineno} in {frame.name}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
        return path
    except OSError:
        return None
