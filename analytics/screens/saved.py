"""A view's tables saved beside the database per data version, so a restarted server does not rebuild them.

Building a view's tables (frames, course, cycles, the cohort summaries, the durability screen and
its model, the suggestions) costs seconds to minutes of CPU per data version; without this every
server start made its first visitor pay for all of it again (issue 14 point 5, issue 16).
`WorkspaceCache` (workspace.py) saves a view's tables a few seconds after the last one was built,
in the background, and the first time a server process serves that view it loads them instead:

- one file per view (`Scope.view_key`), replaced by rename: `<DB>.tables/<hash of the view>.tables`
  beside a DuckDB file; for PostgreSQL on this server's own disk, `$OUTCOMES_TABLES_DIR`, else
  `~/.cache/ketamine-outcomes/tables/`, in a folder per database (hash of its URL without the password).
  Folders 0700, files 0600, like the database (docs/security.md). They hold what the view's pages
  show and the per-patient tables those are computed from: nothing the database does not hold, and
  never the rows themselves (the frames are read from the database when a page needs them).
- a file is used as current only for the data version it names, made by the same code and
  settings (`fingerprint`: the source of analytics/, Python, numpy and pandas versions, every
  OUTCOMES_ setting): a file of another version is never taken for the current one. A file of an
  *older* version (an import ran while no server did) is served the way the previous version's
  tables are after a write: marked as being updated, with its "as of" time, while the current
  version's are built in the background; it is never saved again. A file of a newer version than
  the database (a restore from a backup), or an older one saved from another file at the same path (a
  database deleted and made again), is not used.
- signed: an HMAC under the audit key (analytics/keys.py, kept outside the database's folder) covers
  the whole file, and a file whose signature does not verify is never unpickled (unpickling runs
  code: whoever may write beside the database must not get that).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import io
import json
import os
import pickle
import shutil
import stat
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .. import keys, store

FORMAT = b"outcomes-tables 1\n"
SUFFIX = ".tables"
DIR_ENV = "OUTCOMES_TABLES_DIR"
SAVE_ENV = "OUTCOMES_SAVE_TABLES"  # "0": neither save nor load (e.g. a read-only disk)
NOT_SAVED = ("frames",)  # the rows themselves: read from the database again when needed
# small results worth keeping too (aggregates the pages draw); never a patient's own screen or chart
SAVED_MEMOS = ("cohort_screen", "funnel", "due_screen")
SAVED_FIGURES = ("cohort", "durability")
KEY_NAME = "audit"
PURPOSE = b"outcomes-saved-tables\x00"


def enabled() -> bool:
    return os.environ.get(SAVE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def saved_memo(key: tuple) -> bool:
    """Is this memo (its key as `Tables.memo` stores it: ("memo", kind, ...)) kept in the file?"""
    if len(key) < 2:
        return False
    if key[1] == "figure":
        return len(key) > 2 and key[2] in SAVED_FIGURES
    return key[1] in SAVED_MEMOS


def folder(db) -> Path:
    """Where the database's saved tables live (see the module docstring)."""
    label = getattr(db, "label", None)
    if label is None:
        return Path(f"{Path(db).resolve()}{SUFFIX}")
    base = os.environ.get(DIR_ENV) or str(Path.home() / ".cache" / "ketamine-outcomes" / "tables")
    return Path(base) / hashlib.sha256(str(label).encode("utf-8")).hexdigest()[:32]


def _view_name(view_key: tuple) -> str:
    return hashlib.sha256(repr(view_key).encode("utf-8")).hexdigest()[:32]


def view_file(db, view_key: tuple) -> Path:
    return folder(db) / f"{_view_name(view_key)}{SUFFIX}"


_FINGERPRINT: str | None = None


def fingerprint() -> str:
    """What the tables' meaning depends on besides the data: the code and its settings."""
    global _FINGERPRINT
    if _FINGERPRINT is None:
        import numpy
        import pandas

        h = hashlib.sha256()
        root = Path(__file__).resolve().parent.parent
        for path in sorted(root.rglob("*.py")):
            h.update(str(path.relative_to(root)).encode() + b"\x00" + path.read_bytes() + b"\x00")
        h.update(f"{sys.version}|{numpy.__version__}|{pandas.__version__}|{store.SCHEMA_VERSION}".encode())
        settings = sorted((k, v) for k, v in os.environ.items() if k.startswith("OUTCOMES_") and k != "OUTCOMES_DB")
        h.update(repr(settings).encode())
        _FINGERPRINT = h.hexdigest()
    return _FINGERPRINT


@dataclass
class Saved:
    version: tuple
    as_of: str | None
    tables: dict
    memos: dict
    same_file: bool = True  # saved from the database file now at this path (not one deleted and made again)


def _identity(db) -> str:
    """Which file the database is: a new file at the same path (a database made again, a restore) is another.
    DuckDB writes its file in place, so this stays while the database lives; PostgreSQL: its URL."""
    label = getattr(db, "label", None)
    if label is not None:
        return str(label)
    try:
        info = Path(db).stat()
    except OSError:
        return ""
    return f"{info.st_dev}:{info.st_ino}"


def _signature(key: bytes, header: bytes, payload: bytes) -> str:
    mac = hmac.new(key, PURPOSE, hashlib.sha256)
    mac.update(len(header).to_bytes(8, "big"))
    mac.update(header)
    mac.update(payload)
    return mac.hexdigest()


_LOCKS = {type(threading.Lock()): threading.Lock, type(threading.RLock()): threading.RLock}


class _Pickler(pickle.Pickler):
    """A lock inside a table (a model fitted once under one) is saved as a new, free lock."""

    def reducer_override(self, obj):
        make = _LOCKS.get(type(obj))
        return (make, ()) if make is not None else NotImplemented


def _pickle(value) -> bytes:
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=5).dump(value)
    return buffer.getvalue()


def _dumps(content: dict) -> bytes:
    """`content` pickled; an entry of its dicts that cannot be pickled is left out (the page builds it)."""
    try:
        return _pickle(content)
    except Exception:  # noqa: BLE001 - one table that cannot be pickled: keep the others
        kept = {}
        for part, entries in content.items():
            if not isinstance(entries, dict):
                kept[part] = entries
                continue
            kept[part] = {}
            for k, v in entries.items():
                try:
                    _pickle(v)
                except Exception:  # noqa: BLE001
                    continue
                kept[part][k] = v
        return _pickle(kept)


def save(db, view_key: tuple, version: tuple, as_of: str | None, tables: dict, memos: dict) -> Path | None:
    """Write the view's file (replacing the one there); None when it could not be written (said on stderr)."""
    return _write(view_file(db, view_key), _view_name(view_key), version, as_of, {"tables": tables, "memos": memos},
                  _identity(db))


def load(db, view_key: tuple) -> Saved | None:
    """The view's saved tables, or None when there is no file, or it is not this code's, not this view's,
    not signed with the current audit key, or cannot be read (never an exception: the page builds them)."""
    found = _read(view_file(db, view_key), _view_name(view_key))
    if found is None:
        return None
    meta, content = found
    return Saved(tuple(meta["version"]), meta.get("as_of"), content["tables"], content["memos"],
                 same_file=meta.get("db") == _identity(db))


def saved_for(db, view_key: tuple, version: tuple) -> bool:
    """Does the view's file name `version`? From its header alone (it is verified whole when loaded)."""
    return enabled() and _header_says_version(view_file(db, view_key), version)


def clinic_file(db, instrument: str) -> Path:
    return folder(db) / f"clinic-{_view_name(('clinic', instrument))}{SUFFIX}"


def save_clinic(db, instrument: str, version: tuple, model) -> Path | None:
    """The whole clinic's fitted model of `instrument` (intervals.ClinicModel) for this data version: the page
    that needs it after a restart loads it instead of fitting again (a minute of CPU at 10,000 patients)."""
    return _write(clinic_file(db, instrument), f"clinic:{instrument}", version, None, {"model": model}, _identity(db))


# How long a process that needs the clinic model, or a view's tables, waits for another process that is building
# them to save them (the import command fitting the model after its commit; another dashboard process updating the
# same view after an import) before it builds them itself (seconds).
FIT_WAIT_ENV = "OUTCOMES_CLINIC_FIT_WAIT"
_BUILDING: set[str] = set()  # the build locks this process holds
_BUILDING_GUARD = threading.Lock()


def _fit_lock(db, instrument: str) -> Path:
    return clinic_file(db, instrument).with_suffix(".fitting")


def _view_lock(db, view_key: tuple) -> Path:
    return view_file(db, view_key).with_suffix(".building")


def fitting_clinic(db, instrument: str):
    """Held while this process fits the clinic model of `instrument` to save it: another process that needs the
    same model meanwhile waits for the file (`wait_for_clinic_fit`) instead of fitting it beside this one (after
    an import, every dashboard process found the new data version and fitted the model the import was fitting).
    Yields whether the lock is held (see `_building`)."""
    return _building(_fit_lock(db, instrument))


def wait_for_clinic_fit(db, instrument: str, timeout: float | None = None) -> bool:
    """If another process is fitting the clinic model of `instrument` to save it (`fitting_clinic`), wait until
    it is done, at most `timeout` seconds (default: OUTCOMES_CLINIC_FIT_WAIT, 120); True if it was waited for
    and is done, False at once when nobody else is fitting it (or done just now: read the file again either way)."""
    return _wait_until_built(_fit_lock(db, instrument), timeout)


def building_view(db, view_key: tuple):
    """Held while this process builds a view's tables for a new data version and saves them: another dashboard
    process updating the same view (two directors' sessions served by two processes see the same rows) waits for
    the file (`wait_for_view`) and loads it instead of building the same tables beside this one."""
    return _building(_view_lock(db, view_key))


def wait_for_view(db, view_key: tuple, timeout: float | None = None) -> bool:
    """Like `wait_for_clinic_fit`, for a view's tables (`building_view`)."""
    return _wait_until_built(_view_lock(db, view_key), timeout)


def view_built_elsewhere(db, view_key: tuple) -> bool:
    """Is another process building this view's tables now (`building_view`)? Nothing is waited for."""
    return _wait_until_built(_view_lock(db, view_key), 0.0, report_busy=True)


@contextlib.contextmanager
def _building(path: Path):
    """Best effort: yields False, and the build runs as it is, when no lock can be had (held by another
    process, a folder that cannot be written). The lock goes with the process if it dies."""
    fd = None
    if enabled():
        try:
            keys.private_dir(path.parent)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            if fd is not None:
                os.close(fd)
            fd = None
    if fd is not None:
        with _BUILDING_GUARD:
            _BUILDING.add(str(path))
    try:
        yield fd is not None
    finally:
        if fd is not None:
            with _BUILDING_GUARD:
                _BUILDING.discard(str(path))
            os.close(fd)  # lets the lock go


def _wait_until_built(path: Path, timeout: float | None, report_busy: bool = False) -> bool:
    if not enabled():
        return False  # nothing is saved: nothing to wait for
    with _BUILDING_GUARD:
        if str(path) in _BUILDING:
            return False  # this process's own build
    if timeout is None:
        timeout = float(os.environ.get(FIT_WAIT_ENV, "120"))
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        deadline, waited = time.monotonic() + timeout, False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                fcntl.flock(fd, fcntl.LOCK_UN)
                return waited and not report_busy
            except BlockingIOError:
                if report_busy:
                    return True
                if time.monotonic() >= deadline:
                    return False
                waited = True
                time.sleep(0.25)
            except OSError:
                return False
    finally:
        os.close(fd)


def load_clinic(db, instrument: str, version: tuple):
    """The saved clinic model of exactly this data version, or None. A file of another version is turned
    away from its header alone (a page shown while its tables are updated asks on every run)."""
    if not _header_says_version(clinic_file(db, instrument), version):
        return None
    found = _read(clinic_file(db, instrument), f"clinic:{instrument}")
    if found is None or tuple(found[0]["version"]) != tuple(version):
        return None
    return found[1]["model"]


def _write(target: Path, name: str, version: tuple, as_of: str | None, content: dict, identity: str) -> Path | None:
    if not enabled():
        return None
    try:
        key_id, key = keys.current(KEY_NAME)
        payload = _dumps(content)
        header = json.dumps({"fingerprint": fingerprint(), "view": name, "version": list(version),
                             "as_of": as_of, "key_id": key_id, "db": identity}).encode("utf-8")
        where = keys.private_dir(target.parent)
        if shutil.disk_usage(where).free < 2 * len(payload) + 64 * 2**20:
            print("workspace: not enough disk space to save the dashboard's tables", file=sys.stderr, flush=True)
            return None
        temporary = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(FORMAT)
                out.write(_signature(key, header, payload).encode("ascii") + b"\n")
                out.write(header + b"\n")
                out.write(payload)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, target)
        finally:
            temporary.unlink(missing_ok=True)
        return target
    except Exception as exc:  # noqa: BLE001 - saving is an optimisation: the server goes on without it
        print(f"workspace: the dashboard's tables were not saved ({type(exc).__name__})", file=sys.stderr, flush=True)
        return None


def _header_says_version(path: Path, version: tuple) -> bool:
    """Does the file's (unverified) header name this data version? Only ever used to turn a file away
    without reading it all: a file it lets through is read and verified whole (`_read`)."""
    try:
        with open(path, "rb") as f:
            if f.read(len(FORMAT)) != FORMAT:
                return False
            f.readline()  # the signature
            return tuple(json.loads(f.readline(1 << 20)).get("version") or ()) == tuple(version)
    except (OSError, ValueError, AttributeError):
        return False


def _read(path: Path, name: str) -> tuple[dict, dict] | None:
    if not enabled():
        return None
    try:
        info = path.stat()
    except OSError:
        return None
    try:
        if info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) & 0o077:
            return None  # not this server's own private file
        blob = path.read_bytes()
        if not blob.startswith(FORMAT):
            return None
        signature, header, payload = blob[len(FORMAT):].split(b"\n", 2)
        meta = json.loads(header)
        if meta.get("fingerprint") != fingerprint() or meta.get("view") != name:
            return None
        key = keys.find(KEY_NAME, str(meta.get("key_id")))
        if key is None or not hmac.compare_digest(signature.decode("ascii"), _signature(key, header, payload)):
            return None
        return meta, pickle.loads(payload)
    except Exception:  # noqa: BLE001 - a damaged or foreign file is as good as none
        return None


def older(saved: tuple, current: tuple) -> bool:
    """Was `saved` a version before `current` (fewer import batches)? Both as DataAccess.data_version gives them."""
    try:
        return int(saved[0]) < int(current[0])
    except (TypeError, ValueError, IndexError):
        return False
