"""What an import did: a result per file (and table kind) with its rejected rows, and the exit code."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

MESSAGES_PER_FILE = 20


class Reject(NamedTuple):
    file: str
    line: int
    column: str | None
    reason: str


@dataclass
class FileResult:
    file: str
    kind: str | None
    rows_total: int = 0
    rows_inserted: int = 0
    rows_updated: int = 0
    rows_unchanged: int = 0
    rows_rejected: int = 0
    rejects: list[Reject] = field(default_factory=list)
    batch_id: int | None = None
    refused: str | None = None  # why the whole file was refused (then nothing at all was written)
    notes: list[str] = field(default_factory=list)
    # CSV: every physical line is the header, blank, or a line of a row (stored or rejected):
    # lines_total = 1 + lines_blank + rows_total + lines_continued (None for other sources).
    lines_total: int | None = None
    lines_blank: int | None = None
    lines_continued: int | None = None  # lines that continue a row (line breaks inside quoted values)

    @property
    def rows_accepted(self) -> int:
        return self.rows_inserted + self.rows_updated + self.rows_unchanged


@dataclass
class ImportReport:
    files: list[FileResult] = field(default_factory=list)
    error: str | None = None  # the transaction failed: nothing was written
    committed: bool = False  # the transaction committed: the rows counted as stored are in the database
    warnings: list[str] = field(default_factory=list)  # e.g. a step after the commit failed (the rows are stored)
    # demo accounts this import disabled: the first import of real data ends them (docs/security.md)
    demo_accounts_disabled: list[str] = field(default_factory=list)

    @property
    def rejects(self) -> list[Reject]:
        return [r for f in self.files for r in f.rejects]

    @property
    def batch_ids(self) -> list[int]:
        return [f.batch_id for f in self.files if f.batch_id is not None]

    @property
    def written(self) -> bool:
        return self.error is None and not any(f.refused for f in self.files)

    @property
    def exit_code(self) -> int:
        """0 every row accepted, 1 some rows rejected (good ones stored), 2 nothing imported.

        It says what is stored: a failure after the commit (a checkpoint on a full disk) does not
        change it, and is reported in `warnings` (3, an unexpected failure, is the import command's)."""
        if not self.written:
            return 2
        accepted = sum(f.rows_accepted for f in self.files)
        rejected = sum(f.rows_rejected for f in self.files)
        if rejected == 0:
            return 0
        return 1 if accepted else 2

    def messages(self, per_file: int = MESSAGES_PER_FILE) -> list[str]:
        """Human-readable lines: each rejected row as file:line: column: reason, then a summary."""
        out: list[str] = []
        if self.error:
            out.append(f"import failed, nothing was changed: {self.error}")
        for warning in self.warnings:
            out.append(f"warning: {warning}")
        for f in self.files:
            if f.refused:
                out.append(f"{f.refused}")
        for f in self.files:
            for note in f.notes:
                out.append(f"{f.file}: note: {note}")
            for r in f.rejects[:per_file]:
                out.append(f"{r.file}:{r.line}: {r.column or '(row)'}: {r.reason}")
            if len(f.rejects) > per_file:
                out.append(f"{f.file}: ... and {len(f.rejects) - per_file} more rejected rows "
                           "(all are kept in rejected_rows; `python -m analytics export DIR` writes rejected.csv)")
        if not self.written:
            if any(f.refused for f in self.files) and not self.error:
                out.append("nothing was imported: fix the file(s) above and run the same command again")
            return out
        for f in self.files:
            out.append(
                f"{f.file}: {f.kind}: {f.rows_total} rows, {f.rows_inserted} new, {f.rows_updated} updated, "
                f"{f.rows_unchanged} unchanged, {f.rows_rejected} rejected (batch {f.batch_id}){_lines_shown(f)}"
            )
        if self.demo_accounts_disabled:
            out.append(f"demo accounts disabled (this database now holds real data): {', '.join(self.demo_accounts_disabled)}")
        return out

    def to_dict(self, max_rejects: int = 1000) -> dict:
        files = []
        for f in self.files:
            files.append({
                "file": f.file, "kind": f.kind, "batch_id": f.batch_id, "refused": f.refused,
                "rows_total": f.rows_total, "rows_inserted": f.rows_inserted, "rows_updated": f.rows_updated,
                "rows_unchanged": f.rows_unchanged, "rows_rejected": f.rows_rejected, "notes": f.notes,
                "rejects": [r._asdict() for r in f.rejects[:max_rejects]],
                "rejects_truncated": len(f.rejects) > max_rejects,
                "lines_total": f.lines_total, "lines_blank": f.lines_blank, "lines_continued": f.lines_continued,
            })
        return {"exit_code": self.exit_code, "error": self.error, "files": files,
                "committed": self.committed, "warnings": list(self.warnings),
                "demo_accounts_disabled": list(self.demo_accounts_disabled)}


def _lines_shown(f: FileResult) -> str:
    """How the file's physical lines add up, so that rows and lines can be compared at a glance."""
    if f.lines_total is None:
        return ""
    parts = ["1 header"]
    if f.lines_blank:
        parts.append(f"{f.lines_blank} blank")
    parts.append(f"{f.rows_total} rows")
    if f.lines_continued:
        parts.append(f"{f.lines_continued} continuing a row (line breaks inside quoted values)")
    return f"; {f.lines_total} lines = " + " + ".join(parts)
