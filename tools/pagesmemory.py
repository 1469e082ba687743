"""Peak memory and time of each step of the benchmark's page work, one step after another in one process.

    python -m tools.pagesmemory DB [--steps frames,caches,view,intervals,patients,durability] [--parts]

What `python -m analytics bench` does after its import, on an existing database, with the peak
resident memory (VmHWM, reset before each step) and what stays resident after it, so the step that
sets `pages_peak_rss_mb` can be found (docs/performance.md, "The 100,000-patient memory and import
targets"). One line per step on stdout. `--parts`: also the peak inside each of the functions that
build the tables (the reads, the course, the cycles, the model's scores, the fit, the suggestions,
the taper signals and trend tests), sampled every 5 ms, one line per function and the steps it ran in.
"""
from __future__ import annotations

import argparse
import functools
import threading
import time
from pathlib import Path

from analytics import bench, memory


def _resident_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class _Parts:
    """The peak resident memory while each wrapped function runs (a sampling thread)."""

    def __init__(self):
        self.stack: list[str] = []
        self.peaks: dict[str, float] = {}

    def start(self) -> None:
        def sample() -> None:
            while True:
                where = "/".join(self.stack)
                self.peaks[where] = max(self.peaks.get(where, 0.0), _resident_mb())
                time.sleep(0.005)
        threading.Thread(target=sample, daemon=True).start()

    def wrap(self, owner, name: str, label: str | None = None) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def wrapped(*args, **kwargs):
            self.stack.append(label or name)
            try:
                return original(*args, **kwargs)
            finally:
                self.stack.pop()
        setattr(owner, name, wrapped)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.pagesmemory")
    parser.add_argument("db")
    parser.add_argument("--steps", default="frames,caches,view,intervals,patients,durability",
                        help="in the benchmark's order: view = the cohort's default view and its charts, "
                             "patients = 25 patients' screens (the suggestions are kept, as the benchmark does)")
    parser.add_argument("--parts", action="store_true", help="the peak inside each table-building function")
    args = parser.parse_args(argv)
    memory.tune_allocator()
    from analytics import course, intervals
    from analytics.access import SYSTEM, DataAccess
    from analytics.durability.measured import MeasuredDurability

    parts = _Parts() if args.parts else None
    if parts is not None:
        for name in ("build_course", "cycles_from_course", "cycle_scores"):
            parts.wrap(course, name)
        for name in ("fit_clinic_model", "suggest_intervals", "patient_states", "model_estimates", "taper_signals",
                     "model_scores", "lengthening_tests"):
            parts.wrap(intervals, name)
        parts.wrap(MeasuredDurability, "fit")
        parts.wrap(MeasuredDurability, "trend_tests")
        for name in ("patients", "treatments", "assessments", "attributes", "last_assessed"):
            parts.wrap(DataAccess, name, "read_" + name)
        parts.start()

    steps = args.steps.split(",")
    data = DataAccess(Path(args.db), SYSTEM)
    ws = bench.workspace(data)

    def step(name, fn):
        if parts is not None:
            parts.stack[:] = [name]
        bench.reset_peak_rss()
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        print(f"{name:10s} wall {time.perf_counter() - wall:7.2f} s  cpu {time.process_time() - cpu:7.2f} s  "
              f"peak {bench.peak_rss_mb():6.0f} MB  resident after {_resident_mb():6.0f} MB", flush=True)
        return result

    frames = step("frames", ws.frames)
    if "caches" in steps:
        step("caches", lambda: bench.page_caches(ws))
    if "view" in steps:
        step("view", lambda: bench.cohort_charts(bench.cohort_default_view(ws, bench.BENCH_END)))
    if "intervals" in steps:
        suggestions = step("intervals", lambda: bench.all_suggestions(data, bench.BENCH_END))
        ws.once(("suggestions", bench.INSTRUMENT, bench.BENCH_END), lambda: suggestions)
    if "patients" in steps:
        import random

        ids = frames["patients"]["patient_id"].tolist()
        chosen = random.Random(1).sample(ids, min(25, len(ids)))
        step("patients", lambda: [bench.patient_view(ws, pid, bench.BENCH_END).csv() for pid in chosen])
    if "durability" in steps:
        intervals.forget_fits()  # as the benchmark does before its fresh fit
        step("durability", lambda: bench.durability_estimate(frames))
    if parts is not None:
        time.sleep(0.05)
        for where, peak in parts.peaks.items():
            if where:
                print(f"  {peak:7.0f} MB  {where}")
    print("load average", " ".join(Path("/proc/loadavg").read_text().split()[:3]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
