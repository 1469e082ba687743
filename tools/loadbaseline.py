"""Load baseline: one dashboard server, simulated users at several levels, the server's CPU and memory.

    python -m tools.loadbaseline --db DB --password-stdin --users 1,5,10,20 --duration 90 --out FILE.json

DB must hold accounts that all sign in with the one password read from stdin: every clinician
handle of the data as a clinician account named after it, and the directors named with
--directors (see /work/notes/load-findings.md for the commands). Steps, each reported in the JSON:

1. start one `streamlit run serve.py` on DB (headless, a free port, OUTCOMES_TODAY from --today, the
   --option settings; analytics/bench_users.py, the one load module the benchmark uses too);
2. cold: one director signs in (their landing page is Cohort outcomes) and runs the flow once, then one
   clinician: the first visits after the start;
3. warm-up: every account runs its flow once, so each scope's caches are filled;
4. each user level for --duration seconds, no think time (every user asks for the next page as soon
   as one finishes: the server's capacity, not a day's traffic); the server's CPU seconds, its RSS
   and the load average are sampled every 0.5 s from /proc;
5. --idle seconds with nobody connected, then the server's RSS;
6. with --import-csv, the largest level again, `python -m analytics import` of that file starting
   --import-after seconds later: the flows' page runs that overlapped the import process are reported apart.

The client runs in this process; its CPU is reported too (`client_cpu_s`). The machine may be shared:
every figure carries the load average beside it.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from analytics.bench_users import (Sampler, interleaved, load_average, start_server, stop_server, tree_rss_mb,
                                   user_accounts)
from tools.loadclient import SESSION_PAGES, Account, LoadResult, percentile, run_load

ROOT = Path(__file__).resolve().parent.parent


def loadavg() -> float:
    return load_average()


def accounts_for(db: Path, password: str, directors: list[str]) -> list[Account]:
    """Clinicians (one account per clinician handle, named after it, with up to 50 of their patients) and
    directors, interleaved clinician, director, clinician, ... (analytics.bench_users, as the benchmark)."""
    from analytics.access import DataAccess

    clinicians, heads = user_accounts(DataAccess(db).patients(), password, directors)
    return [Account.from_dict(a) for a in interleaved(clinicians, heads)]


def level(url: str, users: int, accounts: list[Account], sampler: Sampler, **kwargs) -> tuple[dict, LoadResult]:
    start = time.perf_counter() - sampler.t0
    result = run_load(url, users, accounts, **kwargs)
    end = time.perf_counter() - sampler.t0
    row = result.summary()
    row.update(sampler.window(start, end))
    if row.get("server_cpu_s") is not None and result.runs:
        row["server_cpu_per_run_s"] = round(row["server_cpu_s"] / result.runs, 3)
    row["window_s"] = [round(start, 1), round(end, 1)]
    return row, result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.loadbaseline", description=__doc__.splitlines()[0])
    p.add_argument("--db", required=True, type=Path)
    p.add_argument("--password-stdin", action="store_true", required=True, help="the accounts' password, first line of stdin")
    p.add_argument("--directors", default="director,director2")
    p.add_argument("--users", default="1,5,10,20")
    p.add_argument("--duration", type=float, default=90)
    p.add_argument("--idle", type=float, default=180)
    p.add_argument("--import-csv", type=Path, default=None)
    p.add_argument("--import-users", type=int, default=None, help="users while the import runs (default: the largest level)")
    p.add_argument("--import-after", type=float, default=60, metavar="SECONDS",
                   help="start the import this long after the users (so they are signed in and steady)")
    p.add_argument("--today", default="2026-11-21")
    p.add_argument("--timeout", type=float, default=120)
    p.add_argument("--work", type=Path, default=Path("/work/scratch/load"))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--skip-cold", action="store_true")
    p.add_argument("--option", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="a Streamlit option for the server, e.g. runner.postScriptGC=false (repeatable)")
    args = p.parse_args(argv)
    password = sys.stdin.readline().rstrip("\n")
    accounts = accounts_for(args.db, password, [d for d in args.directors.split(",") if d])
    levels = [int(u) for u in args.users.split(",") if u]
    args.work.mkdir(parents=True, exist_ok=True)
    report: dict = {"db": str(args.db), "duration_s": args.duration, "think_s": 0, "accounts": len(accounts),
                    "started_at": time.strftime("%Y-%m-%d %H:%M:%S"), "cores": os.cpu_count(), "levels": {}}

    def say(*a):
        print(f"[{time.strftime('%H:%M:%S')} load {loadavg():.2f}]", *a, file=sys.stderr, flush=True)

    def save():
        args.out.write_text(json.dumps(report, indent=2))

    options = [x for o in args.option for x in (f"--{o.split('=', 1)[0]}", o.split("=", 1)[1])]
    report["streamlit_options"] = args.option
    proc, url = start_server(args.db, args.work / "server.log", args.today, 1, streamlit_options=options)
    report["server_pid"] = proc.pid
    sampler = Sampler(proc.pid, every=0.5)
    sampler.start()
    try:
        report["rss_after_start_mb"] = round(tree_rss_mb(proc.pid))
        if not args.skip_cold:
            director = next(a for a in accounts if a.role == "director")
            clinician = next(a for a in accounts if a.role == "clinician")
            for name, who in (("cold_director", director), ("cold_clinician", clinician)):
                row, result = level(url, 1, [who], sampler, rounds=1, timeout_s=args.timeout)
                row["samples"] = [(s.page, round(s.seconds, 3), s.error) for s in result.samples]
                report[name] = row
                say(name, row["samples"])
                save()
        row, _ = level(url, len(accounts), accounts, sampler, rounds=1, timeout_s=args.timeout)
        report["warmup"] = row
        say("warm-up", row["p50_s"], row["p95_s"], row["errors"])
        save()
        for users in levels:
            row, _ = level(url, users, accounts, sampler, duration_s=args.duration, timeout_s=args.timeout)
            report["levels"][str(users)] = row
            say(f"{users} users: p50 {row['p50_s']} p95 {row['p95_s']} runs {row['runs']} errors {row['errors']} "
                f"cpu/run {row.get('server_cpu_per_run_s')} cpu share {row.get('server_cpu_share')} rss {row.get('rss_end_mb')}")
            save()
        if args.idle:
            t = time.perf_counter() - sampler.t0
            time.sleep(args.idle)
            report["idle"] = {"seconds": args.idle, **sampler.window(t, time.perf_counter() - sampler.t0)}
            say("idle", report["idle"])
            save()
        if args.import_csv:
            users = args.import_users or (max(levels) if levels else 20)
            holder: dict = {}

            def run_import():
                time.sleep(args.import_after)
                holder["start"] = time.perf_counter() - sampler.t0
                done = subprocess.run([sys.executable, "-m", "analytics", "import", "--db", str(args.db), "--json",
                                       str(args.import_csv)], cwd=ROOT, capture_output=True, text=True)
                holder["end"] = time.perf_counter() - sampler.t0
                holder["exit"] = done.returncode
                holder["stderr"] = done.stderr[-2000:]

            importer = threading.Thread(target=run_import)
            importer.start()
            finished = {"t": None}

            def stop() -> bool:  # the users go on until 15 s after the import has ended
                if finished["t"] is None and not importer.is_alive():
                    finished["t"] = time.perf_counter()
                return finished["t"] is not None and time.perf_counter() > finished["t"] + 15

            row, result = level(url, users, accounts, sampler, stop=stop, timeout_s=args.timeout)
            importer.join()
            s0, s1 = holder["start"], holder["end"]
            offset = row["window_s"][0]
            during, outside, errors_during = [], [], 0
            for sample in result.samples:
                if sample.page in SESSION_PAGES:
                    continue
                t = offset + sample.started_s
                if t <= s1 and t + sample.seconds >= s0:  # the page run overlapped the import
                    errors_during += bool(sample.error)
                    if not sample.error:
                        during.append(sample.seconds)
                elif not sample.error:
                    outside.append(sample.seconds)
            report["during_import"] = {
                "users": users, "import_s": round(s1 - s0, 1), "import_exit": holder["exit"],
                "import_stderr_tail": holder["stderr"][-400:],
                "flow_runs_during": len(during) + errors_during, "errors_during": errors_during,
                "flow_p50_during_s": percentile(during, 50), "flow_p95_during_s": percentile(during, 95),
                "max_during_s": max(during) if during else None,
                "flow_p95_outside_s": percentile(outside, 95),
                "samples": [(round(offset + x.started_s - s0, 2), x.page, round(x.seconds, 3), x.error) for x in result.samples],
                "errors_total": row["errors"], "error_samples": row["error_samples"],
                **{k: v for k, v in sampler.window(s0, s1).items()},
            }
            say("during import", {k: v for k, v in report["during_import"].items() if k != "samples"})
            save()
    finally:
        stop_server(proc)  # first: nothing below may leave the server running
        sampler.stop()
        report["timeline"] = [tuple(round(x, 2) for x in r) for r in sampler.rows[::4]]
        save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
