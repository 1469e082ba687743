"""`python -m analytics durability`: cohort durability of response, JSON with --json or a short summary.

Exit codes: 0 done, 1 nothing to report (no response cycles yet), 2 bad arguments or no database.
"""
from __future__ import annotations

import sys

from .. import course, report, scales
from . import EXIT_FAILED, EXIT_OK, EXIT_PARTIAL, print_json
from ._cycles import instrument_code, read_cycles


def add_arguments(p) -> None:
    p.add_argument("--instrument", default=scales.PRIMARY)
    p.add_argument("--by", metavar="FIELD", default=None)
    p.add_argument("--json", action="store_true")


def run(args) -> int:
    code = instrument_code(args.instrument)
    if code is None:
        return EXIT_FAILED
    loaded = read_cycles(args.db, code)
    if loaded is None:
        return EXIT_FAILED
    cycles = loaded.cycles
    if args.by is not None and args.by not in cycles.columns:
        fields = [c for c in cycles.columns if c not in course.CYCLE_COLUMNS and c not in ("started_at", "instrument")]
        print(f"--by: no field {args.by!r}; choose one of: {', '.join(fields)}", file=sys.stderr)
        return EXIT_FAILED
    result = report.durability_report(cycles, code, args.by, model=loaded.model)
    if loaded.model is None and loaded.note:
        result["measurement_note"] = f"no measurement model ({loaded.note}): the figures are the definitions read literally"
    if args.json:
        print_json(result)
    else:
        _print_durability(result)
    return EXIT_OK if result["n_cycles"] else EXIT_PARTIAL


def _days(v) -> str:
    return "not reached" if v is None else f"{v:.0f} days"


def _print_durability(r: dict) -> None:
    print(f"Durability of response on {r['instrument']}: {r['n_patients']} patients, {r['n_cycles']} cycles "
          f"({r['n_events']} losses of response, {r['n_censored']} censored).")
    if r["n_cycles"]:
        lo, hi = r["median_ci"]
        print(f"Median time in response after an infusion: {_days(r['median_days'])} "
              f"(95% CI {_days(lo)} to {_days(hi)}); quartiles {_days(r['quartiles_days'][0])} and {_days(r['quartiles_days'][1])}.")
        if r.get("estimate_source") == "measurement model":
            print(f"  (scores read as noisy measurements; the definitions read literally give "
                  f"{_days(r.get('definitions_median_days'))}: a sensitivity analysis, see docs/durability.md)")
    post = r.get("post_induction") or {}
    if post.get("n_cycles"):
        print(f"After the last induction infusion: median {_days(post['median_days'])} ({post['n_cycles']} responders).")
    for name, g in (r.get("groups") or {}).items():
        print(f"  {name}: median {_days(g.get('median_days'))} over {g.get('n_cycles', 0)} cycles")
    if r.get("logrank_p") is not None:
        print(f"Difference between groups: p = {r['logrank_p']:.3g}")
    if r.get("note"):
        print(f"Note: {r['note']}")
