"""One private temporary folder per process, and the clean-up of those left by dead processes.

An import stages rows (Parquet), copies a file's good records for the parser and
lets DuckDB spill to disk: all of it holds patient rows, so all of it goes into
`work_dir()`, a 0700 folder under the system temporary directory
(`$TMPDIR`, else /tmp) named `outcomes-work-<pid>-<random>`. The folder is removed
when the process exits normally (atexit) and each piece of work removes its own
files in `finally` blocks; a process killed with SIGKILL (or by the OOM killer)
runs neither, so the first `work_dir()` of every later process removes the
folders of processes that no longer exist.

"No longer exists" is decided by a lock, not by the pid (pids are reused, and
differ between containers sharing /tmp): each process holds an exclusive
`flock` on `<folder>/.lock` for its lifetime, which the kernel releases however
the process ends. A folder whose lock can be taken is stale.
"""
from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

PREFIX = "outcomes-work-"
LOCK_NAME = ".lock"
# A folder without a lock file is being created (or its creator died in that instant): left alone this long.
UNLOCKED_GRACE_SECONDS = 600

_lock = threading.Lock()
_state: dict = {"pid": None, "path": None, "fd": None}

try:
    import fcntl
except ImportError:  # not POSIX: no locks, so stale folders are only recognised by age
    fcntl = None


def work_dir() -> Path:
    """This process's private temporary folder (created, and stale ones removed, on first use)."""
    with _lock:
        if _state["pid"] == os.getpid() and _state["path"] is not None and _state["path"].is_dir():
            return _state["path"]
        remove_stale()
        path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-"))
        fd = os.open(path / LOCK_NAME, os.O_CREAT | os.O_RDWR, 0o600)
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        _state.update(pid=os.getpid(), path=path, fd=fd)
        atexit.register(_remove_own, path, os.getpid())
        return path


def new_dir(prefix: str) -> Path:
    """A fresh folder inside `work_dir()` (the caller removes it when done)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir=work_dir()))


def new_file(suffix: str) -> Path:
    """A fresh empty file inside `work_dir()` (the caller removes it when done)."""
    fd, name = tempfile.mkstemp(suffix=suffix, dir=work_dir())
    os.close(fd)
    return Path(name)


def _remove_own(path: Path, pid: int) -> None:
    if os.getpid() != pid:  # a forked child inherits atexit handlers: the folder is its parent's
        return
    shutil.rmtree(path, ignore_errors=True)
    fd = _state.get("fd")
    if fd is not None and _state.get("path") == path:
        with contextlib.suppress(OSError):
            os.close(fd)
        _state.update(pid=None, path=None, fd=None)


def remove_stale(root: str | os.PathLike | None = None) -> list[Path]:
    """Remove the work folders of processes that have ended; returns what was removed."""
    root = Path(root or tempfile.gettempdir())
    removed = []
    try:
        candidates = [p for p in root.iterdir() if p.name.startswith(PREFIX)]
    except OSError:
        return removed
    for folder in candidates:
        if folder == _state.get("path"):
            continue
        if _is_stale(folder):
            shutil.rmtree(folder, ignore_errors=True)
            if not folder.exists():
                removed.append(folder)
    return removed


def _is_stale(folder: Path) -> bool:
    try:
        if not folder.is_dir() or folder.is_symlink() or folder.stat().st_uid != os.getuid():
            return False  # only our own folders
        lock = folder / LOCK_NAME
        if not lock.exists():
            return time.time() - folder.stat().st_mtime > UNLOCKED_GRACE_SECONDS
        if fcntl is None:
            return time.time() - lock.stat().st_mtime > 7 * 86400
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # its process holds the lock: alive
    finally:
        os.close(fd)  # closing releases the lock we may have taken
    return True
