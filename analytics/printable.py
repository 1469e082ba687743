"""Printable summaries (PDF): a one-page patient summary and a cohort outcomes report."""
from __future__ import annotations


def cohort_report_pdf(screen, today) -> bytes:
    raise NotImplementedError


def patient_summary_pdf(screen, today) -> bytes:
    raise NotImplementedError
