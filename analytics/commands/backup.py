"""`python -m analytics backup [--db PATH] FILE`: a consistent backup of the whole store into one file.

Exit 0 written, 2 not written (no database, busy, a damaged database, no room: the reason on
stderr; an existing FILE is replaced only by a complete backup), 3 failed unexpectedly.
"""
from __future__ import annotations

import sys

from .. import archive, backup, store
from . import EXIT_OK, print_json


def add_arguments(p) -> None:
    p.add_argument("file", metavar="FILE", help="the backup file to write (e.g. outcomes-$(date +%%a).tar.gz)")
    p.add_argument("--wait", type=float, default=None, metavar="SECONDS",
                   help="how long to wait for a write in progress (default $OUTCOMES_LOCK_WAIT or 120)")
    p.add_argument("--include-secrets", action="store_true",
                   help="also copy companion files that hold keys (kept out by default: docs/operations.md)")
    p.add_argument("--json", action="store_true", help="print what was written as JSON")


def run(args) -> int:
    result = backup.backup(args.db, args.file, wait=args.wait, include_secrets=args.include_secrets)
    summary = result.summary()
    if args.json:
        print_json(summary)
    else:
        rows = sum(summary["tables"].values())
        print(f"backup: {result.file} ({summary['bytes']:,} bytes): {len(summary['tables'])} tables, {rows:,} rows, "
              f"schema version {summary['schema_version']}; the database was held {summary['copy_seconds']:.2f} s")
    if not result.recorded:
        print(f"backup: written, but not recorded in {archive.log_path(store.db_path(args.db))} "
              "(health will not see it)", file=sys.stderr)
    return EXIT_OK
