"""Data (admin): upload CSVs through the same import as the command line, history, rejects, export, quality."""
import io
import tempfile
import zipfile
from pathlib import Path

import pandas as pd
import streamlit as st

from analytics import views
from analytics.access import AccessDenied, DataAccess
from pages import _session as session

st.title("Data")
scope = session.current_scope()

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


if uploads:
    from analytics import workdir  # the process's private folder: removed even if the server is killed

    with tempfile.TemporaryDirectory(prefix="upload-", dir=workdir.work_dir()) as tmp:
        paths = _write_uploads(uploads, Path(tmp))
        with st.spinner("Checking the files..."):
            from analytics import fhir  # FHIR JSON/NDJSON is previewed by its own reader, as import_files routes it

            fhir_paths = [p for p in paths if fhir.is_fhir_file(p)]
            fhir_rows = pd.DataFrame(fhir.preview(fhir_paths, db=session.db_file() if session.has_data() else None))
            if len(fhir_rows):  # shown by base name, like the CSV rows (the temporary folder means nothing)
                fhir_rows["file"] = fhir_rows["file"].map(lambda f: Path(str(f)).name)
            preview = pd.concat([views.preview_upload([p for p in paths if p not in fhir_paths]), fhir_rows],
                                ignore_index=True)
        st.markdown("**Before importing**: what the checks find (rows about unknown patients are found at import).")
        st.dataframe(preview.drop(columns=["rejects"]), hide_index=True, width="stretch")
        for row in preview.itertuples():
            if row.refused:
                st.error(row.refused)
            elif row.rejected:
                st.warning(f"{row.file}: {row.rejected} row(s) will be rejected:")
                st.dataframe(row.rejects, hide_index=True, width="stretch")
        if st.button("Import these files", type="primary", key="do_import"):
            from analytics.ingest import import_files

            with st.spinner("Importing..."):
                report = import_files(paths, db=session.db_file(), user=scope.user)
            st.session_state["last_import"] = report

report = st.session_state.get("last_import")
if report is not None:
    files, rejects = views.report_tables(report)
    st.markdown("**After importing**")
    if report.exit_code == 0:
        st.success("Every row was accepted.")
    elif report.exit_code == 1:
        st.warning(f"Imported, but {len(rejects)} row(s) were rejected and kept aside with their reason.")
    else:
        st.error("Nothing was imported. " + " ".join(report.messages()[:3]))
    for warning in report.warnings:  # e.g. the rows are stored but the disk filled up after the commit
        st.warning(warning)
    st.dataframe(files, hide_index=True, width="stretch")
    if len(rejects):
        st.dataframe(rejects, hide_index=True, width="stretch")

if not session.has_data():
    session.no_database_message()
    st.stop()

data = DataAccess(session.db_file(), scope)
history_tab, rejected_tab, quality_tab, export_tab = st.tabs(["Import history", "Rejected rows", "Data quality", "Export"])
with history_tab:
    try:
        history = data.import_history()
    except AccessDenied as exc:
        st.info(str(exc))
    else:
        if history.empty:
            st.info("No imports yet: upload CSV files above.")
        else:
            st.dataframe(history, hide_index=True, width="stretch")
with rejected_tab:
    try:
        rejected = data.rejected_rows()
    except AccessDenied as exc:
        st.info(str(exc))
    else:
        if rejected.empty:
            st.success("No rejected rows.")
        else:
            st.caption(f"{len(rejected)} rows kept aside; fix them in the source and import the file again.")
            st.dataframe(rejected, hide_index=True, width="stretch")
with quality_tab:
    f = session.frames(scope)
    st.dataframe(views.data_quality(f["patients"], f["treatments"], f["assessments"]), hide_index=True, width="stretch")
    comp = views.completeness(f["treatments"], f["assessments"])
    if len(comp):
        st.caption(f"Infusions with an assessment in the 7 days before: "
                   f"{100 * comp['assessed'].sum() / comp['infusions'].sum():.0f}%.")
with export_tab:
    st.caption("The whole store (your scope) in the import format, so it can be re-imported.")
    if st.button("Prepare export", key="prepare_export"):
        from analytics.export import export_csv

        with st.spinner("Exporting..."), tempfile.TemporaryDirectory(prefix="outcomes-export-") as tmp:
            written = export_csv(tmp, db=session.db_file(), scope=scope, page="data")
            buffer = io.BytesIO()
            with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
                for name, path in written.items():
                    archive.write(path, arcname=f"{name}.csv")
        st.session_state["export_zip"] = buffer.getvalue()
    if "export_zip" in st.session_state:
        st.download_button("Download export (zip of CSVs)", st.session_state["export_zip"], file_name="outcomes-export.zip",
                           mime="application/zip", icon=":material/download:",
                           on_click=lambda: session.data_access(scope).log(  # every download is audited
                               "export", page="data", detail={"what": "export zip download"}))
