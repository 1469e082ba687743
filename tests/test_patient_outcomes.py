"""The patient page's per-patient paths give what the clinic-wide definitions give that patient.

`outcomes.patient_outcomes` (one record's baselines and latest state, on arrays) against `outcomes.baselines`
and `outcomes.patient_status` on the whole clinic; the screen's alerts, thresholds and latest scores built
from it against the same built from those clinic-wide frames; `screens.patient.patient_rows` against a
boolean mask over the clinic-wide cycles. Every patient of the demo clinic, every instrument."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analytics import outcomes, scales
from analytics.access import SYSTEM, DataAccess
from analytics.screens import patient
from analytics.screens.workspace import Workspace


@pytest.fixture(scope="module")
def clinic(demo_db):
    data = DataAccess(demo_db, SYSTEM)
    t, a = data.treatments(), data.assessments()
    records = {pid: {"treatments": t[t["patient_id"] == pid].reset_index(drop=True),
                     "assessments": a[a["patient_id"] == pid].reset_index(drop=True)}
               for pid in data.patients()["patient_id"]}
    return data, t, a, records


def _same(x, y) -> bool:
    return (pd.isna(x) and pd.isna(y)) or float(x) == float(y)


def test_patient_outcomes_equal_the_clinic_wide_baselines_and_status(clinic):
    _data, t, a, records = clinic
    checked = 0
    for code in scales.codes():
        base = outcomes.baselines(t, a, code).set_index("patient_id")
        status = (outcomes.patient_status(t, a, code).set_index("patient_id")
                  if scales.get(code).reliability is not None else None)
        for pid, record in records.items():
            found = outcomes.patient_outcomes(record["treatments"], record["assessments"]).get(code)
            scored = (record["assessments"]["instrument"] == code) & record["assessments"]["total"].notna()
            if pid not in base.index or not scored.any():
                assert found is None
                continue
            assert _same(found.baseline_score, base.loc[pid, "baseline_score"]), (pid, code)
            if status is not None:
                row = status.loc[pid]
                for name in ("latest_score", "previous_score", "best_score"):
                    assert _same(getattr(found, name), row[name]), (pid, code, name)
                assert found.worse_than_best == bool(row["worse_than_best"]), (pid, code)
                assert found.worse_than_last == bool(row["worse_than_last"]), (pid, code)
                assert found.rci_points == row["rci_points"]
            checked += 1
    assert checked > 200
    # the demo clinic has patients on each side of both flags, so the comparison can fail
    status = outcomes.patient_status(t, a, scales.PRIMARY)
    assert status["worse_than_last"].any() and status["worse_than_best"].any()


@pytest.mark.parametrize("shift_days", [0, 1, 40])
def test_patient_outcomes_on_the_clock_edges_and_without_a_baseline(clinic, shift_days):
    """A patient's first infusion moved to `shift_days` before their first score, date-only and timed: a
    score on the infusion's day counts before an untimed infusion (the clock's end of day), a gap longer
    than the baseline window leaves no baseline. Still the clinic-wide functions' answer."""
    _data, t, a, records = clinic
    pid = next(p for p, r in records.items() if len(r["treatments"]) > 3 and len(r["assessments"]) > 3)
    tr, asm = records[pid]["treatments"].copy(), records[pid]["assessments"].copy()
    first_score = asm["administered_at"].min()
    for has_time in (False, True):
        moved = tr.copy()
        moved.loc[moved["administered_at"].idxmin(), "administered_at"] = (
            first_score.normalize() - pd.Timedelta(days=shift_days) + (pd.Timedelta(hours=9) if has_time else pd.Timedelta(0)))
        moved["has_time"] = moved["has_time"].astype(bool)
        moved.loc[moved["administered_at"].idxmin(), "has_time"] = has_time
        found = outcomes.patient_outcomes(moved, asm)
        for code in found:
            base = outcomes.baselines(moved, asm, code)
            assert _same(found[code].baseline_score, base["baseline_score"].iloc[0]), (shift_days, has_time, code)
            row = outcomes.patient_status(moved, asm, code).iloc[0]
            assert _same(found[code].latest_score, row["latest_score"]) and _same(found[code].best_score, row["best_score"])
            assert _same(found[code].previous_score, row["previous_score"])
        if shift_days == 40:
            assert pd.isna(found[scales.PRIMARY].baseline_score)  # outside the window: no baseline


def test_alerts_thresholds_and_latest_scores_are_those_of_the_clinic_wide_definitions(clinic):
    _data, t, a, records = clinic
    statuses = {code: outcomes.patient_status(t, a, code).set_index("patient_id")
                for code in scales.measuring("depression")}
    bases = {code: outcomes.baselines(t, a, code).set_index("patient_id") for code in scales.codes()}
    alerted = 0
    for pid, record in list(records.items())[:70]:
        tr, asm = record["treatments"], record["assessments"]
        alerts = patient.patient_alerts(record)
        expected_worse = []
        for code, status in statuses.items():
            if len(tr) and (asm["instrument"] == code).any() and pid in status.index:
                row = status.loc[pid]
                if row["worse_than_last"]:
                    expected_worse.append(f"{code} worsened reliably since the previous score ({row['previous_score']:.0f}")
                elif row["worse_than_best"]:
                    expected_worse.append(f"{code} worsened reliably from the best score ({row['best_score']:.0f}")
        worse = [m for m in alerts if "worsened reliably" in m]
        assert len(worse) == len(expected_worse) and all(m.startswith(e) for m, e in zip(worse, expected_worse)), pid
        alerted += bool(worse)
        # the safety item: the latest score of each instrument, by date
        for scale in scales.SCALES.values():
            if scale.safety_column and scale.safety_column in asm:
                mine = asm[asm["instrument"] == scale.code].sort_values("administered_at")
                flagged = len(mine) and pd.notna(mine[scale.safety_column].iloc[-1]) and mine[scale.safety_column].iloc[-1] > 0
                assert any(m.startswith(f"Latest {scale.code} ") for m in alerts) == bool(flagged), pid
        thresholds = patient.patient_thresholds(tr, asm)
        assert set(thresholds) == set(asm["instrument"])
        for code, th in thresholds.items():
            want = bases[code]["baseline_score"].get(pid, np.nan) if len(tr) else np.nan
            assert _same(np.nan if th["baseline"] is None else th["baseline"], want), (pid, code)
        latest = patient.latest_scores(asm, {c: th["baseline"] for c, th in thresholds.items()})
        for row in latest.itertuples():
            mine = asm[(asm["instrument"] == row.instrument) & asm["total"].notna()].sort_values("administered_at")
            assert row.latest == float(mine["total"].iloc[-1]) and row.on == mine["administered_at"].iloc[-1].date()
    assert alerted > 0


def test_a_patients_rows_of_the_clinic_wide_cycles_are_those_a_mask_finds(clinic):
    data, *_ = clinic
    ws = Workspace(data)
    cycles = ws.cycles(scales.PRIMARY)
    ids = list(data.patients()["patient_id"])[:40] + ["P-NOBODY"]
    for pid in ids:
        mine = patient.patient_rows(ws, ("cycles", scales.PRIMARY), lambda: cycles, pid)
        pd.testing.assert_frame_equal(mine, cycles[cycles["patient_id"] == pid])
    assert cycles["patient_id"].nunique() > 10


def _history_as_before(record, limit=20):
    """The history as the page built it before wave 6 (frame operations), kept as the oracle."""
    from analytics import vocabulary
    t, a = record["treatments"], record["assessments"]
    inf = pd.DataFrame({
        "when": t["administered_at"], "event": "infusion, " + t["phase"].fillna("phase not recorded"),
        "detail": t["route"].map(lambda r: vocabulary.ROUTE_NAMES.get(r, r)) + ", "
        + t["dose_mg_per_kg"].map(lambda d: f"{d:g} mg/kg" if pd.notna(d) else "dose not recorded"),
    })
    safety = pd.Series(np.nan, index=a.index)
    for scale in scales.SCALES.values():
        if scale.safety_column and scale.safety_column in a:
            mine = (a["instrument"] == scale.code).to_numpy()
            safety[mine] = a.loc[mine, scale.safety_column].astype(float)
    scored = pd.DataFrame({
        "when": a["administered_at"], "event": a["instrument"],
        "detail": [(f"{tot:g} ({scales.get(i).band(tot)})" if pd.notna(tot) else "no total")
                   + (f"; item {scales.get(i).safety_item} = {int(v)}" if pd.notna(v) and v > 0 else "")
                   + (" (prorated)" if m == "prorated" else "")
                   for i, tot, v, m in zip(a["instrument"], a["total"], safety, a["total_method"])],
    })
    h = pd.concat([inf, scored], ignore_index=True).sort_values("when", ascending=False, kind="stable").head(limit)
    h["when"] = h["when"].map(patient._when_words)
    return h.rename(columns={"when": "date", "event": "record"}).reset_index(drop=True)


def test_the_history_lists_what_it_listed_before_for_every_patient(clinic):
    _data, _t, _a, records = clinic
    marked = 0
    for k, (pid, record) in enumerate(list(records.items())[:60]):
        for limit in ((20, 500) if k < 10 else (20,)):
            got, want = patient.patient_history(record, limit), _history_as_before(record, limit)
            assert got.columns.tolist() == want.columns.tolist() == ["date", "record", "detail"]
            assert got.astype(object).values.tolist() == want.astype(object).values.tolist(), pid
        marked += got["detail"].str.contains("item 9").any()
    assert marked > 0  # the safety item is shown somewhere, so its text is compared too


def test_the_record_fingerprint_changes_with_any_value_and_only_then(clinic):
    data, *_ = clinic
    pid = data.patients()["patient_id"].iloc[3]
    first, again = data.patient_record(pid), data.patient_record(pid)
    assert patient.record_fingerprint(first) == patient.record_fingerprint(again)
    corrected = {name: frame.copy() for name, frame in again.items()}
    corrected["assessments"].loc[0, "item_1"] = (corrected["assessments"].loc[0, "item_1"] + 1) % 3
    assert patient.record_fingerprint(corrected) != patient.record_fingerprint(first)
    moved = {name: frame.copy() for name, frame in again.items()}
    moved["treatments"].loc[0, "administered_at"] += pd.Timedelta(minutes=1)
    assert patient.record_fingerprint(moved) != patient.record_fingerprint(first)


def _item_matrix_as_before(assessments, instrument, last_n=12):
    """The item answers as the page built them before wave 6 (frame operations), kept as the oracle."""
    scale = scales.get(instrument)
    a = assessments[assessments["instrument"] == scale.code].sort_values("administered_at").tail(last_n)
    if a.empty:
        return pd.DataFrame()
    items = list(range(1, scale.scored_items + 1))
    values = a[[f"item_{i}" for i in items]].astype("Float64").to_numpy(dtype=float, na_value=np.nan)
    m = pd.DataFrame(values.T, columns=[d.strftime("%d %b %y") for d in a["administered_at"]])
    m.index = [f"{i}. {scale.short_label(i)}" for i in items]
    m.attrs["wording"] = [scale.item_labels[i - 1] if i <= len(scale.item_labels) else f"item {i}" for i in items]
    return m


def test_the_item_answers_are_what_they_were_before_for_every_patient(clinic):
    _data, _t, _a, records = clinic
    compared = 0
    for k, record in enumerate(list(records.values())[:40]):  # 40 patients: every instrument, many dates
        for code in scales.codes():
            for last_n in ((12, 3) if k < 5 else (12,)):
                got = patient.item_matrix(record["assessments"], code, last_n)
                want = _item_matrix_as_before(record["assessments"], code, last_n)
                pd.testing.assert_frame_equal(got, want)
                assert got.attrs == want.attrs
                compared += not got.empty
    assert compared > 40
