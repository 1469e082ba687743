"""Large files are checked in blocks and staged on disk: the outcome must not depend on the block size."""
from __future__ import annotations

import threading
from pathlib import Path

import pandas as pd
import pytest

from analytics import ingest, store
from analytics.ingest import rules
from fixtures import make_db, patient, snapshot
from test_ingest import ASSESSMENTS_HEADER, PATIENTS_HEADER, TREATMENTS_HEADER, phq, write


@pytest.fixture()
def db(tmp_path) -> Path:
    return make_db(tmp_path, patients=[patient("P1", enrolled_on="2024-01-05"), patient("P2", clinician="dr_b")])


def stored(db: Path, table: str) -> list[tuple]:
    """The stored rows without ids and batch numbers (which differ between two imports by design)."""
    with store.connect(db) as con:
        frame = con.execute(f"SELECT * FROM {table}").df()
    frame = frame.drop(columns=[c for c in frame.columns if c.endswith("_id") and c != "patient_id"] + ["batch_id"])
    return sorted(map(tuple, frame.astype(str).to_numpy().tolist()))


def quarantined(db: Path) -> list[tuple]:
    with store.connect(db) as con:
        return con.execute("SELECT line, column_name, reason, raw_line FROM rejected_rows ORDER BY line").fetchall()


def outcome(report: ingest.ImportReport) -> list:
    return [(f.kind, f.rows_total, f.rows_inserted, f.rows_updated, f.rows_unchanged, f.rows_rejected,
             [(r.line, r.column, r.reason) for r in f.rejects]) for f in report.files]


def assessments_file(tmp_path: Path) -> Path:
    """Eight data records; with blocks of 3 rows: lines 2-4 (block 1, one spanning two lines), 6-9, 10-11."""
    return write(
        tmp_path / "a.csv", ASSESSMENTS_HEADER,
        phq("P1", "2024-01-10", [1] * 9).replace(",self,", ',"Dr A\nsecond line",'),  # line 2-3
        phq("P1", "2024-01-11", [2] * 9),                  # line 4
        "",                                               # line 5: blank, skipped
        phq("P1", "2024-01-12", [3] * 9),                  # line 6
        phq("P1", "2024-01-11", [3] * 9),                  # line 7: key of line 4, in the next block
        phq("P1", "2024-01-13", [9] + [1] * 8),            # line 8: item out of range, second block
        phq("P404", "2024-01-14", [1] * 9),                # line 9: unknown patient (found in SQL)
        "P1,PHQ-9,2024-01-15,self,1,1",                    # line 10: wrong number of fields
        phq("P2", "2024-01-12", [0] * 9),                  # line 11
    )


def test_outcome_is_the_same_with_blocks_of_three_rows_as_in_one_piece(tmp_path):
    one = make_db(tmp_path, patients=[patient("P1", enrolled_on="2024-01-05"), patient("P2")], name="one.duckdb")
    blocks = make_db(tmp_path, patients=[patient("P1", enrolled_on="2024-01-05"), patient("P2")], name="blocks.duckdb")
    path = assessments_file(tmp_path)

    whole = ingest.import_files([path], db=one)
    split = ingest.import_files([path], db=blocks, block_rows=3)

    assert outcome(split) == outcome(whole)
    assert stored(blocks, "assessments") == stored(one, "assessments")
    assert quarantined(blocks) == quarantined(one)
    assert [r.line for r in split.rejects] == [7, 8, 9, 10]


def test_a_key_repeated_in_a_later_block_is_rejected_naming_the_first_line(db, tmp_path):
    path = assessments_file(tmp_path)

    report = ingest.import_files([path], db=db, block_rows=3)

    duplicate = [r for r in report.rejects if r.line == 7]
    assert [(r.column, r.reason) for r in duplicate] == [
        ("patient_id", "duplicate key (patient_id, instrument, administered_on) in this file: line 4 has the same one")]
    with store.connect(db) as con:
        kept = con.execute("SELECT total FROM assessments WHERE administered_at = '2024-01-11'").fetchall()
    assert kept == [(18.0,)]  # the first row (line 4, items of 2) is kept, not the repeat


def test_keys_repeated_across_blocks_are_found_in_unsorted_files_whichever_patients_share_blocks(tmp_path):
    """Only patients with good rows in two blocks are looked at for keys repeated across blocks (a file
    sorted by patient has few): the same rejects as in one piece, with P1 repeated three blocks apart,
    P2 in two blocks without a repeat, P3 in one block only, and a repeat whose first row was refused."""
    people = [patient("P1", enrolled_on="2024-01-05"), patient("P2"), patient("P3")]
    path = write(
        tmp_path / "u.csv", ASSESSMENTS_HEADER,
        phq("P1", "2024-01-10", [1] * 9),                  # line 2, block 1
        phq("P2", "2024-01-10", [1] * 9),                  # line 3
        phq("P3", "2024-01-10", [1] * 9),                  # line 4
        phq("P2", "2024-01-11", [9] + [1] * 8),            # line 5, block 2: refused (item out of range)
        phq("P3", "2024-01-11", [1] * 9),                  # line 6
        "",                                               # line 7: blank
        phq("P3", "2024-01-12", [1] * 9),                  # line 8
        phq("P2", "2024-01-12", [1] * 9),                  # line 9, block 3
        phq("P2", "2024-01-11", [2] * 9),                  # line 10: first good row of this key (line 5 was refused)
        phq("P1", "2024-01-10", [2] * 9),                  # line 11: key of line 2, three blocks apart
        phq("P1", "2024-01-10", [3] * 9),                  # line 12, block 4: the same key again
    )
    results = []
    for block_rows in (3, 1000):
        target = make_db(tmp_path, patients=people, name=f"u{block_rows}.duckdb")
        results.append((outcome(ingest.import_files([path], db=target, block_rows=block_rows)),
                        stored(target, "assessments"), quarantined(target)))
    assert results[0] == results[1]
    repeat = "duplicate key (patient_id, instrument, administered_on) in this file: line 2 has the same one"
    assert results[0][0][0][6] == [(5, "item_1", "PHQ-9 item 1 must be a whole number 0-3, got 9"),
                                   (11, "patient_id", repeat), (12, "patient_id", repeat)]


def test_a_bad_row_in_the_second_block_is_quarantined_with_its_editor_line_and_text(db, tmp_path):
    path = assessments_file(tmp_path)

    report = ingest.import_files([path], db=db, block_rows=3)

    assert report.exit_code == 1
    lines = {line: (column, reason, raw) for line, column, reason, raw in quarantined(db)}
    assert lines[8][0] == "item_1" and "must be a whole number 0-3, got 9" in lines[8][1]
    assert lines[8][2] == phq("P1", "2024-01-13", [9] + [1] * 8)
    assert lines[9][:2] == ("patient_id", rules_unknown_patient())
    assert lines[10][0] is None and lines[10][2] == "P1,PHQ-9,2024-01-15,self,1,1"


def rules_unknown_patient() -> str:
    from analytics.ingest import write as ingest_write
    return ingest_write.UNKNOWN_PATIENT


def test_a_first_import_into_empty_tables_refuses_the_same_rows_as_one_into_filled_ones(tmp_path):
    """Into empty tables the write looks up only the unknown patients and early treatments (write.py); into
    tables that already hold rows it builds the status of every row: the same rows are refused, with the
    same lines and messages, and the same rows stored, staged in blocks or not."""
    people = [patient("P1", enrolled_on="2024-01-05"), patient("P2")]
    treatments = write(tmp_path / "t.csv", TREATMENTS_HEADER, "P1,2024-01-10,iv,0.5,", "P1,2024-01-04,iv,0.5,",
                       "P404,2024-01-11,iv,0.5,", "P2,2024-02-02,iv,0.5,")
    assessments = assessments_file(tmp_path)
    earlier = [write(tmp_path / "t0.csv", TREATMENTS_HEADER, "P2,2024-03-01,iv,0.5,"),
               write(tmp_path / "a0.csv", ASSESSMENTS_HEADER, phq("P2", "2024-03-01", [0] * 9))]
    for block_rows in (3, 1000):
        empty = make_db(tmp_path, patients=people, name=f"empty{block_rows}.duckdb")
        filled = make_db(tmp_path, patients=people, name=f"filled{block_rows}.duckdb")
        assert ingest.import_files(earlier, db=filled).exit_code == 0
        before = {table: set(stored(filled, table)) for table in ("treatments", "assessments")}
        first = ingest.import_files([treatments, assessments], db=empty, block_rows=block_rows)
        later = ingest.import_files([treatments, assessments], db=filled, block_rows=block_rows)
        assert outcome(first) == outcome(later)
        assert [[(r.line, r.column) for r in f.rejects] for f in first.files] == [
            [(3, "administered_on"), (4, "patient_id")],
            [(7, "patient_id"), (8, "item_1"), (9, "patient_id"), (10, None)]]
        assert first.files[0].rejects[1].reason == first.files[1].rejects[2].reason == ingest.write.UNKNOWN_PATIENT
        assert first.files[0].rejects[0].reason == "administered_on is before the patient's enrolment on 2024-01-05"
        for table in ("treatments", "assessments"):
            assert set(stored(empty, table)) == set(stored(filled, table)) - before[table]


def test_a_crash_while_checking_the_second_block_changes_nothing_and_leaves_no_staging(db, tmp_path, monkeypatch):
    patients = write(tmp_path / "p.csv", PATIENTS_HEADER, "P9,North,dr_a,1980,F,TRD,,1,2024-01-01")
    path = assessments_file(tmp_path)
    before = snapshot(db)
    staging = []
    real_validate = rules.validate
    from analytics.ingest import csv_source

    real_stage = csv_source._stage

    def validate(kind, frame, **kw):
        if kind == "assessments" and frame["_line"].min() >= 6:  # the second block
            raise RuntimeError("simulated crash in block 2")
        return real_validate(kind, frame, **kw)

    def stage(index, stage_dir, block_rows, progress=None):
        staging.append(stage_dir)
        return real_stage(index, stage_dir, block_rows, progress)

    monkeypatch.setattr(rules, "validate", validate)
    monkeypatch.setattr(csv_source, "_stage", stage)
    with pytest.raises(RuntimeError, match="block 2"):
        ingest.import_files([patients, path], db=db, block_rows=3)

    assert snapshot(db) == before
    assert staging and not staging[0].exists()
    assert not [t for t in threading.enumerate() if t.name == "ingest-read-ahead"]  # the parsing thread stopped


def test_a_second_block_that_is_not_utf8_refuses_the_whole_command(db, tmp_path):
    patients = write(tmp_path / "p.csv", PATIENTS_HEADER, "P9,North,dr_a,1980,F,TRD,,1,2024-01-01")
    path = assessments_file(tmp_path)
    path.write_bytes(path.read_bytes().replace(b"P2,PHQ-9", b"P\xff,PHQ-9"))
    before = snapshot(db)

    report = ingest.import_files([patients, path], db=db, block_rows=3)

    assert report.exit_code == 2
    assert any("a.csv: line 11: the file is not UTF-8" in m for m in report.messages())
    assert snapshot(db) == before


def test_reimporting_a_large_file_adds_nothing(db, tmp_path):
    path = assessments_file(tmp_path)
    ingest.import_files([path], db=db, block_rows=3)
    before = snapshot(db)

    again = ingest.import_files([path], db=db, block_rows=3)

    after = snapshot(db)
    assert (again.files[0].rows_inserted, again.files[0].rows_unchanged, again.files[0].rows_rejected) == (0, 4, 4)
    for table in ("patients", "assessments", "rejected_rows", "record_history"):
        assert after[table] == before[table]


def test_treatments_in_blocks_check_enrolment_and_duplicates_like_one_piece(tmp_path):
    rows = ["P1,2024-01-10,iv,0.5,induction", "P1,2024-01-04,iv,0.5,", "P1,2024-01-12,im,0.6,",
            "P1,2024-01-10,iv,0.7,", "P2,2024-02-01,iv,0.5,", "P1,2024-01-14,iv,0.5,"]
    path = write(tmp_path / "t.csv", TREATMENTS_HEADER, *rows)
    one = make_db(tmp_path, patients=[patient("P1", enrolled_on="2024-01-05"), patient("P2")], name="one.duckdb")
    blocks = make_db(tmp_path, patients=[patient("P1", enrolled_on="2024-01-05"), patient("P2")], name="blocks.duckdb")

    whole = ingest.import_files([path], db=one)
    split = ingest.import_files([path], db=blocks, block_rows=2)

    assert outcome(split) == outcome(whole)
    assert [(r.line, r.column) for r in split.rejects] == [(3, "administered_on"), (5, "patient_id")]
    assert stored(blocks, "treatments") == stored(one, "treatments")


def test_scan_counts_lines_across_chunks(tmp_path, monkeypatch):
    from analytics.ingest import csv as ingest_csv
    monkeypatch.setattr(ingest_csv, "CHUNK_BYTES", 7)  # every record and quoted cell crosses a chunk edge
    path = assessments_file(tmp_path)

    index = ingest_csv.scan_csv(path)

    assert index.good_lines.tolist() == [2, 4, 6, 7, 8, 9, 11]
    assert [m[0] for m in index.malformed] == [10]
    frame = pd.concat(index.blocks(block_rows=3), ignore_index=True)
    assert frame["rater"].tolist()[:2] == ["Dr A\nsecond line", "self"]
    assert index.raw_lines([10, 11]) == ["P1,PHQ-9,2024-01-15,self,1,1", phq("P2", "2024-01-12", [0] * 9)]


def test_a_large_import_reports_progress_per_block_and_the_same_outcome(tmp_path):
    """`python -m analytics import` on a terminal shows these lines (long work shows progress)."""
    quiet = make_db(tmp_path, patients=[patient("P1", enrolled_on="2024-01-05"), patient("P2")], name="quiet.duckdb")
    shown = make_db(tmp_path, patients=[patient("P1", enrolled_on="2024-01-05"), patient("P2")], name="shown.duckdb")
    path = assessments_file(tmp_path)
    lines: list[str] = []

    with_progress = ingest.import_files([path], db=shown, block_rows=3, progress=lines.append)
    assert outcome(with_progress) == outcome(ingest.import_files([path], db=quiet, block_rows=3))
    assert lines == ["a.csv: reading", "a.csv: checking 8 rows", "a.csv: checked 3 of 8 rows",
                     "a.csv: checked 6 of 8 rows", "a.csv: checked 8 of 8 rows",
                     "writing the checked rows (one transaction)"]


def test_the_import_command_adds_nothing_to_piped_output(tmp_path, db):
    import subprocess
    import sys

    path = write(tmp_path / "a.csv", ASSESSMENTS_HEADER, phq("P1", "2024-01-10", [1] * 9))
    run = subprocess.run([sys.executable, "-m", "analytics", "import", "--db", str(db), str(path)],
                         capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    assert run.returncode == 0
    assert run.stderr == "" and "\r" not in run.stdout


def _ingest_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(("ingest-scan-ahead", "ingest-stage-writer"))]


def test_a_file_refused_while_the_one_before_it_is_checked_is_reported_the_same_and_its_scan_ends(db, tmp_path):
    """The next file is scanned in a thread while this one is checked: what its scan finds (here: not UTF-8)
    is still reported for that file, and refuses the whole command as before (nothing written)."""
    patients = write(tmp_path / "p.csv", PATIENTS_HEADER, "P9,North,dr_a,1980,F,TRD,,1,2024-01-01")
    good = assessments_file(tmp_path)
    bad = write(tmp_path / "t.csv", TREATMENTS_HEADER, "P1,2024-01-10,iv,0.5,induction")
    bad.write_bytes(bad.read_bytes().replace(b"P1,2024", b"P\xff,2024"))
    before = snapshot(db)

    report = ingest.import_files([patients, good, bad], db=db, block_rows=3)

    assert [(f.kind, f.refused is not None) for f in report.files] == [
        (None, True), ("patients", False), ("assessments", False)]
    assert "t.csv: line 2: the file is not UTF-8" in report.files[0].refused
    assert report.exit_code == 2 and not report.committed
    assert snapshot(db) == before
    assert _ingest_threads() == []


def test_a_failed_write_of_the_staged_rows_stops_the_import_before_anything_is_written(db, tmp_path, monkeypatch):
    """The staged rows are written in a thread while the next block is checked; a write that fails there
    (a full disk) is reported as before: the command's error, nothing written, no thread left."""
    import errno

    import pyarrow.parquet as pq

    patients = write(tmp_path / "p.csv", PATIENTS_HEADER, "P9,North,dr_a,1980,F,TRD,,1,2024-01-01")
    path = assessments_file(tmp_path)
    before = snapshot(db)
    real = pq.ParquetWriter.write_table
    calls = []

    def full_disk(self, table, *args, **kwargs):
        calls.append(len(table))
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, table, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetWriter, "write_table", full_disk)
    report = ingest.import_files([patients, path], db=db, block_rows=3)

    assert report.exit_code == 2 and len(calls) >= 2
    assert report.error and "a.csv" in report.error and "No space left on device" in report.error
    assert snapshot(db) == before
    assert _ingest_threads() == []


@pytest.mark.parametrize("chunk", [7, 16 << 20])
@pytest.mark.parametrize("cells, trims", [
    ([], False),                                              # no space anywhere
    (["North Site", "dr a"], False),                          # spaces inside values only
    ([" P1"], True), (["self "], True),                       # a space opening or closing an unquoted value
    (['" Dr A"'], True), (['"Dr A "'], True),                 # ... inside the quotes of a quoted value
    (["   "], True),                                          # a value of spaces only (read as empty)
    (["self\u00a0"], True), (["\u3000self"], True),           # Unicode spaces trim() removes
    (["Dr\u00e9"], True),                                     # any non-ASCII byte: trimmed, to be safe
])
def test_cells_are_parsed_the_same_whether_or_not_the_file_needs_trimming(tmp_path, monkeypatch, chunk, cells, trims):
    """The parse trims every cell only when a value may begin or end with a space (CsvIndex.needs_trim):
    otherwise trim() changes nothing, and skipping it is 40% of DuckDB's parse. The blocks are the same."""
    from analytics.ingest import csv as ingest_csv
    monkeypatch.setattr(ingest_csv, "CHUNK_BYTES", chunk)  # 7: spaces at chunk edges too
    rows = [phq("P1", "2024-01-10", [1] * 9), phq("P2", "2024-01-11", [2] * 9).replace(",self,", ',"DrA\nB",')]
    rows += [phq("P1", f"2024-01-{12 + i}", [1] * 9).replace(",self,", f",{cell},") for i, cell in enumerate(cells)]
    path = write(tmp_path / "a.csv", ASSESSMENTS_HEADER, *rows)

    index = ingest_csv.scan_csv(path)
    # Never missed; at a chunk's edge a space counts as touching one (7-byte chunks: may say True for False).
    assert index.needs_trim is trims if chunk > 7 else (index.needs_trim or not trims)
    seen = pd.concat(index.blocks(block_rows=2), ignore_index=True)
    index.needs_trim = True
    trimmed = pd.concat(index.blocks(block_rows=2), ignore_index=True)
    pd.testing.assert_frame_equal(seen, trimmed)
    if cells == ["   "]:
        assert pd.isna(trimmed["rater"].iloc[-1])
