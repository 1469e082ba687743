"""A throwaway PostgreSQL cluster: for the test suite, `.ci/run` and `make run-network`.

    with Cluster() as pg:            # initdb in a temp folder, a free port, 127.0.0.1 only
        run_things(pg.url)           # postgresql://outcomes:<random>@127.0.0.1:<port>/outcomes
    # stopped and its folder removed here (and at interpreter exit, and if this process dies)

or from a shell, around any command (the URL is in $OUTCOMES_PG_URL, and in the variable
named by --env as well):

    python pgcluster.py run --env OUTCOMES_DB -- python -m pytest -q tests
    python pgcluster.py check        # exit 0 when a cluster can start here, else 3 and why

Why it is built this way
- PostgreSQL refuses to run as root, and CI runs as root: then initdb and the server run as
  the `postgres` system user (Debian's package creates it), the same as
  `runuser -u postgres -- initdb ...`, done with subprocess's user=/group= so no PAM session
  or extra process sits in between. When not root, everything runs as the current user.
- The temp folder is created 0700 and handed to that user; it holds the data directory, the
  Unix socket and the server log. Its parents must let that user through (/tmp does): a
  TMPDIR under /root would not, so the check says so instead of letting initdb fail obscurely.
- The server is this process's child (not daemonised by pg_ctl) in a session of its own,
  started under `setpriv --pdeathsig SIGQUIT`, so when this process dies, even by SIGKILL,
  the server stops at once instead of living on, while a Ctrl-C reaches only the caller. The signal follows the *thread* that started the
  server: start it from a thread that outlives the cluster (the main thread, a pytest
  session fixture). The folder of a cluster whose maker was killed stays behind: the next
  start removes such folders (maker and server both dead; `owner.pid` names the maker).
- Connections: TCP on 127.0.0.1 with a password (scram-sha-256), and a Unix socket inside
  the private folder (trust). Nothing listens on other addresses.
- fsync, full_page_writes and synchronous_commit are off by default (`durable=False`): a
  crash loses the cluster, which is thrown away anyway. Pass durable=True to measure writes.
- Locale C and UTF-8: ORDER BY on text then sorts by code point, as DuckDB does.

Needs the server binaries (Debian: `apt-get install -y postgresql`, found under
/usr/lib/postgresql/<version>/bin; $PG_BINDIR overrides) and nothing from PyPI.
"""
from __future__ import annotations

import argparse
import atexit
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SERVER_USER = "postgres"  # the system user the server runs as when we are root
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
EXIT_UNAVAILABLE = 3  # `check` and `run`: no cluster can start here


class ClusterUnavailable(RuntimeError):
    """PostgreSQL cannot be started here (binaries or system user missing, folder unreachable...)."""


# --- where things are ------------------------------------------------------------------

def find_bindir() -> Path:
    """The directory holding initdb and postgres: $PG_BINDIR, else the newest /usr/lib/postgresql/N/bin, else PATH."""
    explicit = os.environ.get("PG_BINDIR")
    candidates = [Path(explicit)] if explicit else []
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"),
                      key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else -1, reverse=True)
    candidates += versions
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "postgres").is_file():
            return folder
    raise ClusterUnavailable("no PostgreSQL server binaries (initdb, postgres) found: "
                             "install them with `apt-get install -y postgresql` or set PG_BINDIR")


def _server_identity() -> tuple[int, int] | None:
    """(uid, gid) to run the server as, or None to run it as ourselves (we are not root)."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        entry = pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise ClusterUnavailable(f"running as root, and there is no {SERVER_USER!r} system user to run "
                                 "PostgreSQL as (Debian's postgresql package creates it)") from None
    return entry.pw_uid, entry.pw_gid


def _reachable(path: Path, uid: int, gid: int) -> bool:
    """May (uid, gid) pass through `path` and every folder above it (search permission on each)?"""
    path = path.resolve()
    for folder in [*reversed(path.parents), path]:
        mode = folder.stat()
        if mode.st_uid == uid:
            bit = stat.S_IXUSR
        elif mode.st_gid == gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not mode.st_mode & bit:
            return False
    return True


OWNER_FILE = "owner.pid"  # in each cluster's folder: the process that made it
ABANDONED_AFTER = 600.0  # seconds: a folder without an owner file (an older helper's) is left alone until then


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _pid_in(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def remove_abandoned(base: Path) -> list[Path]:
    """Remove the folders of clusters whose maker died without stopping them (SIGKILL, a CI timeout: the
    server went with it through pdeathsig, the folder stayed): no live maker, no live server. Folders
    this user may not look into are left alone. Returns what was removed."""
    removed = []
    for folder in sorted(base.glob("outcomes-pg-*")):
        try:
            if not folder.is_dir():
                continue
            owner = _pid_in(folder / OWNER_FILE)
            if owner is None and time.time() - folder.stat().st_mtime < ABANDONED_AFTER:
                continue  # being made right now, or an older helper's that may still run
            if owner is not None and _alive(owner):
                continue
            server = _pid_in(folder / "data" / "postmaster.pid")
            if server is not None and _alive(server):
                continue
        except OSError:  # PermissionError: another user's folder
            continue
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            removed.append(folder)
    return removed


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the start retries if one takes it meanwhile)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def available() -> tuple[bool, str]:
    """(True, "") when a cluster can be started here, else (False, why) for a clear skip message."""
    try:
        find_bindir()
        identity = _server_identity()
        if identity is not None and not _reachable(Path(tempfile.gettempdir()), *identity):
            return False, (f"the {SERVER_USER} user cannot reach the temp folder {tempfile.gettempdir()} "
                           "(set TMPDIR to a folder it can enter, e.g. /tmp)")
    except ClusterUnavailable as exc:
        return False, str(exc)
    return True, ""


# --- the cluster -------------------------------------------------------------------------

class Cluster:
    """One throwaway cluster. `start()` returns self; `stop()` is idempotent; also a context manager.

    Attributes after start: url, port, host ("127.0.0.1"), user, password, dbname, folder,
    socket_dir, log_path, timings (seconds: initdb, server, createdb, total).
    """

    def __init__(self, *, port: int | None = None, user: str = "outcomes", dbname: str = "outcomes",
                 durable: bool = False, settings: dict[str, str] | None = None, base_dir: str | None = None):
        self.requested_port = port
        self.user = user
        self.dbname = dbname
        self.password = secrets.token_hex(16)  # hex: nothing to percent-encode in the URL
        self.durable = durable
        self.settings = dict(settings or {})
        self.base_dir = base_dir
        self.host = "127.0.0.1"
        self.port: int | None = None
        self.folder: Path | None = None
        self.timings: dict[str, float] = {}
        self._process: subprocess.Popen | None = None
        self._log = None
        self._identity: tuple[int, int] | None = None

    # -- public ------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the cluster is not running")
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{self.dbname}"

    @property
    def socket_dir(self) -> Path:
        return self.folder

    @property
    def data_dir(self) -> Path:
        return self.folder / "data"

    @property
    def log_path(self) -> Path:
        return self.folder / "server.log"

    def env(self) -> dict[str, str]:
        """libpq variables for psql, pg_dump and friends run against this cluster."""
        return {"PGHOST": self.host, "PGPORT": str(self.port), "PGUSER": self.user,
                "PGPASSWORD": self.password, "PGDATABASE": self.dbname}

    def start(self) -> "Cluster":
        if self._process is not None:
            return self
        began = time.perf_counter()
        bindir = find_bindir()
        self._identity = _server_identity()
        base = Path(self.base_dir or tempfile.gettempdir())
        if self._identity is not None and not _reachable(base, *self._identity):
            raise ClusterUnavailable(f"the {SERVER_USER} user cannot reach {base}: choose a base folder it can enter")
        remove_abandoned(base)
        self.folder = Path(tempfile.mkdtemp(prefix="outcomes-pg-", dir=base))  # 0700
        (self.folder / OWNER_FILE).write_text(f"{os.getpid()}\n")
        atexit.register(self.stop)
        try:
            if self._identity is not None:
                os.chown(self.folder, *self._identity)
            self._initdb(bindir)
            self.timings["initdb"] = time.perf_counter() - began
            self._start_server(bindir)
            self.timings["server"] = time.perf_counter() - began - self.timings["initdb"]
            mark = time.perf_counter()
            self._run([str(bindir / "createdb"), "-h", self.host, "-p", str(self.port), "-U", self.user,
                       "-E", "UTF8", "--strategy=file_copy", self.dbname], as_server=False, env={**os.environ, "PGPASSWORD": self.password})
            self.timings["createdb"] = time.perf_counter() - mark
        except BaseException:
            self.stop()
            raise
        self.timings["total"] = time.perf_counter() - began
        return self

    def stop(self) -> None:
        """Fast shutdown (SIGINT: open sessions are ended), then the folder is removed. Safe to call twice."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            for sig, wait in ((signal.SIGINT, STOP_TIMEOUT), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)):
                process.send_signal(sig)
                try:
                    process.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if self._log is not None:
            self._log.close()
            self._log = None
        folder, self.folder = self.folder, None
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        self.port = None
        atexit.unregister(self.stop)

    def __enter__(self) -> "Cluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- steps -------------------------------------------------------------------------------
    def _run(self, command: list[str], *, as_server: bool = True, env: dict | None = None) -> None:
        result = subprocess.run(command, cwd=self.folder, env=env, capture_output=True, text=True,
                                **(self._drop() if as_server else {}))
        if result.returncode != 0:
            raise ClusterUnavailable(f"{Path(command[0]).name} failed ({result.returncode}): "
                                     f"{(result.stderr or result.stdout).strip()[-2000:]}")

    def _drop(self) -> dict:
        """subprocess arguments that run the child as the server user (when we are root)."""
        if self._identity is None:
            return {}
        uid, gid = self._identity
        return {"user": uid, "group": gid, "extra_groups": []}

    def _initdb(self, bindir: Path) -> None:
        pwfile = self.folder / "pwfile"
        pwfile.write_text(self.password + "\n")
        os.chmod(pwfile, 0o600)
        if self._identity is not None:
            os.chown(pwfile, *self._identity)
        try:
            self._run([str(bindir / "initdb"), "-D", str(self.data_dir), "-U", self.user, f"--pwfile={pwfile}",
                       "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C",
                       "--no-sync", "--no-instructions"],
                      env={**os.environ, "LC_ALL": "C", "TZ": "UTC"})
        finally:
            pwfile.unlink(missing_ok=True)
        # Only the private socket and 127.0.0.1 with a password; nothing else may connect.
        (self.data_dir / "pg_hba.conf").write_text(
            "# throwaway cluster (pgcluster.py)\n"
            "local all all trust\n"
            "host  all all 127.0.0.1/32 scram-sha-256\n")

    def _server_command(self, bindir: Path, port: int) -> list[str]:
        settings = {
            "port": str(port), "listen_addresses": self.host, "unix_socket_directories": str(self.folder),
            "timezone": "UTC", "log_timezone": "UTC", "logging_collector": "off",
        }
        if not self.durable:
            settings.update({"fsync": "off", "full_page_writes": "off", "synchronous_commit": "off"})
        settings.update(self.settings)
        command = [str(bindir / "postgres"), "-D", str(self.data_dir)]
        for name, value in settings.items():
            command += ["-c", f"{name}={value}"]
        setpriv = shutil.which("setpriv")
        if setpriv and sys.platform.startswith("linux"):
            command = [setpriv, "--pdeathsig", "SIGQUIT", "--", *command]
        return command

    def _start_server(self, bindir: Path) -> None:
        self._log = open(self.log_path, "ab")
        if self._identity is not None:
            os.chown(self.log_path, *self._identity)
        attempts = 1 if self.requested_port else 5
        for attempt in range(attempts):
            port = self.requested_port or free_port()
            # Its own session: a Ctrl-C at the terminal reaches the tests (whose teardown may still need the
            # server), not the server; it stops when stop() says so, or when this process dies (pdeathsig).
            self._process = subprocess.Popen(self._server_command(bindir, port), cwd=self.folder, stdin=subprocess.DEVNULL,
                                             stdout=self._log, stderr=self._log, start_new_session=True, **self._drop())
            if self._wait_ready(port):
                self.port = port
                return
            taken = "could not bind" in self._log_tail() or "Address already in use" in self._log_tail()
            self._kill_server()
            if not (taken and attempt + 1 < attempts):
                break
        raise ClusterUnavailable(f"the PostgreSQL server did not start; its log ends with:\n{self._log_tail()}")

    def _kill_server(self) -> None:
        """Immediate shutdown of a server that did not come up (SIGQUIT ends its children too), then SIGKILL."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGQUIT)
            try:
                process.wait(5.0)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def _wait_ready(self, port: int) -> bool:
        """Wait until postmaster.pid says "ready" (what pg_ctl -w waits for) and the port answers."""
        deadline = time.monotonic() + START_TIMEOUT
        pid_file = self.data_dir / "postmaster.pid"
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return False
            try:
                lines = pid_file.read_text().splitlines()
            except OSError:
                lines = []
            if len(lines) >= 8 and lines[7].strip() == "ready":
                try:
                    socket.create_connection((self.host, port), timeout=1).close()
                    return True
                except OSError:
                    pass
            time.sleep(0.02)
        return False

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def start(**options) -> Cluster:
    """Start a cluster (see `Cluster` for the options); stop it with `stop(cluster)` or `cluster.stop()`."""
    return Cluster(**options).start()


def stop(cluster: Cluster) -> None:
    cluster.stop()


# --- command line ------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pgcluster.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("check", help="exit 0 when a throwaway cluster can start here; else 3 and why")
    run = sub.add_parser("run", help="start a cluster, run COMMAND with its URL in the environment, stop it")
    run.add_argument("--port", type=int, default=None, help="fixed port (default: a free one)")
    run.add_argument("--db", default="outcomes", help="database to create (default: outcomes)")
    run.add_argument("--env", action="append", default=[], metavar="NAME",
                     help="also put the URL in this variable (repeatable; $OUTCOMES_PG_URL is always set)")
    run.add_argument("--durable", action="store_true", help="keep fsync on (for write benchmarks)")
    run.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    args = parser.parse_args(argv)

    if args.action == "check":
        ok, why = available()
        print("PostgreSQL: a throwaway cluster can start here" if ok else f"PostgreSQL unavailable: {why}",
              file=sys.stderr)
        return 0 if ok else EXIT_UNAVAILABLE

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("run: give a command after --")
    # SIGTERM (a CI time-out, `kill`) unwinds through the with-block like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        with Cluster(port=args.port, dbname=args.db, durable=args.durable) as pg:
            print(f"pgcluster: PostgreSQL on 127.0.0.1:{pg.port} (database {pg.dbname}), started in "
                  f"{pg.timings['total']:.2f}s; folder {pg.folder}", file=sys.stderr)
            env = {**os.environ, **pg.env(), "OUTCOMES_PG_URL": pg.url, **{name: pg.url for name in args.env}}
            child = subprocess.Popen(command, env=env)
            try:
                return child.wait()
            except BaseException:
                child.terminate()
                child.wait()
                raise
    except ClusterUnavailable as exc:
        print(f"pgcluster: PostgreSQL unavailable: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except KeyboardInterrupt:  # Ctrl-C: the command was ended and the cluster stopped; no traceback
        return 128 + signal.SIGINT


if __name__ == "__main__":
    sys.exit(main())
