"""Due list page and its ordering."""
from datetime import date

import pandas as pd

from analytics.screens import due


def test_due_list_puts_positive_item9_first(open_page):
    at = open_page("due")
    assert not at.exception
    table = at.dataframe[0].value
    assert len(table) > 0
    counts = {m.label: int(m.value) for m in at.metric}
    assert counts["item 9 positive"] > 0  # the demo clinic has patients endorsing item 9
    first_reasons = table["why"].head(counts["item 9 positive"])
    assert first_reasons.str.startswith("item 9 positive").all()
    assert counts["overdue"] + counts["due this week"] > 0  # the interval suggestions feed the list


def test_longer_no_score_window_flags_fewer_patients(open_page):
    at = open_page("due")
    short = int(next(m.value for m in at.metric if m.label == "no recent score"))
    at.slider[0].set_value(84).run()
    long = int(next(m.value for m in at.metric if m.label == "no recent score"))
    assert long <= short


def _frames():
    patients = pd.DataFrame({"patient_id": ["calm", "overdue", "item9", "gone"]})
    days = pd.to_datetime
    treatments = pd.DataFrame({
        "patient_id": ["calm"] * 2 + ["overdue"] * 2 + ["item9"] * 2 + ["gone"] * 2,
        "administered_at": days(["2026-11-01", "2026-11-15", "2026-10-01", "2026-10-10", "2026-11-01", "2026-11-10",
                                 "2025-01-01", "2025-01-05"]),
        "route": "iv", "dose_mg_per_kg": 0.5, "phase": "induction", "has_time": False,
    })
    rows = []
    for pid, item9 in (("calm", 0), ("overdue", 0), ("item9", 2), ("gone", 0)):
        first = treatments[treatments["patient_id"] == pid]["administered_at"].min()
        for offset, total in ((0, 20), (12, 8), (20, 7)):
            rows.append({"patient_id": pid, "instrument": "PHQ-9", "administered_at": first + pd.Timedelta(days=offset),
                         "has_time": False, "total": float(total), "item_9": float(item9 if offset == 20 else 0),
                         "total_method": "items"})
    assessments = pd.DataFrame(rows)
    suggestions = pd.DataFrame({"patient_id": ["calm", "overdue", "item9"],
                                "next_due_on": days(["2026-12-10", "2026-11-01", "2026-12-20"]),
                                "taper": ["none", "none", "none"]})
    return patients, treatments, assessments, suggestions


def test_due_list_orders_by_urgency_and_leaves_out_the_inactive():
    patients, treatments, assessments, suggestions = _frames()
    listed = due.due_list(patients, treatments, assessments, date(2026, 11, 21), no_score_days=60, suggestions=suggestions)
    assert list(listed["patient_id"]) == ["item9", "overdue"]
    assert listed.iloc[0]["reasons"].startswith("item 9 positive")
    assert "overdue" in listed.iloc[1]["reasons"]


def test_due_list_is_not_in_a_directors_menu_and_refuses_them(open_page, monkeypatch):
    """The due list names a caseload's patients; a director has no caseload, so the page is not theirs."""
    from analytics.access import Scope
    from pages._routing import menu_for

    director = Scope("d", "director", patient_level=False, identifiable=False)
    assert not any("due" in names for names in menu_for(director).values())
    assert not any("patient" in names for names in menu_for(director).values())
    granted = Scope("d", "director", patient_level=False, identifiable=False, granted=frozenset({"P00001"}))
    assert any("patient" in names for names in menu_for(granted).values())  # a granted patient opens
    monkeypatch.setenv("OUTCOMES_ROLE", "director")
    at = open_page("due")
    assert not at.exception
    assert not at.dataframe
    assert any("does not open this page" in e.value for e in at.error)


def test_clinician_due_list_holds_only_their_caseload(open_page, monkeypatch, demo_db):
    from analytics.access import DataAccess

    patients = DataAccess(demo_db).patients()
    clinician = patients["clinician"].value_counts().index[0]
    mine = set(patients.loc[patients["clinician"] == clinician, "patient_id"])
    monkeypatch.setenv("OUTCOMES_ROLE", "clinician")
    monkeypatch.setenv("OUTCOMES_CLINICIAN", clinician)
    at = open_page("due")
    assert not at.exception
    shown = set(at.dataframe[0].value["patient_id"])
    assert shown and shown <= mine


def test_cached_caseload_of_one_clinician_never_serves_another(open_page, monkeypatch, demo_db):
    """The second clinician's run hits warm caches: they must be keyed by scope."""
    from analytics.access import DataAccess

    patients = DataAccess(demo_db).patients()
    first, second = patients["clinician"].value_counts().index[:2]
    monkeypatch.setenv("OUTCOMES_ROLE", "clinician")
    shown = {}
    for clinician in (first, second):
        monkeypatch.setenv("OUTCOMES_CLINICIAN", clinician)
        at = open_page("due")
        shown[clinician] = set(at.dataframe[0].value["patient_id"])
    for clinician, ids in shown.items():
        assert ids and ids <= set(patients.loc[patients["clinician"] == clinician, "patient_id"])


def test_patients_no_longer_in_active_care_are_their_own_group_without_a_due_date():
    patients, treatments, assessments, suggestions = _frames()
    # a stale suggestion for the patient who stopped must not make them "overdue"
    suggestions = pd.concat([suggestions, pd.DataFrame({"patient_id": ["gone"], "next_due_on": pd.to_datetime(["2025-02-01"]),
                                                        "taper": ["none"]})], ignore_index=True)
    hidden = due.due_list(patients, treatments, assessments, date(2026, 11, 21), no_score_days=60, suggestions=suggestions)
    assert "gone" not in set(hidden["patient_id"])
    shown = due.due_list(patients, treatments, assessments, date(2026, 11, 21), no_score_days=60,
                           suggestions=suggestions, include_inactive=True)
    assert list(shown["patient_id"]) == ["item9", "overdue", "gone"]
    gone = shown.iloc[-1]
    assert gone["reasons"] == "no longer in active care" and pd.isna(gone["next_due_on"])


def test_the_due_page_lists_inactive_patients_only_on_request(open_page):
    at = open_page("due")
    assert not at.exception
    before = set(at.dataframe[0].value["why"])
    assert "no longer in active care" not in before
    at.toggle(key="due_inactive").set_value(True).run()
    after = at.dataframe[0].value
    assert (after["why"] == "no longer in active care").any()
    # none of them has a due date, and none is called overdue
    gone = after[after["why"] == "no longer in active care"]
    assert gone["next_due_on"].isna().all()


def test_due_rows_fold_the_self_report_reason_into_why_and_keep_plain_headers(open_page):
    at = open_page("due")
    table = at.dataframe[0].value
    assert "self_report_reason" not in table.columns and "reasons" not in table.columns
    due_self = table[table["why"].str.contains("self-report due", regex=False)]
    assert len(due_self) and due_self["why"].str.contains(r"self-report due \(.+\)").all()
