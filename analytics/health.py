"""Is the store fit to run, and does a person need to look? `python -m analytics health` and the Health page.

Each check gives a status: `ok`, `warning` (a person should look today), `critical` (a person
is needed now: the data cannot be trusted or used) or `skipped`. The report's status is the worst
of them, and the command's exit code follows it: 0 ok, 1 warning, 2 critical (the convention of
monitoring plugins, so a scheduler or Nagios-style monitor can alert on it). docs/operations.md
lists every condition:

| check | warning | critical |
|---|---|---|
| `database` | | no database at the path |
| `schema_version` | older than this software (migrated, after a backup, at the next write) | newer than this software |
| `integrity` | | a table cannot be read whole (DuckDB's block checksums) |
| `keys` | | a key of treatments or assessments is held by more than one row (full check only) |
| `audit_chain` | | the hash chain does not verify (`audit --verify`) |
| `write_ahead_log` | committed changes not yet in the database file (a checkpoint failed) | |
| `last_import` | none yet, or older than `import_age_hours` | |
| `quarantined` | rows quarantined in the last `quarantine_days` days | |
| `free_disk` | less than twice the database plus 1 GiB free | less than the database plus 256 MiB free |
| `last_backup` | none recorded, older than `backup_age_hours`, or its file is gone | |
| `busy` | a write held the database for longer than the wait: nothing else was checked | |
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import duckdb

from . import archive, audit, store
from .failures import is_damage, restore_advice

OK, WARNING, CRITICAL, SKIPPED = "ok", "warning", "critical", "skipped"
_RANK = {SKIPPED: 0, OK: 0, WARNING: 1, CRITICAL: 2}
GIB = 2**30
MIB = 2**20


@dataclass(frozen=True)
class Limits:
    """When a check turns to `warning`; the command's options set them."""
    import_age_hours: float = 48
    backup_age_hours: float = 36  # a nightly backup missed once
    quarantine_days: int = 7


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    summary: str  # one line for a person
    value: dict = field(default_factory=dict)  # the figures, for --json and monitors


@dataclass(frozen=True)
class HealthReport:
    database: Path
    checked_at: str
    checks: list[Check]

    @property
    def status(self) -> str:
        worst = max((_RANK[c.status] for c in self.checks), default=0)
        return {0: OK, 1: WARNING, 2: CRITICAL}[worst]

    @property
    def exit_code(self) -> int:
        return _RANK[self.status]

    def check(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)

    def as_dict(self) -> dict:
        return {"database": str(self.database), "checked_at": self.checked_at, "status": self.status,
                "exit_code": self.exit_code, "schema_version_known": store.SCHEMA_VERSION,
                "checks": {c.name: {"status": c.status, "summary": c.summary, **c.value} for c in self.checks}}


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _bytes(n: float) -> str:
    for unit, size in (("GiB", GIB), ("MiB", MIB), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} bytes"


def _hours(seconds: float) -> str:
    value, unit = (round(seconds / 3600), "hour") if seconds >= 2 * 3600 else (round(seconds / 60), "minute")
    return f"{value} {unit}{'' if value == 1 else 's'}"


def check(db=None, *, full: bool = True, limits: Limits = Limits(), wait: float | None = None,
          now: datetime | None = None) -> HealthReport:
    """Every check of the store at `db` (`full=False` skips reading every table, the slow one)."""
    path = store.db_path(db)
    now = now or datetime.now(timezone.utc)
    checks: list[Check] = []
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(path, store.PostgresTarget):  # its server watches its own disk, integrity and backups
        return HealthReport(path, stamp, [_audit(path)])
    if not path.exists():
        checks.append(Check("database", CRITICAL, f"no database at {path}", {"path": str(path)}))
        checks.append(_free_disk(path, 0))
        return HealthReport(path, stamp, checks)
    size = _size(path)
    wal = _size(Path(f"{path}.wal"))
    checks.append(Check("database", OK, f"{path}: {_bytes(size + wal)}", {"path": str(path), "bytes": size + wal,
                                                                          "file_bytes": size, "wal_bytes": wal}))
    try:
        checks += _inside(path, full, limits, wait)
    except store.StoreBusy as exc:
        checks.append(Check("busy", WARNING, f"{exc}; the database checks did not run", {}))
    checks.append(_free_disk(path, size + wal))
    checks.append(_last_backup(path, limits, now))
    return HealthReport(path, stamp, checks)


def _inside(path: Path, full: bool, limits: Limits, wait: float | None) -> list[Check]:
    """The checks that read the database (one read connection: writers wait until it is done)."""
    out: list[Check] = []
    try:
        with store.connect(path, wait=wait) as con:
            version = store.current_version(con)
            if version < store.SCHEMA_VERSION:
                out.append(Check("schema_version", WARNING,
                                 f"schema version {version}, older than this software's {store.SCHEMA_VERSION}: the next write "
                                 f"migrates it, after a backup into {store.backup_dir(path)}",
                                 {"version": version, "software": store.SCHEMA_VERSION}))
            else:
                out.append(Check("schema_version", OK, f"schema version {version} (this software's)",
                                 {"version": version, "software": store.SCHEMA_VERSION}))
            wal = _size(Path(f"{path}.wal"))
            if wal:  # no process writes while this connection reads: a log left behind is a failed checkpoint
                out.append(Check("write_ahead_log", WARNING,
                                 f"{_bytes(wal)} of committed changes are not yet in the database file (a checkpoint failed, "
                                 "e.g. on a full disk): free disk space; the next write finishes it", {"bytes": wal}))
            else:
                out.append(Check("write_ahead_log", OK, "every committed change is in the database file", {"bytes": 0}))
            if full:
                tables = archive.read_tables(con)
                rows = sum(t["rows"] for t in tables.values())
                out.append(Check("integrity", OK, f"read every value of {len(tables)} tables ({rows:,} rows): every block "
                                                  "checksum matched", {"tables": {k: v["rows"] for k, v in tables.items()}}))
                out.append(_keys(con))
            else:
                out.append(Check("integrity", SKIPPED, "not checked (quick check); run the full check to read every table", {}))
                out.append(Check("keys", SKIPPED, "not checked (quick check); run the full check to read every key", {}))
            out += _imports(con, limits)
    except store.SchemaTooNew as exc:
        return [Check("schema_version", CRITICAL, str(exc), {"version": exc.found, "software": store.SCHEMA_VERSION})]
    except duckdb.Error as exc:
        if not is_damage(exc):
            raise
        first = str(exc).strip().splitlines()[0][:200]
        return out + [Check("integrity", CRITICAL, f"the database is damaged ({first}): {restore_advice(path)}",
                            {"error": first})]
    out.append(_audit(path))
    return out


def _keys(con) -> Check:
    """Is every key of treatments and assessments held by one row? Their one writer keeps them so (DuckDB holds no
    index on them since schema v9: ingest/write.py's checks and `check_keys_unique`); a row written past it (by
    hand, with another program) would be counted twice in every figure. Counts only: no patient is named."""
    have = set(archive.table_names(con))
    repeated = {}
    for table in ("treatments", "assessments"):
        if table in have:
            repeated[table] = store.repeated_keys(con, table)
    bad = {t: n for t, n in repeated.items() if n}
    if bad:
        return Check("keys", CRITICAL, "; ".join(f"{n:,} key(s) of {t} held by more than one row" for t, n in bad.items())
                     + ": the figures count those records twice; restore the last good backup or remove the copies",
                     {"repeated": repeated})
    return Check("keys", OK, "every infusion and assessment key is held by one row", {"repeated": repeated})


def _audit(path: Path) -> Check:
    try:
        result = audit.verify(path)
    except duckdb.Error as exc:
        if not is_damage(exc):
            raise
        return Check("audit_chain", CRITICAL, "the audit trail cannot be read: the database is damaged", {})
    if result.ok:
        return Check("audit_chain", OK, f"{result.checked:,} entr{'y' if result.checked == 1 else 'ies'} verified",
                     result.as_dict())
    return Check("audit_chain", CRITICAL, f"the audit trail does not verify: {result.reason}", result.as_dict())


def _imports(con, limits: Limits) -> list[Check]:
    have = set(archive.table_names(con))
    if "import_batches" not in have:
        return [Check("last_import", WARNING, "no import yet", {})]
    # the files of one import share its transaction's time stamp: the last import is all of them
    last = con.execute(
        "SELECT CAST(imported_at AS VARCHAR), date_diff('second', imported_at, current_localtimestamp()), "
        "string_agg(DISTINCT source, ', '), string_agg(DISTINCT kind, ', '), "
        "sum(rows_inserted + rows_updated + rows_unchanged), sum(rows_rejected) FROM import_batches "
        "WHERE imported_at = (SELECT max(imported_at) FROM import_batches) GROUP BY imported_at").fetchall()
    out = []
    if not last:
        out.append(Check("last_import", WARNING, "no import yet", {}))
    else:
        at, age, source, kind, stored, rejected = last[0]
        value = {"at": at, "age_hours": round(age / 3600, 1), "source": source, "kind": kind, "rows_stored": stored,
                 "rows_rejected": rejected}
        status = WARNING if age > limits.import_age_hours * 3600 else OK
        out.append(Check("last_import", status, f"{_hours(age)} ago ({source}, {stored:,} rows stored, {rejected:,} rejected)"
                         + (f": older than {limits.import_age_hours:g} hours" if status == WARNING else ""), value))
    quarantined = con.execute(
        "SELECT count(*) FROM rejected_rows r JOIN import_batches b USING (batch_id) "
        "WHERE b.imported_at >= current_localtimestamp() - to_days(CAST(? AS INTEGER))", [limits.quarantine_days]).fetchall()[0][0]
    out.append(Check("quarantined", WARNING if quarantined else OK,
                     f"{quarantined:,} rows quarantined in the last {limits.quarantine_days} days"
                     + (": fix them in the source and import again (Data page, Rejected rows)" if quarantined else ""),
                     {"rows": quarantined, "days": limits.quarantine_days}))
    return out


def _free_disk(path: Path, database_bytes: int) -> Check:
    folder = path.parent if path.parent.exists() else Path(os.path.abspath(os.sep))
    usage = shutil.disk_usage(folder)
    value = {"free_bytes": usage.free, "total_bytes": usage.total, "folder": str(folder)}
    if usage.free < database_bytes + 256 * MIB:
        return Check("free_disk", CRITICAL, f"{_bytes(usage.free)} free in {folder}: an import or its checkpoint may fail; "
                                            "free space now", value)
    if usage.free < 2 * database_bytes + GIB:
        return Check("free_disk", WARNING, f"{_bytes(usage.free)} free in {folder}: less than twice the database plus 1 GiB",
                     value)
    return Check("free_disk", OK, f"{_bytes(usage.free)} free in {folder}", value)


def _last_backup(path: Path, limits: Limits, now: datetime) -> Check:
    last = archive.last_backup(path)
    if last is None:
        return Check("last_backup", WARNING, "no backup recorded: schedule `python -m analytics backup` (docs/operations.md)", {})
    value = dict(last)
    try:
        at = datetime.strptime(last["at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
        age = (now - at).total_seconds()
    except (KeyError, TypeError, ValueError):
        return Check("last_backup", WARNING, "the backup log cannot be read", value)
    value["age_hours"] = round(age / 3600, 1)
    if not Path(last.get("file", "")).exists():
        return Check("last_backup", WARNING, f"the last backup, {last.get('file')}, is no longer there", value)
    if age > limits.backup_age_hours * 3600:
        return Check("last_backup", WARNING, f"the last backup is {_hours(age)} old ({last['file']}): older than "
                                             f"{limits.backup_age_hours:g} hours", value)
    return Check("last_backup", OK, f"{_hours(age)} ago: {last['file']}", value)
