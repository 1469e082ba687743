"""The commands of `python -m analytics`, one module each (analytics/cli.py names them).

A command module has `add_arguments(parser)` and `run(args) -> exit code`: it parses, calls
the domain and prints. Domain modules never import from here. What every command shares is
below: the exit codes, standard JSON on stdout, and how an unexpected failure is told
(`report_unexpected`: exit 3, one line and a log file).
"""
from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

EXIT_OK, EXIT_PARTIAL, EXIT_FAILED, EXIT_UNEXPECTED = 0, 1, 2, 3
LOG_DIR_ENV = "OUTCOMES_LOG_DIR"  # where report_unexpected writes (default: <system temp>/outcomes-logs)


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
    the error message masked, since messages can quote data. The caller exits EXIT_UNEXPECTED.
    Returns (the line printed, the log file or None when none could be written).
    """
    log = _write_failure_log(command, exc, database)
    where = f"details for a bug report: {log}" if log else "no log file could be written"
    message = f"{command} failed unexpectedly ({type(exc).__name__}); {database}. {where}"
    print(message, file=sys.stderr)
    return message, log


def _masked(text: str) -> str:
    return re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", text)


def _write_failure_log(command: str, exc: BaseException, database: str) -> Path | None:
    import os
    import platform
    import tempfile
    import time
    import traceback

    folder = Path(os.environ.get(LOG_DIR_ENV) or Path(tempfile.gettempdir()) / "outcomes-logs")
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        path = folder / f"{command}-{stamp}-{os.getpid()}.log"
        lines = [f"command: {command}", f"when: {stamp}", f"database: {database}",
                 f"python {platform.python_version()} on {platform.platform()}"]
        try:
            import duckdb
            lines.append(f"duckdb {duckdb.__version__}")
        except Exception:  # noqa: BLE001 - the log is written whatever is importable
            pass
        chain: list[BaseException] = []
        current: BaseException | None = exc
        while current is not None and current not in chain and len(chain) < 5:
            chain.append(current)
            current = current.__cause__ or current.__context__
        for error in reversed(chain):
            lines.append("")
            lines.append(f"{type(error).__module__}.{type(error).__qualname__}: {_masked(str(error))[:2000]}")
            frames = traceback.extract_tb(error.__traceback__)
            if len(frames) > 60:  # a RecursionError repeats one frame a thousand times
                frames = frames[:30] + frames[-30:]
            for frame in frames:
                lines.append(f"  {frame.filename}:{frame.lineno} in {frame.name}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
        return path
    except OSError:
        return None
