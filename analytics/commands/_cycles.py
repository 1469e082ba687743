"""What the durability and intervals commands share: the --instrument and the cohort's cycles."""
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
    """report.load(db, code): (tables, course, cycles), or None after saying on stderr that there is no database."""
    try:
        return report.load(db, code)
    except FileNotFoundError as exc:
        print(str(exc), file=sys.stderr)
        return None
