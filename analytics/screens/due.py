"""The due list (clinicians): the caseload ordered by urgency, most urgent first.

`due_screen(ws, today, no_score_days)` combines the latest status of each active patient on
the primary instrument (outcomes.patient_status), the suggested next infusion (the
workspace's interval suggestions), open safety flags (read fresh, never cached) and the
self-report cadence (analytics.selfreport). The list names patients, so it is for roles that
may see patient rows (permissions `see_patient_rows`).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import date

import numpy as np
import pandas as pd

from .. import clinic_time, outcomes, scales, selfreport
from ..outcomes import DEFAULT_RULES, OutcomeRules
from .cohort import ACTIVE_DAYS
from .workspace import Workspace


@dataclass(frozen=True, eq=False)
class DueScreen:
    today: date
    no_score_days: int
    has_patients: bool
    due: pd.DataFrame  # due_list: one row per patient needing attention, most urgent first
    counts: dict  # URGENCY name -> patients with that reason
    flags: pd.DataFrame = field(default_factory=pd.DataFrame)  # the open safety flags, as read by this call

    @property
    def links_wanted(self) -> list[str]:
        """Patients whose self-report is due (a link to create for them)."""
        return self.due.loc[self.due["self_report_due"], "patient_id"].tolist()

    @property
    def rows(self) -> pd.DataFrame:
        """The list as the page shows it: the self-report's reason folded into "why" (one column fewer, so
        every column fits at 1440 px), dates as dates."""
        d = self.due
        why = [r.replace("self-report due", f"self-report due ({s})") if s else r
               for r, s in zip(d["reasons"], d["self_report_reason"])]
        return pd.DataFrame({
            "patient_id": d["patient_id"],
            "why": why,
            "next_due_on": pd.to_datetime(d["next_due_on"]).dt.date,
            "last_infusion": pd.to_datetime(d["last_infusion"]).dt.date,
            "last_assessment": pd.to_datetime(d["last_assessment"]).dt.date,
            "days_since_score": d["days_since_score"],
            "latest_phq9": d["latest_phq9"],
        })


def due_screen(ws: Workspace, today: date, no_score_days: int = 28, include_inactive: bool = False) -> DueScreen:
    """Open safety flags are read on every call (never cached); the rest is computed once per workspace
    tables, day, threshold and set of open flags: the caseload's status changes only with the data."""
    flags = ws.data.safety_flags()
    flag_key = tuple(sorted(zip(flags["patient_id"].astype(str), flags["raised_at"].astype(str)))) if len(flags) else ()
    screen = ws.memo(("due_screen", today, no_score_days, include_inactive, flag_key),
                     lambda: _due_screen(ws, today, no_score_days, flags, include_inactive))
    return replace(screen, flags=flags)  # the page lists these flags: no second read


def _due_screen(ws: Workspace, today: date, no_score_days: int, flags: pd.DataFrame,
                include_inactive: bool = False) -> DueScreen:
    f = ws.frames()
    suggestions = ws.suggestions(scales.PRIMARY, today)
    self_report = selfreport.due_columns(
        f["patients"], f["assessments"], flags, today,
        suggestions[["patient_id", "next_due_on"]] if len(suggestions) else None)
    due = due_list(f["patients"], f["treatments"], f["assessments"], today, no_score_days=no_score_days,
                   suggestions=suggestions, self_report=self_report, include_inactive=include_inactive)
    counts = {name: int(due["reasons"].str.contains(name, regex=False).sum()) for name, _ in URGENCY}
    return DueScreen(today, no_score_days, not f["patients"].empty, due, counts)


def log_view(ws: Workspace, screen: DueScreen) -> None:
    """Audit that the due list was shown, with every patient it named (once per distinct view: the page decides)."""
    ws.data.log("view_due_list", page="due", patients=screen.due["patient_id"].astype(str).tolist(),
                detail={"as_of": str(screen.today), "no_score_days": screen.no_score_days, "patients": len(screen.due)})


URGENCY = (
    ("safety flag", "a self-report answered PHQ-9 item 9 above 0; stays until a clinician acknowledges it"),
    ("item 9 positive", "PHQ-9 item 9 above 0 at the latest score"),
    ("overdue", "suggested infusion date has passed"),
    ("lost response", "no longer in response at the latest score"),
    ("worsened", "reliable worsening"),
    ("due this week", "suggested infusion within 7 days"),
    ("no recent score", "no assessment for a while"),
    ("taper candidate", "response has held: consider a longer interval"),
    ("self-report due", "no self-report for a while, or an infusion is near (analytics.selfreport.Cadence)"),
    ("no longer in active care", f"no infusion and no score for {ACTIVE_DAYS} days: no due date (shown on request)"),
)
SELF_REPORT_COLUMNS = ["safety_flag", "self_report_due", "self_report_reason"]
DUE_COLUMNS = ["patient_id", "reasons", "next_due_on", "last_infusion", "last_assessment", "days_since_score", "latest_phq9",
               *SELF_REPORT_COLUMNS]


def due_list(patients: pd.DataFrame, treatments: pd.DataFrame, assessments: pd.DataFrame, today: date,
             no_score_days: int = 28, suggestions: pd.DataFrame | None = None,
             rules: OutcomeRules = DEFAULT_RULES, active_days: int = ACTIVE_DAYS,
             self_report: pd.DataFrame | None = None, include_inactive: bool = False) -> pd.DataFrame:
    """The caseload ordered by urgency (see URGENCY), one row per active patient with a reason.

    `suggestions`: interval suggestions (patient_id, next_due_on, taper, ...) or None.
    `self_report`: analytics.selfreport.due_columns output (open safety flags, self-report due) or None.
    Patients with no infusion or assessment in `active_days` are no longer in active care: left
    out, or with `include_inactive` listed last in their own group ("no longer in active care",
    no due date).
    """
    last_inf = treatments.groupby("patient_id")["administered_at"].max()
    last_score = assessments.groupby("patient_id")["administered_at"].max()
    base = pd.DataFrame({"patient_id": patients["patient_id"]}).set_index("patient_id")
    base["last_infusion"] = last_inf
    base["last_assessment"] = last_score
    # Calendar days in the clinic's zone (clinic_time.days_since): a score at 09:00 today is 0 days old.
    since_activity = clinic_time.days_since(base[["last_infusion", "last_assessment"]].max(axis=1), today)
    active = (since_activity <= active_days).fillna(False).to_numpy(dtype=bool)
    inactive = base[~active & since_activity.notna().to_numpy(dtype=bool)] if include_inactive else base.iloc[:0]
    inactive = inactive.assign(reasons="no longer in active care", next_due_on=pd.NaT, latest_phq9=np.nan,
                               safety_flag=False, self_report_due=False, self_report_reason="", urgency=len(URGENCY),
                               days_since_score=clinic_time.days_since(inactive["last_assessment"], today)).reset_index()
    base = base[active]
    if base.empty:
        return inactive.sort_values("patient_id").reset_index(drop=True)[DUE_COLUMNS] if len(inactive) else \
            pd.DataFrame(columns=DUE_COLUMNS)
    status = outcomes.patient_status(treatments[treatments["patient_id"].isin(base.index)],
                                     assessments[assessments["patient_id"].isin(base.index)], scales.PRIMARY, rules)
    status = status.set_index("patient_id").reindex(base.index)
    base["latest_phq9"] = status["latest_score"]
    flags = pd.DataFrame(index=base.index)
    flags["item 9 positive"] = status["item9_positive"].fillna(False).astype(bool)
    flags["lost response"] = status["lost_response"].fillna(False).astype(bool)
    flags["worsened"] = (status["worse_than_last"].fillna(False) | status["worse_than_best"].fillna(False)).astype(bool)
    if suggestions is not None and len(suggestions):
        s = suggestions.set_index("patient_id").reindex(base.index)
        base["next_due_on"] = pd.to_datetime(s["next_due_on"])
        due_in = -clinic_time.days_since(base["next_due_on"], today)
        flags["overdue"] = (due_in < 0).fillna(False).astype(bool)
        flags["due this week"] = ((due_in >= 0) & (due_in <= 7)).fillna(False).astype(bool)
        flags["taper candidate"] = s["taper"].isin(["stretch", "consider_pause"]) if "taper" in s else False
    else:
        base["next_due_on"] = pd.NaT
        flags["overdue"] = flags["due this week"] = flags["taper candidate"] = False
    base["days_since_score"] = clinic_time.days_since(base["last_assessment"], today)
    flags["no recent score"] = (base["days_since_score"] >= no_score_days).fillna(True).astype(bool)
    if self_report is not None and len(self_report):
        extra = self_report.set_index("patient_id").reindex(base.index)
        base["safety_flag"] = extra["safety_flag"].fillna(False).astype(bool)
        base["self_report_due"] = extra["self_report_due"].fillna(False).astype(bool)
        base["self_report_reason"] = extra["self_report_reason"].fillna("")
    else:
        base["safety_flag"] = base["self_report_due"] = False
        base["self_report_reason"] = ""
    flags["safety flag"] = base["safety_flag"]
    flags["self-report due"] = base["self_report_due"]
    flags["no longer in active care"] = False  # the active ones; the others are added below on request
    order = [name for name, _ in URGENCY]
    flags = flags[order]
    base["urgency"] = np.where(flags.any(axis=1), flags.to_numpy().argmax(axis=1), len(order))
    base["reasons"] = flags.apply(lambda r: ", ".join(n for n in order if r[n]), axis=1)
    out = base[base["reasons"] != ""].reset_index()
    if len(inactive):
        out = pd.concat([out, inactive], ignore_index=True)
    out = out.sort_values(["urgency", "next_due_on", "patient_id"], na_position="last").reset_index(drop=True)
    return out[DUE_COLUMNS]
