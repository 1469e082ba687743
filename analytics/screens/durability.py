"""The durability and maintenance page (directors): how long response lasts, what goes with it,
and whether the clinic is tapering.

`durability_screen(ws, instrument, by)`: the cohort's durability curves (Turnbull with a
patient bootstrap, by subgroup with the interval-censored log-rank p), the distribution of
suggested intervals (binned here, small bins blank) and infusions per patient-month.
`model_screen(ws, instrument, covariates)`: time ratios of the interval-censored Weibull
model. `schedule_comparison()`: maintenance schedules compared on the simulator (no clinic
data). Results are built once per workspace.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import numpy as np
import pandas as pd

from .. import scales, schedules, suppress
from ..durability import cohort_durability, durability_model
from .workspace import Workspace, register_warmer

N_BOOT = 200
MODEL_TERM_CHOICES = ("baseline_score", "has_anxiety", "has_ptsd", "prior_failed_trials", "route", "sex")
DEFAULT_MODEL_TERMS = ("baseline_score", "has_anxiety", "prior_failed_trials")
AT_RISK_EVERY_DAYS = 28  # the curves' at-risk numbers, every four weeks
SCHEDULE_TARGETS = (0.75, 0.8)  # the README's comparison (0.75) and the default target of the suggestions (0.8)
DEFAULT_TARGET = 0.8


def instruments() -> tuple[str, ...]:
    """Durability of response is judged on the depression scales (PHQ-9, MADRS)."""
    return scales.measuring("depression")


def has_infusions(ws: Workspace) -> bool:
    return ws.once(("has_infusions",), lambda: not ws.frames()["treatments"].empty)


def format_p(p: float | None) -> str:
    """A p-value as a reader expects it: "p < 0.001" rather than "p = 0.000"."""
    if p is None or not np.isfinite(p):
        return "p not available"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}" if p < 0.01 else f"p = {p:.2f}"


@dataclass(frozen=True, eq=False)
class DurabilityScreen:
    instrument: str
    by: str | None
    min_cell: int
    result: dict | None  # cohort_durability(...) over the groups shown: None without response cycles
    curves: list  # survival_curves
    table: pd.DataFrame  # durability_table
    title: str
    method_note: str
    interval_bins: pd.DataFrame  # interval_distribution of the suggested intervals (empty: none yet)
    monthly: pd.DataFrame  # infusions_per_patient_month (the month in progress left out: monthly.attrs["partial"])
    hidden_groups: int = 0  # subgroups not shown (too few patients, or a complement)
    curve_note: str = ""  # where the curves stop, and why

    @property
    def has_cycles(self) -> bool:
        return bool(self.result and self.result.get("n_cycles"))

    @property
    def bins_blanked(self) -> bool:
        return bool(len(self.interval_bins) and self.interval_bins["patients"].isna().any())


def durability_screen(ws: Workspace, instrument: str, by: str | None = None, n_boot: int = N_BOOT,
                      today: date | None = None) -> DurabilityScreen:
    """Built once per workspace tables for the same instrument, subgroups, bootstrap size and day.
    `today`: the month in progress, and who is in active care for the distribution of suggested
    intervals (default: today)."""
    code = scales.get(instrument).code
    return ws.once(("durability_screen", code, by, n_boot, today), lambda: _durability_screen(ws, code, by, n_boot, today))


def _durability_screen(ws: Workspace, instrument: str, by: str | None, n_boot: int,
                       today: date | None) -> DurabilityScreen:
    code = scales.get(instrument).code
    min_cell = ws.data.scope.suppression_threshold  # groups under it are not shown
    cycles = ws.cycles(code)
    # the headline reads the scores through the whole clinic's measurement model (one fit per data
    # version, issue 12); the view's own cycles and patients decide what is summarised
    # the model given as a function: a fit from scratch (a new data version) runs beside the definitions' figures
    result = ws.once(("durability", code, by, n_boot),
                     lambda: cohort_durability(cycles, instrument=code, by=by, n_boot=n_boot,
                                               model=lambda: ws.clinic(code).model)) if len(cycles) else None
    curves, table, title, note, hidden, end_note = [], pd.DataFrame(), "", "", 0, ""
    if result is not None and result.get("n_cycles"):
        shown = shown_groups(result, cycles, by, min_cell)
        hidden = len(result.get("groups") or {}) - len(shown) if by else 0
        if by and hidden and len(shown) >= 1:
            # the comparison (and its test) over the groups shown only: a hidden group never enters a figure
            keep = cycles[group_keys(cycles, by).isin(shown)]
            result = ws.once(("durability", code, by, n_boot, tuple(sorted(shown))),
                             lambda: cohort_durability(keep, instrument=code, by=by, n_boot=n_boot,
                                                       model=ws.clinic(code).model))
        if by and not shown:
            result = {**result, "groups": {}, "logrank_p": None}
        curves = survival_curves(result, cycles, by, min_cell)
        table = durability_table(result, cycles, by, min_cell)
        end_note = curve_note(curves, min_cell)
        title = f"Still in response ({code}), by day"
        if by and result.get("logrank_p") is not None and len(result.get("groups") or {}) >= 2:
            title += f"<br><sup>groups compared: {format_p(result['logrank_p'])} (log-rank test)</sup>"
        note = ("How to read it: each curve is the share of response cycles still in response that many days after "
                "the infusion that started them. Loss of response is only known to lie between two assessments, so "
                "the curve is the Turnbull estimate (Kaplan-Meier for losses known to within an interval); the band "
                "is a 95% confidence interval from resampling patients"
                + (", and the p-value tests whether the groups' curves differ (interval-censored log-rank test)" if by else "")
                + ". " + _model_note(result) + _groups_note(result, by))
    suggested = ws.suggestions(scales.PRIMARY, today)["suggested_interval_days"].dropna()
    bins = interval_distribution(suggested, width=7 if min_cell else 3, min_cell=min_cell) if len(suggested) else pd.DataFrame()
    monthly = ws.once(("infusions_per_patient_month", today, min_cell),
                      lambda: infusions_per_patient_month(ws.frames()["treatments"], today=today, min_cell=min_cell))
    return DurabilityScreen(code, by, min_cell, result, curves, table, title, note, bins, monthly,
                            hidden_groups=hidden, curve_note=end_note)


def _model_note(result: dict) -> str:
    if result.get("estimate_source") != "measurement model":
        return ""
    return ("Except: " + ("the groups' curves" if result.get("groups") else '"every cycle"') + " read each cycle's "
            "scores as noisy measurements of a trend crossing the response line (the measurement model, which "
            "counts each patient once; see the Method page), because a score near the line crosses it by chance; "
            f'"{DEFINITIONS_LABEL}" is the Turnbull estimate of the same cycles, kept as a sensitivity analysis. ')


def _groups_note(result: dict, by: str | None) -> str:
    text = result.get("groups_note", "")
    if by and text:
        missing = text.split(" ")[0]
        return f"{missing} cycles without a recorded {SUBGROUPS.get(by, by)} are left out of the groups."
    return ""


@dataclass(frozen=True, eq=False)
class ModelScreen:
    model: dict  # durability_model(...)
    rows: pd.DataFrame  # forest_rows: the finite time ratios that may be shown
    min_cell: int = 0
    hidden_terms: tuple = ()  # terms left out: a group of fewer than min_cell patients

    @property
    def estimated(self) -> bool:
        return not self.rows.empty and self.model.get("converged", True)

    @property
    def problem(self) -> str:
        if self.hidden_terms and self.rows.empty:
            return f"every term compares a group of fewer than {self.min_cell} patients"
        return self.model.get("note", "the fit did not converge")

    @property
    def caption(self) -> str:
        m = self.model
        count = lambda n: suppress.count(n, self.min_cell)  # noqa: E731
        text = (f"Interval-censored Weibull model with patient-clustered confidence intervals. A time ratio above 1 "
                f"means response lasts longer. {count(m['n_cycles'])} cycles from {count(m['n_patients'])} patients, "
                f"{count(m['n_events'])} losses. Associations in this clinic's data, not causes.")
        if self.hidden_terms:
            text += (f" Not shown ({', '.join(self.hidden_terms)}): fewer than {self.min_cell} patients in a group, or "
                     "in the rest.")
        return text


def model_screen(ws: Workspace, instrument: str, covariates: tuple[str, ...]) -> ModelScreen:
    code = scales.get(instrument).code
    return ws.once(("model_screen", code, tuple(covariates)), lambda: _model_screen(ws, code, tuple(covariates)))


def _model_screen(ws: Workspace, code: str, covariates: tuple[str, ...]) -> ModelScreen:
    min_cell = ws.data.scope.suppression_threshold
    cycles = ws.cycles(code)
    model = ws.once(("durability_model", code, tuple(covariates)),
                    lambda: durability_model(cycles, list(covariates)))
    rows = forest_rows(model)
    hidden = []
    if min_cell and len(rows):
        keep = []
        for term in model.get("terms", []):
            label = _term_label(term)
            if label not in set(rows["term"]):
                continue
            if _term_groups_ok(cycles, term, min_cell):
                keep.append(label)
            else:
                hidden.append(label)
        rows = rows[rows["term"].isin(keep)].reset_index(drop=True)
    return ModelScreen(model, rows, min_cell, tuple(hidden))


def _term_groups_ok(cycles: pd.DataFrame, term: dict, min_cell: int) -> bool:
    """A yes/no or category term compares the patients with it to those without: both at least min_cell."""
    column = term.get("covariate")
    if column not in cycles:
        return True
    values = cycles[column]
    if term.get("level") is not None:
        has = values.astype(str) == str(term["level"])
    elif pd.api.types.is_bool_dtype(values):
        has = values.fillna(False).astype(bool)
    else:
        return cycles["patient_id"].nunique() >= min_cell  # a number: every patient's value informs it
    with_it = cycles.loc[has.to_numpy(), "patient_id"].nunique()
    without = cycles.loc[~has.to_numpy(), "patient_id"].nunique()
    return with_it >= min_cell and without >= min_cell


SUBGROUPS = {
    "site": "site", "clinician": "clinician", "route": "route of the starting infusion",
    "baseline_band": "baseline severity band", "has_anxiety": "comorbid anxiety", "has_ptsd": "comorbid PTSD",
    "sex": "sex", "phase": "phase of the starting infusion",
}
ROUTE_NAMES = {"iv": "IV", "im": "IM", "intranasal": "intranasal", "oral": "oral", "sublingual": "sublingual"}
SEX_NAMES = {"F": "female", "M": "male", "X": "another sex", "U": "sex not known"}


def group_label(by: str | None, key: str) -> str:
    """A subgroup's key ("True", "iv", "F") in words."""
    if by in ("has_anxiety", "has_ptsd"):
        what = SUBGROUPS[by]
        return f"with {what}" if key == "True" else f"without {what}" if key == "False" else key
    if by == "route":
        return ROUTE_NAMES.get(key, key)
    if by == "sex":
        return SEX_NAMES.get(key, key)
    return key


def group_keys(cycles: pd.DataFrame, by: str) -> pd.Series:
    """Each cycle's group key as cohort_durability names its groups (2.0 -> "2", True -> "True")."""
    def key(v):
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return None
        v = v.item() if hasattr(v, "item") else v
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        return str(v)
    return cycles[by].map(key)


def _curve_pairs(result: dict, cycles: pd.DataFrame, by: str | None) -> list[tuple[str, dict, pd.DataFrame]]:
    """(label, summary, that curve's cycles) for each curve of cohort_durability()."""
    if by and result.get("groups"):
        keys = group_keys(cycles, by)
        return [(group_label(by, key), summary, cycles[keys == key]) for key, summary in result["groups"].items()]
    post = cycles[cycles["post_induction"].fillna(False).astype(bool)] if "post_induction" in cycles else cycles.iloc[0:0]
    pairs = [("every cycle", result, cycles), ("first cycle after induction", result.get("post_induction", {}), post)]
    if result.get("definitions_survival"):
        pairs.append((DEFINITIONS_LABEL, _definitions(result), cycles))
    return pairs


DEFINITIONS_LABEL = "every cycle, definitions read literally (sensitivity)"


def _definitions(result: dict) -> dict:
    """The literal (definitions-based) figures of a cohort_durability result, as a summary."""
    return {**result, **{k[len("definitions_"):]: v for k, v in result.items() if k.startswith("definitions_")}}


def shown_groups(result: dict, cycles: pd.DataFrame, by: str | None, min_cell: int) -> list[str]:
    """The subgroup keys whose figures may be shown: patients, losses and cycles without a loss each at least
    `min_cell`, and no single hidden group that the whole minus the others would give back."""
    groups = result.get("groups") or {}
    if not by or not groups:
        return []
    keys = list(groups)
    table = pd.DataFrame({"losses": [groups[k]["n_events"] for k in keys],
                          "censored": [groups[k]["n_cycles"] - groups[k]["n_events"] for k in keys],
                          "patients": [groups[k]["n_patients"] for k in keys]}, index=keys)
    if min_cell <= 0:
        return keys
    hidden = suppress.mask(table, ["losses", "censored"], "patients", min_cell, row_totals=True, column_totals=True)
    return [k for k in keys if not hidden.loc[k].any()]


def observed_until(cycles: pd.DataFrame, min_cell: int) -> float | None:
    """The last day on which at least `min_cell` patients (1 for patient-level roles) had a cycle still seen in
    response: a curve stops there (beyond it the Turnbull estimate rests on fewer patients, and past the last
    such day it is not defined by the data at all)."""
    if cycles is None or cycles.empty:
        return None
    last = cycles.groupby("patient_id")["left_days"].max().sort_values(ascending=False).to_numpy(dtype=float)
    need = max(min_cell, 1)
    return float(last[need - 1]) if len(last) >= need else None


def survival_curves(result: dict, cycles: pd.DataFrame, by: str | None = None, min_cell: int = 0) -> list[dict]:
    """Curves for charts.survival from cohort_durability(): every group (or all cycles and post-induction).

    Each curve stops at `observed_until` (the last day `min_cell` patients, or one, were still seen in response:
    the estimate does not drop to 0% at the last loss). For roles without patient-level access a group of fewer
    than `min_cell` patients has no curve, and a step is drawn only once it holds the losses of at least
    `min_cell` patients (a drop of one patient's loss is a small number too). At-risk numbers: cycles still seen
    in response at each four-week mark."""
    out = []
    shown = set(shown_groups(result, cycles, by, min_cell)) if by and result.get("groups") else None
    for label, summary, mine in _curve_pairs(result, cycles, by):
        points = summary.get("survival") or []
        if not points or summary.get("n_patients", 0) < max(min_cell, 1):
            continue
        if shown is not None and not any(group_label(by, k) == label for k in shown):
            continue
        end = observed_until(mine, min_cell)
        if end is None:
            continue
        day = np.array([p["day"] for p in points], dtype=float)
        s = np.array([p["s"] for p in points], dtype=float)
        lo = np.array([np.nan if p["lo"] is None else p["lo"] for p in points], dtype=float)
        hi = np.array([np.nan if p["hi"] is None else p["hi"] for p in points], dtype=float)
        keep = day <= end
        if min_cell:
            keep &= _steps_of_enough_losses(day, mine, min_cell)
        hidden_tail = bool(len(day) and keep.any() and (~keep[day <= end])[np.flatnonzero(keep)[-1] + 1:].any())
        day, s, lo, hi = day[keep], s[keep], lo[keep], hi[keep]
        if len(day) and end > day[-1]:
            if hidden_tail:  # losses after the last step shown are too few to draw: the curve stops at that step
                end = float(day[-1])
            else:  # no loss after the last step: the estimate holds level up to the day the curve stops
                day, s, lo, hi = (np.append(a, v) for a, v in ((day, end), (s, s[-1]), (lo, lo[-1]), (hi, hi[-1])))
        marks = np.arange(0, end + 1e-9, AT_RISK_EVERY_DAYS)
        left = mine["left_days"].to_numpy(dtype=float)
        at_risk = [(float(m), int((left >= m).sum())) for m in marks]
        count = lambda n: suppress.count(n, min_cell)  # noqa: E731
        out.append({"label": label, "times": day, "survival": s,
                    "lower": np.where(np.isnan(lo), s, lo), "upper": np.where(np.isnan(hi), s, hi),
                    "n": f"{count(summary['n_cycles'])} cycles, {count(summary['n_patients'])} patients",
                    "end": end, "at_risk": at_risk})
    return out


def _steps_of_enough_losses(day: np.ndarray, cycles: pd.DataFrame, min_cell: int) -> np.ndarray:
    """Which curve points to keep so that every drop between kept points holds the confirmed losses (the first
    score out of response) of at least `min_cell` patients."""
    lost = cycles[cycles["event"].astype(bool)]
    right = lost["right_days"].to_numpy(dtype=float)
    patient = lost["patient_id"].to_numpy()
    keep = np.zeros(len(day), dtype=bool)
    last = -np.inf
    for i, d in enumerate(day):
        if d <= 0:
            keep[i] = True
            continue
        between = (right > last) & (right <= d)
        if len(set(patient[between])) >= min_cell:
            keep[i] = True
            last = d
    return keep


def curve_note(curves: list, min_cell: int) -> str:
    if not curves:
        return ""
    ends = ", ".join(f"{c['label']} at day {c['end']:.0f}" for c in curves)
    text = (f"Each curve stops at the last day {'at least ' + str(min_cell) + ' patients were' if min_cell else 'a cycle was'} "
            f"still seen in response" + (f", or at its last step holding the losses of at least {min_cell} patients"
                                         if min_cell else "")
            + f" ({ends}): after it the estimate is not defined by the data"
            + (" or would rest on fewer patients" if min_cell else "") + ", so it is not drawn down to 0%.")
    if min_cell:
        text += f" Each step down holds the losses of at least {min_cell} patients."
    return text


def durability_table(result: dict, cycles: pd.DataFrame | None = None, by: str | None = None,
                     min_cell: int = 0) -> pd.DataFrame:
    """Median and quartiles with 95% CIs per curve, in days (beyond the curve's end: "more than N days")."""
    rows = []
    cycles = cycles if cycles is not None else pd.DataFrame(columns=["patient_id", "left_days", "right_days", "event"])
    shown = set(shown_groups(result, cycles, by, min_cell)) if by and result.get("groups") else None
    for label, s, mine in _curve_pairs(result, cycles, by):
        if not s or s.get("n_patients", 0) < max(min_cell, 1):
            continue
        if shown is not None and not any(group_label(by, k) == label for k in shown):
            continue
        end = observed_until(mine, min_cell) if len(mine) else None

        def days(v, end=end):
            if v is None:
                return "not reached"
            if min_cell and end is not None and v > end:
                return f"more than {end:.0f}"
            return f"{v:.0f}"

        ci = s.get("median_ci") or [None, None]
        q = s.get("quartiles_days") or [None, None]
        median = days(s.get("median_days"))
        if median != "not reached":
            # no interval at all (e.g. no resampling) is not an interval that never closes
            median += " (no interval)" if ci[0] is None and ci[1] is None else f" ({days(ci[0])} to {days(ci[1])})"
        count = lambda n: suppress.count(n, min_cell)  # noqa: E731
        rows.append({"group": label, "cycles": count(s["n_cycles"]), "patients": count(s["n_patients"]),
                     "losses of response": count(s["n_events"]),
                     "median, days (95% CI)": median,
                     "25% lost by, days": days(q[0]), "75% lost by, days": days(q[1]),
                     "note": _plain_note(s.get("note", ""))})
    table = pd.DataFrame(rows)
    if len(table) and (table["note"] == "").all():
        table = table.drop(columns="note")
    return table


def _plain_note(note: str) -> str:
    return (note.replace("n_boot = 0", "no resampling").replace("fewer than two patients or", "fewer than two patients,")
            .replace("median not reached: fewer than half", "median not reached: fewer than half"))


MODEL_TERMS = {
    "baseline_score": "baseline score (per point)", "has_anxiety": "comorbid anxiety", "has_ptsd": "comorbid PTSD",
    "prior_failed_trials": "prior failed treatment trials (per trial)", "early_response": "early response (per % fall)",
    "route": "route of the starting infusion", "sex": "sex",
}


def term_choice_label(term: str) -> str:
    """A model term the page offers, in words."""
    return MODEL_TERMS.get(term, term.replace("_", " "))


def _term_label(term: dict) -> str:
    if term.get("level") is not None:
        covariate = term["covariate"]
        level, reference = str(term["level"]), str(term.get("reference"))
        if covariate == "route":
            level, reference = ROUTE_NAMES.get(level, level), ROUTE_NAMES.get(reference, reference)
        elif covariate == "sex":
            level, reference = SEX_NAMES.get(level, level), SEX_NAMES.get(reference, reference)
        return f"{term_choice_label(covariate)}: {level} (compared with {reference})"
    return MODEL_TERMS.get(term["term"], term["term"].replace("_", " "))


def forest_rows(model: dict) -> pd.DataFrame:
    """Finite time ratios from durability_model() for the forest plot (term, estimate, low, high, p)."""
    rows = [
        {"term": _term_label(t), "estimate": t.get("time_ratio"), "low": t.get("lo"), "high": t.get("hi"), "p": t.get("p")}
        for t in model.get("terms", [])
    ]
    frame = pd.DataFrame(rows, columns=["term", "estimate", "low", "high", "p"])
    ok = np.isfinite(frame[["estimate", "low", "high"]].astype(float)).all(axis=1) & (frame["estimate"].astype(float) > 0)
    return frame[ok].reset_index(drop=True)


def interval_distribution(days: pd.Series, width: int = 3, min_cell: int = 0) -> pd.DataFrame:
    """Suggested intervals binned by `width` days: start_day, end_day (exclusive), patients.

    Binned here rather than in the browser so a large clinic sends a few dozen bars, not one value per
    patient. With `min_cell`, every bin between the first and the last holds a value or is blank (empty bins
    too: "none" is a small number as well); bins under `min_cell` patients are blank, and so are further bins
    until the blank ones together hold none or at least `min_cell` (else the total minus the bars shown
    would give them back); blank bins at either end are left out.
    """
    values = pd.to_numeric(days, errors="coerce").dropna().to_numpy(dtype=float)
    if not len(values):
        return pd.DataFrame({"start_day": pd.Series(dtype=int), "end_day": pd.Series(dtype=int),
                             "patients": pd.Series(dtype=float)})
    start = np.floor(values / width).astype(int) * width
    counts = pd.Series(start).value_counts().sort_index()
    if min_cell > 0:
        counts = counts.reindex(np.arange(counts.index.min(), counts.index.max() + width, width), fill_value=0)
    bins = pd.DataFrame({"start_day": counts.index.to_numpy(), "end_day": counts.index.to_numpy() + width,
                         "patients": counts.to_numpy()})
    if min_cell <= 0:
        return bins
    shown = bins["patients"].to_numpy() >= min_cell
    while True:
        rest = int(bins["patients"].to_numpy()[~shown].sum())
        if rest == 0 or rest >= min_cell or not shown.any():
            break
        shown[np.flatnonzero(shown)[np.argmin(bins["patients"].to_numpy()[shown])]] = False
    out = bins.assign(patients=np.where(shown, bins["patients"], np.nan))
    if not shown.any():
        return out.iloc[0:0].reset_index(drop=True)
    first, last = np.flatnonzero(shown)[[0, -1]]
    return out.iloc[first:last + 1].reset_index(drop=True)


def infusions_per_patient_month(treatments: pd.DataFrame, today: date | None = None, min_cell: int = 0) -> pd.DataFrame:
    """Per calendar month: infusions, patients infused, infusions per infused patient, and the same for maintenance
    infusions only (the tapering question is about patients past induction).

    The month of `today` is left out (attrs["partial"] names it): a month in progress looks like a fall. With
    `min_cell`, a month's figures are blank unless its patients and infusions number `min_cell`, and its
    maintenance figures unless the maintenance infusions and the others (the difference a reader could take)
    each do, in infusions and in patients."""
    columns = ["month", "infusions", "patients", "per_patient", "maintenance_infusions", "maintenance_patients",
               "maintenance_per_patient"]
    if treatments.empty:
        return pd.DataFrame(columns=columns)
    t = treatments.assign(month=treatments["administered_at"].dt.to_period("M").dt.to_timestamp(),
                          phase=treatments["phase"].fillna("unrecorded").replace("", "unrecorded"))
    partial = None
    if today is not None:
        current = pd.Timestamp(today).to_period("M").to_timestamp()
        if (t["month"] >= current).any():
            partial = current
        t = t[t["month"] < current]
    g = t.groupby("month").agg(infusions=("patient_id", "size"), patients=("patient_id", "nunique")).reset_index()
    g["per_patient"] = g["infusions"] / g["patients"]
    m = t[t["phase"] == "maintenance"].groupby("month").agg(maintenance_infusions=("patient_id", "size"),
                                                            maintenance_patients=("patient_id", "nunique"))
    o = t[t["phase"] != "maintenance"].groupby("month").agg(other_infusions=("patient_id", "size"),
                                                            other_patients=("patient_id", "nunique"))
    g = g.join(m, on="month").join(o, on="month")
    g["maintenance_per_patient"] = g["maintenance_infusions"] / g["maintenance_patients"]
    if min_cell > 0:
        enough = lambda col: g[col].fillna(0) >= min_cell  # noqa: E731
        month_ok = enough("patients") & enough("infusions")
        maint_ok = month_ok & enough("maintenance_patients") & enough("maintenance_infusions") \
            & enough("other_patients") & enough("other_infusions")
        for col in ("infusions", "patients", "per_patient"):
            g[col] = g[col].where(month_ok)
        for col in ("maintenance_infusions", "maintenance_patients", "maintenance_per_patient"):
            g[col] = g[col].where(maint_ok)
    out = g[columns].reset_index(drop=True)
    out.attrs["partial"] = None if partial is None else f"{partial:%B %Y}"
    return out


POLICY_COLUMNS = {"policy": "policy", "infusions_per_patient_year": "infusions per patient-year",
                  "share_days_out_of_response": "days out of response", "rescue_share": "rescue infusions",
                  "patients_maintained": "patients on maintenance", "patient_years": "patient-years followed"}


def policy_name(name: str) -> str:
    """A simulator policy's name in words ("oracle q0.2" is not)."""
    if name.startswith("oracle"):
        return "oracle (knows true durability: a best case)"
    if name.startswith("personalised (target"):
        target = float(name.split("target")[1].strip(" )"))
        return f"personalised, {100 * target:.0f}% target" + (" (the default)" if abs(target - DEFAULT_TARGET) < 1e-9 else "")
    return name


def schedule_comparison(n_patients: int = 1000, seed: int = 0) -> pd.DataFrame:
    """analytics.schedules.compare() as a table: simulated patients, not this clinic's (targets SCHEDULE_TARGETS:
    the README's comparison and the default)."""
    return pd.DataFrame(schedules.compare(n_patients=n_patients, seed=seed, prior_patients=n_patients,
                                          targets=SCHEDULE_TARGETS))


def schedule_table(table: pd.DataFrame) -> pd.DataFrame:
    """The comparison as the page shows it: policies in words, per patient-year to one decimal, shares in %."""
    out = pd.DataFrame({
        "policy": table["policy"].map(policy_name),
        "infusions per patient-year": table["infusions_per_patient_year"].map(lambda v: f"{v:.1f}"),
        "days out of response": table["share_days_out_of_response"].map(lambda v: f"{100 * v:.1f}%"),
        "rescue infusions": table["rescue_share"].map(lambda v: f"{100 * v:.0f}%"),
    })
    return out


def schedule_note(table: pd.DataFrame) -> str:
    """What the comparison rests on, in words (the simulated patients on maintenance and their years)."""
    if table.empty or "patients_maintained" not in table:
        return ""
    patients, years = int(table["patients_maintained"].iloc[0]), float(table["patient_years"].iloc[0])
    quantile = next((p.split("q")[-1] for p in table["policy"] if p.startswith("oracle")), "0.2")
    return (f"Every policy meets the same {patients:,} simulated patients on maintenance, followed for {years:,.0f} "
            "patient-years after induction. Personalised, N% target: the next infusion when the patient's chance of "
            f"still responding is expected to fall to N%. Oracle: infuses at the {100 * float(quantile):.0f}th "
            "percentile of each patient's true durability, which no clinic can know.")


register_warmer("durability_screen", lambda ws, key: durability_screen(ws, key[1], key[2], key[3], key[4]))
register_warmer("model_screen", lambda ws, key: model_screen(ws, key[1], key[2]))
