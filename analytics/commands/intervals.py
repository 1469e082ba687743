"""`python -m analytics intervals`: the suggested maintenance interval of every responder.

Exit codes: 0 done, 1 nothing to report (no responders yet), 2 bad arguments or no database.
"""
from __future__ import annotations

import sys

from .. import report, scales
from . import EXIT_FAILED, EXIT_OK, EXIT_PARTIAL, print_json
from ._cycles import instrument_code, today_of


def add_arguments(p) -> None:
    p.add_argument("--instrument", default=scales.PRIMARY)
    p.add_argument("--target", type=float, default=0.8)
    p.add_argument("--today", metavar="YYYY-MM-DD", default=None,
                   help="who is in active care and what is due, as of this day (default: OUTCOMES_TODAY, else today)")
    p.add_argument("--json", action="store_true")


def run(args) -> int:
    code = instrument_code(args.instrument)
    if code is None:
        return EXIT_FAILED
    if not 0 < args.target < 1:
        print(f"--target must be a probability between 0 and 1 (e.g. 0.8), got {args.target}", file=sys.stderr)
        return EXIT_FAILED
    today = today_of(args)
    if today is None:
        return EXIT_FAILED
    try:
        result = report.intervals_report(report.suggestions(args.db, code, args.target, today))
    except FileNotFoundError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print_json(result)
    else:
        rows = result["patients"]
        if not rows:
            print(result.get("note", "no responders"))
        else:
            print(f"Suggested maintenance intervals ({code}, {len(rows)} responders, target {args.target:.0%} "
                  f"still in response at the next infusion):")
            for r in rows[:50]:
                print(f"  {r['patient_id']}: every {r['suggested_interval_days']} days "
                      f"(range {r['interval_low_days']}-{r['interval_high_days']}), {r['basis']}, "
                      f"next due {r['next_due_on']}" + (f", taper: {r['taper']}" if r["taper"] != "none" else ""))
            if len(rows) > 50:
                print(f"  ... and {len(rows) - 50} more (use --json)")
    return EXIT_OK if result["patients"] else EXIT_PARTIAL
