"""Outcomes in words (for a GP or an author at a terminal) and as JSON (for programs)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from engine.outcomes import GuidelineOutcome
from engine.patient import ObservationValue, TargetValue
from engine.primitives import alive
from fhir_adapter.records import PatientRecord
from rules import types as ty
from rules.guideline_set import GuidelineSet
from rules.rendering import Bound, render
from rules.tree import CompiledGuideline, Text

WORDS = {
    "da": {"register": "Register", "yes": "ja", "no": "nej", "target": "Mål", "facts": "Fakta",
           "indicators": "Indikatorer", "evidence": "data", "none": "ingen anbefalinger",
           "set_by": "fastsat af"},
    "en": {"register": "Register", "yes": "yes", "no": "no", "target": "Target", "facts": "Facts",
           "indicators": "Indicators", "evidence": "data", "none": "no recommendations",
           "set_by": "set by"},
}  # fmt: skip


DEATH = {
    "da": ("død {day}: i intet register", "død (dato ukendt): i intet register"),
    "en": ("died {day}: in no register", "died (date unknown): in no register"),
}


def death_note(patient: PatientRecord, as_of: dt.date, language: str) -> str | None:
    """Why a dead patient is in no register; None while the patient is alive on ``as_of``."""
    if alive(patient.deceased, patient.deceased_on, as_of):
        return None
    dated, undated = DEATH[language]
    day = patient.deceased_on
    return dated.format(day=day.isoformat()) if day is not None else undated


def describe(value: Any, type_: ty.Type, language: str) -> str:
    """A fact value in words: an observation shows its value, date and source resource."""
    if isinstance(value, ObservationValue) and isinstance(type_, ty.Record):
        shown = render(value.value, type_.field_type("value") or ty.NUMBER, language)
        return f"{shown} ({value.date.isoformat()}, {value.resource})"
    return render(value, type_, language)


def explain_text(
    guidelines: GuidelineSet, outcomes: Sequence[GuidelineOutcome], language: str
) -> str:
    """Per guideline: in the register or not and why, the targets, what fired, indicators."""
    words = WORDS[language]
    lines: list[str] = []
    for outcome in outcomes:
        guideline = _guideline(guidelines, outcome)
        types = {f.name: f.type for f in guideline.facts} | {"age": ty.NUMBER, "sex": ty.SEX}
        lines.append(
            f"{guideline.title.in_language(language)} ({outcome.guideline} {outcome.version})"
        )
        answer = words["yes"] if outcome.in_register else words["no"]
        lines.append(
            f"  {words['register']}: {answer} - {guideline.register_description.in_language(language)}"
        )
        for target in outcome.targets:
            value = render(
                target.value, ty.Quantity(target.unit) if target.unit else ty.NUMBER, language
            )
            evidence = f"; {', '.join(target.evidence)}" if target.evidence else ""
            if target.set_by != outcome.guideline:
                evidence += f"; {words['set_by']} {target.set_by}"
            lines.append(
                f"  {words['target']} {target.name}: {value} - {target.reason.in_language(language)} "
                f"({target.source}{evidence})"
            )
        for rec in outcome.recommendations:
            lines.append(f"  [{rec.indicator}] {rec.summary.in_language(language)}")
            if rec.detail is not None:
                lines += [f"      {line}" for line in rec.detail.in_language(language).splitlines()]
            if rec.evidence:
                lines.append(f"      {words['evidence']}: {', '.join(rec.evidence)}")
        if outcome.in_register and not outcome.recommendations:
            lines.append(f"  ({words['none']})")
        if outcome.facts:  # none for a dead patient: an empty "Facts:" read as a fault
            facts = "; ".join(
                f"{f.name} = {describe(f.value, types[f.name], language)}" for f in outcome.facts
            )
            lines.append(f"  {words['facts']}: {facts}")
        if outcome.indicators:
            memberships = ", ".join(f"{i.id}: {i.membership}" for i in outcome.indicators)
            lines.append(f"  {words['indicators']}: {memberships}")
        lines.append("")
    return "\n".join(lines)


def _guideline(guidelines: GuidelineSet, outcome: GuidelineOutcome) -> CompiledGuideline:
    return next(
        g
        for g in guidelines.guidelines
        if g.id == outcome.guideline and g.version == outcome.version
    )


def to_json(value: Any) -> Any:
    """Outcome values as JSON-ready data (dates ISO, bounds with their comparator)."""
    if isinstance(value, ObservationValue):
        return {
            "value": to_json(value.value),
            "date": value.date.isoformat(),
            "resource": value.resource,
        }
    if isinstance(value, TargetValue):
        return {"value": value.value, "reason": to_json(value.reason), "source": value.source}
    if isinstance(value, Bound):
        return {"value": value.value, "comparator": value.comparator}
    if isinstance(value, Text):
        return {"da": value.da, "en": value.en}
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def outcome_json(outcome: GuidelineOutcome) -> dict[str, Any]:
    return {
        "guideline": outcome.guideline,
        "version": outcome.version,
        "content_hash": outcome.content_hash,
        "in_register": outcome.in_register,
        "facts": [
            {"name": f.name, "value": to_json(f.value), "evidence": list(f.evidence)}
            for f in outcome.facts
        ],
        "targets": [
            {
                "name": t.name,
                "measure": t.measure,
                "value": t.value,
                "unit": t.unit,
                "reason": to_json(t.reason),
                "source": t.source,
                "set_by": t.set_by,
                "evidence": list(t.evidence),
            }
            for t in outcome.targets
        ],
        "recommendations": [
            {
                "id": r.id,
                "indicator": r.indicator,
                "summary": to_json(r.summary),
                "detail": to_json(r.detail),
                "evidence": list(r.evidence),
            }
            for r in outcome.recommendations
        ],
        "indicators": [{"id": i.id, "membership": i.membership} for i in outcome.indicators],
    }
