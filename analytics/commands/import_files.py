"""`python -m analytics import FILE...`: CSV or FHIR files through the validated import."""
from __future__ import annotations

import os
import sys

from ..ingest import import_files
from ..progress import clear, terminal_progress
from . import print_json


def add_arguments(p) -> None:
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--json", action="store_true", help="print the import report as JSON")


def run(args) -> int:
    progress = terminal_progress("import", not getattr(args, "json", False))
    report = import_files(args.files, db=getattr(args, "db", None), user=os.environ.get("USER", "system"),
                          progress=progress)
    clear(progress)
    if getattr(args, "json", False):
        print_json(report.to_dict())
    else:
        stream = sys.stdout if report.exit_code == 0 else sys.stderr
        for line in report.messages():
            print(line, file=stream)
    return report.exit_code
