"""Peak memory and time of each step of the benchmark's page work, one step after another in one process.

    python -m tools.pagesmemory DB [--steps frames,caches,intervals,durability]

What `python -m analytics bench` does after its import, on an existing database, with the peak
resident memory (VmHWM, reset before each step) and what stays resident after it, so the step that
sets `pages_peak_rss_mb` can be found (docs/performance.md, "The 100,000-patient memory and import
targets"). One line per step on stdout.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from analytics import bench, memory


def _resident_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.pagesmemory")
    parser.add_argument("db")
    parser.add_argument("--steps", default="frames,caches,intervals,durability")
    args = parser.parse_args(argv)
    memory.tune_allocator()
    from analytics.access import SYSTEM, DataAccess

    steps = args.steps.split(",")
    data = DataAccess(Path(args.db), SYSTEM)
    ws = bench.workspace(data)

    def step(name, fn):
        bench.reset_peak_rss()
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        print(f"{name:10s} wall {time.perf_counter() - wall:7.2f} s  cpu {time.process_time() - cpu:7.2f} s  "
              f"peak {bench.peak_rss_mb():6.0f} MB  resident after {_resident_mb():6.0f} MB", flush=True)
        return result

    frames = step("frames", ws.frames)
    if "caches" in steps:
        step("caches", lambda: bench.page_caches(ws))
    if "intervals" in steps:
        step("intervals", lambda: bench.all_suggestions(data, bench.BENCH_END))
    if "durability" in steps:
        step("durability", lambda: bench.durability_estimate(frames))
    print("load average", " ".join(Path("/proc/loadavg").read_text().split()[:3]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
