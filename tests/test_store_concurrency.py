"""Readers never wait for a writer, writes a page makes are journaled while another process writes,
and the journal keeps order and survives crashes (analytics/store.py, analytics/sidecars.py)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

from analytics import audit, keys, sidecars, store

ROOT = Path(__file__).resolve().parent.parent

# A writer in another process: opens a write transaction (publishing the snapshot when asked),
# inserts a patient, says so in `marker`, and holds the lock until `release` exists (or is killed).
HOLDER = """
import sys, time
from pathlib import Path
from analytics import store
db, marker, release, snapshot = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4] == "1"
with store.transaction(db, snapshot=snapshot) as con:
    con.execute("INSERT INTO patients (patient_id) VALUES (?)", [marker.name])
    marker.write_text("holding")
    while not release.exists():
        time.sleep(0.02)
"""


def _count(db, wait: float = 5.0) -> int:
    with store.connect(db, wait=wait) as con:
        return con.execute("SELECT count(*) FROM patients").fetchall()[0][0]


class Holder:
    """Another process holding the database's write lock with an uncommitted insert."""

    def __init__(self, db: Path, tmp: Path, snapshot: bool):
        self.marker, self.release = tmp / f"holding-{time.monotonic_ns()}", tmp / f"release-{time.monotonic_ns()}"
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(db), str(self.marker), str(self.release),
                                      "1" if snapshot else "0"], cwd=ROOT, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not self.marker.exists():
            assert self.proc.poll() is None, self.proc.stderr.read()
            assert time.monotonic() < deadline, "the writer never took the lock"
            time.sleep(0.02)

    def commit(self) -> None:
        self.release.write_text("go")
        assert self.proc.wait(timeout=120) == 0, self.proc.stderr.read()

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=60)


def _with_patients(tmp_path: Path, n: int = 3) -> Path:
    db = store.initialise(tmp_path / "s.duckdb")
    with store.transaction(db) as con:
        for i in range(n):
            con.execute("INSERT INTO patients (patient_id) VALUES (?)", [f"P{i}"])
    return db


def test_reads_of_one_process_run_at_the_same_time(tmp_path):
    db = _with_patients(tmp_path)
    inside = threading.Barrier(4, timeout=60)
    failures = []

    def read():
        try:
            with store.connect(db) as con:
                con.execute("SELECT count(*) FROM patients").fetchall()
                inside.wait()  # every reader is inside its read at once: none waits for another to finish
        except Exception as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=read) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


def test_a_read_during_a_write_of_the_same_process_sees_the_last_commit_at_once(tmp_path):
    db = _with_patients(tmp_path)
    written, done = threading.Event(), threading.Event()

    def write():
        with store.transaction(db) as con:
            con.execute("INSERT INTO patients (patient_id) VALUES ('NEW')")
            written.set()
            done.wait(60)

    writer = threading.Thread(target=write)
    writer.start()
    assert written.wait(60)
    try:
        assert _count(db, wait=0) == 3  # not the uncommitted row, and no waiting for the writer
    finally:
        done.set()
        writer.join()
    assert _count(db) == 4


def test_a_read_while_another_process_imports_returns_the_last_committed_version(tmp_path):
    db = _with_patients(tmp_path)
    holder = Holder(db, tmp_path, snapshot=True)
    try:
        assert _count(db, wait=2) == 3  # from the snapshot: the held insert is not there, and no StoreBusy
        from analytics.access import DataAccess

        assert DataAccess(db).patients()["patient_id"].tolist() == ["P0", "P1", "P2"]
    finally:
        holder.commit()
    assert _count(db) == 4  # the writer is gone: the file itself again


def test_a_stale_snapshot_is_never_read(tmp_path):
    db = _with_patients(tmp_path)
    Holder(db, tmp_path, snapshot=True).commit()  # a snapshot of 3 patients, then a 4th committed
    holder = Holder(db, tmp_path, snapshot=False)  # a short write that publishes nothing
    try:
        assert not sidecars.snapshot_current(db)
        with pytest.raises(store.StoreBusy):
            _count(db, wait=0.5)  # waits for the writer rather than show 3 patients as the present
    finally:
        holder.commit()
    assert _count(db) == 5


def _entries(db) -> list[tuple]:
    frame = audit.entries(db)
    return list(zip(frame["actor"], frame["action"], frame["logged_at"]))


def test_audit_entries_made_while_another_process_writes_are_journaled_then_chained_in_order(tmp_path):
    db = _with_patients(tmp_path)
    before = len(audit.entries(db))
    holder = Holder(db, tmp_path, snapshot=True)
    try:
        started = time.monotonic()
        seqs = [audit.append(db, f"user{i}", "view_patient", role="clinician", patients=[f"P{i}"]) for i in range(3)]
        assert seqs == [None, None, None]  # journaled, not written: the lock is held elsewhere
        assert time.monotonic() - started < 30  # and nobody waited for the writer to finish
        pending = store.journal_pending(db, "audit")
        assert [e["payload"]["actor"] for e in pending] == ["user0", "user1", "user2"]
    finally:
        holder.commit()
    # the next write (any) applies the journal first, in order, with each entry's own time
    audit.append(db, "after", "export", role="admin")
    rows = _entries(db)[before:]
    assert [r[:2] for r in rows] == [("user0", "view_patient"), ("user1", "view_patient"), ("user2", "view_patient"),
                                     ("after", "export")]
    times = [r[2] for r in rows]
    assert times == sorted(times) and times[0] == datetime.fromisoformat(pending[0]["payload"]["logged_at"])
    assert audit.verify(db).ok
    assert store.journal_pending(db) == []


APPENDER = """
import sys
from analytics import audit
for i in range(3):
    assert audit.append(sys.argv[1], f"crash{i}", "export", role="admin") is None  # journaled: the lock is held
print("appended", flush=True)
sys.stdin.readline()  # killed here
"""


def test_journaled_entries_survive_the_crash_of_both_the_writer_and_the_process_that_journaled_them(tmp_path):
    db = _with_patients(tmp_path)
    holder = Holder(db, tmp_path, snapshot=False)
    appender = subprocess.Popen([sys.executable, "-c", APPENDER, str(db)], cwd=ROOT, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert appender.stdout.readline().strip() == "appended", appender.stderr.read()
    os.kill(appender.pid, signal.SIGKILL)  # what it journaled was fsynced before append returned
    appender.wait(timeout=60)
    holder.kill()  # the writer dies too, its insert never committed
    assert store.flush_journal(db, wait=5)
    actors = [a for a, _, _ in _entries(db)]
    assert actors[-3:] == ["crash0", "crash1", "crash2"]
    assert _count(db) == 3 and audit.verify(db).ok


def test_a_flush_that_died_after_its_commit_is_not_applied_twice(tmp_path, monkeypatch):
    db = _with_patients(tmp_path)
    for i in range(2):
        store.journal(db, "audit", audit.journal_payload({
            "logged_at": f"2026-01-0{i + 1}T08:00:00.000001", "actor": f"queued{i}", "role": None, "action": "export",
            "outcome": "ok", "page": None, "patients": "[]", "detail": "{}"}))

    def die(path):
        raise KeyboardInterrupt("the process died after the commit, before removing the journal")
    monkeypatch.setattr(sidecars, "journal_done", die)
    with pytest.raises(KeyboardInterrupt):
        store.flush_journal(db, wait=5)
    monkeypatch.undo()
    assert [e["payload"]["actor"] for e in store.journal_pending(db)] == ["queued0", "queued1"]  # left behind
    assert store.flush_journal(db, wait=5)
    assert [a for a, _, _ in _entries(db)].count("queued0") == 1
    assert audit.verify(db).ok


def test_a_torn_last_line_of_the_journal_is_left_out(tmp_path):
    db = _with_patients(tmp_path)
    store.journal(db, "audit", audit.journal_payload({"logged_at": "2026-01-01T08:00:00.000001", "actor": "whole",
                                                      "role": None, "action": "export", "outcome": "ok", "page": None,
                                                      "patients": "[]", "detail": "{}"}))
    with open(sidecars.journal_path(db), "ab") as f:
        f.write(b'{"id": "x", "kind": "audit", "payl')  # an append cut short: never acknowledged to anyone
    assert [e["payload"]["actor"] for e in store.journal_pending(db)] == ["whole"]
    assert store.flush_journal(db, wait=5)
    assert [a for a, _, _ in _entries(db)] == ["whole"]


@pytest.mark.parametrize("recycle", [False, True], ids=["kept", "recycled after every use"])
def test_many_threads_reading_and_writing_one_file_never_trip_over_each_other(tmp_path, monkeypatch, recycle):
    if recycle:  # the instance is closed whenever a use grew the process (forced here after every use)
        monkeypatch.setattr(store, "RECYCLE_AFTER_GROWTH_BYTES", -1)
    db = _with_patients(tmp_path)
    failures = []

    def work(n: int):
        try:
            for i in range(40):
                if (n + i) % 5 == 0:
                    with store.transaction(db) as con:
                        con.execute("INSERT INTO patients (patient_id) VALUES (?)", [f"T{n}-{i}"])
                else:
                    with store.connect(db) as con:
                        con.execute("SELECT count(*) FROM patients").fetchall()
        except Exception as exc:  # noqa: BLE001 - reported below
            failures.append(repr(exc))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert _count(db) == 3 + 8 * 8  # every write landed once


# Readers in another process that always have a read going on (two threads whose reads overlap), as a
# busy dashboard process does, until `stop` exists; `ready` once both read.
BUSY_READERS = """
import sys, threading, time
from pathlib import Path
from analytics import store
db, ready, stop = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
started = threading.Barrier(2)

def reader(offset):
    time.sleep(offset)
    first = True
    while not stop.exists():
        with store.connect(db, wait=60) as con:
            con.execute("SELECT count(*) FROM patients").fetchall()
            if first:
                started.wait()
                ready.write_text("reading")
                first = False
            time.sleep(0.2)

threads = [threading.Thread(target=reader, args=(o,)) for o in (0.0, 0.1)]
for t in threads: t.start()
for t in threads: t.join()
"""


def _started(script: str, args: list, marker: Path) -> subprocess.Popen:
    """`script` in another process, once it has written `marker`."""
    proc = subprocess.Popen([sys.executable, "-c", script, *map(str, args)], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "the other process never started"
        time.sleep(0.02)
    return proc


def test_a_write_gets_the_file_while_another_process_always_has_a_read_going_on(tmp_path):
    # The finding (20 users on two dashboard processes): a sign-in's write waited up to 8 s for the file,
    # because the other process never had no read going on, and held this process's readers back meanwhile.
    db = _with_patients(tmp_path)
    ready, stop = tmp_path / "ready", tmp_path / "stop"
    proc = _started(BUSY_READERS, [db, ready, stop], ready)
    try:
        for i in range(3):  # each write gets in while the readers go on reading between them
            with store.transaction(db, wait=20) as con:
                con.execute("INSERT INTO patients (patient_id) VALUES (?)", [f"W{i}"])
    finally:
        stop.write_text("stop")
        assert proc.wait(timeout=120) == 0, proc.stderr.read()
    assert _count(db) == 6
    assert not Path(str(db) + ".intents").exists()  # nothing left beside the database once no write waits


# Another process with one long read of the file (until `release` exists).
LONG_READ = """
import sys, time
from pathlib import Path
from analytics import store
db, marker, release = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
with store.connect(db, wait=60) as con:
    con.execute("SELECT count(*) FROM patients").fetchall()
    marker.write_text("reading")
    while not release.exists():
        time.sleep(0.02)
"""


def test_a_write_waiting_for_the_file_holds_readers_back_only_briefly(tmp_path):
    db = _with_patients(tmp_path)
    marker, release = tmp_path / "reading", tmp_path / "release"
    other = _started(LONG_READ, [db, marker, release], marker)
    try:
        outcome = []

        def write():  # cannot get the file while the other process reads it: waits, then gives up
            try:
                with store.connect(db, write=True, wait=30):
                    outcome.append("wrote")
            except store.StoreBusy:
                outcome.append("busy")
        writer = threading.Thread(target=write)
        writer.start()
        time.sleep(0.2)
        # this process's reads pause for the waiting writer only briefly, then read alongside the other process
        assert [_count(db, wait=30) for _ in range(3)] == [3, 3, 3]
        assert writer.is_alive() and not outcome  # the reads did not wait for the writer to give up
        release.write_text("go")  # the long read ends: the writer gets the file
        writer.join(60)
        assert outcome == ["wrote"]
    finally:
        release.write_text("go")
        assert other.wait(timeout=120) == 0, other.stderr.read()


def test_a_flush_applies_many_journaled_entries_at_once_exactly_as_one_at_a_time(tmp_path, monkeypatch):
    # A flush holds the file and every other process's reads wait for it: its entries are applied in one go
    # (200 audit entries one at a time took 2 s of CPU). The trail must be the very one they made one by one.
    import shutil

    from analytics import sessions

    db = _with_patients(tmp_path)
    with store.writes_in_passing_journaled():
        for i in range(230):
            audit.append(db, f"user{i}", "view_patient", role="clinician", page="patient", patients=[f"P{i % 3}"])
            if i == 117:  # another kind in the middle: the entries around it keep their order
                store.journal(db, sessions.TOUCH_KIND, {"session_id": "none", "last_seen": datetime.now().isoformat()})
    twin = tmp_path / "twin" / "s.duckdb"
    twin.parent.mkdir()
    shutil.copy(db, twin)
    shutil.copy(sidecars.journal_path(db), sidecars.journal_path(twin))
    assert store.flush_journal(db, wait=10)
    with monkeypatch.context() as m:
        m.delitem(store._JOURNAL_MANY, audit.JOURNAL_KIND)  # one at a time, as before
        assert store.flush_journal(twin, wait=10)

    def trail(path):
        with store.connect(path) as con:
            return con.execute("SELECT seq, logged_at, actor, patients, prev_hash, hash FROM audit_log ORDER BY seq").fetchall()
    assert trail(db) == trail(twin)
    assert [r[2] for r in trail(db)[-230:]] == [f"user{i}" for i in range(230)]
    assert audit.verify(db).ok and audit.verify(twin).ok
    assert [seq for seq, _ in keys.anchor_read(db)][-230:] == [r[0] for r in trail(db)[-230:]]


def test_the_flusher_gathers_journaled_entries_then_applies_them(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "JOURNAL_GATHER_SECONDS", 0.3)
    monkeypatch.setattr(store, "JOURNAL_MAX_WAIT_SECONDS", 0.6)
    # the policy: not before the gathering time; then only if the file is free at once; then waiting a second
    assert store.flush_wait(0.1) is None and store.flush_wait(0.4) == 0.0 and store.flush_wait(0.7) == 1.0
    db = _with_patients(tmp_path)
    with store.writes_in_passing_journaled():
        audit.append(db, "gathered", "view_patient", role="clinician", patients=["P1"])
    assert store.journal_pending(db)
    store.keep_journal_flushed(db, every=0.05)
    deadline = time.monotonic() + 60
    while store.journal_pending(db) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store.journal_pending(db) == []
    assert "gathered" in set(_entries_actors(db))


def _entries_actors(db):
    with store.connect(db) as con:
        return [r[0] for r in con.execute("SELECT actor FROM audit_log").fetchall()]


COUNT_PATIENTS = """
import sys
from analytics import store
with store.connect(sys.argv[1], wait=60) as con:
    print(con.execute("SELECT count(*) FROM patients").fetchall()[0][0])
"""
INSERT_PATIENT = """
import sys
from analytics import store
with store.transaction(sys.argv[1], wait=60) as con:
    con.execute("INSERT INTO patients (patient_id) VALUES (?)", [sys.argv[2]])
"""


def _in_other_process(script: str, *args) -> str:
    done = subprocess.run([sys.executable, "-c", script, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.parametrize("write_in_between", [False, True])
def test_a_long_writes_snapshot_copied_before_it_takes_the_file_holds_every_commit(tmp_path, monkeypatch,
                                                                                     write_in_between):
    # The copy is made while the others read on; a commit of another process between the copy and the lock
    # must not be missing from what they read while the long write runs.
    db = _with_patients(tmp_path)
    copies, made = [], store._precopy_snapshot

    def precopy(target):
        copied = made(target)
        copies.append(copied is not None)
        if write_in_between:
            _in_other_process(INSERT_PATIENT, db, "between")
        return copied
    monkeypatch.setattr(store, "_precopy_snapshot", precopy)
    published = []
    monkeypatch.setattr(sidecars, "publish_snapshot", lambda target, real=sidecars.publish_snapshot: published.append(1) or real(target))
    with store.transaction(db, snapshot=True) as con:
        con.execute("INSERT INTO patients (patient_id) VALUES ('uncommitted')")
        # another process reads the snapshot meanwhile: every commit, not this write's
        assert _in_other_process(COUNT_PATIENTS, db) == ("4" if write_in_between else "3")
    assert copies == [True]
    assert published == ([1] if write_in_between else [])  # the early copy is used only when nothing came in between
    assert _count(db) == (5 if write_in_between else 4)
    assert not list(tmp_path.glob("*.tmp"))
