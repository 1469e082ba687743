"""What the durability and intervals commands share: the --instrument, the cohort's cycles and --today."""
from __future__ import annotations

import sys

from .. import report, scales


def instrument_code(name: str) -> str | None:
    """The registry code an --instrument value names, or None after saying on stderr which ones exist."""
    scale = scales.resolve(name)
    if scale is None:
        print(f"--instrument: unknown instrument {name!r}; known: {', '.join(scales.codes())}", file=sys.stderr)
        return None
    return scale.code


def read_cycles(db, code: str):
    """report.load(db, code): the whole clinic's cycles and model (intervals.ClinicModel), or None
    after saying on stderr that there is no database."""
    try:
        return report.load(db, code)
    except FileNotFoundError as exc:
        print(str(exc), file=sys.stderr)
        return None


def today_of(args):
    """--today, else OUTCOMES_TODAY (as the dashboard), else today; None after saying on stderr
    that --today is not a date."""
    import os
    from datetime import date

    text = getattr(args, "today", None) or os.environ.get("OUTCOMES_TODAY")
    try:
        return date.fromisoformat(text) if text else date.today()
    except ValueError:
        print(f"--today must be a date YYYY-MM-DD, got {text!r}", file=sys.stderr)
        return None
