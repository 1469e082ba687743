"""Printable summaries as PDF: a one-page patient summary and a cohort outcomes report for a board meeting.

Both are built from what the pages draw (screens.patient.PatientScreen, screens.cohort.CohortScreen), so a
PDF holds nothing its page would not show, under the same small-number rules: a director's report is
made of the same suppressed figures as the Cohort outcomes page. `*_content` gives each document's content
as data (what the tests check against the raw rows); `*_pdf` renders it.

Why fpdf2 and vector drawing: the PDF is written by fpdf2 (pure Python, on PyPI) and every chart is drawn
with its lines, rectangles and polygons, so a clinic's server needs neither a browser (plotly's image
export, kaleido, drives Chromium) nor a plotting library, and charts stay sharp when printed. The core PDF
fonts cover Latin-1 only, so text is written through `_latin1` (e.g. "≤" becomes "<=").
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

import numpy as np
import pandas as pd
from fpdf import FPDF

from . import scales
from .screens.method import glossary

GREY = (110, 110, 110)
BLUE = (60, 90, 200)
TEAL = (0, 140, 145)
RED = (200, 50, 50)
GREEN = (40, 150, 60)
PALETTE = [(99, 110, 250), (239, 85, 59), (0, 170, 130), (171, 99, 250), (255, 161, 90)]
BANDS = [(46, 160, 67), (160, 200, 60), (240, 180, 40), (240, 120, 40), (220, 50, 50)]  # mild to severe, as charts.py
_REPLACE = {"≤": "<=", "≥": ">=", "–": "-", "—": "-", "−": "-", "…": "...", "’": "'", "‘": "'", "“": '"', "”": '"',
            "→": "->", "×": "x", "√": "sqrt", "•": "-"}


def _latin1(text) -> str:
    text = str(text)
    for a, b in _REPLACE.items():
        text = text.replace(a, b)
    return text.encode("latin-1", "replace").decode("latin-1")


# --- a small vector plotting layer -----------------------------------------------------------

@dataclass
class _Axes:
    pdf: FPDF
    x: float
    y: float
    w: float
    h: float
    xlim: tuple
    ylim: tuple

    def px(self, v) -> float:
        x0, x1 = self.xlim
        return self.x + (float(v) - x0) / ((x1 - x0) or 1.0) * self.w

    def py(self, v) -> float:
        y0, y1 = self.ylim
        return self.y + self.h - (float(v) - y0) / ((y1 - y0) or 1.0) * self.h

    def frame(self, title: str, xlabel: str, ylabel: str, xticks: list, yticks: list) -> None:
        pdf = self.pdf
        pdf.set_font("Helvetica", "B", 8)
        pdf.set_text_color(0, 0, 0)
        pdf.set_xy(self.x - 10, self.y - 6)
        pdf.cell(self.w + 10, 4, _latin1(title))
        pdf.set_draw_color(160, 160, 160)
        pdf.set_line_width(0.2)
        pdf.line(self.x, self.y + self.h, self.x + self.w, self.y + self.h)
        pdf.line(self.x, self.y, self.x, self.y + self.h)
        pdf.set_font("Helvetica", "", 6)
        pdf.set_text_color(*GREY)
        for value, label in yticks:
            yy = self.py(value)
            pdf.set_draw_color(225, 225, 225)
            pdf.line(self.x, yy, self.x + self.w, yy)
            pdf.set_xy(self.x - 11, yy - 1.5)
            pdf.cell(10, 3, _latin1(label), align="R")
        for value, label in xticks:
            xx = self.px(value)
            pdf.set_draw_color(160, 160, 160)
            pdf.line(xx, self.y + self.h, xx, self.y + self.h + 1)
            pdf.set_xy(xx - 10, self.y + self.h + 1)
            pdf.cell(20, 3, _latin1(label), align="C")
        pdf.set_xy(self.x, self.y + self.h + 4)
        pdf.cell(self.w, 3, _latin1(xlabel), align="C")
        # text() at absolute coordinates: set_x reads a negative x (this label's left end, before the
        # rotation, lies left of the page) as counted from the right edge, which drew it off the page
        label = _latin1(ylabel)
        cx, cy = self.x - 12, self.y + self.h / 2
        with pdf.rotation(90, cx, cy):
            pdf.text(cx - pdf.get_string_width(label) / 2, cy + 1, label)

    def line(self, xs, ys, rgb, width: float = 0.5, dash: float = 0) -> None:
        points = [(self.px(a), self.py(b)) for a, b in zip(xs, ys) if np.isfinite(a) and np.isfinite(b)]
        if len(points) < 2:
            return
        self.pdf.set_draw_color(*rgb)
        self.pdf.set_line_width(width)
        self.pdf.set_dash_pattern(dash=dash, gap=dash)
        self.pdf.polyline(points)
        self.pdf.set_dash_pattern()

    def hline(self, value, rgb, label: str = "", dash: float = 1.0, right: bool = False) -> None:
        self.line([self.xlim[0], self.xlim[1]], [value, value], rgb, 0.3, dash)
        if label:
            self.pdf.set_font("Helvetica", "", 6)
            self.pdf.set_text_color(*rgb)
            self.pdf.set_xy(self.x + self.w - 41 if right else self.x + 1, self.py(value) - (0 if right else 3))
            self.pdf.cell(40, 3, _latin1(label), align="R" if right else "L")

    def band(self, xs, lo, hi, rgb, opacity: float = 0.18) -> None:
        top = [(self.px(a), self.py(b)) for a, b in zip(xs, hi)]
        bottom = [(self.px(a), self.py(b)) for a, b in zip(xs, lo)][::-1]
        if len(top) < 2:
            return
        self.pdf.set_fill_color(*rgb)
        with self.pdf.local_context(fill_opacity=opacity):
            self.pdf.polygon(top + bottom, style="F")

    def bar(self, x0, x1, y0, y1, rgb, opacity: float = 1.0, outline: bool = False) -> None:
        left, right = self.px(x0), self.px(x1)
        top, bottom = self.py(max(y0, y1)), self.py(min(y0, y1))
        self.pdf.set_fill_color(*rgb)
        self.pdf.set_draw_color(*rgb)
        self.pdf.set_line_width(0.2)
        with self.pdf.local_context(fill_opacity=opacity):
            self.pdf.rect(left, top, max(right - left, 0.1), max(bottom - top, 0.1), style="DF" if outline else "F")

    def point(self, xv, yv, rgb, radius: float = 1.0, label: str = "") -> None:
        self.pdf.set_fill_color(*rgb)
        self.pdf.circle(self.px(xv), self.py(yv), radius, style="F")
        if label:
            self.pdf.set_font("Helvetica", "", 6)
            self.pdf.set_text_color(0, 0, 0)
            self.pdf.set_xy(self.px(xv) - 15, self.py(yv) - 4.5)
            self.pdf.cell(30, 3, _latin1(label), align="C")

    def text(self, xv, yv, s: str, rgb=GREY, size: float = 6, align: str = "C") -> None:
        self.pdf.set_font("Helvetica", "", size)
        self.pdf.set_text_color(*rgb)
        self.pdf.set_xy(self.px(xv) - 10, self.py(yv) - 1.5)
        self.pdf.cell(20, 3, _latin1(s), align=align)


def _rgb(colour: str) -> tuple:
    text = str(colour).lstrip("#")
    try:
        return tuple(int(text[i:i + 2], 16) for i in (0, 2, 4))
    except ValueError:
        return BLUE


def _month_ticks(first: pd.Timestamp, last: pd.Timestamp, most: int = 8) -> list:
    months = pd.date_range(first.to_period("M").to_timestamp(), last, freq="MS")
    step = max(1, int(np.ceil(len(months) / most)))
    return [(m.toordinal(), f"{m:%b %y}") for m in months[::step]]


class _Document(FPDF):
    def __init__(self, title: str, subtitle: str, footer_note: str):
        super().__init__(orientation="P", unit="mm", format="A4")
        self.doc_title, self.subtitle, self.footer_note = title, subtitle, footer_note
        self.set_auto_page_break(True, margin=14)
        self.set_margins(16, 14, 16)
        self.set_title(_latin1(title))
        self.set_creator("ketamine clinic outcomes dashboard")
        self.add_page()

    def header(self):
        self.set_font("Helvetica", "B", 14)
        self.set_text_color(0, 0, 0)
        self.cell(0, 7, _latin1(self.doc_title), new_x="LMARGIN", new_y="NEXT")
        self.set_font("Helvetica", "", 8)
        self.set_text_color(*GREY)
        self.multi_cell(0, 3.6, _latin1(self.subtitle), new_x="LMARGIN", new_y="NEXT")
        self.ln(1)

    def footer(self):
        self.set_y(-11)
        self.set_font("Helvetica", "", 7)
        self.set_text_color(*GREY)
        self.cell(0, 4, _latin1(f"{self.footer_note}   Page {self.page_no()} of {{nb}}"), align="C")

    def heading(self, text: str) -> None:
        self.ln(1)
        self.set_font("Helvetica", "B", 10)
        self.set_text_color(0, 0, 0)
        self.cell(0, 5, _latin1(text), new_x="LMARGIN", new_y="NEXT")

    def para(self, text: str, size: float = 8, rgb=(0, 0, 0), style: str = "") -> None:
        self.set_font("Helvetica", style, size)
        self.set_text_color(*rgb)
        self.multi_cell(0, size * 0.45, _latin1(text), new_x="LMARGIN", new_y="NEXT")

    def grid(self, header: list, rows: list, widths: list, size: float = 7.5) -> None:
        self.set_draw_color(120, 120, 120)
        self.set_line_width(0.2)
        self.set_font("Helvetica", "B", size)
        self.set_text_color(0, 0, 0)
        self.set_fill_color(235, 238, 245)
        for text, width in zip(header, widths):
            self.cell(width, 4.6, _latin1(text), border="B", fill=True)
        self.ln(4.6)
        self.set_font("Helvetica", "", size)
        for row in rows:
            for text, width in zip(row, widths):
                self.cell(width, 4.2, _latin1(text), border="B")
            self.ln(4.2)

    def room(self, height: float) -> None:
        """Start a new page unless `height` mm still fit on this one."""
        if self.get_y() + height > self.h - 16:
            self.add_page()

    def bytes(self) -> bytes:
        self.alias_nb_pages()
        return bytes(self.output())


# --- the patient summary ---------------------------------------------------------------------

def patient_summary_content(screen, today: date) -> dict:
    """What the one-page patient summary holds, from screens.patient.patient_screen (the record as the page
    shows it, read once and audited there)."""
    info = screen.info
    latest = [] if screen.latest is None or screen.latest.empty else [
        {"instrument": r.instrument, "latest": f"{r.latest:g} / {r.max}", "on": f"{r.on:%d %b %Y}", "band": r.band,
         "baseline": "-" if r.baseline is None or pd.isna(r.baseline) else f"{r.baseline:g}",
         "change": "-" if r.change_percent is None or pd.isna(r.change_percent)
         else "no change" if round(float(r.change_percent)) == 0 else f"{r.change_percent:+.0f}%"}
        for r in screen.latest.itertuples()]
    t = screen.treatments.sort_values("administered_at") if len(screen.treatments) else screen.treatments
    infusions = [{"on": f"{w:%d %b %Y}", "phase": p if isinstance(p, str) and p else "phase not recorded",
                  "route": str(r).upper() if str(r) in ("iv", "im") else str(r),
                  "dose": f"{d:g} mg/kg" if pd.notna(d) else "dose not recorded"}
                 for w, p, r, d in zip(t.get("administered_at", []), t.get("phase", []), t.get("route", []),
                                       t.get("dose_mg_per_kg", []))]
    cycles = [] if screen.cycle_rows is None or screen.cycle_rows.empty else [
        {"cycle": str(r.cycle), "started": r.started, "length": r.length, "ended": r.ended}
        for r in screen.cycle_rows.itertuples()]
    series = {}
    a = screen.assessments
    for code in screen.thresholds:
        mine = a[(a["instrument"] == code) & a["total"].notna()].sort_values("administered_at")
        series[code] = {"at": list(mine["administered_at"]), "total": [float(v) for v in mine["total"]],
                        **screen.thresholds[code]}
    return {
        "patient_id": screen.patient_id, "today": today,
        "details": " - ".join(x for x in [f"site {info.get('site') or '-'}", f"clinician {info.get('clinician') or '-'}",
                                          info.get("diagnosis") or "diagnosis not recorded",
                                          (f"comorbidities: {str(info.get('comorbidities')).replace(';', ', ')}"
                                           if info.get("comorbidities") else "")] if x),
        "alerts": list(screen.alerts), "latest": latest, "infusions": infusions, "cycles": cycles,
        "series": series, "suggestion": screen.suggestion_text,
        "infusion_days": list(t["administered_at"]) if len(t) else [],
    }


FOOTNOTE_TOP = 297 - 22  # mm on A4: where the patient summary's footnote starts


def patient_summary_pdf(screen, today: date) -> bytes:
    """One A4 page for the chart or a referring psychiatrist: trajectory, latest scores, infusions, the suggested
    next infusion and the response cycles it rests on."""
    c = patient_summary_content(screen, today)
    doc = _Document(f"Patient summary: {c['patient_id']}",
                    f"{c['details']}. Prepared {today:%d %b %Y} from the outcomes dashboard.",
                    "Confidential: identifiable health information. For the patient's chart or their treating clinicians.")
    doc.set_auto_page_break(False)
    for alert in c["alerts"]:
        doc.set_fill_color(253, 236, 236)
        doc.set_text_color(*RED)
        doc.set_font("Helvetica", "B", 8)
        doc.multi_cell(0, 4, _latin1(alert), fill=True, new_x="LMARGIN", new_y="NEXT")
    doc.heading("Latest scores")
    if c["latest"]:
        doc.grid(["instrument", "latest", "on", "severity", "baseline", "change from baseline"],
                 [[r["instrument"], r["latest"], r["on"], r["band"], r["baseline"], r["change"]] for r in c["latest"]],
                 [24, 22, 26, 38, 20, 48])
    else:
        doc.para("No scores recorded yet.")
    doc.heading("Trajectory")
    _patient_chart(doc, c)
    doc.heading("Next infusion")
    doc.para(c["suggestion"])
    if c["cycles"]:
        doc.para("The response cycles it rests on (an infusion given in response, until response was lost):", 7.5, GREY)
        rows = c["cycles"][-6:]
        doc.grid(["cycle", "started", "length", "how it ended"], [[r["cycle"], r["started"], r["length"], r["ended"]]
                                                                   for r in rows], [16, 30, 24, 70], size=7)
        if len(c["cycles"]) > 6:
            doc.para(f"(the last 6 of {len(c['cycles'])} cycles)", 7, GREY)
    doc.heading(f"Infusions ({len(c['infusions'])})")
    # as many of the most recent as fit above the footnote (alerts and a long suggestion leave fewer rows)
    fit = int((FOOTNOTE_TOP - doc.get_y() - 4.6 - 4) // 4.2)
    recent = c["infusions"][-max(1, min(8, fit)):][::-1]
    if recent:
        doc.grid(["date", "phase", "route", "dose"], [[r["on"], r["phase"], r["route"], r["dose"]] for r in recent],
                 [30, 40, 30, 40], size=7)
        if len(c["infusions"]) > len(recent):
            doc.para(f"(the {len(recent)} most recent; the first on {c['infusions'][0]['on']})", 7, GREY)
    else:
        doc.para("No infusions recorded.")
    doc.set_y(FOOTNOTE_TOP)
    doc.para("Response: at least 50% below baseline (the last score up to 30 days before the first infusion). "
             "Remission and severity bands as published for each scale. The suggested interval is when the chance "
             "of still being in response is expected to fall to the target, from this patient's cycles and the "
             "clinic's; it supports, never replaces, clinical judgement.", 6.5, GREY)
    return doc.bytes()


def _patient_chart(doc: _Document, c: dict) -> None:
    series = c["series"]
    if not series:
        doc.para("No scores to chart.")
        return
    every = [d for s in series.values() for d in s["at"]] + list(c["infusion_days"])
    first, last = min(every), max(every)
    pad = max((last - first).days * 0.02, 2)
    xlim = (first.toordinal() - pad, last.toordinal() + pad)
    panel_h = {1: 44, 2: 30}.get(len(series), 22)
    for i, (code, s) in enumerate(series.items()):
        doc.room(panel_h + 14)
        top = doc.get_y() + 7
        ax = _Axes(doc, doc.l_margin + 16, top, doc.w - doc.l_margin - doc.r_margin - 18, panel_h, xlim, (0, s["max"]))
        ticks = [(v, f"{v:g}") for v in np.linspace(0, s["max"], 4).round()]
        ax.frame(f"{code} (points; lower is better)", "date" if i == len(series) - 1 else "",
                 code, _month_ticks(first, last) if i == len(series) - 1 else [], ticks)
        for k, (low, high, label) in enumerate(s["bands"]):
            ax.bar(xlim[0], xlim[1], max(low - 0.5, 0), high + 0.5, BANDS[round(k * (len(BANDS) - 1) / max(len(s["bands"]) - 1, 1))], 0.12)
        if s.get("baseline") is not None:
            ax.hline(s["baseline"], GREY, f"baseline {s['baseline']:g}")
            ax.hline(s["response_at_or_below"], GREEN, f"response <= {s['response_at_or_below']:g}")
        ax.hline(s["remission_cut"], TEAL, f"remission {'<=' if s['remission_inclusive'] else '<'} {s['remission_cut']:g}",
                 right=True)
        xs = [d.toordinal() for d in s["at"]]
        colour = _rgb(scales.get(code).colour)
        ax.line(xs, s["total"], colour, 0.6)
        for xv, yv in zip(xs, s["total"]):
            ax.point(xv, yv, colour, 0.55)
        for d in c["infusion_days"]:  # infusions along the bottom of each panel
            ax.bar(d.toordinal() - 0.4, d.toordinal() + 0.4, 0, s["max"] * 0.04, RED, 0.8)
        doc.set_y(top + panel_h + (9 if i == len(series) - 1 else 2))
    doc.para("Red ticks along the bottom: infusions. Shaded: severity bands.", 6.5, GREY)


# --- the cohort report ----------------------------------------------------------------------

@dataclass
class CohortReport:
    """The cohort report's content: every figure as the page shows it (already under the small-number rules)."""
    title: str
    selection: str
    rules: str
    refused: str | None
    headline: list = field(default_factory=list)  # (figure, value, how)
    durability: dict = field(default_factory=dict)  # screen.durability_curve()
    funnel: dict = field(default_factory=dict)  # screen.funnel("site", "responded")
    completeness: pd.DataFrame = field(default_factory=pd.DataFrame)
    completeness_overall: str | None = None
    completeness_hidden: int = 0
    definitions: tuple = ()


def cohort_report_content(screen, today: date, n_boot: int = 200) -> CohortReport:
    """The report of one cohort selection, from screens.cohort.cohort_screen (same rules as the page)."""
    k = screen.min_cell
    rules = (f"Small-number rules: no figure rests on fewer than {k} patients, and none could be worked out from "
             "another view by subtraction; such figures read '<11', 'not shown', a bound ('at least 90%') or are "
             "left out." if k else "Prepared for a role that may see every patient's figures: no small-number "
             "suppression applied.")
    report = CohortReport(f"Cohort outcomes report, {today:%d %B %Y}", screen.description, rules, screen.refused,
                          definitions=glossary(min_cell=k))
    if screen.refused:
        return report
    h = screen.headline
    month_note = " (month to date)" if h.get("month_to_date") else ""
    report.headline = [
        ("Treated patients", str(h["treated"]), "at least one infusion"),
        ("Evaluable for outcomes", str(h["evaluable"]), "baseline, and a score within 21 days of induction"),
        (f"Response ({screen.instrument})", h["response"].text(), "50% or more below baseline after induction"),
        (f"Remission ({screen.instrument})", h["remission"].text(),
         f"{screen.instrument} {'<=' if screen.remission_inclusive else '<'} {screen.remission_cut:g} after induction"),
        (f"Median durability ({screen.durability_instrument})",
         h["median_durability"] + (f" ({h['median_interval']})" if h.get("median_interval") else ""),
         "scores read as noisy measurements (model)" if h.get("median_source") == "measurement model" else
         "definitions read literally (Turnbull)"),
        *([("Median, definitions literal", h["median_definitions"],
            "sensitivity: definitions read literally")] if h.get("median_definitions") else []),
        ("Response cycles", f"{screen.cycle_counts.get('n_cycles')} ({screen.cycle_counts.get('n_losses')} ended in loss)",
         f"from {screen.cycle_counts.get('n_patients')} patients"),
        ("Active patients", str(h["active_patients"]), "an infusion or assessment in the last 90 days"),
        (f"Infusions in {h['month']}", f"{h['infusions_this_month']}{month_note}", ""),
    ]
    report.durability = screen.durability_curve(n_boot=n_boot)
    report.funnel = screen.funnel("site", "responded")
    report.completeness = screen.completeness
    report.completeness_overall = screen.completeness_overall
    report.completeness_hidden = screen.completeness_hidden
    return report


def cohort_report_pdf(screen, today: date, n_boot: int = 200) -> bytes:
    """The board report: headline rates with CIs, durability curve, funnel, completeness, definitions."""
    r = cohort_report_content(screen, today, n_boot)
    doc = _Document(r.title, f"Selection: {r.selection}. {r.rules}",
                    "Aggregate figures only: no patient is listed. Ketamine clinic outcomes dashboard.")
    if r.refused:
        doc.heading("Nothing can be shown for this selection")
        doc.para(f"{r.refused}. Widen the period or choose a larger group on the Cohort outcomes page.")
        return doc.bytes()
    doc.heading("Headline figures")
    doc.grid(["figure", "value", "how it is counted"], [list(row) for row in r.headline], [46, 66, 66], size=7.5)
    doc.para("Rates carry 95% Wilson score intervals (CI).", 7, GREY)
    doc.heading("How long response lasts")
    curves = r.durability.get("curves") or []
    if curves:
        _survival_chart(doc, curves)
        doc.para(r.durability.get("note", ""), 7, GREY)
    else:
        doc.para(f"No durability curve: {r.durability.get('note', 'no response cycles')}.")
    doc.room(80)
    doc.heading("Response by site against the clinic rate (funnel plot)")
    f = r.funnel
    if f.get("clinic_rate") is None or f["groups"].empty:
        doc.para(f"Not shown: {(f.get('note') or 'not enough evaluable patients').rstrip('.')}.")
    else:
        _funnel_chart(doc, f)
        if f.get("note"):
            doc.para(f["note"], 7, GREY)
    doc.room(70)
    doc.heading("Measurement completeness")
    if r.completeness.empty:
        doc.para("No month of this selection can be shown (too few infusions or patients in each).")
    else:
        _completeness_chart(doc, r.completeness)
    if r.completeness_overall:
        doc.para(f"Overall {r.completeness_overall} had an assessment in the 7 days before, the infusion day included.", 7.5)
    if r.completeness_hidden:
        doc.para(f"{r.completeness_hidden} month(s) with too few infusions or patients are left out.", 7, GREY)
    pale = []
    if "bound" in r.completeness and r.completeness["bound"].notna().any():
        pale.append("bounds (too few infusions of that month lacked, or had, an assessment to show the exact share)")
    if "partial" in r.completeness and r.completeness["partial"].any():
        pale.append("the month in progress")
    if pale:
        doc.para(f"Pale bars: {' and '.join(pale)}.", 7, GREY)
    doc.room(60)
    doc.heading("Definitions")
    doc.set_font("Helvetica", "", 7.5)
    doc.set_text_color(0, 0, 0)
    for term, meaning in r.definitions:
        doc.multi_cell(0, 3.6, f"**{_latin1(term)}**: {_latin1(meaning)}", markdown=True, new_x="LMARGIN", new_y="NEXT")
        doc.ln(0.6)
    return doc.bytes()


def _survival_chart(doc: _Document, curves: list) -> None:
    doc.room(75)
    top = doc.get_y() + 8
    end = max(float(c["end"]) for c in curves)
    ax = _Axes(doc, doc.l_margin + 16, top, doc.w - doc.l_margin - doc.r_margin - 20, 48, (0, end * 1.05), (0, 1.02))
    step = 7 if end <= 70 else 14 if end <= 140 else 28
    ax.frame("Still in response by days since the infusion that started the cycle", "days",
             "still in response", [(d, f"{d:g}") for d in np.arange(0, end + 1, step)],
             [(v, f"{100 * v:.0f}%") for v in (0, 0.25, 0.5, 0.75, 1.0)])
    ax.hline(0.5, GREY, "median")
    legend_y = top + 57
    for i, c in enumerate(curves):
        colour = PALETTE[i % len(PALETTE)]
        t = np.concatenate([[0.0], c["times"]])
        ax.band(t, np.concatenate([[1.0], c["lower"]]), np.concatenate([[1.0], c["upper"]]), colour)
        ax.line(t, np.concatenate([[1.0], c["survival"]]), colour, 0.7)
        doc.set_xy(doc.l_margin + 16, legend_y)
        doc.set_font("Helvetica", "", 7)
        doc.set_text_color(*colour)
        risk = ", ".join(f"day {d:g}: {n}" for d, n in (c.get("at_risk") or [])[:6])
        # a long label wraps inside the page instead of running past its edge
        doc.multi_cell(0, 3.5, _latin1(f"{c['label']} ({c['n']}); cycles still at risk - {risk}"),
                       new_x="LMARGIN", new_y="NEXT")
        legend_y = doc.get_y() + 0.5
    doc.set_y(legend_y + 0.5)


def _funnel_chart(doc: _Document, f: dict) -> None:
    g, lim, p0 = f["groups"], f["limits"], f["clinic_rate"]
    top = doc.get_y() + 8
    n_max = float(lim["n"].max()) if len(lim) else 10.0
    ax = _Axes(doc, doc.l_margin + 16, top, 120, 50, (0, n_max), (0, 1))
    ax.frame("Response rate by evaluable patients in the group", "evaluable patients (n)", "response rate",
             [(v, f"{v:.0f}") for v in np.linspace(0, n_max, 5)], [(v, f"{100 * v:.0f}%") for v in (0, .25, .5, .75, 1)])
    ax.line(lim["n"], lim["hi95"], GREY, 0.3, 0.8)
    ax.line(lim["n"], lim["lo95"], GREY, 0.3, 0.8)
    ax.line(lim["n"], lim["hi998"], GREY, 0.3, 0.3)
    ax.line(lim["n"], lim["lo998"], GREY, 0.3, 0.3)
    ax.hline(p0, (60, 60, 60), f"clinic rate {100 * p0:.0f}%", dash=0)
    for name, n, rate in zip(g.iloc[:, 0], g["n"], g["rate"]):
        ax.point(n, rate, BLUE, 1.1, f"{name} ({100 * rate:.0f}%)")
    doc.set_y(top + 58)
    doc.para("Dashed: 95% limits; dotted: 99.8% limits around the clinic rate. A point outside the funnel differs "
             "from the clinic rate by more than chance would explain for a group of that size.", 7, GREY)


def _completeness_chart(doc: _Document, comp: pd.DataFrame) -> None:
    top = doc.get_y() + 8
    months = pd.to_datetime(comp["month"])
    first, last = months.min(), months.max() + pd.offsets.MonthEnd(0)
    ax = _Axes(doc, doc.l_margin + 16, top, doc.w - doc.l_margin - doc.r_margin - 20, 36,
               (first.toordinal() - 3, last.toordinal() + 3), (0, 1.05))
    ax.frame("Infusions with an assessment in the 7 days before", "month", "share",
             _month_ticks(first, last), [(v, f"{100 * v:.0f}%") for v in (0, .5, 1)])
    for m, share, bound, partial in zip(months, comp["share"], comp.get("bound", [None] * len(comp)),
                                        comp.get("partial", [False] * len(comp))):
        if pd.isna(share):
            continue
        start, end = m.toordinal() + 2, (m + pd.offsets.MonthEnd(0)).toordinal() - 2
        ax.bar(start, end, 0, share, TEAL, 0.35 if (isinstance(bound, str) or partial) else 1.0, outline=True)
    doc.set_y(top + 44)
    if comp.get("bound") is not None and comp["bound"].notna().any():
        doc.para("Pale bars are bounds ('at least'): fewer than the minimum number of infusions lacked an "
                 "assessment, so the exact share is not shown.", 7, GREY)
