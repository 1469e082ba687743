"""The patient CSV is built when the download button is clicked (not on every view of the
record): in real Chromium the file still arrives, holds only that patient, and is audited."""
import io

import pandas as pd

from tests.test_browser import IDLE, _settle, _sign_in, _user_for, browser, page  # noqa: F401 (fixtures)


def test_the_patient_csv_downloads_on_click_with_only_that_patient_and_is_audited(
        page, streamlit_server, server_db, monkeypatch):  # noqa: F811
    from analytics import audit

    monkeypatch.setenv("OUTCOMES_DB", str(server_db))
    user = _user_for("clinician", "P00003")
    exports_before = len(audit.entries(server_db, action="export", actor=user))
    page.goto(f"{streamlit_server}/patient?patient=P00003")
    _sign_in(page, user)
    _settle(page, "Patient trajectory")
    with page.expect_download(timeout=120_000) as started:
        page.get_by_role("button", name="Download this patient's data (CSV)").click()
    download = started.value
    assert download.suggested_filename == "P00003.csv"
    frame = pd.read_csv(io.StringIO(open(download.path(), encoding="utf-8").read()))
    assert len(frame) > 0 and set(frame["patient_id"]) == {"P00003"}
    page.wait_for_function(IDLE, timeout=120_000)
    for _ in range(60):  # the click's rerun writes the audit entry
        exports = audit.entries(server_db, action="export", actor=user)
        if len(exports) > exports_before:
            break
        page.wait_for_timeout(500)
    assert len(exports) == exports_before + 1 and exports.iloc[-1]["patients"] == ["P00003"]
