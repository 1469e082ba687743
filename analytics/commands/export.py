"""`python -m analytics export DIR`: the store as CSV files in the import format (or FHIR NDJSON)."""
from __future__ import annotations

import sys

from .. import access
from ..export import export_csv


def add_arguments(p) -> None:
    p.add_argument("directory", metavar="DIR")
    p.add_argument("--format", choices=["csv", "fhir"], default="csv")


def run(args) -> int:
    db = getattr(args, "db", None)
    try:
        if getattr(args, "format", "csv") == "fhir":
            from ..fhir.export import export_fhir  # the FHIR models load only for a FHIR export

            access.DataAccess(db).log("export", detail={"format": "fhir", "directory": str(args.directory)})
            result = export_fhir(args.directory, db)
        else:
            result = export_csv(args.directory, db)
    except FileNotFoundError as exc:
        print(f"export failed: {exc}", file=sys.stderr)
        return 2
    if isinstance(result, dict):
        for name, path in result.items():
            print(f"{name}: {path}")
    return 0
