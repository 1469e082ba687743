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
    rule_settings: pd.DataFrame  # every OutcomeRules field and its value
    scale_sources: str  # where each scale's bands come from
    safety: str  # what a safety item is and when it is flagged
    remission: str  # each scale's remission cut-off and its source
    active_days: int = ACTIVE_DAYS
    completeness_days: int = COMPLETENESS_DAYS


def method_screen(rules: OutcomeRules = DEFAULT_RULES) -> MethodScreen:
    tables = method_tables(rules)
    sources = "; ".join(f"{s.code} bands {s.bands_source}" for s in scales.SCALES.values() if s.bands_source)
    safety = " ".join(f"**{s.code} item {s.safety_item}** ({s.safety_meaning}) is flagged whenever it is above 0, "
                      f"whatever the total ({s.safety_source})." for s in scales.SCALES.values() if s.safety_item)
    remission = []
    for s in scales.SCALES.values():
        cut, inclusive = outcomes.remission_threshold(s.code, rules)
        source = ("esketamine trials" if s.code == scales.MADRS and inclusive else s.remission_source)
        remission.append(f"{s.code} {'≤' if inclusive else 'below'} {cut:g}" + (f" ({source})" if source else ""))
    return MethodScreen(rules, tables["scales"], tables["rules"], sources, safety, ", ".join(remission))


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
    rule_rows = [{"rule": name, "value": str(getattr(rules, name))} for name in rules.__dataclass_fields__]
    return {"scales": pd.DataFrame(scale_rows), "rules": pd.DataFrame(rule_rows)}
