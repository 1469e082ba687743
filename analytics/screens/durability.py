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
from .workspace import Workspace

N_BOOT = 200
MODEL_TERM_CHOICES = ("baseline_score", "has_anxiety", "has_ptsd", "prior_failed_trials", "route", "sex")
DEFAULT_MODEL_TERMS = ("baseline_score", "has_anxiety", "prior_failed_trials")


def instruments() -> tuple[str, ...]:
    """Durability of response is judged on the depression scales (PHQ-9, MADRS)."""
    return scales.measuring("depression")


def has_infusions(ws: Workspace) -> bool:
    return not ws.frames()["treatments"].empty


@dataclass(frozen=True, eq=False)
class DurabilityScreen:
    instrument: str
    by: str | None
    min_cell: int
    result: dict | None  # cohort_durability(...): None without response cycles
    curves: list  # survival_curves
    table: pd.DataFrame  # durability_table
    title: str
    method_note: str
    interval_bins: pd.DataFrame  # interval_distribution of the suggested intervals (empty: none yet)
    monthly: pd.DataFrame  # infusions_per_patient_month

    @property
    def has_cycles(self) -> bool:
        return bool(self.result and self.result.get("n_cycles"))

    @property
    def bins_blanked(self) -> bool:
        return bool(len(self.interval_bins) and self.interval_bins["patients"].isna().any())


def durability_screen(ws: Workspace, instrument: str, by: str | None = None, n_boot: int = N_BOOT,
                      today: date | None = None) -> DurabilityScreen:
    """`today`: who is in active care, for the distribution of suggested intervals (default: today)."""
    code = scales.get(instrument).code
    min_cell = ws.data.scope.suppression_threshold  # groups under it are not shown
    cycles = ws.cycles(code)
    # the headline reads the scores through the whole clinic's measurement model (one fit per data
    # version); the scope's own cycles and patients decide what is summarised
    result = ws.once(("durability", code, by, n_boot),
                     lambda: cohort_durability(cycles, instrument=code, by=by, n_boot=n_boot,
                                               model=ws.clinic(code).model)) if len(cycles) else None
    curves, table, title, note = [], pd.DataFrame(), "", ""
    if result is not None and result.get("n_cycles"):
        curves = survival_curves(result, min_cell)
        table = durability_table(result, min_cell)
        title = f"Still in response by days since the infusion ({code})"
        if by and result.get("logrank_p") is not None:
            title += f": log-rank p = {result['logrank_p']:.3f}"
        note = (f"Curve: {result['method']['curve']}. CI: {result['method']['ci']}. "
                + (f"Group test: {result['method']['group_test']}. " if by else "")
                + "Loss of response is only known to lie between two assessments, so the curve is the "
                "interval-censored analogue of Kaplan-Meier (Turnbull). " + result.get("groups_note", ""))
    suggested = ws.suggestions(scales.PRIMARY, today)["suggested_interval_days"].dropna()
    bins = interval_distribution(suggested, min_cell=min_cell) if len(suggested) else pd.DataFrame()
    return DurabilityScreen(code, by, min_cell, result, curves, table, title, note, bins,
                            infusions_per_patient_month(ws.frames()["treatments"]))


@dataclass(frozen=True, eq=False)
class ModelScreen:
    model: dict  # durability_model(...)
    rows: pd.DataFrame  # forest_rows: the finite time ratios

    @property
    def estimated(self) -> bool:
        return not self.rows.empty and self.model.get("converged", True)

    @property
    def problem(self) -> str:
        return self.model.get("note", "the fit did not converge")

    @property
    def caption(self) -> str:
        m = self.model
        return (f"{m['model']}. A time ratio above 1 means response lasts longer. "
                f"{m['n_cycles']} cycles from {m['n_patients']} patients, {m['n_events']} losses. "
                "Associations in this clinic's data, not causes.")


def model_screen(ws: Workspace, instrument: str, covariates: tuple[str, ...]) -> ModelScreen:
    code = scales.get(instrument).code
    model = ws.once(("durability_model", code, tuple(covariates)),
                    lambda: durability_model(ws.cycles(code), list(covariates)))
    return ModelScreen(model, forest_rows(model))


SUBGROUPS = {
    "site": "site", "clinician": "clinician", "route": "route of the starting infusion",
    "baseline_band": "baseline severity band", "has_anxiety": "comorbid anxiety", "has_ptsd": "comorbid PTSD",
    "sex": "sex", "phase": "phase of the starting infusion",
}


def survival_curves(result: dict, min_cell: int = 0) -> list[dict]:
    """Curves for charts.survival from cohort_durability(): every group (or all cycles and post-induction)."""
    def curve(label: str, summary: dict) -> dict | None:
        points = summary.get("survival") or []
        if not points or summary.get("n_patients", 0) < min_cell:
            return None
        s = np.array([p["s"] for p in points], dtype=float)
        lo = np.array([np.nan if p["lo"] is None else p["lo"] for p in points], dtype=float)
        hi = np.array([np.nan if p["hi"] is None else p["hi"] for p in points], dtype=float)
        return {"label": label, "times": np.array([p["day"] for p in points], dtype=float), "survival": s,
                "lower": np.where(np.isnan(lo), s, lo), "upper": np.where(np.isnan(hi), s, hi),
                "n": f"{summary['n_cycles']} cycles, {summary['n_patients']} patients"}

    if result.get("groups"):
        pairs = list(result["groups"].items())
    else:
        pairs = [("every cycle", result), ("first cycle after induction", result.get("post_induction", {}))]
        if result.get("definitions_survival"):
            pairs.append((DEFINITIONS_LABEL, _definitions(result)))
    return [c for c in (curve(label, summary) for label, summary in pairs) if c is not None]


DEFINITIONS_LABEL = "every cycle, definitions read literally (sensitivity)"


def _definitions(result: dict) -> dict:
    """The literal (definitions-based) figures of a cohort_durability result, as a summary."""
    return {**result, **{k[len("definitions_"):]: v for k, v in result.items() if k.startswith("definitions_")}}


def durability_table(result: dict, min_cell: int = 0) -> pd.DataFrame:
    """Median and quartiles with 95% CIs per curve, in days."""
    def fmt(v):
        return "not reached" if v is None else f"{v:.0f}"

    rows = []
    pairs = list(result["groups"].items()) if result.get("groups") else \
        [("every cycle", result), ("first cycle after induction", result.get("post_induction", {}))]
    if not result.get("groups") and result.get("definitions_survival"):
        pairs.append((DEFINITIONS_LABEL, _definitions(result)))
    for label, s in pairs:
        if not s or s.get("n_patients", 0) < min_cell:
            continue
        ci = s.get("median_ci") or [None, None]
        q = s.get("quartiles_days") or [None, None]
        rows.append({"group": label, "cycles": s["n_cycles"], "patients": s["n_patients"], "losses": s["n_events"],
                     "median days (95% CI)": f"{fmt(s.get('median_days'))} ({fmt(ci[0])}-{fmt(ci[1])})",
                     "25% lost by day": fmt(q[0]), "75% lost by day": fmt(q[1]),
                     "note": s.get("note", "")})
    return pd.DataFrame(rows)


MODEL_TERMS = {
    "baseline_score": "baseline score (per point)", "has_anxiety": "comorbid anxiety", "has_ptsd": "comorbid PTSD",
    "prior_failed_trials": "prior failed trials (per trial)", "early_response": "early response (per % fall)",
}


def _term_label(term: dict) -> str:
    if term.get("level") is not None:
        return f"{term['covariate']} {term['level']} (vs {term.get('reference')})"
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

    Binned here rather than in the browser so a large clinic sends a few dozen bars, not one
    value per patient; bins under `min_cell` patients (and a complement that would give one
    back) are blank, never a small number.
    """
    values = pd.to_numeric(days, errors="coerce").dropna().to_numpy(dtype=float)
    if not len(values):
        return pd.DataFrame({"start_day": pd.Series(dtype=int), "end_day": pd.Series(dtype=int),
                             "patients": pd.Series(dtype=float)})
    start = np.floor(values / width).astype(int) * width
    counts = pd.Series(start).value_counts().sort_index()
    bins = pd.DataFrame({"start_day": counts.index.to_numpy(), "end_day": counts.index.to_numpy() + width,
                         "patients": counts.to_numpy()})
    return suppress.blank(bins, ["patients"], min_cell=min_cell, value_cols=[])


def infusions_per_patient_month(treatments: pd.DataFrame) -> pd.DataFrame:
    """Per calendar month: infusions, patients infused, infusions per infused patient, split by phase."""
    if treatments.empty:
        return pd.DataFrame(columns=["month", "infusions", "patients", "per_patient"])
    t = treatments.assign(month=treatments["administered_at"].dt.to_period("M").dt.to_timestamp(),
                          phase=treatments["phase"].fillna("unrecorded").replace("", "unrecorded"))
    g = t.groupby("month").agg(infusions=("patient_id", "size"), patients=("patient_id", "nunique")).reset_index()
    g["per_patient"] = g["infusions"] / g["patients"]
    # Maintenance-only rate: the tapering question is about patients past induction.
    m = t[t["phase"] == "maintenance"].groupby("month").agg(m_inf=("patient_id", "size"), m_pat=("patient_id", "nunique"))
    g = g.join(m, on="month")
    g["maintenance_per_patient"] = g["m_inf"] / g["m_pat"]
    return g.drop(columns=["m_inf", "m_pat"])


def schedule_comparison(n_patients: int = 1000, seed: int = 0) -> pd.DataFrame:
    """analytics.schedules.compare() as a table: simulated patients, not this clinic's."""
    return pd.DataFrame(schedules.compare(n_patients=n_patients, seed=seed, prior_patients=n_patients))
