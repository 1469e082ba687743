"""The import against its floor, with CPU seconds and the load: what `import_floor_ratio` is made of.

    python -m tools.importcost --patients 100000 [--work bench/work] [--part both|import|floor]

Calls `bench.time_import` and `bench.time_import_floor` once each (as `python -m analytics bench
--repeats 1` does) on the benchmark's CSVs (`bench.cohort_csv`: generated into --work when missing), and
prints one JSON line: import_s, import_floor_s and their ratio by wall time, the same by process CPU
seconds (DuckDB's threads included), the import's
CPU and wall time before its write transaction (read_*), inside it up to the COMMIT (insert_*) and to the
end (write_*: COMMIT and the checkpoint as the database is closed included), the import's peak
resident memory (`import_peak_rss_mb`) and the load average at the start, between and at the end. On a
shared machine the wall ratio follows the load; the CPU figures much less (docs/performance.md).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import time
from pathlib import Path

from analytics import bench, memory, store


def _load() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.importcost")
    parser.add_argument("--patients", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path("bench/work"))
    parser.add_argument("--part", choices=("both", "import", "floor"), default="both")
    args = parser.parse_args(argv)
    memory.tune_allocator()
    bench.cohort_csv(args.patients, args.seed, args.work)
    csv = args.work / f"n{args.patients}-s{args.seed}" / "csv"
    paths = [str(csv / f"{kind}.csv") for kind in ("patients", "treatments", "assessments")]
    run = args.work / f"importcost-{args.patients}"
    run.mkdir(parents=True, exist_ok=True)
    out: dict = {"patients": args.patients, "load_start": _load()}
    try:
        if args.part in ("both", "import"):
            phases: dict[str, float] = {}
            opened = store.transaction

            @contextlib.contextmanager
            def timed(*a, **k):  # the CPU spent before the write transaction opens is the reading and checking
                phases["read_cpu_s"] = time.process_time() - started
                phases["read_wall_s"] = time.perf_counter() - started_wall
                with opened(*a, **k) as con:
                    yield con
                    phases["insert_cpu_s"] = time.process_time() - started - phases["read_cpu_s"]
                    phases["insert_wall_s"] = time.perf_counter() - started_wall - phases["read_wall_s"]
                phases["write_cpu_s"] = time.process_time() - started - phases["read_cpu_s"]
                phases["write_wall_s"] = time.perf_counter() - started_wall - phases["read_wall_s"]

            store.transaction = timed
            bench.reset_peak_rss()
            started, started_wall = time.process_time(), time.perf_counter()
            try:
                out["import_s"], _ = bench.time_import(paths, run, 1, None)
            finally:
                store.transaction = opened
            out["import_cpu_s"] = round(time.process_time() - started, 2)
            out.update({k: round(v, 2) for k, v in phases.items()})
            out["import_peak_rss_mb"] = round(bench.peak_rss_mb(), 1)
            out["load_after_import"] = _load()
        if args.part in ("both", "floor"):
            started = time.process_time()
            out["import_floor_s"] = bench.time_import_floor(paths, run, 1)
            out["floor_cpu_s"] = round(time.process_time() - started, 2)
        if "import_s" in out and "import_floor_s" in out:
            out["import_floor_ratio"] = round(out["import_s"] / out["import_floor_s"], 2)
            out["cpu_ratio"] = round(out["import_cpu_s"] / out["floor_cpu_s"], 2)
        out["load_end"] = _load()
    finally:
        shutil.rmtree(run, ignore_errors=True)
    print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in out.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
