"""The backup file: what one holds, how one is written from a database file, and how it is checked.

A backup is one gzip-compressed POSIX tar (`tar tzf FILE` lists it) holding

    manifest.json             what the backup holds: schema version, every table with its row count
                              and a fingerprint of its content, the sequences, the audit trail's
                              head, and the SHA-256 of every other member
    database.duckdb           a byte copy of the database file, made while its lock was held
    database.duckdb.wal       its write-ahead log, when it held committed changes not yet in the file
    companions/NAME/FILE      files that belong to the database but live outside it (store.COMPANIONS)
    SHA256SUMS                the SHA-256 of each member above, manifest included (`sha256sum -c` format)

Why a byte copy: DuckDB lets readers share a file while no process writes it, so a copy made
while holding it for reading is one committed state, every table, sequence and constraint as
they are, whatever migrations later add. Measured on a 10,000-patient demo (56 MB): the database
was held 0.08-0.15 s while it was copied (docs/operations.md). The content is
then read back from the copy (every value of every table, which checks DuckDB's block checksums)
outside the lock, so a damaged database is found before its backup replaces a good one.

Table names come from the database (`table_names`), never from a hand-written list. This module
opens no database itself: callers hand it a connection whose current database is the one to read
(`open_copy` is `store.connect`), so the store's pre-migration backup and `python -m analytics
backup` write the same format.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import time
import zlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

FORMAT = "ketamine-outcomes-backup"
FORMAT_VERSION = 1
SUFFIX = ".tar.gz"
MANIFEST = "manifest.json"
SUMS = "SHA256SUMS"
DATABASE = "database.duckdb"
WAL = "database.duckdb.wal"
COMPANION_DIR = "companions"
_MEMBER = re.compile(r"^(manifest\.json|SHA256SUMS|database\.duckdb|database\.duckdb\.wal|"
                     r"companions/[A-Za-z0-9_.-]+/[A-Za-z0-9_.@+-]+)$")
_CHUNK = 4 * 2**20
# gzip level 1: the demo database compresses 5:1 at about 100 MB/s of CPU; level 6 gains 10% for 3x the time
COMPRESS_LEVEL = 1


class BackupFileError(ValueError):
    """Not a backup of this format, or a member that does not match its checksum (a damaged file)."""


# --- what a database holds ----------------------------------------------------------

def attached_file(con) -> Path | None:
    """The file of the connection's current database (None in memory)."""
    rows = con.execute("SELECT path FROM duckdb_databases() WHERE database_name = current_database()").fetchall()
    return Path(rows[0][0]) if rows and rows[0][0] else None


def table_names(con) -> list[str]:
    """Every table of the current database, read from its catalogue."""
    return [r[0] for r in con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() AND NOT temporary "
        "ORDER BY table_name").fetchall()]


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def read_tables(con, names: Iterable[str] | None = None) -> dict[str, dict]:
    """Row count and content fingerprint of each table, reading every value of every column.

    Reading every value makes DuckDB check the checksum of every data block, so damage raises here
    (`failures.is_damage` recognises it). The fingerprint (a sum of DuckDB's row hashes) depends on
    the content only, not on row order or file layout; it is comparable between copies read by the
    same DuckDB version."""
    out = {}
    for name in table_names(con) if names is None else names:
        rows, total = con.execute(f"SELECT count(*), CAST(sum(hash(t)) AS VARCHAR) FROM {_quoted(name)} AS t").fetchall()[0]
        out[name] = {"rows": int(rows), "fingerprint": total or "0"}
    return out


def describe(con) -> dict:
    """What the current database holds, for a manifest: schema version, tables, sequences, audit head."""
    tables = read_tables(con)
    version = 0
    if "schema_version" in tables:
        version = con.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchall()[0][0]
    sequences = {name: value for name, value in con.execute(
        "SELECT sequence_name, last_value FROM duckdb_sequences() WHERE database_name = current_database() "
        "ORDER BY sequence_name").fetchall()}
    audit = None
    if "audit_log" in tables:
        head = con.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchall()
        audit = {"entries": tables["audit_log"]["rows"], "head_seq": head[0][0] if head else 0,
                 "head_hash": head[0][1] if head else None}
    return {"schema_version": int(version), "tables": tables, "sequences": sequences, "audit": audit}


# --- writing ------------------------------------------------------------------------------

def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _safe_name(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_.@+-]", "_", name).lstrip(".")
    return cleaned or "file"


def write(con, logical_db: Path, dest: Path, *, open_copy: Callable, kind: str,
          companions: Iterable[tuple[str, Path]] = (), check_copy: Callable[[Path], dict] | None = None,
          after_copy: Callable[[], None] | None = None) -> dict:
    """Write a backup of the database `con` has open into `dest`; returns its manifest.

    The caller holds the database so that no process writes it (a read connection, or the write
    lock after a CHECKPOINT) while its files are copied; then `after_copy()` is called, which may
    let it go (`con` is not used again). Then the copy is read through `open_copy(path)` (every
    value of every table), `check_copy(path)` may add fields to the manifest (the audit chain's
    verification), and the archive is written beside `dest` and renamed onto it, so `dest` is
    either the previous file or a complete backup. A staging folder beside `dest` (mode 0700)
    holds the copy meanwhile: the destination needs room for the database and its backup.
    """
    dest = Path(dest)
    source = attached_file(con)
    if source is None:
        raise BackupFileError("an in-memory database has no file to back up")
    dest.parent.mkdir(parents=True, exist_ok=True)
    stage = dest.parent / f".{dest.name}.{os.getpid()}.staging"
    partial = dest.parent / f".{dest.name}.{os.getpid()}.partial"
    try:
        stage.mkdir(mode=0o700)
        copied = stage / DATABASE
        started = time.monotonic()
        shutil.copyfile(source, copied)
        wal = Path(f"{source}.wal")
        if wal.exists() and wal.stat().st_size:
            shutil.copyfile(wal, stage / WAL)
        extra_files: list[tuple[str, Path]] = []
        for name, path in companions:
            member = f"{COMPANION_DIR}/{_safe_name(name)}/{_safe_name(path.name)}"
            target = stage / member
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            extra_files.append((member, target))
        copy_seconds = time.monotonic() - started
        if after_copy is not None:
            after_copy()
        with open_copy(copied) as copy_con:
            content = describe(copy_con)
        import duckdb  # only for its version in the manifest

        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind,
            "created_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "source": str(Path(logical_db).resolve()), "copied_from": str(source),
            "duckdb_version": duckdb.__version__, "copy_seconds": round(copy_seconds, 3),
            **content,
        }
        if check_copy is not None:
            manifest.update(check_copy(copied))
        members = [(DATABASE, copied)] + ([(WAL, stage / WAL)] if (stage / WAL).exists() else []) + extra_files
        manifest["files"] = {member: {"bytes": path.stat().st_size, "sha256": _sha256(path)} for member, path in members}
        manifest_bytes = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
        sums = {MANIFEST: hashlib.sha256(manifest_bytes).hexdigest(),
                **{member: info["sha256"] for member, info in manifest["files"].items()}}
        sums_bytes = "".join(f"{digest}  {member}\n" for member, digest in sums.items()).encode()
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz", compresslevel=COMPRESS_LEVEL,
                                                      format=tarfile.PAX_FORMAT) as tar:
            _add_bytes(tar, MANIFEST, manifest_bytes)
            for member, path in members:
                info = tar.gettarinfo(str(path), arcname=member)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mode = 0o600
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            _add_bytes(tar, SUMS, sums_bytes)
        _fsync(partial)
        os.replace(partial, dest)
        with contextlib.suppress(OSError):
            _fsync(dest.parent)
        manifest["backup_bytes"] = dest.stat().st_size
        return manifest
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        with contextlib.suppress(OSError):
            partial.unlink()


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o600, int(time.time())
    tar.addfile(info, io.BytesIO(data))


# --- reading ------------------------------------------------------------------------------

def _open(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, mode="r:gz")
    except (tarfile.TarError, OSError, EOFError) as exc:
        if isinstance(exc, (FileNotFoundError, PermissionError)):
            raise
        raise BackupFileError(f"{path} is not a backup file (a gzip-compressed tar): {exc}") from None


def read_manifest(path: str | os.PathLike) -> dict:
    """The manifest of a backup file (BackupFileError when it is not one of this format)."""
    path = Path(path)
    with _open(path) as tar:
        try:
            member = tar.next()
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise BackupFileError(f"{path} is damaged: {exc}") from None
        if member is None or member.name != MANIFEST:
            raise BackupFileError(f"{path} is not a backup of this software (it does not start with {MANIFEST})")
        try:
            manifest = json.loads(tar.extractfile(member).read())
        except (ValueError, tarfile.TarError, OSError, EOFError) as exc:
            raise BackupFileError(f"{path}: its manifest cannot be read: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupFileError(f"{path} is not a backup of this software (format {manifest.get('format')!r})"
                              if isinstance(manifest, dict) else f"{path}: its manifest is not an object")
    if int(manifest.get("format_version", 0)) > FORMAT_VERSION:
        raise BackupFileError(f"{path} is a backup format version {manifest.get('format_version')}, newer than this "
                              f"software's {FORMAT_VERSION}: upgrade the software to restore it")
    return manifest


def extract(path: str | os.PathLike, into: Path) -> tuple[dict, dict[str, Path]]:
    """Unpack a backup into the empty folder `into`, checking every member against its SHA-256.

    Returns (manifest, member name -> extracted file). Only the members this format names are
    written, under names chosen here (a crafted member name cannot reach outside `into`)."""
    path = Path(path)
    manifest = read_manifest(path)
    expected = manifest.get("files") or {}
    found: dict[str, Path] = {}
    sums_text = None
    manifest_digest = None
    with _open(path) as tar:
        try:
            for member in tar:
                if not member.isfile() or not _MEMBER.match(member.name):
                    raise BackupFileError(f"{path}: unexpected member {member.name[:200]!r}")
                source = tar.extractfile(member)
                if member.name in (MANIFEST, SUMS):
                    data = source.read()
                    if member.name == SUMS:
                        sums_text = data.decode("ascii", "replace")
                    else:
                        manifest_digest = hashlib.sha256(data).hexdigest()
                    continue
                if member.name not in expected:
                    raise BackupFileError(f"{path}: member {member.name!r} is not in its manifest")
                target = into / member.name
                target.parent.mkdir(parents=True, exist_ok=True)
                digest = hashlib.sha256()
                with open(target, "wb") as out:
                    for block in iter(lambda: source.read(_CHUNK), b""):
                        digest.update(block)
                        out.write(block)
                if digest.hexdigest() != expected[member.name]["sha256"]:
                    raise BackupFileError(f"{path} is damaged: {member.name} does not match the checksum in its manifest")
                found[member.name] = target
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            if isinstance(exc, OSError) and exc.errno is not None:
                raise  # our own write failed (a full disk): not the backup's fault
            raise BackupFileError(f"{path} is damaged (cut short or altered): {exc}") from None
    missing = sorted(set(expected) - set(found))
    if missing or DATABASE not in found:
        raise BackupFileError(f"{path} is incomplete: missing {', '.join(missing) or DATABASE}")
    sums = dict(reversed(line.split("  ", 1)) for line in (sums_text or "").splitlines() if "  " in line)
    if sums.get(MANIFEST) != manifest_digest:
        raise BackupFileError(f"{path} is damaged: its manifest does not match {SUMS}")
    return manifest, found


# --- the backup log -------------------------------------------------------------------------

def log_path(db: Path) -> Path:
    """`<database>.backups`: one JSON line per backup written of that database (read by `health`)."""
    return Path(f"{db}.backups")


def record(db: Path, dest: Path, manifest: dict) -> bool:
    """Append a backup to the database's backup log; False when the log cannot be written."""
    entry = {"at": manifest.get("created_at"), "file": str(Path(dest).resolve()), "kind": manifest.get("kind"),
             "bytes": manifest.get("backup_bytes"), "schema_version": manifest.get("schema_version"),
             "rows": sum(t["rows"] for t in manifest.get("tables", {}).values())}
    try:
        with open(log_path(Path(db)), "a", encoding="utf-8") as f:
            f.write(json.dumps(entry, sort_keys=True) + "\n")
        return True
    except OSError:
        return False


def last_backup(db: Path, kind: str | None = None) -> dict | None:
    """The newest entry of the database's backup log (of `kind` if given), or None."""
    try:
        lines = log_path(Path(db)).read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a line cut short by a full disk
        if isinstance(entry, dict) and (kind is None or entry.get("kind") == kind):
            return entry
    return None
