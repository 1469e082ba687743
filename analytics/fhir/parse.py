"""Read FHIR R4 JSON files (a Bundle, one resource, or NDJSON) into validated resources.

Every resource is validated with the `fhir.resources` R4B models (R4B is the
closest release the package ships to R4; the resources read here did not
change between them). A resource that fails becomes a `Reject` naming the file,
its position (NDJSON line, or 1-based bundle entry number) and the element
path; the others are kept.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any, Iterator

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from . import codes

# Resource types whose content we read; anything else is reported as not imported.
IMPORTED_TYPES = ("Patient", "Observation", "QuestionnaireResponse", "MedicationAdministration", "Procedure")
# Read only to resolve references from the imported types.
SUPPORTING_TYPES = ("Medication",)
BUNDLE_TYPES = ("collection", "searchset", "transaction", "batch")
SNIFF_BYTES = 64 * 1024
# JSON deeper than Python's parser can follow raises RecursionError; the message then names the
# first line deeper than this (FHIR resources nest a dozen levels or so).
NESTING_SHOWN = 100
TOO_DEEP = "the JSON is nested too deeply to read"


@dataclass
class Located:
    """One validated resource and where it came from."""

    file_name: str
    line: int  # NDJSON line number, or 1-based bundle entry number
    raw: str  # the resource JSON as stored in rejected_rows
    type: str
    id: str | None
    model: Any  # the validated fhir.resources model (dropped once converted)
    full_url: str | None = None

    @property
    def ref(self) -> str | None:
        return f"{self.type}/{self.id}" if self.id else None

    @property
    def label(self) -> str:
        return self.ref or f"{self.type} (no id)"


@dataclass
class Reject:
    file_name: str
    line: int | None
    column: str
    reason: str
    raw: str
    resource_type: str = ""
    # The whole file is unusable (not JSON, not a usable Bundle): it is
    # refused, like a CSV file with a bad header, and nothing is imported.
    fatal: bool = False


def looks_like_fhir(head: bytes | str) -> bool:
    """True when the start of a file is FHIR JSON: a JSON object naming a resourceType."""
    if isinstance(head, bytes):
        head = head.decode("utf-8", errors="replace")
    text = head.lstrip("\ufeff \t\r\n")
    return text.startswith("{") and '"resourceType"' in text


def sniff_file(path: str | os.PathLike) -> bool:
    with open(path, "rb") as handle:
        return looks_like_fhir(handle.read(SNIFF_BYTES))


def _compact(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def _error_column(resource_type: str, error: ValidationError) -> tuple[str, str]:
    first = error.errors()[0]
    path = ""
    for part in first.get("loc", ()):
        if part == "__root__":
            continue
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    message = first.get("msg", str(error)).replace("\n", " ")
    message = " ".join(message.split())
    more = len(error.errors()) - 1
    if more:
        message += f" (and {more} more problem{'s' if more > 1 else ''})"
    return (f"{resource_type}.{path}" if path else resource_type), message


# Elements that identify a person: never kept, not even in rejected_rows.raw.
PATIENT_IDENTIFYING = ("name", "telecom", "address", "photo", "contact", "link")


def redact(data: Any) -> Any:
    """The resource as it may be stored in rejected_rows: narrative dropped
    (it usually repeats the patient's name); for a Patient also names,
    addresses, telecom, photos, contacts, all but the birth year, and the
    values of identifiers other than the pseudonymous patient id."""
    if not isinstance(data, dict) or ("text" not in data and data.get("resourceType") != "Patient"):
        return data
    out = {k: v for k, v in data.items() if k != "text"}
    if data.get("resourceType") == "Patient":
        for key in PATIENT_IDENTIFYING:
            out.pop(key, None)
        if isinstance(out.get("birthDate"), str):
            out["birthDate"] = out["birthDate"][:4]
        keep = {codes.LOCAL_PATIENT_ID, os.environ.get(codes.IDENTIFIER_ENV)}
        if isinstance(out.get("identifier"), list):
            out["identifier"] = [
                i if not isinstance(i, dict) or i.get("system") in keep else {**i, "value": "(redacted)"}
                for i in out["identifier"]
            ]
    return out


def validate_resource(data: Any, file_name: str, line: int, prefix: str = "", full_url: str | None = None,
                      raw: str | None = None) -> Located | Reject:
    """Validate one resource dict with the R4B model of its type (`raw`: its JSON text, if at hand)."""
    try:
        return _validate_resource(data, file_name, line, prefix, full_url, raw)
    except RecursionError:  # read, but too deep for the model or for writing it back as JSON
        rtype = data.get("resourceType") if isinstance(data, dict) and isinstance(data.get("resourceType"), str) else ""
        return Reject(file_name, line, prefix + (rtype or "resource"),
                      f"{TOO_DEEP}: the resource nests deeper than FHIR resources do", (raw or "")[:10000], rtype)


def _validate_resource(data: Any, file_name: str, line: int, prefix: str, full_url: str | None,
                       raw: str | None) -> Located | Reject:
    redacted = redact(data)
    raw = raw.strip() if raw is not None and redacted is data else _compact(redacted)
    if not isinstance(data, dict):
        return Reject(file_name, line, prefix or "resource", "not a JSON object", raw)
    rtype = data.get("resourceType") if isinstance(data.get("resourceType"), str) else ""
    resource_type = data.get("resourceType")
    if not isinstance(resource_type, str) or not resource_type:
        return Reject(file_name, line, prefix + "resourceType", "no resourceType: not a FHIR resource", raw)
    label = f"{resource_type}/{data['id']}" if isinstance(data.get("id"), str) else resource_type
    if resource_type not in IMPORTED_TYPES + SUPPORTING_TYPES:
        return Reject(
            file_name, line, prefix + resource_type,
            f"{label}: {resource_type} resources are not imported (only {', '.join(IMPORTED_TYPES)})", raw, rtype,
        )
    try:
        model = get_fhir_model_class(resource_type).model_validate(data)
    except ValidationError as exc:
        column, message = _error_column(resource_type, exc)
        return Reject(file_name, line, prefix + column, f"{label} is not valid FHIR R4: {message}", raw, rtype)
    rid = data.get("id") if isinstance(data.get("id"), str) else None
    return Located(file_name, line, raw, resource_type, rid, model, full_url)


def _bundle(document: dict, file_name: str) -> Iterator[Located | Reject]:
    try:
        raw = _compact(document)[:10000]
    except RecursionError:
        raw = ""
    entries = document.get("entry") or []
    if not isinstance(entries, list):
        yield Reject(file_name, None, "Bundle.entry", "Bundle.entry must be a list", raw, "Bundle", True)
        return
    shell = {k: v for k, v in document.items() if k != "entry"}
    if entries:
        shell["entry"] = [{k: v for k, v in e.items() if k != "resource"} if isinstance(e, dict) else e for e in entries]
    try:
        get_fhir_model_class("Bundle").model_validate(shell)
    except ValidationError as exc:
        column, message = _error_column("Bundle", exc)
        yield Reject(file_name, None, column, f"the Bundle itself is not valid FHIR R4: {message}", raw, "Bundle", True)
        return
    if document.get("type") not in BUNDLE_TYPES:
        yield Reject(file_name, None, "Bundle.type",
                     f"Bundle type {document.get('type')!r} is not imported (use {', '.join(BUNDLE_TYPES)})", raw, "Bundle", True)
        return
    for index, entry in enumerate(entries):
        entries[index] = None  # let the parsed JSON go as we walk
        resource = entry.get("resource")
        if resource is None:
            method = (entry.get("request") or {}).get("method", "")
            reason = f"{method} entries are not applied" if method else "entry has no resource"
            yield Reject(file_name, index + 1, f"Bundle.entry[{index}].resource", reason, _compact(entry))
            continue
        yield validate_resource(resource, file_name, index + 1, full_url=entry.get("fullUrl"))


def iter_text(text: str, file_name: str) -> Iterator[Located | Reject]:
    """Parse one file's text (a Bundle, a single resource, or NDJSON), one resource at a time."""
    text = text.lstrip("\ufeff")
    lines = text.splitlines()
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is None:
        yield Reject(file_name, None, "", "empty file", "", "", True)
        return
    try:
        first_obj = json.loads(lines[first])
        # A Bundle is a document even when written on one line.
        ndjson = isinstance(first_obj, dict) and first_obj.get("resourceType") != "Bundle"
    except json.JSONDecodeError:
        ndjson = False
    except RecursionError:  # a first line too deep to read: NDJSON when other lines follow it
        ndjson = any(line.strip() for line in lines[first + 1:])
    if not ndjson:
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raw = lines[exc.lineno - 1][:2000] if 0 < exc.lineno <= len(lines) else ""
            yield Reject(file_name, exc.lineno, "", f"malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}", raw, "", True)
            return
        except RecursionError:
            line = _deeper_than(text, NESTING_SHOWN) or 1
            yield Reject(file_name, line, "", f"{TOO_DEEP}: it is more than {NESTING_SHOWN} levels deep from "
                         f"line {line} on (FHIR resources nest a dozen levels or so)", lines[line - 1][:2000], "", True)
            return
        del lines, text
        if isinstance(document, dict) and document.get("resourceType") == "Bundle":
            yield from _bundle(document, file_name)
        else:
            yield validate_resource(document, file_name, 1)
        return

    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            yield Reject(file_name, number, "", f"malformed JSON at column {exc.colno}: {exc.msg}", line[:10000])
            continue
        except RecursionError:
            yield Reject(file_name, number, "", f"{TOO_DEEP}: more than {NESTING_SHOWN} levels deep "
                         "(FHIR resources nest a dozen levels or so)", line[:10000])
            continue
        if isinstance(data, dict) and data.get("resourceType") == "Bundle":
            yield Reject(file_name, number, "Bundle", "a Bundle inside NDJSON is not read: NDJSON holds one resource per line", line[:10000], "Bundle")
            continue
        yield validate_resource(data, file_name, number, raw=line)


_JSON_TOKENS = re.compile(r'[\[\]{}"\\\n]')


def _deeper_than(text: str, limit: int) -> int | None:
    """The 1-based line where the nesting of JSON `text` first exceeds `limit` (strings skipped)."""
    depth = 0
    line = 1
    in_string = False
    skip_at = -1
    for match in _JSON_TOKENS.finditer(text):
        at = match.start()
        char = match.group()
        if char == "\n":
            line += 1
        elif at == skip_at:
            continue  # the character after a backslash in a string
        elif in_string:
            if char == "\\":
                skip_at = at + 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > limit:
                return line
        elif char in "]}":
            depth -= 1
    return None


def read_text(text: str, file_name: str) -> tuple[list[Located], list[Reject]]:
    """`iter_text` collected: (resources, rejects)."""
    located: list[Located] = []
    rejects: list[Reject] = []
    for item in iter_text(text, file_name):
        (located if isinstance(item, Located) else rejects).append(item)
    return located, rejects
