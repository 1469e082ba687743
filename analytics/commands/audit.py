"""`python -m analytics audit`: print the audit trail, or verify its hash chain (exit 2 if tampered)."""
from __future__ import annotations

import json
import sys

from .. import audit, store
from . import EXIT_FAILED, EXIT_OK, print_json


def add_arguments(p) -> None:
    p.add_argument("--since", metavar="DATE", default=None, help="entries on or after this date (YYYY-MM-DD)")
    p.add_argument("--until", metavar="DATE", default=None, help="entries up to the end of this date")
    p.add_argument("--actor", default=None)
    p.add_argument("--action", default=None)
    p.add_argument("--json", action="store_true")
    p.add_argument("--verify", action="store_true", help="recompute the hash chain (exit 2 if tampered)")
    p.add_argument("--mark-restored", action="store_true",
                   help="after restoring the database file from a backup: record, signed with the audit key, that "
                        "its trail now ends where the backup's did (exit 2 if the restored trail does not verify)")


def run(args) -> int:
    """`python -m analytics audit [--db PATH] [--since DATE] [--until DATE] [--json] [--verify | --mark-restored]`."""
    db = store.db_path(args.db)
    try:
        if getattr(args, "mark_restored", False):
            result = audit.mark_restored(db, detail={"via": "audit --mark-restored"})
            return _verdict(args, result, f"audit: restore recorded; {result.checked} entries verified")
        if getattr(args, "verify", False):
            result = audit.verify(db)
            return _verdict(args, result, f"audit: {result.checked} entries verified; newest hash {result.head_hash}")
        frame = audit.entries(db, since=args.since, until=getattr(args, "until", None),
                              actor=getattr(args, "actor", None), action=getattr(args, "action", None))
    except (ValueError, FileNotFoundError) as exc:  # busy and the rest: the wrapper (commands.run_command)
        print(f"audit: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print_json(audit.to_records(frame))
    else:
        for item in audit.to_records(frame):
            patients = ",".join(item["patients"])
            print(f"{item['seq']:>6} {item['logged_at']} {item['actor']:<16} {item['action']:<20} {item['outcome']:<6} "
                  f"{item['page'] or '-':<12} {patients or '-'} {json.dumps(item['detail'], sort_keys=True)}")
    return EXIT_OK


def _verdict(args, result, ok_line: str) -> int:
    """A chain check's answer: JSON, or one line (and its note); exit 0 if the chain holds."""
    if args.json:
        print_json(result.as_dict())
    else:
        print(ok_line if result.ok else f"audit: TAMPERED: {result.reason}")
        if result.note:
            print(f"audit: note: {result.note}")
    return EXIT_OK if result.ok else EXIT_FAILED
