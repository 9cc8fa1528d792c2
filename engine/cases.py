"""Guideline test cases: shorthand patients become FHIR R4, then run through the real pipeline.

A case passes only through the same normalisation and engine as production, so an author's
"HbA1c in %" or "entered-in-error" case tests what a GP will actually see.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Any

from engine.outcomes import GuidelineOutcome
from engine.patient import CompiledRules, ObservationValue, PatientEngine, PatientIndex, TargetValue
from fhir_adapter.codes import system_uri
from fhir_adapter.normalise import normalise_patient
from rules import schema as s
from rules.compiler import GuidelineFile
from rules.errors import RuleError
from rules.guideline_set import GuidelineSet
from rules.rendering import Bound

PATIENT_ID = "case-patient"
UCUM = "http://unitsofmeasure.org"
SUBJECT = {"reference": f"Patient/{PATIENT_ID}"}


def codeable(codes: str | list[str]) -> dict[str, Any]:
    """'npu:NPU27300' (or a list of them) as a FHIR CodeableConcept."""
    items = [codes] if isinstance(codes, str) else codes
    coding = []
    for item in items:
        key, _, code = item.partition(":")
        coding.append({"system": system_uri(key), "code": code})
    return {"coding": coding}


def quantity(value: float | str, unit: str | None) -> dict[str, Any]:
    """A valueQuantity; '>90' becomes value 90 with comparator '>'."""
    result: dict[str, Any] = {}
    if isinstance(value, str):
        stripped = value.strip()
        comparator = next((c for c in ("<=", ">=", "<", ">") if stripped.startswith(c)), None)
        if comparator:
            result["comparator"] = comparator
            stripped = stripped[len(comparator) :]
        result["value"] = float(stripped)
    else:
        result["value"] = value
    if unit:
        result.update(unit=unit, system=UCUM, code=unit)
    return result


def _observation(index: int, obs: s.CaseObservation) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": f"observation-{index}",
        "status": obs.status,
        "code": codeable(obs.code),
        "subject": SUBJECT,
        "effectiveDateTime": obs.date.isoformat(),
    }
    if obs.value is not None:
        resource["valueQuantity"] = quantity(obs.value, obs.unit)
    if obs.components:
        resource["component"] = [
            {"code": codeable(c.code), "valueQuantity": quantity(c.value, c.unit)}
            for c in obs.components
            if c.value is not None
        ]
    return resource


def _medication(index: int, med: s.CaseMedication) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": med.resource,
        "id": f"medication-{index}",
        "status": med.status,
        "medicationCodeableConcept": codeable(med.code),
        "subject": SUBJECT,
    }
    if med.resource == "MedicationStatement":
        period = {"start": med.start.isoformat()}
        if med.end:
            period["end"] = med.end.isoformat()
        resource["effectivePeriod"] = period
    else:
        resource["intent"] = "order"
        resource["authoredOn"] = med.start.isoformat()
        if med.end:  # a supply that lasts from start to end, both days included
            days = (med.end - med.start).days + 1
            supply = {"value": days, "unit": "days", "system": UCUM, "code": "d"}
            resource["dispenseRequest"] = {"expectedSupplyDuration": supply}
    return resource


def _condition(index: int, cond: s.CaseCondition) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Condition",
        "id": f"condition-{index}",
        "clinicalStatus": _status("condition-clinical", cond.clinical_status),
        "verificationStatus": _status("condition-ver-status", cond.verification_status),
        "code": codeable(cond.code),
        "subject": SUBJECT,
    }
    if cond.onset:
        resource["onsetDateTime"] = cond.onset.isoformat()
    if cond.abatement:
        resource["abatementDateTime"] = cond.abatement.isoformat()
    return resource


def _status(system: str, code: str) -> dict[str, Any]:
    return {"coding": [{"system": f"http://terminology.hl7.org/CodeSystem/{system}", "code": code}]}


def _goal(index: int, goal: s.CaseGoal) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Goal",
        "id": f"goal-{index}",
        "lifecycleStatus": goal.status,
        "description": {"text": "individual target"},
        "subject": SUBJECT,
        "target": [
            {"measure": codeable(goal.measure), "detailQuantity": quantity(goal.value, goal.unit)}
        ],
    }
    if goal.start:
        resource["startDate"] = goal.start.isoformat()
    return resource


def case_resources(patient: s.CasePatient) -> list[dict[str, Any]]:
    """The FHIR R4 resources a shorthand test patient stands for."""
    resources: list[dict[str, Any]] = [
        {
            "resourceType": "Patient",
            "id": PATIENT_ID,
            "birthDate": patient.birth_date.isoformat(),
            "gender": patient.sex,
            **_deceased(patient.deceased),
        }
    ]
    resources += [_condition(i, c) for i, c in enumerate(patient.conditions, 1)]
    resources += [_observation(i, o) for i, o in enumerate(patient.observations, 1)]
    resources += [_medication(i, m) for i, m in enumerate(patient.medications, 1)]
    resources += [_goal(i, g) for i, g in enumerate(patient.goals, 1)]
    resources += patient.resources
    return resources


def _deceased(deceased: dt.date | bool) -> dict[str, Any]:
    if isinstance(deceased, bool):
        return {"deceasedBoolean": True} if deceased else {}
    return {"deceasedDateTime": deceased.isoformat()}


@dataclass(frozen=True, slots=True)
class CaseResult:
    guideline: str
    name: str
    failures: tuple[RuleError, ...]

    @property
    def passed(self) -> bool:
        return not self.failures


def run_cases(guidelines: GuidelineSet, library: PatientEngine | None = None) -> list[CaseResult]:
    """Run every test case of every guideline file in the set (``library``: the set's engine,
    when the caller has built it already)."""
    library = library or PatientEngine(guidelines)
    results = []
    for file in guidelines.files:
        rules = CompiledRules(file.guideline)
        for index, case in enumerate(file.cases):
            results.append(run_case(guidelines, library, rules, file, index, case))
    return results


def case_failures(results: list[CaseResult]) -> list[RuleError]:
    """Every failed expectation of the results, in file order, as ``file:line`` errors."""
    return [failure for result in results for failure in result.failures]


def run_case(
    guidelines: GuidelineSet,
    library: PatientEngine,
    rules: CompiledRules,
    file: GuidelineFile,
    index: int,
    case: s.GuidelineCase,
) -> CaseResult:
    """One case: this guideline alone (drafts and future versions too), or with the library."""
    patient = normalise_patient(case_resources(case.patient))
    position = file.document.position(("tests", index))
    guideline = file.guideline
    if case.with_library:
        outcome = next(
            (
                o
                for o in library.evaluate(patient, case.as_of)
                if (o.guideline, o.version) == (guideline.id, guideline.version)
            ),
            None,
        )
        if outcome is None:
            message = f"test '{case.name}' failed: the guideline is not in force on {case.as_of}"
            return CaseResult(
                guideline.id, case.name, (RuleError(file.document.file, position, message),)
            )
    else:
        outcome = rules.evaluate(PatientIndex(patient, guidelines.index), case.as_of)
    failures = tuple(
        RuleError(file.document.file, position, f"test '{case.name}' failed: {message}")
        for message in compare(outcome, case.expect)
    )
    return CaseResult(guideline.id, case.name, failures)


def compare(outcome: GuidelineOutcome, expect: s.Expectation) -> list[str]:
    """Every difference between what was expected and what the engine concluded, in words."""
    problems: list[str] = []
    if outcome.in_register != expect.in_register:
        facts = ", ".join(f"{f.name} = {_show(f.value)}" for f in outcome.facts)
        problems.append(
            f"expected register {_show(expect.in_register)}, got {_show(outcome.in_register)} ({facts})"
        )
    if expect.recommendations is not None:
        got = sorted(r.id for r in outcome.recommendations)
        if got != sorted(expect.recommendations):
            problems.append(f"expected recommendations {sorted(expect.recommendations)}, got {got}")
    for name, value in (expect.targets or {}).items():
        target = outcome.target(name)
        if target is None or not math.isclose(target.value, value):
            got_text = "none" if target is None else f"{_show(target.value)} ({target.reason.en})"
            problems.append(f"expected target {name} = {_show(value)}, got {got_text}")
    for name, setter in (expect.targets_set_by or {}).items():
        target = outcome.target(name)
        if target is None or target.set_by != setter:
            got_text = "none" if target is None else target.set_by
            problems.append(f"expected target {name} to be set by {setter}, got {got_text}")
    for name, phrase in (expect.target_reasons or {}).items():
        target = outcome.target(name)
        if target is None or phrase.lower() not in target.reason.en.lower():
            got_text = "none" if target is None else repr(target.reason.en)
            problems.append(f"expected the reason for {name} to mention {phrase!r}, got {got_text}")
    memberships = {i.id: i.membership for i in outcome.indicators}
    for ident, membership in (expect.indicators or {}).items():
        got_membership = memberships.get(ident, "outside")
        if got_membership != membership:
            problems.append(f"expected indicator {ident}: {membership}, got {got_membership}")
    for name, value in (expect.facts or {}).items():
        fact = outcome.fact(name)
        if fact is None:
            why = (
                ""
                if outcome.in_register
                else "; the patient is not in the register, so only the facts the register needs are"
            )
            problems.append(f"fact {name} was not evaluated (no expression reads it{why})")
        elif not _same(fact.value, value):
            problems.append(f"expected fact {name} = {_show(value)}, got {_show(fact.value)}")
    return problems


def _same(actual: Any, expected: Any) -> bool:
    if isinstance(actual, ObservationValue | TargetValue):
        actual = actual.date if isinstance(expected, dt.date) else actual.value
    if isinstance(actual, Bound):
        return (
            isinstance(expected, str)
            and expected.replace(" ", "") == f"{actual.comparator}{actual.value:g}"
        )
    if (
        isinstance(actual, float)
        and isinstance(expected, int | float)
        and not isinstance(expected, bool)
    ):
        return math.isclose(actual, expected)
    return actual == expected


def _show(value: Any) -> str:
    if value is None:
        return "missing"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, ObservationValue):
        return f"{_show(value.value)} ({value.date}, {value.resource})"
    if isinstance(value, TargetValue):
        return f"{_show(value.value)} ({value.source})"
    if isinstance(value, Bound):
        return f"{value.comparator}{value.value:g}"
    return str(value)
