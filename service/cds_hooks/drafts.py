"""The draft orders of order-select and order-sign, and the drafts Vejviser could not check.

Why a module of its own: a draft that is dropped without a word reads to the GP as "nothing
against this order". So each draft MedicationRequest ends one of three ways: it is checked (its
drug has a code the guidelines can match); the call is refused with 412 (its drug is named by a
reference to a Medication the service cannot have, as for any data that cannot be had); or it
gets a card from Vejviser itself saying that it was not checked (its drug has no code: free
text, a display only).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from fhir_adapter.normalise import resource_records
from rules.effective import danish_today
from rules.rendering import markdown_literal
from service.cds_hooks.cards import SUMMARY_LIMIT
from service.cds_hooks.errors import CdsError
from service.cds_hooks.models import ORDER_HOOKS, CdsRequest
from service.cds_hooks.prefetch import medication_on_server

NOTICE_TOPIC_SYSTEM = "https://vejviser.dk/fhir/CodeSystem/service-notice"
NOT_CHECKED = "order-not-checked"
_WORDS = {
    "da": {
        "summary": '"{name}" er ikke tjekket: ordinationen har ingen lægemiddelkode',
        "topic": "Ordination ikke tjekket",
        "detail": (
            "Vejviser tjekker en ordination mod vejledningerne ud fra lægemidlets kode (ATC). "
            "Denne ordination angiver lægemidlet uden en kode, Vejviser kan læse, så ingen "
            "vejledning er brugt på den: at intet andet kort handler om den, betyder ikke, at "
            "intet taler imod den. Tjek den selv, eller vælg lægemidlet med kode."
        ),
        "unread": "Ikke læst",
    },
    "en": {
        "summary": '"{name}" was not checked: the order has no drug code',
        "topic": "Order not checked",
        "detail": (
            "Vejviser checks an order against the guidelines by the code of its drug (ATC). "
            "This order names its drug without a code Vejviser can read, so no guideline was "
            "applied to it: that no other card is about it does not mean that nothing speaks "
            "against it. Check it yourself, or choose the drug by its code."
        ),
        "unread": "Not read",
    },
}


class DraftOrders(NamedTuple):
    """What ``context.draftOrders`` brings: the drafts as active orders of the context patient
    with the bundle's Medications (``resources``), and the bundle's ``fullUrl`` of each of those
    Medications, by which a draft may name its drug (``urn:uuid:...`` in a transaction)."""

    resources: list[dict[str, Any]]
    full_urls: dict[str, str]  # fullUrl -> "Medication/<id>"

    def orders(self) -> list[dict[str, Any]]:
        return [r for r in self.resources if r.get("resourceType") == "MedicationRequest"]


class Unchecked(NamedTuple):
    """A draft order no guideline could be applied to, and the normaliser's reasons."""

    resource: str  # "MedicationRequest/<id>"
    name: str  # the drug as the order names it, or the resource
    reasons: tuple[str, ...]


def draft_orders(request: CdsRequest) -> DraftOrders:
    """The draft MedicationRequests of an order hook, as active orders of the context patient,
    and the Medications of the bundle (a draft may refer to one: it was dropped, no card fired).
    A Medication sent without an id gets one, so a draft can name it by its fullUrl."""
    drafts = DraftOrders([], {})
    bundle = request.context.draftOrders
    if bundle is None or request.hook not in ORDER_HOOKS:
        return drafts
    entries = bundle.get("entry")
    for index, entry in enumerate(entries if isinstance(entries, list) else []):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            continue
        if resource.get("resourceType") == "Medication":
            if not isinstance(resource.get("id"), str) or not resource["id"]:
                resource = {**resource, "id": f"draftorders-entry-{index}"}
            full_url = entry.get("fullUrl")
            if isinstance(full_url, str):
                drafts.full_urls[full_url] = f"Medication/{resource['id']}"
            drafts.resources.append(resource)
        elif resource.get("resourceType") == "MedicationRequest":
            drafts.resources.append(_as_active(resource, request.context.patientId))
    return drafts


def _as_active(resource: dict[str, Any], patient_id: str) -> dict[str, Any]:
    """Being ordered now: in use on the day, however long its supply (decision 0009) and
    whatever day its authoredOn names (a UTC time can be yesterday in Denmark)."""
    order = {
        **{k: v for k, v in resource.items() if k != "dispenseRequest"},
        "status": "active",
        "subject": {"reference": f"Patient/{patient_id}"},
    }
    order.setdefault("authoredOn", danish_today().isoformat())
    return order


def require_drugs(drafts: DraftOrders, known: Sequence[dict[str, Any]], server: str | None) -> None:
    """A draft whose drug is a Medication neither sent (in draftOrders, contained, in the
    prefetch) nor read from fhirServer: its drug is unknown, and an empty answer would read as
    "nothing against this order" (412, as for any data). One on another server is not fetched:
    the token is fhirServer's. The message names no URL or contained id (they may hold
    anything), a host at most."""
    have = {m["id"] for m in [*known, *drafts.resources] if _is_medication(m)}
    missing: set[str] = set()
    for order in drafts.orders():
        given = order.get("medicationReference")
        reference = given.get("reference") if isinstance(given, dict) else None
        if isinstance(reference, str) and reference not in drafts.full_urls:
            where = _where(order, reference, have, server)
            if where is not None:
                missing.add(where)
    if missing:
        names = "; ".join(sorted(missing))
        raise CdsError(
            412,
            "incomplete",
            f"the drug of a draft order ({names}) is neither in draftOrders, in the prefetch nor "
            "on fhirServer",
        )


def _where(order: dict[str, Any], reference: str, have: set[str], server: str | None) -> str | None:
    """What a draft's medicationReference names that the request lacks; None when it has it."""
    if reference.startswith("#"):
        if any(_is_medication(c) and c["id"] == reference[1:] for c in _contained(order)):
            return None
        return "a contained Medication the order does not contain"
    ident = medication_on_server(reference, server)
    if ident is not None:
        return None if ident in have else f"Medication/{ident}"
    if reference.startswith("urn:"):
        return "a urn: reference not in draftOrders"
    host = urlsplit(reference).hostname if "://" in reference else None
    if host:
        return f"a Medication at {host}, not fhirServer"
    return "a medicationReference that names no Medication"


def _contained(order: dict[str, Any]) -> list[Any]:
    contained = order.get("contained")
    return contained if isinstance(contained, list) else []


def _is_medication(resource: Any) -> bool:
    return (
        isinstance(resource, dict)
        and resource.get("resourceType") == "Medication"
        and isinstance(resource.get("id"), str)
    )


def unchecked_orders(
    request: CdsRequest, drafts: DraftOrders, known: Iterable[dict[str, Any]]
) -> list[Unchecked]:
    """The drafts whose drug no guideline could be matched against (no code it can read), of
    those the cards are about: order-select's ``selections``, else every draft."""
    medications: dict[str, dict[str, Any]] = {}
    for medication in [*known, *drafts.resources]:
        if _is_medication(medication):
            medications.setdefault(f"Medication/{medication['id']}", medication)
    selected = request.context.selections if request.hook == "order-select" else None
    unchecked = []
    for index, order in enumerate(drafts.orders()):
        read = resource_records(order, drafts.full_urls, medications, index=index)
        if read.medications or (selected is not None and read.resource not in selected):
            continue
        name = _drug_name(order, drafts.full_urls, medications) or read.resource
        unchecked.append(Unchecked(read.resource, name, tuple(i.reason for i in read.issues)))
    return unchecked


def _drug_name(
    order: dict[str, Any], full_urls: dict[str, str], medications: dict[str, dict[str, Any]]
) -> str | None:
    """The drug as the order names it: its concept's text or display, the reference's display,
    or the referenced Medication's code."""
    concepts = [order.get("medicationCodeableConcept")]
    given = order.get("medicationReference")
    if isinstance(given, dict):
        if isinstance(given.get("display"), str) and given["display"].strip():
            return " ".join(given["display"].split())
        reference = given.get("reference")
        if isinstance(reference, str):
            local = reference[1:] if reference.startswith("#") else None
            found = [c for c in _contained(order) if _is_medication(c) and c["id"] == local]
            key = full_urls.get(reference) or f"Medication/{reference.rsplit('/', 1)[-1]}"
            medication = found[0] if found else medications.get(key)
            concepts.append(medication.get("code") if medication else None)
    for concept in concepts:
        if not isinstance(concept, dict):
            continue
        codings = concept.get("coding")
        texts = [concept.get("text")] + [
            c.get("display")
            for c in (codings if isinstance(codings, list) else [])
            if isinstance(c, dict)
        ]
        for text in texts:
            if isinstance(text, str) and text.strip():
                return " ".join(text.split())  # one line, as a summary is
    return None


def not_checked_card(order: Unchecked, language: str) -> dict[str, Any]:
    """Vejviser's own card for a draft it could not check: ``info``, as it judges nothing; its
    source is Vejviser, not a guideline, and it offers no override reasons (they would record
    a patient exception for a guideline)."""
    words = _WORDS[language]
    template = words["summary"]
    room = SUMMARY_LIMIT - len(template.format(name=""))
    name = order.name if len(order.name) <= room else order.name[: room - 1] + "…"
    why = "; ".join(order.reasons)
    unread = markdown_literal(f"{order.resource}: {why}" if why else order.resource)
    return {
        "uuid": str(uuid.uuid4()),
        "summary": template.format(name=name),
        "indicator": "info",
        "detail": f"{words['detail']}\n\n**{words['unread']}**: {unread}",
        "source": {
            "label": "Vejviser",
            "topic": {
                "system": NOTICE_TOPIC_SYSTEM,
                "code": NOT_CHECKED,
                "display": words["topic"],
            },
        },
    }
