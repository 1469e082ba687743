"""`python -m analytics import FILE...`: CSV or FHIR files through the validated import.

Exit 0 all stored, 1 some rows rejected (the rest stored), 2 nothing stored, 3 an unexpected
failure (one line on stderr naming a log file with the details; never a traceback).

The command lowers its own CPU priority first (`IMPORT_NICENESS`; `--full-priority` keeps it): a bulk
import runs beside the clinic's dashboard on the same machine, and the clinicians using it come first.
"""
from __future__ import annotations

import os
import sys

from .. import failures
from ..ingest import ImportReport, import_files
from ..progress import clear, terminal_progress
from . import EXIT_UNEXPECTED, print_json, report_unexpected

IMPORT_NICENESS = 10  # the import's niceness (Unix; 0 is normal, 19 the lowest): the dashboard's page runs come first


def add_arguments(p) -> None:
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--json", action="store_true", help="print the import report as JSON")
    p.add_argument("--no-model", action="store_true",
                   help="do not fit and save the dashboard's clinic model of the new data after the import")
    p.add_argument("--full-priority", action="store_true",
                   help="run at the normal CPU priority (by default the import lowers its own, so a dashboard "
                        "on the same machine keeps serving while it runs)")


def lower_priority(full_priority: bool = False) -> bool:
    """Lower this process's CPU priority to a niceness of IMPORT_NICENESS (never raise it: an import started
    with `nice -n 19` stays at 19) unless `full_priority`; True if the process now runs at IMPORT_NICENESS or
    lower priority. Where the system has no niceness (or refuses the change) the import runs as it is."""
    if full_priority or not hasattr(os, "nice"):
        return False
    try:
        now = os.nice(0)
        if now < IMPORT_NICENESS:
            os.nice(IMPORT_NICENESS - now)
    except OSError:
        return False
    return True


def run(args) -> int:
    as_json = getattr(args, "json", False)
    progress = terminal_progress("import", not as_json)
    report: ImportReport | None = None
    lower_priority(getattr(args, "full_priority", False))
    try:
        report = import_files(args.files, db=getattr(args, "db", None), user=os.environ.get("USER", "system"),
                              progress=progress)
        clear(progress)
        if as_json:
            print_json(report.to_dict())
        else:
            stream = sys.stdout if report.exit_code == 0 and not report.warnings else sys.stderr
            for line in report.messages():
                print(line, file=stream)
        if report.committed and not getattr(args, "no_model", False):
            save_clinic_model(getattr(args, "db", None), progress)
        return report.exit_code
    except (KeyboardInterrupt, BrokenPipeError):
        raise
    except Exception as exc:  # noqa: BLE001 - the one place an unexpected failure becomes exit 3
        clear(progress)
        # The import's transaction is the only thing it commits, and the report says whether it did.
        committed = report is not None and report.committed
        if failures.kind_of(exc) not in ("unexpected", "committed") and not committed:  # busy, newer schema, damaged...
            failure = failures.explain(exc, getattr(args, "db", None), context="import")
            print(f"import: {failure.message}", file=sys.stderr)
            if as_json:
                print_json({"exit_code": failure.exit_code, "error": failure.message, "files": [], "committed": False,
                            "warnings": [], "log": str(failure.log) if failure.log else None})
            return failure.exit_code
        state = "the import was committed (its rows are stored)" if committed else "nothing was changed"
        message, log = report_unexpected("import", exc, state)
        if as_json:
            print_json({"exit_code": EXIT_UNEXPECTED, "error": message, "files": [], "committed": committed,
                        "warnings": [], "log": str(log) if log else None})
        return EXIT_UNEXPECTED


def save_clinic_model(db, progress) -> None:
    """After a committed import: fit the clinic's durability model of the new data version and save it
    beside the database (analytics/screens/saved.py), so the dashboard's first visit loads it instead of
    fitting it in the visitor's page. Saving is an optimisation: nothing here changes the import's exit
    code or messages, and a failure or an interruption leaves the dashboard to fit the model itself."""
    from ..screens import workspace

    try:
        if progress:
            progress("fitting the clinic's durability model for the dashboard")
        workspace.fit_and_save_clinic_model(db)
    except (Exception, KeyboardInterrupt):  # noqa: BLE001 - see the docstring
        pass
    finally:
        clear(progress)
