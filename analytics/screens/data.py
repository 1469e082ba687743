"""The data page (administrators): upload preview and import, import history, rejected rows,
data quality, and the export.

Uploads go through the same import as the command line (analytics.ingest): `preview_uploads`
reads them with the import's own sources and checks and writes nothing; `import_uploads`
imports them; `import_result` is the report as the page shows it. `data_screen(ws)` reads the
history and rejected rows (administrators only: the data layer refuses others, and the page
says so) and the quality counts. `export_zip(ws, page)` is the scope's store in the import
format, audited.
"""
from __future__ import annotations

import io
import tempfile
import zipfile
from dataclasses import dataclass

import pandas as pd

from .. import ingest, outcomes, scales, workdir
from ..access import AccessDenied
from ..export import export_csv
from .cohort import COMPLETENESS_DAYS, completeness
from .workspace import Workspace


def preview_uploads(paths, db=None) -> pd.DataFrame:
    """ingest.preview: one row per file and table kind, with the rows that would be rejected and why."""
    return ingest.preview(paths, db=db)


def upload_directory() -> tempfile.TemporaryDirectory:
    """Where uploads wait for the import: in the process's private work folder, removed afterwards,
    and by the next process when the server was killed (analytics/workdir.py)."""
    return tempfile.TemporaryDirectory(prefix="upload-", dir=workdir.work_dir())


def import_uploads(paths, db, user: str) -> ingest.ImportReport:
    return ingest.import_files(paths, db=db, user=user)


@dataclass(frozen=True, eq=False)
class ImportResult:
    exit_code: int  # 0 every row accepted, 1 some rejected, 2 nothing imported
    files: pd.DataFrame  # per file: rows, new, updated, unchanged, rejected, batch, refused
    rejects: pd.DataFrame  # file, line, column, reason
    messages: list
    warnings: tuple = ()  # e.g. committed, but the checkpoint after the commit failed (the rows are stored)


def import_result(report: ingest.ImportReport) -> ImportResult:
    files, rejects = report_tables(report)
    return ImportResult(report.exit_code, files, rejects, report.messages(), tuple(report.warnings))


@dataclass(frozen=True, eq=False)
class DataScreen:
    history: pd.DataFrame | None  # recent import batches; None when the scope may not see them
    history_refused: str | None
    rejected: pd.DataFrame | None  # quarantined rows; None when the scope may not see them
    rejected_refused: str | None
    quality: pd.DataFrame  # data_quality
    assessed_share: float | None  # infusions with an assessment in the COMPLETENESS_DAYS before
    completeness_days: int = COMPLETENESS_DAYS


def data_screen(ws: Workspace) -> DataScreen:
    try:
        history, history_refused = ws.data.import_history(), None
    except AccessDenied as exc:
        history, history_refused = None, str(exc)
    try:
        rejected, rejected_refused = ws.data.rejected_rows(), None
    except AccessDenied as exc:
        rejected, rejected_refused = None, str(exc)
    f = ws.frames()
    comp = completeness(f["treatments"], f["assessments"])
    share = comp["assessed"].sum() / comp["infusions"].sum() if len(comp) else None
    return DataScreen(history, history_refused, rejected, rejected_refused,
                      data_quality(f["patients"], f["treatments"], f["assessments"]), share)


def export_zip(ws: Workspace, page: str = "data") -> bytes:
    """The scope's whole store in the import format (analytics.export), as a zip of CSVs; audited."""
    buffer = io.BytesIO()
    with tempfile.TemporaryDirectory(prefix="outcomes-export-") as tmp:
        written = export_csv(tmp, db=ws.data.db, scope=ws.data.scope, page=page)
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, path in written.items():
                archive.write(path, arcname=f"{name}.csv")
    return buffer.getvalue()


def data_quality(patients: pd.DataFrame, treatments: pd.DataFrame, assessments: pd.DataFrame) -> pd.DataFrame:
    """Simple counts an administrator checks after an import."""
    first_inf = treatments.groupby("patient_id")["administered_at"].min()
    base = outcomes.baselines(treatments, assessments, scales.PRIMARY) if len(treatments) else pd.DataFrame(columns=["baseline_score"])
    rows = [
        ("patients", len(patients)),
        ("infusions", len(treatments)),
        ("assessments", len(assessments)),
        ("patients never infused", int((~patients["patient_id"].isin(first_inf.index)).sum())),
        ("infusions without a recorded phase", int(treatments["phase"].isna().sum() + (treatments["phase"] == "").sum())),
        ("infusions without a dose", int(treatments["dose_mg_per_kg"].isna().sum())),
        ("assessments with a prorated total", int((assessments["total_method"] == "prorated").sum())),
        ("assessments with a rater-given total", int((assessments["total_method"] == "given").sum())),
        (f"treated patients without a {scales.PRIMARY} baseline (30 days before the first infusion)",
         int(base["baseline_score"].isna().sum())),
    ]
    return pd.DataFrame(rows, columns=["check", "count"])


def report_tables(report) -> tuple[pd.DataFrame, pd.DataFrame]:
    """An ingest ImportReport as (per-file summary, rejected rows with reasons)."""
    files = pd.DataFrame([{
        "file": f.file, "kind": f.kind, "rows": f.rows_total, "new": f.rows_inserted, "updated": f.rows_updated,
        "unchanged": f.rows_unchanged, "rejected": f.rows_rejected, "batch": f.batch_id, "refused": f.refused or "",
    } for f in report.files])
    rejects = pd.DataFrame([r._asdict() for r in report.rejects], columns=["file", "line", "column", "reason"])
    return files, rejects
