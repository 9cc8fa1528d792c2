"""The test patient and the CDS Hooks requests built from it.

The suite sends one patient's chart to the service under test: by default the small Danish
patient in ``patient-bundle.json`` (type 2 diabetes with ischaemic heart disease, HbA1c 67
mmol/mol above the target 58, no urine albumin or LDL on record), which makes the Vejviser
library return cards, some with order suggestions. Prefetch keys are filled the way an EHR
would: each advertised template gets the patient's resources of the type it asks for.

The shipped bundle's dates are relative to its ``timestamp``: they are moved forward so the
timestamp becomes today, because guideline look-back windows ("HbA1c in the last 12 months")
would otherwise expire the fixture. A bundle given with ``--patient-bundle`` is used as is.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from rules.effective import danish_today

DEFAULT_BUNDLE = Path(__file__).with_name("patient-bundle.json")

USER_ID = "Practitioner/vejviser-conformance-gp"
"""The clinician in every request's context (``[ResourceType]/[id]`` as the hooks require)."""

USER_TOKENS = {
    "userPractitionerId": "Practitioner",
    "userPractitionerRoleId": "PractitionerRole",
    "userPatientId": "Patient",
    "userRelatedPersonId": "RelatedPerson",
}
"""The user prefetch tokens of CDS Hooks 2.0 and the resource type each stands for."""

HOOK_CONTEXT_FIELDS: dict[str, frozenset[str]] = {
    "patient-view": frozenset({"userId", "patientId", "encounterId"}),
    "order-select": frozenset({"userId", "patientId", "encounterId", "selections", "draftOrders"}),
    "order-sign": frozenset({"userId", "patientId", "encounterId", "draftOrders"}),
    "encounter-start": frozenset({"userId", "patientId", "encounterId"}),
    "encounter-discharge": frozenset({"userId", "patientId", "encounterId"}),
    "appointment-book": frozenset({"userId", "patientId", "encounterId", "appointments"}),
}
"""Context fields of the hooks in cds-hooks-library 1.0.1 that a prefetch token may name."""

HOOKS_REQUIRING_PATIENT = frozenset(HOOK_CONTEXT_FIELDS)

SPEC_EXAMPLE: dict[str, Any] = {
    "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
    "fhirServer": "http://hooks.smarthealthit.org:9080",
    "hook": "patient-view",
    "fhirAuthorization": {
        "access_token": "some-opaque-fhir-access-token",
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "user/Patient.read user/Observation.read",
        "subject": "cds-service4",
    },
    "context": {"userId": "Practitioner/example", "patientId": "1288992", "encounterId": "89284"},
}
"""The HTTP request example of CDS Hooks 2.0 ("Calling a CDS Service"), without its prefetch."""

_FULL_DATE = re.compile(r"^(\d{4}-\d{2}-\d{2})(.*)$")
_TOKEN = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")


class FixtureError(ValueError):
    """The patient bundle cannot be used; the message says why in plain words."""


@dataclass(frozen=True, slots=True)
class Patient:
    """One patient's resources, the Patient first."""

    resources: tuple[dict[str, Any], ...]

    @property
    def id(self) -> str:
        return str(self.resources[0]["id"])

    def of_type(self, resource_type: str) -> list[dict[str, Any]]:
        return [r for r in self.resources if r.get("resourceType") == resource_type]

    def renamed(self, new_id: str) -> Patient:
        """The same chart under another Patient.id, every reference to it rewritten."""
        old = f"Patient/{self.id}"
        resources = [_replace_strings(r, old, f"Patient/{new_id}") for r in self.resources]
        resources[0] = {**resources[0], "id": new_id}
        return Patient(tuple(resources))


def load_patient(path: Path | None = None, today: dt.date | None = None) -> Patient:
    """The patient of ``path`` (default: the shipped bundle, its dates moved to ``today``)."""
    source = path or DEFAULT_BUNDLE
    try:
        document = json.loads(source.read_text(encoding="utf-8"))
    except OSError as exc:
        raise FixtureError(f"cannot read {source}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise FixtureError(f"{source} is not JSON: {exc}") from None
    if not isinstance(document, dict) or document.get("resourceType") != "Bundle":
        raise FixtureError(f"{source} is not a FHIR Bundle")
    if path is None:
        document = shift_dates(document, today or danish_today())
    resources = [
        entry["resource"]
        for entry in document.get("entry") or []
        if isinstance(entry, dict) and isinstance(entry.get("resource"), dict)
    ]
    patients = [r for r in resources if r.get("resourceType") == "Patient"]
    if len(patients) != 1 or not isinstance(patients[0].get("id"), str):
        raise FixtureError(f"{source} must hold exactly one Patient, with an id")
    others = [r for r in resources if r is not patients[0]]
    return Patient((patients[0], *others))


def shift_dates(document: dict[str, Any], today: dt.date) -> dict[str, Any]:
    """Move every full date in the bundle by the days between its ``timestamp`` and ``today``.

    Intervals (age, diabetes duration, time since the last HbA1c) stay exactly as written.
    """
    stamp = document.get("timestamp")
    if not isinstance(stamp, str) or not _FULL_DATE.match(stamp):
        return document
    delta = today - dt.date.fromisoformat(stamp[:10])

    def shift(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: shift(item) for key, item in value.items()}
        if isinstance(value, list):
            return [shift(item) for item in value]
        if isinstance(value, str) and (match := _FULL_DATE.match(value)):
            try:
                moved = dt.date.fromisoformat(match[1]) + delta
            except ValueError:
                return value
            return moved.isoformat() + match[2]
        return value

    return shift(document)


def _replace_strings(value: Any, old: str, new: str) -> Any:
    if isinstance(value, dict):
        return {key: _replace_strings(item, old, new) for key, item in value.items()}
    if isinstance(value, list):
        return [_replace_strings(item, old, new) for item in value]
    if isinstance(value, str) and value == old:
        return new
    return value


# --- prefetch ------------------------------------------------------------------------------------


def context_for(hook: str, patient: Patient, user_id: str = USER_ID) -> dict[str, Any]:
    """A plausible context for ``hook``: user and patient, plus draft orders for order hooks."""
    context: dict[str, Any] = {"userId": user_id, "patientId": patient.id}
    if hook in ("order-select", "order-sign"):
        draft = {
            "resourceType": "MedicationRequest",
            "id": "vejviser-conformance-draft-1",
            "status": "draft",
            "intent": "order",
            "subject": {"reference": f"Patient/{patient.id}"},
            "medicationCodeableConcept": {
                "coding": [{"system": "http://www.whocc.no/atc", "code": "M01AE01"}],
                "text": "Ibuprofen 400 mg",
            },
        }
        context["draftOrders"] = {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": draft}],
        }
        if hook == "order-select":
            context["selections"] = ["MedicationRequest/vejviser-conformance-draft-1"]
    if hook in ("encounter-start", "encounter-discharge"):
        context["encounterId"] = "vejviser-conformance-encounter-1"
    return context


def fill(template: str, context: dict[str, Any]) -> str | None:
    """The template with its prefetch tokens replaced, or None if a token cannot be filled."""
    missing = False

    def value(match: re.Match[str]) -> str:
        nonlocal missing
        token = match[1]
        if token.startswith("context."):
            found = context.get(token.removeprefix("context."))
            if isinstance(found, str):
                return found
        elif token in USER_TOKENS:
            resource_type, _, user = str(context.get("userId", "")).partition("/")
            if resource_type == USER_TOKENS[token] and user:
                return user
        missing = True
        return ""

    filled = _TOKEN.sub(value, template)
    return None if missing else filled


def searchset(resources: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """A searchset Bundle; an empty one has no ``entry`` (FHIR JSON allows no empty arrays)."""
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
    }
    if resources:
        bundle["entry"] = [{"resource": r, "search": {"mode": "match"}} for r in resources]
    return {**bundle, **extra}


def answer(query: str, patient: Patient) -> dict[str, Any] | None:
    """What a FHIR server holding only this patient answers to a filled prefetch query.

    Reads give the resource or None (the standard's "no data" for a read); searches give a
    searchset of the resources of that type, narrowed by a ``code`` parameter if there is one.
    Other parameters are not applied: the fixture holds one patient with recent data.
    """
    path, _, params = query.partition("?")
    parts = path.strip("/").split("/")
    if len(parts) == 2 and not params:
        resource_type, resource_id = parts
        for resource in patient.of_type(resource_type):
            if resource.get("id") == resource_id:
                return resource
        return None
    resources = patient.of_type(parts[0])
    for name, value in parse_qsl(params, keep_blank_values=True):
        if name == "code":
            wanted = {_token(v) for v in value.split(",")}
            resources = [r for r in resources if _codings(r) & wanted or _bare(r) & wanted]
    return searchset(resources)


def _token(value: str) -> tuple[str | None, str]:
    system, bar, code = value.partition("|")
    return (system or None, code) if bar else (None, value)


def _codings(resource: dict[str, Any]) -> set[tuple[str | None, str]]:
    concept = resource.get("code") or resource.get("medicationCodeableConcept") or {}
    return {
        (c.get("system"), c.get("code"))
        for c in concept.get("coding") or []
        if isinstance(c, dict) and isinstance(c.get("code"), str)
    }


def _bare(resource: dict[str, Any]) -> set[tuple[str | None, str]]:
    return {(None, code) for _, code in _codings(resource)}


def full_prefetch(
    templates: dict[str, str], context: dict[str, Any], patient: Patient
) -> dict[str, Any]:
    """Every advertised key answered from the patient, as a complete EHR prefetch would be."""
    prefetch: dict[str, Any] = {}
    for key, template in templates.items():
        query = fill(template, context)
        prefetch[key] = None if query is None else answer(query, patient)
    return prefetch


def request_body(
    hook: str,
    context: dict[str, Any],
    prefetch: dict[str, Any] | None,
    **extra: Any,
) -> dict[str, Any]:
    """A CDS Hooks request with a fresh ``hookInstance``; ``prefetch=None`` leaves it out."""
    body: dict[str, Any] = {
        "hook": hook,
        "hookInstance": str(uuid.uuid4()),
        "context": copy.deepcopy(context),
        **extra,
    }
    if prefetch is not None:
        body["prefetch"] = copy.deepcopy(prefetch)
    return body


def spec_example(templates: dict[str, str], patient: Patient) -> dict[str, Any]:
    """The standard's own patient-view request, its prefetch answered from our patient.

    Its context names Patient 1288992, so the fixture is renamed to that id. Its fhirServer
    is the standard's placeholder host: with every key prefetched, nothing needs fetching.
    """
    body = copy.deepcopy(SPEC_EXAMPLE)
    renamed = patient.renamed(body["context"]["patientId"])
    body["prefetch"] = full_prefetch(templates, body["context"], renamed)
    return body
