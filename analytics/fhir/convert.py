"""Turn validated FHIR resources into the raw-string row tables the CSV import uses.

The output is exactly what a CSV file would have given (`patients`,
`treatments`, `assessments` frames of strings with the CSV column names, plus
`_line` and `_raw`), so the same validation (ranges, dates, unknown patients,
duplicates) applies downstream in `analytics.ingest`. Only problems that are
FHIR-specific are decided here: wrong resource, unknown code, missing
subject, unusable date, a medication that is not ketamine, conflicting
answers. Those become `Reject`s carrying the element path.

Several resources may describe one assessment (a US Core PHQ-9 panel with
`hasMember` item Observations, a QuestionnaireResponse and the Observations
derived from it): they are merged on (patient, instrument, time). Agreeing
copies merge silently; a disagreement rejects the later resource.
"""
from __future__ import annotations

import datetime as dt
import re
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Iterable

import pandas as pd

from .. import scales
from . import codes
from .parse import Located, Reject

PATIENT_COLUMNS = [
    "patient_id", "site", "clinician", "birth_year", "sex", "diagnosis",
    "comorbidities", "prior_failed_trials", "enrolled_on",
]
TREATMENT_COLUMNS = ["patient_id", "administered_on", "route", "dose_mg_per_kg", "phase"]
ASSESSMENT_COLUMNS = ["patient_id", "instrument", "administered_on", "rater", *scales.item_columns(), "total"]
EXTRA = ["_file", "_line", "_raw"]

SEX = {"female": "F", "male": "M", "other": "X", "unknown": "U"}
SKIPPED_OBSERVATION_STATUS = ("entered-in-error", "cancelled")
SKIPPED_ADMINISTRATION_STATUS = ("not-done", "entered-in-error")
ACCEPTED_PROCEDURE_STATUS = ("completed", "in-progress")


class Problem(Exception):
    """A resource cannot be imported: (element path, reason)."""

    def __init__(self, column: str, reason: str):
        super().__init__(reason)
        self.column = column
        self.reason = reason


@dataclass
class Conversion:
    tables: dict[str, pd.DataFrame]
    rejects: list[Reject]
    # Things worth telling the operator that are not rejections (e.g. a dose
    # in mg with no body weight to convert it).
    notes: list[tuple[str, str, str]] = field(default_factory=list)  # (file, table kind, message)
    supporting: int = 0  # Medication and body-weight resources used, not stored
    # Patients whose enrolled_on was derived from their data (a stored date wins).
    derived_enrolment: set[str] = field(default_factory=set)


# --- small readers -----------------------------------------------------------

def _number_text(value: Any) -> str:
    """A number as the CSV would write it: 12 not 12.0, 0.5 not 0.50."""
    if isinstance(value, Decimal):
        value = value.normalize()
        return format(value, "f") if value != value.to_integral() else str(int(value))
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)


def when_text(value: Any, column: str) -> str:
    """A FHIR date/dateTime as the CSV's administered_on: the wall-clock time as
    written (the offset is dropped: a visit at 20:50 local stays on its day)."""
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=None, microsecond=0).isoformat(sep=" ")
    if isinstance(value, dt.date):
        return value.isoformat()
    if value is None:
        raise Problem(column, "no date: the assessment or administration time is required")
    raise Problem(column, f"date {value!r} is not a full date (year-month-day needed)")


def _codings(concept) -> list:
    return list(getattr(concept, "coding", None) or []) if concept is not None else []


def _concept_text(concept) -> str:
    if concept is None:
        return ""
    parts = [concept.text or ""] + [c.display or "" for c in _codings(concept)]
    return " ".join(p for p in parts if p)


def _ordinal(element) -> float | None:
    for ext in getattr(element, "extension", None) or []:
        if ext.url in codes.ORDINAL_EXTENSIONS:
            for attr in ("valueDecimal", "valueInteger"):
                value = getattr(ext, attr, None)
                if value is not None:
                    return float(value)
    return None


def coding_score(coding) -> float | None:
    """A score from an answer Coding: its ordinalValue, a LOINC answer code, a
    numeric code, or the LOINC answer's display text."""
    ordinal = _ordinal(coding)
    if ordinal is not None:
        return ordinal
    if coding.code in codes.ANSWER_SCORES:
        return float(codes.ANSWER_SCORES[coding.code])
    try:
        return float(coding.code)
    except (TypeError, ValueError):
        pass
    return _display_score(coding.display)


def _display_score(text: str | None) -> float | None:
    if not text:
        return None
    score = codes.ANSWER_TEXT_SCORES.get(" ".join(text.lower().split()))
    return None if score is None else float(score)


def value_score(holder, column: str, what: str) -> float | None:
    """The numeric answer of an Observation, a component or a QR answer; None
    when there is no answer; Problem when there is one that is not a score."""
    ordinal = _ordinal(holder)
    if ordinal is not None:
        return ordinal
    for attr in ("valueInteger", "valueDecimal"):
        value = getattr(holder, attr, None)
        if value is not None:
            return float(value)
    quantity = getattr(holder, "valueQuantity", None)
    if quantity is not None and quantity.value is not None:
        return float(quantity.value)
    text = getattr(holder, "valueString", None)
    if text is not None:
        try:
            return float(text)
        except ValueError:
            raise Problem(column + ".valueString", f"{what}: answer {text!r} is not a number") from None
    coding = getattr(holder, "valueCoding", None)
    concept = getattr(holder, "valueCodeableConcept", None)
    concepts = [coding] if coding is not None else _codings(concept)
    for c in concepts:
        score = coding_score(c)
        if score is not None:
            return score
    if concept is not None and _display_score(concept.text) is not None:
        return _display_score(concept.text)
    if concepts or concept is not None:
        found = ", ".join(f"{c.system or ''}|{c.code or ''}" for c in concepts) or repr(concept.text)
        raise Problem(column, f"{what}: answer {found} has no known score")
    return None


_REFERENCE = re.compile(r"(?:^|/)(?P<type>[A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")


def _reference_id(reference: str | None, resource_type: str) -> str | None:
    """The id in a relative or absolute reference ("Patient/x", "https://ehr/fhir/Patient/x/_history/2")."""
    match = _REFERENCE.search(reference or "")
    if match and match.group("type") == resource_type:
        return match.group("id")
    return None


def _reference_label(ref) -> str | None:
    """Site/clinician from an Organization/Practitioner reference: its display, else its id."""
    if ref is None:
        return None
    if ref.display:
        return ref.display
    if ref.reference and "/" in ref.reference:
        return ref.reference.rstrip("/").split("/")[-1]
    return None


def _extension_value(model, url: str) -> str:
    for ext in getattr(model, "extension", None) or []:
        if ext.url == url:
            for attr in ("valueString", "valueCode", "valueInteger", "valueDate", "valueDecimal"):
                value = getattr(ext, attr, None)
                if value is not None:
                    return value.isoformat() if isinstance(value, dt.date) else _number_text(value)
    return ""


def _attributes(patient) -> dict[str, str]:
    """Patient attributes (extra patients-CSV columns) carried as our extension."""
    out: dict[str, str] = {}
    for ext in patient.extension or []:
        if ext.url != codes.EXT_ATTRIBUTE:
            continue
        parts = {sub.url: sub.valueString for sub in ext.extension or []}
        name = (parts.get("name") or "").strip().lower()
        if name and not name.startswith("_") and name not in PATIENT_COLUMNS:
            out[name] = parts.get("value") or ""
    return out


# --- the converter -------------------------------------------------------------
#
# Two phases, so a large bulk export never holds every validated model at once
# (a model is ~30 kB): `add` extracts what matters from each resource as it is
# validated and drops the model; `finish` resolves references between
# resources (subjects, Medications, body weights) and merges assessments.

@dataclass
class _Subject:
    reference: str | None
    system: str | None
    value: str | None
    column: str


def _subject(ref, column: str) -> _Subject | None:
    if ref is None:
        return None
    ident = ref.identifier
    return _Subject(ref.reference, getattr(ident, "system", None), getattr(ident, "value", None), column)


@dataclass
class _Source:
    """Where an extracted resource came from (for rows and rejects)."""

    file_name: str
    line: int
    raw: str
    type: str
    label: str


@dataclass
class _Score:
    source: _Source
    subject: _Subject | None
    when: str
    # instrument -> (items, total); a QuestionnaireResponse may hold several
    answers: dict[str, tuple[dict[int, float | None], float | None]]
    rater: str
    empty_panel: str | None = None  # the panel's instrument when it had no answers


@dataclass
class _Weight:
    source: _Source
    subject: _Subject | None
    when: str
    kg: float


@dataclass
class _Treatment:
    source: _Source
    subject: _Subject | None
    row: dict  # administered_on, route, phase, dose_mg_per_kg (may be pending)
    dose_mg: float | None = None  # a dose in mg waiting for a body weight
    medication_ref: str | None = None  # a bundled Medication still to check
    medication_text: str = ""
    esketamine: bool = False


@dataclass
class _Assessment:
    patient_id: str
    instrument: str
    when: str
    sources: list[_Source] = field(default_factory=list)
    items: dict[int, tuple[float | None, int]] = field(default_factory=dict)  # item -> (value, line)
    total: tuple[float, int] | None = None
    rater: str = ""
    empty_panels: list[_Source] = field(default_factory=list)


class Converter:
    """Converts the resources of one import (one or more files) into row tables."""

    def __init__(self, identifier_system: str | None = None):
        self.identifier_system = identifier_system or codes.LOCAL_PATIENT_ID
        self.rejects: list[Reject] = []
        self.notes: list[tuple[str, str, str]] = []
        self.supporting = 0
        self._seen: dict[str, tuple[_Source, str]] = {}  # "Type/id" or fullUrl -> first source
        self._patients: list[dict] = []
        self._patient_ids: dict[str, str] = {}  # "Patient/x" or fullUrl -> patient_id
        self._medications: dict[str, tuple[bool, bool, str]] = {}  # ref -> (ketamine, esketamine, text)
        self._records: list = []  # _Score, _Weight, _Treatment in file order

    def _reject(self, source: _Source, column: str, reason: str) -> None:
        self.rejects.append(Reject(source.file_name, source.line, column, f"{source.label}: {reason}", source.raw, source.type))

    # -- phase 1 --
    def add(self, res: Located) -> None:
        source = _Source(res.file_name, res.line, res.raw, res.type, res.label)
        keys = [k for k in (res.ref, res.full_url) if k]
        seen = next((self._seen[k] for k in keys if k in self._seen), None)
        if seen is not None:
            first, first_raw = seen
            same = "an identical copy" if first_raw == res.raw else "a different version"
            self._reject(source, f"{res.type}.id", f"duplicate resource: {same} is at {first.file_name} line {first.line}")
            return
        for k in keys:
            self._seen[k] = (source, res.raw)
        model = res.model
        res.model = None  # converted below; do not keep it
        try:
            if res.type == "Patient":
                row = self._patient_row(model, source)
                self._patients.append(row)
                for key in keys:
                    self._patient_ids[key] = row["patient_id"]
            elif res.type == "Observation":
                if _is_weight(model):
                    self._records.append(self._weight(model, source))
                else:
                    self._records.append(self._observation(model, source))
            elif res.type == "QuestionnaireResponse":
                self._records.append(self._questionnaire_response(model, source))
            elif res.type == "MedicationAdministration":
                self._records.append(self._administration(model, source))
            elif res.type == "Procedure":
                self._records.append(self._procedure(model, source))
            elif res.type == "Medication":
                concept = model.code
                entry = (_is_ketamine(concept), _is_esketamine(concept), _concept_text(concept))
                for key in keys:
                    self._medications[key] = entry
                self.supporting += 1
        except Problem as exc:
            self._reject(source, exc.column, exc.reason)

    # -- phase 2 --
    def finish(self) -> Conversion:
        weights: dict[str, list[tuple[str, float]]] = defaultdict(list)
        for record in self._records:
            if isinstance(record, _Weight):
                try:
                    pid = self._resolve(record.subject, "Observation.subject")
                except Problem as exc:
                    self._reject(record.source, exc.column, exc.reason)
                    continue
                weights[pid].append((record.when, record.kg))
                self.supporting += 1

        groups: dict[tuple[str, str, str], _Assessment] = {}
        treatments: list[dict] = []
        for record in self._records:
            try:
                if isinstance(record, _Score):
                    self._place_score(record, groups)
                elif isinstance(record, _Treatment):
                    treatments.append(self._treatment_row(record, weights))
            except Problem as exc:
                self._reject(record.source, exc.column, exc.reason)

        assessments = [row for row in (self._assessment_row(g) for g in groups.values()) if row]
        derived = self._fill_enrolment(self._patients, treatments, assessments)
        return Conversion(
            tables={
                "patients": _frame(self._patients, PATIENT_COLUMNS),
                "treatments": _frame(treatments, TREATMENT_COLUMNS),
                "assessments": _frame(assessments, ASSESSMENT_COLUMNS),
            },
            rejects=self.rejects,
            notes=self.notes,
            supporting=self.supporting,
            derived_enrolment=derived,
        )

    def _resolve(self, subject: _Subject | None, column: str) -> str:
        """The patient_id a subject reference points to."""
        if subject is None:
            raise Problem(column, "no subject: the patient it belongs to is unknown")
        if subject.reference and subject.reference in self._patient_ids:
            return self._patient_ids[subject.reference]
        if subject.value and subject.system == self.identifier_system:
            return subject.value
        pid = _reference_id(subject.reference, "Patient")
        if pid:
            # Not in this import: taken to be a patient already in the database
            # under the same id (ingest rejects it if there is none).
            return pid
        if subject.reference:
            raise Problem(column, f"subject {subject.reference!r} is not a Patient in this import")
        raise Problem(column, "subject has no Patient reference or identifier")

    # -- patients --
    def _patient_row(self, p, source: _Source) -> dict:
        pid = next((i.value for i in p.identifier or [] if i.system == self.identifier_system and i.value), None) or p.id
        if not pid:
            raise Problem("Patient.identifier", f"no id and no identifier of system {self.identifier_system}")
        birth = p.birthDate
        if isinstance(birth, (dt.date, dt.datetime)):
            birth_year = str(birth.year)
        elif birth:
            birth_year = str(birth)[:4]  # partial date "1980" or "1980-04"
        else:
            birth_year = ""
        gp = (p.generalPractitioner or [None])[0]
        enrolled = _extension_value(p, codes.EXT_ENROLLED_ON)
        return {
            "patient_id": pid,
            "site": _reference_label(p.managingOrganization) or "",
            "clinician": _reference_label(gp) or "",
            "birth_year": birth_year,
            "sex": SEX.get(p.gender or "", p.gender or ""),
            "diagnosis": _extension_value(p, codes.EXT_DIAGNOSIS),
            "comorbidities": _extension_value(p, codes.EXT_COMORBIDITIES),
            "prior_failed_trials": _extension_value(p, codes.EXT_PRIOR_FAILED_TRIALS),
            "enrolled_on": enrolled,
            # An enrolled-on extension with no value (data-absent-reason) says
            # "not known": then no date is derived from the patient's data.
            "_enrolment_known_absent": not enrolled and any(e.url == codes.EXT_ENROLLED_ON for e in p.extension or []),
            **_attributes(p),
            "_file": source.file_name,
            "_line": source.line,
            "_raw": source.raw,
        }

    # -- observations --
    def _weight(self, obs, source: _Source) -> _Weight:
        if obs.status in SKIPPED_OBSERVATION_STATUS:
            raise Problem("Observation.status", f"status {obs.status}: not used")
        when = when_text(_effective(obs), "Observation.effective[x]")
        q = obs.valueQuantity
        if q is None or q.value is None:
            raise Problem("Observation.valueQuantity", "body weight has no value")
        unit = (q.code or q.unit or "").strip()
        factor = {"kg": 1.0, "[lb_av]": 0.45359237, "lb": 0.45359237, "lbs": 0.45359237, "g": 0.001}.get(unit)
        if factor is None:
            raise Problem("Observation.valueQuantity.unit", f"body weight unit {unit!r} is not kg, g or [lb_av]")
        kg = float(q.value) * factor
        if not 2 <= kg <= 400:
            raise Problem("Observation.valueQuantity.value", f"body weight {kg:g} kg is not plausible")
        return _Weight(source, _subject(obs.subject, "Observation.subject"), when, kg)

    def _observation(self, obs, source: _Source) -> _Score:
        kind = _instrument_code(obs.code)
        if kind is None:
            found = ", ".join(f"{c.system or ''}|{c.code or ''}" for c in _codings(obs.code)) or (obs.code.text or "none")
            raise Problem("Observation.code", f"unknown code {found}: not a {codes.instruments_named()} score (see docs/fhir.md)")
        if obs.status in SKIPPED_OBSERVATION_STATUS:
            raise Problem("Observation.status", f"status {obs.status}: not imported")
        kind_name, instrument, item = kind
        if obs.subject is None:
            raise Problem("Observation.subject", "no subject: the patient it belongs to is unknown")
        when = when_text(_effective(obs), "Observation.effective[x]")
        items: dict[int, float | None] = {}
        total: float | None = None
        if kind_name == "item":
            items[int(item)] = value_score(obs, "Observation.value[x]", f"{instrument} item {item}")
        else:
            total = value_score(obs, "Observation.value[x]", f"{instrument} {kind_name}")
        for i, comp in enumerate(obs.component or []):
            column = f"Observation.component[{i}]"
            ckind = _instrument_code(comp.code)
            if ckind is None or ckind[1] != instrument:
                found = ", ".join(f"{c.system or ''}|{c.code or ''}" for c in _codings(comp.code)) or "none"
                raise Problem(column + ".code", f"component code {found} is not a {instrument} item or total")
            value = value_score(comp, column + ".value[x]", f"{instrument} component")
            if ckind[0] == "item":
                items[int(ckind[2])] = value
            elif value is not None:
                total = value
        score = _Score(source, _subject(obs.subject, "Observation.subject"), when, {}, _rater(obs.performer))
        if kind_name == "panel" and not items and total is None:
            score.empty_panel = instrument  # its hasMember items may be in the import
        else:
            score.answers[instrument] = (items, total)
        return score

    def _questionnaire_response(self, qr, source: _Source) -> _Score:
        if qr.status == "entered-in-error":
            raise Problem("QuestionnaireResponse.status", "status entered-in-error: not imported")
        found: dict[str, tuple[dict[int, float | None], list]] = {}

        def walk(items, path: str) -> None:
            for i, item in enumerate(items or []):
                here = f"{path}.item[{i}]"
                link = (item.linkId or "").rstrip("/").split("/")[-1]
                answers = item.answer or []
                if link in codes.LINK_ITEMS or link in codes.LINK_TOTALS:
                    value = value_score(answers[0], here + ".answer[0]", f"linkId {item.linkId}") if answers else None
                    if link in codes.LINK_ITEMS:
                        instrument, number = codes.LINK_ITEMS[link]
                        found.setdefault(instrument, ({}, [None]))[0][number] = value
                    elif value is not None:
                        found.setdefault(codes.LINK_TOTALS[link], ({}, [None]))[1][0] = value
                walk(item.item, here)
                for j, answer in enumerate(answers):
                    walk(answer.item, f"{here}.answer[{j}]")

        walk(qr.item, "QuestionnaireResponse")
        if not found:
            raise Problem("QuestionnaireResponse.item", f"no item linkId is a {codes.instruments_named()} item code (see docs/fhir.md)")
        if qr.subject is None:
            raise Problem("QuestionnaireResponse.subject", "no subject: the patient it belongs to is unknown")
        when = when_text(qr.authored, "QuestionnaireResponse.authored")
        rater = _rater([qr.author] if qr.author else []) or _rater([qr.source] if qr.source else [])
        answers = {instrument: (items, total[0]) for instrument, (items, total) in found.items()}
        return _Score(source, _subject(qr.subject, "QuestionnaireResponse.subject"), when, answers, rater)

    def _place_score(self, score: _Score, groups) -> None:
        pid = self._resolve(score.subject, score.subject.column if score.subject else "subject")
        if score.empty_panel:
            self._group(groups, pid, score.empty_panel, score.when).empty_panels.append(score.source)
            return
        targets = [(self._group(groups, pid, instrument, score.when), items, total)
                   for instrument, (items, total) in score.answers.items()]
        for group, items, total in targets:  # check every instrument before merging any
            self._check_agrees(group, score.source, items, total)
        for group, items, total in targets:
            self._merge(group, score.source, items, total, score.rater)

    @staticmethod
    def _group(groups, pid: str, instrument: str, when: str) -> _Assessment:
        key = (pid, instrument, when)
        if key not in groups:
            groups[key] = _Assessment(pid, instrument, when)
        return groups[key]

    @staticmethod
    def _check_agrees(group: _Assessment, source: _Source, items: dict[int, float | None], total: float | None) -> None:
        for number, value in items.items():
            if number in group.items and group.items[number][0] != value:
                previous = group.items[number]
                raise Problem(source.type, f"{group.instrument} item {number} is {_fmt(value)} here but {_fmt(previous[0])} at line {previous[1]} for the same patient and time")
        if total is not None and group.total is not None and group.total[0] != total:
            raise Problem(source.type, f"{group.instrument} total is {total:g} here but {group.total[0]:g} at line {group.total[1]} for the same patient and time")

    @staticmethod
    def _merge(group: _Assessment, source: _Source, items: dict[int, float | None], total: float | None, rater: str) -> None:
        for number, value in items.items():
            group.items.setdefault(number, (value, source.line))
        if total is not None and group.total is None:
            group.total = (total, source.line)
        if rater and not group.rater:
            group.rater = rater
        group.sources.append(source)

    def _assessment_row(self, group: _Assessment) -> dict | None:
        if not group.sources:
            for panel in group.empty_panels:
                self._reject(panel, "Observation.hasMember", f"{group.instrument} panel has no answers: no components, no value, and no member Observations in this import")
            return None
        sources = group.sources + group.empty_panels
        first = min(sources, key=lambda r: (r.file_name, r.line))
        row = {c: "" for c in ASSESSMENT_COLUMNS}
        row.update(patient_id=group.patient_id, instrument=group.instrument, administered_on=group.when, rater=group.rater)
        for number, (value, _line) in group.items.items():
            row[f"item_{number}"] = "" if value is None else _number_text(value)
        if group.total is not None:
            row["total"] = _number_text(group.total[0])
        row["_file"] = first.file_name
        row["_line"] = first.line
        row["_raw"] = first.raw if len(sources) == 1 else "[" + ",".join(r.raw for r in sources) + "]"
        return row

    # -- treatments --
    def _administration(self, admin, source: _Source) -> _Treatment:
        concepts = [admin.medicationCodeableConcept] if admin.medicationCodeableConcept else []
        ref = admin.medicationReference
        pending = None
        if ref is not None:
            if ref.display:
                concepts.append(_TextConcept(ref.display))
            if ref.reference and ref.reference.startswith("#"):
                target = next((c for c in admin.contained or [] if c.id == ref.reference[1:]), None)
                if getattr(target, "code", None) is not None:
                    concepts.append(target.code)
            elif ref.reference:
                pending = ref.reference
        text = " ".join(_concept_text(c) for c in concepts) or (pending or "none")
        ketamine = any(_is_ketamine(c) for c in concepts)
        if not ketamine and pending is None:
            raise Problem("MedicationAdministration.medication[x]", f"medication {text!r} is not ketamine or esketamine (RxNorm 6130 / 2119365, or text naming ketamine)")
        if admin.status in SKIPPED_ADMINISTRATION_STATUS:
            raise Problem("MedicationAdministration.status", f"status {admin.status}: no dose was given")
        if admin.subject is None:
            raise Problem("MedicationAdministration.subject", "no subject: the patient it belongs to is unknown")
        effective = admin.effectiveDateTime if admin.effectiveDateTime is not None else getattr(admin.effectivePeriod, "start", None)
        when = when_text(effective, "MedicationAdministration.effective[x]")
        route, dose, dose_mg = "", "", None
        if admin.dosage is not None:
            route = _route(admin.dosage.route)
            dose, dose_mg = self._dose(source, admin.dosage.dose)
        row = {"administered_on": when, "route": route, "dose_mg_per_kg": dose, "phase": _extension_value(admin, codes.EXT_PHASE)}
        return _Treatment(source, _subject(admin.subject, "MedicationAdministration.subject"), row, dose_mg,
                          None if ketamine else pending, text, any(_is_esketamine(c) for c in concepts))

    def _dose(self, source: _Source, quantity) -> tuple[str, float | None]:
        """(mg/kg text, or a dose in mg to convert once body weights are known)."""
        if quantity is None or quantity.value is None:
            return "", None
        unit = (quantity.code or quantity.unit or "").replace(" ", "").lower()
        if unit in ("mg/kg", "mg/kg{dose}"):
            return _number_text(float(quantity.value)), None
        if unit == "mg":
            return "", float(quantity.value)
        self.notes.append((source.file_name, "treatments", f"line {source.line}: {source.label}: dose unit {quantity.unit or quantity.code!r} is not mg/kg or mg; dose left empty"))
        return "", None

    def _procedure(self, proc, source: _Source) -> _Treatment:
        concepts = [c for c in (proc.code, *(proc.usedCode or [])) if c is not None]
        if not any(_is_ketamine(c) for c in concepts):
            raise Problem("Procedure.code", f"procedure {_concept_text(proc.code) or 'without code'!r} is not a ketamine or esketamine treatment")
        if proc.status not in ACCEPTED_PROCEDURE_STATUS:
            raise Problem("Procedure.status", f"status {proc.status}: not a treatment given")
        if proc.subject is None:
            raise Problem("Procedure.subject", "no subject: the patient it belongs to is unknown")
        performed = proc.performedDateTime if proc.performedDateTime is not None else getattr(proc.performedPeriod, "start", None)
        when = when_text(performed, "Procedure.performed[x]")
        text = " ".join(_concept_text(c) for c in concepts)
        route = codes.route_from_text(text) or ("intranasal" if "esketamine" in text.lower() else "")
        row = {"administered_on": when, "route": route, "dose_mg_per_kg": "", "phase": _extension_value(proc, codes.EXT_PHASE)}
        return _Treatment(source, _subject(proc.subject, "Procedure.subject"), row)

    def _treatment_row(self, t: _Treatment, weights) -> dict:
        esketamine = t.esketamine
        if t.medication_ref is not None:
            ketamine, esketamine, text = self._medications.get(t.medication_ref, (False, False, ""))
            if not ketamine:
                shown = text or f"{t.medication_ref} (not in this import)"
                raise Problem("MedicationAdministration.medication[x]", f"medication {shown!r} is not ketamine or esketamine (RxNorm 6130 / 2119365, or text naming ketamine)")
        pid = self._resolve(t.subject, t.subject.column)
        row = dict(t.row)
        if not row["route"] and esketamine:
            row["route"] = "intranasal"  # esketamine is licensed only as a nasal spray
        if t.dose_mg is not None:
            weight = _nearest_weight(weights.get(pid, []), row["administered_on"])
            if weight is None:
                self.notes.append((t.source.file_name, "treatments", f"line {t.source.line}: {t.source.label}: dose {t.dose_mg:g} mg left empty: no body weight (LOINC 29463-7) for the patient in this import"))
            else:
                row["dose_mg_per_kg"] = _number_text(round(t.dose_mg / weight, 4))
        return {"patient_id": pid, **row, "_file": t.source.file_name, "_line": t.source.line, "_raw": t.source.raw}

    @staticmethod
    def _fill_enrolment(patients: list[dict], treatments: list[dict], assessments: list[dict]) -> set[str]:
        """A FHIR Patient has no enrolment date: take the earliest date of their data here."""
        first: dict[str, str] = {}
        for row in (*treatments, *assessments):
            day = row["administered_on"][:10]
            if row["patient_id"] not in first or day < first[row["patient_id"]]:
                first[row["patient_id"]] = day
        derived = set()
        for row in patients:
            absent = row.pop("_enrolment_known_absent", False)
            if not row["enrolled_on"] and not absent and row["patient_id"] in first:
                row["enrolled_on"] = first[row["patient_id"]]
                derived.add(row["patient_id"])
        return derived


def _is_weight(obs) -> bool:
    return any(c.system == codes.LOINC and c.code == codes.BODY_WEIGHT for c in _codings(obs.code))


def _instrument_code(concept) -> tuple[str, str, str | None] | None:
    """(kind, instrument, item) for a known code: kind is total, panel or item."""
    for c in _codings(concept):
        key = (c.system, c.code)
        if key in codes.TOTAL_CODES:
            return "total", codes.TOTAL_CODES[key], None
        if key in codes.PANEL_CODES:
            return "panel", codes.PANEL_CODES[key], None
        if key in codes.ITEM_CODES:
            instrument, number = codes.ITEM_CODES[key]
            return "item", instrument, str(number)
    return None


def _rater(performers) -> str:
    for ref in performers or []:
        if ref.display:
            return ref.display
        if ref.reference and ref.reference.startswith("Patient/"):
            return "self"
        if ref.reference and "/" in ref.reference:
            return ref.reference.split("/")[-1]
    return ""


class _TextConcept:
    def __init__(self, text: str):
        self.text = text
        self.coding = []


def _is_ketamine(concept) -> bool:
    if any(c.system == codes.RXNORM and c.code in codes.KETAMINE_RXNORM for c in _codings(concept)):
        return True
    return "ketamine" in _concept_text(concept).lower()


def _is_esketamine(concept) -> bool:
    if concept is None:
        return False
    if any(c.system == codes.RXNORM and c.code == "2119365" for c in _codings(concept)):
        return True
    return "esketamine" in _concept_text(concept).lower() or "spravato" in _concept_text(concept).lower()


def _route(concept) -> str:
    """Our route name from a route CodeableConcept; the raw text when unmapped
    (so ingest rejects it naming the value); empty when absent."""
    if concept is None:
        return ""
    for c in _codings(concept):
        if (c.system, c.code) in codes.ROUTE_CODES:
            return codes.ROUTE_CODES[(c.system, c.code)]
    mapped = codes.route_from_text(_concept_text(concept))
    if mapped:
        return mapped
    return concept.text or next((c.code for c in _codings(concept) if c.code), "")


def _nearest_weight(weights: list[tuple[str, float]], when: str) -> float | None:
    """The weight measured closest to `when` (ties go to the earlier one)."""
    if not weights:
        return None
    target = _as_datetime(when)
    return min(weights, key=lambda w: (abs((_as_datetime(w[0]) - target).total_seconds()), w[0]))[1]


def _as_datetime(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text) if len(text) > 10 else dt.datetime.fromisoformat(text + " 00:00:00")


def _effective(obs):
    if obs.effectiveDateTime is not None:
        return obs.effectiveDateTime
    if obs.effectivePeriod is not None:
        return obs.effectivePeriod.start
    if obs.effectiveInstant is not None:
        return obs.effectiveInstant
    return None


def _fmt(value: float | None) -> str:
    return "missing" if value is None else f"{value:g}"


def _frame(rows: list[dict], columns: list[str]) -> pd.DataFrame:
    extra = sorted({k for row in rows for k in row} - set(columns) - set(EXTRA))  # patient attributes
    columns = columns + extra
    frame = pd.DataFrame(rows, columns=columns + EXTRA)
    for column in columns + ["_raw"]:
        frame[column] = frame[column].astype(object).where(frame[column].notna(), "").astype(str)
    return frame


def convert(resources: Iterable[Located], identifier_system: str | None = None) -> Conversion:
    """Convert validated resources (from one or more files) into row tables and rejects."""
    converter = Converter(identifier_system)
    for res in resources:
        converter.add(res)
    return converter.finish()
