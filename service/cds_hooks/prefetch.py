"""Prefetch as the standard has it: use what the client sent, fetch only the absent keys.

``null`` means "no data" and is never fetched; an OperationOutcome means the client could not fetch
it, so it counts as absent. Whatever cannot be had within the time budget gives 412: cards are
never computed from data that is known to be missing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from fhir_adapter.rest import (
    FHIR_ID,
    FhirError,
    FhirNotFound,
    FhirRejected,
    FhirRestClient,
    FhirTimeout,
    FhirUnauthorized,
)
from service.cds_hooks.discovery import PATIENT_TOKEN
from service.cds_hooks.errors import CdsError
from service.cds_hooks.models import CdsRequest

MAX_MEDICATIONS = 100  # one search; a patient's medication resources name few distinct drugs
_MEDICATION_TYPES = ("MedicationStatement", "MedicationRequest")


def resources_of(key: str, value: Any) -> list[Any]:
    """The resources in one prefetch value: a resource, or a Bundle's entries."""
    if not isinstance(value, dict) or not isinstance(value.get("resourceType"), str):
        raise CdsError(400, "invalid", f"prefetch '{key}' is neither a FHIR resource nor null")
    if value["resourceType"] != "Bundle":
        return [value]
    entries = value.get("entry", [])
    if not isinstance(entries, list):
        raise CdsError(400, "invalid", f"prefetch '{key}' is a Bundle whose entry is not a list")
    return [e.get("resource") for e in entries if isinstance(e, dict) and "resource" in e]


def next_link(value: Any) -> str | None:
    """The URL of a searchset's next page, if the client sent only the first."""
    links = value.get("link") if isinstance(value, dict) else None
    if not isinstance(links, list):
        return None
    for link in links:
        if (
            isinstance(link, dict)
            and link.get("relation") == "next"
            and isinstance(link.get("url"), str)
        ):
            return link["url"]
    return None


async def gather(
    request: CdsRequest,
    templates: dict[str, str],
    client: FhirRestClient | None,
    budget_seconds: float,
    drafts: Sequence[Any] = (),
) -> list[Any]:
    """Every resource the guidelines need for this request, from prefetch and the FHIR server,
    with the Medications the ``drafts`` (order hooks' draft orders) refer to."""
    supplied = request.prefetch or {}
    resources: list[Any] = []
    to_fetch: list[tuple[str, str]] = []
    for key, value in supplied.items():
        if value is None:
            continue
        if isinstance(value, dict) and value.get("resourceType") == "OperationOutcome":
            if key in templates:
                to_fetch.append((key, _fill(templates[key], request)))
            continue
        resources += resources_of(key, value)
        following = next_link(value)
        if following is not None:
            to_fetch.append((key, _relative(following, request, key)))
    to_fetch += [
        (key, _fill(query, request)) for key, query in templates.items() if key not in supplied
    ]
    deadline = time.monotonic() + budget_seconds
    if to_fetch:
        resources += await _fetch_all(request, to_fetch, client, deadline)
    return resources + await _medications(request, [*resources, *drafts], client, deadline)


async def _medications(
    request: CdsRequest, resources: list[Any], client: FhirRestClient | None, deadline: float
) -> list[Any]:
    """The Medications that medication resources refer to and the prefetch lacks, read from
    fhirServer by id (``Medication?_id=``): the prefetch subset has no ``_include``, and without
    its Medication a prescription's drug is unknown (it may be the metformin a card is about).
    Without fhirServer they stay unread, and the cards name them."""
    wanted = unresolved_medications(resources, request.fhirServer)
    if not wanted or request.fhirServer is None or client is None:
        return []
    token = request.fhirAuthorization.access_token if request.fhirAuthorization else None
    ids = ",".join(quote(name, safe="") for name in sorted(wanted)[:MAX_MEDICATIONS])
    try:
        found = await client.fetch(request.fhirServer, f"Medication?_id={ids}", token, deadline)
    except FhirError as exc:
        _raise_for("Medication", exc)
        raise
    return found if isinstance(found, list) else [found]


def unresolved_medications(resources: Sequence[Any], server: str | None = None) -> set[str]:
    """Ids of the Medications on fhirServer that MedicationStatements and MedicationRequests
    refer to and ``resources`` lack: ``Medication/<id>``, or its absolute URL on ``server``
    (contained ones and those on other servers are not fetched: the token is fhirServer's)."""
    have = {
        r["id"]
        for r in resources
        if isinstance(r, dict)
        and r.get("resourceType") == "Medication"
        and isinstance(r.get("id"), str)
    }
    wanted = set()
    for resource in resources:
        if not isinstance(resource, dict) or resource.get("resourceType") not in _MEDICATION_TYPES:
            continue
        given = resource.get("medicationReference")  # anything, as sent: checked here
        reference = given.get("reference") if isinstance(given, dict) else None
        ident = medication_on_server(reference, server)
        if ident is not None and ident not in have:
            wanted.add(ident)
    return wanted


def medication_on_server(reference: Any, server: str | None) -> str | None:
    """The id of the Medication a literal reference names on fhirServer: ``Medication/<id>``
    (relative references are fhirServer's) or ``<fhirServer>/Medication/<id>``, either with a
    ``/_history/<version>`` (the current version is read, as for any reference); else None."""
    if not isinstance(reference, str):
        return None
    base = server.rstrip("/") + "/" if server else None
    if base is not None and reference.startswith(base):
        reference = reference[len(base) :]
    ident = reference.removeprefix("Medication/").split("/_history/", 1)[0]
    if not reference.startswith("Medication/") or not FHIR_ID.fullmatch(ident):
        return None  # no other id can be searched
    return ident


def _relative(url: str, request: CdsRequest, key: str) -> str:
    """A next-page URL relative to fhirServer; pages elsewhere are never fetched with the token."""
    base = (request.fhirServer or "").rstrip("/") + "/"
    relative = url[len(base) :] if request.fhirServer and url.startswith(base) else ""
    # What FhirRestClient.fetch refuses (ValueError, a 500): the base itself, "//host/...", or a
    # URL nested in the path. None of them is a page on fhirServer.
    page = relative.strip().lstrip("/")
    if not page or relative.startswith("//") or "://" in page.split("?", 1)[0]:
        raise CdsError(
            412, "incomplete", f"prefetch '{key}' has more pages than sent, not on fhirServer"
        )
    return relative


def _fill(template: str, request: CdsRequest) -> str:
    return template.replace(PATIENT_TOKEN, quote(request.context.patientId, safe=""))


async def _fetch_all(
    request: CdsRequest,
    queries: list[tuple[str, str]],
    client: FhirRestClient | None,
    deadline: float,
) -> list[Any]:
    keys = ", ".join(sorted({key for key, _ in queries}))
    if request.fhirServer is None or client is None:
        raise CdsError(
            412, "incomplete", f"prefetch data missing ({keys}) and no fhirServer to fetch it from"
        )
    token = request.fhirAuthorization.access_token if request.fhirAuthorization else None
    fetches = [client.fetch(request.fhirServer, query, token, deadline) for _, query in queries]
    results = await asyncio.gather(*fetches, return_exceptions=True)
    rejected = [
        (key, query)
        for (key, query), r in zip(queries, results, strict=True)
        if isinstance(r, FhirRejected)
    ]
    resources: list[Any] = []
    if rejected:
        resources += await _from_everything(request, rejected, client, token, deadline)
    for (key, _), result in zip(queries, results, strict=True):
        if isinstance(result, FhirNotFound | FhirRejected):
            continue
        _raise_for(key, result)
        resources += result if isinstance(result, list) else [result]
    return resources


async def _from_everything(
    request: CdsRequest,
    rejected: list[tuple[str, str]],
    client: FhirRestClient,
    token: str | None,
    deadline: float,
) -> list[Any]:
    """Searches the server does not support, answered from the patient's ``$everything``.

    Servers differ in the search parameters they implement (one may not search Goal by patient
    at all). ``Patient/{id}/$everything`` is standard and returns the patient's compartment, so
    the rejected resource types are taken from it instead of failing the whole request.
    """
    patient = quote(request.context.patientId, safe="")
    assert request.fhirServer is not None
    try:
        everything = await client.fetch(
            request.fhirServer, f"Patient/{patient}/$everything", token, deadline
        )
    except FhirError as exc:
        _raise_for(rejected[0][0], exc)
        raise
    wanted = {query.split("?")[0] for _, query in rejected}
    found = everything if isinstance(everything, list) else [everything]
    return [r for r in found if isinstance(r, dict) and r.get("resourceType") in wanted]


def _raise_for(key: str, result: object) -> None:
    """Turn a failed fetch into the 412 the standard asks for, naming the prefetch key."""
    if isinstance(result, FhirUnauthorized):
        raise CdsError(412, "security", f"the FHIR server refused access while fetching '{key}'")
    if isinstance(result, FhirTimeout):
        raise CdsError(412, "timeout", f"the FHIR server did not answer '{key}' in time")
    if isinstance(result, FhirError):
        raise CdsError(412, "incomplete", f"could not fetch '{key}' from the FHIR server: {result}")
    if isinstance(result, BaseException):
        raise result


def prefetch_from(templates: dict[str, str], resources: list[dict[str, Any]]) -> dict[str, Any]:
    """What a complete EHR would send: each key answered from one patient's resources by type.

    For the demo, tests and benchmarks; the EHR's own search would also apply the codes and
    dates, which the engine applies again anyway.
    """
    by_type: dict[str, list[dict[str, Any]]] = {}
    for resource in resources:
        by_type.setdefault(resource["resourceType"], []).append(resource)
    prefetch: dict[str, Any] = {}
    for key, query in templates.items():
        resource_type = query.split("?")[0].split("/")[0]
        if "?" not in query:
            prefetch[key] = by_type[resource_type][0]
        else:
            entries = [{"resource": r} for r in by_type.get(resource_type, [])]
            prefetch[key] = {"resourceType": "Bundle", "type": "searchset", "entry": entries}
    return prefetch
