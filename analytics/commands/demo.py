"""`python -m analytics demo`: simulate a clinic and import it through the ordinary import path."""
from __future__ import annotations

import sys
import time
from datetime import date
from pathlib import Path

from .. import store
from ..ingest import import_tables
from ..progress import clear, terminal_progress
from ..simulate import DEFAULT_END, simulate_clinic


def add_arguments(p) -> None:
    p.add_argument("--patients", type=int, default=300)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--end", metavar="YYYY-MM-DD", default=None, help="last day of the demo data (default 2026-11-20)")
    p.add_argument("--csv", metavar="DIR", default=None, help="also write the generated CSVs into DIR")


def run(args) -> int:
    started = time.monotonic()
    n = int(getattr(args, "patients", 300))
    seed = int(getattr(args, "seed", 7))
    end_text = getattr(args, "end", None)
    try:
        end = date.fromisoformat(end_text) if end_text else DEFAULT_END
    except ValueError:
        print(f"demo: --end must be a date YYYY-MM-DD, got {end_text!r}", file=sys.stderr)
        return 2
    if end > date.today():
        print(f"demo: --end {end} is in the future; the importer rejects future dates", file=sys.stderr)
        return 2
    if n < 1:
        print(f"demo: --patients must be at least 1, got {n}", file=sys.stderr)
        return 2
    progress = terminal_progress("demo", n >= 5000)
    clinic = simulate_clinic(n, seed, end=end, progress=progress)
    csv_dir = getattr(args, "csv", None)
    if csv_dir:
        clinic.write_csv(csv_dir)
    if progress:
        progress("importing")
    db = store.db_path(getattr(args, "db", None))
    report = import_tables(clinic.tables, file_name=f"demo-seed{seed}-n{n}", source="demo", db=db)
    clear(progress)
    t = clinic.tables
    code = int(report.exit_code)
    if code != 0:
        # A demo that does not import cleanly is a bug in the generator or the importer: say why.
        for line in report.messages():
            print(f"demo: {line}", file=sys.stderr)
    print(
        f"demo: {len(t['patients']):,} patients, {len(t['treatments']):,} infusions, "
        f"{len(t['assessments']):,} assessments -> {store.label(db)} in {time.monotonic() - started:.1f}s"
        + ("" if code == 0 else f" (import exit code {code})")
    )
    return code
