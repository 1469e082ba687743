"""The patient CSV is built when the download button is clicked (not on every view of the
record): in real Chromium the file still arrives, holds only that patient, and is audited."""
import io

import pandas as pd

from fixtures import IDLE, open_signed_in
from tests.test_browser import _settle, _user_for


def test_the_patient_csv_downloads_on_click_with_only_that_patient_and_is_audited(browser, streamlit_server, server_db):
    from analytics import audit

    user = _user_for("clinician", "P00003", db=server_db)
    exports_before = len(audit.entries(server_db, action="export", actor=user))
    context, page = open_signed_in(browser, f"{streamlit_server}/patient?patient=P00003", user)
    try:
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
    finally:
        context.close()
