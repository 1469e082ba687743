"""Every command ends with an exit code that says what happened and a message, never a traceback
(issue 15, points 3 and 6): 0 done, 1 done in part (import: some rows rejected), 2 nothing done or
refused with the reason, 3 failed unexpectedly (one line and a private log file).

Each case of the reliability review is made for real where this machine allows it: a store held by
another process, a read-only file and folder (and a read-only mount as root), a full filesystem (a
small tmpfs as root), a database damaged in the middle of a block, in its header and in its
write-ahead log, a database from a newer version of the software; and injected where it cannot be
made (a full disk under a non-root user, an exception nobody expected).
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from analytics import cli, selfreport, store
from fixtures import snapshot

ROOT = Path(__file__).resolve().parent.parent
BLOCK_HEADER = 3 * 4096  # DuckDB's file header; then blocks of 256 KiB
BLOCK = 262144


def run(*args: str, env: dict | None = None, code: str | None = None) -> subprocess.CompletedProcess:
    """`python -m analytics ARGS` (or `python -c CODE ARGS`) in a process of its own."""
    command = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "analytics", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def main(capsys, *args: str) -> tuple[int, str, str]:
    """The command line in this process: (exit code, stdout, stderr)."""
    code = cli.main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def told_once(err: str) -> str:
    """The failure is one line on stderr, and never a traceback."""
    assert "Traceback" not in err and 'File "' not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


@contextlib.contextmanager
def held_by_another_process(db: Path):
    """Another process opens `db` for writing (as an import does) and keeps it until the block ends."""
    ready = db.with_name(db.name + ".held")
    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time\n"
                               "con = duckdb.connect(sys.argv[1])\nopen(sys.argv[2], 'w').close()\ntime.sleep(600)\n",
                               str(db), str(ready)], cwd=ROOT)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert holder.poll() is None and time.monotonic() < deadline, "the holding process did not start"
            time.sleep(0.05)
        yield holder
    finally:
        holder.kill()
        holder.wait()
        ready.unlink(missing_ok=True)


def damage(db: Path, where: str) -> Path:
    """Overwrite bytes of a database file the way a failing disk or a bad copy does."""
    if where == "header":
        offset = 4096 + 8  # inside the first database header
    else:  # inside the block holding the assessments, near its start (DuckDB checks only the part a block uses)
        with store.connect(db) as con:
            block = con.execute("SELECT min(block_id) FROM pragma_storage_info('assessments') WHERE block_id >= 0").fetchall()[0][0]
        offset = BLOCK_HEADER + block * BLOCK + 512
    with open(db, "r+b") as f:
        f.seek(offset)
        f.write(b"\xab" * 4096)
    return db


def make_newer(db: Path) -> Path:
    con = duckdb.connect(str(db))
    con.execute("INSERT INTO schema_version (version) VALUES (?)", [store.SCHEMA_VERSION + 3])
    con.close()
    return db


READ_COMMANDS = [["durability"], ["intervals", "--json"], ["audit"], ["audit", "--verify"], ["users", "list"]]


# --- a store held by another process --------------------------------------------------------------

def test_a_busy_store_is_exit_2_with_a_message_for_every_command(writable_db, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(store, "LOCK_WAIT_SECONDS", 0.3)
    with held_by_another_process(writable_db):
        for args in [*READ_COMMANDS, ["export", str(tmp_path / "out")], ["backup", str(tmp_path / "b.tar.gz")],
                     ["link", "create", "--patient", "P00001"]]:
            code, out, err = main(capsys, *args[:1], "--db", str(writable_db), *args[1:])
            line = told_once(err)
            assert code == 2, (args, err)
            assert "is busy (another process is writing)" in line and "nothing was changed" in line, line
        code, out, err = main(capsys, "health", "--db", str(writable_db), "--json")
        assert code == 1 and json.loads(out)["checks"]["busy"]["status"] == "warning"
    assert not (tmp_path / "out").exists() and not (tmp_path / "b.tar.gz").exists()


def test_a_busy_store_in_a_real_process_prints_one_line_and_exits_2(writable_db):
    with held_by_another_process(writable_db):
        result = run("durability", "--db", str(writable_db), env={"OUTCOMES_LOCK_WAIT": "0.5"})
    assert result.returncode == 2 and result.stdout == ""
    assert "is busy" in told_once(result.stderr)


# --- read-only files, folders and mounts ----------------------------------------------------------

def test_a_read_only_database_file_still_exports_and_refuses_writes_with_exit_2(writable_db, tmp_path, capsys):
    before = writable_db.read_bytes()
    writable_db.chmod(0o444)
    try:
        code, out, err = main(capsys, "export", "--db", str(writable_db), str(tmp_path / "out"))
        assert code == 0, err
        assert {p.name for p in (tmp_path / "out").iterdir()} == {
            "patients.csv", "treatments.csv", "assessments.csv", "rejected.csv", "voided.csv", "export-audit.json"}
        note = json.loads((tmp_path / "out" / "export-audit.json").read_text())
        assert note["action"] == "export" and note["audit_trail_head"]["seq"] >= 1 and note["detail"]["rows"]["patients"] == 120
        assert "recorded in" in err and "export-audit.json" in err
        for args in (["link", "create", "--patient", "P00001"], ["users", "add", "zed", "--role", "admin", "--oidc-only"]):
            code, out, err = main(capsys, *args[:1], "--db", str(writable_db), *args[1:])
            assert code == 2 and "cannot be written" in told_once(err) and "read-only" in err
    finally:
        writable_db.chmod(0o644)
    assert writable_db.read_bytes() == before  # nothing was written into it, not even an audit entry


def test_a_read_only_database_folder_refuses_writes_with_exit_2(writable_db, tmp_path, capsys):
    folder = writable_db.parent
    folder.chmod(0o555)
    try:
        code, out, err = main(capsys, "link", "create", "--db", str(writable_db), "--patient", "P00001")
        assert code == 2 and f"its folder {folder} is read-only" in told_once(err)
        code, out, err = main(capsys, "durability", "--db", str(writable_db))
        assert code == 0, err  # reading needs no write access
    finally:
        folder.chmod(0o755)


@contextlib.contextmanager
def tmpfs(where: Path, size: str):
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root; the same failures are injected by the tests below")
    where.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True).returncode:
        pytest.skip("this machine does not allow mounting a tmpfs")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_a_read_only_mount_exports_from_it_and_refuses_to_write_into_it(writable_db, tmp_path):
    with tmpfs(tmp_path / "ro", "64m") as mount:
        shutil.copy(writable_db, mount / "o.duckdb")
        assert subprocess.run(["mount", "-o", "remount,ro", str(mount)], capture_output=True).returncode == 0
        exported = run("export", "--db", str(mount / "o.duckdb"), str(tmp_path / "out"))
        assert exported.returncode == 0, exported.stderr
        assert (tmp_path / "out" / "export-audit.json").exists() and (tmp_path / "out" / "assessments.csv").exists()
        backed_up = run("backup", "--db", str(mount / "o.duckdb"), str(tmp_path / "snapshot.tar.gz"))
        assert backed_up.returncode == 0 and "not recorded" in backed_up.stderr  # its backup log cannot be written
        link = run("link", "create", "--db", str(mount / "o.duckdb"), "--patient", "P00001")
        assert link.returncode == 2 and "cannot be written" in told_once(link.stderr)
        into = run("export", "--db", str(writable_db), str(mount / "out"))
        assert into.returncode == 2 and "Read-only file system" in told_once(into.stderr)


# --- a full disk ------------------------------------------------------------------------------------

def test_an_export_onto_a_full_filesystem_is_exit_2_and_leaves_no_partial_files(writable_db, tmp_path):
    with tmpfs(tmp_path / "small", "256k") as mount:
        result = run("export", "--db", str(writable_db), str(mount / "out"))
        assert result.returncode == 2
        assert "No space left on device" in told_once(result.stderr) and "nothing was changed" in result.stderr
        assert list((mount / "out").iterdir()) == []


def test_an_export_that_fails_part_way_leaves_no_files_and_is_audited_as_failed(writable_db, tmp_path, capsys, monkeypatch):
    import pandas as pd

    written = []
    real = pd.DataFrame.to_csv

    def fill_up(self, path, *args, **kwargs):
        if written:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        written.append(path)
        return real(self, path, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_csv", fill_up)
    code, out, err = main(capsys, "export", "--db", str(writable_db), str(tmp_path / "out"))
    assert code == 2 and "No space left on device" in told_once(err)
    assert list((tmp_path / "out").iterdir()) == []  # the first file, complete, was not left behind either
    with store.connect(writable_db) as con:
        outcomes = con.execute("SELECT outcome FROM audit_log WHERE action = 'export' ORDER BY seq").fetchall()
    assert outcomes[-2:] == [("ok",), ("failed",)]


def test_a_link_on_a_full_disk_says_what_was_stored(writable_db, capsys, monkeypatch):
    def disk_full(*args, **kwargs):
        raise duckdb.IOException('Could not write file "x.duckdb.wal": No space left on device')

    monkeypatch.setattr(selfreport, "create_link", disk_full)
    code, out, err = main(capsys, "link", "create", "--db", str(writable_db), "--patient", "P00001")
    assert code == 2 and "No space left on device; nothing was changed" in told_once(err) and out == ""

    def committed_then_full(*args, **kwargs):
        raise store.CommittedButFailed("writing the database file after the commit (checkpoint on detach)",
                                       duckdb.IOException("No space left on device"))

    monkeypatch.setattr(selfreport, "create_link", committed_then_full)
    code, out, err = main(capsys, "link", "create", "--db", str(writable_db), "--patient", "P00001")
    line = told_once(err)
    assert code == 3 and "its change was committed and is stored" in line and "details: " in line


def test_a_link_on_a_really_full_disk_either_stores_it_or_not_and_says_which(writable_db, tmp_path):
    with tmpfs(tmp_path / "small", "48m") as mount:
        target = mount / "o.duckdb"
        shutil.copy(writable_db, target)
        filler = mount / "fill"
        seen = set()
        for free in (16 << 10, 1 << 20, 3 << 20):
            filler.unlink(missing_ok=True)
            with open(filler, "wb") as handle:
                handle.write(b"\0" * max(0, shutil.disk_usage(mount).free - free))
            result = run("link", "create", "--db", str(target), "--patient", "P00001")
            told = result.stderr.strip()
            assert "Traceback" not in told
            seen.add(result.returncode)
            if result.returncode == 0:
                assert result.stdout.startswith("http")
            elif result.returncode == 2:
                assert "No space left on device" in told and "nothing was changed" in told
            else:
                assert result.returncode == 3 and "committed and is stored" in told
        assert seen - {0, 2, 3} == set() and seen != {0}, seen


# --- a damaged database -----------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["middle", "header"])
def test_a_damaged_database_is_exit_2_with_what_to_do(writable_db, tmp_path, capsys, monkeypatch, where):
    monkeypatch.setenv("OUTCOMES_LOG_DIR", str(tmp_path / "logs"))
    damage(writable_db, where)
    for args in [["durability"], ["intervals"], ["export", str(tmp_path / "out")], ["backup", str(tmp_path / "b.tar.gz")]]:
        code, out, err = main(capsys, *args[:1], "--db", str(writable_db), *args[1:])
        line = told_once(err)
        assert code == 2, (args, err)
        assert f"the database {writable_db} is damaged (Corrupt database file: computed checksum" in line, line
        assert "restore" in line
    assert not (tmp_path / "b.tar.gz").exists()  # a damaged database never replaces a good backup
    logs = list((tmp_path / "logs").iterdir())
    assert logs and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in logs)
    code, out, err = main(capsys, "health", "--db", str(writable_db), "--json")
    report = json.loads(out)
    assert code == 2 and report["checks"]["integrity"]["status"] == "critical"
    assert "python -m analytics restore BACKUP --db" in report["checks"]["integrity"]["summary"]


def test_a_damaged_write_ahead_log_is_exit_2_in_a_real_process(tmp_path):
    db = tmp_path / "w.duckdb"
    subprocess.run([sys.executable, "-c", "import duckdb, os, sys\nfrom analytics import store\n"
                    "store.initialise(sys.argv[1])\ncon = duckdb.connect(sys.argv[1])\n"
                    "con.execute(\"INSERT INTO patients (patient_id) SELECT 'P' || range FROM range(20000)\")\nos._exit(0)\n",
                    str(db)], cwd=ROOT, check=True)
    wal = Path(f"{db}.wal")
    # Damage the bytes that carry committed rows (a patient id's text). The log's middle, tried before,
    # sometimes fell on bytes DuckDB's replay rightly ignores (the rows came back whole), and then there
    # was no damage to report.
    carried = wal.read_bytes().find(b"P10000")
    assert carried > 0
    with open(wal, "r+b") as f:
        f.seek(carried)
        f.write(b"\xab" * 512)
    result = run("durability", "--db", str(db), env={"OUTCOMES_LOG_DIR": str(tmp_path / "logs")})
    line = told_once(result.stderr)
    assert result.returncode == 2 and "is damaged (Failure while replaying WAL" in line and "restore" in line


# --- a newer schema: refused by every command, never written --------------------------------------

def test_a_database_from_a_newer_version_is_refused_by_every_command_and_left_alone(writable_db, tmp_path, capsys):
    make_newer(writable_db)
    before = writable_db.read_bytes()
    newer = store.SCHEMA_VERSION + 3
    csv = tmp_path / "p.csv"
    csv.write_text("patient_id,site,clinician,enrolled_on\nPX1,North,dr_a,2024-01-01\n")
    for args in [*READ_COMMANDS, ["export", str(tmp_path / "out")], ["link", "create", "--patient", "P00001"],
                 ["users", "add", "zed", "--role", "admin", "--oidc-only"], ["import", str(csv)],
                 ["backup", str(tmp_path / "b.tar.gz")], ["demo", "--patients", "2"]]:
        code, out, err = main(capsys, *args[:1], "--db", str(writable_db), *args[1:])
        assert code == 2, (args, out, err)
        assert f"schema version {newer}, newer than this software's {store.SCHEMA_VERSION}" in err, (args, err)
        assert "Traceback" not in err
    code, out, err = main(capsys, "health", "--db", str(writable_db))
    assert code == 2 and "CRITICAL schema_version" in out and "upgrade the software" in out
    assert writable_db.read_bytes() == before


def test_older_software_cannot_write_into_a_newer_schema(writable_db):
    make_newer(writable_db)
    before = snapshot_bytes(writable_db)
    with pytest.raises(store.SchemaTooNew, match="upgrade the software"):
        with store.connect(writable_db, write=True):
            pass
    with pytest.raises(store.SchemaTooNew):
        with store.connect(writable_db):
            pass
    raw = duckdb.connect(str(writable_db))
    try:
        with pytest.raises(store.SchemaTooNew):
            store.migrate(raw)  # even called directly, migrate neither migrates nor syncs instruments
    finally:
        raw.close()
    assert snapshot_bytes(writable_db) == before


def snapshot_bytes(db: Path) -> bytes:
    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = [con.execute(f'SELECT * FROM "{t}" ORDER BY ALL').fetchall() for (t,) in con.execute(
            "SELECT table_name FROM duckdb_tables() ORDER BY 1").fetchall()]
    finally:
        con.close()
    return repr(rows).encode()


# --- an exception nobody expected -----------------------------------------------------------------

CRASHING = """
import sys
from analytics.commands import durability
def crash(args):
    raise RuntimeError("cannot read patient 'P-SECRET-9'")
durability.run = crash
from analytics import cli
sys.exit(cli.main(sys.argv[1:]))
"""


def test_an_unexpected_failure_of_any_command_is_exit_3_one_line_and_a_private_log(writable_db, tmp_path):
    logs = tmp_path / "logs"
    before = snapshot(writable_db)
    result = run("durability", "--db", str(writable_db), code=CRASHING, env={"OUTCOMES_LOG_DIR": str(logs)})
    assert result.returncode == 3 and result.stdout == ""
    line = told_once(result.stderr)
    assert line.startswith("durability failed unexpectedly (RuntimeError); nothing was changed. details for a bug report: ")
    [log] = logs.iterdir()
    assert str(log) in line and stat.S_IMODE(log.stat().st_mode) == 0o600
    text = log.read_text()
    assert "builtins.RuntimeError: cannot read patient '…'" in text and "P-SECRET-9" not in text and "in crash" in text
    as_json = run("durability", "--db", str(writable_db), "--json", code=CRASHING, env={"OUTCOMES_LOG_DIR": str(logs)})
    report = json.loads(as_json.stdout)
    assert (as_json.returncode, report["exit_code"], report["kind"]) == (3, 3, "unexpected") and Path(report["log"]).exists()
    assert snapshot(writable_db) == before


def test_every_command_runs_through_the_same_wrapper(capsys, monkeypatch, tmp_path):
    """Whatever a command raises, the wrapper decides the exit code: the registry has no way around it."""
    monkeypatch.setenv("OUTCOMES_LOG_DIR", str(tmp_path / "logs"))
    raised = {"busy": (store.StoreBusy("database x is busy"), 2), "missing": (FileNotFoundError("no database at x"), 2),
              "disk": (OSError(errno.EROFS, "Read-only file system", "x.csv"), 2),
              "recursion": (RecursionError("maximum recursion depth exceeded"), 3),
              "memory": (MemoryError(), 3)}
    for name in cli.COMMANDS:
        module = cli.command_module(name)
        for what, (exc, expected) in raised.items():
            def boom(args, exc=exc):
                raise exc
            monkeypatch.setattr(module, "run", boom)
            argv = {"link": ["link", "create", "--patient", "P"], "users": ["users", "list"], "import": ["import", "f.csv"],
                    "export": ["export", "d"], "backup": ["backup", "f"], "restore": ["restore", "f"]}.get(name, [name])
            code, out, err = main(capsys, *argv)
            assert code == expected, (name, what, err)
            told_once(err)


def test_users_add_without_a_terminal_or_a_password_is_exit_2_saying_how_to_give_one(writable_db):
    result = subprocess.run([sys.executable, "-m", "analytics", "users", "add", "nurse_lee", "--role", "admin",
                             "--db", str(writable_db)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 2, result.stderr
    assert "no password was given" in result.stderr and "--password-stdin" in result.stderr
    assert "Traceback" not in result.stderr
