"""Code systems and codes the FHIR import and export understand.

Sources:
- LOINC PHQ-9 panel/total/items: docs/clinical-rules.md and the US Core
  PHQ-9 examples (Observation-PHQ9-*, QuestionnaireResponse-phq-9-example);
  item 10 (functional difficulty) is LOINC 69722-7 in those examples.
- LOINC GAD-7 items 69725-0, 68509-9, 69733-4, 69734-2, 69735-9, 69689-8,
  69736-7 (items 1-7): checked against HL7's personal-health-record-format IG
  GAD-7 QuestionnaireResponse example (linkIds in that order).
- LOINC answer list LL358-3 (frequency): LA6568-5 Not at all = 0, LA6569-3
  Several days = 1, LA6570-1 More than half the days = 2, LA6571-9 Nearly
  every day = 3 (US Core PHQ-9 examples). Difficulty answers (PHQ-9 item 10):
  LA6572-7 Not difficult at all = 0, LA6573-5 Somewhat difficult = 1,
  LA6575-0 Very difficult = 2, LA6574-3 Extremely difficult = 3 (the order
  used by most published PHQ-9 Questionnaires; one source swaps the last two,
  so an ordinalValue extension, when present, wins over this table).
- PHQ-A (PHQ-9 modified for teens) total 89204-2 and panel 89206-7 are read as
  PHQ-9: same nine 0-3 items and 0-27 total.
- MADRS has no LOINC code (docs/clinical-rules.md), so a local code system is used,
  as for any scale the registry has no LOINC codes for.
- RxNorm ingredient codes: ketamine 6130, esketamine 2119365 (not checked
  against RxNorm here, which is why any medication text containing
  "ketamine" is accepted too).
- Routes: SNOMED CT route-of-administration concepts and the HL7 v3
  RouteOfAdministration codes.
"""
from __future__ import annotations

from .. import scales

LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
V3_ROUTE = "http://terminology.hl7.org/CodeSystem/v3-RouteOfAdministration"

# Our local systems (documented in docs/fhir.md).
LOCAL_INSTRUMENT = "urn:ketamine-outcomes:instrument"
LOCAL_PATIENT_ID = "urn:ketamine-outcomes:patient-id"
# Environment variable naming another identifier system for the patient id.
IDENTIFIER_ENV = "OUTCOMES_FHIR_PATIENT_SYSTEM"
EXT_BASE = "urn:ketamine-outcomes:extension:"
EXT_DIAGNOSIS = EXT_BASE + "diagnosis"
EXT_COMORBIDITIES = EXT_BASE + "comorbidities"
EXT_PRIOR_FAILED_TRIALS = EXT_BASE + "prior-failed-trials"
EXT_ENROLLED_ON = EXT_BASE + "enrolled-on"
EXT_PHASE = EXT_BASE + "phase"
# A free-form patient attribute (an extra column of the patients CSV):
# sub-extensions "name" and "value".
EXT_ATTRIBUTE = EXT_BASE + "attribute"

# Ordinal value of an answer: R4 name, and its R5 successor.
ORDINAL_EXTENSIONS = (
    "http://hl7.org/fhir/StructureDefinition/ordinalValue",
    "http://hl7.org/fhir/StructureDefinition/itemWeight",
)

BODY_WEIGHT = "29463-7"
PHQ9_DIFFICULTY = "69722-7"

ANSWER_SCORES = {
    "LA6568-5": 0, "LA6569-3": 1, "LA6570-1": 2, "LA6571-9": 3,
    "LA6572-7": 0, "LA6573-5": 1, "LA6575-0": 2, "LA6574-3": 3,
}

# The same answers by their display text, for coded answers sent without a code.
ANSWER_TEXT_SCORES = {
    "not at all": 0, "several days": 1, "more than half the days": 2, "nearly every day": 3,
    "not difficult at all": 0, "somewhat difficult": 1, "very difficult": 2, "extremely difficult": 3,
}

KETAMINE_RXNORM = {"6130": "ketamine", "2119365": "esketamine"}


def _build_codes() -> tuple[dict, dict, dict]:
    """(system, code) -> instrument for totals, panels and items: LOINC where the registry has it,
    else a local code system (MADRS, or any scale added to the registry without LOINC codes)."""
    totals: dict[tuple[str, str], str] = {}
    panels: dict[tuple[str, str], str] = {}
    items: dict[tuple[str, str], tuple[str, int]] = {}
    for scale in scales.SCALES.values():
        if scale.loinc_panel and scale.loinc_total and scale.loinc_items:
            totals[(LOINC, scale.loinc_total)] = scale.code
            panels[(LOINC, scale.loinc_panel)] = scale.code
            for number, code in enumerate(scale.loinc_items, start=1):
                items[(LOINC, code)] = (scale.code, number)
        else:
            totals[(LOCAL_INSTRUMENT, f"{scale.code}-total")] = scale.code
            panels[(LOCAL_INSTRUMENT, scale.code)] = scale.code
            for number in range(1, scale.scored_items + 1):
                items[(LOCAL_INSTRUMENT, f"{scale.code}-item-{number}")] = (scale.code, number)
    phq9 = scales.get(scales.PHQ9)  # read too: the adolescent version's total and panel, and the difficulty question
    totals[(LOINC, "89204-2")] = phq9.code  # PHQ-A total
    panels[(LOINC, "89206-7")] = phq9.code  # PHQ-A panel
    items[(LOINC, PHQ9_DIFFICULTY)] = (phq9.code, 10)
    return totals, panels, items


TOTAL_CODES, PANEL_CODES, ITEM_CODES = _build_codes()


def instruments_named() -> str:
    """'PHQ-9, MADRS or GAD-7': the registry's scales, for messages."""
    names = list(scales.codes())
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]

# A QuestionnaireResponse linkId is the bare code (LOINC or local), possibly
# written as a path ("/44250-9") the way LHC-Forms writes it.
LINK_ITEMS = {code: target for (_system, code), target in ITEM_CODES.items()}
LINK_TOTALS = {code: instrument for (_system, code), instrument in TOTAL_CODES.items()}


def item_code(instrument: str, number: int) -> tuple[str, str]:
    """(system, code) of item `number` of `instrument`, for export."""
    for key, target in ITEM_CODES.items():
        if target == (instrument, number):
            return key
    raise KeyError((instrument, number))


def total_code(instrument: str) -> tuple[str, str]:
    for key, code in TOTAL_CODES.items():
        if code == instrument and key[1] != "89204-2":
            return key
    raise KeyError(instrument)


def panel_code(instrument: str) -> tuple[str, str]:
    for key, code in PANEL_CODES.items():
        if code == instrument and key[1] != "89206-7":
            return key
    raise KeyError(instrument)


# Route codes -> our route vocabulary (vocabulary.ROUTES).
ROUTE_CODES = {
    (SNOMED, "47625008"): "iv",  # Intravenous route
    (SNOMED, "78421000"): "im",  # Intramuscular route
    (SNOMED, "46713006"): "intranasal",  # Nasal route
    (SNOMED, "26643006"): "oral",  # Oral route
    (SNOMED, "37839007"): "sublingual",  # Sublingual route
    (V3_ROUTE, "IV"): "iv",
    (V3_ROUTE, "IVINJ"): "iv",
    (V3_ROUTE, "IVINFUS"): "iv",  # not a v3 code but seen in the wild
    (V3_ROUTE, "IM"): "im",
    (V3_ROUTE, "IMINJ"): "im",
    (V3_ROUTE, "NASAL"): "intranasal",
    (V3_ROUTE, "NASINHL"): "intranasal",
    (V3_ROUTE, "NASINHLC"): "intranasal",
    (V3_ROUTE, "PO"): "oral",
    (V3_ROUTE, "SL"): "sublingual",
}
EXPORT_ROUTE_CODES = {
    "iv": ("47625008", "Intravenous route"),
    "im": ("78421000", "Intramuscular route"),
    "intranasal": ("46713006", "Nasal route"),
    "oral": ("26643006", "Oral route"),
    "sublingual": ("37839007", "Sublingual route"),
}

# Free-text route words (checked in this order: "intranasal" before "nasal"...).
ROUTE_WORDS = (
    ("sublingual", "sublingual"),
    ("intranasal", "intranasal"),
    ("nasal", "intranasal"),
    ("intramuscular", "im"),
    ("intravenous", "iv"),
    ("infusion", "iv"),
    ("oral", "oral"),
    ("by mouth", "oral"),
)
ROUTE_ABBREVIATIONS = {"iv": "iv", "im": "im", "in": "intranasal", "po": "oral", "sl": "sublingual"}


def route_from_text(text: str | None) -> str | None:
    if not text:
        return None
    low = text.strip().lower()
    if low in ROUTE_ABBREVIATIONS:
        return ROUTE_ABBREVIATIONS[low]
    for word, route in ROUTE_WORDS:
        if word in low:
            return route
    return None
