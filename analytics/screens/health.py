"""The Health page (administrators), and what any page shows instead when the store cannot be used.

`health_screen(db, full)` is `python -m analytics health` as a table (analytics/health.py), with
the backup and restore commands for this database. `notice_for(exc, db)` turns what a page raised
into a notice a person can act on (analytics/failures.py sorts it): a busy store, a database
written by a newer version, a damaged file (restore the last backup, with the command), a full or
read-only disk, or an unexpected failure (its details in a private log file on the server). The
dashboard draws it in place of a traceback (pages/_notice.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .. import archive, failures, health, store


@dataclass(frozen=True, eq=False)
class HealthScreen:
    status: str  # ok, warning, critical
    headline: str
    checks: pd.DataFrame  # check, status, finding
    report: dict  # health.HealthReport.as_dict(): what `health --json` prints
    full: bool  # whether every table was read
    commands: dict  # what an administrator runs: backup, restore, health


STATUS_WORDS = {health.OK: "ok", health.WARNING: "look today", health.CRITICAL: "needs a person now",
                health.SKIPPED: "not checked"}


def health_screen(db, *, full: bool = False, limits: health.Limits = health.Limits()) -> HealthScreen:
    path = store.db_path(db)
    report = health.check(path, full=full, limits=limits)
    rows = [{"check": c.name.replace("_", " "), "status": STATUS_WORDS[c.status], "finding": c.summary}
            for c in report.checks]
    problems = [c for c in report.checks if c.status in (health.WARNING, health.CRITICAL)]
    headline = {health.OK: "Every check is fine.",
                health.WARNING: f"{len(problems)} check(s) need a look today.",
                health.CRITICAL: "A person is needed now: "
                                 + "; ".join(c.name.replace("_", " ") for c in problems if c.status == health.CRITICAL) + "."}[report.status]
    if isinstance(path, store.PostgresTarget):  # PostgreSQL's own tools; the URL without its password (.pgpass)
        commands = {
            "backup": f"pg_dump -Fc --dbname='{path.label}' -f outcomes-$(date +%a).dump",
            "restore": "createdb NEW_DATABASE && pg_restore --dbname=NEW_DATABASE outcomes-DAY.dump",
            "health": f"python -m analytics health --db '{path.label}'",
        }
    else:
        commands = {
            "backup": f"python -m analytics backup --db {path} {store.backup_dir(path)}/outcomes-$(date +%a){archive.SUFFIX}",
            "restore": f"python -m analytics restore BACKUP{archive.SUFFIX} --db NEW_PATH",
            "health": f"python -m analytics health --db {path}",
        }
    return HealthScreen(report.status, headline, pd.DataFrame(rows, columns=["check", "status", "finding"]),
                        report.as_dict(), full, commands)


@dataclass(frozen=True)
class Notice:
    kind: str  # failures.kind_of
    level: str  # "error", "warning" or "info": how the page draws it
    title: str
    text: str
    command: str | None = None  # what an administrator runs, shown as code
    retry: bool = False  # trying again may work (a busy store)


def notice_for(exc: BaseException, db=None, *, for_admin: bool = True) -> Notice:
    """What a page shows instead of a traceback for `exc` (unexpected failures are logged first).

    `for_admin` False (a visitor not signed in, a clinician, a director): the notice says what
    happened and to tell an administrator, without the server's file paths or commands."""
    path = store.db_path(db)
    kind = failures.kind_of(exc)
    if not for_admin and kind in ("damaged", "read_only", "refused", "disk", "missing", "unreachable", "auth"):
        if kind == "damaged":
            failures.explain(exc, path, context="dashboard")  # the log file, for the administrator
        title = {"damaged": "The database is damaged", "missing": "No database yet",
                 "unreachable": "The database server cannot be reached"}.get(kind, "This could not be done")
        return Notice(kind, "error" if kind != "missing" else "info", title,
                      "The clinic's database cannot be used at the moment. Nothing you entered was lost unless the page "
                      "said it was saved. Tell an administrator: what to do is on their Health page.")
    if kind == "busy":
        return Notice(kind, "warning", "The database is busy",
                      "Another process (an import, a backup or a migration) is writing to the database and has held it "
                      "for longer than this page waits. Nothing was lost. Try again in a minute.", retry=True)
    if kind == "schema_newer":
        return Notice(kind, "error", "This database needs a newer version of the software",
                      f"The database was written by a newer version of the software (schema version {exc.found}); this "
                      f"version knows schema versions up to {exc.known}. Nothing was read or changed. Upgrade the "
                      "software on this server to the version that wrote the database (or newer), then reload this page.")
    if kind == "damaged":
        failure = failures.explain(exc, path, context="dashboard")
        last = archive.last_backup(path)
        backup = f"`{last['file']}` (taken {last['at']})" if last else "your last backup"
        return Notice(kind, "error", "The database is damaged",
                      f"The database file could not be read: DuckDB found a part of it damaged. Nothing was changed. "
                      f"An administrator should keep the damaged file and restore {backup}:",
                      command=f"mv {path} {path}.damaged\npython -m analytics restore BACKUP --db {path}"
                              + (f"\n# details: {failure.log}" if failure.log else ""))
    if kind == "missing" and not isinstance(exc, store.PostgresUnavailable):
        return Notice(kind, "info", "No database yet",
                      f"No database at `{store.label(path)}`. Import data on the Data page, or build a demo clinic with "
                      "`python -m analytics demo`.")
    if kind in ("read_only", "refused", "disk", "missing", "unreachable", "auth"):
        failure = failures.explain(exc, path, context="dashboard")
        title = {"read_only": "The database can only be read", "disk": "The server could not write a file",
                 "refused": "This could not be done", "missing": "No database yet",
                 "unreachable": "The database server cannot be reached",
                 "auth": "The database server refused this dashboard's sign-in"}[kind]
        return Notice(kind, "error", title, failure.message[:1].upper() + failure.message[1:])
    failure = failures.explain(exc, path, context="dashboard")
    if kind == "committed":
        return Notice(kind, "warning", "Saved, but the server's disk needs attention",
                      "What you entered was saved, but writing the database file afterwards failed (the disk may be full). "
                      "Tell an administrator." + (f" Reference: {Path(failure.log).name}." if failure.log else ""))
    return Notice(kind, "error", "Something went wrong on this page",
                  "The page could not be shown. Nothing you entered was lost unless the page said it was saved. "
                  "Try again; if it happens again, tell an administrator"
                  + (f" and give them this reference: {Path(failure.log).name} (a log file on the server)." if failure.log
                     else "."))
