"""`python -m analytics COMMAND ...`: every command takes --db PATH.

Each command's work lives in its own module, imported only when that command
runs, so a slow import never taxes the others.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Callable

EXIT_OK, EXIT_PARTIAL, EXIT_FAILED = 0, 1, 2

COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {}


def command(name: str, help: str):
    def register(add_arguments: Callable[[argparse.ArgumentParser], None]):
        COMMANDS[name] = (help, add_arguments)
        return add_arguments
    return register


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


@command("import", "import CSV or FHIR files (exit 0 all accepted, 1 some rejected, 2 nothing imported)")
def _import(p):
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--json", action="store_true", help="print the import report as JSON")
    p.set_defaults(run=lambda a: __import__("analytics.ingest", fromlist=["x"]).cli_import(a))


@command("export", "export the store as CSV (or FHIR NDJSON) into DIR")
def _export(p):
    p.add_argument("directory", metavar="DIR")
    p.add_argument("--format", choices=["csv", "fhir"], default="csv")
    p.set_defaults(run=lambda a: __import__("analytics.export", fromlist=["x"]).cli_export(a))


@command("demo", "write a synthetic demo clinic through the import path")
def _demo(p):
    p.add_argument("--patients", type=int, default=300)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--end", metavar="YYYY-MM-DD", default=None, help="last day of the demo data (default 2026-11-20)")
    p.add_argument("--csv", metavar="DIR", default=None, help="also write the generated CSVs into DIR")
    p.set_defaults(run=lambda a: __import__("analytics.simulate", fromlist=["x"]).cli_demo(a))


@command("durability", "cohort durability of response (Kaplan-Meier, interval-censored)")
def _durability(p):
    p.add_argument("--instrument", default="PHQ-9")
    p.add_argument("--by", metavar="FIELD", default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=lambda a: __import__("analytics.report", fromlist=["x"]).cli_durability(a))


@command("intervals", "personalised maintenance-interval suggestions, one row per responder")
def _intervals(p):
    p.add_argument("--instrument", default="PHQ-9")
    p.add_argument("--target", type=float, default=0.8)
    p.add_argument("--today", metavar="YYYY-MM-DD", default=None,
                   help="who is in active care and what is due, as of this day (default: OUTCOMES_TODAY, else today)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=lambda a: __import__("analytics.report", fromlist=["x"]).cli_intervals(a))


@command("bench", "benchmark import, pages, durability and intervals on a generated cohort (docs/performance.md)")
def _bench(p):
    p.add_argument("--patients", type=int, default=None, metavar="N", help="one run with a cohort of N patients")
    p.add_argument("--sizes", metavar="N1,N2,...", default=None,
                   help="one child run per size; writes --out (default bench/results.json) and a log-log plot beside it")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3, help="runs per figure; each figure is their median")
    p.add_argument("--budget", type=float, default=240, metavar="SECONDS",
                   help="most seconds one figure (all its runs) may take before it is reported null; 0: no limit")
    p.add_argument("--work", metavar="DIR", default=None, help="scratch directory (default bench/work)")
    p.add_argument("--out", metavar="FILE", default=None, help="also write the JSON result here")
    p.add_argument("--table", metavar="RESULTS", default=None, help="print a results file as a markdown table")
    p.add_argument("--json", action="store_true", help="print only JSON (no progress)")
    p.set_defaults(run=lambda a: __import__("analytics.bench", fromlist=["x"]).cli_bench(a))



@command("users", "manage sign-in accounts: add, disable, enable, list, reset-password, set-role, grant, revoke")
def _users(p):
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name, help_text):
        sp = actions.add_parser(name, help=help_text, description=help_text)
        # --db may also follow the action (`users add --db PATH ...`); SUPPRESS keeps an earlier one
        sp.add_argument("--db", metavar="PATH", default=argparse.SUPPRESS, help="database file")
        return sp

    add = action("add", "add an account; the password is asked for (or read from stdin), never taken from argv")
    add.add_argument("user")
    add.add_argument("--role", required=True, choices=["clinician", "director", "admin"])
    add.add_argument("--clinician", metavar="HANDLE", default=None,
                     help="the clinician value their patients are filed under (default: the user name)")
    add.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    add.add_argument("--oidc-only", action="store_true", help="no local password: signs in through the identity provider only")
    action("disable", "disable an account and end its sessions").add_argument("user")
    action("enable", "enable a disabled account").add_argument("user")
    listing = action("list", "list accounts (never their password hashes)")
    listing.add_argument("--json", action="store_true")
    reset = action("reset-password", "set a new password, clear lockout, end open sessions")
    reset.add_argument("user")
    reset.add_argument("--password-stdin", action="store_true")
    role = action("set-role", "change an account's role (ends its open sessions)")
    role.add_argument("user")
    role.add_argument("role", choices=["clinician", "director", "admin"])
    role.add_argument("--clinician", metavar="HANDLE", default=None)
    grant = action("grant", "let a user open one patient's record")
    grant.add_argument("user")
    grant.add_argument("patient")
    grant.add_argument("--reason", default="")
    revoke = action("revoke", "withdraw a patient grant")
    revoke.add_argument("user")
    revoke.add_argument("patient")
    action("demo-accounts", "create one account per role with random passwords (demo databases only)")
    p.set_defaults(run=lambda a: __import__("analytics.auth", fromlist=["x"]).cli_users(a))


@command("audit", "print the audit trail (--since DATE, --json); --verify checks its hash chain")
def _audit(p):
    p.add_argument("--since", metavar="DATE", default=None, help="entries on or after this date (YYYY-MM-DD)")
    p.add_argument("--until", metavar="DATE", default=None, help="entries up to the end of this date")
    p.add_argument("--actor", default=None)
    p.add_argument("--action", default=None)
    p.add_argument("--json", action="store_true")
    p.add_argument("--verify", action="store_true", help="recompute the hash chain (exit 2 if tampered)")
    p.set_defaults(run=lambda a: __import__("analytics.audit", fromlist=["x"]).cli_audit(a))



@command("link", "patient self-report links: `link create --patient ID --instruments PHQ-9,GAD-7` prints a single-use link")
def _link(p):
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="create a single-use self-report link and print it")
    create.add_argument("--db", metavar="PATH", default=argparse.SUPPRESS, help="database file")
    create.add_argument("--patient", required=True, metavar="ID")
    create.add_argument("--instruments", default="PHQ-9", metavar="LIST", help="PHQ-9, GAD-7 or PHQ-9,GAD-7 (default PHQ-9)")
    create.add_argument("--base-url", default=None, metavar="URL",
                        help="the dashboard's address as patients reach it (default: $OUTCOMES_BASE_URL or http://localhost:8501)")
    create.add_argument("--hours", type=float, default=72, help="hours until the link expires (default 72)")
    p.set_defaults(run=lambda a: __import__("analytics.selfreport", fromlist=["x"]).cli_link(a))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m analytics", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_arguments) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--db", metavar="PATH", default=None, help="database file (default: $OUTCOMES_DB or data/outcomes.duckdb)")
        add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted: nothing was changed by the unfinished step", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
