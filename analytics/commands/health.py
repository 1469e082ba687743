"""`python -m analytics health [--db PATH] [--json]`: whether a person is needed (analytics/health.py).

Exit 0 every check ok, 1 a warning (look today), 2 critical (a person is needed now),
3 the check itself failed unexpectedly. docs/operations.md lists the conditions.
"""
from __future__ import annotations

from .. import health
from . import print_json

MARK = {health.OK: "ok      ", health.WARNING: "WARNING ", health.CRITICAL: "CRITICAL", health.SKIPPED: "skipped "}


def add_arguments(p) -> None:
    p.add_argument("--json", action="store_true")
    p.add_argument("--quick", action="store_true", help="skip reading every table (the integrity check)")
    p.add_argument("--import-age", type=float, default=health.Limits.import_age_hours, metavar="HOURS",
                   help="warn when the last import is older (default %(default)s)")
    p.add_argument("--backup-age", type=float, default=health.Limits.backup_age_hours, metavar="HOURS",
                   help="warn when the last backup is older (default %(default)s)")
    p.add_argument("--quarantine-days", type=int, default=health.Limits.quarantine_days, metavar="DAYS",
                   help="warn about rows quarantined in this many days (default %(default)s)")
    p.add_argument("--wait", type=float, default=None, metavar="SECONDS", help="how long to wait for a write in progress")


def run(args) -> int:
    limits = health.Limits(args.import_age, args.backup_age, args.quarantine_days)
    report = health.check(args.db, full=not args.quick, limits=limits, wait=args.wait)
    if args.json:
        print_json(report.as_dict())
    else:
        print(f"health of {report.database}: {report.status.upper()}")
        for c in report.checks:
            print(f"  {MARK[c.status]} {c.name}: {c.summary}")
    return report.exit_code
