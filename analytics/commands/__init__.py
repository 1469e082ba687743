"""The commands of `python -m analytics`, one module each (analytics/cli.py names them).

A command module has `add_arguments(parser)` and `run(args) -> exit code`: it parses, calls
the domain and prints. Domain modules never import from here. What every command shares is
below: the exit codes and standard JSON on stdout.
"""
from __future__ import annotations

import json
import math
import sys

EXIT_OK, EXIT_PARTIAL, EXIT_FAILED = 0, 1, 2


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
