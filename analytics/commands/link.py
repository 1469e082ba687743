"""`python -m analytics link create`: a single-use patient self-report link, printed once (analytics/selfreport.py)."""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from .. import scales, selfreport, store
from ..access import SYSTEM, AccessDenied
from . import EXIT_FAILED, EXIT_OK


def add_arguments(p) -> None:
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="create a single-use self-report link and print it")
    create.add_argument("--db", metavar="PATH", default=argparse.SUPPRESS, help="database file")
    create.add_argument("--patient", required=True, metavar="ID")
    create.add_argument("--instruments", default=scales.PRIMARY, metavar="LIST", help="PHQ-9, GAD-7 or PHQ-9,GAD-7 (default PHQ-9)")
    create.add_argument("--base-url", default=None, metavar="URL",
                        help=f"the dashboard's address as patients reach it (default: ${selfreport.BASE_URL_ENV}; "
                             f"without either, http://localhost:${selfreport.PORT_ENV} or {selfreport.DEFAULT_PORT}, "
                             "which only this computer can open)")
    create.add_argument("--hours", type=float, default=72, help="hours until the link expires (default 72)")


def run(args) -> int:
    """`python -m analytics link create --patient ID --instruments PHQ-9,GAD-7 [--db PATH] [--base-url URL] [--hours 72]`."""
    db = store.db_path(args.db)
    try:
        if not db.exists():
            raise FileNotFoundError(f"no database at {store.label(db)}")
        scope = dataclasses.replace(SYSTEM, user=os.environ.get("USER") or SYSTEM.user)  # the operator owns the file
        link = selfreport.create_link(db, scope, args.patient, args.instruments, hours=args.hours, base=args.base_url, page="cli")
    except (ValueError, AccessDenied, FileNotFoundError) as exc:  # busy and the rest: the wrapper (commands.run_command)
        print(f"link: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(link.url)
    print(f"link {link.link_id}: {', '.join(link.instruments)}, single use, expires {link.expires_at:%Y-%m-%d %H:%M}",
          file=sys.stderr)
    if link.local:
        print(f"link: this address points at this computer, so a patient's phone cannot open it; give --base-url "
              f"or set {selfreport.BASE_URL_ENV} to the dashboard's address as patients reach it", file=sys.stderr)
    return EXIT_OK
