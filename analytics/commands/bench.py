"""`python -m analytics bench`: the clinic-network benchmark (analytics/bench.py; docs/performance.md).

Exit codes: 0 every figure measured, 1 some figure is null (its reason in `missing`), 2 bad arguments.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .. import bench, store
from ..progress import clear, terminal_progress


def add_arguments(p) -> None:
    p.add_argument("--patients", type=int, default=None, metavar="N", help="one run with a cohort of N patients")
    p.add_argument("--sizes", metavar="N1,N2,...", default=None,
                   help="one child run per size; writes --out (default bench/results.json) and a log-log plot beside it")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3, help="runs per figure; each figure is their median")
    p.add_argument("--budget", type=float, default=240, metavar="SECONDS",
                   help="most seconds one figure (all its runs) may take before it is reported null; 0: no limit")
    p.add_argument("--work", metavar="DIR", default=None, help="scratch directory (default bench/work)")
    p.add_argument("--out", metavar="FILE", default=None, help="also write the JSON result here")
    p.add_argument("--table", metavar="RESULTS", default=None, help="print a results file as a markdown table")
    p.add_argument("--beside", metavar="RUN", nargs="+", default=None,
                   help="with --table: the DuckDB file's 10,000-patient run beside these single 10,000-patient runs "
                        "(bench --patients 10000 [--db postgresql://...] --out RUN), one column each")
    p.add_argument("--json", action="store_true", help="print only JSON (no progress)")
    p.add_argument("--users", type=int, default=None, metavar="U",
                   help="also run U simulated users against a dashboard server (users_* keys; docs/performance.md)")
    p.add_argument("--users-duration", type=float, default=60, metavar="SECONDS", help="how long the users run (default 60)")
    p.add_argument("--think", type=float, default=0.0, metavar="SECONDS",
                   help="users' mean pause before each page (default 0: capacity, as the issue's baseline)")
    p.add_argument("--processes", type=int, default=None, help="dashboard processes (default: as `make run`)")
    p.add_argument("--import-rows", type=int, default=None, metavar="ROWS",
                   help="assessments imported while the users run (default 30 per patient; 0: no import)")
    p.add_argument("--users-sizes", metavar="N1,...", default="1000,10000",
                   help="with --sizes and --users: the sizes the users run at (default 1000,10000)")
    p.add_argument("--readme", metavar="FILE", default=None,
                   help="with --table: also write the table into FILE between its bench-table markers (make bench)")


def users_options(args) -> dict:
    options = {"duration": args.users_duration, "think": args.think, "processes": args.processes}
    if args.import_rows is not None:
        options["import_rows"] = args.import_rows or None
    return options


def run(args) -> int:
    work = Path(args.work) if args.work else bench.DEFAULT_WORK
    if args.table:
        results = json.loads(Path(args.table).read_text())
        if args.beside:
            try:
                print(bench.side_by_side(results, *(json.loads(Path(run).read_text()) for run in args.beside)))
            except (OSError, ValueError) as exc:
                print(f"bench: {exc}", file=sys.stderr)
                return 2
            return 0
        if args.readme:
            try:
                bench.write_readme_table(Path(args.readme), results)
            except (OSError, ValueError) as exc:
                print(f"bench: {exc}", file=sys.stderr)
                return 2
        print(bench.markdown_table(results))
        return 0
    if args.sizes:
        try:
            sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
        except ValueError:
            print(f"bench: --sizes must be comma-separated whole numbers, got {args.sizes!r}", file=sys.stderr)
            return 2
        if not sizes or min(sizes) < 1:
            print("bench: --sizes needs at least one size of 1 or more", file=sys.stderr)
            return 2
        progress = terminal_progress("bench", not args.json)
        try:
            users_sizes = tuple(int(s.replace("_", "")) for s in args.users_sizes.split(",") if s.strip())
        except ValueError:
            print(f"bench: --users-sizes must be comma-separated whole numbers, got {args.users_sizes!r}", file=sys.stderr)
            return 2
        results = bench.run_sizes(sizes, args.seed, args.repeats, args.budget or None, work, progress,
                                  users=args.users, users_sizes=users_sizes, users_options=users_options(args))
        clear(progress)
        out = Path(args.out or bench.REPO / "bench" / "results.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
        plot = bench.render_plot(results, out.with_suffix(".png"))
        if args.json:
            print(json.dumps(results, indent=2))
        else:
            print(bench.markdown_table(results))
            print(f"\nbench: wrote {out} and {plot}")
        return 0 if all(not r["missing"] for r in results["runs"]) else 1
    if args.patients is None or args.patients < 1:
        print("bench: give --patients N (1 or more) or --sizes N1,N2,...", file=sys.stderr)
        return 2
    progress = terminal_progress(f"bench {args.patients:,}", not args.json)
    # --db (every command's): a PostgreSQL database to measure on, emptied before each import, so give it
    # one of its own; the figures keep the same keys. Without it the benchmark makes its own DuckDB files.
    db_url = getattr(args, "db", None)
    if db_url and not store.is_postgres(db_url):
        print("bench: --db takes a PostgreSQL URL (postgresql://...); without it the benchmark makes its own DuckDB "
              "files", file=sys.stderr)
        return 2
    result = bench.run_benchmark(args.patients, args.seed, repeats=args.repeats, budget=args.budget or None, work=work,
                                 progress=progress, users=args.users, users_options=users_options(args),
                                 db_url=db_url)
    clear(progress)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=None if args.json else 2))
    return 0 if not result["missing"] else 1
