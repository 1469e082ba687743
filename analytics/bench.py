"""The clinic-network benchmark (`python -m analytics bench`).

One run (`--patients N`) generates a cohort with the demo generator, writes it
as CSV, and times in this one process what an operator and the dashboard do
with it: the validated import, the cohort page's default view, the patient
page, cycle extraction with the durability estimate, and interval suggestions
for every patient. Each figure is the median of several runs; the pages'
figures are "warm" (the modules imported and the database file read once
before timing, and for the cohort page the frames the page caches already in
memory). Floors say what the least possible work costs on the same machine,
so a ratio says how far the real work is from it.

`--sizes 1000,10000,...` runs one child process per size (so each peak RSS is
that size's own), writes the results file with the machine it ran on, and
draws time against N.

The generator runs in a child process too: its memory is the synthetic data's
cost, not the product's, and is reported separately (`generate_peak_rss_mb`).
Generated CSVs are kept under the work directory (same N and seed give the
same bytes) so repeated runs skip generation.

A figure that cannot be measured (a piece missing, or failing) is null with the
reason in `missing`; the benchmark never hides a failure behind a number.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

from . import memory, scales
from .progress import Progress

REPO = Path(__file__).resolve().parent.parent
DEFAULT_WORK = REPO / "bench" / "work"
# 1,300 days of calendar give the demo cohort about 50 assessments and 15
# infusions per patient (patients enrol throughout, so most have a year or more).
BENCH_DAYS = 1300
BENCH_END = date(2026, 11, 20)
INSTRUMENT = scales.PRIMARY  # the cohort page's default (first in the scale registry)

TIMED = ("import_s", "import_floor_s", "cohort_s", "scan_floor_s", "patient_s", "durability_s", "intervals_s")
KEYS = ("patients", "assessments", "treatments", "import_s", "import_rows_per_s", "import_floor_s",
        "import_floor_ratio", "cohort_s", "scan_floor_s", "cohort_floor_ratio", "patient_s", "durability_s",
        "intervals_s", "peak_rss_mb")
# Targets at 100,000 patients (docs/performance.md); reported, never asserted.
TARGETS = {"import_floor_ratio": 3, "cohort_floor_ratio": 10, "cohort_s": 1, "patient_s": 0.1,
           "durability_s": 10, "intervals_s": 30, "peak_rss_mb": 2000}
MAX_GROWTH_10K_TO_100K = 12



def peak_rss_mb() -> float:
    """Peak resident memory of this process since the last `reset_peak_rss` (Linux reports KiB)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> bool:
    """Start a new peak-memory measurement (Linux clear_refs); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


_budget_end: float | None = None  # monotonic deadline of the figure being measured


class OverBudget(Exception):
    """One figure took longer than the run allows (it is reported null, with the budget)."""


@contextlib.contextmanager
def time_budget(seconds: float | None):
    """Interrupt the enclosed work after `seconds` of wall time (main thread only; None: no limit).

    A figure that would take hours at some size must not stop the other figures
    from being measured; the interruption lands between Python statements, so
    every long loop in the analytics is interruptible.
    """
    global _budget_end
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return
    _budget_end = time.monotonic() + seconds

    def expire(signum, frame):
        raise OverBudget(f"over the time budget of {seconds:g} s for this figure")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        _budget_end = None


def _median_time(fn: Callable[[], object], repeats: int, warm: bool = True) -> tuple[float, object]:
    """Median wall time of `repeats` calls (after one untimed call when `warm`), and the last result.

    Fewer calls when another would not finish within the figure's time budget (at least one).
    """
    result = fn() if warm else None
    times: list[float] = []
    while len(times) < max(1, repeats):
        if times and _budget_end is not None and time.monotonic() + max(times) > _budget_end:
            break
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


# --- the cohort on disk ------------------------------------------------------------

def _generate(n: int, seed: int, directory: str) -> dict:
    from .simulate import simulate_clinic

    clinic = simulate_clinic(n, seed, days=BENCH_DAYS, end=BENCH_END)
    paths = clinic.write_csv(directory)
    rows = {name: len(frame) for name, frame in clinic.tables.items()}
    return {"paths": paths, "rows": rows, "generate_peak_rss_mb": round(peak_rss_mb(), 1)}


def cohort_csv(n: int, seed: int, work: Path, progress: Progress | None = None) -> dict:
    """patients/treatments/assessments CSVs for N patients (generated in a child process, kept for reuse)."""
    directory = work / f"n{n}-s{seed}" / "csv"
    manifest = directory / "manifest.json"
    if manifest.exists():
        info = json.loads(manifest.read_text())
        # the files beside the manifest, wherever the work directory has since been moved or copied
        info["paths"] = {kind: str(directory / Path(path).name) for kind, path in info["paths"].items()}
        return info
    if progress:
        progress(f"generating {n:,} patients")
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    started = time.perf_counter()
    # A fresh interpreter rather than multiprocessing's spawn, which re-imports the parent's __main__
    # (under pytest after Streamlit page tests that was a page script, and the child hung).
    code = ("import json, sys; from analytics import memory; from analytics.bench import _generate; "
            "memory.tune_allocator(); print(json.dumps(_generate(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])))")
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    child = subprocess.run([sys.executable, "-c", code, str(n), str(seed), str(directory)],
                           capture_output=True, text=True, env=env, check=False)
    if child.returncode != 0:
        raise RuntimeError(f"generating {n} patients failed:\n{child.stderr[-2000:]}")
    info = json.loads(child.stdout.strip().splitlines()[-1])
    info["generate_s"] = round(time.perf_counter() - started, 2)
    manifest.write_text(json.dumps(info))  # written last: a half-written directory is regenerated
    return info


# --- the figures ------------------------------------------------------------------------

def _fresh(path: Path) -> Path:
    for p in (path, Path(str(path) + ".wal")):
        p.unlink(missing_ok=True)
    return path


def _fresh_postgres(url: str):
    """The PostgreSQL database `url` emptied for the next import repeat: only an empty database or one
    a benchmark filled is emptied (every import batch from the benchmark's generated files)."""
    from . import store

    target = store.db_path(url)
    if target.exists():
        with store.connect(target) as con:
            kinds = ("patients", "treatments", "assessments")  # each from the generated file of its name
            foreign = con.execute(
                "SELECT count(*) FROM import_batches WHERE NOT ("
                + " OR ".join("(kind = ? AND file_name LIKE ?)" for _ in kinds) + ")",
                [value for kind in kinds for value in (kind, f"%/{kind}.csv")]).fetchall()[0][0]
        if foreign:
            raise RuntimeError(f"{store.label(target)} holds imports other than a benchmark's: the benchmark empties "
                               "its database before each import, so give it an empty database of its own")
    with store.connect(target, write=True) as con:  # (creates the schema when there is none)
        con.execute("DROP SCHEMA public CASCADE")
        con.execute("CREATE SCHEMA public")
    return target


def time_import(paths: list[str], run_dir: Path, repeats: int, progress: Progress | None,
                budget: float | None = None, db_url: str | None = None) -> tuple[float, Path]:
    """Median wall time of the full validated import into an empty database; the last database is kept.

    Fewer repeats when the runs so far already used the figure's `budget`. `db_url`: a PostgreSQL
    database to import into instead of a file (emptied before each repeat).
    """
    from .ingest import import_files

    times = []
    db = run_dir / "bench.duckdb"
    report = None
    for i in range(max(1, repeats)):
        if times and budget and sum(times) + max(times) > budget:
            break
        if progress:
            progress(f"import {i + 1}/{repeats}")
        db = _fresh(db) if db_url is None else _fresh_postgres(db_url)
        started = time.perf_counter()
        report = import_files(paths, db=db)
        times.append(time.perf_counter() - started)
    code = int(getattr(report, "exit_code", 0))
    if code != 0:
        raise RuntimeError(f"the import did not accept every row (exit code {code}): "
                           + "; ".join(report.messages()[:3]))
    return statistics.median(times), db


def time_import_floor(paths: list[str], run_dir: Path, repeats: int) -> float:
    """DuckDB's plain read_csv of the same files into bare tables of an empty file: the least an import does."""
    import duckdb

    db = run_dir / "floor.duckdb"
    times = []
    for _ in range(max(1, repeats)):
        _fresh(db)
        started = time.perf_counter()
        con = duckdb.connect(str(db))
        try:
            for i, path in enumerate(paths):
                con.execute(f"CREATE TABLE t{i} AS SELECT * FROM read_csv(?)", [str(path)])
        finally:
            con.close()
        times.append(time.perf_counter() - started)
    _fresh(db)
    return statistics.median(times)


def time_scan_floor(db: Path, repeats: int) -> float:
    """One aggregate scan over all assessments, through an ordinary short-lived store connection."""
    from . import store

    def scan():
        with store.connect(db) as con:
            return con.execute("""SELECT instrument, count(*), avg(total), min(administered_at), max(administered_at)
                                  FROM assessments GROUP BY instrument""").fetchall()
    return _median_time(scan, repeats)[0]


def workspace(data):
    """What the dashboard keeps per scope and data version (pages/_cache.py): a workspace, empty."""
    from .screens.workspace import Workspace

    return Workspace(data)


def page_caches(ws, instrument: str = INSTRUMENT):
    """Fill the workspace as the cohort page's first visit does: frames, the primary instrument's cycles,
    induction outcomes and the per-patient summaries (screens.cohort.cohort_tables)."""
    from .screens import cohort

    cohort.cohort_tables(ws, instrument)
    return ws


def cohort_default_view(ws, today: date, instrument: str = INSTRUMENT, parts: dict | None = None) -> dict:
    """What pages/cohort.py computes for its default view (no filters, first instrument), the workspace warm:
    the filter choices, `screens.cohort.cohort_screen` (selection, headline with Wilson CIs and the median
    durability, waterfall and its bars, weekly band, severity movement, completeness) and the funnel.

    `parts`, when given, receives the seconds each step took (for profiling the page).
    """
    from .screens import cohort

    choices = cohort.cohort_choices(ws, instrument)
    screen = cohort.cohort_screen(ws, cohort.Filters(instrument=instrument), today, timings=parts)
    started = time.perf_counter()
    funnel = screen.funnel("site", "responded")
    if parts is not None:
        parts["funnel"] = parts.get("funnel", 0.0) + time.perf_counter() - started
    return {"choices": choices, "screen": screen, "funnel": funnel}


def cohort_charts(view: dict) -> list:
    """The cohort page's figures (analytics.charts), as the page builds them from the screen."""
    from . import charts

    s = view["screen"]
    return [charts.waterfall(s.waterfall_bars, s.instrument), charts.trajectory(s.trajectory, s.instrument, s.remission_cut),
            charts.severity_movement(s.severity, s.instrument),
            charts.funnel(view["funnel"], "site", "response"), charts.completeness(s.completeness)]


def figure_points(figures: list) -> int:
    """Data points the browser receives for these plotly figures (x values of every trace)."""
    total = 0
    for fig in figures:
        for trace in fig.data:
            values = getattr(trace, "x", None)
            if values is None:
                values = getattr(trace, "z", None)
            total += 0 if values is None else len(values)
    return total


def patient_view(ws, patient_id: str, today: date):
    """What pages/patient.py computes for one patient: the id search and `screens.patient.patient_screen`
    (the record through DataAccess with its audit entry, alerts, thresholds, latest scores, item matrices,
    history, and the patient's rows of the workspace's cohort-wide cycles and suggestion). The CSV download
    is built only when its button is clicked (`patient_csv_s`), so it is not part of a view.

    Inside `access.page_run`, as dashboard.py runs every page: the audit entry is appended to the journal
    (fsynced) and applied later by the dashboard's flusher thread, so the page never waits for the write
    lock. That later cost is measured apart (`patient_audit_apply_s`)."""
    from .access import page_run
    from .screens import patient

    with page_run():
        patient.patient_search(ws, patient_id)
        return patient.patient_screen(ws, patient_id, today)


# What cohort_durability reads of a cycle table when not grouping (durability/cohort.py, _definitions)
ESTIMATE_CYCLE_COLUMNS = ("patient_id", "left_days", "right_days", "event", "cycle_no", "post_induction")


def durability_estimate(frames: dict) -> dict:
    """Cycle extraction, the clinic's measurement model and the cohort durability estimate the
    durability page shows by default (the functions its workspace calls, computed afresh: the model
    is fitted from scratch, as on a new data version). The course is built once: the cycles and the
    model both start from it."""
    from . import course, intervals
    from .durability import cohort_durability
    from .screens.durability import N_BOOT
    from .screens.workspace import cohort_cycles

    # only the columns the cycles and the model read (course.build_course(columns=): less memory)
    built = course.build_course(frames["treatments"], frames["assessments"], INSTRUMENT,
                                columns=intervals._model_course_columns())
    cycles = cohort_cycles(frames["patients"], frames["treatments"], frames["assessments"], INSTRUMENT,
                           attributes=frames["attributes"], built=built)
    # the cycles are made: of the course, only what the model's scores read is held through them
    held = [intervals.scored_course(built)]   # in a list the model function pops: the course is not kept after it
    del built
    # the estimate reads these columns of its own table (the page reads the workspace's, held anyway): each
    # patient's covariates and labels (~0.1 GB at 100,000 patients) are let go before the fit and the bootstrap
    cycles = cycles[[c for c in ESTIMATE_CYCLE_COLUMNS if c in cycles.columns]]
    memory.release_freed()

    def model():
        # the clinic model from the course: its scores, then its fit (the estimate reads the model and the cycles
        # only: no course is kept beside the fit, keep_course=False)
        clinic = intervals.fit_clinic_model(frames, INSTRUMENT, built=held.pop(), cycles=cycles, keep_course=False)
        return clinic.model   # (fit_clinic_model let the course go once the scores were made)

    # as the durability page asks for it (its function gives the workspace's clinic model, made and fitted if
    # need be): the model's scores and fit on a thread of their own while cohort_durability works out the
    # definitions' figures from the cycles (they share nothing)
    return cohort_durability(cycles, instrument=INSTRUMENT, by=None, n_boot=N_BOOT, model=model)


def all_suggestions(data, today: date):
    """Next-infusion suggestions for every patient (the workspace's `suggestions`), afresh: the whole
    clinic's model fitted from scratch (the in-process cache of fits is emptied first, as on a new
    data version), then every patient's suggestion."""
    from . import intervals
    from .screens.workspace import interval_suggestions

    intervals.forget_fits()
    return interval_suggestions(data, None, INSTRUMENT, today=today)


# --- one run ----------------------------------------------------------------------------------

def run_benchmark(patients: int, seed: int = 1, *, repeats: int = 3, patient_samples: int = 25,
                  budget: float | None = 300, work: Path | None = None, progress: Progress | None = None,
                  users: int | None = None, users_options: dict | None = None, db_url: str | None = None) -> dict:
    """Every figure for one cohort size; a figure that cannot be measured is None with a note in `missing`.

    `budget`: the most seconds one call of one figure may take before it is
    abandoned (reported null); None for no limit. `users`: also run that many simulated users
    against a dashboard server on a copy of the database (analytics/bench_users.py; `users_options`
    are its keyword arguments: duration, think, idle, import_rows, processes). `db_url`: measure on
    this PostgreSQL database instead of a DuckDB file (the same keys; `backend` says which).
    """
    from . import store
    from .access import SYSTEM, DataAccess

    work = Path(work or DEFAULT_WORK)
    reset_peak_rss()
    result: dict = {key: None for key in KEYS}
    result.update({"patients": patients, "seed": seed, "repeats": repeats, "budget_s": budget,
                   "backend": "postgres" if db_url else "duckdb"})
    # Wall times on a shared machine: the load says how much else was running.
    result["load_average_start"] = round(os.getloadavg()[0], 2)
    missing: dict[str, str] = {}

    def say(message: str) -> None:
        if progress:
            progress(message)

    def attempt(names: tuple[str, ...], fn: Callable[[], None], limit: float | None = budget) -> None:
        try:
            with time_budget(limit):
                fn()
        except (ImportError, AttributeError) as exc:
            for name in names:
                missing[name] = f"missing: {type(exc).__name__}: {exc}"
        except Exception as exc:  # noqa: BLE001 - a failure is reported, never turned into a number
            text = str(exc).splitlines()[0] if str(exc) else ""
            for name in names:
                missing[name] = f"failed: {type(exc).__name__}: {text}"

    info = cohort_csv(patients, seed, work, progress)
    paths = [info["paths"][k] for k in ("patients", "treatments", "assessments")]
    csv_rows = sum(info["rows"].values())
    result["generate_s"] = info.get("generate_s")
    result["generate_peak_rss_mb"] = info.get("generate_peak_rss_mb")
    run_dir = work / f"n{patients}-s{seed}"
    state: dict = {}

    def do_import():
        seconds, db = time_import(paths, run_dir, repeats, progress, budget, db_url=db_url)
        state["db"] = db
        result["import_s"] = seconds
        result["import_rows_per_s"] = csv_rows / seconds
    # Everything else needs the database: the import is never abandoned, only repeated less.
    attempt(("import_s", "import_rows_per_s"), do_import, limit=None)
    say("import floor")
    attempt(("import_floor_s",), lambda: result.__setitem__("import_floor_s", time_import_floor(paths, run_dir, repeats)))
    # The import's memory and the dashboard's are different questions: measure each peak on its own.
    state["import_peak"] = peak_rss_mb()
    if reset_peak_rss():
        result["import_peak_rss_mb"] = round(state["import_peak"], 1)
    if "db" not in state:
        for name in TIMED[2:]:
            missing.setdefault(name, "no database: the import failed")
        return _finish(result, missing)

    db = state["db"]
    data = DataAccess(db, SYSTEM)
    with store.connect(db) as con:
        counts = con.execute("""SELECT (SELECT count(*) FROM patients), (SELECT count(*) FROM assessments),
                                       (SELECT count(*) FROM treatments)""").fetchall()[0]
    result["patients"], result["assessments"], result["treatments"] = (int(c) for c in counts)
    say("scan floor")
    attempt(("scan_floor_s",), lambda: result.__setitem__("scan_floor_s", time_scan_floor(db, repeats)))

    say("loading the page frames")
    ws = workspace(data)
    started = time.perf_counter()
    frames = ws.frames()
    result["load_frames_s"] = time.perf_counter() - started

    def do_cohort():
        say("cohort page caches (induction outcomes, cycles, summaries)")
        started = time.perf_counter()
        page_caches(ws)
        state["cached"] = True
        result["cohort_caches_s"] = time.perf_counter() - started
        say("cohort page default view")
        parts: dict = {}
        cohort_default_view(ws, BENCH_END)  # warm
        seconds, view = _median_time(lambda: cohort_default_view(ws, BENCH_END, parts=parts), repeats,
                                     warm=False)
        result["cohort_s"] = seconds
        result["cohort_parts_s"] = {k: round(v / max(1, repeats), 4) for k, v in parts.items()}
        result["cohort_cold_s"] = result["load_frames_s"] + result["cohort_caches_s"] + seconds
        state["view"] = view
    attempt(("cohort_s",), do_cohort)

    def do_charts():
        seconds, figures = _median_time(lambda: cohort_charts(state["view"]), repeats)
        result["cohort_charts_s"] = seconds
        result["cohort_chart_points"] = figure_points(figures)
    if "view" in state:
        attempt(("cohort_charts_s",), do_charts)

    def do_intervals():
        seconds, suggestions = _median_time(lambda: all_suggestions(data, BENCH_END), repeats, warm=False)
        result["intervals_s"] = seconds
        ws.once(("suggestions", INSTRUMENT, BENCH_END), lambda: suggestions)  # what the patient page reads

    def do_patient():
        ids = frames["patients"]["patient_id"].tolist()
        chosen = random.Random(seed).sample(ids, min(patient_samples, len(ids)))
        from . import charts

        patient_view(ws, chosen[0], BENCH_END)  # warm: modules imported, file pages cached
        times, cpu, csv_times, chart_times = [], [], [], []
        for i, pid in enumerate(chosen):
            say(f"patient page {i + 1}/{len(chosen)}")
            started, started_cpu = time.perf_counter(), time.process_time()
            view = patient_view(ws, pid, BENCH_END)
            times.append(time.perf_counter() - started)
            cpu.append(time.process_time() - started_cpu)
            started = time.perf_counter()
            view.csv()  # what a click on the download button adds
            csv_times.append(time.perf_counter() - started)
            if view.thresholds:  # the page's timeline figure (timed apart, like cohort_charts_s)
                started = time.perf_counter()
                charts.patient_timeline(view.assessments, view.treatments, view.thresholds, view.cycles, pid)
                chart_times.append(time.perf_counter() - started)
        result["patient_s"] = statistics.median(times)
        # the machine is shared: CPU time says what the page costs when the cores are not contended
        result["patient_cpu_s"] = statistics.median(cpu)
        result["patient_max_s"] = max(times)
        result["patient_csv_s"] = statistics.median(csv_times)
        result["patient_chart_s"] = statistics.median(chart_times) if chart_times else None
        result["patient_samples"] = len(chosen)
        # what the dashboard's flusher thread does later with the views' journaled audit entries
        pending = len(store.journal_pending(db))
        started = time.perf_counter()
        store.flush_journal(db, wait=60)
        if pending:
            result["patient_audit_apply_s"] = (time.perf_counter() - started) / pending
    if "cached" not in state:
        missing["intervals_s"] = missing["patient_s"] = "no cohort cycles: " + missing.get("cohort_s", "not computed")
    else:
        say("interval suggestions")
        attempt(("intervals_s",), do_intervals)
        attempt(("patient_s",), do_patient)

    say("durability")
    # The estimate fits its own model afresh (its time is the figure); the clinic's cached fit, which the
    # durability page would use instead, is let go first so two fits are never held at once (a page never does).
    from . import intervals
    intervals.forget_fits()
    attempt(("durability_s",), lambda: result.__setitem__(
        "durability_s", _median_time(lambda: durability_estimate(frames), repeats, warm=False)[0]))
    if "import_peak_rss_mb" in result:
        result["pages_peak_rss_mb"] = round(peak_rss_mb(), 1)
    earlier_peak = max(state.get("import_peak", 0.0), peak_rss_mb())
    if users and db_url:
        for key in USERS_KEYS:
            result[key] = None
            missing[key] = "not measured: the simulated users run on a DuckDB file only (yet)"
    elif users:
        del ws, frames, data  # the server has its own: this process's figures are measured
        state.pop("view", None)
        memory.release_freed()
        run_users_part(result, missing, db, run_dir, users, users_options or {}, progress)
    return _finish(result, missing, earlier_peak)


USERS_KEYS = ("users_p50_s", "users_p95_s", "users_errors", "users_during_import_p95_s", "cold_cohort_s",
              "after_write_cohort_s", "first_cohort_s")
# The users' figures drawn in the plot's second panel (render_plot), each against N.
USERS_PLOTTED = ("users_p50_s", "users_p95_s", "users_during_import_p95_s", "cold_cohort_s", "after_write_cohort_s")
# Targets at 10,000 patients with 20 users (docs/performance.md); reported, never asserted.
USERS_TARGETS = {"users_p95_s": 2, "users_errors": 0, "users_during_import_p95_s": 3, "cold_cohort_s": 5,
                 "after_write_cohort_s": 2}


def run_users_part(result: dict, missing: dict, db: Path, run_dir: Path, users: int, options: dict,
                   progress: Progress | None) -> None:
    """The simulated users (analytics/bench_users.py) on a copy of `db`; their keys join `result`."""
    from . import bench_users

    options = dict(options)
    options.setdefault("import_rows", 30 * int(result.get("patients") or 0) or None)
    for key in USERS_KEYS:
        result[key] = None
    try:
        figures = bench_users.run_users(db, run_dir / "users", users, today=str(BENCH_END + timedelta(days=1)),
                                        say=progress or (lambda message: None), **options)
    except Exception as exc:  # noqa: BLE001 - reported, never turned into a number
        text = str(exc).splitlines()[0] if str(exc) else ""
        for key in USERS_KEYS:
            missing[key] = f"failed: {type(exc).__name__}: {text}"
        return
    result.update(figures)
    for key in USERS_KEYS:
        if result.get(key) is None and key not in missing:
            missing[key] = "not measured (see the users_* keys)"


def _finish(result: dict, missing: dict, earlier_peak: float = 0.0) -> dict:
    def ratio(a, b):
        return result[a] / result[b] if result.get(a) and result.get(b) else None
    result["import_floor_ratio"] = ratio("import_s", "import_floor_s")
    result["cohort_floor_ratio"] = ratio("cohort_s", "scan_floor_s")
    for name in ("import_floor_ratio", "cohort_floor_ratio"):
        if result[name] is None and name not in missing:
            missing[name] = "missing: a figure it divides is missing"
    result["peak_rss_mb"] = round(max(peak_rss_mb(), earlier_peak), 1)
    result["load_average_end"] = round(os.getloadavg()[0], 2)
    for key, value in list(result.items()):
        if isinstance(value, float):
            result[key] = round(value, 6 if value < 1 else 3)
    result["missing"] = missing
    return result


# --- several sizes, the results file and the plot ---------------------------------------------

def machine() -> dict:
    """The machine the figures were measured on."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import duckdb
    import pandas

    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(mem_gb, 1), "os": platform.platform(),
            "python": platform.python_version(), "duckdb": duckdb.__version__, "pandas": pandas.__version__}


def users_arguments(users: int, options: dict | None) -> list[str]:
    """The command-line arguments that give a child run `users` simulated users with these options
    (run_benchmark's `users_options`: duration, think, processes, import_rows)."""
    options = options or {}
    args = ["--users", str(users)]
    for key, flag in (("duration", "--users-duration"), ("think", "--think"), ("processes", "--processes"),
                      ("import_rows", "--import-rows")):
        if key in options and (options[key] is not None or key == "import_rows"):
            args += [flag, str(options[key] or 0)]
    return args


def run_sizes(sizes: list[int], seed: int, repeats: int, budget: float | None, work: Path,
              progress: Progress | None, users: int | None = None, users_sizes: tuple[int, ...] = (),
              users_options: dict | None = None) -> dict:
    """One child process per size (each with its own peak RSS); the results file's content.
    `users`: also run that many simulated users at each size listed in `users_sizes`."""
    runs = []
    for n in sizes:
        if progress:
            progress(f"N = {n:,} (child process)")
        started = time.perf_counter()
        extra = users_arguments(users, users_options) if users and n in users_sizes else []
        child = subprocess.run(
            [sys.executable, "-m", "analytics", "bench", "--patients", str(n), "--seed", str(seed),
             "--repeats", str(repeats), "--budget", str(budget or 0), "--work", str(work), "--json", *extra],
            cwd=REPO, capture_output=True, text=True)
        # exit 1 only says some figure is null (its reason is in the JSON); anything else is a crash
        if child.returncode not in (0, 1):
            raise RuntimeError(f"bench for {n} patients failed (exit {child.returncode}): {child.stderr.strip()[-2000:]}")
        run = json.loads(child.stdout)
        run["wall_s"] = round(time.perf_counter() - started, 1)
        runs.append(run)
    command = f"python -m analytics bench --sizes {','.join(map(str, sizes))} --seed {seed} --repeats {repeats} --budget {budget or 0:g}"
    if users and users_sizes:
        command += " " + " ".join(users_arguments(users, users_options)) + f" --users-sizes {','.join(map(str, users_sizes))}"
    return {
        "command": command,
        "measured_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(), "targets_at_100k": TARGETS, "runs": runs,
    }


def growth(results: dict, low: int = 10_000, high: int = 100_000) -> dict[str, float]:
    """How many times each timed figure grows from `low` to `high` patients."""
    by_n = {r["patients"]: r for r in results["runs"]}
    a, b = by_n.get(low), by_n.get(high)
    if not a or not b:
        return {}
    return {k: round(b[k] / a[k], 1) for k in TIMED + ("peak_rss_mb",) if a.get(k) and b.get(k)}


def render_plot(results: dict, out: Path) -> Path:
    """Log-log time against N for each timed figure: PNG through kaleido, else an HTML file saying why."""
    import plotly.graph_objects as go

    from plotly.subplots import make_subplots

    runs = sorted(results["runs"], key=lambda r: r["patients"])
    with_users = [r for r in runs if any(r.get(k) for k in USERS_PLOTTED)]
    m = results.get("machine", {})
    title = (f"Time against cohort size ({m.get('cores', '?')} cores, {m.get('memory_gb', '?')} GB; "
             f"median of {runs[0].get('repeats', '?') if runs else '?'} runs)")
    if with_users:
        counts = sorted({r.get("users") for r in with_users if r.get("users")})
        fig = make_subplots(rows=2, cols=1, vertical_spacing=0.12, subplot_titles=(
            "one process, each figure alone",
            f"{'/'.join(map(str, counts))} simulated users against a dashboard server: seconds per page"))
    else:
        fig = go.Figure()
    place = dict(row=1, col=1) if with_users else {}
    for key in TIMED:
        points = [(r["patients"], r[key]) for r in runs if r.get(key)]
        if points:
            floor = key.endswith("floor_s")  # floors dashed: the least the work could cost
            fig.add_trace(go.Scatter(x=[p[0] for p in points], y=[p[1] for p in points], mode="lines+markers", name=key,
                                     line=dict(dash="dash" if floor else "solid")), **place)
    for key in USERS_PLOTTED:
        points = [(r["patients"], r[key]) for r in with_users if r.get(key)]
        if points:
            fig.add_trace(go.Scatter(x=[p[0] for p in points], y=[p[1] for p in points], mode="lines+markers",
                                     name=key, line=dict(dash="dot")), row=2, col=1)
    fig.update_layout(title=title, width=900, height=900 if with_users else 560, template="plotly_white")
    fig.update_xaxes(type="log", title_text="patients")
    fig.update_yaxes(type="log", title_text="seconds")
    try:
        fig.write_image(str(out))
        return out
    except Exception as exc:  # kaleido needs a Chromium; without one, keep an interactive file instead
        html = out.with_suffix(".html")
        fig.write_html(str(html), include_plotlyjs="cdn")
        print(f"bench: could not write {out.name} ({type(exc).__name__}: {exc}); wrote {html.name} instead",
              file=sys.stderr)
        return html


def _fmt(value, digits=3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}g}" if value < 100 else f"{value:,.0f}"
    return f"{value:,}"


def markdown_table(results: dict) -> str:
    """The README's table: one column per size, one row per figure."""
    runs = sorted(results["runs"], key=lambda r: r["patients"])
    head = "| figure | " + " | ".join(f"{r['patients']:,} patients" for r in runs) + " | target at 100k |"
    lines = [head, "|---|" + "---|" * (len(runs) + 1)]
    context = ("import_peak_rss_mb", "pages_peak_rss_mb", "load_frames_s", "cohort_caches_s", "cohort_cold_s",
               "cohort_charts_s", "cohort_chart_points", "patient_max_s", "patient_audit_apply_s",
               "generate_s", "generate_peak_rss_mb")
    for key in ("assessments", "treatments") + KEYS[3:] + context:
        target = TARGETS.get(key)
        lines.append(f"| {key} | " + " | ".join(_fmt(r.get(key)) for r in runs)
                     + f" | {'≤ ' + str(target) if target else ''} |")
    if any(r.get("users") for r in runs):  # the simulated users' figures, where a size ran them
        for key in ("users",) + USERS_KEYS + ("users_server_cpu_per_run_s",):
            target = USERS_TARGETS.get(key)
            lines.append(f"| {key} | " + " | ".join(_fmt(r.get(key)) if r.get("users") else "" for r in runs)
                         + f" | {'≤ ' + str(target) + ' (10,000 patients, 20 users)' if target is not None else ''} |")
    m = results.get("machine")
    if m:
        lines.insert(0, f"Measured {results.get('measured_at', '')} on {m.get('cpu')} ({m.get('cores')} cores, "
                        f"{m.get('memory_gb')} GB; {m.get('os')}; Python {m.get('python')}, DuckDB {m.get('duckdb')}, "
                        f"pandas {m.get('pandas')}) with `{results.get('command', '')}`; load average during the runs "
                        + ", ".join(f"{r.get('load_average_start')}-{r.get('load_average_end')}" for r in runs) + ".\n")
    g = growth(results)
    if g:
        lines.append("")
        lines.append(f"Growth from 10,000 to 100,000 patients (target ≤ {MAX_GROWTH_10K_TO_100K}x): "
                     + ", ".join(f"{k} {v}x" for k, v in g.items()) + ".")
    return "\n".join(lines)


README_TABLE_START = "<!-- bench table: `make bench` writes from here -->"
README_TABLE_END = "<!-- bench table: to here -->"


def write_readme_table(readme: Path, results: dict) -> None:
    """Put `markdown_table(results)` between the README's two bench-table markers (what `make bench`
    does after a run), leaving every other line as it was."""
    text = readme.read_text()
    start, end = text.find(README_TABLE_START), text.find(README_TABLE_END)
    if start < 0 or end < start:
        raise ValueError(f"{readme} has no bench table markers ({README_TABLE_START} ... {README_TABLE_END})")
    body = text[:start + len(README_TABLE_START)] + "\n" + markdown_table(results) + "\n" + text[end:]
    readme.write_text(body)


def side_by_side(file_results: dict, *others: dict, patients: int = 10_000) -> str:
    """`make bench`'s comparison: the DuckDB file's run at `patients` (from the --sizes results) beside
    single runs at the same size (`bench --patients N [--db postgresql://...]`), one row per figure and
    one column per run, headed by its backend and load average; a figure a run could not measure shows
    its reason from `missing`."""
    runs = [r for r in file_results.get("runs", []) if r.get("patients") == patients]
    if not runs:
        raise ValueError(f"the DuckDB results hold no run at {patients:,} patients")
    for other in others:
        if other.get("patients") != patients:
            raise ValueError(f"a run beside it is of {other.get('patients')} patients, not {patients:,}")
    columns = [runs[0], *others]

    def head(run: dict) -> str:
        name = "PostgreSQL" if run.get("backend") == "postgres" else "DuckDB file"
        return f"{name} (load {run.get('load_average_start')}-{run.get('load_average_end')})"

    def cell(run: dict, key: str) -> str:
        missing = run.get("missing") or {}
        if run.get(key) is None and key in missing:
            return f"n/a ({missing[key]})"
        return _fmt(run.get(key))

    lines = [f"| figure at {patients:,} patients | " + " | ".join(head(r) for r in columns) + " |",
             "|---|" + "---|" * len(columns)]
    context = ("import_peak_rss_mb", "pages_peak_rss_mb", "load_frames_s", "cohort_caches_s", "cohort_cold_s",
               "patient_max_s")
    for key in KEYS[1:] + context:
        lines.append(f"| {key} | " + " | ".join(cell(r, key) for r in columns) + " |")
    return "\n".join(lines)
