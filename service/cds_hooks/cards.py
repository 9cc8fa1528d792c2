"""Cards that explain themselves: the data behind them, the target and its reason, the source.

Every field follows CDS Hooks 2.0: a uuid per card, a summary under 140 characters, a source
naming the guideline, markdown detail, a suggestion whose resources are valid FHIR R4, and the
override reasons a GP can pick.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from engine.explain import describe
from engine.outcomes import GuidelineOutcome, RecommendationResult, TargetResult
from fhir_adapter.codes import system_uri
from fhir_adapter.normalise import DUPLICATE, resource_codings
from fhir_adapter.records import Coding, Issue
from rules import types as ty
from rules.guideline_set import GuidelineSet
from rules.rendering import markdown_literal, render
from rules.tree import (
    ActiveMedication,
    CompiledGuideline,
    ContinuousUse,
    FactDef,
    MedicationStarted,
    ObservationFact,
    Period,
    RecommendationDef,
)
from rules.valuesets import CompiledValueSet
from service.feedback import OVERRIDE_REASONS

SUMMARY_LIMIT = 139
GUIDELINE_TOPIC_SYSTEM = "https://vejviser.dk/fhir/CodeSystem/guideline"
PROVENANCE_EXTENSION = "dk.vejviser.provenance"
WORDS = {
    "da": {
        "data": "Data brugt",
        "target": "Individuelt mål",
        "set_by": "fastsat af",
        "also": "Også i",
        "unread": "Ikke medregnet (kunne ikke læses)",
        "last": "seneste",
        "current": "aktuelt",
        "longer": "i mere end",
        "started": "startet inden for de",
    },
    "en": {
        "data": "Data used",
        "target": "Individual target",
        "set_by": "set by",
        "also": "Also in",
        "unread": "Not counted (could not be read)",
        "last": "last",
        "current": "current",
        "longer": "for more than",
        "started": "started in the",
    },
}

PERIOD_WORDS = {
    "da": {
        "days": ("dag", "dage"),
        "weeks": ("uge", "uger"),
        "months": ("måned", "måneder"),
        "years": ("år", "år"),
    },
    "en": {
        "days": ("day", "days"),
        "weeks": ("week", "weeks"),
        "months": ("month", "months"),
        "years": ("year", "years"),
    },
}


@dataclass(frozen=True, slots=True)
class CardOrigin:
    """What a card was about, kept so its feedback can be tied back to patient and guideline."""

    uuid: str
    guideline: CompiledGuideline
    recommendation: str
    evidence: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Unread:
    """A resource of the patient that yields no record (an Issue), with the codes it carries."""

    resource: str
    reasons: tuple[str, ...]
    codings: tuple[Coding, ...]


def unread_resources(issues: Sequence[Issue], resources: Iterable[Any]) -> tuple[Unread, ...]:
    """The patient's Issues per resource, with the codes of the resource as sent."""
    reasons: dict[str, list[str]] = {}
    for issue in issues:
        if issue.reason != DUPLICATE:  # the first of its name is read
            reasons.setdefault(issue.resource, []).append(issue.reason)
    if not reasons:
        return ()
    sent: dict[str, Any] = {}
    for resource in resources:
        if type(resource) is dict:
            sent.setdefault(f"{resource.get('resourceType')}/{resource.get('id')}", resource)
    return tuple(
        Unread(name, tuple(why), resource_codings(sent.get(name))) for name, why in reasons.items()
    )


def build_cards(
    guidelines: GuidelineSet,
    outcomes: list[GuidelineOutcome],
    patient_id: str,
    language: str,
    unread: tuple[Unread, ...] = (),
) -> list[tuple[dict[str, Any], CardOrigin]]:
    """One card per recommendation that fired, most urgent first. A fact line names the
    ``unread`` resources in its value set: the card was made without them."""
    by_key = {(g.id, g.version): g for g in guidelines.guidelines}
    cards = []
    for outcome in outcomes:
        guideline = by_key[(outcome.guideline, outcome.version)]
        definitions = {r.id: r for r in guideline.recommendations}
        for result in outcome.recommendations:
            definition = definitions[result.id]
            card = _card(
                guidelines, guideline, outcome, definition, result, patient_id, language, unread
            )
            origin = CardOrigin(card["uuid"], guideline, result.id, result.evidence)
            cards.append((card, origin, definition.group))
    urgency = {"critical": 0, "warning": 1, "info": 2}
    cards.sort(key=lambda triple: urgency[triple[0]["indicator"]])
    return _grouped(cards, language)


def _grouped(
    cards: list[tuple[dict[str, Any], CardOrigin, str | None]], language: str
) -> list[tuple[dict[str, Any], CardOrigin]]:
    """One card per group for the patient (the most urgent), naming the other guidelines."""
    kept: list[tuple[dict[str, Any], CardOrigin]] = []
    leaders: dict[str, tuple[dict[str, Any], list[str]]] = {}
    for card, origin, group in cards:
        if group is None or group not in leaders:
            kept.append((card, origin))
            if group is not None:
                leaders[group] = (card, [card["source"]["label"]])
            continue
        labels = leaders[group][1]
        if card["source"]["label"] not in labels:
            labels.append(card["source"]["label"])
    for card, labels in leaders.values():
        if len(labels) > 1:
            also = f"**{WORDS[language]['also']}**: " + "; ".join(labels[1:])
            card["detail"] = f"{card['detail']}\n\n{also}" if "detail" in card else also
    return kept


def _card(
    guidelines: GuidelineSet,
    guideline: CompiledGuideline,
    outcome: GuidelineOutcome,
    definition: RecommendationDef,
    result: RecommendationResult,
    patient_id: str,
    language: str,
    unread: tuple[Unread, ...],
) -> dict[str, Any]:
    summary = result.summary.in_language(language)
    if len(summary) > SUMMARY_LIMIT:  # the loader prevents this; never send an invalid card
        summary = summary[: SUMMARY_LIMIT - 1] + "…"
    detail = _detail(guidelines, guideline, outcome, definition, result, language, unread)
    card: dict[str, Any] = {
        "uuid": str(uuid.uuid4()),
        "summary": summary,
        "indicator": result.indicator,
        **({"detail": detail} if detail else {}),  # the standard allows no empty string
        "source": _source(guideline, language),
        "overrideReasons": [_reason(r, language) for r in OVERRIDE_REASONS],
        "extension": {
            PROVENANCE_EXTENSION: {
                "guideline": guideline.id,
                "version": guideline.version,
                "contentHash": guideline.content_hash,
                "recommendation": result.id,
            }
        },
    }
    if definition.suggestion is not None and definition.suggestion.order is not None:
        card["suggestions"] = [
            _order_suggestion(guidelines, definition, patient_id, summary, language)
        ]
        card["selectionBehavior"] = "at-most-one"
    return card


def _source(guideline: CompiledGuideline, language: str) -> dict[str, Any]:
    title = guideline.title.in_language(language)
    source: dict[str, Any] = {
        "label": f"{title} ({guideline.publisher.in_language(language)}, v{guideline.version})",
        "topic": {"system": GUIDELINE_TOPIC_SYSTEM, "code": guideline.id, "display": title},
    }
    if guideline.sources:
        source["url"] = guideline.sources[0].url
    return source


def _reason(coding: dict[str, Any], language: str) -> dict[str, str]:
    return {
        "system": coding["system"],
        "code": coding["code"],
        "display": coding["display"][language],
    }


def _detail(
    guidelines: GuidelineSet,
    guideline: CompiledGuideline,
    outcome: GuidelineOutcome,
    definition: RecommendationDef,
    result: RecommendationResult,
    language: str,
    unread: tuple[Unread, ...],
) -> str:
    words = WORDS[language]
    parts = [result.detail.in_language(language)] if result.detail is not None else []
    facts = {f.name: f for f in guideline.facts}
    shown: dict[str, FactDef | None] = {}  # line -> its fact (None: a target's line)
    for name in definition.evidence:
        target = outcome.target(name)
        if target is not None:
            shown.setdefault(_target_line(guidelines, guideline, target, language), None)
        elif name in facts and (
            line := _fact_line(guidelines, facts[name], outcome, language, unread)
        ):
            shown.setdefault(line, facts[name])  # two facts can show the same record: once
    # Two facts of one value set that show different things ("ukendt" in 12 months, a value
    # ever) would read as a contradiction without their windows.
    labels = Counter(_label(guidelines, f, language) for f in shown.values() if f is not None)
    lines = [
        _fact_line(guidelines, fact, outcome, language, unread, windowed=True)
        if fact is not None and labels[_label(guidelines, fact, language)] > 1
        else line
        for line, fact in shown.items()
    ]
    if lines:
        parts.append(f"**{words['data']}**\n\n" + "\n".join(line for line in lines if line))
    return "\n\n".join(parts)


def _label(guidelines: GuidelineSet, fact: FactDef, language: str) -> str:
    valueset_id: str = fact.primitive.valueset  # type: ignore[attr-defined]  # a shown fact's
    return guidelines.valuesets[valueset_id].title.in_language(language)


def _fact_line(
    guidelines: GuidelineSet,
    fact: FactDef,
    outcome: GuidelineOutcome,
    language: str,
    unread: tuple[Unread, ...],
    windowed: bool = False,
) -> str | None:
    result = outcome.fact(fact.name)
    valueset_id = getattr(fact.primitive, "valueset", None)
    if result is None or valueset_id is None:
        return None
    valueset = guidelines.valuesets[valueset_id]
    label = valueset.title.in_language(language)
    qualifier = _qualifier(fact.primitive, language) if windowed else None
    if qualifier:
        label += f", {qualifier}"
    value = markdown_literal(describe(result.value, fact.type, language))
    # an observation already names its resource
    sources = (
        f" ({markdown_literal(', '.join(result.evidence))})"
        if result.evidence and not isinstance(fact.type, ty.Record)
        else ""
    )
    missed = [u for u in unread if _may_be_in(u, valueset, fact.primitive)]
    if missed:
        named = "; ".join(f"{u.resource}: {', '.join(u.reasons)}" for u in missed)
        sources += f". {WORDS[language]['unread']}: {markdown_literal(named)}"
    return f"- {label}: {value}{sources}"


MEDICATION_FACTS = (ActiveMedication, ContinuousUse, MedicationStarted)
"""The primitives that read drugs: where a medication can count (here, and for drafts)."""


def _may_be_in(unread: Unread, valueset: CompiledValueSet, primitive: object) -> bool:
    """A resource that could not be read is named where it may belong: in the fact's value set,
    or, for a medication of unknown code (a medicationReference that did not resolve), on every
    medication fact: it may be the metformin the card says the patient does not take."""
    if unread.codings:
        return any(valueset.contains(c) for c in unread.codings)
    return isinstance(primitive, MEDICATION_FACTS) and unread.resource.startswith(
        ("MedicationStatement/", "MedicationRequest/")
    )


def _qualifier(primitive: object, language: str) -> str | None:
    """What tells two facts of one value set apart: 'Statiner, aktuelt: nej' beside 'Statiner,
    startet de seneste 100 år: ja' is history, not the contradiction the bare label made it."""
    words = WORDS[language]
    if isinstance(primitive, ObservationFact):
        return _window(primitive.window, language)
    if isinstance(primitive, ContinuousUse):
        return f"{words['longer']} {_duration(primitive.longer_than, language)}"
    if isinstance(primitive, MedicationStarted):
        return f"{words['started']} {_window(primitive.within, language)}"
    return words["current"] if isinstance(primitive, ActiveMedication) else None


def _window(period: Period, language: str) -> str:
    """'seneste 12 måneder', 'last 12 months'."""
    return f"{WORDS[language]['last']} {_duration(period, language)}"


def _duration(period: Period, language: str) -> str:
    """'12 måneder', '2 weeks'."""
    one, many = PERIOD_WORDS[language][period.unit]
    return f"{period.amount} {one if period.amount == 1 else many}"


def _target_line(
    guidelines: GuidelineSet, guideline: CompiledGuideline, target: TargetResult, language: str
) -> str:
    words = WORDS[language]
    measure = guidelines.valuesets[target.measure].title.in_language(language)
    value = render(target.value, ty.Quantity(target.unit) if target.unit else ty.NUMBER, language)
    line = f"- {words['target']} ({measure}): {value}, {target.reason.in_language(language)}"
    if target.set_by != guideline.id:
        setter = next((g for g in guidelines.guidelines if g.id == target.set_by), None)
        line += (
            f"; {words['set_by']} {setter.title.in_language(language) if setter else target.set_by}"
        )
    return line + (f" ({markdown_literal(', '.join(target.evidence))})" if target.evidence else "")


def _order_suggestion(
    guidelines: GuidelineSet,
    definition: RecommendationDef,
    patient_id: str,
    summary: str,
    language: str,
) -> dict[str, Any]:
    assert definition.suggestion is not None and definition.suggestion.order is not None
    valueset = guidelines.valuesets[definition.suggestion.order]
    system, code = valueset.preferred
    label = definition.suggestion.label.in_language(language)
    service_request = {
        "resourceType": "ServiceRequest",
        "status": "draft",
        "intent": "proposal",
        "code": {
            "coding": [{"system": system_uri(system), "code": code}],
            "text": valueset.title.in_language(language),
        },
        "subject": {"reference": f"Patient/{patient_id}"},
        "reasonCode": [{"text": summary}],
    }
    return {
        "label": label,
        "uuid": str(uuid.uuid4()),
        "isRecommended": True,
        "actions": [{"type": "create", "description": label, "resource": service_request}],
    }
