"""Small-number disclosure control for directors (issue 13, point 2), attacked the way a director could.

The attack of the review: two "first infusion between" ranges one day apart (9/12 -> 10/13 responded)
revealed that the one patient who started on that day responded. Here it is replayed on the demo clinic,
with variants (every period and group a director can choose, pairwise; two filters at once; the
complement; the whole cohort minus a group), and every chart's data is checked for small cells against
figures recomputed from the raw rows, not by the screen code.
"""
from __future__ import annotations

import itertools
import re
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest

from analytics import charts, printable, suppress
from analytics.access import SYSTEM, DataAccess, Scope
from analytics.screens import cohort, durability
from analytics.screens.workspace import Workspace

TODAY = date(2026, 11, 21)
K = 11
DIRECTOR = Scope(user="director", role="director", patient_level=False, identifiable=False, min_cell=K)


@pytest.fixture(scope="module")
def ws(demo_db):
    return Workspace(DataAccess(demo_db, DIRECTOR))


@pytest.fixture(scope="module")
def raw(demo_db):
    """The raw rows, read as the operator (the test's own view, not the director's)."""
    data = DataAccess(demo_db, SYSTEM)
    p, t, a = data.patients(), data.treatments(), data.assessments()
    first = t.groupby("patient_id")["administered_at"].min().dt.normalize()
    return {"patients": p, "treatments": t, "assessments": a, "first": first,
            "induction": {code: cohort.induction_outcomes(t, a, code) for code in ("PHQ-9", "MADRS")}}


# --- what a director can see --------------------------------------------------------------

def visible(screen: cohort.CohortScreen) -> dict:
    """Everything the cohort page (and its PDF) shows for a selection: numbers, texts and every chart's data."""
    if screen.refused:
        return {"refused": screen.refused}
    out = {"headline": {k: (v.text() if isinstance(v, cohort.Rate) else v) for k, v in screen.headline.items()
                        if k != "period"},
           "cycles": dict(screen.cycle_counts), "waterfall": screen.waterfall_bars.round(6).to_dict("list"),
           "trajectory": screen.trajectory.round(6).to_dict("list"),
           "severity": screen.severity.astype(object).where(screen.severity.notna(), None).to_dict(),
           "completeness": screen.completeness.astype(object).to_dict("list"), "overall": screen.completeness_overall}
    for by, outcome in itertools.product(("site", "clinician"), ("responded", "remitted")):
        f = screen.funnel(by, outcome)
        out[f"funnel {by} {outcome}"] = (f["groups"].round(6).to_dict("list"), f["clinic_rate"], f["note"])
    figures = [charts.waterfall(screen.waterfall_bars, screen.instrument, show_ids=screen.show_ids)
               if not screen.waterfall_bars.empty else None,
               charts.completeness(screen.completeness) if not screen.completeness.empty else None]
    out["chart text"] = [h for fig in figures if fig is not None for trace in fig.data for h in (trace.hovertext or ())]
    return out


def _selection(choices, subset: str = cohort.EVERY_PATIENT, period: tuple | None = None) -> cohort.Filters:
    labels = list(choices.periods["label"])
    first, last = (labels[0], labels[-1]) if period is None else (labels[period[0]], labels[period[1]])
    return cohort.chosen_filters("PHQ-9", subset, choices.periods, first, last)


# --- the review's attack, replayed --------------------------------------------------------

def _lone_start_days(raw) -> list[date]:
    """Days on which exactly one patient had their first infusion (the review used 2025-01-10)."""
    counts = raw["first"].dt.date.value_counts()
    return sorted(counts[counts == 1].index)


def test_two_date_ranges_one_day_apart_no_longer_single_out_a_patient(ws, raw):
    days = _lone_start_days(raw)
    assert days, "the demo clinic has days with a single first infusion (the attack needs one)"
    start = raw["first"].min().date()
    lone = next(d for d in days if d > start)
    before = cohort.cohort_screen(ws, cohort.Filters(start=start, end=lone - timedelta(days=1)), TODAY)
    after = cohort.cohort_screen(ws, cohort.Filters(start=start, end=lone), TODAY)
    # without the rules the two selections differ by exactly that patient ...
    ids_before = raw["first"][(raw["first"].dt.date >= start) & (raw["first"].dt.date < lone)].index
    ids_after = raw["first"][(raw["first"].dt.date >= start) & (raw["first"].dt.date <= lone)].index
    assert len(ids_after) - len(ids_before) == 1
    # ... with them, both snap to the same whole period and show exactly the same thing
    assert before.description == after.description
    assert visible(before) == visible(after)
    # filtered to that single day, the director gets the whole period holding it: never fewer than 11 patients
    alone = cohort.cohort_screen(ws, cohort.Filters(start=lone, end=lone), TODAY)
    assert alone.refused is None
    assert isinstance(alone.headline["treated"], int) and alone.headline["treated"] >= K
    bars = alone.waterfall_bars
    assert "patient_id" not in bars.columns and (bars["n"] >= K).all()


def test_numerators_and_their_complements_never_under_eleven(ws, raw):
    """'9/12' (3 did not respond) and the funnel's '<11/13 = 38%' (k = 5) are small cells too."""
    choices = cohort.cohort_choices(ws, "PHQ-9")
    induction = raw["induction"]["PHQ-9"].set_index("patient_id")
    for subset in choices.subsets:
        screen = cohort.cohort_screen(ws, _selection(choices, subset), TODAY)
        if screen.refused:
            continue
        ids = _patients_of(raw, choices, subset, None)
        ev = induction.loc[induction.index.intersection(ids)]
        ev = ev[ev["evaluable"]]
        for name, column in (("response", "responded"), ("remission", "remitted")):
            rate = screen.headline[name]
            if not rate.suppressed:
                k = int(ev[column].sum())
                assert rate.k == k and rate.n == len(ev), (subset, name)
                assert k >= K and len(ev) - k >= K, (subset, name, k, len(ev))
            else:
                assert rate.k is None and rate.n is None and "not shown" in rate.text()
        for by, column in itertools.product(("site", "clinician"), ("responded", "remitted")):
            f = screen.funnel(by, column)
            for label, n, rate in zip(f["groups"][by], f["groups"]["n"], f["groups"]["rate"]):
                members = _members(choices, by, label)
                group = ev[raw["patients"].set_index("patient_id").loc[ev.index, by].isin(members).to_numpy()]
                k = int(group[column].sum())
                assert n == len(group) and k >= K and len(group) - k >= K, (by, label, k, len(group))
            hover = " ".join(h for tr in charts.funnel(f, by, "response").data for h in (tr.hovertext or ())) \
                if len(f["groups"]) else ""
            assert "<11/" not in hover and not re.search(r"\b\d+/\d+\b", hover)


def test_two_filters_at_once_and_the_complement_of_a_group_are_refused(ws, raw):
    """Combinations are the raw material of differencing: 'site A and clinician B', 'all sites but one',
    a group over a part of the period."""
    p = raw["patients"]
    sites = sorted(p["site"].unique())
    choices = cohort.cohort_choices(ws, "PHQ-9")
    two = cohort.cohort_screen(ws, cohort.Filters(sites=(sites[0],), clinicians=(p["clinician"].iloc[0],)), TODAY)
    all_but_one = cohort.cohort_screen(ws, cohort.Filters(sites=tuple(sites[1:])), TODAY)
    part = cohort.cohort_screen(ws, _selection(choices, f"site: {choices.options['sites'][0]}", (1, len(choices.periods) - 1)), TODAY)
    for screen in (two, all_but_one, part):
        assert screen.refused and "one at a time" in screen.refused
        assert visible(screen) == {"refused": screen.refused}


def _members(choices, dim: str, label: str) -> list[str]:
    """A pooled choice's raw values ("dr_osei + dr_tanaka"), read from its label."""
    return label.split(" + ")


def _patients_of(raw, choices, subset: str, period: tuple | None) -> pd.Index:
    """A selection's patients recomputed from the raw rows (pooled labels split into their values)."""
    p = raw["patients"].set_index("patient_id")
    keep = pd.Series(True, index=p.index)
    if subset != cohort.EVERY_PATIENT:
        dim, _, label = subset.partition(": ")
        members = _members(choices, dim, label)
        if dim in ("site", "clinician"):
            keep &= p[dim].isin(members)
        elif dim == "route":
            first = raw["treatments"].sort_values("administered_at").groupby("patient_id").head(1).set_index("patient_id")
            keep &= p.index.isin(first.index[first["route"].isin(members)])
        else:
            keep &= p["comorbidities"].fillna("").map(lambda s: bool(set(str(s).split(";")) & set(members))).astype(bool)
    if period is not None:
        lo, hi = choices.periods["first_day"].iloc[period[0]], choices.periods["last_day"].iloc[period[1]]
        started = raw["first"].dt.date
        keep &= p.index.isin(started.index[(started >= lo) & (started <= hi)])
    return p.index[keep.to_numpy()]


# --- every pair of selections a director can make --------------------------------------------

def _weeks(raw, ids, instrument="PHQ-9") -> dict:
    a = raw["assessments"]
    a = a[(a["instrument"] == instrument) & a["total"].notna() & a["patient_id"].isin(ids)]
    days = (a["administered_at"].dt.normalize() - a["patient_id"].map(raw["first"])).dt.days
    week = np.where(days <= 0, np.where(days >= -30, 0, -1), -(-days // 7))
    frame = pd.DataFrame({"week": week, "patient_id": a["patient_id"].to_numpy()})
    frame = frame[(frame["week"] >= 0) & (frame["week"] <= 26)]
    return {int(w): set(g["patient_id"]) for w, g in frame.groupby("week")}


def _patient_months(raw) -> pd.DataFrame:
    """One row per infusion: patient, month, and whether an assessment (any instrument) fell on its day or
    in the 7 days before, recomputed from the raw rows."""
    if "patient_months" not in raw:
        t = raw["treatments"]
        a = raw["assessments"]
        days = {pid: np.sort(g["administered_at"].dt.normalize().to_numpy()) for pid, g in a.groupby("patient_id")}
        rows = []
        for pid, when in zip(t["patient_id"], t["administered_at"].dt.normalize()):
            have = days.get(pid, np.array([], dtype="datetime64[us]"))
            before = have[have <= when.to_datetime64()]
            assessed = bool(len(before)) and (when.to_datetime64() - before[-1]) <= np.timedelta64(7, "D")
            rows.append((pid, when.to_period("M").to_timestamp(), assessed))
        raw["patient_months"] = pd.DataFrame(rows, columns=["patient_id", "month", "assessed"])
    return raw["patient_months"]


def _months(raw, ids) -> dict:
    """Per month: patients infused, patients with an infusion assessed within 7 days before, without."""
    pm = _patient_months(raw)
    pm = pm[pm["patient_id"].isin(ids)]
    out = {}
    for month, g in pm.groupby("month"):
        out[month] = {"infused": set(g["patient_id"]), "assessed": set(g.loc[g["assessed"], "patient_id"]),
                      "unassessed": set(g.loc[~g["assessed"], "patient_id"])}
    return out


def _shown_populations(screen, raw, ids, instrument="PHQ-9") -> dict:
    """Figure -> the raw patients behind it, for every figure the screen shows."""
    ind = raw["induction"][instrument]
    ind = ind[ind["patient_id"].isin(ids)]
    ev = ind[ind["evaluable"]]
    pops = {}
    h = screen.headline
    if isinstance(h["treated"], int):
        pops["treated"] = set(ind["patient_id"])
    if isinstance(h["evaluable"], int):
        pops["evaluable"] = set(ev["patient_id"])
    for name, column in (("response", "responded"), ("remission", "remitted")):
        if not h[name].suppressed:
            pops[name] = set(ev.loc[ev[column], "patient_id"])
            pops[f"no {name}"] = set(ev.loc[~ev[column], "patient_id"])
    if not screen.waterfall_bars.empty:
        pops["waterfall"] = set(ind.loc[ind["best_percent_change"].notna() & (ind["baseline_score"] >= 1), "patient_id"])
    for (row, col), value in screen.severity.stack(future_stack=True).items():
        if pd.notna(value):
            pops[f"severity {row} -> {col}"] = set(ind.loc[(ind["baseline_band"] == row) & (ind["latest_band"] == col), "patient_id"])
    weeks = _weeks(raw, ids, instrument)
    for week in screen.trajectory["week"]:
        pops[f"week {int(week)}"] = weeks.get(int(week), set())
    months = _months(raw, ids)
    for month, bound in zip(screen.completeness["month"], screen.completeness["bound"]):
        entry = months.get(pd.Timestamp(month), {"infused": set(), "assessed": set(), "unassessed": set()})
        pops[f"infused {month:%Y-%m}"] = entry["infused"]
        if bound is None or pd.isna(bound):
            pops[f"assessed {month:%Y-%m}"] = entry["assessed"]
            pops[f"unassessed {month:%Y-%m}"] = entry["unassessed"]
    return pops


def test_no_two_selections_a_director_can_make_differ_by_fewer_than_eleven_patients(ws, raw):
    """Every group over the whole period and every period range for every patient, pairwise: wherever both
    selections show a figure, the patients behind it differ by none or by at least 11 (recomputed from the
    raw rows). This is what stops subtraction: 'the whole cohort minus a group', 'one range minus another'."""
    choices = cohort.cohort_choices(ws, "PHQ-9")
    blocks = len(choices.periods)
    selections = [(s, None) for s in choices.subsets] + [(cohort.EVERY_PATIENT, (a, b)) for a in range(blocks)
                                                        for b in range(a, blocks) if (a, b) != (0, blocks - 1)]
    shown = {}
    for subset, period in selections:
        screen = cohort.cohort_screen(ws, _selection(choices, subset, period), TODAY)
        ids = _patients_of(raw, choices, subset, period)
        if screen.refused is None:
            shown[(subset, period)] = _shown_populations(screen, raw, ids)
    assert len(shown) > len(choices.subsets)  # the rules leave the director a useful page
    # each period block a director can choose holds at least 11 first infusions
    started = raw["first"].dt.date
    for lo, hi in zip(choices.periods["first_day"], choices.periods["last_day"]):
        assert ((started >= lo) & (started <= hi)).sum() >= K
    problems = []
    for (one, a), (other, b) in itertools.combinations(shown.items(), 2):
        for figure in a.keys() & b.keys():
            apart = len(a[figure] ^ b[figure])
            if 0 < apart < K:
                problems.append((one, other, figure, apart))
    assert not problems, problems[:5]
    # and every figure shown rests on at least 11 patients
    small = [(sel, fig, len(p)) for sel, pops in shown.items() for fig, p in pops.items() if len(p) < K]
    assert not small, small[:5]


# --- every chart's data, recomputed from the raw rows ----------------------------------------

def test_cohort_charts_hold_no_small_cell(ws, raw):
    screen = cohort.cohort_screen(ws, cohort.Filters(), TODAY)
    ind = raw["induction"]["PHQ-9"]
    # waterfall: groups of at least 11 consecutive patients, each drawn at the median of its raw values
    w = ind[ind["best_percent_change"].notna() & (ind["baseline_score"] >= 1)]
    values = np.sort(w["best_percent_change"].to_numpy())[::-1]
    bars = screen.waterfall_bars
    assert (bars["n"] >= K).all() and bars["n"].sum() == len(values) and not {"low", "high"} & set(bars.columns)
    for first, last, median in zip(bars["first_rank"], bars["last_rank"], bars["best_percent_change"]):
        assert median == pytest.approx(np.median(values[first - 1:last]))
    hover = " ".join(h for tr in charts.waterfall(bars, "PHQ-9", show_ids=False).data for h in tr.hovertext)
    assert not any(pid in hover for pid in raw["patients"]["patient_id"]) and "baseline" not in hover
    # trajectory: each week drawn holds at least 11 patients with a score that week
    weeks = _weeks(raw, raw["patients"]["patient_id"])
    for week, n in zip(screen.trajectory["week"], screen.trajectory["n"]):
        assert n == len(weeks[int(week)]) >= K
    # severity movement: each cell shown holds at least 11 patients, and no row or column hides exactly one
    table = pd.crosstab(ind["baseline_band"], ind["latest_band"])
    sev = screen.severity
    for (row, col), value in sev.stack(future_stack=True).items():
        if pd.notna(value):
            assert value == table.loc[row, col] >= K
    hidden = sev.isna() & (sev.index.to_series().map(lambda r: r in table.index).to_numpy()[:, None])
    for row in sev.index:
        if row in table.index and table.loc[row].sum():
            assert hidden.loc[row].sum() != 1, row
    for col in sev.columns:
        if col in table.columns and table[col].sum():
            assert hidden[col].sum() != 1, col
    # completeness: each month drawn has 11+ infusions from 11+ patients; an exact share needs 11+ each way
    months = _months(raw, raw["patients"]["patient_id"])
    t = raw["treatments"]
    per_month = t.groupby(t["administered_at"].dt.to_period("M").dt.to_timestamp()).size()
    for row in screen.completeness.itertuples():
        entry = months[pd.Timestamp(row.month)]
        assert row.infusions == per_month[pd.Timestamp(row.month)] >= K and len(entry["infused"]) >= K
        if row.bound is None:
            assert len(entry["assessed"]) >= K and len(entry["unassessed"]) >= K
            assert row.assessed >= K and row.infusions - row.assessed >= K
        else:
            assert np.isnan(row.assessed)  # a bounded month carries no count
    text = " ".join(h for tr in charts.completeness(screen.completeness).data for h in tr.hovertext)
    assert not re.search(r"\b([0-9]|10) of \d+", text)


def test_a_screen_never_carries_a_suppressed_number(ws):
    """Suppressed figures are dropped, not just hidden by the page: a Rate withheld has no k or n."""
    choices = cohort.cohort_choices(ws, "MADRS")
    for subset in choices.subsets:
        screen = cohort.cohort_screen(ws, cohort.chosen_filters("MADRS", subset), TODAY)
        if screen.refused:
            continue
        for name in ("response", "remission"):
            rate = screen.headline[name]
            assert (rate.k is None) == rate.suppressed
            if rate.k is not None:
                assert rate.k >= K and rate.n - rate.k >= K


def _hover(fig) -> str:
    return " ".join(str(h) for tr in fig.data for h in (getattr(tr, "hovertext", None) or ()))


def test_durability_page_charts_hold_no_small_cell(ws, raw):
    cycles = ws.cycles("PHQ-9")
    for by in (None, "site", "clinician", "route", "has_anxiety", "sex"):
        screen = durability.durability_screen(ws, "PHQ-9", by, today=TODAY)
        keys = durability.group_keys(cycles, by) if by else None
        for curve in screen.curves:
            every = ("every cycle", durability.DEFINITIONS_LABEL)  # the model's headline and the literal sensitivity
            mine = cycles if by is None and curve["label"] in every else \
                cycles[cycles["post_induction"]] if by is None else \
                cycles[keys.map(lambda k: durability.group_label(by, k)) == curve["label"]]
            assert mine["patient_id"].nunique() >= K
            last_seen = mine.groupby("patient_id")["left_days"].max()
            previous = 0.0
            lost = mine[mine["event"]]
            for day in curve["times"]:
                assert (last_seen >= day).sum() >= K, (by, curve["label"], day)  # still followed
                if day > 0:
                    between = lost[(lost["right_days"] > previous) & (lost["right_days"] <= day)]
                    assert between["patient_id"].nunique() >= K, (by, curve["label"], day)  # each drop
                    previous = day
            assert curve["survival"].min() > 0  # never drawn down to 0% at the last loss
            assert all(n >= K for _, n in curve["at_risk"])
        for _, row in screen.table.iterrows():
            for column in ("cycles", "patients", "losses of response"):
                assert row[column] == "<11" or int(row[column]) >= K
        if by and screen.result.get("groups"):
            assert set(screen.result["groups"]) == set(durability.shown_groups(screen.result, cycles, by, K)) or \
                screen.hidden_groups == 0
            assert "p = 0.000" not in screen.title
    # infusions per patient-month: no month from fewer than 11 patients, the month in progress left out
    screen = durability.durability_screen(ws, "PHQ-9", None, today=TODAY)
    t = raw["treatments"]
    month = t["administered_at"].dt.to_period("M").dt.to_timestamp()
    patients = t.groupby(month)["patient_id"].nunique()
    maint = t[t["phase"] == "maintenance"].groupby(month)["patient_id"].nunique()
    other = t[t["phase"] != "maintenance"].groupby(month[t["phase"] != "maintenance"])["patient_id"].nunique()
    m = screen.monthly
    assert pd.Timestamp("2026-11-01") not in set(m["month"]) and m.attrs["partial"] == "November 2026"
    for row in m.itertuples():
        if pd.notna(row.per_patient):
            assert patients[row.month] >= K and row.patients == patients[row.month]
        if pd.notna(row.maintenance_per_patient):
            assert maint[row.month] >= K and other.get(row.month, 0) >= K
    hover = _hover(charts.infusions_per_month(m))
    assert not re.search(r"\b([0-9]|10) patients", hover)
    # suggested intervals: every bar 11+ patients, the blank ones together none or 11+
    suggested = ws.suggestions("PHQ-9", TODAY)["suggested_interval_days"].dropna()  # as of the screen's day
    bins = screen.interval_bins
    shown = bins.dropna(subset=["patients"])
    for row in shown.itertuples():
        n = int(((suggested >= row.start_day) & (suggested < row.end_day)).sum())
        assert n == row.patients >= K
    blank = len(suggested) - int(shown["patients"].sum())
    assert blank == 0 or blank >= K
    # forest plot: a yes/no or category term compares at least 11 patients with 11 without
    model = durability.model_screen(ws, "PHQ-9", ("baseline_score", "has_anxiety", "route", "sex"))
    for term in model.model.get("terms", []):
        label = durability._term_label(term)
        if label in set(model.rows["term"]) and term["covariate"] in ("has_anxiety", "route", "sex"):
            has = cycles[term["covariate"]].astype(str) == (str(term["level"]) if term["level"] is not None else "True")
            assert cycles.loc[has, "patient_id"].nunique() >= K and cycles.loc[~has, "patient_id"].nunique() >= K


def test_the_directors_cohort_pdf_holds_only_what_the_page_shows(ws, raw, tmp_path):
    """The board report under the same rules: its content is the screen's, its curve passes the same checks,
    and the text extracted from the PDF names no count under 11."""
    import shutil
    import subprocess

    screen = cohort.cohort_screen(ws, cohort.Filters(), TODAY)
    report = printable.cohort_report_content(screen, TODAY, n_boot=20)
    values = dict((name, value) for name, value, _ in report.headline)
    assert values["Treated patients"] == str(screen.headline["treated"])
    assert values["Response (PHQ-9)"] == screen.headline["response"].text()
    for curve in report.durability["curves"]:
        assert all(n >= K for _, n in curve["at_risk"])
    assert report.funnel["groups"].empty or (report.funnel["groups"]["n"] >= K).all()
    path = tmp_path / "report.pdf"
    path.write_bytes(printable.cohort_report_pdf(screen, TODAY, n_boot=20))
    if not shutil.which("pdftotext"):
        pytest.fail("pdftotext (poppler-utils) is needed to read the PDF back: .ci/run installs it")
    text = subprocess.run(["pdftotext", "-layout", str(path), "-"], capture_output=True, text=True, check=True).stdout
    assert "Cohort outcomes report" in text and screen.headline["response"].text().split(" (")[0] in text
    for number, unit in re.findall(r"\b(\d+) (patients|cycles|infusions)\b", text):
        assert int(number) >= K, (number, unit)
    assert not any(pid in text for pid in raw["patients"]["patient_id"])


def test_clinicians_and_the_operator_keep_raw_numbers(demo_db):
    """Patient-level roles are not suppressed: the operator's cohort page shows every patient's bar."""
    system = cohort.cohort_screen(Workspace(DataAccess(demo_db, SYSTEM)), cohort.Filters(), TODAY)
    assert system.min_cell == 0 and "patient_id" in system.waterfall_bars.columns
    assert suppress.count(3, 0) == 3
    assert not system.headline["response"].suppressed and system.headline["response"].k is not None
