"""The per-patient engine on shorthand patients that pass through the real FHIR normalisation."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from conformance.engines.test_agreement import assert_same, library, on_duckdb, per_patient
from engine.cases import case_resources
from engine.outcomes import GuidelineOutcome
from engine.patient import PatientEngine
from fhir_adapter.normalise import normalise, normalise_patient, read_resources
from rules.errors import RuleFileError
from rules.guideline_set import load_guidelines
from rules.schema import CasePatient

AS_OF = dt.date(2026, 6, 1)
T2D = {"code": "icpc2:T90", "onset": "2015-01-01"}


def run(engine: PatientEngine, as_of: dt.date = AS_OF, **patient: Any) -> GuidelineOutcome:
    spec = CasePatient.model_validate({"birth_date": "1950-01-01", "sex": "female", **patient})
    outcomes = engine.evaluate(normalise_patient(case_resources(spec)), as_of)
    (outcome,) = [o for o in outcomes if o.guideline == "example-hba1c"]
    return outcome


def hba1c(value: float | str, date: str, unit: str = "mmol/mol", **extra: Any) -> dict[str, Any]:
    code = "npu:NPU03835" if unit == "%" else "npu:NPU27300"
    return {"code": code, "value": value, "unit": unit, "date": date, **extra}


def recs(outcome: GuidelineOutcome) -> set[str]:
    return {r.id for r in outcome.recommendations}


def test_explains_what_fired_and_why(engine: PatientEngine) -> None:
    out = run(
        engine,
        conditions=[T2D, {"code": "icpc2:K76", "onset": "2020-01-01"}],
        observations=[hba1c(67, "2026-03-02")],
    )
    assert out.in_register
    target = out.target("hba1c_target")
    assert target is not None and (target.value, target.source) == (58, "case")
    assert target.reason.en == "ischaemic heart disease"
    assert target.evidence == ("Condition/condition-2",)
    (card,) = out.recommendations
    assert card.summary.en == "HbA1c 67 mmol/mol (2026-03-02) is above the target 58 mmol/mol"
    assert card.summary.da == "HbA1c 67 mmol/mol (2026-03-02) er over målet 58 mmol/mol"
    assert card.evidence == (
        "Observation/observation-1",
        "Condition/condition-2",
        "Condition/condition-1",
    )


def test_value_exactly_at_the_target_does_not_fire(engine: PatientEngine) -> None:
    out = run(engine, conditions=[T2D], observations=[hba1c(53, "2026-03-02")])
    assert recs(out) == set()


def test_window_includes_its_first_day_and_nothing_before(engine: PatientEngine) -> None:
    on_edge = run(engine, conditions=[T2D], observations=[hba1c(60, "2025-06-01")])
    assert recs(on_edge) == {"above-target"}
    outside = run(engine, conditions=[T2D], observations=[hba1c(60, "2025-05-31")])
    assert recs(outside) == {"missing"}


def test_observation_after_the_reference_date_is_ignored(engine: PatientEngine) -> None:
    out = run(engine, conditions=[T2D], observations=[hba1c(80, "2026-06-02")])
    assert recs(out) == {"missing"}


def test_entered_in_error_never_counts(engine: PatientEngine) -> None:
    out = run(
        engine,
        conditions=[T2D],
        observations=[hba1c(50, "2026-01-01"), hba1c(90, "2026-05-01", status="entered-in-error")],
    )
    assert recs(out) == set()
    fact = out.fact("hba1c_count")
    assert fact is not None and fact.value == 1


def test_hba1c_in_percent_is_converted(engine: PatientEngine) -> None:
    out = run(engine, conditions=[T2D], observations=[hba1c(8.0, "2026-03-02", unit="%")])
    fact = out.fact("hba1c")
    assert fact is not None and fact.value.value == 64
    assert recs(out) == {"above-target"}


def test_a_goal_overrides_the_default_target(engine: PatientEngine) -> None:
    out = run(
        engine,
        conditions=[T2D],
        observations=[hba1c(60, "2026-03-02")],
        goals=[{"measure": "npu:NPU27300", "value": 64, "unit": "mmol/mol", "start": "2025-01-01"}],
    )
    target = out.target("hba1c_target")
    assert target is not None and (target.value, target.source) == (64, "goal")
    assert target.evidence == ("Goal/goal-1",)
    assert recs(out) == set()


def test_a_goal_in_percent_is_converted(engine: PatientEngine) -> None:
    out = run(
        engine, conditions=[T2D], goals=[{"measure": "npu:NPU03835", "value": 7.5, "unit": "%"}]
    )
    target = out.target("hba1c_target")
    assert target is not None and target.value == 58


def test_first_matching_case_wins(engine: PatientEngine) -> None:
    out = run(
        engine,
        birth_date="1935-01-01",
        conditions=[T2D, {"code": "icpc2:K76"}],
        observations=[hba1c(60, "2026-03-02")],
    )
    target = out.target("hba1c_target")
    assert target is not None and (target.value, target.reason.en) == (70, "frail elderly")


def test_no_data_at_all(engine: PatientEngine) -> None:
    out = run(engine)
    assert not out.in_register
    assert out.recommendations == () and out.indicators == ()
    t2d = out.fact("t2d")
    assert t2d is not None and t2d.value is False


@pytest.mark.parametrize(
    ("code", "in_register"),
    [("icd10:E11.9", True), ("sks:DE119", True), ("icpc2:T90", True), ("icpc2:T89", False)],
)
def test_code_aliases_and_hierarchy(engine: PatientEngine, code: str, in_register: bool) -> None:
    assert run(engine, conditions=[{"code": code}]).in_register is in_register


def test_refuted_and_resolved_conditions(engine: PatientEngine) -> None:
    refuted = {**T2D, "verification_status": "refuted"}
    assert not run(engine, conditions=[refuted]).in_register
    resolved = {**T2D, "clinical_status": "resolved", "abatement": "2026-01-01"}
    assert not run(engine, conditions=[resolved]).in_register
    assert run(engine, as_of=dt.date(2025, 6, 1), conditions=[resolved]).in_register


def test_egfr_reported_as_a_bound(engine: PatientEngine) -> None:
    metformin = {"code": "atc:A10BA02", "start": "2020-01-01"}
    egfr = {"code": "npu:DNK35302", "unit": "mL/min/1.73m2", "date": "2026-05-01"}
    above = run(
        engine, conditions=[T2D], medications=[metformin], observations=[{**egfr, "value": ">90"}]
    )
    assert "metformin-low-egfr" not in recs(above)
    low = run(
        engine, conditions=[T2D], medications=[metformin], observations=[{**egfr, "value": 25}]
    )
    assert "metformin-low-egfr" in recs(low)
    bounded_low = run(
        engine, conditions=[T2D], medications=[metformin], observations=[{**egfr, "value": "<15"}]
    )
    assert "metformin-low-egfr" in recs(bounded_low)


def test_stopped_medication_is_not_active(engine: PatientEngine) -> None:
    egfr = {"code": "npu:DNK35302", "value": 25, "unit": "mL/min/1.73m2", "date": "2026-05-01"}
    stopped = {"code": "atc:A10BA02", "start": "2020-01-01", "status": "stopped"}
    ended = {
        "code": "atc:A10BA02",
        "start": "2020-01-01",
        "end": "2026-05-31",
        "status": "completed",
    }
    for medication in (stopped, ended):
        out = run(engine, conditions=[T2D], medications=[medication], observations=[egfr])
        assert "metformin-low-egfr" not in recs(out)


def test_continuous_use_longer_than_28_days(engine: PatientEngine) -> None:
    def long_benzo(*medications: dict[str, Any]) -> bool:
        fact = run(engine, conditions=[T2D], medications=list(medications)).fact("long_benzo")
        assert fact is not None
        return fact.value

    assert not long_benzo({"code": "atc:N05BA01", "start": "2026-05-04"})  # 28 days before
    assert long_benzo({"code": "atc:N05BA01", "start": "2026-05-03"})
    restarted = {"code": "atc:N05CD02", "start": "2026-05-08"}  # alone: under 28 days
    seven_day_gap = {
        "code": "atc:N05BA01",
        "start": "2026-04-20",
        "end": "2026-04-30",
        "status": "completed",
    }
    eight_day_gap = {**seven_day_gap, "end": "2026-04-29"}
    assert long_benzo(seven_day_gap, restarted)  # one episode: max_gap_days is 7
    assert not long_benzo(eight_day_gap, restarted)


def test_medication_started_within_90_days(engine: PatientEngine) -> None:
    def new_metformin(start: str) -> bool:
        fact = run(
            engine, conditions=[T2D], medications=[{"code": "atc:A10BA02", "start": start}]
        ).fact("new_metformin")
        assert fact is not None
        return fact.value

    assert new_metformin("2026-03-03")  # exactly 90 days before
    assert not new_metformin("2026-03-02")


def test_medication_request_is_the_fallback(engine: PatientEngine) -> None:
    egfr = {"code": "npu:DNK35302", "value": 25, "unit": "mL/min/1.73m2", "date": "2026-05-01"}
    request = {"code": "atc:A10BA02", "start": "2026-01-01", "resource": "MedicationRequest"}
    out = run(engine, conditions=[T2D], medications=[request], observations=[egfr])
    assert "metformin-low-egfr" in recs(out)


def test_a_case_request_with_an_end_is_supplied_to_that_day(engine: PatientEngine) -> None:
    """A test case's request `end` becomes a supply that lasts to that day, both included."""
    egfr = {"code": "npu:DNK35302", "value": 25, "unit": "mL/min/1.73m2", "date": "2026-05-01"}
    request = {"code": "atc:A10BA02", "start": "2026-03-01", "resource": "MedicationRequest"}
    for end, active in (("2026-06-01", True), ("2026-05-31", False)):
        supplied = {**request, "end": end, "status": "completed"}
        out = run(engine, conditions=[T2D], medications=[supplied], observations=[egfr])
        assert ("metformin-low-egfr" in recs(out)) is active


SUPPLY = Path(__file__).parents[1] / "fhir_adapter" / "fixtures" / "medication_request_supply.json"


def test_library_counts_a_prescription_for_its_supply_in_both_engines() -> None:
    """Found by QA: a 20-tablet tramadol prescription valid two years (and a stopped morphine
    one valid to 2028) gave "opioid for more than 6 months"; twelve monthly zopiclone renewals
    were single days that never joined, so the patient was in no register at all."""
    patients = list(normalise(read_resources(SUPPLY.read_bytes())).values())
    as_of = dt.date(2026, 11, 1)
    outcomes = per_patient(library(), patients, as_of)
    assert outcomes[("tramadol", "opioids-long-term")][0] is False  # supply ran out in January
    in_register, recommendations, *_ = outcomes[("zopiclone", "benzodiazepines-z-drugs")]
    assert in_register and "hypnotic-beyond-2-weeks" in recommendations
    assert_same(outcomes, on_duckdb(library(), patients, as_of))


def test_indicator_memberships(engine: PatientEngine) -> None:
    def membership(**patient: Any) -> str:
        (indicator,) = run(engine, conditions=[T2D], **patient).indicators
        return indicator.membership

    assert membership(observations=[hba1c(59, "2026-01-01")]) == "numerator"
    assert membership(observations=[hba1c(58, "2026-01-01")]) == "denominator"
    assert membership() == "outside"
    assert membership(birth_date="1930-01-01", observations=[hba1c(80, "2026-01-01")]) == "excepted"


def test_guideline_not_in_force_is_not_evaluated(engine: PatientEngine) -> None:
    spec = CasePatient.model_validate(
        {"birth_date": "1950-01-01", "sex": "female", "conditions": [T2D]}
    )
    assert engine.evaluate(normalise_patient(case_resources(spec)), dt.date(2019, 12, 31)) == []


def test_same_input_same_outcome(engine: PatientEngine) -> None:
    patient = {
        "conditions": [T2D],
        "observations": [hba1c(67, "2026-03-02"), hba1c(66, "2026-03-02")],
    }
    first, second = run(engine, **patient), run(engine, **patient)
    assert first == second
    fact = first.fact("hba1c")
    assert fact is not None and fact.value.resource == "Observation/observation-2"


def test_condition_onset_is_the_earliest_dated_diagnosis(engine: PatientEngine) -> None:
    later = {"code": "icd10:E11.9", "onset": "2018-03-01"}
    out = run(engine, conditions=[later, T2D, {"code": "icpc2:T90"}])
    fact = out.fact("t2d_onset")
    assert fact is not None and (fact.value, fact.evidence) == (
        dt.date(2015, 1, 1),
        ("Condition/condition-2",),
    )


ELDERLY = """
id: example-elderly
version: 1.0.0
title: {da: Eksempel ældre, en: Example elderly}
publisher: Vejviser tests
description: {da: Testvejledning, en: Test guideline}
sources:
  - {title: "Test source", url: "https://example.org/test", date: 2020-01-01}
effective: {from: 2020-01-01}
register:
  description: {da: 80 år eller ældre, en: 80 or older}
  when: age >= 80
targets:
  hba1c_goal:
    measure: hba1c
    precedence: 10
    default: {value: 64, reason: {da: ældre (test), en: elderly (test)}}
"""


def test_one_target_per_measure_across_guidelines(guideline_dir: Path) -> None:
    (guideline_dir / "elderly.yaml").write_text(ELDERLY, encoding="utf-8")
    engine = PatientEngine(load_guidelines(guideline_dir))
    old = run(
        engine, birth_date="1944-01-01", conditions=[T2D], observations=[hba1c(60, "2026-03-02")]
    )
    target = old.target("hba1c_target")
    assert target is not None and (target.value, target.set_by) == (64, "example-elderly")
    assert target.reason.en == "elderly (test)"
    assert recs(old) == set()
    younger = run(
        engine, birth_date="1950-01-01", conditions=[T2D], observations=[hba1c(60, "2026-03-02")]
    )
    target = younger.target("hba1c_target")
    assert target is not None and (target.value, target.set_by) == (53, "example-hba1c")


def test_equal_precedence_for_one_measure_is_refused(guideline_dir: Path) -> None:
    (guideline_dir / "elderly.yaml").write_text(
        ELDERLY.replace("precedence: 10", "precedence: 0"), encoding="utf-8"
    )
    with pytest.raises(RuleFileError, match="same precedence"):
        load_guidelines(guideline_dir)


def test_recorded_date_is_not_an_onset(engine: PatientEngine) -> None:
    recorded_only = {
        "resourceType": "Condition",
        "id": "re-entered",
        "subject": {"reference": "Patient/case-patient"},
        "code": {"coding": [{"system": "urn:oid:1.2.208.176.2.31", "code": "T90"}]},
        "recordedDate": "2026-01-10",
    }
    out = run(engine, resources=[recorded_only])
    assert out.in_register  # known since it was recorded
    onset = out.fact("t2d_onset")
    assert onset is not None and onset.value is None  # but not how long the disease has lasted
    before = run(engine, as_of=dt.date(2026, 1, 9), resources=[recorded_only])
    assert not before.in_register


@pytest.mark.parametrize(
    ("deceased", "as_of", "registered"),
    [
        (False, AS_OF, True),
        ("2026-06-02", AS_OF, True),  # dies the day after
        ("2026-06-01", AS_OF, False),  # died that day
        ("2024-01-01", AS_OF, False),
        ("2024-01-01", dt.date(2023, 12, 31), True),  # a sweep at an earlier date still counts them
        (True, AS_OF, False),  # date unknown
    ],
)
def test_the_dead_are_in_no_register(
    engine: PatientEngine, deceased: str | bool, as_of: dt.date, registered: bool
) -> None:
    out = run(
        engine, as_of, deceased=deceased, conditions=[T2D], observations=[hba1c(80, "2023-12-01")]
    )
    assert out.in_register is registered
    assert bool(out.recommendations) is registered
    assert bool(out.indicators) is registered
