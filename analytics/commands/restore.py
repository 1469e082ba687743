"""`python -m analytics restore FILE [--db PATH]`: put a backup where no database is, and verify it.

Exit 0 restored and verified, 2 refused (the path holds a database, the backup is newer than this
software, damaged, or does not verify: nothing is left at the path), 3 failed unexpectedly.
"""
from __future__ import annotations

import sys

from .. import backup
from . import EXIT_OK, print_json


def add_arguments(p) -> None:
    p.add_argument("file", metavar="FILE", help="a file written by `python -m analytics backup`")
    p.add_argument("--json", action="store_true", help="print what was restored as JSON")


def run(args) -> int:
    result = backup.restore(args.file, args.db)
    summary = result.summary()
    if args.json:
        print_json(summary)
    else:
        rows = sum(summary["tables"].values())
        print(f"restore: {result.database} from the backup of {summary['backup_created_at']}: {len(summary['tables'])} "
              f"tables, {rows:,} rows, schema version {summary['schema_version']}; "
              + ("row counts, content, checksums and the audit chain verified" if result.audit_verified
                 else "row counts, content and checksums verified"))
        for path in result.companions:
            print(f"restore: companion file {path}")
    for warning in result.warnings:
        print(f"restore: warning: {warning}", file=sys.stderr)
    return EXIT_OK
