"""The load client (tools/loadclient.py) drives real dashboard sessions over Streamlit's websocket.

Behaviour only: its users sign in through the form and see the pages a user sees, and it counts what
goes wrong. How fast the pages are is the benchmark's business (docs/performance.md), never asserted here.
"""
from __future__ import annotations

import duckdb
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

from conftest import BROWSER_PASSWORD
from tools.loadclient import Account, PageRun, StreamlitSession, run_load


def _accounts(server_db, clinician: str) -> list[Account]:
    with duckdb.connect(str(server_db), read_only=True) as con:
        ids = [r[0] for r in con.execute("SELECT patient_id FROM patients WHERE clinician = ? ORDER BY patient_id LIMIT 3",
                                         [clinician]).fetchall()]
    return [Account(clinician, BROWSER_PASSWORD, "clinician", tuple(ids)),
            Account("director", BROWSER_PASSWORD, "director")]


def test_two_users_sign_in_and_run_their_flows_without_errors(streamlit_server, server_db):
    with duckdb.connect(str(server_db), read_only=True) as con:
        clinician, = con.execute("SELECT min(clinician) FROM patients").fetchone()
        treated, = con.execute("SELECT count(DISTINCT patient_id) FROM treatments").fetchone()
    accounts = _accounts(server_db, clinician)
    seen: dict[str, list[PageRun]] = {}
    result = run_load(streamlit_server, 2, accounts, rounds=2, timeout_s=180,
                      on_run=lambda user, run, sample: seen.setdefault(run.page, []).append(run))

    assert result.errors == 0, result.summary()["error_samples"]
    # each user: the sign-in page, the sign-in itself, then its two-page flow twice
    assert result.runs == 2 * (2 + 2 * 2)
    assert {page: row["runs"] for page, row in result.per_page().items()} == {
        "login": 2, "sign-in": 2, "due": 2, "patient": 2, "cohort": 2, "durability": 2}
    assert all(s.seconds > 0 for s in result.samples)

    # what the users saw: the director's headline counts every treated patient of the demo clinic
    cohort = seen["cohort"][-1].text()
    assert f"{treated} treated patients" in cohort
    assert "Active patients" in cohort and "Response (PHQ-9)" in cohort
    # the clinician landed on their due list when signing in, and each patient page showed the patient asked for
    assert "Due list" in seen["sign-in"][0].text() or "Due list" in seen["sign-in"][1].text()
    shown = {line.split(" · ")[0] for run in seen["patient"] for line in run.text().splitlines() if " · site " in line}
    assert shown == set(accounts[0].patients[:2])
    assert all(f"clinician {clinician}" in run.text() for run in seen["patient"])


def test_a_refused_sign_in_is_counted_as_an_error(streamlit_server):
    result = run_load(streamlit_server, 1, [Account("nobody-here", "not the password at all", "director")],
                      rounds=1, timeout_s=180)
    assert result.errors == 1
    assert result.per_page()["sign-in"]["errors"] == 1
    assert "Sign-in failed" in result.summary()["error_samples"][0]


def test_an_unreachable_server_is_counted_as_an_error():
    result = run_load("http://127.0.0.1:9", 1, [Account("director", BROWSER_PASSWORD, "director")], rounds=1, timeout_s=5)
    assert result.errors == 1 and result.samples[0].page == "connect"


def test_an_exception_element_and_a_missing_page_are_seen():
    """The delta stream as the server sends it: an exception box, a page_not_found, the run's end."""
    session, run = StreamlitSession("http://127.0.0.1:1"), PageRun("cohort")
    msgs = []
    boom = ForwardMsg()
    boom.delta.new_element.exception.type = "StoreBusy"
    boom.delta.new_element.exception.message = "database is busy"
    boom.metadata.delta_path[:] = [0, 3]
    msgs.append(boom)
    missing = ForwardMsg()
    missing.page_not_found.page_name = "cohort"
    msgs.append(missing)
    early, final = ForwardMsg(), ForwardMsg()
    early.script_finished = ForwardMsg.FINISHED_EARLY_FOR_RERUN
    final.script_finished = ForwardMsg.FINISHED_SUCCESSFULLY
    assert [session._take(m, run) for m in [*msgs, early, final]] == [False, False, False, True]
    assert run.exceptions() == ["StoreBusy: database is busy"]
    assert run.page_not_found


def test_two_visitors_right_after_a_restart_both_get_the_sign_in_page(server_db, tmp_path):
    """The first runs in a fresh server process switch Streamlit out of its old pages/ mode with a rerun;
    that once broke the second of two simultaneous first visitors with an ImportError box."""
    from conftest import DEMO_TODAY, serve_dashboard

    accounts = [Account("director", BROWSER_PASSWORD, "director")]
    with serve_dashboard(server_db, tmp_path / "streamlit.log", env={"OUTCOMES_TODAY": DEMO_TODAY}) as url:
        result = run_load(url, 3, accounts, rounds=1, timeout_s=180)
    assert result.errors == 0, result.summary()["error_samples"]
    assert result.per_page()["login"]["runs"] == 3 and result.per_page()["cohort"]["runs"] == 3
