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
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .. import auth, deidentify, ingest, outcomes, scales, workdir
from ..access import AccessDenied
from ..export import export_csv
from .cohort import COMPLETENESS_DAYS, completeness
from .workspace import Workspace


def preview_uploads(paths, db=None, *, raw_values: bool = False) -> pd.DataFrame:
    """ingest.preview: one row per file and table kind, with the rows that would be rejected and why
    (the reasons without the values they quote unless `raw_values`: a break-glass grant); `refused`
    is empty text for a file that was read, never None."""
    preview = ingest.preview(paths, db=db)
    preview["refused"] = preview["refused"].map(lambda reason: reason or "")
    if not raw_values:
        preview["rejects"] = [r.assign(reason=r["reason"].map(deidentify.redact_reason)) for r in preview["rejects"]]
    return preview


UPLOAD_PREFIX = "upload-"


def _as_uploaded(name):
    """A file uploaded on this page is named as uploaded, not by the temporary folder it waited in."""
    path = Path(str(name))
    return path.name if path.parent.name.startswith(UPLOAD_PREFIX) else name


def upload_directory() -> tempfile.TemporaryDirectory:
    """Where uploads wait for the import: in the process's private work folder, removed afterwards,
    and by the next process when the server was killed (analytics/workdir.py)."""
    return tempfile.TemporaryDirectory(prefix=UPLOAD_PREFIX, dir=workdir.work_dir())


def import_uploads(paths, db, user: str) -> ingest.ImportReport:
    return ingest.import_files(paths, db=db, user=user)


@dataclass(frozen=True, eq=False)
class ImportResult:
    exit_code: int  # 0 every row accepted, 1 some rejected, 2 nothing imported
    files: pd.DataFrame  # per file: rows, new, updated, unchanged, rejected, batch, refused
    rejects: pd.DataFrame  # file, line, column, reason
    messages: list
    warnings: tuple = ()  # e.g. committed, but the checkpoint after the commit failed (the rows are stored)


def import_result(report: ingest.ImportReport, *, raw_values: bool = False) -> ImportResult:
    """What the page shows after an upload: file names as uploaded, never the temporary folder they
    waited in; the reasons without the values they quote unless `raw_values`."""
    files, rejects = report_tables(report)
    folders = {str(Path(str(f.file)).parent) for f in report.files if Path(str(f.file)).parent != Path(".")}

    def uploaded(text: str) -> str:
        for folder in sorted(folders, key=len, reverse=True):
            text = text.replace(folder + os.sep, "")
        return text

    for frame in (files, rejects):
        if len(frame):
            frame["file"] = frame["file"].map(lambda name: Path(str(name)).name)
    messages = [uploaded(str(m)) for m in report.messages()]
    if not raw_values:
        rejects = rejects.assign(reason=rejects["reason"].map(deidentify.redact_reason))
        messages = [deidentify.redact_reason(m) for m in messages]
    return ImportResult(report.exit_code, files, rejects, messages, tuple(uploaded(str(w)) for w in report.warnings))


@dataclass(frozen=True, eq=False)
class DataScreen:
    history: pd.DataFrame | None  # recent import batches; None when the scope may not see them
    history_refused: str | None
    rejected: pd.DataFrame | None  # quarantined rows; None when the scope may not see them
    rejected_refused: str | None
    quality: pd.DataFrame  # data_quality
    assessed_share: float | None  # infusions with an assessment in the COMPLETENESS_DAYS before
    completeness_days: int = COMPLETENESS_DAYS
    # an administrator's live break-glass grant: rejected rows in full and the identifiable export
    break_glass: auth.BreakGlass | None = None

    @property
    def raw_values(self) -> bool:
        """Rejected rows with their raw text and the export identifiable (a break-glass grant)."""
        return self.break_glass is not None


def data_screen(ws: Workspace) -> DataScreen:
    grant = break_glass(ws)
    try:
        history, history_refused = ws.data.import_history(), None
    except AccessDenied as exc:
        history, history_refused = None, str(exc)
    try:
        rejected, rejected_refused = ws.data.rejected_rows(), None
    except AccessDenied as exc:
        rejected, rejected_refused = None, str(exc)
    if rejected is not None and grant is None:
        rejected = deidentify.redacted_rejects(rejected)
    for frame in (history, rejected):
        for column in ("file_name", "file"):
            if frame is not None and column in frame.columns:
                frame[column] = frame[column].map(_as_uploaded)
    f = ws.frames()
    comp = completeness(f["treatments"], f["assessments"])
    share = comp["assessed"].sum() / comp["infusions"].sum() if len(comp) else None
    return DataScreen(history, history_refused, rejected, rejected_refused,
                      data_quality(f["patients"], f["treatments"], f["assessments"]), share, break_glass=grant)


def break_glass(ws: Workspace) -> auth.BreakGlass | None:
    """The signed-in administrator's live break-glass grant (read fresh: it expires), or None."""
    return auth.active_break_glass(ws.data.db, ws.data.scope.user)


def log_rejected_view(ws: Workspace, screen: DataScreen) -> None:
    """Audit that quarantined rows were shown (once per distinct view: the page decides)."""
    if screen.rejected is None or screen.rejected.empty:
        return
    ws.data.log("view_rejected_rows", page="data",
                detail={"rows": len(screen.rejected), "raw_values": screen.raw_values,
                        **({"break_glass": screen.break_glass.grant_id} if screen.break_glass else {})})


def export_zip(ws: Workspace, page: str = "data") -> bytes:
    """The scope's whole store in the import format as a zip of CSVs, audited with every patient in it:
    de-identified (analytics/deidentify.py) unless the user holds a live break-glass grant, checked now."""
    grant = break_glass(ws)
    buffer = io.BytesIO()
    with tempfile.TemporaryDirectory(prefix="outcomes-export-") as tmp:
        if grant is not None:
            written = export_csv(tmp, db=ws.data.db, scope=ws.data.scope, page=page,
                                 detail={"break_glass": grant.grant_id, "reason": grant.reason})
        else:
            written = deidentify.export_csv(tmp, db=ws.data.db, scope=ws.data.scope, page=page)
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
