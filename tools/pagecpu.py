"""Server CPU per page run, page by page (docs/performance.md, wave 5).

    python -m tools.pagecpu DB OUT.json [--rounds 15] [--repeat] [--py-spy PATH]

Against a copy of DB with the benchmark's accounts (`analytics.bench_users.prepare`), one dashboard process
is started, every account runs its flow once (the warm-up: the first visits build the tables), then one
director and then one clinician run their flows `--rounds` times, one page run at a time: the server's
CPU seconds between the end of one run and the end of the next (from /proc, its whole process tree) are
that run's. The clinician opens a patient not opened before on each round, or with `--repeat` the same
patient every time. With `--py-spy`, py-spy records the server during the measured rounds (raw stacks
beside OUT). Prints the median and mean CPU and the median wall time per page, with the load average.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import time
from pathlib import Path

from analytics import bench_users
from tools.loadclient import Account, run_load


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.pagecpu", description=__doc__.splitlines()[0])
    p.add_argument("db", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--repeat", action="store_true", help="the clinician opens the same patient every round")
    p.add_argument("--py-spy", dest="py_spy", help="path of a py-spy executable: record the server")
    p.add_argument("--today", default="2026-11-21")
    args = p.parse_args(argv)
    work = args.out.parent / (args.out.stem + "-work")
    db, _accounts_file, prepared = bench_users.prepare(args.db, work, args.today)
    accounts = [Account.from_dict(a) for a in prepared["accounts"]]
    director, clinician = Account.from_dict(prepared["director"]), Account.from_dict(prepared["clinician"])
    if args.repeat:
        clinician = dataclasses.replace(clinician, patients=clinician.patients[:1])
    proc, url = bench_users.start_server(db, work / "server.log", args.today, 1)
    result: dict = {"pages": {}, "load_average": [], "repeat": args.repeat}
    spies = []
    try:
        run_load(url, len(accounts), accounts, rounds=1, timeout_s=900)
        if args.py_spy:
            spies = [subprocess.Popen([args.py_spy, "record", "--pid", str(pid), "--rate", "100", "--nonblocking",
                                       "--format", "raw", "--output", f"{args.out}.{pid}.spy"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                     for pid in bench_users.process_tree(proc.pid)
                     if b"streamlit" in Path(f"/proc/{pid}/cmdline").read_bytes()]
            time.sleep(1)
        for who in (director, clinician):
            last = {"cpu": bench_users.tree_cpu_s(proc.pid)}

            def on_run(_user, _run, sample, last=last):
                now = bench_users.tree_cpu_s(proc.pid)
                result["pages"].setdefault(sample.page, []).append((now - last["cpu"], sample.seconds))
                last["cpu"] = now

            result["load_average"].append(bench_users.load_average())
            run_load(url, 1, [who], rounds=args.rounds, timeout_s=300, on_run=on_run)
            result["load_average"].append(bench_users.load_average())
    finally:
        for spy in spies:
            spy.send_signal(2)
            spy.wait(30)
        bench_users.stop_server(proc)
    for page, rows in result["pages"].items():
        cpu = [r[0] for r in rows]
        print(f"{page:<11} n={len(rows):>3} server CPU median {statistics.median(cpu):.3f} s, mean {statistics.mean(cpu):.3f} s; "
              f"wall median {statistics.median(r[1] for r in rows):.3f} s")
    print("load average", result["load_average"])
    args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
