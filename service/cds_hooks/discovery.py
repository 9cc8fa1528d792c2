"""The services Vejviser offers and the prefetch templates they ask for.

Templates come from the guidelines' data requirements: the observation codes of every value set a
fact reads (as ``combo-code``, so blood-pressure components inside a panel match too), and a date
filter covering the longest look-back window. Absolute dates are safe even
when an EHR caches discovery: an older date only widens what is sent, and the engine applies the
exact windows itself.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import quote

from engine.primitives import window_start
from fhir_adapter.codes import SYSTEMS, system_uri
from rules import tree as t
from rules.guideline_set import GuidelineSet

PATIENT_TOKEN = "{{context.patientId}}"
LOOKBACK_MARGIN = dt.timedelta(days=31)


@dataclass(frozen=True, slots=True)
class Service:
    id: str
    hook: str
    title: str
    description: str


SERVICES = (
    Service(
        "vejviser-patient-view",
        "patient-view",
        "Vejviser: guideline check when a chart is opened",
        "Evaluates every guideline in force (targets, missing controls, medication safety) and "
        "returns cards that show the data behind them.",
    ),
    Service(
        "vejviser-order-select",
        "order-select",
        "Vejviser: medication check when an order is selected",
        "Treats the draft medication orders as active medication and returns the cards they cause.",
    ),
    Service(
        "vejviser-order-sign",
        "order-sign",
        "Vejviser: medication check before an order is signed",
        "Treats the draft medication orders as active medication and returns the cards they cause.",
    ),
)
SERVICES_BY_ID = {service.id: service for service in SERVICES}


def prefetch_templates(
    guidelines: GuidelineSet,
    today: dt.date,
    max_url_length: int = 2000,
    in_force: tuple[t.CompiledGuideline, ...] | None = None,
) -> dict[str, str]:
    """Prefetch keys and queries covering every fact of every guideline in force.

    ``in_force`` defaults to the versions in force on ``today``; the service passes the versions
    in force at this instant (a version may switch on at any moment of a day). Computed once per
    set, in-force versions, day and URL limit: the key holds the versions' identities (kept alive
    by the set in the key), so a lookup never hashes a rule tree.
    """
    if in_force is None:
        in_force = guidelines.in_force(today)
    return _templates(guidelines, tuple(map(id, in_force)), today, max_url_length)


@lru_cache(maxsize=16)
def _templates(
    guidelines: GuidelineSet, versions: tuple[int, ...], today: dt.date, max_url_length: int
) -> dict[str, str]:
    by_identity = {id(g): g for g in guidelines.guidelines}
    in_force = tuple(by_identity[v] for v in versions)
    templates = {
        "patient": f"Patient/{PATIENT_TOKEN}",
        "conditions": f"Condition?patient={PATIENT_TOKEN}",
        "medicationStatements": f"MedicationStatement?patient={PATIENT_TOKEN}",
        "medicationRequests": f"MedicationRequest?patient={PATIENT_TOKEN}",
        "goals": f"Goal?patient={PATIENT_TOKEN}",
    }
    codes, since = _observation_requirements(guidelines, in_force, today)
    if codes is None:
        templates["observations"] = _observation_query([], since)
        return templates
    for index, chunk in enumerate(_chunks(codes, since, max_url_length), 1):
        templates[f"observations{index}"] = _observation_query(chunk, since)
    return templates


def _observation_requirements(
    guidelines: GuidelineSet, in_force: tuple[t.CompiledGuideline, ...], today: dt.date
) -> tuple[list[str] | None, dt.date]:
    """Observation codes (None: cannot be listed, fetch all) and the earliest date needed."""
    codes: dict[str, None] = {}
    since = today
    listable = True
    for guideline in in_force:
        for fact in guideline.facts:
            if isinstance(fact.primitive, t.ObservationFact):
                valueset = guidelines.valuesets[fact.primitive.valueset]
                since = min(since, window_start(today, fact.primitive.window))
                listable &= not valueset.prefixes
                for system, code in sorted(valueset.exact):
                    # every URI the normaliser reads as this system: a token search matches
                    # one system URI only (older NPU data use urn:oid:1.2.208.176.2.1)
                    for uri in SYSTEMS.get(system, (system_uri(system),)):
                        codes[f"{uri}|{code}"] = None
    # a window that reaches back to 0001-01-01 ("ever") has no earlier day to spare
    margin = min(LOOKBACK_MARGIN, since - dt.date.min)
    return (list(codes) if listable else None), since - margin


def _observation_query(codes: list[str], since: dt.date) -> str:
    """``codes`` are already URL-quoted."""
    query = f"Observation?patient={PATIENT_TOKEN}&date=ge{since.isoformat()}"
    if codes:
        query += "&combo-code=" + ",".join(codes)
    return query


def _chunks(codes: list[str], since: dt.date, limit: int) -> list[list[str]]:
    """Split the (quoted) code list so no query grows past ``limit`` characters."""
    base = len(_observation_query([], since)) + len("&combo-code=")
    chunks: list[list[str]] = [[]]
    length = base
    for code in (quote(c, safe="|:/") for c in codes):
        extra = len(code) + (1 if chunks[-1] else 0)
        if chunks[-1] and length + extra > limit:
            chunks.append([code])
            length = base + len(code)
        else:
            chunks[-1].append(code)
            length += extra
    return chunks


def discovery(
    guidelines: GuidelineSet,
    today: dt.date,
    in_force: tuple[t.CompiledGuideline, ...] | None = None,
    max_url_length: int = 2000,
) -> dict[str, object]:
    """The body of ``GET /cds-services``."""
    prefetch = prefetch_templates(guidelines, today, max_url_length, in_force)
    return {
        "services": [
            {
                "hook": service.hook,
                "id": service.id,
                "title": service.title,
                "description": service.description,
                "prefetch": prefetch,
                "usageRequirements": "Send the patient's chart data as prefetch, or fhirServer "
                "with fhirAuthorization so Vejviser can fetch it.",
            }
            for service in SERVICES
        ]
    }
