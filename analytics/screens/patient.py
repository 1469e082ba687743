"""The patient trajectory page (clinicians): one patient's scores, infusions, cycles and next infusion.

`patient_search(ws, text)` finds ids in the scope as the user types (never the whole list);
`patient_screen(ws, patient_id, today)` reads the record through the scoped data layer (each
view audited) and assembles what the page draws. Cycles and the suggested interval come
from the workspace's cohort-wide fit, so a patient with little history borrows the clinic's
pattern.
"""
from __future__ import annotations

import hashlib
import io
import math
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date

import numpy as np
import pandas as pd

from .. import clinic_time, course, outcomes, scales, visits, vocabulary
from ..access import AccessDenied
from ..ingest.rules import escape_formula
from ..outcomes import DEFAULT_RULES, OutcomeRules
from .workspace import Workspace, categories_as_text

SEARCH_LIMIT = 20
CYCLE_ENDS = {"loss": "loss of response", "next_infusion": "next infusion (no loss seen)",
              "end_of_follow_up": "still in response"}


def patient_search(ws: Workspace, text: str) -> list[str]:
    """Ids containing `text` that the scope may open, at most SEARCH_LIMIT; not cached: a refused exact id is
    audited. The scope's ids are read once per data version and searched in memory: the workspace's tables'
    version, or while they are the previous version's (being updated), the database's now."""
    data = ws.data
    version = tuple(data.data_version()) if ws.updating else ws.tables.version
    ids = ws.memo(("patient_ids", version), data.patient_ids)
    return data.search_patient_ids(text, limit=SEARCH_LIMIT, page="patient", among=ids)


@dataclass(frozen=True, eq=False)
class PatientScreen:
    patient_id: str
    refused: str | None = None  # why the record was not opened (outside the scope, or no such patient)
    info: dict = field(default_factory=dict)  # the patients row: site, clinician, diagnosis, comorbidities
    treatments: pd.DataFrame = field(default_factory=pd.DataFrame)
    assessments: pd.DataFrame = field(default_factory=pd.DataFrame)
    alerts: list = field(default_factory=list)
    thresholds: dict = field(default_factory=dict)  # per instrument present: the chart's bands and lines
    latest: pd.DataFrame = field(default_factory=pd.DataFrame)  # latest_scores
    last_infusion: pd.Timestamp | None = None
    days_since_infusion: int | None = None
    suggestion_text: str = ""
    cycles: pd.DataFrame = field(default_factory=pd.DataFrame)  # this patient's durability cycles
    cycle_rows: pd.DataFrame = field(default_factory=pd.DataFrame)  # the same, as the table shows them
    items: Mapping = field(default_factory=dict)  # instrument -> (item_matrix, item_max), instruments present
    history: pd.DataFrame = field(default_factory=pd.DataFrame)
    record: dict = field(default_factory=dict, repr=False)
    fingerprint: tuple = ()  # record_fingerprint(record): keys what is drawn from the record (charts)

    @property
    def last_infusion_ago(self) -> str:
        """ "today", "yesterday", "69 days ago": calendar days in the clinic's zone (clinic_time.days_since)."""
        return clinic_time.days_text(self.days_since_infusion)

    @property
    def empty(self) -> bool:
        return self.treatments.empty and self.assessments.empty

    def csv(self) -> bytes:
        """The patient's rows as one CSV (built when the download is asked for, not on every view)."""
        return patient_csv(self.record)


def audited_csv(ws: Workspace, screen: PatientScreen) -> bytes:
    """The patient's CSV for a download: the audit entry (with the patient) is written first."""
    ws.data.log("export", page="patient", patients=[screen.patient_id], detail={"what": "patient CSV"})
    return screen.csv()


def patient_screen(ws: Workspace, patient_id: str, today: date) -> PatientScreen:
    """The record is read (and the view audited) on every call; what is computed from it, once per
    workspace tables, day and record content (`record_fingerprint`)."""
    try:
        record = ws.data.patient_record(patient_id, page="patient")
    except AccessDenied as refused:
        return PatientScreen(patient_id, refused=str(refused))
    fingerprint = _kept_fingerprint(ws, record)
    return ws.memo(("patient_screen", patient_id, today, fingerprint),
                   lambda: _patient_screen(ws, patient_id, today, record, fingerprint))


def voided_records(ws: Workspace, patient_id: str) -> dict[str, pd.DataFrame]:
    """DataAccess.voided_rows of one patient (voided infusions and assessments, kept for the record), read
    once per data version (every void is a new version), when the record tools that list them are open."""
    return ws.memo(("voided_records", str(patient_id), ws.data.data_version()),
                   lambda: ws.data.voided_rows([patient_id]))


def record_history(ws: Workspace, patient_id: str, administered_at, instrument: str | None = None) -> pd.DataFrame:
    """visits.record_history of one record, read once per data version (every correction or void is a new
    version): a rerun of the page (a widget moved) does not read the six tables behind it again."""
    return ws.memo(("record_history", str(patient_id), str(pd.Timestamp(administered_at)), instrument,
                    ws.data.data_version()),
                   lambda: visits.record_history(ws.data.db, ws.data.scope, patient_id, administered_at, instrument))


def record_fingerprint(record: dict[str, pd.DataFrame]) -> tuple:
    """Changes whenever any value of the record does (a correction keeps the row count)."""
    # A digest of each frame's pickled bytes (every value, dtype and column name): the same record read again
    # gives the same bytes; a tenth of the CPU of hashing each column with pandas.
    return tuple((name, len(frame), hashlib.blake2b(pickle.dumps(frame, protocol=5), digest_size=16).hexdigest())
                 for name, frame in sorted(record.items()))


def _kept_fingerprint(ws: Workspace, record: dict[str, pd.DataFrame]) -> tuple:
    """record_fingerprint(record), worked out once for these very frames: the data layer hands out the same
    frames for a record it keeps (DataAccess.patient_record), and a frame's pickled bytes can change once pandas
    has reorganised its blocks (a screen read it), though not its values. The memo holds the frames it was
    worked out for and is used only for those same objects, so no other frames can take their identity."""
    frames = tuple(record[name] for name in sorted(record))
    kept = ws.memo(("record_fingerprint", *map(id, frames)), lambda: (frames, record_fingerprint(record)))
    if len(kept[0]) == len(frames) and all(a is b for a, b in zip(kept[0], frames)):
        return kept[1]
    return record_fingerprint(record)


def _patient_screen(ws: Workspace, patient_id: str, today: date, record: dict[str, pd.DataFrame],
                    fingerprint: tuple = ()) -> PatientScreen:
    t, a = record["treatments"], record["assessments"]
    info = record["patient"].iloc[0].to_dict()
    if t.empty and a.empty:
        return PatientScreen(patient_id, info=info, treatments=t, assessments=a, record=record, fingerprint=fingerprint)
    found = outcomes.patient_outcomes(t, a)  # every instrument's baseline and state, once
    thresholds = patient_thresholds(t, a, found=found)
    # the cycle table's labels are categoricals (workspace.cycle_labels_as_categories): this patient's as text
    cycles = categories_as_text(patient_rows(ws, ("cycles", scales.PRIMARY), lambda: ws.cycles(scales.PRIMARY),
                                             patient_id))
    rows = patient_rows(ws, ("suggestions", scales.PRIMARY, today), lambda: ws.suggestions(scales.PRIMARY, today),
                        patient_id)
    last = t["administered_at"].max() if len(t) else None
    return PatientScreen(
        patient_id, info=info, treatments=t, assessments=a, alerts=patient_alerts(record, found=found),
        thresholds=thresholds, latest=latest_scores(a, {c: th["baseline"] for c, th in thresholds.items()}),
        last_infusion=last, days_since_infusion=clinic_time.days_since(last, today),
        suggestion_text=describe_suggestion(rows.iloc[0].to_dict() if len(rows) else None, today),
        cycles=cycles, cycle_rows=cycle_rows(cycles),
        items=ItemAnswers(a, [c for c in scales.codes() if c in _instruments(a)]),
        history=patient_history(record), record=record, fingerprint=fingerprint)


def _instruments(assessments: pd.DataFrame) -> set:
    """The instruments of these assessments (a patient's few dozen rows)."""
    return set(assessments["instrument"].to_numpy(dtype=object)) if len(assessments) else set()


def patient_rows(ws: Workspace, name: tuple, table: Callable[[], pd.DataFrame], patient_id: str) -> pd.DataFrame:
    """One patient's rows of a clinic-wide table of the workspace (`table()`, e.g. its cycles), in the table's
    order and with its index, as `table[table["patient_id"] == patient_id]` gives them: found through a
    per-patient index built once per workspace tables (`name` names the table), not by comparing every
    row's id on each view (4.7 M comparisons a view at 100,000 patients)."""
    frame = table()

    def build() -> tuple:
        codes, ids = pd.factorize(frame["patient_id"].astype(str).to_numpy(dtype=object))
        order = np.argsort(codes, kind="stable")
        bounds = np.searchsorted(codes[order], np.arange(len(ids) + 1))
        return {pid: at for at, pid in enumerate(ids.tolist())}, order, bounds
    index, order, bounds = ws.memo(("patient_rows", *name), build)
    at = index.get(str(patient_id), -1)
    if at < 0:
        return frame.iloc[:0]
    rows = order[bounds[at]:bounds[at + 1]]
    if rows[-1] - rows[0] == len(rows) - 1:  # in order and together (the tables are built patient by patient):
        return frame.iloc[rows[0]:rows[-1] + 1]  # a slice, not a take of every column (copy-on-write: no view leaks)
    return frame.iloc[rows]


class ItemAnswers(Mapping):
    """instrument -> (item_matrix, item_max) for the instruments present, each matrix built when first asked
    for: the page shows one instrument's at a time."""

    def __init__(self, assessments: pd.DataFrame, codes: list[str]):
        self._assessments, self._codes, self._built = assessments, list(codes), {}

    def __getitem__(self, code: str) -> tuple[pd.DataFrame, int]:
        if code not in self._codes:
            raise KeyError(code)
        if code not in self._built:  # two sessions may build it at once: the same value either way
            self._built[code] = (item_matrix(self._assessments, code), scales.get(code).item_max)
        return self._built[code]

    def __iter__(self):
        return iter(self._codes)

    def __len__(self) -> int:
        return len(self._codes)


def cycle_rows(cycles: pd.DataFrame) -> pd.DataFrame:
    """One patient's cycles as the page lists them: number, start, length, how it ended. Built from plain
    values (a patient's few cycles: a frame operation per column cost more than the rows), with the column
    types the frame operations gave (text as pandas' str)."""
    days = np.round(cycles["length_days"].to_numpy(dtype=float)).astype(int)
    started = cycles["started_at"].to_numpy().astype("datetime64[us]").tolist()
    return pd.DataFrame({
        "cycle": cycles["cycle_no"].to_numpy().astype(int),
        "started": pd.array([f"{d:%d %b %Y}" for d in started], dtype=_TEXT),
        "length": [f"{d} day" if d == 1 else f"{d} days" for d in days.tolist()],  # typed as before (none: float)
        "ended": pd.array([CYCLE_ENDS.get(r, r) for r in cycles["censor_reason"].tolist()], dtype=_TEXT),
    }, index=cycles.index)


_TEXT = pd.StringDtype(na_value=np.nan)  # pandas' default text type (str)


_BASIS = {
    "personal": "mostly this patient's own {n} response cycle{s}",
    "mixed": "this patient's {n} response cycle{s} combined with the clinic's typical pattern",
    "cohort": "mostly the clinic's typical pattern (this patient's own history is still short: {n} cycle{s})",
}
_SOURCE = {"score trend": "the score trend", "own losses": "this patient's own losses of response",
           "cohort": "the clinic's typical pattern"}


def _present(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v)) and not pd.isna(v)


def describe_suggestion(s: dict | None, today: date) -> str:
    """A suggestion in a clinician's words, with the evidence beside it."""
    if not s:
        return ("No suggested date yet: it needs at least one infusion given while in response, "
                "to learn how long response lasts for this patient.")
    if s.get("status", "suggested") != "suggested":
        return f"No suggested date: {s.get('status_text') or s.get('status')}."
    if s.get("next_due_on") is None or pd.isna(s.get("next_due_on")):
        return ("No suggested date yet: it needs at least one infusion given while in response, "
                "to learn how long response lasts for this patient.")
    due = pd.Timestamp(s["next_due_on"]).date()
    days = -clinic_time.days_since(due, today)
    when = (f"in {days} days" if days > 1 else "tomorrow" if days == 1 else "today" if days == 0
            else "1 day overdue" if days == -1 else f"{-days} days overdue")
    text = (f"Suggested next infusion: {due:%a %d %b %Y} ({when}), "
            f"{s['suggested_interval_days']:.0f} days after the last one")
    lo, hi = s.get("interval_low_days"), s.get("interval_high_days")
    if _present(lo) and _present(hi):
        text += f"; a reasonable range is {lo:.0f} to {hi:.0f} days"
    target = s.get("target", 0.8)
    n = int(s.get("n_cycles") or 0)
    basis = _BASIS.get(str(s.get("basis")), "{n} cycle{s}").format(n=n, s="" if n == 1 else "s")
    text += (f". This is when the chance of still being in response is expected to fall to {100 * target:.0f}%, "
             f"based on {basis}.")
    if "observed_cycles" in s:
        k, m = int(s.get("observed_cycles") or 0), int(s.get("observed_losses") or 0)
        text += f" Observed: {k} response cycle{'s' if k != 1 else ''}, {m} ended in loss of response"
        if m and _present(s.get("observed_median_loss_days")):
            text += (f" (seen after a median of {s['observed_median_loss_days']:.0f} days, the earliest after "
                     f"{s['observed_shortest_loss_days']:.0f})")
        text += "."
    source = s.get("estimate_source")
    if source:
        text += f" Driven by {_SOURCE.get(source, source)}: {s.get('estimate_note', '')}"
    if s.get("latest_responding") is False:
        text += " The latest score no longer meets response: consider the next infusion sooner than this date."
    taper = s.get("taper")
    if taper == "stretch":
        text += f" Consider lengthening the interval: {s.get('taper_reason')}."
    elif taper == "consider_pause":
        text += f" Consider a pause in maintenance: {s.get('taper_reason')}."
    return text


def derived_phase(patient_id: str, treatments: pd.DataFrame, assessments: pd.DataFrame, at, has_time: bool = True,
                  rules: OutcomeRules = DEFAULT_RULES) -> tuple[str, str]:
    """The phase the course rules (course.py) give a new infusion of this patient at `at`, and why, in
    a clinician's words: what the form saves when no phase is chosen. An infusion already recorded at
    `at` (the one being corrected) is left out."""
    at = pd.Timestamp(at)
    columns = ["patient_id", "administered_at", "has_time", "route", "phase"]
    given = treatments[pd.to_datetime(treatments["administered_at"]) != at][columns] if len(treatments) else None
    new = pd.DataFrame({"patient_id": [patient_id], "administered_at": [at], "has_time": [bool(has_time)],
                        "route": ["iv"], "phase": [None]})
    both = new if given is None or given.empty else pd.concat([given, new], ignore_index=True)
    both["administered_at"] = pd.to_datetime(both["administered_at"]).astype("datetime64[us]")
    scores = assessments if len(assessments) else pd.DataFrame(
        {"patient_id": pd.Series([], dtype=object), "instrument": pd.Series([], dtype=object),
         "administered_at": pd.Series([], dtype="datetime64[us]"), "has_time": pd.Series([], dtype=bool),
         "total": pd.Series([], dtype=float)})
    infusions = course.build_course(both, scores, scales.PRIMARY, rules).infusions
    row = infusions[infusions["at"] == at.to_datetime64()].iloc[0]
    phase = str(row["phase"])
    if phase == "induction":
        return phase, (f"infusion {int(row['infusion_no'])} of the induction series (which runs from the first infusion "
                       f"until a gap of more than {rules.induction_max_gap_days:g} days or the "
                       f"{rules.induction_max_infusions}th infusion)")
    score = row["pre_dose_score"]
    last = (f"the last {scales.PRIMARY} before it ({score:g} on {pd.Timestamp(row['pre_dose_at']):%d %b %Y})"
            if pd.notna(score) else None)
    if phase == "rescue":
        return phase, f"{last} was out of response after an earlier response"
    if last is None:
        return phase, f"after the induction series (no {scales.PRIMARY} before it)"
    if bool(row["pre_dose_responding"]):
        return phase, f"after the induction series; {last} was in response"
    return phase, f"after the induction series; {last} was not in response, but there was no response before it to lose"


def patient_alerts(record: dict[str, pd.DataFrame], rules: OutcomeRules = DEFAULT_RULES,
                   found: dict[str, outcomes.PatientOutcome] | None = None) -> list[str]:
    """Plain-language alerts for the patient banner: a safety item above 0 at the instrument's latest
    score (PHQ-9 item 9), reliable worsening on a depression scale (outcomes.patient_status's flags, here
    from `found`: outcomes.patient_outcomes of the record, worked out when not given)."""
    t, a = record["treatments"], record["assessments"]
    messages = []
    instrument = a["instrument"].to_numpy(dtype=object) if len(a) else np.array([], dtype=object)
    for scale in scales.SCALES.values():
        column = scale.safety_column
        if column is None or column not in a:
            continue
        mine = np.flatnonzero(instrument == scale.code)
        if not len(mine):
            continue
        at = a["administered_at"].to_numpy()[mine]
        last = mine[np.argsort(at, kind="stable")[-1]]  # the latest score of this instrument
        value = a[column].iloc[last]
        if pd.notna(value) and float(value) > 0:
            when = pd.Timestamp(a["administered_at"].iloc[last]).date()
            messages.append(f"Latest {scale.code} ({when:%d %b %Y}) item {scale.safety_item} ({scale.safety_meaning}) "
                            f"scored {int(value)}: assess suicide risk today.")
    if t.empty:
        return messages
    found = outcomes.patient_outcomes(t, a, rules) if found is None else found
    for code in scales.measuring("depression"):
        row = found.get(code)  # absent: no scored total of this scale, so no state and no flag
        if row is None:
            continue
        rci = row.rci_points
        if row.worse_than_last:
            messages.append(f"{code} worsened reliably since the previous score ({row.previous_score:.0f} to "
                            f"{row.latest_score:.0f}; reliable change is {rci:.1f} points or more).")
        elif row.worse_than_best:
            messages.append(f"{code} worsened reliably from the best score ({row.best_score:.0f} to "
                            f"{row.latest_score:.0f}; reliable change is {rci:.1f} points or more).")
    return messages


def latest_scores(assessments: pd.DataFrame, baselines: dict[str, float | None]) -> pd.DataFrame:
    """Per instrument: latest score, when, severity band, baseline and percent change."""
    rows = []
    if len(assessments):
        instrument = assessments["instrument"].to_numpy(dtype=object)
        total = assessments["total"].to_numpy(dtype=float, na_value=np.nan)
        at = assessments["administered_at"].to_numpy()
    for code in scales.codes():
        if not len(assessments):
            break
        mine = np.flatnonzero((instrument == code) & ~np.isnan(total))
        if not len(mine):
            continue
        scale = scales.get(code)
        last = mine[np.argsort(at[mine], kind="stable")[-1]]
        latest = total[last]
        base = baselines.get(code)
        change = None if base is None or pd.isna(base) or base == 0 else 100 * (latest - base) / base
        rows.append({"instrument": code, "latest": float(latest), "on": pd.Timestamp(at[last]).date(),
                     "band": scale.band(latest), "baseline": base, "change_percent": change,
                     "max": scale.total_max})
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class ScoreCard:
    """One instrument's latest score as the page shows it."""
    instrument: str
    on: date
    score: str  # "19 / 27"
    band: str
    change: str  # "49% below baseline 37", "no change from baseline 37", "" without a baseline
    direction: str  # "better" (a lower score), "worse", "same" or "" (no baseline)


def score_cards(latest: pd.DataFrame) -> list[ScoreCard]:
    """latest_scores as cards: a fall is better on every instrument here; a change that rounds to 0% is
    "no change" (no arrow, no colour), never "+0%"."""
    cards = []
    for row in latest.itertuples():
        change, direction = "", ""
        if row.change_percent is not None and pd.notna(row.change_percent):
            shown = round(float(row.change_percent))
            if shown == 0:
                change, direction = f"no change from baseline {row.baseline:g}", "same"
            elif shown < 0:
                change, direction = f"{-shown}% below baseline {row.baseline:g}", "better"
            else:
                change, direction = f"{shown}% above baseline {row.baseline:g}", "worse"
        elif row.baseline is not None and pd.notna(row.baseline) and row.baseline == 0:
            change = "baseline 0: no percentage"
        cards.append(ScoreCard(row.instrument, row.on, f"{row.latest:g} / {row.max}", row.band, change, direction))
    return cards


def patient_thresholds(treatments: pd.DataFrame, assessments: pd.DataFrame,
                       rules: OutcomeRules = DEFAULT_RULES,
                       found: dict[str, outcomes.PatientOutcome] | None = None) -> dict[str, dict]:
    """Per instrument present: baseline (outcomes.baselines: here from `found`, outcomes.patient_outcomes
    of the record, worked out when not given), response threshold and remission cut-off for the chart."""
    out = {}
    present = _instruments(assessments)
    if found is None:
        found = outcomes.patient_outcomes(treatments, assessments, rules) if len(treatments) else {}
    for code in scales.codes():
        if code not in present:
            continue
        cut, inclusive = outcomes.remission_threshold(code, rules)
        base = None
        if code in found and pd.notna(found[code].baseline_score):
            base = float(found[code].baseline_score)
        out[code] = {
            "baseline": base,
            "response_at_or_below": None if base is None else base * (1 - rules.response_fall),
            "remission_cut": cut, "remission_inclusive": inclusive,
            "bands": [(b.low, b.high, b.label) for b in scales.get(code).bands],
            "max": scales.get(code).total_max,
        }
    return out


def item_matrix(assessments: pd.DataFrame, instrument: str, last_n: int = 12) -> pd.DataFrame:
    """Item answers (rows: items with their labels; columns: the last `last_n` dates)."""
    scale = scales.get(instrument)
    mine = np.flatnonzero(assessments["instrument"].to_numpy(dtype=object) == scale.code) if len(assessments) else []
    if not len(mine):
        return pd.DataFrame()
    at = assessments["administered_at"].to_numpy()
    rows = mine[np.argsort(at[mine], kind="stable")][-last_n:]  # the last `last_n` by date, oldest first
    items = list(range(1, scale.scored_items + 1))
    values = np.array([assessments[f"item_{i}"].to_numpy(dtype=float, na_value=np.nan)[rows] for i in items])
    m = pd.DataFrame(values, columns=[pd.Timestamp(d).strftime("%d %b %y") for d in at[rows]])
    m.index = [f"{i}. {scale.short_label(i)}" for i in items]  # short names label the rows; the wording shows on hover
    m.attrs["wording"] = [scale.item_labels[i - 1] if i <= len(scale.item_labels) else f"item {i}" for i in items]
    return m


def patient_history(record: dict[str, pd.DataFrame], limit: int = 20) -> pd.DataFrame:
    """Infusions and scores interleaved, newest first (at the same time: infusions first, each kind in its
    record order). Built row by row from plain values: a record is a few dozen rows, where a frame
    operation per column cost more than the rows."""
    t = record["treatments"]
    a = record["assessments"]
    when, event, detail = [], [], []
    for at, phase, route, dose in zip(t["administered_at"].tolist(), t["phase"].tolist(), t["route"].tolist(),
                                      t["dose_mg_per_kg"].tolist()):
        when.append(at)
        event.append("infusion, " + ("phase not recorded" if pd.isna(phase) else phase))
        route_name = np.nan if pd.isna(route) else vocabulary.ROUTE_NAMES.get(route, route)
        detail.append(np.nan if pd.isna(route_name)
                      else route_name + ", " + (f"{dose:g} mg/kg" if pd.notna(dose) else "dose not recorded"))
    instruments = a["instrument"].tolist()
    safety = [np.nan] * len(a)  # each score's safety item (PHQ-9 item 9), where its scale has one
    for scale in scales.SCALES.values():
        if scale.safety_column and scale.safety_column in a:
            for i, (code, value) in enumerate(zip(instruments, a[scale.safety_column].tolist())):
                if code == scale.code:
                    safety[i] = np.nan if pd.isna(value) else float(value)
    for at, code, tot, v, m in zip(a["administered_at"].tolist(), instruments, a["total"].tolist(), safety,
                                   a["total_method"].tolist()):
        when.append(at)
        event.append(code)
        detail.append((f"{tot:g} ({scales.get(code).band(tot)})" if pd.notna(tot) else "no total")
                      + (f"; item {scales.get(code).safety_item} = {int(v)}" if pd.notna(v) and v > 0 else "")
                      + (" (prorated)" if m == "prorated" else ""))
    keys = np.array([pd.Timestamp(w).value if pd.notna(w) else np.iinfo(np.int64).min for w in when], dtype=np.int64)
    order = np.argsort(-keys, kind="stable")[:limit]  # newest first; ties in the order above
    return pd.DataFrame({"date": [_when_words(when[i]) for i in order], "record": [event[i] for i in order],
                         "detail": [detail[i] for i in order]}, columns=["date", "record", "detail"])


VERSION_STATES = {"current": "current", "voided": "voided (left out of every analysis)", "replaced": "earlier version"}


def _when_words(value) -> str:
    if value is None or pd.isna(value):
        return ""
    at = pd.Timestamp(value)
    return f"{at:%d %b %Y}" + ("" if at == at.normalize() else f" {at:%H:%M}")


def version_rows(history: pd.DataFrame) -> pd.DataFrame:
    """visits.record_history as the page lists it: plain column names, dates and doses in words,
    columns with nothing in them left out."""
    out = pd.DataFrame({"version": history["version"].astype(int),
                        "state": history["state"].map(VERSION_STATES).fillna(history["state"]),
                        "replaced on": history["replaced_at"].map(_when_words),
                        "date and time": history["administered_at"].map(_when_words)})
    if "route" in history:
        out["route"] = history["route"].map(lambda r: vocabulary.ROUTE_NAMES.get(r, r) if isinstance(r, str) else "")
        out["dose"] = history["dose_mg_per_kg"].map(lambda d: f"{float(d):.3g} mg/kg" if pd.notna(d) else "not recorded")
        out["phase"] = history["phase"].fillna("not recorded").replace("", "not recorded")
        out["weight"] = history["weight_kg"].map(lambda w: f"{float(w):g} kg" if pd.notna(w) else "")
        out["dose in mg"] = history["dose_mg"].map(lambda d: f"{float(d):g} mg" if pd.notna(d) else "")
        out["notes"] = history["notes"].fillna("")
    else:
        out["rated by"] = history["rater"].map({"self": "patient (self-report)", "clinician": "clinician"}).fillna(
            history["rater"]).fillna("")
        items = [c for c in history.columns if c.startswith("item_")]
        out["answers"] = [" ".join("-" if pd.isna(v) else f"{int(v)}" for v in row) for row in history[items].to_numpy()]
        out["total"] = history["total"].map(lambda t: f"{float(t):g}" if pd.notna(t) else "")
        out["total from"] = history["total_method"].map(
            {"items": "the answers", "prorated": "the answers, prorated", "given": "the rater"}).fillna("")
    out["voided on"] = history["voided_at"].map(_when_words)
    out["voided by"] = history["voided_by"].fillna("")
    out["why voided"] = history["void_reason"].fillna("")
    keep = [c for c in out.columns if c in ("version", "state", "date and time") or (out[c].astype(str) != "").any()]
    return out[keep]


def voided_list(voided: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """DataAccess.voided_rows of one patient as the page lists them, newest void first."""
    rows = [(r["administered_at"], "infusion", r["voided_at"], r["voided_by"], r["void_reason"])
            for r in voided["treatments"].to_dict("records")]
    rows += [(r["administered_at"], r["instrument"], r["voided_at"], r["voided_by"], r["void_reason"])
             for r in voided["assessments"].to_dict("records")]
    rows.sort(key=lambda r: r[2], reverse=True)
    return pd.DataFrame([{"record": kind, "date and time": _when_words(at), "voided on": _when_words(on), "voided by": by,
                          "why": why} for at, kind, on, by, why in rows],
                        columns=["record", "date and time", "voided on", "voided by", "why"])


def patient_csv(record: dict[str, pd.DataFrame]) -> bytes:
    """This patient's infusions and assessments as one CSV (a `kind` column says which)."""
    t = record["treatments"].assign(kind="infusion")
    a = record["assessments"].assign(kind="assessment")
    both = pd.concat([t, a], ignore_index=True).sort_values("administered_at", kind="stable")
    cols = ["kind"] + [c for c in both.columns if c != "kind"]
    both = both[cols].copy()
    for column in both.columns:  # a spreadsheet must not run an imported '=...' as a formula
        if both[column].dtype == object or pd.api.types.is_string_dtype(both[column]):
            present = both[column].notna()
            both[column] = both[column].astype(object)
            both.loc[present, column] = escape_formula(both.loc[present, column]).to_numpy()
    buf = io.StringIO()
    both.to_csv(buf, index=False)
    return buf.getvalue().encode()
