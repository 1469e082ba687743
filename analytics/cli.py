"""`python -m analytics COMMAND ...`: every command takes --db PATH.

This is the command registry. Each command is one module of analytics/commands/ (its
arguments and what it runs); the table below only names them. A command's module is
imported only when that command runs, so a slow import (FHIR models, scipy) never taxes
the others.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name: (module of analytics.commands, help)
COMMANDS: dict[str, tuple[str, str]] = {
    "import": ("import_files", "import CSV or FHIR files (exit 0 all stored, 1 some rows rejected and the rest stored, "
                               "2 nothing stored, 3 failed unexpectedly)"),
    "export": ("export", "export the store as CSV (or FHIR NDJSON) into DIR"),
    "demo": ("demo", "write a synthetic demo clinic through the import path"),
    "durability": ("durability", "cohort durability of response (Kaplan-Meier, interval-censored)"),
    "intervals": ("intervals", "personalised maintenance-interval suggestions, one row per responder"),
    "bench": ("bench", "benchmark import, pages, durability and intervals on a generated cohort (docs/performance.md)"),
    "users": ("users", "manage sign-in accounts: add, disable, enable, list, reset-password, set-role, grant, revoke"),
    "audit": ("audit", "print the audit trail (--since DATE, --json); --verify checks its hash chain"),
    "serve": ("serve", "serve the dashboard on one port from one or several processes (`make run`)"),
    "link": ("link", "patient self-report links: `link create --patient ID --instruments PHQ-9,GAD-7` prints a single-use link"),
    "backup": ("backup", "write a consistent backup of the whole store into FILE, while the dashboard runs (docs/operations.md)"),
    "restore": ("restore", "restore a backup FILE into a path that holds no database, and verify it"),
    "health": ("health", "schema, integrity, audit chain, imports, disk and backups: exit 0 ok, 1 warning, 2 critical"),
}


def command_module(name: str):
    return importlib.import_module(f"analytics.commands.{COMMANDS[name][0]}")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """Every command is listed; only the one named in `argv` (if any) is imported for its arguments."""
    argv = sys.argv[1:] if argv is None else argv
    chosen = argv[0] if argv and argv[0] in COMMANDS else None
    parser = argparse.ArgumentParser(prog="python -m analytics", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--db", metavar="PATH", default=None,
                       help="database file, or a PostgreSQL URL postgresql://user@host:port/dbname "
                            "(default: $OUTCOMES_DB or data/outcomes.duckdb)")
        if name == chosen:
            module = command_module(name)
            module.add_arguments(p)
            p.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser(argv).parse_args(argv)
    from .commands import run_command

    try:
        return run_command(args.command, args.run, args)
    except KeyboardInterrupt:
        print("interrupted: nothing was changed by the unfinished step", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
