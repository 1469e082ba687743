"""Backup and restore keep everything (issue 15, point 4): `python -m analytics backup FILE` then
`restore FILE --db NEW` gives back every table exactly, the quarantine, the import history, the
audit trail with its chain, correction history, users and grants, visit details, outstanding
self-report links (they still open) and unacknowledged safety flags (still open), and the
sequences continue where they stopped. A hypothesis property test does the same on random
databases; the refusals (an existing database, a newer schema, a damaged or foreign file) change
nothing and exit 2.
"""
from __future__ import annotations

import gzip
import io
import json
import shutil
import subprocess
import sys
import tarfile
from datetime import date, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analytics import archive, audit, auth, backup, cli, selfreport, store, visits
from analytics.access import SYSTEM, DataAccess
from fixtures import _empty_template, snapshot

ROOT = Path(__file__).resolve().parent.parent
WHEN = datetime(2026, 11, 19, 10, 30)


def cli_run(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return code, out.out, out.err


def token_of(url: str) -> str:
    return parse_qs(urlparse(url).query)["token"][0]


def sequences(db: Path) -> dict[str, int]:
    with store.connect(db) as con:
        return archive.describe(con)["sequences"]


@pytest.fixture()
def lived_in_db(writable_db, tmp_path) -> tuple[Path, dict]:
    """The demo clinic after a day of use: what export -> import used to lose, each kind present."""
    db = writable_db
    patients = DataAccess(db).patients()
    first, second = patients["patient_id"].iloc[0], patients["patient_id"].iloc[1]
    # quarantine and import history: a file with one bad row
    bad = tmp_path / "assessments-bad.csv"
    bad.write_text("patient_id,instrument,administered_on,total\n"
                   f"{first},PHQ-9,2026-11-01,7\n"
                   f"{first},PHQ-9,not a date,7\n", encoding="utf-8")
    subprocess.run([sys.executable, "-m", "analytics", "import", "--db", str(db), str(bad)], cwd=ROOT,
                   capture_output=True, timeout=300)
    # visit details and correction history
    assert visits.record_infusion(db, SYSTEM, first, administered_at=WHEN, route="iv", dose_mg=35, weight_kg=70,
                                  notes="no side effects").ok
    assert visits.record_infusion(db, SYSTEM, first, administered_at=WHEN, route="iv", dose_mg_per_kg=0.75,
                                  notes="BP rose to 160/100", correct=True).ok
    # a mistaken infusion, voided (schema v6): it stays, with who voided it and why
    assert visits.record_infusion(db, SYSTEM, first, administered_at=WHEN + timedelta(days=1), route="iv",
                                  dose_mg_per_kg=0.5).ok
    assert visits.void_record(db, SYSTEM, first, WHEN + timedelta(days=1), reason="entered for the wrong patient").ok
    # users and grants, and a signed-in session (server-side)
    auth.create_user(db, "dr_lee", "clinician", "purple elephant runs at dawn", clinician="lee")
    auth.create_user(db, "boss", "director", "correct horse battery staple")
    auth.grant_patient(db, "boss", second, reason="case review")
    auth.start_session(db, auth.authenticate(db, "boss", "correct horse battery staple", page=None))
    # an outstanding link, and an unacknowledged safety flag from a submitted one
    outstanding = token_of(selfreport.create_link(db, SYSTEM, first, "PHQ-9,GAD-7").url)
    flagged = token_of(selfreport.create_link(db, SYSTEM, second, "PHQ-9").url)
    assert selfreport.submit(db, flagged, {"PHQ-9": {n: 1 for n in range(1, 10)}}).ok
    with store.connect(db) as con:
        counts = {t: con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0]
                  for t in ("rejected_rows", "import_batches", "record_history", "treatment_details", "users",
                            "patient_grants", "self_report_links", "safety_flags", "audit_log", "sessions")}
        counts["voided treatments"] = con.execute("SELECT count(*) FROM treatments WHERE voided_at IS NOT NULL").fetchall()[0][0]
    assert all(counts.values()), counts  # every kind is there to be lost
    return db, {"outstanding": outstanding, "patient": first, "flagged_patient": second}


def test_backup_then_restore_gives_back_every_table_exactly_and_the_store_works_on(lived_in_db, tmp_path, capsys):
    db, made = lived_in_db
    before = snapshot(db)
    sequences_before = sequences(db)
    head = audit.verify(db).head_hash
    file = tmp_path / "nightly.tar.gz"
    code, out, err = cli_run(capsys, "backup", "--db", str(db), str(file), "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["tables"]["rejected_rows"] == len(before["rejected_rows"])
    assert snapshot(db) == before  # a backup changes nothing in the database

    restored = tmp_path / "restored" / "outcomes.duckdb"
    code, out, err = cli_run(capsys, "restore", str(file), "--db", str(restored))
    assert code == 0, err
    assert "audit chain verified" in out
    assert snapshot(restored) == before  # every row of every table, values and all
    assert sequences(restored) == sequences_before
    result = audit.verify(restored)
    assert result.ok and result.head_hash == head  # the chain continues, it does not restart

    # what a clinic relies on the next morning
    flags = selfreport.open_flags(restored, SYSTEM)
    assert made["flagged_patient"] in set(flags["patient_id"])  # still unacknowledged
    assert selfreport.open_link(restored, made["outstanding"]).instruments == ("PHQ-9", "GAD-7")  # still opens
    assert auth.authenticate(restored, "dr_lee", "purple elephant runs at dawn", page=None).username == "dr_lee"
    history = visits.record_history(restored, SYSTEM, made["patient"], WHEN)
    assert list(history["notes"]) == ["BP rose to 160/100", "no side effects"]
    # new rows continue the sequences and the chain
    assert visits.record_infusion(restored, SYSTEM, made["patient"], administered_at=WHEN + timedelta(days=7),
                                  route="iv", dose_mg_per_kg=0.5).ok
    assert sequences(restored)["treatment_seq"] == sequences_before["treatment_seq"] + 1
    assert audit.verify(restored).ok


def test_a_backup_is_taken_while_the_dashboard_reads_and_is_one_committed_state(lived_in_db, tmp_path):
    db, _ = lived_in_db
    before = snapshot(db)
    with store.connect(db) as reader:  # a page reading meanwhile
        reader.execute("SELECT count(*) FROM assessments").fetchall()
        result = backup.backup(db, tmp_path / "b.tar.gz", wait=5)
        assert reader.execute("SELECT count(*) FROM assessments").fetchall()[0][0] == len(before["assessments"])
    restored = backup.restore(result.file, tmp_path / "r.duckdb")
    assert snapshot(restored.database) == before


def test_the_backup_file_is_a_checked_tar_that_sha256sum_can_verify(lived_in_db, tmp_path):
    db, _ = lived_in_db
    file = backup.backup(db, tmp_path / "b.tar.gz").file
    with tarfile.open(file) as tar:
        names = tar.getnames()
        assert names[0] == archive.MANIFEST and names[-1] == archive.SUMS and archive.DATABASE in names
        tar.extractall(tmp_path / "x", filter="data")
    check = subprocess.run(["sha256sum", "-c", archive.SUMS], cwd=tmp_path / "x", capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert oct(file.stat().st_mode & 0o777) == "0o600"  # a backup holds patient data
    entry = archive.last_backup(db)
    assert entry["file"] == str(file.resolve()) and entry["kind"] == "manual"


def test_restore_refuses_a_path_that_holds_a_database_and_changes_nothing(lived_in_db, tmp_path, capsys):
    db, _ = lived_in_db
    file = backup.backup(db, tmp_path / "b.tar.gz").file
    other = tmp_path / "other.duckdb"
    shutil.copy(db, other)
    before = other.read_bytes()
    code, out, err = cli_run(capsys, "restore", str(file), "--db", str(other))
    assert code == 2 and "restore only into a path that holds no database" in err
    assert other.read_bytes() == before


def _rewrite_manifest(file: Path, dest: Path, change) -> Path:
    """A copy of a backup whose manifest was changed by `change` (checksums kept consistent)."""
    with tarfile.open(file) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar}
    manifest = json.loads(members[archive.MANIFEST])
    change(manifest)
    data = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    import hashlib
    sums = members[archive.SUMS].decode().splitlines()
    sums = [f"{hashlib.sha256(data).hexdigest()}  {archive.MANIFEST}" if line.endswith(f"  {archive.MANIFEST}") else line
            for line in sums]
    members[archive.MANIFEST], members[archive.SUMS] = data, ("\n".join(sums) + "\n").encode()
    with tarfile.open(dest, "w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return dest


def test_restore_refuses_a_backup_from_a_newer_schema(lived_in_db, tmp_path, capsys):
    db, _ = lived_in_db
    file = backup.backup(db, tmp_path / "b.tar.gz").file
    newer = _rewrite_manifest(file, tmp_path / "newer.tar.gz",
                              lambda m: m.update(schema_version=store.SCHEMA_VERSION + 1))
    target = tmp_path / "r.duckdb"
    code, out, err = cli_run(capsys, "restore", str(newer), "--db", str(target))
    assert code == 2 and f"newer than this software's {store.SCHEMA_VERSION}" in err
    assert not target.exists()


@pytest.mark.parametrize("how", ["flipped", "cut short", "not a backup", "row count lies"])
def test_restore_refuses_a_damaged_or_foreign_file_and_leaves_nothing(lived_in_db, tmp_path, capsys, how):
    db, _ = lived_in_db
    file = backup.backup(db, tmp_path / "b.tar.gz").file
    bad = tmp_path / "bad.tar.gz"
    if how == "flipped":  # a byte of the database changed inside an otherwise valid archive
        with tarfile.open(file) as tar:
            members = {m.name: bytearray(tar.extractfile(m).read()) for m in tar}
        members[archive.DATABASE][len(members[archive.DATABASE]) // 3] ^= 0xFF
        with tarfile.open(bad, "w:gz") as tar:
            for name, content in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(content)
                tar.addfile(info, io.BytesIO(bytes(content)))
    elif how == "cut short":
        bad.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    elif how == "not a backup":
        bad.write_bytes(gzip.compress(b"patient_id,sex\nP1,F\n"))
    else:
        def lie(m):
            m["tables"]["assessments"]["rows"] += 1
        _rewrite_manifest(file, bad, lie)
    target = tmp_path / "r.duckdb"
    code, out, err = cli_run(capsys, "restore", str(bad), "--db", str(target))
    assert code == 2, err
    assert len([line for line in err.splitlines() if line.strip()]) == 1
    assert not target.exists() and not Path(f"{target}.wal").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".r.duckdb")] == []  # no staging left


def test_backup_refuses_to_replace_the_database_itself(lived_in_db, capsys):
    db, _ = lived_in_db
    before = db.read_bytes()
    code, out, err = cli_run(capsys, "backup", "--db", str(db), str(db))
    assert code == 2 and "would replace the database itself" in err
    assert db.read_bytes() == before


# --- random databases ---------------------------------------------------------------------------

_TYPES = {
    "INTEGER": st.integers(-2**31, 2**31 - 1),
    "BIGINT": st.integers(-2**63, 2**63 - 1),
    "DOUBLE": st.floats(allow_nan=False),
    "VARCHAR": st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40),
    "BOOLEAN": st.booleans(),
    "DATE": st.dates(min_value=date(1900, 1, 1), max_value=date(2100, 1, 1)),
    "TIMESTAMP": st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2100, 1, 1)),
    "BLOB": st.binary(max_size=40),
}


@st.composite
def random_tables(draw):
    tables = {}
    for n in range(draw(st.integers(1, 3))):
        types = draw(st.lists(st.sampled_from(sorted(_TYPES)), min_size=1, max_size=5))
        rows = draw(st.lists(st.tuples(*[st.none() | _TYPES[t] for t in types]), max_size=30))
        tables[f"extra_{n}"] = (types, rows)
    raw = draw(st.lists(st.text(max_size=60).filter(lambda s: "\x00" not in s), max_size=10))
    return tables, raw, draw(st.booleans())


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=random_tables())
def test_backup_then_restore_reproduces_any_database_exactly(tmp_path_factory, content):
    tables, raw_lines, leave_wal = content
    folder = tmp_path_factory.mktemp("random")
    db = folder / "random.duckdb"
    shutil.copyfile(_empty_template(), db)
    con = duckdb.connect(str(db))
    if leave_wal:  # committed changes still in the write-ahead log, as after a failed checkpoint
        con.execute("PRAGMA disable_checkpoint_on_shutdown")
    for name, (types, rows) in tables.items():
        con.execute(f"CREATE TABLE {name} ({', '.join(f'c{i} {t}' for i, t in enumerate(types))})")
        if rows:
            con.executemany(f"INSERT INTO {name} VALUES ({', '.join('?' for _ in types)})", rows)
    con.execute("INSERT INTO import_batches (batch_id, source, file_name, sha256, kind, rows_rejected) "
                "VALUES (1, 'test', 'f.csv', repeat('0', 64), 'assessments', ?)", [len(raw_lines)])
    if raw_lines:
        con.executemany("INSERT INTO rejected_rows VALUES (1, 'f.csv', ?, 'total', 'not a number', ?)",
                        [(i + 2, line) for i, line in enumerate(raw_lines)])
    con.close()
    before = snapshot(db)
    file = backup.backup(db, folder / "b.tar.gz").file
    restored = backup.restore(file, folder / "restored.duckdb")
    assert snapshot(restored.database) == before
    assert restored.tables == {name: len(rows) for name, rows in before.items()}


# --- the backup before every migration -----------------------------------------------------------

def test_a_backup_is_taken_before_every_migration_and_restores_the_old_schema(tmp_path, monkeypatch):
    from test_store import _schema_v1_file

    monkeypatch.delenv(store.BACKUP_DIR_ENV, raising=False)
    db = _schema_v1_file(tmp_path / "v1.duckdb")
    before = snapshot(db)
    with store.connect(db, write=True) as con:
        assert store.current_version(con) == store.SCHEMA_VERSION
    made = list((tmp_path / "backups").glob(f"v1.duckdb.v1-before-v{store.SCHEMA_VERSION}.*.tar.gz"))
    assert len(made) == 1
    manifest = archive.read_manifest(made[0])
    assert manifest["schema_version"] == 1 and manifest["kind"] == "before-migration"
    assert archive.last_backup(db)["file"] == str(made[0].resolve())
    restored = backup.restore(made[0], tmp_path / "as-it-was.duckdb")
    assert snapshot(restored.database) == before  # the database exactly as it was before the migration
    with store.connect(db, write=True):  # current now: no migration, no new backup
        pass
    assert len(list((tmp_path / "backups").iterdir())) == 1


def test_a_migration_without_room_for_its_backup_changes_nothing(tmp_path, monkeypatch, capsys):
    from test_store import _schema_v1_file

    db = _schema_v1_file(tmp_path / "v1.duckdb")
    before = snapshot(db)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(store.BACKUP_DIR_ENV, str(blocker / "backups"))  # a folder that cannot be made
    csv = tmp_path / "patients.csv"
    csv.write_text("patient_id,site,clinician,enrolled_on\nP2,north,dr_b,2026-01-05\n", encoding="utf-8")
    code, out, err = cli_run(capsys, "import", "--db", str(db), str(csv))
    assert code == 2, err
    assert "after a backup; the backup could not be written" in err and "Nothing was changed" in err
    assert snapshot(db) == before  # still schema version 1, not a row added


# --- what lives outside the database: the audit anchor and the keys -------------------------------

def test_the_audit_anchor_travels_with_the_backup_and_a_restore_in_place_sets_the_old_one_aside(lived_in_db, tmp_path, capsys):
    from analytics import keys

    db, made = lived_in_db
    file = backup.backup(db, tmp_path / "b.tar.gz").file
    with tarfile.open(file) as tar:
        assert any(n.startswith("companions/audit-anchor/") for n in tar.getnames())
        assert not any(n.startswith("companions/keys/") for n in tar.getnames())  # keys only when asked
    # the day goes on after the backup, then the disk fails: the anchor now holds entries the backup lacks
    selfreport.create_link(db, SYSTEM, made["patient"], "PHQ-9")
    anchor = keys.anchor_path(db)
    anchored_after = anchor.read_text()
    db.rename(tmp_path / "damaged.duckdb")
    code, out, err = cli_run(capsys, "restore", str(file), "--db", str(db))
    assert code == 0, err
    assert "audit chain verified" in out and "moved aside" in err
    kept = list(anchor.parent.glob(anchor.name + ".before-restore-*"))
    assert len(kept) == 1 and kept[0].read_text() == anchored_after  # kept for the incident record
    result = audit.verify(db)
    assert result.ok and result.anchored is not None  # the anchor as it was at the backup, checked again


def test_keys_stay_out_of_a_backup_unless_asked_and_a_restore_elsewhere_says_what_is_missing(lived_in_db, tmp_path, capsys,
                                                                                          monkeypatch):
    from analytics import keys

    db, _ = lived_in_db
    plain = backup.backup(db, tmp_path / "plain.tar.gz").file
    with_keys = backup.backup(db, tmp_path / "keys.tar.gz", include_secrets=True).file
    own_key = (keys.key_dir() / "audit.key").read_text()

    monkeypatch.setenv(keys.ENV, str(tmp_path / "new-machine-keys"))  # another server, no keys yet
    code, out, err = cli_run(capsys, "restore", str(plain), "--db", str(tmp_path / "a.duckdb"))
    assert code == 0, err
    assert "audit chain was not verified" in err and "--include-secrets" in err and "audit chain verified" not in out

    code, out, err = cli_run(capsys, "restore", str(with_keys), "--db", str(tmp_path / "b.duckdb"))
    assert code == 0 and "audit chain verified" in out, err
    placed = tmp_path / "new-machine-keys" / "audit.key"
    assert placed.read_text() == own_key and oct(placed.stat().st_mode & 0o777) == "0o600"

    monkeypatch.setenv(keys.ENV, str(tmp_path / "busy-machine-keys"))  # a server with keys of its own
    keys.current("audit")
    code, out, err = cli_run(capsys, "restore", str(with_keys), "--db", str(tmp_path / "c.duckdb"))
    assert code == 0 and "audit chain verified" in out, err
    retired = tmp_path / "busy-machine-keys" / f"audit-{keys.key_id_of(bytes.fromhex(own_key.strip()))}.key"
    assert retired.read_text() == own_key  # kept under its id, where verification finds it
    assert (tmp_path / "busy-machine-keys" / "audit.key").read_text() != own_key  # theirs untouched


def test_writes_journaled_while_another_process_wrote_are_in_the_backup_and_applied_after_restore(lived_in_db, tmp_path):
    db, _ = lived_in_db
    before = len(audit.entries(db))  # (reading the trail applies the journal: counted first)
    with store.writes_in_passing_journaled():  # as a dashboard page does while an import holds the lock
        assert audit.append(db, "dr_lee", "view_patient", role="clinician", patients=["P00001"]) is None
    assert store.journal_pending(db)
    file = backup.backup(db, tmp_path / "b.tar.gz").file
    with tarfile.open(file) as tar:
        assert any(n.startswith("companions/journal/") for n in tar.getnames())
    restored = backup.restore(file, tmp_path / "r.duckdb").database
    assert store.journal_pending(restored)  # beside the restored database, not lost
    assert store.flush_journal(restored, wait=5)
    trail = audit.entries(restored)
    assert len(trail) == before + 1 and trail.iloc[-1]["action"] == "view_patient"
    assert audit.verify(restored).ok


def test_a_postgresql_store_is_sent_to_its_own_tools(tmp_path, capsys):
    url = "postgresql://outcomes@127.0.0.1:1/outcomes"
    code, out, err = cli_run(capsys, "backup", "--db", url, str(tmp_path / "b.tar.gz"))
    assert code == 2 and "pg_dump" in err and not (tmp_path / "b.tar.gz").exists()
    code, out, err = cli_run(capsys, "restore", str(tmp_path / "b.tar.gz"), "--db", url)
    assert code == 2 and "pg_restore" in err


def test_a_backup_leaves_out_the_unread_rows_a_killed_import_left(lived_in_db, tmp_path):
    """A first import of an earlier version killed inside its transaction left its rows committed in
    `assessments_bulk`, never read (store.bulk_name); a backup taken before the next write must not carry them."""
    db, _ = lived_in_db
    before = snapshot(db)
    with store.connect(db, write=True) as con:  # what the killed import left, written as it did
        bulk = store.bulk_name("assessments")
        con.execute(f"CREATE TABLE {bulk} AS SELECT * FROM assessments WHERE false")
        con.execute(f"INSERT INTO {bulk} (assessment_id, patient_id, instrument, administered_at, total, total_method) "
                    "VALUES (999999, 'P-KILLED', 'PHQ-9', '2026-01-01', 3, 'given')")
    with store.connect(db) as con:
        assert "assessments_bulk" in archive.table_names(con)

    result = backup.backup(db, tmp_path / "b.tar.gz", wait=5)

    assert "assessments_bulk" not in result.manifest["tables"]
    restored = backup.restore(result.file, tmp_path / "r.duckdb")
    assert snapshot(restored.database) == before == snapshot(db)
