"""Backup and restore of a whole store: `python -m analytics backup FILE` and `restore FILE`.

`backup` holds the database for reading (the dashboard keeps reading; a write waits a moment)
while its file is copied, then reads the copy back whole, verifies its audit chain and writes
the archive (analytics/archive.py: format, checksums, manifest). `restore` puts a backup at a
path that holds no database, then checks what it put there against the manifest: every table
and its row count (and content, with the same DuckDB version), the audit chain and its head,
and the checksum of every file (docs/operations.md).
"""
from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import duckdb

from . import archive, audit, keys, store
from .failures import first_line, is_damage


class BackupRefused(store.Refused):
    """A backup or restore that was not done, with the reason (nothing was changed)."""


@dataclass
class BackupResult:
    file: Path
    manifest: dict
    recorded: bool  # False: written, but the database's backup log could not be appended to

    def summary(self) -> dict:
        m = self.manifest
        return {"file": str(self.file), "bytes": m.get("backup_bytes"), "created_at": m.get("created_at"),
                "schema_version": m.get("schema_version"), "tables": {k: v["rows"] for k, v in m["tables"].items()},
                "audit": m.get("audit"), "recorded": self.recorded, "copy_seconds": m.get("copy_seconds")}


def _verify_audit_of(copy: Path) -> dict:
    result = audit.verify(copy)
    return {"audit_verified": result.as_dict()}


def backup(db: str | os.PathLike | None, dest: str | os.PathLike, *, wait: float | None = None,
           include_secrets: bool = False) -> BackupResult:
    """Write a backup of the database at `db` into `dest` (replaced only once the new one is complete).

    Refused (BackupRefused, nothing written) when the database is damaged: a backup of a damaged
    file must not take the place of a good one."""
    source = store.db_path(db)
    dest = Path(dest)
    _refuse_postgres(source)
    if not source.exists():
        raise FileNotFoundError(f"no database at {source}")
    if dest.resolve() == source.resolve() or dest.resolve() == Path(f"{source}.wal").resolve():
        raise BackupRefused(f"the backup file {dest} would replace the database itself: choose another name")
    companions = [(c.name, f) for c, f in store.companion_files(source, secrets=include_secrets)]
    _drop_bulk_leftovers(source, wait)
    try:
        with contextlib.ExitStack() as held:  # the lock is held only while the files are copied
            con = held.enter_context(store.connect(source, wait=wait))
            manifest = archive.write(con, source, dest, open_copy=store.connect, kind="manual",
                                     companions=companions, check_copy=_verify_audit_of, after_copy=held.close)
    except duckdb.Error as exc:
        if is_damage(exc):
            raise BackupRefused(f"the database {source} is damaged ({first_line(exc)}); no backup was written, so "
                                f"the last good one is kept: restore it (docs/operations.md)") from exc
        raise
    return BackupResult(dest, manifest, archive.record(source, dest, manifest))


@dataclass
class RestoreResult:
    database: Path
    manifest: dict
    tables: dict
    companions: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    audit_verified: bool = False

    def summary(self) -> dict:
        return {"database": str(self.database), "backup_created_at": self.manifest.get("created_at"),
                "schema_version": self.manifest.get("schema_version"), "tables": self.tables,
                "companions": [str(p) for p in self.companions], "warnings": self.warnings,
                "audit_verified": self.audit_verified}


def _drop_bulk_leftovers(source: Path, wait: float | None) -> None:
    """The unread rows a killed import of an earlier version left (store.drop_bulk_leftovers) are not copied
    into a backup: when there are any, a write connection, which drops them as it opens, is opened and closed
    first. Should that not be possible now (another process writing, a read-only file), the backup is taken
    as the file is."""
    bulk = {store.bulk_name(table) for table in store.BULK_TABLES}
    with store.connect(source, wait=wait) as con:
        if not bulk & set(archive.table_names(con)):
            return
    with contextlib.suppress(*store.DatabaseError, store.StoreBusy, store.Refused, OSError):
        with store.connect(source, write=True, wait=wait):
            pass


def _refuse_postgres(target) -> None:
    if isinstance(target, store.PostgresTarget):
        raise BackupRefused(f"{target.label} is a PostgreSQL database: back it up with pg_dump and restore it with "
                            "pg_restore (docs/operations.md); backup and restore here are for a database file")


def _holds_database(target: Path) -> list[Path]:
    return [p for p in (target, Path(f"{target}.wal")) if p.exists()]


def restore(backup_file: str | os.PathLike, db: str | os.PathLike | None = None) -> RestoreResult:
    """Restore `backup_file` at `db`, which must hold no database, and verify it; BackupRefused otherwise.

    Verified against the manifest: every member's SHA-256 (while unpacking), the same tables with
    the same row counts (and the same content fingerprints when this DuckDB version wrote them),
    and the audit chain (`audit --verify`) ending at the same entry. A restore that fails the
    check is moved aside as `<db>.failed-restore-<time>` and refused."""
    backup_file = Path(backup_file)
    target = store.db_path(db)
    _refuse_postgres(target)
    if not backup_file.is_file():
        raise FileNotFoundError(f"no backup file at {backup_file}")
    present = _holds_database(target)
    if present:
        raise BackupRefused(f"{present[0]} exists: restore only into a path that holds no database (move the old "
                            f"file aside first, or give another --db)")
    try:
        manifest = archive.read_manifest(backup_file)
    except archive.BackupFileError as exc:
        raise BackupRefused(str(exc)) from exc
    found = int(manifest.get("schema_version") or 0)
    if found > store.SCHEMA_VERSION:
        raise BackupRefused(f"{backup_file} holds schema version {found}, newer than this software's "
                            f"{store.SCHEMA_VERSION}: upgrade the software to restore it (nothing was changed)")
    companion_kinds = {c.name: c for c in store.COMPANIONS}
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = target.parent / f".{target.name}.{os.getpid()}.restoring"
    placed: list[Path] = []
    try:
        stage.mkdir(mode=0o700)
        try:
            manifest, members = archive.extract(backup_file, stage)
        except archive.BackupFileError as exc:
            raise BackupRefused(f"{exc}; nothing was restored") from exc
        # where each companion goes, refused before anything is placed
        moves: list[tuple[Path, Path, bool]] = []
        for member, path in members.items():
            if not member.startswith(archive.COMPANION_DIR + "/"):
                continue
            _, kind, name = member.split("/", 2)
            companion = companion_kinds.get(kind)
            if companion is None:
                raise BackupRefused(f"{backup_file} holds a {kind!r} file this software does not know; nothing was restored")
            destination = companion.place(target, name)
            if destination.exists() and not companion.aside and destination.read_bytes() != path.read_bytes():
                if companion.alternative is None:
                    raise BackupRefused(f"{destination} exists and differs from the one in the backup: move it aside "
                                        "first; nothing was restored")
                destination = companion.alternative(destination, path)
                if destination.exists() and destination.read_bytes() != path.read_bytes():
                    raise BackupRefused(f"{destination} exists and differs from the one in the backup: move it aside "
                                        "first; nothing was restored")
            moves.append((path, destination, companion.pending))
        if _holds_database(target):  # appeared meanwhile
            raise BackupRefused(f"{target} appeared while restoring; nothing was restored")
        notes: list[str] = []
        for companion in store.COMPANIONS:  # files of the path, not of a database: the old ones go aside
            if companion.aside:
                here = companion.place(target, "")
                if here.exists():
                    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
                    kept = here.with_name(f"{here.name}.before-restore-{stamp}")
                    os.replace(here, kept)
                    notes.append(f"the {companion.name} of the database that was at {target} was moved aside to {kept} "
                                 "(keep it with the incident record)")
        if archive.WAL in members:
            os.replace(members[archive.WAL], f"{target}.wal")
            placed.append(Path(f"{target}.wal"))
        os.replace(members[archive.DATABASE], target)
        placed.append(target)
        placed += _place([(source, destination) for source, destination, pending in moves if not pending])
        try:
            tables, warnings, audit_checked = _verify_restored(target, manifest)
        except BackupRefused as exc:
            aside = _move_aside(target)
            placed = [p for p in placed if p.exists() and p not in (target, Path(f"{target}.wal"))]
            raise BackupRefused(f"{exc}; the restored file was moved aside to {aside}") from exc
        # the journal of writes not yet applied: placed only now, since reading the restored database applies it
        _place([(source, destination) for source, destination, pending in moves if pending])
        placed = []
        return RestoreResult(target, manifest, tables, [d for _, d, _ in moves], notes + warnings, audit_checked)
    finally:
        for path in placed:  # a failure part-way: take back what was placed
            with contextlib.suppress(OSError):
                path.unlink()
        shutil.rmtree(stage, ignore_errors=True)


def _place(moves: list[tuple[Path, Path]]) -> list[Path]:
    """Copy companion files into place (owner only: keys, anchors, journals); the files placed."""
    placed = []
    for source, destination in moves:
        if not destination.exists():
            destination.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out, open(source, "rb") as data:
                shutil.copyfileobj(data, out)
            placed.append(destination)
    return placed


def _move_aside(target: Path) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    aside = target.with_name(f"{target.name}.failed-restore-{stamp}")
    os.replace(target, aside)
    wal = Path(f"{target}.wal")
    if wal.exists():
        os.replace(wal, f"{aside}.wal")
    return aside


def _verify_restored(target: Path, manifest: dict) -> tuple[dict, list[str], bool]:
    """Compare the restored database with its manifest; (rows per table, warnings, whether the audit
    chain was verified) or BackupRefused."""
    try:
        with store.connect(target) as con:
            restored = archive.describe(con)
    except duckdb.Error as exc:
        raise BackupRefused(f"the restored database cannot be read ({first_line(exc)})") from exc
    expected = manifest.get("tables") or {}
    if set(restored["tables"]) != set(expected):
        raise BackupRefused(f"the restored database holds tables {sorted(restored['tables'])}, the backup listed "
                            f"{sorted(expected)}")
    wrong = [f"{name}: {restored['tables'][name]['rows']} rows, the backup says {info['rows']}"
             for name, info in expected.items() if restored["tables"][name]["rows"] != info["rows"]]
    if not wrong and manifest.get("duckdb_version") == duckdb.__version__:
        wrong = [f"{name}: its content differs from the backup's" for name, info in expected.items()
                 if restored["tables"][name]["fingerprint"] != info.get("fingerprint")]
    if wrong:
        raise BackupRefused("the restored database does not match its backup: " + "; ".join(wrong))
    warnings = []
    recorded = manifest.get("audit_verified")
    if "audit_log" in restored["tables"]:
        missing = _missing_audit_keys(target)
        if missing:
            warnings.append(f"the audit chain was not verified: the key(s) {', '.join(missing)} that signed it are not in "
                            f"{keys.key_dir()}. Restore them from where the keys are kept (docs/security.md, \"Keys and "
                            "anchors\"), or take the backup with --include-secrets, then run `python -m analytics audit --verify`")
            return {name: info["rows"] for name, info in restored["tables"].items()}, warnings, False
        result = audit.verify(target)
        head = (manifest.get("audit") or {}).get("head_hash")
        if result.ok and head and result.head_hash != head:
            raise BackupRefused(f"the restored audit trail ends at {result.head_hash[:12]}…, the backup's at {head[:12]}…")
        if not result.ok:
            if recorded is not None and not recorded.get("ok") and recorded.get("first_bad_seq") == result.first_bad_seq:
                warnings.append(f"the audit trail was already broken when the backup was taken: {result.reason}")
            else:
                raise BackupRefused(f"the restored audit trail does not verify: {result.reason}")
    return {name: info["rows"] for name, info in restored["tables"].items()}, warnings, "audit_log" in restored["tables"]


def _missing_audit_keys(db: Path) -> list[str]:
    """Ids of the keys that signed audit entries of `db` and are not in the key folder."""
    with store.connect(db) as con:
        columns = {r[0] for r in con.execute("SELECT column_name FROM duckdb_columns() WHERE database_name = "
                                             "current_database() AND table_name = 'audit_log'").fetchall()}
        if "key_id" not in columns:
            return []
        ids = [r[0] for r in con.execute("SELECT DISTINCT key_id FROM audit_log WHERE key_id IS NOT NULL ORDER BY 1").fetchall()]
    return [key_id for key_id in ids if keys.find(audit.KEY_NAME, key_id) is None]
