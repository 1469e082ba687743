"""Secrets and records kept outside the database file: the audit key, the pseudonym key and the
audit anchors (docs/security.md, "Keys and anchors").

Someone who can edit the database file (a copy, a backup, another account on the server) must
not be able to rewrite the audit trail so that it still verifies, nor cut off its newest
entries unnoticed. So the audit trail's HMAC key and the anchor (the sequence number and hash
of every entry appended) live in a separate directory:

    $OUTCOMES_KEY_DIR, default $XDG_CONFIG_HOME/ketamine-outcomes (~/.config/ketamine-outcomes)

The directory is created 0700 and each key file 0600 on first use. A key file holds 32 random
bytes as hex; its id (the first 16 hex digits of a SHA-256 over it) is stored with every entry
it signed, so a retired or restored key is found again by id (`audit-<id>.key`). Anchors are
one append-only text file per database file (named by a hash of the file's absolute path):
one line `seq<TAB>hash<TAB>key id` per entry, written after the entry's transaction commits, and
`restore<TAB>seq<TAB>hash<TAB>key id<TAB>signature` when an operator restored the file from a backup
(the trail knowingly set back to entry `seq`; the signature is an HMAC under the audit key).
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path

KEY_BYTES = 32
ENV = "OUTCOMES_KEY_DIR"


class KeyFileError(RuntimeError):
    """A key file exists but cannot be used (unreadable, malformed)."""


def key_dir() -> Path:
    """$OUTCOMES_KEY_DIR, else $XDG_CONFIG_HOME/ketamine-outcomes, else ~/.config/ketamine-outcomes."""
    explicit = os.environ.get(ENV)
    if explicit:
        return Path(explicit)
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "ketamine-outcomes"


def private_dir(path: Path) -> Path:
    """`path` made if missing, readable by this account only (0700)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        os.chmod(path, mode & 0o700)
    return path


def key_id_of(key: bytes) -> str:
    return hashlib.sha256(b"outcomes-key-id:" + key).hexdigest()[:16]


def _read_key(path: Path) -> bytes:
    try:
        text = path.read_text().strip()
        key = bytes.fromhex(text)
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"key file {path} cannot be read: {exc}") from None
    if len(key) < 16:
        raise KeyFileError(f"key file {path} holds no usable key")
    return key


def current(name: str) -> tuple[str, bytes]:
    """(key id, key) of the key called `name` ("audit", "pseudonym"), created 0600 on first use."""
    folder = private_dir(key_dir())
    path = folder / f"{name}.key"
    if not path.exists():
        key = secrets.token_bytes(KEY_BYTES)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first: use theirs
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(key.hex() + "\n")
    key = _read_key(path)
    return key_id_of(key), key


def find(name: str, key_id: str) -> bytes | None:
    """The key `name` whose id is `key_id`: the current one, or a retired one kept as `<name>-<id>.key`."""
    folder = key_dir()
    for path in (folder / f"{name}.key", folder / f"{name}-{key_id}.key"):
        if path.exists():
            try:
                key = _read_key(path)
            except KeyFileError:
                continue
            if key_id_of(key) == key_id:
                return key
    return None


def loose_files() -> list[Path]:
    """Key files that others than the owner may read (they should be 0600)."""
    folder = key_dir()
    if not folder.exists():
        return []
    return [p for p in sorted(folder.glob("*.key")) if stat.S_IMODE(p.stat().st_mode) & 0o077]


def mac(key: bytes, message: bytes) -> str:
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def derive(name: str, purpose: str, value: str) -> str:
    """HMAC-SHA256 of `value` under key `name`, separated by `purpose` (hex)."""
    _, key = current(name)
    return mac(key, f"{purpose}\x00{value}".encode("utf-8"))


# -- anchors ---------------------------------------------------------------------------------

def _database_name(db) -> str:
    """A database file's absolute path; a PostgreSQL database's URL without its password (its `label`)."""
    label = getattr(db, "label", None)
    return label if label is not None else str(Path(db).resolve())


def anchor_path(db: str | os.PathLike) -> Path:
    """The anchor file of one database (by its absolute path, or a PostgreSQL database's URL)."""
    resolved = _database_name(db)
    return key_dir() / "anchors" / f"{hashlib.sha256(resolved.encode('utf-8')).hexdigest()[:32]}.anchor"


def anchor_append(db: str | os.PathLike, seq: int, digest: str, key_id: str | None) -> None:
    """Record one committed entry."""
    anchor_append_many(db, [(seq, digest)], key_id)


def anchor_append_many(db: str | os.PathLike, entries: list[tuple[int, str]], key_id: str | None) -> None:
    """Record committed entries ((seq, hash), in order). One write with O_APPEND: lines from several
    processes never mix."""
    if not entries:
        return
    path = anchor_path(db)
    private_dir(path.parent)
    new = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        if new:  # a header naming the file, for a person reading the directory
            os.write(fd, f"# audit anchor of {_database_name(db)}\n".encode("utf-8", "replace"))
        os.write(fd, "".join(f"{int(seq)}\t{digest}\t{key_id or '-'}\n" for seq, digest in entries).encode("ascii"))
    finally:
        os.close(fd)


RESTORE = "restore"  # an anchor line setting the expected trail back to an entry (a restore from a backup)


def restore_mac(key: bytes, db: str | os.PathLike, seq: int, digest: str) -> str:
    """The signature of a restore mark: only the holder of the audit key can set a trail back."""
    return mac(key, f"anchor-restore\x00{_database_name(db)}\x00{int(seq)}\x00{digest}".encode("utf-8"))


def anchor_mark_restore(db: str | os.PathLike, seq: int, digest: str, key_id: str, key: bytes) -> None:
    """Record, signed with the audit key, that the database was restored and its trail now ends at
    entry `seq` (hash `digest`): the entries anchored after it were lost with the restore, knowingly."""
    path = anchor_path(db)
    private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, f"{RESTORE}\t{int(seq)}\t{digest}\t{key_id}\t{restore_mac(key, db, seq, digest)}\n".encode("ascii"))
    finally:
        os.close(fd)


def anchor_events(db: str | os.PathLike) -> list[tuple] | None:
    """The anchor file in order, or None when there is none: ("entry", seq, hash) for each anchored
    entry and ("restore", seq, hash, key id, signature) for each restore mark."""
    path = anchor_path(db)
    if not path.exists():
        return None
    events: list[tuple] = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line or line.startswith("#"):
            continue
        parts = line.split("\t")
        try:
            if parts[0] == RESTORE:
                events.append((RESTORE, int(parts[1]), parts[2], parts[3], parts[4]))
            else:
                events.append(("entry", int(parts[0]), parts[1]))
        except (ValueError, IndexError):
            continue  # a torn line from a crash mid-write
    return events


def anchor_read(db: str | os.PathLike) -> list[tuple[int, str]] | None:
    """(seq, hash) of every anchored entry, in file order (restore marks left out), or None when there is no anchor."""
    events = anchor_events(db)
    return None if events is None else [(e[1], e[2]) for e in events if e[0] == "entry"]
