"""The printable summaries: each PDF rendered to PNG (pdftoppm) and read back (pdftotext).

The PNGs are written to test-output/ to be looked at."""
from __future__ import annotations

import re
import shutil
import subprocess
from datetime import date
from pathlib import Path

import pytest

from analytics import printable
from analytics.access import SYSTEM, DataAccess, Scope
from analytics.screens import cohort, patient
from analytics.screens.workspace import Workspace

TODAY = date(2026, 11, 21)
OUT = Path(__file__).resolve().parent.parent / "test-output"


def _poppler(tool: str) -> str:
    path = shutil.which(tool)
    if not path:
        pytest.fail(f"{tool} (poppler-utils) is needed to read the PDFs back: .ci/run installs it")
    return path


def _read(pdf: bytes, name: str) -> tuple[str, int, list[Path]]:
    """(text, pages, PNG files) of a PDF, the PNGs kept in test-output/."""
    OUT.mkdir(exist_ok=True)
    path = OUT / f"{name}.pdf"
    path.write_bytes(pdf)
    for old in OUT.glob(f"{name}-*.png"):
        old.unlink()
    subprocess.run([_poppler("pdftoppm"), "-r", "80", "-png", str(path), str(OUT / name)], check=True)
    text = subprocess.run([_poppler("pdftotext"), "-layout", str(path), "-"], capture_output=True, text=True,
                          check=True).stdout
    info = subprocess.run([_poppler("pdfinfo"), str(path)], capture_output=True, text=True, check=True).stdout
    pages = int(next(line.split()[-1] for line in info.splitlines() if line.startswith("Pages:")))
    assert not _beyond_the_edge(path), f"text runs past the page edge in {name}: {_beyond_the_edge(path)}"
    assert not _overlapping(path), f"text printed over other text in {name}: {_overlapping(path)}"
    return text, pages, sorted(OUT.glob(f"{name}-*.png"))


def _overlapping(path: Path) -> list[tuple[str, str]]:
    """Pairs of words whose boxes overlap by more than a third of the smaller one: unreadable when printed."""
    boxes = subprocess.run([_poppler("pdftotext"), "-bbox", str(path), "-"], capture_output=True, text=True,
                           check=True).stdout
    number = r'"(-?[\d.]+)"'
    out = []
    for page in re.finditer(r"<page [^>]*>(.*?)</page>", boxes, re.S):
        words = [(*(float(v) for v in m.groups()[:4]), m.group(5)) for m in
                 re.finditer(rf"<word xMin={number} yMin={number} xMax={number} yMax={number}>([^<]*)</word>",
                             page.group(1))]
        for i, (ax0, ay0, ax1, ay1, a) in enumerate(words):
            for bx0, by0, bx1, by1, b in words[i + 1:]:
                w, h = min(ax1, bx1) - max(ax0, bx0), min(ay1, by1) - max(ay0, by0)
                smaller = min((ax1 - ax0) * (ay1 - ay0), (bx1 - bx0) * (by1 - by0))
                if w > 0 and h > 0 and w * h > smaller / 3:
                    out.append((a, b))
    return out


def _beyond_the_edge(path: Path) -> list[str]:
    """Words whose box comes within 5 mm of a page's edge or crosses it: cut off when printed."""
    boxes = subprocess.run([_poppler("pdftotext"), "-bbox", str(path), "-"], capture_output=True, text=True,
                           check=True).stdout
    margin = 5 / 25.4 * 72  # points
    out = []
    number = r'"(-?[\d.]+)"'
    for page in re.finditer(rf'<page width={number} height={number}>(.*?)</page>', boxes, re.S):
        width, height = float(page.group(1)), float(page.group(2))
        for word in re.finditer(rf'<word xMin={number} yMin={number} xMax={number} yMax={number}>([^<]*)</word>',
                                page.group(3)):
            x0, y0, x1, y1 = (float(v) for v in word.groups()[:4])
            if x0 < margin or y0 < margin or x1 > width - margin or y1 > height - margin:
                out.append(word.group(5))
    return out


def test_patient_summary_is_one_page_with_the_trajectory_scores_infusions_and_suggestion(demo_db):
    ws = Workspace(DataAccess(demo_db, SYSTEM))
    screen = patient.patient_screen(ws, "P00003", TODAY)
    text, pages, pngs = _read(printable.patient_summary_pdf(screen, TODAY), "pdf-patient-summary")
    assert pages == 1 and len(pngs) == 1 and pngs[0].stat().st_size > 20_000  # a chart, not a blank page
    assert "Patient summary: P00003" in text
    for row in screen.latest.itertuples():  # the latest score of every instrument, with its date
        assert f"{row.latest:g} / {row.max}" in text and f"{row.on:%d %b %Y}" in text
    assert "Suggested next infusion" in text and screen.suggestion_text.split(",")[0].split(": ")[1] in text
    last = screen.treatments["administered_at"].max()
    assert f"{last:%d %b %Y}" in text  # the infusions, newest first
    assert f"Infusions ({len(screen.treatments)})" in text
    assert "Confidential" in text


def test_cohort_report_has_rates_with_cis_durability_funnel_completeness_and_definitions(demo_db):
    ws = Workspace(DataAccess(demo_db, SYSTEM))  # the operator: every figure, so the funnel is drawn too
    screen = cohort.cohort_screen(ws, cohort.Filters(), TODAY)
    text, pages, pngs = _read(printable.cohort_report_pdf(screen, TODAY, n_boot=50), "pdf-cohort-report")
    assert 1 <= pages <= 3 and all(p.stat().st_size > 10_000 for p in pngs)
    assert screen.headline["response"].text() in text and screen.headline["remission"].text() in text
    assert "95% CI" in text
    for heading in ("How long response lasts", "Response by site against the clinic rate", "Measurement completeness",
                    "Definitions"):
        assert heading in text
    assert "cycles still at risk" in text and "Turnbull" in text
    for axis in ("still in response", "response rate", "share"):  # the charts' y-axis labels, on the page
        assert re.search(rf"^\s*{axis}\s*$", text, re.M), axis
    # the headline's median durability is the page's (the measurement model, its interval), the literal beside it
    h = screen.headline
    assert h["median_source"] == "measurement model"
    flat = " ".join(text.split())
    assert f"{h['median_durability']} ({h['median_interval']})" in flat
    assert "definitions read literally" in flat and h["median_definitions"] in flat
    for site in screen.funnel("site")["groups"]["site"]:
        assert site in text  # each site's point is labelled
    assert "Overall" in text and "infusions had an assessment" in text
    assert screen.completeness["partial"].any() and "Pale bars: the month in progress" in text  # not a fall


def test_directors_report_of_a_refused_selection_says_so_and_holds_no_figure(demo_db):
    director = Scope(user="director", role="director", patient_level=False, identifiable=False, min_cell=11)
    ws = Workspace(DataAccess(demo_db, director))
    patients = DataAccess(demo_db).patients()
    screen = cohort.cohort_screen(ws, cohort.Filters(sites=(patients["site"].iloc[0],),
                                                     clinicians=(patients["clinician"].iloc[0],)), TODAY)
    text, pages, _ = _read(printable.cohort_report_pdf(screen, TODAY), "pdf-cohort-report-refused")
    assert pages == 1 and "Nothing can be shown for this selection" in text
    assert "Headline figures" not in text and "%" not in text.split("Nothing can be shown")[1]


def test_text_outside_latin1_is_written_readably():
    assert printable._latin1("PHQ-9 ≤ 4 – “mild” → ok") == 'PHQ-9 <= 4 - "mild" -> ok'
