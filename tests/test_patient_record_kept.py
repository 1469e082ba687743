"""A patient's record is kept per scope, patient and data version (analytics.access.DataAccess.patient_record),
and what the Patient page draws from it per record content: every view is still audited, a kept record or
figure is never handed to another scope, and a write (a new data version) is seen at once."""
from __future__ import annotations

import json
from datetime import date

import pandas as pd
import plotly.io
import pytest

from analytics import access, audit, charts, scales, store, visits
from analytics.access import AccessDenied, DataAccess, Scope
from analytics.screens import patient
from analytics.screens.workspace import Workspace

TODAY = date(2026, 11, 21)


@pytest.fixture()
def clinic(writable_db, monkeypatch):
    """The demo copy, two clinicians' first patients, and a count of the record reads that reach the database."""
    with store.connect(writable_db) as con:
        rows = con.execute("SELECT clinician, min(patient_id) FROM patients GROUP BY 1 ORDER BY 1").fetchall()
    reads = []
    read = DataAccess._read_record

    def counted(self, patient_id):
        reads.append((self.scope.user, patient_id))
        return read(self, patient_id)
    monkeypatch.setattr(DataAccess, "_read_record", counted)
    return writable_db, rows[0], rows[1], reads


def clinician(user: str, handle: str) -> Scope:
    return Scope(user, "clinician", clinician=handle)


def views(db, user: str) -> list[tuple]:
    trail = audit.entries(db, action="view_patient")
    return [(r.outcome, r.patients) for r in trail.itertuples() if r.actor == user]


def test_every_view_is_audited_and_the_record_is_read_again_only_after_a_write(clinic):
    db, (handle, pid), _, reads = clinic
    data = DataAccess(db, clinician(handle, handle))
    with access.page_run():  # as dashboard.py runs every page: the entries are journaled
        first = data.patient_record(pid, page="patient")
        again = [data.patient_record(pid, page="patient") for _ in range(2)]
    assert len(reads) == 1 and views(db, handle) == [("ok", [pid])] * 3
    for record in again:  # the same rows as the read
        for name in ("patient", "treatments", "assessments"):
            pd.testing.assert_frame_equal(record[name], first[name])
    pd.testing.assert_frame_equal(first["assessments"], data.assessments([pid]))

    saved = visits.record_assessment(db, data.scope, pid, "PHQ-9", administered_at="2026-11-25 10:00",
                                     items={i: 1 for i in range(1, 10)})
    assert saved.ok
    after = data.patient_record(pid, page="patient")
    assert len(reads) == 2 and len(views(db, handle)) == 4
    assert len(after["assessments"]) == len(first["assessments"]) + 1
    assert pd.Timestamp("2026-11-25 10:00") in set(after["assessments"]["administered_at"])


def test_a_kept_record_is_never_handed_to_another_scope(clinic):
    db, (handle, pid), (other_handle, other_pid), reads = clinic
    DataAccess(db, clinician(handle, handle)).patient_record(pid, page="patient")
    # another clinician asking for the kept patient is refused (and audited) as if nothing were kept
    with pytest.raises(AccessDenied, match="not in your caseload"):
        DataAccess(db, clinician(other_handle, other_handle)).patient_record(pid, page="patient")
    assert views(db, other_handle) == [("denied", [pid])]
    # another user of the same caseload, and a director with a grant on the patient: a read of their own
    DataAccess(db, clinician("locum", handle)).patient_record(pid, page="patient")
    granted = Scope("director", "director", patient_level=False, granted=frozenset({pid}))
    DataAccess(db, granted).patient_record(pid, page="patient")
    assert reads == [(handle, pid), (other_handle, pid), ("locum", pid), ("director", pid)]  # a refusal reads too
    with pytest.raises(AccessDenied):  # the grant's scope without the grant: refused, kept record or not
        DataAccess(db, Scope("director", "director", patient_level=False)).patient_record(pid, page="patient")
    assert views(db, "director")[-1] == ("denied", [pid])


def test_the_drawn_timeline_follows_a_write_and_stays_in_its_scope(clinic):
    """The page keys its figure by the record's content (screen.fingerprint) in the scope's own workspace: after a
    new score the screen and the timeline show it; a scope that may not open the patient gets no screen."""
    db, (handle, pid), (other_handle, _), _ = clinic
    ws = Workspace(DataAccess(db, clinician(handle, handle)))
    ws.cycles()  # the caseload's cycles, as the page's workspace holds them (the suggestion is not drawn here)
    ws.suggestions = lambda *args, **kwargs: pd.DataFrame({"patient_id": pd.Series([], dtype=object)})

    def drawn_scores(screen) -> list[str]:
        spec = json.loads(plotly.io.to_json(charts.drawn(charts.patient_timeline_spec(
            screen.assessments, screen.treatments, screen.thresholds, screen.cycles, pid)).to_dict()))
        return [x for t in spec["data"] if t.get("name") == scales.PRIMARY for x in t["x"]]
    before = patient.patient_screen(ws, pid, TODAY)
    assert patient.patient_screen(ws, pid, TODAY) is before  # a rerun: the same screen, so the same figure key
    visits.record_assessment(db, ws.data.scope, pid, "PHQ-9", administered_at="2026-11-25 10:00",
                             items={i: 3 for i in range(1, 10)})
    after = patient.patient_screen(ws, pid, TODAY)
    assert after.fingerprint != before.fingerprint
    assert len(drawn_scores(after)) == len(drawn_scores(before)) + 1
    assert any(x.startswith("2026-11-25T10:00") for x in drawn_scores(after))
    refused = patient.patient_screen(Workspace(DataAccess(db, clinician(other_handle, other_handle))), pid, TODAY)
    assert refused.refused and refused.assessments.empty


def test_a_safety_flag_raised_in_another_process_after_a_read_shows_on_the_next_read(clinic):
    """The open flags are read again only when something was written (store.change_stamp), in any process: a
    flag raised by another process (a self-report handled by another server) shows at once, and an
    acknowledged one is gone at once."""
    import subprocess
    import sys

    from analytics import selfreport
    from tests.conftest import ROOT

    db, (handle, pid), _, _ = clinic
    data = DataAccess(db, clinician(handle, handle))
    assert pid not in set(data.safety_flags()["patient_id"])
    raise_flag = ("import sys; from analytics import store\n"
                  "with store.transaction(sys.argv[1]) as con:\n"
                  "    con.execute(\"INSERT INTO safety_flags (patient_id, raised_at, reason) \"\n"
                  "                \"VALUES (?, TIMESTAMP '2026-11-21 09:00', 'PHQ-9 item 9 = 2')\", [sys.argv[2]])\n")
    subprocess.run([sys.executable, "-c", raise_flag, str(db), pid], cwd=ROOT, check=True)
    flags = data.safety_flags()
    assert flags[flags["patient_id"] == pid]["reason"].tolist() == ["PHQ-9 item 9 = 2"]
    selfreport.acknowledge_flag(db, data.scope, int(flags[flags["patient_id"] == pid]["flag_id"].iloc[0]))
    assert pid not in set(data.safety_flags()["patient_id"])


def test_the_cycle_table_is_the_one_the_frame_operations_made(demo_db):
    """screens.patient.cycle_rows is built from plain values: the same frame (values, types, index) as the
    frame operations it replaced gave, for every demo patient's cycles (none included)."""
    from analytics.screens.workspace import categories_as_text

    def previous(cycles: pd.DataFrame) -> pd.DataFrame:
        days = cycles["length_days"].round(0).astype(int)
        return pd.DataFrame({
            "cycle": cycles["cycle_no"].astype(int),
            "started": cycles["started_at"].dt.strftime("%d %b %Y"),
            "length": [f"{d} day" if d == 1 else f"{d} days" for d in days],
            "ended": cycles["censor_reason"].map(patient.CYCLE_ENDS).fillna(cycles["censor_reason"]),
        })
    ws = Workspace(DataAccess(demo_db))
    cycles = ws.cycles()
    shown = 0
    for pid in ws.data.patients()["patient_id"]:
        mine = categories_as_text(patient.patient_rows(ws, ("cycles", scales.PRIMARY), lambda: cycles, pid))
        pd.testing.assert_frame_equal(patient.cycle_rows(mine), previous(mine))
        shown += len(mine)
    assert shown == len(cycles)
