"""Data (admin): upload CSVs through the same import as the command line, history, rejects, export, quality."""
from pathlib import Path

import streamlit as st

from analytics.screens import data
from pages import _context
from pages._page import open_page
from pages._text import plain

page = open_page("data", "Data", needs_database=False)  # an upload creates the database

st.subheader("Import CSV files")
st.caption("Patients, treatments and assessments CSVs (the kind is recognised from the header). The same checks as "
           "`python -m analytics import`: good rows are stored, bad rows are kept aside with their reason, and a "
           "failed import changes nothing.")
uploads = st.file_uploader("CSV or FHIR files", type=["csv", "json", "ndjson"], accept_multiple_files=True, key="uploads",
                           help="FHIR R4 Bundles (.json) or bulk-export NDJSON are recognised by content (docs/fhir.md).")


def _write_uploads(files, directory: Path) -> list[Path]:
    paths = []
    for upload in files:
        # keep only the base name: an upload's name is user input, never a path
        path = directory / Path(upload.name).name
        path.write_bytes(upload.getvalue())
        paths.append(path)
    return paths


# Without a break-glass grant, rejected rows show their line, column and reason, never the values.
raw_values = _context.has_data() and data.break_glass(page.workspace) is not None

if uploads:
    with data.upload_directory() as tmp:
        paths = _write_uploads(uploads, Path(tmp))
        with st.spinner("Checking the files..."):
            preview = data.preview_uploads(paths, db=_context.db_file() if _context.has_data() else None,
                                           raw_values=raw_values)
        st.markdown("**Before importing**: what the checks find (rows about unknown patients are found at import).")
        st.dataframe(preview.drop(columns=["rejects"]), hide_index=True, width="stretch")
        for row in preview.itertuples():
            if row.refused:
                st.error(plain(row.refused))
            elif row.rejected:
                st.warning(f"{plain(row.file)}: {row.rejected} row(s) will be rejected:")
                st.dataframe(row.rejects, hide_index=True, width="stretch")
        if st.button("Import these files", type="primary", key="do_import"):
            with st.spinner("Importing..."):
                report = data.import_uploads(paths, db=_context.db_file(), user=page.scope.user)
            st.session_state["last_import"] = data.import_result(report, raw_values=raw_values)

result = st.session_state.get("last_import")
if result is not None:
    st.markdown("**After importing**")
    if result.exit_code == 0:
        st.success("Every row was accepted.")
    elif result.exit_code == 1:
        st.warning(f"Imported, but {len(result.rejects)} row(s) were rejected and kept aside with their reason.")
    else:
        st.error("Nothing was imported. " + plain(" ".join(result.messages[:3])))
    for warning in result.warnings:  # e.g. the rows are stored but the disk filled up after the commit
        st.warning(plain(warning))
    st.dataframe(result.files, hide_index=True, width="stretch")
    if len(result.rejects):
        st.dataframe(result.rejects, hide_index=True, width="stretch")

if not _context.has_data():
    _context.no_database_message()
    st.stop()

ws = page.workspace
screen = data.data_screen(ws)
if screen.break_glass is not None:
    st.warning(f"Break-glass grant until {screen.break_glass.expires_at:%d %b %Y %H:%M} UTC "
               f"({plain(screen.break_glass.reason)}): the export is identifiable and rejected rows show their raw "
               "text. Everything you take is in the audit trail.", icon=":material/emergency:")
view = (_context.db_version(), screen.raw_values)
if st.session_state.get("rejected_rows_viewed") != view:  # each distinct view of the quarantine is audited
    data.log_rejected_view(ws, screen)
    st.session_state["rejected_rows_viewed"] = view
history_tab, rejected_tab, quality_tab, export_tab = st.tabs(["Import history", "Rejected rows", "Data quality", "Export"])
with history_tab:
    if screen.history is None:
        st.info(plain(screen.history_refused))
    elif screen.history.empty:
        st.info("No imports yet: upload CSV files above.")
    else:
        st.dataframe(screen.history, hide_index=True, width="stretch")
with rejected_tab:
    if screen.rejected is None:
        st.info(plain(screen.rejected_refused))
    elif screen.rejected.empty:
        st.success("No rejected rows.")
    else:
        st.caption(f"{len(screen.rejected)} rows kept aside; fix them in the source and import the file again.")
        st.dataframe(screen.rejected, hide_index=True, width="stretch")
with quality_tab:
    st.dataframe(screen.quality, hide_index=True, width="stretch")
    if screen.assessed_share is not None:
        st.caption(f"Infusions with an assessment in the {screen.completeness_days} days before: "
                   f"{100 * screen.assessed_share:.0f}%.")
with export_tab:
    if screen.raw_values:
        st.caption("The whole store in the import format, identifiable (break-glass grant).")
    else:
        st.caption("The whole store in the import format, de-identified: a pseudonym for each patient, no birth year, "
                   "and each patient's dates moved back by a fixed number of days of their own (1-364), so intervals "
                   "hold but calendar dates do not (docs/security.md). Identifiable exports are taken at the command line.")
    # Built when clicked (a deferred download), audited with every patient in it, and never kept on the server.
    st.download_button("Download export (zip of CSVs)", lambda: data.export_zip(ws, page="data"),
                       file_name="outcomes-export.zip", mime="application/zip", icon=":material/download:",
                       on_click="ignore")
