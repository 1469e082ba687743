"""The files beside a database file that let several processes share it (used by analytics/store.py).

DuckDB lets one process write a file and then no other process may even read it; several
processes may read it together only while none writes. Three small files beside `DB` make the
dashboard work around that (docs/architecture.md, "The store"):

- `DB.state` (JSON, replaced atomically, written only by the process holding the write lock):
  `generation`, moved on by every write, and `snapshot`, the generation the snapshot holds.
  A reader that finds the file locked by a writer reads the snapshot only when the two are
  equal: then nothing was committed since it was made. `writer` is the pid of a writer that has
  not finished; a new writer that finds one moves the generation on (the old one may have
  committed before it died).
- `DB.snapshot` (a DuckDB file, read-only for everyone): a copy of `DB` as last committed,
  made by a long write (an import) just before it starts writing, so that other processes read
  the last committed version while it runs instead of waiting for it. Replaced by rename, never
  written in place: a reader attached to the old copy keeps reading it.
- `DB.journal` (JSON lines, each fsynced before `append` returns): writes a page could not make
  because another process held the write lock (an audit entry of a record view, sign-in
  bookkeeping, session changes). The store applies them, in order, at the start and end of its
  next write (`store.flush_journal`). Appends from several threads and processes are serialised by
  an flock on `DB.journal.lock`; a flush renames the journal aside (`DB.journal.<ns>.flushing`)
  under the same lock, applies it in one transaction and deletes it, so an entry is applied at
  least once: a flush that died after its commit leaves the renamed file behind, and the next
  flush asks each entry's kind whether it is already in the database before applying it again.

- `DB.intents/` (a folder of empty files, one per write waiting for the file, named by its pid; there only
  while a write waits): DuckDB
  gives the file to a writer only when no other process has it open, and a dashboard process under
  load always has some read going on. While an intent younger than `INTENT_YIELD_SECONDS` is there,
  other processes start no new read of the file (the snapshot excepted, when it is current), so their
  attachments close as their current reads end and the writer gets in; after that a reader goes on
  regardless, so a writer that cannot get in never holds the readers up for long.

No DuckDB here: only files, so the layout can be read and tested on its own. Nothing here opens
the database file itself (see `publish_snapshot`).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Iterator


def state_path(db: Path) -> Path:
    return Path(str(db) + ".state")


def snapshot_path(db: Path) -> Path:
    return Path(str(db) + ".snapshot")


def journal_path(db: Path) -> Path:
    return Path(str(db) + ".journal")


def _journal_lock_path(db: Path) -> Path:
    return Path(str(db) + ".journal.lock")


# --- state ---------------------------------------------------------------------------------------

def read_state(db: Path) -> dict:
    """{"generation": int, "snapshot": int | None, "writer": pid | None}; zeros when there is no state yet."""
    try:
        state = json.loads(state_path(db).read_text())
        if isinstance(state, dict) and isinstance(state.get("generation"), int):
            return state
    except (OSError, ValueError):
        pass
    return {"generation": 0, "snapshot": None, "writer": None}


def write_state(db: Path, state: dict) -> None:
    """Replace the state file atomically (only the holder of the write lock calls this)."""
    path = state_path(db)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)


def pid_alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- writes waiting for the file ------------------------------------------------------------------

INTENT_YIELD_SECONDS = float(os.environ.get("OUTCOMES_WRITE_YIELD", "1.0"))


def _intents_path(db: Path) -> Path:
    return Path(str(db) + ".intents")


def announce_write(db: Path) -> Path | None:
    """Say that this process waits to write `db` (until `withdraw_write`); None when it cannot be said
    (e.g. a read-only folder: the write then simply waits as before)."""
    folder = _intents_path(db)
    path = folder / f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
    for _ in range(3):  # the folder goes with its last intent: another writer may remove it just now
        try:
            folder.mkdir(exist_ok=True)
            path.touch()
            return path
        except FileNotFoundError:
            continue
        except OSError:
            return None
    return None


def withdraw_write(path: Path | None) -> None:
    """The write got the file or gave up; the folder goes too when no other write waits."""
    if path is not None:
        with contextlib.suppress(OSError):
            path.unlink()
        with contextlib.suppress(OSError):
            path.parent.rmdir()  # fails while another intent is in it


def foreign_write_waiting(db: Path, now: float | None = None) -> bool:
    """Does another live process wait to write `db`, announced less than INTENT_YIELD_SECONDS ago?
    (A scan of a folder that is empty or absent nearly always: a few microseconds.)"""
    try:
        entries = list(os.scandir(_intents_path(db)))
    except OSError:
        return False
    me, now = os.getpid(), time.time() if now is None else now
    for entry in entries:
        try:
            pid = int(entry.name.split("-", 1)[0])
            age = now - entry.stat().st_mtime
        except (ValueError, OSError):
            continue
        if pid == me:
            continue
        if not pid_alive(pid):
            withdraw_write(Path(entry.path))  # left by a process that died waiting
            continue
        if age < INTENT_YIELD_SECONDS:
            return True
    return False


def snapshot_current(db: Path) -> bool:
    """Does the snapshot hold everything committed to `db` (and exist)?"""
    state = read_state(db)
    return state.get("snapshot") == state["generation"] and snapshot_path(db).exists()


def change_stamp(db: Path) -> tuple:
    """Changes whenever `db` may have changed: the state's generation (every write through the store)
    and the size and modification time of the file and its write-ahead log (any other writer)."""
    parts: list = [read_state(db)["generation"]]
    for path in (db, Path(str(db) + ".wal")):
        try:
            st = os.stat(path)
            parts += [st.st_mtime_ns, st.st_size, st.st_ino]
        except OSError:
            parts += [None, None, None]
    return tuple(parts)


# --- snapshot -------------------------------------------------------------------------------------

def publish_snapshot(db: Path) -> float:
    """Copy `db` (checkpointed, no write-ahead log) over the snapshot by rename; seconds it took.

    The copy is made by a child process: DuckDB locks the file with a POSIX (fcntl) lock, which the
    kernel drops as soon as the process holding it closes *any* descriptor of that file, so opening
    and closing the database file here, while this process holds it for writing, would let another
    process open it mid-write (tests/test_store.py shows it).
    """
    started = time.perf_counter()
    tmp = copy_for_snapshot(db)
    try:
        adopt_snapshot(db, tmp)
    finally:
        tmp.unlink(missing_ok=True)
    return time.perf_counter() - started


def copy_for_snapshot(db: Path) -> Path:
    """A read-only copy of `db` beside the snapshot (by a child process: see `publish_snapshot`), to be
    adopted as the snapshot (`adopt_snapshot`) or removed."""
    target = snapshot_path(db)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        subprocess.run(["cp", "--", str(db), str(tmp)], check=True, capture_output=True)
        os.chmod(tmp, 0o400 | (os.stat(db).st_mode & 0o040))  # read-only: nothing writes a snapshot in place
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def adopt_snapshot(db: Path, copy: Path) -> None:
    """`copy` (from `copy_for_snapshot`) becomes the snapshot, by rename: a reader of the old one reads on."""
    os.replace(copy, snapshot_path(db))


# --- journal --------------------------------------------------------------------------------------

@contextlib.contextmanager
def _journal_locked(db: Path) -> Iterator[None]:
    fd = os.open(_journal_lock_path(db), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def _fsync_directory(path: Path) -> None:
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def journal_append(db: Path, kind: str, payload: dict) -> str:
    """Append one entry, durable (fsynced, with its directory entry) when this returns; its id."""
    entry = {"id": uuid.uuid4().hex, "kind": kind, "queued_at": time.time(), "payload": payload}
    line = (json.dumps(entry, separators=(",", ":"), default=str) + "\n").encode()
    path = journal_path(db)
    with _journal_locked(db):
        created = not path.exists()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
        except BaseException:
            os.close(fd)
            raise
    # Synced after the lock is let go, so concurrent appends share one journal commit of the file
    # system instead of queueing for one each; a flush that renamed the file meanwhile does not matter:
    # the descriptor is the same file.
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        _fsync_directory(path)
    return entry["id"]


def journal_pending(db: Path) -> bool:
    """Is anything waiting in the journal (a stat: cheap enough for every write)?"""
    try:
        if journal_path(db).stat().st_size > 0:
            return True
    except OSError:
        pass
    return bool(_flushing_files(db))


def _flushing_files(db: Path) -> list[Path]:
    prefix = journal_path(db).name + "."
    try:
        return sorted(p for p in db.parent.iterdir() if p.name.startswith(prefix) and p.name.endswith(".flushing"))
    except OSError:
        return []


def journal_entries(path: Path) -> list[dict]:
    """The complete entries of a journal file in order (a last line cut short by a crash during its
    append was never acknowledged to anyone, so it is left out)."""
    try:
        data = path.read_bytes()
    except OSError:
        return []
    out = []
    for raw in data.split(b"\n")[:-1] if not data.endswith(b"\n") else data.split(b"\n"):
        if not raw.strip():
            continue
        try:
            out.append(json.loads(raw))
        except ValueError:
            continue  # a torn line
    return out


def take_journal(db: Path) -> list[tuple[Path, bool]]:
    """The journal files to apply, oldest first, each with `recovered` (True: left by a flush that died,
    so some entries may already be applied). The current journal is renamed aside under the lock, so
    appends that come meanwhile start a new one. Call only while holding the database's write lock."""
    left_behind = [(p, True) for p in _flushing_files(db)]
    path = journal_path(db)
    with _journal_locked(db):
        try:
            if path.stat().st_size == 0:
                return left_behind
        except OSError:
            return left_behind
        taken = path.with_name(f"{path.name}.{time.time_ns():020d}.flushing")
        os.replace(path, taken)
    return left_behind + [(taken, False)]


def journal_done(path: Path) -> None:
    path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        _fsync_directory(path)


def pending_entries(db: Path, kind: str | None = None) -> list[dict]:
    """Entries not yet applied (the journal and any file a flush left), oldest first."""
    files = [p for p, _ in [(f, True) for f in _flushing_files(db)]] + [journal_path(db)]
    entries = [e for f in files for e in journal_entries(f)]
    return [e for e in entries if kind is None or e.get("kind") == kind]
