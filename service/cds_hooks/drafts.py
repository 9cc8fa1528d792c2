"""The draft orders of order-select and order-sign, and the drafts Vejviser could not check.

Why a module of its own: a draft that is dropped without a word reads to the GP as "nothing
against this order". So each draft MedicationRequest ends one of three ways: it is checked (its
drug has a code the guidelines can match); the call is refused with 412 (its drug is named by a
reference to a Medication the service cannot have, as for any data that cannot be had); or it
gets a card from Vejviser itself saying that it was not checked (its drug has no code: free
text, a display only; or its every code is of a system in which no guideline in force reads
drugs, such as a local drug number instead of ATC: read, but no value set can ever hold it).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from fhir_adapter.codes import system_uri
from fhir_adapter.normalise import contained_medication, resource_records
from rules.effective import danish_today
from rules.guideline_set import GuidelineSet
from rules.rendering import markdown_literal
from rules.tree import CompiledGuideline
from service.cds_hooks.cards import MEDICATION_FACTS, SUMMARY_LIMIT
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
        "summary_system": (
            '"{name}" er ikke tjekket: lægemiddelkoden er fra et kodesystem, '
            "ingen vejledning bruger"
        ),
        "detail_system": (
            "Vejviser tjekker en ordination mod vejledningerne ud fra lægemidlets kode. Denne "
            "ordination koder lægemidlet kun i et kodesystem, som ingen gældende vejledning "
            "bruger, så ingen vejledning er brugt på den: at intet andet kort handler om den, "
            "betyder ikke, at intet taler imod den. Tjek den selv, eller vælg lægemidlet med "
            "dets ATC-kode."
        ),
        "unchecked": "Ikke tjekket",
        "system": "lægemidlet er kun kodet i {systems}, som ingen vejledning bruger",
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
        "summary_system": (
            '"{name}" was not checked: its drug code is of a system no guideline uses'
        ),
        "detail_system": (
            "Vejviser checks an order against the guidelines by the code of its drug. This order "
            "codes its drug only in a code system that no guideline in force uses, so no "
            "guideline was applied to it: that no other card is about it does not mean that "
            "nothing speaks against it. Check it yourself, or choose the drug by its ATC code."
        ),
        "unchecked": "Not checked",
        "system": "its drug is coded only in {systems}, which no guideline uses",
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
    """A draft order no guideline could be applied to: the normaliser's reasons when its drug
    has no code, or the systems of its codes when none of them is one a guideline reads."""

    resource: str  # "MedicationRequest/<id>"
    name: str  # the drug as the order names it, or the resource
    reasons: tuple[str, ...]
    systems: tuple[str, ...] = ()  # system keys (canonical_coding); empty: it has no code


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
        if contained_medication(order, reference[1:]) is not None:
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


def _is_medication(resource: Any) -> bool:
    return (
        isinstance(resource, dict)
        and resource.get("resourceType") == "Medication"
        and isinstance(resource.get("id"), str)
    )


def medication_systems(
    guidelines: GuidelineSet, in_force: tuple[CompiledGuideline, ...]
) -> frozenset[str]:
    """The system keys in which the guidelines in force read drugs: every system of every value
    set a medication fact of theirs names (a value set may mix ATC and RxNorm). A drug coded in
    none of them cannot be in any value set those facts read, so no guideline can be applied to
    it. Keys as :func:`~fhir_adapter.codes.canonical_coding` gives them, as value sets store
    them: an alias URI of ATC is ATC. Derived from the set, never a list written here: another
    guideline set may read drugs in other systems.

    Computed once per set and versions in force (as the prefetch templates are); the key holds
    the versions' identities, kept alive by the set in the key."""
    return _medication_systems(guidelines, tuple(map(id, in_force)))


@lru_cache(maxsize=16)
def _medication_systems(guidelines: GuidelineSet, versions: tuple[int, ...]) -> frozenset[str]:
    by_identity = {id(g): g for g in guidelines.guidelines}
    systems: set[str] = set()
    for version in versions:
        for fact in by_identity[version].facts:
            if isinstance(fact.primitive, MEDICATION_FACTS):
                valueset = guidelines.valuesets[fact.primitive.valueset]
                systems.update(system for system, _ in valueset.exact)
                systems.update(system for system, _ in valueset.prefixes)
    return frozenset(systems)


def unchecked_orders(
    request: CdsRequest,
    drafts: DraftOrders,
    known: Iterable[dict[str, Any]],
    used: frozenset[str],
) -> list[Unchecked]:
    """The drafts whose drug no guideline could be matched against, of those the cards are
    about (order-select's ``selections``, else every draft): no code the normaliser can read,
    or codes only of systems not in ``used`` (:func:`medication_systems`). A draft with one
    code of a used system is checked, whatever else it carries: a code the value sets do not
    hold is then a drug the guidelines say nothing against."""
    medications: dict[str, dict[str, Any]] = {}
    for medication in [*known, *drafts.resources]:
        if _is_medication(medication):
            medications.setdefault(f"Medication/{medication['id']}", medication)
    selected = request.context.selections if request.hook == "order-select" else None
    unchecked = []
    for index, order in enumerate(drafts.orders()):
        read = resource_records(order, drafts.full_urls, medications, index=index)
        if selected is not None and read.resource not in selected:
            continue
        systems = dict.fromkeys(key for m in read.medications for key, _ in m.codings)
        if read.medications and not used.isdisjoint(systems):
            continue
        name = _drug_name(order, drafts.full_urls, medications) or read.resource
        reasons = tuple(i.reason for i in read.issues)
        unchecked.append(Unchecked(read.resource, name, reasons, tuple(systems)))
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
            local = contained_medication(order, reference[1:]) if reference[:1] == "#" else None
            key = full_urls.get(reference) or f"Medication/{reference.rsplit('/', 1)[-1]}"
            medication = local or medications.get(key)
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
    a patient exception for a guideline). The systems of a draft coded only in ones no
    guideline uses are named in the detail (as URIs, as an integrator knows them), not in the
    summary: a URI has no length limit, and the summary's room is for the drug."""
    words = _WORDS[language]
    if order.systems:
        names = ", ".join(system_uri(system) for system in order.systems)
        template, detail, label = words["summary_system"], words["detail_system"], "unchecked"
        why = words["system"].format(systems=names)
    else:
        template, detail, label = words["summary"], words["detail"], "unread"
        why = "; ".join(order.reasons)
    room = SUMMARY_LIMIT - len(template.format(name=""))
    name = order.name if len(order.name) <= room else order.name[: room - 1] + "…"
    named = markdown_literal(f"{order.resource}: {why}" if why else order.resource)
    return {
        "uuid": str(uuid.uuid4()),
        "summary": template.format(name=name),
        "indicator": "info",
        "detail": f"{detail}\n\n**{words[label]}**: {named}",
        "source": {
            "label": "Vejviser",
            "topic": {
                "system": NOTICE_TOPIC_SYSTEM,
                "code": NOT_CHECKED,
                "display": words["topic"],
            },
        },
    }
