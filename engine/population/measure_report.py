"""FHIR R4 MeasureReports for a practice: the sweep's indicators in a form other systems read.

Why: a quality platform or an EHR dashboard should not have to parse our CSV. Each guideline is a
Measure (canonical ``https://vejviser.dk/fhir/Measure/<id>|<version>``), each indicator a group.
Two kinds per practice and guideline:

- ``summary``: counts and the measure score per indicator - an aggregate for the practice;
- ``subject-list``: the same groups with each population's patients in a contained ``List`` -
  identifiable, for the practice only (the closed room).

Population semantics follow FHIR's proportion measures, which differ from indicators.csv in one
place: FHIR's ``denominator`` *includes* the ``denominator-exception`` patients and the score is
numerator / (denominator - denominator-exception). ``initial-population`` is the register.
Built as plain dicts (validated against fhir.resources' R4B models in the tests, which are
identical to R4 for MeasureReport and List) so writing thousands of reports stays cheap.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from engine.population.outcomes import PopulationOutcome
from rules.tree import CompiledGuideline

MEASURE_BASE = "https://vejviser.dk/fhir/Measure/"
INDICATOR_SYSTEM = "https://vejviser.dk/fhir/CodeSystem/indicator"
POPULATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/measure-population"
YDERNUMMER = "urn:oid:1.2.208.176.1.4"  # as fhir_adapter.normalise.YDERNUMMER
FHIR_ID_LENGTH = 64

POPULATIONS = ("initial-population", "denominator", "denominator-exception", "numerator")
Members = Mapping[str, Sequence[str]]
"""Population code -> patient ids (FHIR semantics: denominator includes the exceptions)."""


def measure_url(guideline: CompiledGuideline) -> str:
    return f"{MEASURE_BASE}{guideline.id}|{guideline.version}"


def resource_id(*parts: str) -> str:
    """A FHIR id (at most 64 of [A-Za-z0-9-.]) that stays readable when it fits."""
    text = "-".join(parts)
    if len(text) <= FHIR_ID_LENGTH and all(c.isalnum() or c in "-." for c in text):
        return text
    return hashlib.sha256(text.encode()).hexdigest()[:FHIR_ID_LENGTH]


def _base(kind: str, practice: str, guideline: CompiledGuideline, as_of: dt.date) -> dict[str, Any]:
    return {
        "resourceType": "MeasureReport",
        "id": resource_id(kind, practice, guideline.id),
        "status": "complete",
        "type": kind,
        "measure": measure_url(guideline),
        # A point-in-time sweep: every indicator's own look-back window ends on the reference date.
        "period": {"start": as_of.isoformat(), "end": as_of.isoformat()},
        "reporter": _reporter(practice),
    }


def _reporter(practice: str) -> dict[str, Any]:
    """The practice by its ydernummer; a practice known only by the reference its patients gave
    (an export without its Organizations) is that reference, not a ydernummer it is not."""
    if "/" in practice or ":" in practice:  # as the ingest tells them apart
        if practice.startswith("Organization/"):
            return {"reference": practice}
        return {"display": practice}
    return {
        "identifier": {"system": YDERNUMMER, "value": practice},
        "display": f"ydernummer {practice}",
    }


def _group(guideline: CompiledGuideline, n: int, language: str) -> dict[str, Any]:
    indicator = guideline.indicators[n]
    return {
        "code": {
            "coding": [{"system": INDICATOR_SYSTEM, "code": f"{guideline.id}/{indicator.id}"}],
            "text": indicator.title.in_language(language),
        }
    }


def _population(code: str) -> dict[str, Any]:
    return {"code": {"coding": [{"system": POPULATION_SYSTEM, "code": code}]}}


def _score(populations: Mapping[str, int]) -> dict[str, Any]:
    effective = populations["denominator"] - populations["denominator-exception"]
    if effective <= 0:
        return {}
    return {"measureScore": {"value": round(populations["numerator"] / effective, 6)}}


def summary_report(
    practice: str,
    guideline: CompiledGuideline,
    counts: Mapping[str, Mapping[str, int]],
    as_of: dt.date,
    language: str,
) -> dict[str, Any]:
    """One practice, one guideline: a group per indicator with its population counts.

    ``counts`` maps indicator id -> FHIR population code -> count (see :func:`population_counts`).
    """
    report = _base("summary", practice, guideline, as_of)
    groups = []
    for n, indicator in enumerate(guideline.indicators):
        populations = counts.get(indicator.id, dict.fromkeys(POPULATIONS, 0))
        group = _group(guideline, n, language)
        group["population"] = [
            {**_population(code), "count": populations[code]} for code in POPULATIONS
        ]
        group.update(_score(populations))
        groups.append(group)
    report["group"] = groups
    return report


class Entries(dict[str, dict[str, Any]]):
    """A List entry per patient, made the first time it is asked for and shared after that.

    Why: a patient is in several populations of every indicator of several guidelines, and the
    entries of a national run's reports were most of their time (tens of millions of small
    dicts). The JSON is the same whether entries are shared or not."""

    def __missing__(self, patient: str) -> dict[str, Any]:
        entry = self[patient] = {"item": {"reference": f"Patient/{patient}"}}
        return entry


def subject_list_report(
    practice: str,
    guideline: CompiledGuideline,
    members: Mapping[str, Members],
    as_of: dt.date,
    language: str,
    entries: Entries | None = None,
) -> dict[str, Any]:
    """One practice, one guideline: each population's patients as a contained List.

    ``members`` maps indicator id -> FHIR population code -> patient ids. Empty populations get
    a count of 0 and no List. ``entries``: the practice's entries, shared by its reports.
    """
    entries = Entries() if entries is None else entries
    report = _base("subject-list", practice, guideline, as_of)
    contained: list[dict[str, Any]] = []
    groups = []
    for n, indicator in enumerate(guideline.indicators):
        found = members.get(indicator.id, {})
        group = _group(guideline, n, language)
        populations = []
        for code in POPULATIONS:
            patients = sorted(found.get(code, ()))
            population = {**_population(code), "count": len(patients)}
            if patients:
                list_id = f"l{n}-{code}"
                contained.append(
                    {
                        "resourceType": "List",
                        "id": list_id,
                        "status": "current",
                        "mode": "snapshot",
                        "title": f"{indicator.id}: {code}",
                        "date": as_of.isoformat(),
                        "entry": [entries[p] for p in patients],
                    }
                )
                population["subjectResults"] = {"reference": f"#{list_id}"}
            populations.append(population)
        group["population"] = populations
        group.update(_score({code: len(found.get(code, ())) for code in POPULATIONS}))
        groups.append(group)
    if contained:
        report["contained"] = contained
    report["group"] = groups
    return report


def practice_members(
    outcomes: Iterable[PopulationOutcome],
) -> dict[str, dict[str, dict[str, dict[str, list[str]]]]]:
    """practice -> guideline -> indicator -> FHIR population -> patients, for the reports.

    Membership maps to FHIR's populations: numerator patients are in the denominator too, and
    excepted patients in the denominator and the denominator-exception.
    """
    found: dict[str, dict[str, dict[str, dict[str, list[str]]]]] = {}
    for o in outcomes:
        if o.practice is None or not o.in_register:
            continue
        per_indicator = found.setdefault(o.practice, {}).setdefault(o.guideline, {})
        for indicator, membership in o.indicators:
            populations = per_indicator.setdefault(indicator, {code: [] for code in POPULATIONS})
            for code in _FHIR_POPULATIONS[membership]:
                populations[code].append(o.patient)
    return found


_FHIR_POPULATIONS = {
    "numerator": ("initial-population", "denominator", "numerator"),
    "denominator": ("initial-population", "denominator"),
    "excepted": ("initial-population", "denominator", "denominator-exception"),
    "outside": ("initial-population",),
}


def population_counts(members: Mapping[str, Members]) -> dict[str, dict[str, int]]:
    """indicator -> FHIR population -> count, from :func:`practice_members`' lists."""
    return {
        indicator: {code: len(found.get(code, ())) for code in POPULATIONS}
        for indicator, found in members.items()
    }
