"""`python -m analytics import` fits the clinic's durability model of the new data version after its commit
and saves it beside the database (analytics/screens/saved.py): the dashboard's first visit after an import
loads it instead of fitting it in the visitor's page (bench `first_cohort_s`). The import's exit code and
messages are those it gives without the model (`--no-model`)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from analytics import cli, intervals
from analytics.access import SYSTEM, DataAccess
from analytics.screens import saved, workspace


def _copy(source: Path, target: Path) -> Path:
    shutil.copy(source, target)
    if Path(f"{source}.wal").exists():
        shutil.copy(f"{source}.wal", f"{target}.wal")
    return target


def _import_one_score(db: Path, tmp_path: Path, capsys, *flags: str) -> tuple[int, str, str]:
    patient = DataAccess(db).patients()["patient_id"].iloc[0]
    folder = tmp_path / db.stem
    folder.mkdir()
    csv = folder / "one.csv"
    csv.write_text("patient_id,instrument,administered_on,rater,item_1,item_2,item_3,item_4,item_5,item_6,item_7,"
                   f"item_8,item_9\n{patient},PHQ-9,2026-11-20,self,0,0,0,0,0,0,0,0,0\n")
    intervals.forget_fits()
    workspace._CLINIC_MODELS.clear()
    code = cli.main(["import", "--db", str(db), *flags, str(csv)])
    out = capsys.readouterr()
    return code, out.out.replace(str(folder), "HERE"), out.err.replace(str(folder), "HERE")


def test_an_import_saves_the_clinic_model_that_the_next_server_loads(demo_db, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(saved.SAVE_ENV, "1")
    with_model = _copy(demo_db, tmp_path / "with.duckdb")
    without = _copy(demo_db, tmp_path / "without.duckdb")

    told = _import_one_score(with_model, tmp_path, capsys)
    told_without = _import_one_score(without, tmp_path, capsys, "--no-model")
    assert told[0] == 0 and told == told_without  # the same exit code and messages
    version = DataAccess(with_model).data_version()
    assert saved.load_clinic(with_model, "PHQ-9", version) is not None
    assert saved.load_clinic(without, "PHQ-9", DataAccess(without).data_version()) is None

    # the next server process: nothing in memory, and no fit allowed
    intervals.forget_fits()
    workspace._CLINIC_MODELS.clear()

    def no_fit(*args, **kwargs):
        raise AssertionError("the model was fitted again")
    monkeypatch.setattr(intervals, "fit_clinic_model", no_fit)
    loaded = workspace.clinic_model(DataAccess(with_model, SYSTEM), "PHQ-9")
    assert tuple(loaded.version) == tuple(version) and loaded.model is not None
    assert [entry[2] for entry in workspace._CLINIC_MODELS.values()] == [True]  # loaded from its file
    with pytest.raises(AssertionError, match="fitted again"):
        workspace.clinic_model(DataAccess(without, SYSTEM), "PHQ-9")
