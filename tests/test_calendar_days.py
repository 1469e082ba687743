"""Days since, ago, overdue and due in: whole calendar days in the clinic's time zone.

Issue 14: the due list's "days since a score" was -1 right after a timed self-report (today's
midnight minus a timestamp), and "last infusion ... days ago" used the same arithmetic. One helper,
`clinic_time.days_since`, now says how many calendar days lie between a stored time and the clinic's
today, and `clinic_time.today()` is the clinic's date, not the server's.
"""
from __future__ import annotations

from datetime import date, datetime, timezone

import pandas as pd
import pytest

from analytics import clinic_time, selfreport
from analytics.access import SYSTEM, DataAccess
from analytics.screens import due, patient
from analytics.screens.workspace import Workspace

TODAY = date(2026, 11, 21)


@pytest.mark.parametrize("when, days", [
    (datetime(2026, 11, 21, 0, 0, 1), 0),     # just after midnight today
    (datetime(2026, 11, 21, 9, 30), 0),       # a timed self-report this morning: 0, never -1
    (datetime(2026, 11, 21, 23, 59, 59), 0),  # the last second of today
    (datetime(2026, 11, 20, 23, 59, 59), 1),  # just before midnight: yesterday
    (date(2026, 11, 20), 1),                  # an untimed row of yesterday
    (pd.Timestamp("2026-11-21"), 0),          # an untimed row of today
    (date(2026, 10, 24), 28),
    (date(2026, 11, 23), -2),                 # a date ahead (a due date): negative
])
def test_days_since_counts_calendar_days(when, days):
    assert clinic_time.days_since(when, TODAY) == days


def test_days_since_a_column_keeps_missing_values_missing():
    stamps = pd.Series(pd.to_datetime(["2026-11-21 09:30", None, "2026-11-20 23:50"]))
    out = clinic_time.days_since(stamps, TODAY)
    assert out.iloc[0] == 0 and pd.isna(out.iloc[1]) and out.iloc[2] == 1
    assert clinic_time.days_since(None, TODAY) is None


def _clock_at(monkeypatch, instant_utc: datetime):
    """clinic_time's clock reads `instant_utc` (an aware UTC time) whatever the machine's clock says."""
    class Frozen(datetime):
        @classmethod
        def now(cls, tz=None):
            return instant_utc.astimezone(tz) if tz else instant_utc.replace(tzinfo=None)

    monkeypatch.setattr(clinic_time, "datetime", Frozen)


@pytest.mark.parametrize("zone, utc, clinic_day", [
    ("America/New_York", datetime(2026, 11, 22, 4, 59, tzinfo=timezone.utc), date(2026, 11, 21)),  # 23:59 in New York
    ("America/New_York", datetime(2026, 11, 22, 5, 1, tzinfo=timezone.utc), date(2026, 11, 22)),   # 00:01 in New York
    ("Pacific/Auckland", datetime(2026, 11, 21, 10, 59, tzinfo=timezone.utc), date(2026, 11, 21)),  # 23:59 in Auckland
    ("Pacific/Auckland", datetime(2026, 11, 21, 11, 1, tzinfo=timezone.utc), date(2026, 11, 22)),   # 00:01 in Auckland
])
def test_today_is_the_clinics_date_not_the_servers(monkeypatch, zone, utc, clinic_day):
    monkeypatch.setenv("OUTCOMES_TIMEZONE", zone)
    monkeypatch.setenv("TZ", "UTC")  # the server's own zone
    monkeypatch.delenv("OUTCOMES_TODAY", raising=False)
    _clock_at(monkeypatch, utc)
    assert clinic_time.today() == clinic_day


def test_fixed_today_for_a_demo_clinic(monkeypatch):
    monkeypatch.setenv("OUTCOMES_TODAY", "2026-11-21")
    assert clinic_time.today() == TODAY
    monkeypatch.setenv("OUTCOMES_TODAY", "21/11/2026")
    with pytest.raises(clinic_time.TimeZoneSettingError, match="YYYY-MM-DD"):
        clinic_time.today()


def _listed_patient(db) -> str:
    """A patient on the due list of TODAY (so their row can be read after a self-report)."""
    listed = due.due_screen(Workspace(DataAccess(db)), TODAY).due
    return listed["patient_id"].iloc[0]


def test_a_timed_self_report_this_morning_is_a_score_zero_days_old_on_the_due_list(writable_db):
    pid = _listed_patient(writable_db)
    link = selfreport.create_link(writable_db, SYSTEM, pid, "PHQ-9", now=datetime(2026, 11, 21, 8, 0))
    token = link.url.split("token=")[1]
    answers = {"PHQ-9": {**{n: 3 for n in range(1, 9)}, 9: 0}}  # 24: severe, so the patient stays on the list
    assert selfreport.submit(writable_db, token, answers, now=datetime(2026, 11, 21, 9, 30, 15)).ok
    listed = due.due_screen(Workspace(DataAccess(writable_db)), TODAY, no_score_days=7).due.set_index("patient_id")
    row = listed.loc[pid]
    assert row["last_assessment"] == pd.Timestamp("2026-11-21 09:30:15")
    assert row["days_since_score"] == 0  # was -1: midnight minus 09:30
    assert "no recent score" not in row["reasons"]


def _frames(last_score: str, next_due: str):
    patients = pd.DataFrame({"patient_id": ["a"]})
    treatments = pd.DataFrame({"patient_id": ["a", "a"], "administered_at": pd.to_datetime(["2026-09-01", "2026-10-20"]),
                               "route": "iv", "dose_mg_per_kg": 0.5, "phase": ["induction", "maintenance"],
                               "has_time": False})
    assessments = pd.DataFrame({
        "patient_id": ["a", "a", "a"], "instrument": "PHQ-9",
        "administered_at": pd.to_datetime(["2026-08-30", "2026-09-20", last_score], format="ISO8601"),
        "has_time": [False, False, True], "total": [20.0, 6.0, 16.0], "item_9": 0.0, "total_method": "items"})
    suggestions = pd.DataFrame({"patient_id": ["a"], "next_due_on": pd.to_datetime([next_due]), "taper": ["none"]})
    return patients, treatments, assessments, suggestions


@pytest.mark.parametrize("last_score, flagged", [
    ("2026-10-24 23:59", True),   # 28 calendar days ago, late in the evening
    ("2026-10-25 00:01", False),  # 27 calendar days ago, just after midnight
])
def test_no_recent_score_counts_calendar_days_whatever_the_time(last_score, flagged):
    listed = due.due_list(*_frames(last_score, "2026-12-20")[:3], TODAY, no_score_days=28,
                          suggestions=_frames(last_score, "2026-12-20")[3])
    row = listed.set_index("patient_id").loc["a"]
    assert row["days_since_score"] == (28 if flagged else 27)
    assert ("no recent score" in row["reasons"]) is flagged


@pytest.mark.parametrize("next_due, reason", [
    ("2026-11-20", "overdue"),        # yesterday
    ("2026-11-21", "due this week"),  # today: due, not overdue
    ("2026-11-28", "due this week"),  # in 7 days
    ("2026-11-29", None),             # in 8 days
])
def test_overdue_and_due_this_week_by_calendar_day(next_due, reason):
    *frames, suggestions = _frames("2026-11-19 10:00", next_due)
    listed = due.due_list(*frames, TODAY, no_score_days=28, suggestions=suggestions).set_index("patient_id")
    reasons = listed.loc["a", "reasons"] if "a" in listed.index else ""
    for name in ("overdue", "due this week"):
        assert (name in reasons) is (name == reason), reasons


def test_last_infusion_this_morning_is_zero_days_ago_on_the_patient_page(writable_db):
    from analytics import visits

    data = DataAccess(writable_db)
    pid = data.patients()["patient_id"].iloc[0]
    assert visits.record_infusion(writable_db, SYSTEM, pid, administered_at=datetime(2026, 11, 21, 8, 15), route="iv",
                                  dose_mg_per_kg=0.5, phase="maintenance").ok
    screen = patient.patient_screen(Workspace(data), pid, TODAY)
    assert screen.last_infusion == pd.Timestamp("2026-11-21 08:15")
    assert screen.days_since_infusion == 0  # was -1
    later = patient.patient_screen(Workspace(data), pid, date(2026, 11, 22))
    assert later.days_since_infusion == 1


@pytest.mark.parametrize("due_on, words", [
    ("2026-11-21", "(today)"), ("2026-11-22", "(tomorrow)"), ("2026-11-24", "(in 3 days)"),
    ("2026-11-20", "(1 day overdue)"), ("2026-11-18", "(3 days overdue)"),
])
def test_suggestion_says_due_in_and_overdue_in_calendar_days(due_on, words):
    text = patient.describe_suggestion({"next_due_on": pd.Timestamp(due_on), "suggested_interval_days": 30,
                                        "target": 0.8, "basis": "personal", "n_cycles": 3}, TODAY)
    assert words in text
