"""Write the store as FHIR R4 NDJSON (one resource per line, as Bulk Data `$export` does).

Patient.ndjson, Observation.ndjson (one Observation per assessment: the
panel with item components and a total component, or the total alone) and
MedicationAdministration.ndjson. The importer reads these back to the same
rows. Reads go through `analytics.access.DataAccess` only.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import pandas as pd
from fhir.resources.R4B import get_fhir_model_class

from .. import access, scales
from ..permissions import may
from . import codes

FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
GENDER = {"F": "female", "M": "male", "X": "other", "U": "unknown"}


def fhir_id(prefix: str, *key) -> str:
    """A stable resource id from the row's natural key (re-exports give the same ids)."""
    digest = hashlib.sha256("\x1f".join(str(k) for k in key).encode()).hexdigest()[:32]
    return f"{prefix}-{digest}"


def patient_resource_id(patient_id: str) -> str:
    return patient_id if FHIR_ID.match(patient_id) else fhir_id("pt", patient_id)


def _present(value) -> bool:
    if value is None:
        return False
    try:
        return not pd.isna(value)
    except (TypeError, ValueError):
        return True


def _when(timestamp, has_time: bool) -> str:
    ts = pd.Timestamp(timestamp)
    if has_time:
        # The store keeps wall-clock times without a zone; FHIR requires an
        # offset on a time, so +00:00 is written and the importer reads the
        # wall-clock part back unchanged.
        return ts.strftime("%Y-%m-%dT%H:%M:%S") + "+00:00"
    return ts.strftime("%Y-%m-%d")


def _score_quantity(value: float) -> dict:
    number = int(value) if float(value).is_integer() else float(value)
    return {"value": number, "unit": "{score}", "system": codes.UCUM, "code": "{score}"}


def _concept(system: str, code: str, display: str | None = None) -> dict:
    coding = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return {"coding": [coding]}


def patient_resource(row, attributes: list[tuple[str, str]] = ()) -> dict:
    pid = str(row["patient_id"])
    resource: dict = {
        "resourceType": "Patient",
        "id": patient_resource_id(pid),
        "identifier": [{"system": codes.LOCAL_PATIENT_ID, "value": pid}],
    }
    extensions = []
    if _present(row["diagnosis"]) and row["diagnosis"]:
        extensions.append({"url": codes.EXT_DIAGNOSIS, "valueString": str(row["diagnosis"])})
    if _present(row["comorbidities"]) and row["comorbidities"]:
        extensions.append({"url": codes.EXT_COMORBIDITIES, "valueString": str(row["comorbidities"])})
    if _present(row["prior_failed_trials"]):
        extensions.append({"url": codes.EXT_PRIOR_FAILED_TRIALS, "valueInteger": int(row["prior_failed_trials"])})
    if _present(row["enrolled_on"]):
        extensions.append({"url": codes.EXT_ENROLLED_ON, "valueDate": pd.Timestamp(row["enrolled_on"]).strftime("%Y-%m-%d")})
    else:
        # Say it is unknown, or the importer would date it from the first data.
        extensions.append({"url": codes.EXT_ENROLLED_ON, "extension": [
            {"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown"}]})
    for name, value in attributes:
        extensions.append({"url": codes.EXT_ATTRIBUTE, "extension": [
            {"url": "name", "valueString": str(name)}, {"url": "value", "valueString": str(value)}]})
    if extensions:
        resource["extension"] = extensions
    if _present(row["sex"]) and row["sex"] in GENDER:
        resource["gender"] = GENDER[row["sex"]]
    if _present(row["birth_year"]):
        resource["birthDate"] = f"{int(row['birth_year']):04d}"
    if _present(row["clinician"]) and row["clinician"]:
        resource["generalPractitioner"] = [{"display": str(row["clinician"])}]
    if _present(row["site"]) and row["site"]:
        resource["managingOrganization"] = {"display": str(row["site"])}
    return resource


def observation_resource(row) -> dict:
    scale = scales.get(row["instrument"])
    pid = str(row["patient_id"])
    items = {n: row[f"item_{n}"] for n in scale.all_items if _present(row[f"item_{n}"])}
    resource: dict = {
        "resourceType": "Observation",
        "id": fhir_id("obs", pid, scale.code, pd.Timestamp(row["administered_at"]).isoformat()),
        "status": "final",
        "category": [_concept("http://terminology.hl7.org/CodeSystem/observation-category", "survey", "Survey")],
        "subject": {"reference": f"Patient/{patient_resource_id(pid)}"},
        "effectiveDateTime": _when(row["administered_at"], bool(row["has_time"])),
    }
    if _present(row["rater"]) and row["rater"]:
        resource["performer"] = [{"display": str(row["rater"])}]
    total_system, total_code = codes.total_code(scale.code)
    if items:
        system, code = codes.panel_code(scale.code)
        resource["code"] = {**_concept(system, code), "text": scale.name}
        components = []
        for number, value in sorted(items.items()):
            item_system, item_code = codes.item_code(scale.code, number)
            components.append({"code": _concept(item_system, item_code), "valueInteger": int(value)})
        if _present(row["total"]):
            components.append({"code": _concept(total_system, total_code), "valueQuantity": _score_quantity(row["total"])})
        resource["component"] = components
    else:
        resource["code"] = {**_concept(total_system, total_code), "text": f"{scale.name} total score"}
        resource["valueQuantity"] = _score_quantity(row["total"])
    return resource


def administration_resource(row) -> dict:
    pid = str(row["patient_id"])
    route_code, route_display = codes.EXPORT_ROUTE_CODES[row["route"]]
    dosage: dict = {"route": {**_concept(codes.SNOMED, route_code, route_display), "text": row["route"]}}
    if _present(row["dose_mg_per_kg"]):
        dosage["dose"] = {"value": float(row["dose_mg_per_kg"]), "unit": "mg/kg", "system": codes.UCUM, "code": "mg/kg"}
    resource: dict = {
        "resourceType": "MedicationAdministration",
        "id": fhir_id("ma", pid, pd.Timestamp(row["administered_at"]).isoformat()),
        "status": "completed",
        # The store records the route, not the product (racemic or es-ketamine).
        "medicationCodeableConcept": {"text": "ketamine or esketamine (product not recorded)"},
        "subject": {"reference": f"Patient/{patient_resource_id(pid)}"},
        "effectiveDateTime": _when(row["administered_at"], bool(row["has_time"])),
        "dosage": dosage,
    }
    if _present(row["phase"]) and row["phase"]:
        resource["extension"] = [{"url": codes.EXT_PHASE, "valueCode": str(row["phase"])}]
    return resource


def _write_ndjson(path: Path, resource_type: str, resources: list[dict]) -> None:
    model = get_fhir_model_class(resource_type)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        for resource in resources:
            model.model_validate(resource)  # never write what the importer would refuse
            handle.write(json.dumps(resource, separators=(",", ":"), ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def export_fhir(directory, db=None, scope: access.Scope = access.SYSTEM) -> dict[str, Path]:
    """Write Patient/Observation/MedicationAdministration NDJSON into `directory`.

    Returns {resource type: file path}. Only what `scope` may see is written;
    a scope without patient-level access may not export at all.
    """
    if not may(scope, "see_patient_rows"):
        raise access.AccessDenied("a FHIR export holds patient-level rows; your role may not see them")
    data = access.DataAccess(db, scope)
    patients = data.patients()
    ids = patients["patient_id"].tolist()
    attributes: dict[str, list[tuple[str, str]]] = {}
    for row in data.attributes().to_dict("records"):
        if _present(row["value"]):
            attributes.setdefault(row["patient_id"], []).append((row["name"], row["value"]))
    treatments = data.treatments(ids)
    assessments = data.assessments(ids)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    plan = {
        "Patient": [patient_resource(r, attributes.get(r["patient_id"], [])) for r in patients.to_dict("records")],
        "Observation": [observation_resource(r) for r in assessments.to_dict("records")],
        "MedicationAdministration": [administration_resource(r) for r in treatments.to_dict("records")],
    }
    written: dict[str, Path] = {}
    for resource_type, resources in plan.items():
        path = out / f"{resource_type}.ndjson"
        _write_ndjson(path, resource_type, resources)
        written[resource_type] = path
    return written
