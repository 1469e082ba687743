"""`python -m analytics export DIR`: the store as CSV files in the import format (or FHIR NDJSON).

Works from a database that cannot be written (a read-only file or snapshot): the export is then
recorded in DIR/export-audit.json instead of the database's audit trail. Exit 0 written, 2 nothing
written (no database, busy, a full or read-only target; no partial files are left), 3 failed unexpectedly.
"""
from __future__ import annotations

import sys

from .. import access
from ..export import export_csv, recorded_failure, record_export, staged_directory


def add_arguments(p) -> None:
    p.add_argument("directory", metavar="DIR")
    p.add_argument("--format", choices=["csv", "fhir"], default="csv")


def run(args) -> int:
    db = getattr(args, "db", None)
    try:
        if getattr(args, "format", "csv") == "fhir":
            from ..fhir.export import export_fhir  # the FHIR models load only for a FHIR export

            data = access.DataAccess(db)
            detail = {"format": "fhir", "directory": str(args.directory)}
            with staged_directory(args.directory) as stage:
                note = record_export(data, stage, detail)
                with recorded_failure(data, note, detail):
                    result = {name: f"{args.directory}/{path.name}" for name, path in export_fhir(stage, db).items()}
                if note is not None:
                    result["audit"] = f"{args.directory}/{note.name}"
        else:
            result = export_csv(args.directory, db)
    except FileNotFoundError as exc:
        print(f"export failed: {exc}", file=sys.stderr)
        return 2
    for name, path in result.items():
        print(f"{name}: {path}")
    if "audit" in result:
        print(f"export: the database cannot be written, so this export is recorded in {result['audit']} "
              "instead of its audit trail", file=sys.stderr)
    return 0
