"""The commands of `python -m analytics`, one module each (analytics/cli.py names them).

A command module has `add_arguments(parser)` and `run(args) -> exit code`: it parses, calls
the domain and prints. Domain modules never import from here. What every command shares is
below: the exit codes, standard JSON on stdout, the wrapper every command runs in
(`run_command`), and how an unexpected failure is told (`report_unexpected`: exit 3, one line and
a log file).
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from .. import failures
from ..failures import EXIT_FAILED, EXIT_OK, EXIT_PARTIAL, EXIT_UNEXPECTED  # noqa: F401 - the commands' exit codes
from ..failures import LOG_DIR_ENV  # noqa: F401 - where report_unexpected writes (default: <system temp>/outcomes-logs)


def print_json(obj) -> None:
    """Standard JSON on stdout: a missing value (NaN, NaT, pandas NA) or an infinity is null, never the
    bare NaN Python's json writes, which other tools refuse to parse."""
    json.dump(_json_safe(obj), sys.stdout, indent=2, default=str, allow_nan=False)
    sys.stdout.write("\n")


def _json_safe(value):
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, bool)):
        return value
    try:
        import pandas as pd

        if pd.isna(value):
            return None
    except (TypeError, ValueError):  # arrays and other non-scalars: left to default=str
        pass
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        try:
            return _json_safe(value.item())
        except (TypeError, ValueError):
            pass
    return value


def report_unexpected(command: str, exc: BaseException, database: str) -> tuple[str, Path | None]:
    """An unexpected failure, told once: one line on stderr and the details in a log file.

    `database` says what happened to the database, as the command knows it ("nothing was
    changed"). The log holds the traceback (files, lines, functions) with every quoted value of
    the error message masked, since messages can quote data (analytics/failures.py). The caller
    exits EXIT_UNEXPECTED. Returns (the line printed, the log file or None when none could be written).
    """
    log = failures.write_log(command, exc, database)
    where = f"details for a bug report: {log}" if log else "no log file could be written"
    message = f"{command} failed unexpectedly ({type(exc).__name__}); {database}. {where}"
    print(message, file=sys.stderr)
    return message, log


def run_command(name: str, run, args) -> int:
    """Every command runs through here: its own exit code, or what `failures.explain` makes of what it raised.

    0 done, 1 done in part (the command's own meaning: for import, some rows rejected), 2 nothing
    done or refused with the reason (busy, newer schema, read-only, no database, a full disk, a
    damaged database), 3 failed unexpectedly (one line and a log file). Never a traceback.
    """
    try:
        return int(run(args) or 0)
    except (KeyboardInterrupt, BrokenPipeError):
        raise
    except Exception as exc:  # noqa: BLE001 - the one place any command's failure becomes a message
        if failures.kind_of(exc) == "unexpected":
            message, log = report_unexpected(name, exc, "nothing was changed")
            failure = failures.Failure("unexpected", EXIT_UNEXPECTED, message, log)
        else:
            failure = failures.explain(exc, getattr(args, "db", None), context=name)
            message = f"{name}: {failure.message}"
            print(message, file=sys.stderr)
        if getattr(args, "json", False):
            print_json({**failure.as_dict(), "error": message})
        return failure.exit_code
