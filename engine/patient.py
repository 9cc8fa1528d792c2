"""The per-patient engine: guideline set + normalised patient + reference date -> outcomes.

Pure and deterministic. Compiled once per guideline set (closures over the rule tree), then each
evaluation is a walk over one patient's records, indexed by value set on the way in.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, NamedTuple

from engine import primitives as p
from engine.expressions import Compiled, compile_expr
from engine.outcomes import (
    FactResult,
    GuidelineOutcome,
    IndicatorResult,
    RecommendationResult,
    TargetResult,
)
from fhir_adapter.records import Coding, ObservationRecord, PatientRecord
from rules import tree as t
from rules.expressions import references
from rules.guideline_set import GuidelineSet
from rules.rendering import Bound, markdown_literal, render
from rules.valuesets import ValueSetIndex


class ObservationValue(NamedTuple):
    """Runtime value of a latest/earliest observation fact (fields as in rules.types)."""

    value: float | Bound | None
    date: dt.date
    resource: str


class TargetValue(NamedTuple):
    value: float
    reason: t.Text
    source: str
    guideline: str  # the guideline whose rule set it (across guidelines: highest precedence)


class PatientIndex:
    """A patient's records grouped by the value sets of one guideline set."""

    def __init__(self, patient: PatientRecord, index: ValueSetIndex) -> None:
        self.patient = patient
        self.observations: dict[str, list[Any]] = defaultdict(list)
        self.medications: dict[str, list[Any]] = defaultdict(list)
        self.conditions: dict[str, list[Any]] = defaultdict(list)
        self.goals: dict[str, list[Any]] = defaultdict(list)
        # Records of one code share their codings, so each distinct codings is looked up once.
        value_sets: dict[tuple[Coding, ...], tuple[str, ...]] = {}
        for records, groups in (
            (patient.observations, self.observations),
            (patient.medications, self.medications),
            (patient.conditions, self.conditions),
            (patient.goals, self.goals),
        ):
            for record in records:
                codings = record[1]  # .codings (.measure of a GoalRecord)
                found = value_sets.get(codings)
                if found is None:
                    found = value_sets[codings] = index.of_any(codings)
                for vs in found:
                    groups[vs].append(record)
        for group in self.observations.values():  # windows are found by bisection
            group.sort(key=_DATE_THEN_RESOURCE)


_DATE_THEN_RESOURCE = attrgetter("date", "resource")
_RESOURCE = attrgetter("resource")


def _latest(records: Sequence[ObservationRecord]) -> ObservationRecord:
    """:func:`engine.primitives.latest` of non-empty records sorted by (date, resource), as
    PatientIndex keeps them: the first of the records that tie with the last, found without
    computing a key for every record."""
    last = len(records) - 1
    key = _DATE_THEN_RESOURCE(records[last])
    while last and _DATE_THEN_RESOURCE(records[last - 1]) == key:
        last -= 1
    return records[last]


FactFn = Callable[["Evaluation"], tuple[Any, tuple[str, ...]]]


class Evaluation:
    """One guideline, one patient, one date: memoises fact values and their evidence."""

    __slots__ = ("as_of", "compiled", "evidence", "index", "values", "windows")

    def __init__(self, compiled: CompiledRules, index: PatientIndex, as_of: dt.date) -> None:
        self.compiled = compiled
        self.index = index
        self.as_of = as_of
        self.values: dict[str, Any] = {}
        self.evidence: dict[str, tuple[str, ...]] = {}
        self.windows: dict[t.Period, dt.date] = {}

    def value(self, name: str) -> Any:
        if name in self.values:
            return self.values[name]
        value, evidence = self.compiled.resolvers[name](self)
        self.values[name] = value
        self.evidence[name] = evidence
        return value

    def window(self, period: t.Period) -> dt.date:
        start = self.windows.get(period)
        if start is None:
            start = self.windows[period] = p.window_start(self.as_of, period)
        return start


TemplateParts = tuple[str | tuple[Compiled, Any], ...]  # literal text, or (expression, its type)


@dataclass(frozen=True, slots=True)
class CompiledRecommendation:
    definition: t.RecommendationDef
    when: Compiled
    summary: dict[str, TemplateParts]  # by language
    detail: dict[str, TemplateParts] | None


@dataclass(frozen=True, slots=True)
class CompiledIndicator:
    id: str
    numerator: Compiled
    denominator: Compiled | None
    exceptions: Compiled | None


class CompiledRules:
    """A guideline's tree turned into closures, built once per guideline set."""

    def __init__(self, guideline: t.CompiledGuideline) -> None:
        self.guideline = guideline
        self.register = compile_expr(guideline.register)
        self.resolvers: dict[str, FactFn] = {"age": _age, "sex": _sex}
        self.fact_names = tuple(f.name for f in guideline.facts)
        for fact in guideline.facts:
            self.resolvers[fact.name] = _fact_resolver(fact)
        for target in guideline.targets:
            self.resolvers[target.name] = _target_resolver(target)
        self.recommendations = tuple(_compile_recommendation(r) for r in guideline.recommendations)
        self.indicators = tuple(
            CompiledIndicator(
                i.id,
                compile_expr(i.numerator),
                compile_expr(i.denominator) if i.denominator else None,
                compile_expr(i.exceptions) if i.exceptions else None,
            )
            for i in guideline.indicators
        )

    def evaluate(self, index: PatientIndex, as_of: dt.date) -> GuidelineOutcome:
        """This guideline alone, with its own targets: what its test cases check."""
        ev = Evaluation(self, index, as_of)
        return self.finish(ev, self.registered(ev))

    def registered(self, ev: Evaluation) -> bool:
        """In the register: alive on the reference date and meeting the guideline's criteria."""
        patient = ev.index.patient
        alive = p.alive(patient.deceased, patient.deceased_on, ev.as_of)
        return alive and self.register(ev) is True

    def finish(self, ev: Evaluation, in_register: bool) -> GuidelineOutcome:
        """Facts, targets (possibly shared across guidelines), recommendations, indicators."""
        g = self.guideline
        if not in_register:
            return GuidelineOutcome(g.id, g.version, g.content_hash, False, _facts(ev), (), (), ())
        for name in self.fact_names:
            ev.value(name)
        targets = tuple(_target_result(ev, target) for target in g.targets)
        recommendations = tuple(
            _recommendation_result(ev, rec) for rec in self.recommendations if rec.when(ev) is True
        )
        indicators = tuple(_indicator_result(ev, ind) for ind in self.indicators)
        return GuidelineOutcome(
            g.id, g.version, g.content_hash, True, _facts(ev), targets, recommendations, indicators
        )


class PatientEngine:
    """Evaluates every guideline in force on the reference date for one patient at a time."""

    def __init__(self, guidelines: GuidelineSet) -> None:
        self.guidelines = guidelines
        self.compiled = tuple(CompiledRules(g) for g in guidelines.guidelines)

    def evaluate(
        self,
        patient: PatientRecord,
        as_of: dt.date,
        in_force: Sequence[t.CompiledGuideline] | None = None,
    ) -> list[GuidelineOutcome]:
        """All guidelines in force; one target per measure across them (highest precedence).

        ``in_force``: the versions to evaluate (of this engine's set), when the caller decides by
        the instant rather than the date (the service); default: those in force on ``as_of``.
        """
        index = PatientIndex(patient, self.guidelines.index)
        wanted = None if in_force is None else {id(g) for g in in_force}
        started = []
        for rules in self.compiled:
            if rules.guideline.in_force(as_of) if wanted is None else id(rules.guideline) in wanted:
                ev = Evaluation(rules, index, as_of)
                started.append((rules, ev, rules.registered(ev)))
        _share_targets([(rules, ev) for rules, ev, in_register in started if in_register])
        return [rules.finish(ev, in_register) for rules, ev, in_register in started]


def _share_targets(evaluations: list[tuple[CompiledRules, Evaluation]]) -> None:
    """Give every guideline the winning target for each measure the patient has targets for."""
    best: dict[str, tuple[int, str, TargetValue, tuple[str, ...]]] = {}
    for rules, ev in evaluations:
        for target in rules.guideline.targets:
            value = ev.value(target.name)
            candidate = (target.precedence, rules.guideline.id, value, ev.evidence[target.name])
            current = best.get(target.measure)
            if current is None or candidate[:2] > current[:2]:
                best[target.measure] = candidate
    for rules, ev in evaluations:
        for target in rules.guideline.targets:
            _, _, value, evidence = best[target.measure]
            ev.values[target.name] = value
            ev.evidence[target.name] = evidence


# -- fact primitives --------------------------------------------------------------------------


def _age(ev: Evaluation) -> tuple[Any, tuple[str, ...]]:
    patient = ev.index.patient
    return p.age(patient.birth_date, ev.as_of), (f"Patient/{patient.id}",)


def _sex(ev: Evaluation) -> tuple[Any, tuple[str, ...]]:
    patient = ev.index.patient
    return patient.sex, (f"Patient/{patient.id}",)


def _fact_resolver(fact: t.FactDef) -> FactFn:
    primitive = fact.primitive
    if isinstance(primitive, t.Derived):
        expr = compile_expr(primitive.expr)
        names = tuple(sorted(references(primitive.expr)))

        def derived(ev: Evaluation) -> tuple[Any, tuple[str, ...]]:
            value = expr(ev)
            for name in names:
                ev.value(name)
            return value, tuple(dict.fromkeys(r for n in names for r in ev.evidence[n]))

        return derived
    if isinstance(primitive, t.ObservationFact):
        return _observation_resolver(primitive)
    if isinstance(primitive, t.ActiveMedication):
        vs = primitive.valueset

        def active(ev: Evaluation) -> tuple[Any, tuple[str, ...]]:
            found = p.active_medications(ev.index.medications.get(vs, ()), ev.as_of)
            return bool(found), tuple(r.resource for r in found)

        return active
    if isinstance(primitive, t.ContinuousUse | t.MedicationStarted):
        return _episode_resolver(primitive)
    if isinstance(primitive, t.ConditionPresent):
        vs, include_resolved = primitive.valueset, primitive.include_resolved

        def condition(ev: Evaluation) -> tuple[Any, tuple[str, ...]]:
            records = ev.index.conditions.get(vs, ())
            found = p.conditions_present(records, ev.as_of, include_resolved)
            return bool(found), tuple(r.resource for r in found)

        return condition
    if isinstance(primitive, t.ConditionOnset):
        vs = primitive.valueset

        def onset(ev: Evaluation) -> tuple[Any, tuple[str, ...]]:
            found = p.first_onset(ev.index.conditions.get(vs, ()), ev.as_of)
            return (None, ()) if found is None else (found.onset, (found.resource,))

        return onset
    if isinstance(primitive, t.PatientGoal):
        vs = primitive.valueset

        def goal(ev: Evaluation) -> tuple[Any, tuple[str, ...]]:
            found = p.goal_in_force(ev.index.goals.get(vs, ()), ev.as_of)
            return (None, ()) if found is None else (found.value, (found.resource,))

        return goal
    raise TypeError(f"no evaluation for {type(primitive).__name__}")


def _observation_resolver(primitive: t.ObservationFact) -> FactFn:
    vs, window, which = primitive.valueset, primitive.window, primitive.which

    def observation(ev: Evaluation) -> tuple[Any, tuple[str, ...]]:
        records = p.in_window(ev.index.observations.get(vs, ()), ev.window(window), ev.as_of)
        if which == "count":
            return float(len(records)), tuple(map(_RESOURCE, records))
        if not records:
            return None, ()
        # The window is sorted by (date, resource), so the earliest record is the first one.
        record = _latest(records) if which == "latest" else records[0]
        value = record.value
        if value is not None and record.comparator is not None:
            value = Bound(value, record.comparator)
        return ObservationValue(value, record.date, record.resource), (record.resource,)

    return observation


def _episode_resolver(primitive: t.ContinuousUse | t.MedicationStarted) -> FactFn:
    vs, gap = primitive.valueset, primitive.max_gap_days
    continuous = isinstance(primitive, t.ContinuousUse)
    period = primitive.longer_than if isinstance(primitive, t.ContinuousUse) else primitive.within

    def episode(ev: Evaluation) -> tuple[Any, tuple[str, ...]]:
        spans = p.episodes(ev.index.medications.get(vs, ()), ev.as_of, gap)
        edge = ev.window(period)
        for start, end, resources in spans:
            if continuous and end >= ev.as_of and start < edge:
                return True, resources
            if not continuous and start >= edge:
                return True, resources
        return False, ()

    return episode


def _target_resolver(target: t.TargetDef) -> FactFn:
    cases = tuple((compile_expr(c.when) if c.when else None, c) for c in target.cases)
    case_refs = tuple(tuple(sorted(references(c.when))) if c.when else () for c in target.cases)
    measure = target.measure

    def resolve(ev: Evaluation) -> tuple[Any, tuple[str, ...]]:
        guideline = ev.compiled.guideline.id
        goal = p.goal_in_force(ev.index.goals.get(measure, ()), ev.as_of)
        if goal is not None:
            return TargetValue(goal.value, t.GOAL_REASON, "goal", guideline), (goal.resource,)
        for (when, case), names in zip(cases, case_refs, strict=True):
            if when is None:
                return TargetValue(case.value, case.reason, "default", guideline), ()
            if when(ev) is True:
                evidence = tuple(dict.fromkeys(r for n in names for r in ev.evidence[n]))
                return TargetValue(case.value, case.reason, "case", guideline), evidence
        raise AssertionError("a target always ends with its default")

    return resolve


# -- results ----------------------------------------------------------------------------------


def _facts(ev: Evaluation) -> tuple[FactResult, ...]:
    target_names = {target.name for target in ev.compiled.guideline.targets}
    return tuple(
        FactResult(name, value, ev.evidence[name])
        for name, value in ev.values.items()
        if name not in target_names
    )


def _target_result(ev: Evaluation, target: t.TargetDef) -> TargetResult:
    value: TargetValue = ev.value(target.name)
    return TargetResult(
        target.name,
        target.measure,
        value.value,
        target.unit,
        value.reason,
        value.source,
        ev.evidence[target.name],
        value.guideline,
    )


def _compile_templates(templates: t.Templates) -> dict[str, TemplateParts]:
    return {
        language: tuple(
            part if isinstance(part, str) else (compile_expr(part), part.type)
            for part in templates.in_language(language).parts
        )
        for language in ("da", "en")
    }


def _compile_recommendation(rec: t.RecommendationDef) -> CompiledRecommendation:
    detail = _compile_templates(rec.detail) if rec.detail else None
    return CompiledRecommendation(
        rec, compile_expr(rec.when), _compile_templates(rec.summary), detail
    )


def _render(
    ev: Evaluation, templates: dict[str, TemplateParts], literal: Callable[[str], str] = str
) -> t.Text:
    """The template with its values filled in, each passed through ``literal`` (a detail is
    markdown: a value shows as itself there, whatever characters the chart gave it)."""
    da, en = (
        "".join(
            part if isinstance(part, str) else literal(render(part[0](ev), part[1], language))
            for part in templates[language]
        )
        for language in ("da", "en")
    )
    return t.Text(da, en)


def _recommendation_result(ev: Evaluation, rec: CompiledRecommendation) -> RecommendationResult:
    d = rec.definition
    detail = _render(ev, rec.detail, markdown_literal) if rec.detail is not None else None
    for name in d.evidence:
        ev.value(name)
    evidence = tuple(dict.fromkeys(r for name in d.evidence for r in ev.evidence[name]))
    return RecommendationResult(d.id, d.indicator, _render(ev, rec.summary), detail, evidence)


def _indicator_result(ev: Evaluation, ind: CompiledIndicator) -> IndicatorResult:
    eligible = ind.denominator is None or ind.denominator(ev) is True
    excepted = eligible and ind.exceptions is not None and ind.exceptions(ev) is True
    denominator = eligible and not excepted
    numerator = denominator and ind.numerator(ev) is True
    return IndicatorResult(ind.id, denominator, numerator, excepted)
