"""Patient self-report by link: single use, expiry, hashed tokens, safety flags, audit."""
from __future__ import annotations

import subprocess
import sys
from datetime import date, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pandas as pd
import pytest

from analytics import audit, selfreport, store
from analytics.access import SYSTEM, AccessDenied, DataAccess, Scope

pytestmark = pytest.mark.usefixtures("backend")  # every test on a DuckDB file and on PostgreSQL

ROOT = Path(__file__).resolve().parent.parent
PHQ9_ITEM9_POSITIVE = {n: 1 for n in range(1, 10)}  # item 9 = 1
PHQ9_CALM = {**{n: 1 for n in range(1, 9)}, 9: 0}
GAD7 = {n: 2 for n in range(1, 8)}


def token_of(url: str) -> str:
    return parse_qs(urlparse(url).query)["token"][0]


@pytest.fixture()
def patient(writable_db) -> str:
    return DataAccess(writable_db).patients()["patient_id"].iloc[0]


def _actions(db) -> list[tuple[str, str]]:
    trail = audit.entries(db)
    return list(zip(trail["action"], trail["outcome"]))


def test_link_token_is_long_random_and_stored_only_as_its_hash(writable_db, patient):
    link = selfreport.create_link(writable_db, SYSTEM, patient, "PHQ-9, GAD-7")
    other = selfreport.create_link(writable_db, SYSTEM, patient, ["phq9"])
    token = token_of(link.url)
    assert len(token) >= 43 and token != token_of(other.url)  # 32 random bytes, base64url
    assert link.instruments == ("PHQ-9", "GAD-7") and other.instruments == ("PHQ-9",)
    with store.connect(writable_db) as con:
        stored = con.execute("SELECT token_sha256 FROM self_report_links WHERE link_id = ?", [link.link_id]).fetchall()[0][0]
        dump = str(con.execute("SELECT * FROM self_report_links").fetchall()) + str(con.execute("SELECT * FROM audit_log").fetchall())
    assert stored == selfreport.hash_token(token) and token not in dump
    created = audit.entries(writable_db, action="self_report_link").iloc[0]
    assert created["patients"] == [patient] and created["detail"]["instruments"] == ["PHQ-9", "GAD-7"]


def test_a_link_works_once_then_says_it_was_used(writable_db, patient):
    token = token_of(selfreport.create_link(writable_db, SYSTEM, patient, "PHQ-9,GAD-7").url)
    opened = selfreport.open_link(writable_db, token)
    assert opened.instruments == ("PHQ-9", "GAD-7") and not hasattr(opened, "patient_id")
    done = selfreport.submit(writable_db, token, {"PHQ-9": PHQ9_CALM, "GAD-7": GAD7})
    assert done.ok and not done.safety_flag and done.crisis_message is None
    stored = DataAccess(writable_db).assessments([patient])
    latest = stored[stored["rater"] == "self"].sort_values("administered_at").tail(2).set_index("instrument")
    assert latest.loc["PHQ-9", "total"] == 8 and latest.loc["GAD-7", "total"] == 14
    with pytest.raises(selfreport.LinkRefused, match="already been used") as again:
        selfreport.open_link(writable_db, token)
    assert again.value.reason == "used"
    with pytest.raises(selfreport.LinkRefused, match="already been used"):
        selfreport.submit(writable_db, token, {"PHQ-9": PHQ9_CALM, "GAD-7": GAD7})
    assert ("self_report_open", "ok") in _actions(writable_db)
    assert ("self_report_submit", "ok") in _actions(writable_db)
    assert ("self_report_open", "denied") in _actions(writable_db)


def test_expired_and_altered_tokens_are_refused_without_revealing_anything(writable_db, patient):
    old = selfreport.create_link(writable_db, SYSTEM, patient, "PHQ-9", hours=72,
                                 now=datetime.now() - timedelta(hours=73))
    fresh = token_of(selfreport.create_link(writable_db, SYSTEM, patient, "PHQ-9").url)
    altered = fresh[:-2] + ("AA" if not fresh.endswith("AA") else "BB")
    refusals = {}
    for name, token in (("expired", token_of(old.url)), ("altered", altered), ("empty", ""),
                        ("hostile", "' OR 1=1 --")):
        with pytest.raises(selfreport.LinkRefused) as refused:
            selfreport.open_link(writable_db, token)
        refusals[name] = refused.value
    assert refusals["expired"].reason == "expired"
    assert {refusals[n].reason for n in ("altered", "empty", "hostile")} == {"invalid"}
    for refusal in refusals.values():
        assert patient not in str(refusal) and "PHQ" not in str(refusal)
    denied = audit.entries(writable_db, action="self_report_open")
    assert (denied["outcome"] == "denied").sum() == 4
    assert [p for p in denied["patients"] if p] == [[patient]]  # only the real (expired) link names its patient
    assert selfreport.open_link(writable_db, fresh).instruments == ("PHQ-9",)  # altering one did not burn the real one


def test_positive_item_9_raises_a_flag_and_the_crisis_message_until_a_clinician_acknowledges(writable_db, patient, monkeypatch):
    token = token_of(selfreport.create_link(writable_db, SYSTEM, patient, "PHQ-9").url)
    done = selfreport.submit(writable_db, token, {"PHQ-9": PHQ9_ITEM9_POSITIVE})
    assert done.ok and done.safety_flag and "988" in done.crisis_message
    flags = selfreport.open_flags(writable_db, SYSTEM)
    assert flags["patient_id"].tolist() == [patient] and "item 9" in flags["reason"].iloc[0]
    director = Scope(user="boss", role="director", patient_level=False)
    with pytest.raises(AccessDenied):
        selfreport.acknowledge_flag(writable_db, director, flags["flag_id"].iloc[0])
    assert len(selfreport.open_flags(writable_db, SYSTEM)) == 1  # still there
    selfreport.acknowledge_flag(writable_db, SYSTEM, flags["flag_id"].iloc[0], note="phoned, safety plan reviewed")
    assert selfreport.open_flags(writable_db, SYSTEM).empty
    with pytest.raises(ValueError, match="already acknowledged"):
        selfreport.acknowledge_flag(writable_db, SYSTEM, flags["flag_id"].iloc[0])
    actions = [a for a, _ in _actions(writable_db)]
    for step in ("self_report_link", "self_report_submit", "safety_flag_raise", "safety_flag_ack"):
        assert step in actions
    monkeypatch.setenv("OUTCOMES_CRISIS_MESSAGE", "Call Samaritans on 116 123 (UK).")
    token = token_of(selfreport.create_link(writable_db, SYSTEM, patient, "PHQ-9").url)
    assert selfreport.submit(writable_db, token, {"PHQ-9": {**PHQ9_CALM, 9: 3}}).crisis_message == "Call Samaritans on 116 123 (UK)."
    assert audit.verify(writable_db).ok


def test_unanswered_or_out_of_range_answers_are_refused_and_the_link_stays_usable(writable_db, patient):
    token = token_of(selfreport.create_link(writable_db, SYSTEM, patient, "PHQ-9,GAD-7").url)
    before = len(DataAccess(writable_db).assessments([patient]))
    result = selfreport.submit(writable_db, token, {"PHQ-9": {**PHQ9_CALM, 4: None}, "GAD-7": {**GAD7, 2: 5}})
    assert not result.ok
    assert result.errors == {"PHQ-9 item_4": "please answer question 4",
                             "GAD-7 item_2": "GAD-7 item 2 must be a whole number 0-3, got 5"}
    assert len(DataAccess(writable_db).assessments([patient])) == before
    assert selfreport.submit(writable_db, token, {"PHQ-9": PHQ9_CALM, "GAD-7": GAD7}).ok


def test_only_self_rated_instruments_and_patients_in_the_caseload_get_links(writable_db, patient):
    with pytest.raises(ValueError, match="cannot be self-reported"):
        selfreport.create_link(writable_db, SYSTEM, patient, "MADRS")
    with pytest.raises(ValueError, match="expire"):
        selfreport.create_link(writable_db, SYSTEM, patient, "PHQ-9", hours=0)
    patients = DataAccess(writable_db).patients()
    other = patients[patients["patient_id"] != patient]
    clinician = Scope(user="dr_x", role="clinician", clinician="nobody-has-this")
    with pytest.raises(AccessDenied):
        selfreport.create_link(writable_db, clinician, other["patient_id"].iloc[0], "PHQ-9")


def test_self_report_due_weekly_and_the_day_before_an_infusion():
    patients = pd.DataFrame({"patient_id": ["recent", "stale", "never", "infusion_tomorrow"]})
    assessments = pd.DataFrame({
        "patient_id": ["recent", "stale", "infusion_tomorrow", "never"],
        "instrument": ["PHQ-9", "GAD-7", "PHQ-9", "MADRS"],
        "rater": ["self", "self", "self", "clinician"],
        "administered_at": pd.to_datetime(["2026-11-19", "2026-11-10", "2026-11-18", "2026-11-20"]),
    })
    nxt = pd.DataFrame({"patient_id": ["infusion_tomorrow", "recent"], "next_due_on": pd.to_datetime(["2026-11-22", "2026-12-20"])})
    due = selfreport.self_reports_due(patients, assessments, date(2026, 11, 21), nxt).set_index("patient_id")
    assert due["self_report_due"].to_dict() == {"recent": False, "stale": True, "never": True, "infusion_tomorrow": True}
    assert due.loc["never", "self_report_reason"] == "none yet"  # a clinician's MADRS is not a self-report
    assert due.loc["infusion_tomorrow", "self_report_reason"] == "infusion due tomorrow"
    weekly_off = selfreport.self_reports_due(patients, assessments, date(2026, 11, 21), nxt,
                                             selfreport.Cadence(every_days=None, before_infusion_days=1))
    assert weekly_off.set_index("patient_id")["self_report_due"].sum() == 1


class FakeMessenger:
    def __init__(self):
        self.sent: list[tuple[str, str]] = []

    def send(self, to: str, text: str) -> None:
        self.sent.append((to, text))


def test_messaging_is_off_by_default_and_an_adapter_gets_only_the_link(writable_db, patient):
    link = selfreport.create_link(writable_db, SYSTEM, patient, "PHQ-9")
    with pytest.raises(selfreport.MessagingOff):
        selfreport.send_link(writable_db, SYSTEM, None, "+15550100", link, patient)
    fake = FakeMessenger()
    selfreport.send_link(writable_db, SYSTEM, fake, "+15550100", link, patient)
    (to, text), = fake.sent
    assert to == "+15550100" and link.url in text and patient not in text
    sent = audit.entries(writable_db, action="self_report_send").iloc[0]
    assert sent["patients"] == [patient] and "+15550100" not in str(sent["detail"])


def test_qr_code_is_an_svg_of_the_link():
    a, b = selfreport.qr_svg("http://clinic/?token=a"), selfreport.qr_svg("http://clinic/?token=b")
    assert a.lstrip().startswith("<?xml") and "<svg" in a and a != b


def test_cli_link_create_prints_a_working_link(writable_db, patient):
    run = lambda *a: subprocess.run([sys.executable, "-m", "analytics", "link", "create", *a], cwd=ROOT,
                                    capture_output=True, text=True, timeout=120)
    ok = run("--patient", patient, "--instruments", "PHQ-9,GAD-7", "--db", str(writable_db),
             "--base-url", "https://clinic.example/", "--hours", "2")
    assert ok.returncode == 0, ok.stderr
    url = ok.stdout.strip()
    assert url.startswith("https://clinic.example/?token=")
    assert selfreport.open_link(writable_db, token_of(url)).instruments == ("PHQ-9", "GAD-7")
    bad = run("--patient", "NO-SUCH", "--instruments", "PHQ-9", "--db", str(writable_db))
    assert bad.returncode == 2 and "NO-SUCH" in bad.stderr and bad.stdout == ""


def test_due_columns_flag_a_patient_until_acknowledged_and_cadence_is_configurable(writable_db, patient, monkeypatch):
    token = token_of(selfreport.create_link(writable_db, SYSTEM, patient, "PHQ-9").url)
    selfreport.submit(writable_db, token, {"PHQ-9": PHQ9_ITEM9_POSITIVE})
    data = DataAccess(writable_db)
    today = date.today()
    columns = selfreport.due_columns(data.patients(), data.assessments(), data.safety_flags(), today)
    row = columns.set_index("patient_id").loc[patient]
    assert bool(row["safety_flag"]) and not bool(row["self_report_due"])  # a self-report arrived today
    assert columns["safety_flag"].sum() == 1
    selfreport.acknowledge_flag(writable_db, SYSTEM, data.safety_flags()["flag_id"].iloc[0])
    columns = selfreport.due_columns(data.patients(), data.assessments(), data.safety_flags(), today)
    assert columns["safety_flag"].sum() == 0
    monkeypatch.setenv("OUTCOMES_SELF_REPORT_EVERY_DAYS", "off")
    assert selfreport.Cadence.from_env() == selfreport.Cadence(None, 1)
    monkeypatch.setenv("OUTCOMES_SELF_REPORT_EVERY_DAYS", "fortnightly")
    with pytest.raises(ValueError, match="OUTCOMES_SELF_REPORT_EVERY_DAYS"):
        selfreport.Cadence.from_env()


def test_due_list_puts_a_flagged_patient_first_and_shows_whose_self_report_is_due():
    from analytics.screens import due

    patients = pd.DataFrame({"patient_id": ["calm", "flagged"]})
    treatments = pd.DataFrame({"patient_id": ["calm", "flagged"], "administered_at": pd.to_datetime(["2026-11-15"] * 2),
                               "route": "iv", "dose_mg_per_kg": 0.5, "phase": "induction", "has_time": False})
    assessments = pd.DataFrame({"patient_id": ["calm", "flagged"], "instrument": "PHQ-9", "rater": "self",
                                "administered_at": pd.to_datetime(["2026-11-01", "2026-11-20"]), "has_time": False,
                                "total": [6.0, 6.0], "item_9": [0.0, 0.0], "total_method": "items"})
    flags = pd.DataFrame({"flag_id": [1], "patient_id": ["flagged"], "raised_at": pd.to_datetime(["2026-11-20"]),
                          "acknowledged_at": [pd.NaT]})
    today = date(2026, 11, 21)
    extra = selfreport.due_columns(patients, assessments, flags, today, cadence=selfreport.Cadence(7, 1))
    listed = due.due_list(patients, treatments, assessments, today, no_score_days=60, self_report=extra)
    assert listed["patient_id"].tolist() == ["flagged", "calm"]
    assert listed.iloc[0]["reasons"].startswith("safety flag") and bool(listed.iloc[0]["safety_flag"])
    assert listed.iloc[1]["reasons"] == "self-report due" and listed.iloc[1]["self_report_reason"] == "none in 7 days"
    without = due.due_list(patients, treatments, assessments, today, no_score_days=60)
    assert without.empty  # the new reasons come only from the self-report columns


def test_dashboard_runs_only_the_questionnaire_for_a_token_without_sign_in(writable_db, patient, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("OUTCOMES_DB", str(writable_db))
    token = token_of(selfreport.create_link(writable_db, SYSTEM, patient, "GAD-7").url)
    at = AppTest.from_file(str(ROOT / "dashboard.py"), default_timeout=120)
    at.query_params["token"] = token
    at.run()
    assert not at.exception
    assert [t.value for t in at.title] == ["Questionnaire"] and len(at.radio) == 7
    assert not at.sidebar.button and not at.text_input  # no sign-in form, no navigation, no search
    plain = AppTest.from_file(str(ROOT / "dashboard.py"), default_timeout=120).run()
    assert not plain.radio and "Questionnaire" not in [t.value for t in plain.title]  # sign-in as usual


def test_due_columns_of_an_empty_caseload_are_empty():
    empty = pd.DataFrame({"patient_id": pd.Series([], dtype="str"), "instrument": pd.Series([], dtype="str"),
                          "rater": pd.Series([], dtype="str"), "administered_at": pd.Series([], dtype="datetime64[us]")})
    flags = pd.DataFrame(columns=["flag_id", "patient_id", "raised_at", "acknowledged_at"])
    out = selfreport.due_columns(empty[["patient_id"]], empty, flags, date(2026, 11, 21))
    assert out.empty and {"safety_flag", "self_report_due", "self_report_reason"} <= set(out.columns)
