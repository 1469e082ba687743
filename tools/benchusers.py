"""The users part of the benchmark on an existing database, one setting at a time (docs/performance.md).

    python -m tools.benchusers DB OUT.json --users 20 [--processes 2] [--duration 60] [--import-rows 300000]
                               [--idle 30] [--today 2026-11-21]

Runs `analytics.bench_users.run_users` (what `python -m analytics bench --patients N --users U` runs
after its own figures) against a copy of DB: a server started as `make run` starts it, a director's
first visit, the server restarted once its tables are saved and the director's first visit again, every
account once, U users for --duration seconds, one recorded assessment and the
director's next visit, U users during an import of --import-rows assessments (0: none), --idle
seconds with nobody connected. Writes every figure to OUT.json and prints the main ones.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from analytics import bench_users

SHOWN = ("first_cohort_s", "first_server_cpu_s", "cold_tables_saved", "cold_cohort_s", "cold_server_cpu_s", "after_write_cohort_s", "after_write_server_cpu_s", "users_p50_s",
         "users_p95_s", "users_errors", "users_runs_per_s", "users_server_cpu_per_run_s", "users_server_cores",
         "users_load_average", "users_during_import_p50_s", "users_during_import_p95_s", "users_during_import_runs",
         "users_during_import_errors", "users_import_s", "users_server_rss_peak_mb", "users_server_rss_idle_mb")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.benchusers", description=__doc__.splitlines()[0])
    p.add_argument("db", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--users", type=int, required=True)
    p.add_argument("--processes", type=int, default=None, help="dashboard processes (default: as make run)")
    p.add_argument("--duration", type=float, default=60)
    p.add_argument("--import-rows", type=int, default=300_000)
    p.add_argument("--idle", type=float, default=30)
    p.add_argument("--today", default="2026-11-21", help="the dashboard's today (the demo ends 2026-11-20)")
    args = p.parse_args(argv)
    started = time.time()
    result = bench_users.run_users(args.db, args.out.parent / (args.out.stem + "-work"), args.users, today=args.today,
                                   duration=args.duration, import_rows=args.import_rows or None,
                                   processes=args.processes, idle=args.idle,
                                   say=lambda m: print(time.strftime("%H:%M:%S"), m, flush=True))
    result["wall_s"] = round(time.time() - started)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result.get(k) for k in SHOWN}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
