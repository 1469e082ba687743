"""Four threads each doing a ~1 s read through analytics.store.connect, and a short read behind a long one.

    python -m tools.storethreads DB [--n 40]

--n sizes the long read (a cross join of the assessments with range(n)); without it, it is calibrated
to about 1 s here. Prints one line (docs/performance.md, "Many users at once").
"""
from __future__ import annotations

import argparse
import threading
import time

from analytics import store

LONG = "SELECT count(*), sum(hash(a.assessment_id + b.x)) FROM assessments a, range({n}) b(x)"
SHORT = "SELECT count(*) FROM patients WHERE clinician = 'dr_osei'"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.storethreads")
    p.add_argument("db")
    p.add_argument("--n", type=int, default=None)
    args = p.parse_args(argv)

    def read(sql: str) -> None:
        with store.connect(args.db) as con:
            con.execute(sql).fetchall()

    def timed(sql: str) -> float:
        started = time.perf_counter()
        read(sql)
        return time.perf_counter() - started

    n = args.n
    if n is None:
        n = 5
        while (seconds := timed(LONG.format(n=n))) < 0.5:
            n *= 2
        n = max(1, int(n / seconds))
    one = timed(LONG.format(n=n))
    finished = [0.0] * 4

    def work(i: int) -> None:
        finished[i] = timed(LONG.format(n=n))

    started = time.perf_counter()
    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    alone = timed(SHORT)
    long = threading.Thread(target=read, args=(LONG.format(n=n),))
    long.start()
    time.sleep(0.05)
    behind = timed(SHORT)
    long.join()
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    print(f"n {n}, load {load}: one read alone {one:.2f} s; four threads all done in {wall:.2f} s, each finished after "
          f"{[round(x, 2) for x in sorted(finished)]} s; a short read alone {1000 * alone:.1f} ms, "
          f"behind a long read {1000 * behind:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
