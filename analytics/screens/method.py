"""The method page: what each definition and figure means, read from the code that computes it.

Every number comes from the scale registry and OutcomeRules, so the page cannot drift from the
calculations.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from .. import outcomes, scales
from ..outcomes import DEFAULT_RULES, OutcomeRules
from .cohort import ACTIVE_DAYS, COMPLETENESS_DAYS


@dataclass(frozen=True, eq=False)
class MethodScreen:
    rules: OutcomeRules
    scales: pd.DataFrame  # one row per instrument
    rule_settings: pd.DataFrame  # every OutcomeRules setting, in words, and its value
    scale_sources: str  # where each scale's bands come from
    safety: str  # what a safety item is and when it is flagged
    remission: str  # each scale's remission cut-off and its source
    active_days: int = ACTIVE_DAYS
    completeness_days: int = COMPLETENESS_DAYS
    glossary: tuple = ()  # (term, what it means in plain words)
    min_cell: int = 0  # the reader's small-number threshold (0: patient-level role)


def method_screen(rules: OutcomeRules = DEFAULT_RULES, min_cell: int = 0) -> MethodScreen:
    tables = method_tables(rules)
    sources = "; ".join(f"{s.code} bands {s.bands_source}" for s in scales.SCALES.values() if s.bands_source)
    safety = " ".join(f"**{s.code} item {s.safety_item}** ({s.safety_meaning}) is flagged whenever it is above 0, "
                      f"whatever the total ({s.safety_source})." for s in scales.SCALES.values() if s.safety_item)
    remission = []
    for s in scales.SCALES.values():
        cut, inclusive = outcomes.remission_threshold(s.code, rules)
        source = ("esketamine trials" if s.code == scales.MADRS and inclusive else s.remission_source)
        remission.append(f"{s.code} {'≤' if inclusive else 'below'} {cut:g}" + (f" ({source})" if source else ""))
    return MethodScreen(rules, tables["scales"], tables["rules"], sources, safety, ", ".join(remission),
                        glossary=glossary(rules, min_cell), min_cell=min_cell)


def method_tables(rules: OutcomeRules = DEFAULT_RULES) -> dict[str, pd.DataFrame]:
    """The definitions pages document, read from the registry and OutcomeRules so they cannot drift."""
    scale_rows = []
    for s in scales.SCALES.values():
        cut, inclusive = outcomes.remission_threshold(s.code, rules)
        try:
            rci = f"{outcomes.reliable_change_index(s.code, rules):.1f} points"
        except ValueError:
            rci = "not defined (no published reliability in the registry)"
        scale_rows.append({
            "instrument": s.code, "name": s.name, "rated by": s.rater, "items": s.scored_items,
            "total range": f"0-{s.total_max}",
            "severity bands": "; ".join(f"{b.low}-{b.high} {b.label}" for b in s.bands),
            "remission": f"{'≤' if inclusive else '<'} {cut:g}",
            "reliable change": rci,
            "missing items": s.missing_rule,
        })
    rule_rows = [{"setting": setting, "value": value} for setting, value in rule_words(rules)]
    # one column per instrument on the page: every cell text, so a column never mixes numbers and words
    table = pd.DataFrame(scale_rows).astype(str)
    return {"scales": table, "rules": pd.DataFrame(rule_rows)}


def rule_words(rules: OutcomeRules) -> list[tuple[str, str]]:
    """Every OutcomeRules setting as a clinician would say it (never a field or code name)."""
    yes = lambda flag: "yes" if flag else "no"  # noqa: E731
    loss = {"two_consecutive": "two consecutive scores no longer meeting response",
            "madrs_relapse_22": f"MADRS {rules.madrs_relapse_score:g} or more on two consecutive scores (SUSTAIN-1)"}
    madrs = {"below_10": "below 10 (Hawley 2002)", "12_or_below": "12 or below (esketamine trials)"}
    words = {
        "baseline_window_days": ("Baseline: the last score up to this long before the first infusion",
                                 f"{rules.baseline_window_days} days"),
        "response_fall": ("Response: a fall from baseline of at least", f"{100 * rules.response_fall:.0f}%"),
        "min_baseline": ("Lowest baseline score that can show a response",
                         f"{rules.min_baseline:g} point{'' if rules.min_baseline == 1 else 's'}"),
        "madrs_remission": ("MADRS remission", madrs.get(rules.madrs_remission, rules.madrs_remission)),
        "loss_rule": ("Loss of response", loss.get(rules.loss_rule, rules.loss_rule)),
        "madrs_relapse_score": ("MADRS relapse score (when loss is judged the SUSTAIN-1 way)",
                                f"{rules.madrs_relapse_score:g} points"),
        "loss_on_infusion": ("One score out of response followed by an infusion ends the cycle", yes(rules.loss_on_infusion)),
        "rci_z": ("Reliable change: how many standard errors of a difference", f"{rules.rci_z:g} (95% confidence)"),
        "induction_max_gap_days": ("Induction, when no phase is recorded, ends at a gap longer than",
                                   f"{rules.induction_max_gap_days:g} days"),
        "induction_max_infusions": ("... or after this many infusions", f"{rules.induction_max_infusions}"),
        "cycles_after_recapture": ("Response regained after a rescue or late induction infusion starts a cycle",
                                   yes(rules.cycles_after_recapture)),
        "early_response_after": ("Early response: the fall from baseline after this many infusions",
                                 f"{rules.early_response_after}"),
    }
    return [words.get(name, (name.replace("_", " "), str(getattr(rules, name)))) for name in rules.__dataclass_fields__]


def glossary(rules: OutcomeRules = DEFAULT_RULES, min_cell: int = 0) -> tuple:
    """The statistics on the pages in plain words, for a clinician."""
    small = min_cell or 11
    return (
        ("Response", f"A score at least {100 * rules.response_fall:.0f}% below the patient's baseline (their score just "
                     "before the first infusion)."),
        ("Remission", "A score low enough to count as few or no symptoms (below 5 on PHQ-9, for example)."),
        ("Loss of response", "Two scores in a row that are no longer in response (or one, followed by an infusion)."),
        ("Response cycle", "The time from an infusion given while a patient is in response until response is lost. "
                           "A patient has one cycle per such infusion."),
        ("Known to within an interval", "We never see the day response is lost, only that it was there at one score and "
                                        "gone at the next: the loss lies between two visits (statisticians say "
                                        "interval-censored)."),
        ("Durability curve (Turnbull estimate)", "The share of response cycles still in response after so many days. It "
                                                  "is the Kaplan-Meier curve of survival studies, adapted to losses known "
                                                  "only to within an interval. It stops where too few cycles are still "
                                                  "followed to say more."),
        ("Median durability", "The number of days by which half of the response cycles have lost response. 'Not reached': "
                              "fewer than half had lost it by the last visits."),
        ("95% confidence interval (CI)", "The range the true figure most likely lies in, given how many patients it rests "
                                        "on. Wide: few patients. The rates use the Wilson interval; the curves resample "
                                        "patients many times (a bootstrap)."),
        ("p-value (log-rank test)", "How surprising the difference between groups' curves would be if the groups did not "
                                    "really differ. Below 0.05 is usually called a real difference; 'p < 0.001': very "
                                    "unlikely to be chance."),
        ("Time ratio", "From the durability model: how much longer (above 1) or shorter (below 1) response lasts with a "
                       "characteristic, the others held equal. 1.2 means 20% longer."),
        ("Funnel plot", "Each site's or clinician's rate against the clinic's, with limits that narrow as groups grow: "
                        "inside the funnel, differences are what chance alone would give."),
        ("Reliable change", "A change in score larger than the scale's own measurement error, so unlikely to be noise."),
        ("Suggested interval", "The days until a patient's chance of still being in response is expected to fall to "
                               "the target (80% by default), from their own cycles and the clinic's."),
        ("Small numbers (<11)", f"For roles that see the whole clinic, any figure resting on fewer than {small} "
                                "patients is hidden, and so is any figure that could be worked out from others by "
                                "subtraction. Such figures show as '<11', 'not shown', a bound such as 'at least "
                                "90%', or a blank bar."),
    )
