"""The users part of the benchmark (`python -m analytics bench --patients N --users U`).

Simulated users are real dashboard sessions: `tools/loadclient.py` speaks Streamlit's websocket
protocol as a browser tab does (sign-in form, then each role's flow: clinicians the Due list and
their patients, directors Cohort outcomes and Durability and maintenance). It runs as a child
process (`python -m tools.loadclient ... --json`), so neither its CPU nor the server's is this
process's, and this module never imports Streamlit.

Against a copy of the benchmark's database with one clinician account per clinician handle and
two directors, one server is started the way `make run` starts it (`python -m analytics serve`),
and, in order:

1. `first_cohort_s`: the first director's sign-in after the server answers its health check; the
   sign-in run draws Cohort outcomes, the director's landing page, so it is the first cohort
   visit ever to this data version: every table is built (`first_durability_s`: the same
   director's first Durability). The server saves the tables it built beside the database
   (analytics/screens/saved.py); once they are saved it is stopped and started again, and
   `cold_cohort_s` (`cold_durability_s`) is the same visit after that restart: the first cohort
   visit after a server start, as at a clinic whose server restarts on data it served before;
2. a warm-up: every account runs its flow once;
3. U users for `duration` seconds: `users_p50_s`, `users_p95_s` over every signed-in page run
   (the flows' pages; the sign-ins themselves are reported apart), `users_errors` over every run,
   sign-ins included; with `think_s` 0 (the default, as the issue's baseline) each user asks for the
   next page as soon as one finishes, so this is the server's capacity, not a day's traffic;
4. `after_write_cohort_s`: one assessment imported by another process (a new data version), then
   a director's first cohort visit (a sign-in landing on it);
5. U users again, and once every one has signed in (and 5 s more), `python -m analytics import` of
   a large assessments file in another process: `users_during_import_p95_s` over the signed-in page
   runs that overlapped that process (its reading and checking as well as its write);
6. `users_idle` seconds with nobody connected: the server's resident memory afterwards.

The server's CPU seconds and resident memory are read from /proc for its whole process tree
(the launcher, every dashboard process and the proxy). Every figure has the one-minute load average
beside it: the machine may be shared.

This is the one load module: the benchmark, `tools/benchusers.py` (the users part alone) and
`tools/loadbaseline.py` (user levels, Streamlit options compared) start and measure the server
with it, and `tools/loadclient.py` (the client, which needs Streamlit's protobuf classes and so
cannot live in analytics/) takes its percentile and session pages from it.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
DIRECTORS = ("director", "director2")
SESSION_PAGES = ("connect", "login", "sign-in")  # what a user's session starts with, before any flow step
FLOW_PAGES_EXCLUDED = SESSION_PAGES


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


# --- the server's process tree ------------------------------------------------------------------

def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        tree.setdefault(int(fields[1]), []).append(int(entry.name))
    return tree


def process_tree(pid: int) -> list[int]:
    tree, out, todo = _children(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(tree.get(p, []))
    return out


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of `pid` and its descendants (those alive now, and the reaped
    children's time their parents collected)."""
    total = 0.0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15]) / TICKS  # utime, stime, cutime, cstime
    return total


def tree_rss_mb(pid: int) -> float:
    total = 0
    for p in process_tree(pid):
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1])
        except OSError:
            continue
    return total * PAGE / 2**20


class Sampler(threading.Thread):
    """The server tree every `every` seconds: `rows` of (seconds since start, CPU seconds, RSS MB, one-minute
    load average), its peak RSS (`peak_mb`), and any window's figures (`window`)."""

    def __init__(self, pid: int, every: float = 1.0):
        super().__init__(daemon=True)
        self.pid, self.every, self.peak_mb, self.rows, self.t0 = pid, every, 0.0, [], time.perf_counter()
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            rss = tree_rss_mb(self.pid)
            self.peak_mb = max(self.peak_mb, rss)
            self.rows.append((time.perf_counter() - self.t0, tree_cpu_s(self.pid), rss, load_average()))
            self._halt.wait(self.every)

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def window(self, start: float, end: float) -> dict:
        """The server's CPU, its share of a core, RSS and load average between two offsets (seconds since start)."""
        rows = [r for r in self.rows if start <= r[0] <= end]
        if len(rows) < 2:
            return {}
        cpu, wall = rows[-1][1] - rows[0][1], rows[-1][0] - rows[0][0]
        return {"server_cpu_s": round(cpu, 2), "server_cpu_share": round(cpu / wall, 2),
                "rss_start_mb": round(rows[0][2]), "rss_end_mb": round(rows[-1][2]),
                "rss_peak_mb": round(max(r[2] for r in rows)), "loadavg_start": rows[0][3], "loadavg_end": rows[-1][3]}


# --- preparing the database and the accounts ----------------------------------------------------

def prepare(source_db: Path, work: Path, today: str) -> tuple[Path, Path, dict]:
    """A copy of `source_db` with accounts (every clinician handle as a clinician, two directors, one random
    password); returns the copy, the accounts file for the load client, and the accounts (`accounts`, in
    the order users take them) with the first `clinician` and `director`."""
    from . import auth
    from .access import DataAccess

    work.mkdir(parents=True, exist_ok=True)
    db = work / "users.duckdb"
    for suffix in ("", ".wal"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    shutil.rmtree(saved_tables(db), ignore_errors=True)  # a previous run's: the first visit builds everything
    shutil.copyfile(source_db, db)
    if Path(str(source_db) + ".wal").exists():
        shutil.copyfile(str(source_db) + ".wal", str(db) + ".wal")
    password = secrets.token_urlsafe(18)
    patients = DataAccess(db).patients()
    existing = set(auth.list_users(db)["username"])

    def account(name: str, role: str) -> None:
        if name in existing:
            auth.set_role(db, name, role, actor="bench")
            auth.reset_password(db, name, password, actor="bench")
            auth.enable_user(db, name, actor="bench")
        else:
            auth.create_user(db, name, role, password, actor="bench")

    clinicians, directors = user_accounts(patients, password)
    for who in clinicians + directors:
        account(who["username"], who["role"])
    accounts = interleaved(clinicians, directors)
    path = work / "accounts.json"
    path.write_text(json.dumps(accounts))
    os.chmod(path, 0o600)
    return db, path, {"accounts": accounts, "clinician": clinicians[0], "director": directors[0]}


def user_accounts(patients, password: str, directors=DIRECTORS) -> tuple[list[dict], list[dict]]:
    """The simulated users' accounts: one clinician per clinician handle of `patients` (named after it, with
    the first 50 of their patients for the flow to open) and the `directors`, all with `password`."""
    clinicians = [{"username": str(handle), "password": password, "role": "clinician",
                   "patients": group["patient_id"].sort_values().head(50).tolist()}
                  for handle, group in patients.groupby("clinician")]
    return clinicians, [{"username": name, "password": password, "role": "director"} for name in directors]


def interleaved(clinicians: list, directors: list) -> list:
    """clinician, director, clinician, clinician, director, ...: any number of users mixes both roles."""
    accounts, queues = [], {"c": list(clinicians), "d": list(directors)}
    while queues["c"] or queues["d"]:
        for which in "cdc":
            if queues[which]:
                accounts.append(queues[which].pop(0))
    return accounts


def one_assessment_csv(path: Path, patient_id: str, day: str) -> Path:
    path.write_text("patient_id,instrument,administered_on,rater,item_1,item_2,item_3,item_4,item_5,item_6,item_7,"
                    f"item_8,item_9\n{patient_id},PHQ-9,{day},self,1,1,1,1,1,1,1,1,0\n")
    return path


def large_assessments_csv(path: Path, patient_ids: list[str], rows: int, seed: int = 1) -> Path:
    """`rows` PHQ-9 assessments (all items given) for these patients, one per patient per day from 2024-02-01:
    many replace a score already there (a re-import), so the write phase updates as well as inserts."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    index = np.arange(rows)
    days = pd.Timestamp("2024-02-01") + pd.to_timedelta(index // len(patient_ids), unit="D")
    frame = pd.DataFrame({"patient_id": np.asarray(patient_ids)[index % len(patient_ids)], "instrument": "PHQ-9",
                          "administered_on": days.strftime("%Y-%m-%d"), "rater": "self"})
    for i in range(1, 10):
        frame[f"item_{i}"] = rng.integers(0, 4, rows)
    frame.to_csv(path, index=False)
    return path


def saved_tables(db: Path) -> Path:
    from .screens import saved

    return saved.folder(db)


def wait_for_saved_tables(db: Path, since: float, timeout: float = 180, quiet: float = 4.0) -> bool:
    """Wait until the server has saved tables after `since` (time.time()) and written nothing for `quiet` s."""
    folder, deadline, last = saved_tables(db), time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        stamps = sorted((p.name, p.stat().st_mtime) for p in folder.glob("*.tables")) if folder.is_dir() else []
        if any(mtime >= since for _name, mtime in stamps):
            if stamps == last:
                return True
            last = stamps
            time.sleep(quiet)
        else:
            time.sleep(0.5)
    return False


# --- the server ---------------------------------------------------------------------------------

def server_command(port: int, processes: int | None, streamlit_options: list[str] = ()) -> list[str]:
    """What `make run` runs (analytics/serve.py), on `port`; with `streamlit_options` (`--section.key value`
    arguments, to compare settings) one `streamlit run serve.py` process with those options instead."""
    if streamlit_options:
        return [sys.executable, "-m", "streamlit", "run", str(REPO / "serve.py"), "--server.port", str(port),
                "--server.address", "127.0.0.1", "--server.headless", "true", *streamlit_options]
    command = [sys.executable, "-m", "analytics", "serve", "--port", str(port), "--address", "127.0.0.1"]
    if processes:
        command += ["--processes", str(processes)]
    return command


def import_command_env(today: str | None) -> dict:
    """The environment of the benchmark's `python -m analytics import`: the server's settings (its clinic day),
    as a clinic runs both from one configuration. The saved clinic model is keyed by the OUTCOMES_ settings
    (saved.fingerprint): an import with other settings saves a model the dashboard may not use, so the
    dashboard fitted its own beside it."""
    env = dict(os.environ)
    if today:
        env["OUTCOMES_TODAY"] = today
    return env


def start_server(db: Path, log: Path, today: str | None, processes: int | None, timeout: float = 180, *,
                 streamlit_options: list[str] = (), extra_env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """The dashboard server on `db` (see `server_command`), answering its health check; (process, base URL)."""
    port = free_port()
    env = dict(os.environ, OUTCOMES_DB=str(db), STREAMLIT_BROWSER_GATHER_USAGE_STATS="false",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])), **(extra_env or {}))
    if today:
        env["OUTCOMES_TODAY"] = today
    out = open(log, "w")
    proc = subprocess.Popen(server_command(port, processes, list(streamlit_options)), cwd=REPO, env=env, stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_server(proc)
            raise RuntimeError(f"the dashboard server did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.3)


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with _quiet():
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with _quiet():
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


class _quiet:
    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        return kind is not None and issubclass(kind, ProcessLookupError)


# --- the load client ------------------------------------------------------------------------------

def load(url: str, accounts_file: Path, users: int, *, duration: float | None = None, rounds: int | None = None,
         think: float = 0.0, stop_file: Path | None = None, ready_file: Path | None = None, timeout: float = 120) -> dict:
    """One run of `python -m tools.loadclient` (its JSON summary, with every sample)."""
    command = [sys.executable, "-m", "tools.loadclient", url, "--users", str(users), "--accounts", str(accounts_file),
               "--timeout", str(timeout), "--json", "--samples"]
    if duration is not None:
        command += ["--duration", str(duration)]
    if rounds is not None:
        command += ["--rounds", str(rounds)]
    if think:
        command += ["--think", str(think)]
    if stop_file is not None:
        command += ["--stop-file", str(stop_file)]
    if ready_file is not None:
        command += ["--ready-file", str(ready_file)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if done.returncode not in (0, 1):  # 1: some page run failed (counted in the summary)
        raise RuntimeError(f"the load client failed (exit {done.returncode}): {done.stderr.strip()[-1500:]}")
    return json.loads(done.stdout)


def _keep_samples(path: Path, summary: dict, **extra) -> None:
    """Every page run of one phase (user number, page, start and seconds from the phase's start, error) beside
    the run, for looking into a tail afterwards: which pages, which users, when."""
    path.write_text(json.dumps({"started_at": summary["started_at"], **extra, "samples": summary["samples"]}))


def flow_times(summary: dict, window: tuple[float, float] | None = None) -> list[float]:
    """Seconds of the successful signed-in page runs (not connect, sign-in form or sign-in), optionally
    only those overlapping `window` (wall-clock seconds)."""
    t0 = summary["started_at"]
    out = []
    for _user, page, started, seconds, error in summary["samples"]:
        if error or page in FLOW_PAGES_EXCLUDED:
            continue
        if window is not None:
            begin = t0 + started
            if not (begin <= window[1] and begin + seconds >= window[0]):
                continue
        out.append(seconds)
    return out


def percentile(values, q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default), None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _first(summary: dict, page: str) -> float | None:
    for _user, name, _started, seconds, error in summary["samples"]:
        if name == page:
            return None if error else seconds
    return None


def _errors(summary: dict) -> list[str]:
    return summary.get("error_samples") or []


def _director_visit(name: str, url: str, director_file: Path, proc: subprocess.Popen, timeout: float = 120) -> dict:
    """One director's sign-in (landing on Cohort outcomes, the cohort visit) then Durability, as `<name>_cohort_s`,
    `<name>_durability_s`, `<name>_errors`, the load average before it and the server's CPU seconds for it
    (less sensitive than wall clock to what else the machine is doing)."""
    load_start, cpu_start = load_average(), tree_cpu_s(proc.pid)
    visit = load(url, director_file, 1, rounds=1, timeout=timeout)
    return {f"{name}_server_cpu_s": round(tree_cpu_s(proc.pid) - cpu_start, 2),
            f"{name}_cohort_s": _first(visit, "sign-in"), f"{name}_durability_s": _first(visit, "durability"),
            f"{name}_load_average": load_start, f"{name}_errors": visit["errors"]}


# --- the whole users part ----------------------------------------------------------------------------

def run_users(source_db: Path, work: Path, users: int, *, today: str, duration: float = 60, think: float = 0.0,
              idle: float = 30, import_rows: int | None = None, processes: int | None = None,
              say=lambda message: None) -> dict:
    """Every users figure (see the module docstring); keys prefixed users_, cold_, after_write_."""
    result: dict = {"users": users, "users_think_s": think, "users_duration_s": duration}
    db, accounts_file, prepared = prepare(source_db, work, today)
    accounts, director, clinician = prepared["accounts"], prepared["director"], prepared["clinician"]
    with tempfile.TemporaryDirectory(prefix="bench-users-") as tmp:
        tmp = Path(tmp)
        (tmp / "director.json").write_text(json.dumps([director]))
        say("users: starting the dashboard server")
        proc, url = start_server(db, work / "server-first.log", today, processes)
        sampler = Sampler(proc.pid)
        sampler.start()
        try:
            result["users_server_rss_start_mb"] = round(tree_rss_mb(proc.pid))
            say("users: first director visit (nothing built yet)")
            since = time.time()
            result.update(_director_visit("first", url, tmp / "director.json", proc, timeout=900))  # fits the model

            say("users: restart, then the first director visit again (cold)")
            result["cold_tables_saved"] = wait_for_saved_tables(db, since)
            sampler.stop()
            stop_server(proc)
            proc, url = start_server(db, work / "server.log", today, processes)
            sampler = Sampler(proc.pid)
            sampler.start()
            result.update(_director_visit("cold", url, tmp / "director.json", proc, timeout=900))
            say("users: warm-up (every account once)")
            warm = load(url, accounts_file, len(accounts), rounds=1)
            result["users_warmup_errors"] = warm["errors"]

            say(f"users: {users} users for {duration:g} s")
            cpu0, load0 = tree_cpu_s(proc.pid), load_average()
            run = load(url, accounts_file, users, duration=duration, think=think)
            cpu = tree_cpu_s(proc.pid) - cpu0
            _keep_samples(work / "samples-users.json", run)
            flow = flow_times(run)
            result.update({
                "users_p50_s": percentile(flow, 50), "users_p95_s": percentile(flow, 95),
                "users_max_s": max(flow) if flow else None, "users_errors": run["errors"],
                "users_runs": run["runs"], "users_flow_runs": len(flow),
                "users_runs_per_s": run["runs_per_s"], "users_sign_in_p95_s": run["per_page"].get("sign-in", {}).get("p95_s"),
                "users_per_page_p95_s": {page: row["p95_s"] for page, row in run["per_page"].items()},
                "users_server_cpu_s": round(cpu, 2),
                "users_server_cpu_per_run_s": round(cpu / run["runs"], 4) if run["runs"] else None,
                "users_server_cores": round(cpu / run["duration_s"], 2) if run["duration_s"] else None,
                "users_client_cpu_s": run["client_cpu_s"],
                "users_load_average": [load0, load_average()],
                "users_error_samples": _errors(run),
            })

            say("users: one assessment recorded, then a director's first cohort visit")
            patient = clinician["patients"][0]
            small = one_assessment_csv(tmp / "one.csv", patient, today)
            done = subprocess.run([sys.executable, "-m", "analytics", "import", "--db", str(db), str(small)],
                                  cwd=REPO, capture_output=True, text=True, env=import_command_env(today))
            result["after_write_import_exit"] = done.returncode
            result.update(_director_visit("after_write", url, tmp / "director.json", proc))

            if import_rows:
                say(f"users: {users} users while {import_rows:,} assessments are imported")
                from .access import DataAccess

                ids = sorted(DataAccess(db).patients()["patient_id"])
                big = large_assessments_csv(tmp / "import.csv", ids, import_rows)
                stop, ready = tmp / "stop", tmp / "ready"
                window: dict = {}

                def importer():
                    deadline = time.monotonic() + 600
                    while not ready.exists() and time.monotonic() < deadline:
                        time.sleep(0.2)
                    time.sleep(5)  # every user is signed in: the import overlaps their pages, not their sign-ins
                    window["start"] = time.time()
                    done = subprocess.run([sys.executable, "-m", "analytics", "import", "--db", str(db), str(big)],
                                          cwd=REPO, capture_output=True, text=True, env=import_command_env(today))
                    window["end"] = time.time()
                    window["exit"] = done.returncode
                    window["stderr"] = done.stderr[-500:]
                    time.sleep(5)
                    stop.write_text("done")

                thread = threading.Thread(target=importer, daemon=True)
                load0, cpu0 = load_average(), tree_cpu_s(proc.pid)
                thread.start()
                during = load(url, accounts_file, users, think=think, stop_file=stop, ready_file=ready, duration=900)
                thread.join()
                cpu = tree_cpu_s(proc.pid) - cpu0
                _keep_samples(work / "samples-during-import.json", during,
                              import_window=[window["start"] - during["started_at"], window["end"] - during["started_at"]])
                overlapping = flow_times(during, (window["start"], window["end"]))
                result.update({
                    "users_during_import_p95_s": percentile(overlapping, 95),
                    "users_during_import_p50_s": percentile(overlapping, 50),
                    "users_during_import_runs": len(overlapping),
                    "users_during_import_errors": during["errors"],
                    "users_during_import_error_samples": _errors(during),
                    "users_import_s": round(window["end"] - window["start"], 2),
                    "users_import_exit": window["exit"],
                    "users_import_rows": import_rows,
                    "users_during_import_load_average": [load0, load_average()],
                    # the dashboard server's CPU over the whole phase (sign-ins, the import, 5 s after it), per page
                    # run: what the server did beside the pages (rebuilding the views for the new data) shows here
                    "users_during_import_server_cpu_per_run_s": round(cpu / during["runs"], 4) if during["runs"] else None,
                })
                if window["exit"] not in (0, 1):
                    result["users_import_stderr"] = window["stderr"]

            result["users_server_rss_peak_mb"] = round(max(sampler.peak_mb, tree_rss_mb(proc.pid)))
            result["users_server_rss_loaded_mb"] = round(tree_rss_mb(proc.pid))
            if idle:
                say(f"users: {idle:g} s idle")
                time.sleep(idle)
                result["users_server_rss_idle_mb"] = round(tree_rss_mb(proc.pid))
                result["users_idle_s"] = idle
        finally:
            sampler.stop()
            stop_server(proc)
    return result
