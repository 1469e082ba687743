"""One registry of rating instruments.

A scale is declared once here (what it is); `score_items` is the single backend
that checks and totals answers against a declaration. Adding an instrument is
one `Scale(...)` entry in `SCALES`: the store (its instruments table, up to
store.STORE_ITEM_COLUMNS items), import, export, FHIR codes, outcome definitions,
charts and pages all read from this registry: its name, items and their range,
bands, colour, safety item and sources. Code names an instrument only through
`PRIMARY` (the routine self-report the due list and headline use) or, where a
published rule belongs to one instrument, its code constant (`MADRS`).

Sources (docs/clinical-rules.md):
- PHQ-9: Kroenke, Spitzer & Williams 2001 (bands); NHS Data Dictionary
  (prorate the mean of answered items when one or two are missing).
- GAD-7: Spitzer et al. 2006 (bands).
- MADRS: Montgomery & Asberg 1979; bands after Snaith et al. 1986.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

PHQ9, MADRS, GAD7 = "PHQ-9", "MADRS", "GAD-7"
# The routine self-report: the due list's latest score, the headline durability, the suggested intervals.
PRIMARY = PHQ9


@dataclass(frozen=True)
class Band:
    low: int
    high: int
    label: str


@dataclass(frozen=True)
class Scale:
    code: str
    name: str
    rater: str  # who normally rates it: "self" or "clinician"
    scored_items: int  # items 1..scored_items make the total
    item_max: int
    bands: tuple[Band, ...]
    # Items answered but not part of the total (PHQ-9 item 10: functional difficulty), and their range.
    extra_items: tuple[int, ...] = ()
    extra_item_range: tuple[int, int] | None = None
    # How many scored items may be missing and still give a (prorated) total.
    max_missing_prorated: int = 0
    remission_below: float = 0.0
    aliases: tuple[str, ...] = ()
    safety_item: int | None = None
    item_labels: tuple[str, ...] = ()
    item_short: tuple[str, ...] = ()  # a few words per item for chart labels; item_labels when empty
    loinc_panel: str | None = None
    loinc_total: str | None = None
    loinc_items: tuple[str, ...] = ()
    item_min: int = 0
    # Published reliability used for the reliable change index (see outcomes.py).
    reliability: float | None = None
    reliability_source: str = ""
    reference_sd: float | None = None
    reference_sd_source: str = ""
    missing_rule: str = ""
    anchors: tuple[tuple[str, ...], ...] = field(default=(), repr=False)
    anchor_scores: tuple[int, ...] = ()  # the scores `anchors` describe; the others lie between them
    item_wording: tuple[str, ...] = field(default=(), repr=False)  # a rater's description of each item
    measures: str = "depression"  # what it measures: durability of response is judged on depression scales
    colour: str = "#7f7f7f"  # its line in charts (mid-tone: reads on light and dark themes)
    reference: str = ""  # the instrument's own publication
    bands_source: str = ""
    remission_source: str = ""
    safety_meaning: str = ""  # what a positive safety item means, in a clinician's words
    safety_source: str = ""

    def short_label(self, item: int) -> str:
        """Item `item`'s short name for a chart label (its full wording is `item_labels`)."""
        names = self.item_short or self.item_labels
        return names[item - 1] if item <= len(names) else f"item {item}"

    @property
    def safety_column(self) -> str | None:
        """The item column whose answer above 0 is a safety flag whatever the total (None: no such item)."""
        return None if self.safety_item is None else f"item_{self.safety_item}"

    @property
    def total_max(self) -> int:
        return self.scored_items * self.item_max

    @property
    def all_items(self) -> tuple[int, ...]:
        return tuple(range(1, self.scored_items + 1)) + self.extra_items

    def item_range(self, item: int) -> tuple[int, int]:
        if item in self.extra_items and self.extra_item_range is not None:
            return self.extra_item_range
        return (self.item_min, self.item_max)

    def band(self, total: float | None) -> str | None:
        if total is None or (isinstance(total, float) and math.isnan(total)):
            return None
        for b in self.bands:
            if b.low <= total <= b.high:
                return b.label
        # Prorated totals can fall between integer bands: round to the band below.
        for b in reversed(self.bands):
            if total >= b.low:
                return b.label
        return None


PHQ9_ITEM_LABELS = (
    "Little interest or pleasure in doing things",
    "Feeling down, depressed, or hopeless",
    "Trouble falling or staying asleep, or sleeping too much",
    "Feeling tired or having little energy",
    "Poor appetite or overeating",
    "Feeling bad about yourself, or that you are a failure",
    "Trouble concentrating on things",
    "Moving or speaking slowly, or being fidgety or restless",
    "Thoughts that you would be better off dead, or of hurting yourself",
    "How difficult have these problems made it to work, take care of things, or get along with people",
)

# Short names of the items, for chart labels (the full wording above shows on hover): the
# symptom each item asks about, as clinicians name them (PHQ-9 items follow the DSM criteria).
PHQ9_ITEM_SHORT = ("Little interest or pleasure", "Feeling down", "Sleep", "Tiredness", "Appetite",
                   "Feeling a failure", "Concentration", "Slowed or restless", "Better off dead / self-harm",
                   "Difficulty functioning")
GAD7_ITEM_SHORT = ("Nervous or on edge", "Cannot stop worrying", "Worrying too much", "Trouble relaxing",
                   "Restless", "Irritable", "Afraid something awful")

GAD7_ITEM_LABELS = (
    "Feeling nervous, anxious, or on edge",
    "Not being able to stop or control worrying",
    "Worrying too much about different things",
    "Trouble relaxing",
    "Being so restless that it is hard to sit still",
    "Becoming easily annoyed or irritable",
    "Feeling afraid, as if something awful might happen",
)

MADRS_ITEM_LABELS = (
    "Apparent sadness",
    "Reported sadness",
    "Inner tension",
    "Reduced sleep",
    "Reduced appetite",
    "Concentration difficulties",
    "Lassitude",
    "Inability to feel",
    "Pessimistic thoughts",
    "Suicidal thoughts",
)

# MADRS item wording and anchor descriptions for the scores 0, 2, 4 and 6; 1, 3 and 5 lie
# between the neighbouring anchors. Source: Montgomery SA, Asberg M. A new depression scale
# designed to be sensitive to change. Br J Psychiatry 1979;134:382-389 (the rating sheet).
MADRS_ANCHOR_SCORES = (0, 2, 4, 6)
MADRS_ITEM_WORDING = (
    "Representing despondency, gloom and despair (more than just ordinary transient low spirits), reflected in "
    "speech, facial expression and posture. Rate by depth and inability to brighten up.",
    "Representing reports of depressed mood, regardless of whether it is reflected in appearance or not. Includes "
    "low spirits, despondency or the feeling of being beyond help and without hope. Rate according to intensity, "
    "duration and the extent to which the mood is reported to be influenced by events.",
    "Representing feelings of ill-defined discomfort, edginess, inner turmoil, mental tension mounting to either "
    "panic, dread or anguish. Rate according to intensity, frequency, duration and the extent of reassurance called for.",
    "Representing the experience of reduced duration or depth of sleep compared to the subject's own normal pattern when well.",
    "Representing the feeling of a loss of appetite compared with when well. Rate by loss of desire for food or the "
    "need to force oneself to eat.",
    "Representing difficulties in collecting one's thoughts mounting to incapacitating lack of concentration. Rate "
    "according to intensity, frequency and degree of incapacity produced.",
    "Representing a difficulty getting started or slowness initiating and performing everyday activities.",
    "Representing the subjective experience of reduced interest in the surroundings, or activities that normally give "
    "pleasure. The ability to react with adequate emotion to circumstances or people is reduced.",
    "Representing thoughts of guilt, inferiority, self-reproach, sinfulness, remorse and ruin.",
    "Representing the feeling that life is not worth living, that a natural death would be welcome, suicidal thoughts, "
    "and preparations for suicide. Suicidal attempts should not in themselves influence the rating.",
)
MADRS_ANCHORS = (
    ("No sadness.", "Looks dispirited but does brighten up without difficulty.",
     "Appears sad and unhappy most of the time.", "Looks miserable all the time. Extremely despondent."),
    ("Occasional sadness in keeping with the circumstances.", "Sad or low but brightens up without difficulty.",
     "Pervasive feelings of sadness or gloominess. The mood is still influenced by external circumstances.",
     "Continuous or unvarying sadness, misery or despondency."),
    ("Placid. Only fleeting inner tension.", "Occasional feelings of edginess and ill-defined discomfort.",
     "Continuous feelings of inner tension or intermittent panic which the patient can only master with some difficulty.",
     "Unrelenting dread or anguish. Overwhelming panic."),
    ("Sleeps as usual.", "Slight difficulty dropping off to sleep or slightly reduced, light or fitful sleep.",
     "Sleep reduced or broken by at least two hours.", "Less than two or three hours sleep."),
    ("Normal or increased appetite.", "Slightly reduced appetite.", "No appetite. Food is tasteless.",
     "Needs persuasion to eat at all."),
    ("No difficulties in concentrating.", "Occasional difficulties in collecting one's thoughts.",
     "Difficulties in concentrating and sustaining thought which reduces ability to read or hold a conversation.",
     "Unable to read or converse without great difficulty."),
    ("Hardly any difficulty in getting started. No sluggishness.", "Difficulties in starting activities.",
     "Difficulties in starting simple routine activities, which are carried out with effort.",
     "Complete lassitude. Unable to do anything without help."),
    ("Normal interest in the surroundings and in other people.", "Reduced ability to enjoy usual interests.",
     "Loss of interest in the surroundings. Loss of feelings for friends and acquaintances.",
     "The experience of being emotionally paralysed, inability to feel anger, grief or pleasure and a complete or "
     "even painful failure to feel for close relatives and friends."),
    ("No pessimistic thoughts.", "Fluctuating ideas of failure, self-reproach or self-depreciation.",
     "Persistent self-accusations, or definite but still rational ideas of guilt or sin. Increasingly pessimistic "
     "about the future.", "Delusions of ruin, remorse or unredeemable sin. Self-accusations which are absurd and unshakable."),
    ("Enjoys life or takes it as it comes.", "Weary of life. Only fleeting suicidal thoughts.",
     "Probably better off dead. Suicidal thoughts are common, and suicide is considered as a possible solution, but "
     "without specific plans or intention.",
     "Explicit plans for suicide when there is an opportunity. Active preparations for suicide."),
)

SCALES: dict[str, Scale] = {
    s.code: s
    for s in (
        Scale(
            code="PHQ-9",
            name="Patient Health Questionnaire-9",
            rater="self",
            scored_items=9,
            item_max=3,
            extra_items=(10,),
            extra_item_range=(0, 3),
            bands=(
                Band(0, 4, "minimal"),
                Band(5, 9, "mild"),
                Band(10, 14, "moderate"),
                Band(15, 19, "moderately severe"),
                Band(20, 27, "severe"),
            ),
            max_missing_prorated=2,
            remission_below=5,
            aliases=("PHQ9", "PHQ 9", "PHQ_9", "PHQ-9"),
            safety_item=9,
            safety_meaning="thoughts of being better off dead or self-harm",
            safety_source="Corson 2004",
            colour="#636efa",
            reference="Kroenke, Spitzer & Williams 2001",
            bands_source="Kroenke, Spitzer & Williams 2001",
            remission_source="McInnes 2022",
            # RCI = 1.96 * 5.41 * sqrt(2 * (1 - 0.84)) = 6.0 points, the reliable-change
            # criterion used for PHQ-9 by NHS Talking Therapies/IAPT (Gyani et al. 2013,
            # Behav Res Ther 51:597). r is the 48-hour test-retest reliability of
            # Kroenke et al. 2001; the SD is the one that r and the published 6-point
            # criterion imply (no single source reports both; verify before quoting).
            reliability=0.84,
            reliability_source="Kroenke, Spitzer & Williams 2001, J Gen Intern Med 16:606 (test-retest, 48 h)",
            reference_sd=5.41,
            reference_sd_source="implied by the 6-point PHQ-9 reliable-change criterion, Gyani et al. 2013 (IAPT)",
            item_labels=PHQ9_ITEM_LABELS,
            item_short=PHQ9_ITEM_SHORT,
            loinc_panel="44249-1",
            loinc_total="44261-6",
            loinc_items=(
                "44250-9", "44255-8", "44259-0", "44254-1", "44251-7",
                "44258-2", "44252-5", "44253-3", "44260-8",
            ),
            missing_rule=(
                "One or two items missing: the total is the mean of the answered items "
                "times nine, rounded to the nearest whole point (NHS Data Dictionary). "
                "More than two missing: no total."
            ),
        ),
        Scale(
            code="MADRS",
            name="Montgomery-Asberg Depression Rating Scale",
            rater="clinician",
            scored_items=10,
            item_max=6,
            bands=(
                Band(0, 6, "normal"),
                Band(7, 19, "mild"),
                Band(20, 34, "moderate"),
                Band(35, 60, "severe"),
            ),
            max_missing_prorated=0,
            remission_below=10,
            aliases=("MADRS", "MADRS-10", "MADRS10"),
            # RCI = 1.96 * 6.0 * sqrt(2 * (1 - 0.93)) = 4.4 points.
            reliability=0.93,
            reliability_source="Williams & Kobak 2008, Br J Psychiatry 192:52 (SIGMA test-retest ICC 0.93)",
            reference_sd=6.0,
            reference_sd_source=("baseline SD of about 5-6 points in treatment-resistant depression trials "
                                 "(e.g. SUSTAIN-1, Murrough 2013); approximate, verify before quoting"),
            item_labels=MADRS_ITEM_LABELS,
            anchors=MADRS_ANCHORS,
            anchor_scores=MADRS_ANCHOR_SCORES,
            item_wording=MADRS_ITEM_WORDING,
            colour="#ab63fa",
            reference="Montgomery & Asberg 1979",
            bands_source="Snaith et al. 1986",
            remission_source="Hawley 2002",
            missing_rule=(
                "No published proration rule exists for MADRS, so none is applied: with "
                "any item missing the total must be given by the rater, and it must be "
                "reachable from the answered items."
            ),
        ),
        Scale(
            code="GAD-7",
            name="Generalized Anxiety Disorder-7",
            rater="self",
            scored_items=7,
            item_max=3,
            bands=(
                Band(0, 4, "minimal"),
                Band(5, 9, "mild"),
                Band(10, 14, "moderate"),
                Band(15, 21, "severe"),
            ),
            max_missing_prorated=1,
            remission_below=5,
            aliases=("GAD7", "GAD 7", "GAD_7", "GAD-7"),
            # RCI = 1.96 * 3.50 * sqrt(2 * (1 - 0.83)) = 4.0 points, the IAPT GAD-7
            # reliable-change criterion (Gyani et al. 2013); population SD 3.41 (Lowe 2008).
            reliability=0.83,
            reliability_source="Spitzer et al. 2006, Arch Intern Med 166:1092 (test-retest ICC 0.83)",
            reference_sd=3.50,
            reference_sd_source="implied by the 4-point GAD-7 criterion (Gyani et al. 2013); cf. SD 3.41, Lowe et al. 2008 Med Care 46:266",
            item_labels=GAD7_ITEM_LABELS,
            item_short=GAD7_ITEM_SHORT,
            loinc_panel="69737-5",
            loinc_total="70274-6",
            loinc_items=("69725-0", "68509-9", "69733-4", "69734-2", "69735-9", "69689-8", "69736-7"),
            measures="anxiety",
            colour="#00a2a8",
            reference="Spitzer et al. 2006",
            bands_source="Spitzer et al. 2006",
            remission_source="Spitzer 2006",
            missing_rule=(
                "One item missing: prorated from the mean of the other six, rounded "
                "(the PHQ-9 rule scaled to seven items; our choice, no published rule). "
                "More missing: no total."
            ),
        ),
    )
}


def _key(text: str) -> str:
    return "".join(ch for ch in text.upper() if ch.isalnum())


_ALIASES = {_key(alias): s.code for s in SCALES.values() for alias in (s.code, *s.aliases)}


def resolve(name: str | None) -> Scale | None:
    """The scale a (possibly variant) instrument name refers to, or None."""
    if name is None:
        return None
    code = _ALIASES.get(_key(str(name)))
    return SCALES[code] if code else None


def get(code: str) -> Scale:
    scale = resolve(code)
    if scale is None:
        raise KeyError(f"unknown instrument {code!r}; known: {', '.join(SCALES)}")
    return scale


@dataclass(frozen=True)
class Scored:
    total: float | None
    method: str  # "items", "prorated", "given" or "none"
    problems: tuple[tuple[str, str], ...]  # (column, reason)


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def score_items(
    scale: Scale, items: Mapping[int, float | None], given_total: float | None = None
) -> Scored:
    """Check answers against `scale` and compute the total (one assessment).

    `items` maps item number (1-based) to the answer or None. Problems are
    (column, reason) pairs; a row with problems must not be stored. A thin
    wrapper over `score_frame`, which holds the only copy of the rule.
    """
    row = {f"item_{n}": (np.nan if v is None else float(v)) for n, v in items.items()}
    frame = pd.DataFrame([row], dtype="float64") if row else pd.DataFrame(index=[0])
    given = pd.Series([np.nan if given_total is None else float(given_total)], dtype="float64")
    result = score_frame(scale, frame, given).iloc[0]
    if isinstance(result["problem_column"], str):
        return Scored(None, "none", ((result["problem_column"], result["problem_reason"]),))
    total = result["total"]
    return Scored(None if pd.isna(total) else float(total), result["method"], ())


def score_frame(scale: Scale, items: pd.DataFrame, given_total: pd.Series) -> pd.DataFrame:
    """Check and total many assessments of one scale at once.

    `items` has columns named `item_N` (any subset, float, NaN = not answered);
    `given_total` is the rater's total or NaN, aligned with `items` by position.
    Returns, on the same index: total (NaN when none), method ("items",
    "prorated", "given" or "none"), and the first problem found as
    problem_column / problem_reason (None when the row is fine). A row with a
    problem has no total and must not be stored.
    """
    index = items.index
    scored = score_columns(scale, {column: items[column].to_numpy(dtype="float64", na_value=np.nan) for column in items.columns},
                           np.asarray(given_total, dtype="float64"))
    fine = np.full(len(index), None, dtype=object)
    return pd.DataFrame(
        {"total": pd.Series(scored.total, index=index),
         "method": pd.Series(METHODS[scored.method], index=index, dtype=object),
         "problem_column": pd.Series(fine if scored.problem_column is None else scored.problem_column, index=index, dtype=object),
         "problem_reason": pd.Series(fine if scored.problem_reason is None else scored.problem_reason, index=index, dtype=object)},
        index=index,
    )


@dataclass(frozen=True)
class ScoredColumns:
    """`score_columns`' answer, one entry per row."""
    total: np.ndarray  # float64, NaN when none
    method: np.ndarray  # index into METHODS
    problem_column: np.ndarray | None  # object: the first problem's column, None when the row is fine
    problem_reason: np.ndarray | None  # object (both None when every row is fine)
    ok: np.ndarray  # bool: no problem


def score_columns(scale: Scale, columns: Mapping[str, np.ndarray], given: np.ndarray) -> ScoredColumns:
    """`score_frame` on float64 arrays (`item_N` -> answers, NaN = not answered; `given` the rater's totals):
    the import calls it for each instrument's rows without making frames of them.

    Whole numpy columns; a reason's text is built only for the rows it names (an import checks
    millions of rows, nearly all fine).
    """
    given = np.asarray(given, dtype="float64")
    n_rows = len(given)
    found: list[np.ndarray] = []  # problem_column and problem_reason, made at the first problem
    ok = np.ones(n_rows, dtype=bool)

    def flag(mask: np.ndarray, column: str, reasons: str | Callable[[np.ndarray], list[str]]) -> None:
        mask = mask & ok
        if not mask.any():
            return
        if not found:
            found.extend((np.full(n_rows, None, dtype=object), np.full(n_rows, None, dtype=object)))
        problem_column, problem_reason = found
        rows = np.flatnonzero(mask)
        ok[rows] = False
        problem_column[rows] = column
        if isinstance(reasons, str):
            problem_reason[rows] = reasons
        else:
            texts = np.empty(len(rows), dtype=object)
            texts[:] = reasons(rows)
            problem_reason[rows] = texts

    allowed = set(scale.all_items)

    def item_number(column: str) -> int:
        return int(column.split("_", 1)[1])

    answers: dict[str, np.ndarray] = {}  # column -> where answered
    with np.errstate(invalid="ignore"):
        for column in sorted(columns, key=item_number):
            number = item_number(column)
            values = columns[column]
            present = answers[column] = ~np.isnan(values)
            if number not in allowed:
                flag(present, column, f"{scale.code} has no item {number}; leave it empty")
                continue
            lo, hi = scale.item_range(number)
            bad = present & ((values != np.floor(values)) | (values < lo) | (values > hi))
            if bad.any():
                text = f"{scale.code} item {number} must be a whole number {lo}-{hi}, got "
                flag(bad, column, lambda rows, text=text, values=values: [text + f"{values[r]:g}" for r in rows])
        has_given = ~np.isnan(given)
        bad_total = has_given & ((given < 0) | (given > scale.total_max))
        if bad_total.any():
            text = f"{scale.code} total must be 0-{scale.total_max}, got "
            flag(bad_total, "total", lambda rows: [text + f"{given[r]:g}" for r in rows])

    k = scale.scored_items
    # Counted and summed a column at a time (no rows x items matrix and nansum over it): a row whose sum is
    # used has whole answers within range, which add up exactly in any order.
    answered = np.zeros(n_rows, dtype=np.int64)
    answered_sum = np.zeros(n_rows)
    with np.errstate(invalid="ignore"):  # inf + -inf: such a row was refused above
        for number in range(1, k + 1):
            values = columns.get(f"item_{number}")
            if values is not None:
                present = answers[f"item_{number}"]
                answered += present
                np.add(answered_sum, values, out=answered_sum, where=present)
    missing = k - answered
    with np.errstate(invalid="ignore", divide="ignore"):
        prorated = np.floor(answered_sum / answered * k + 0.5)
    full = missing == 0
    can_prorate = (answered > 0) & (missing > 0) & (missing <= scale.max_missing_prorated)
    total = np.where(full, answered_sum, np.where(can_prorate, prorated, np.nan))
    low = answered_sum

    with np.errstate(invalid="ignore"):
        disagree = has_given & full & (given != total)
        if disagree.any():
            flag(disagree, "total", lambda rows: [f"total {given[r]:g} disagrees with the items, which sum to {total[r]:g}"
                                                  for r in rows])
        disagree = has_given & can_prorate & (given != total)
        if disagree.any():
            flag(disagree, "total", lambda rows: [f"total {given[r]:g} disagrees with the items, which prorate to "
                                                  f"{total[r]:g} ({missing[r]} missing)" for r in rows])
        only_given = has_given & ~full & ~can_prorate
        high = low + missing * scale.item_max
        unreachable = only_given & ((given < low) | (given > high))
        if unreachable.any():
            flag(unreachable, "total", lambda rows: [f"total {given[r]:g} cannot come from the answered items (possible "
                                                     f"{low[r]:g}-{high[r]:g})" for r in rows])
    total = np.where(only_given, given, total)
    # 0 items, 1 prorated, 2 given, 3 none
    method = np.where(full, 0, np.where(can_prorate, 1, np.where(only_given, 2, 3)))

    no_total = np.isnan(total)
    if no_total.any():
        flag(no_total & (answered == 0), "total", f"no items and no total for {scale.code}")
        flag(no_total, "total", lambda rows: [f"{missing[r]} of {k} {scale.code} items missing and no total given; "
                                              f"{scale.missing_rule}" for r in rows])

    failed = ~ok
    total = np.where(failed, np.nan, total).astype("float64")
    method = np.where(failed, 3, method)
    return ScoredColumns(total, method, *(found or (None, None)), ok)


METHODS = np.array(["items", "prorated", "given", "none"], dtype=object)



def max_items() -> int:
    """The most items any registered scale has: the CSV format's columns item_1 .. item_N."""
    return max(max(s.all_items) for s in SCALES.values())


def item_columns(n: int | None = None) -> list[str]:
    return [f"item_{i}" for i in range(1, (max_items() if n is None else n) + 1)]


def band_table() -> list[dict]:
    """Severity bands of every scale, for charts and documentation."""
    return [
        {"instrument": s.code, "low": b.low, "high": b.high, "label": b.label}
        for s in SCALES.values()
        for b in s.bands
    ]


def codes() -> Sequence[str]:
    return tuple(SCALES)


def self_rated() -> tuple[str, ...]:
    """The scales a patient fills in alone (a self-report link may ask for these)."""
    return tuple(s.code for s in SCALES.values() if s.rater == "self")


def clinician_rated() -> tuple[str, ...]:
    return tuple(s.code for s in SCALES.values() if s.rater == "clinician")


def measuring(construct: str) -> tuple[str, ...]:
    """The scales that measure `construct` ("depression", "anxiety")."""
    return tuple(s.code for s in SCALES.values() if s.measures == construct)


def register(scale: Scale) -> Scale:
    """Add an instrument (or replace one by code) in the running registry.

    The built-in instruments are the entries of `SCALES` above; adding one to the product is one
    more entry there. This is for a plugin or a test that adds one at start-up, before the
    import, store and pages are loaded (they read the registry's item columns when they load).
    """
    if not scale.all_items or scale.scored_items < 1:
        raise ValueError(f"{scale.code}: a scale needs at least one scored item")
    SCALES[scale.code] = scale
    _ALIASES.update({_key(alias): scale.code for alias in (scale.code, *scale.aliases)})
    return scale
