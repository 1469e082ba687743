"""`python -m analytics import` lowers its own CPU priority (niceness IMPORT_NICENESS) so a dashboard on the
same machine keeps serving while a bulk import runs; `--full-priority` keeps the normal priority. Either
way the import stores the same rows with the same exit code and messages (docs/import.md)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from analytics import cli
from analytics.access import DataAccess
from analytics.commands import import_files


class FakeNice:
    """os.nice for one process: the test process's own priority is left alone."""

    def __init__(self, start: int = 0):
        self.value, self.calls = start, []

    def __call__(self, increment: int) -> int:
        self.calls.append(increment)
        self.value = min(19, self.value + increment)
        return self.value


def _import(db: Path, tmp_path: Path, capsys, *flags: str) -> tuple[int, str, str, int]:
    patient = DataAccess(db).patients()["patient_id"].iloc[0]
    csv = tmp_path / f"{db.stem}.csv"
    csv.write_text("patient_id,instrument,administered_on,rater,item_1,item_2,item_3,item_4,item_5,item_6,item_7,"
                   f"item_8,item_9\n{patient},PHQ-9,2026-11-20,self,1,0,0,0,0,0,0,0,0\n")
    code = cli.main(["import", "--db", str(db), "--no-model", *flags, str(csv)])
    out = capsys.readouterr()
    rows = DataAccess(db).assessments()
    return code, out.out.replace(str(tmp_path), "HERE"), out.err.replace(str(tmp_path), "HERE"), len(rows)


def test_the_import_runs_at_lower_priority_unless_told_full_priority(demo_db, tmp_path, monkeypatch, capsys):
    lowered, kept = tmp_path / "lowered.duckdb", tmp_path / "kept.duckdb"
    shutil.copy(demo_db, lowered)
    shutil.copy(demo_db, kept)

    nice = FakeNice()
    monkeypatch.setattr(os, "nice", nice)
    told = _import(lowered, tmp_path, capsys)
    assert nice.value == import_files.IMPORT_NICENESS == 10

    nice_full = FakeNice()
    monkeypatch.setattr(os, "nice", nice_full)
    told_full = _import(kept, tmp_path, capsys, "--full-priority")
    assert [c for c in nice_full.calls if c != 0] == [] and nice_full.value == 0  # never changed

    assert told[0] == 0
    assert told[1].replace("lowered", "X") == told_full[1].replace("kept", "X")  # the same report
    assert told[2:] == told_full[2:]  # the same (empty) warnings and the same rows stored


@pytest.mark.parametrize("start, expected", [(0, 10), (5, 10), (15, 15)])
def test_the_import_never_raises_a_priority_it_was_started_with(monkeypatch, start, expected):
    nice = FakeNice(start)
    monkeypatch.setattr(os, "nice", nice)
    assert import_files.lower_priority() is True
    assert nice.value == expected


def test_a_refused_priority_change_leaves_the_import_running(monkeypatch):
    def refused(increment):
        raise PermissionError("not allowed")
    monkeypatch.setattr(os, "nice", refused)
    assert import_files.lower_priority() is False
    assert import_files.lower_priority(full_priority=True) is False
