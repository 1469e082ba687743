"""One progress line on stderr for long commands, only when a person is watching.

Shown when stderr is a terminal and the caller did not ask for JSON; piped or scripted runs get
nothing extra (import, demo and benchmark).
"""
from __future__ import annotations

import sys
from typing import Callable

Progress = Callable[[str], None]


def terminal_progress(prefix: str, enabled: bool = True) -> Progress | None:
    """A writer that overwrites one stderr line, or None when stderr is not a terminal or not `enabled`."""
    if not enabled or not sys.stderr.isatty():
        return None

    def show(message: str) -> None:
        print(f"\r{prefix}: {message}\033[K", end="", file=sys.stderr, flush=True)
    return show


def clear(progress: Progress | None) -> None:
    """Remove the progress line before the command prints its result."""
    if progress:
        print("\r\033[K", end="", file=sys.stderr, flush=True)
