"""Guideline test cases: a wrong expectation fails with a clear difference, at the right line."""

from __future__ import annotations

from pathlib import Path

import pytest
from fhir.resources.R4B import get_fhir_model_class

from engine.cases import case_resources, run_cases
from rules.guideline_set import load_guidelines
from rules.schema import CasePatient


def test_fixture_cases_pass(guideline_dir: Path) -> None:
    results = run_cases(load_guidelines(guideline_dir))
    assert results and all(r.passed for r in results)


def test_a_wrong_expected_value_fails_with_a_diff(guideline_dir: Path) -> None:
    path = guideline_dir / "example.yaml"
    path.write_text(
        path.read_text().replace("targets: {hba1c_target: 53}", "targets: {hba1c_target: 58}")
    )
    (result,) = run_cases(load_guidelines(guideline_dir))
    (failure,) = result.failures
    line = next(
        i
        for i, text in enumerate(path.read_text().splitlines(), 1)
        if "- name: above the default" in text
    )
    assert failure.position is not None and failure.position.line == line
    assert "expected target hba1c_target = 58, got 53 (default target)" in str(failure)


def test_every_failure_is_listed(guideline_dir: Path) -> None:
    path = guideline_dir / "example.yaml"
    text = path.read_text().replace("recommendations: [above-target]", "recommendations: [missing]")
    path.write_text(text.replace("{above-58: numerator}", "{above-58: denominator}"))
    (result,) = run_cases(load_guidelines(guideline_dir))
    messages = [str(f) for f in result.failures]
    assert any("expected recommendations ['missing'], got ['above-target']" in m for m in messages)
    assert any("expected indicator above-58: denominator, got numerator" in m for m in messages)


CASE_EXPECT = "      targets: {hba1c_target: 53}\n"


@pytest.mark.parametrize(
    ("before", "after", "message"),
    [
        (
            CASE_EXPECT,
            CASE_EXPECT + "      targets_set_by: {hba1c_target: lipids-ihd}\n",
            "expected target hba1c_target to be set by lipids-ihd, got example-hba1c",
        ),
        (
            CASE_EXPECT,
            CASE_EXPECT + "      target_reasons: {hba1c_target: frail}\n",
            "expected the reason for hba1c_target to mention 'frail', got 'default target'",
        ),
        ("register: true", "register: false", "expected register false, got true (t2d = true"),
        (
            "facts: {hba1c: 67}",
            "facts: {hba1c: 2026-03-01}",
            "expected fact hba1c = 2026-03-01, got 67 (2026-03-02, Observation/observation-1)",
        ),
        (
            "  - name: above the default target\n",
            "  - name: above the default target\n    with_library: true\n",
            None,  # passes with the library too
        ),
        (
            "    as_of: 2026-06-01\n",
            "    with_library: true\n    as_of: 2019-06-01\n",
            "the guideline is not in force on 2019-06-01",
        ),
    ],
    ids=["set by", "reason", "register", "fact date", "library", "not in force"],
)
def test_each_kind_of_expectation_says_what_it_got(
    guideline_dir: Path, before: str, after: str, message: str | None
) -> None:
    """An author reads these messages to fix a case: each names what was expected and found."""
    path = guideline_dir / "example.yaml"
    text = path.read_text()
    assert text.count(before) == 1
    path.write_text(text.replace(before, after))
    (result,) = run_cases(load_guidelines(guideline_dir))
    messages = [str(f) for f in result.failures]
    if message is None:
        assert messages == []
    else:
        assert len(messages) == 1 and message in messages[0], messages


def test_shorthand_patients_become_valid_fhir() -> None:
    patient = CasePatient.model_validate(
        {
            "birth_date": "1950-01-01",
            "sex": "male",
            "conditions": [{"code": "icpc2:T90", "onset": "2015-01-01"}],
            "observations": [
                {
                    "code": "npu:DNK35302",
                    "value": ">90",
                    "unit": "mL/min/1.73m2",
                    "date": "2026-01-01",
                },
                {
                    "code": "loinc:85354-9",
                    "date": "2026-01-01",
                    "components": [
                        {
                            "code": "loinc:8480-6",
                            "value": 140,
                            "unit": "mm[Hg]",
                            "date": "2026-01-01",
                        },
                        {
                            "code": "loinc:8462-4",
                            "value": 85,
                            "unit": "mm[Hg]",
                            "date": "2026-01-01",
                        },
                    ],
                },
            ],
            "medications": [
                {"code": "atc:A10BA02", "start": "2020-01-01"},
                {
                    "code": "atc:A10BA02",
                    "start": "2020-01-01",
                    "end": "2021-01-01",
                    "resource": "MedicationRequest",
                },
            ],
            "goals": [
                {"measure": "npu:NPU27300", "value": 58, "unit": "mmol/mol", "start": "2025-01-01"}
            ],
        }
    )
    resources = case_resources(patient)
    for resource in resources:
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    assert len(resources) == 7


def test_a_stopped_case_request_with_an_end_is_refused() -> None:
    """A stopped request counts its start day only, whatever its supply: an end would not mean
    what it says."""
    medication = {"code": "atc:C09AA05", "start": "2026-01-01", "end": "2026-03-01"}
    medication |= {"status": "stopped", "resource": "MedicationRequest"}
    with pytest.raises(ValueError, match="a stopped MedicationRequest has no end"):
        CasePatient.model_validate(
            {"birth_date": "1950-01-01", "sex": "male", "medications": [medication]}
        )


def test_a_case_medication_that_ends_before_it_starts_is_refused() -> None:
    """A request's end becomes a supply of (end - start + 1) days: one before its start would be
    no supply at all, and the case would not mean what it says."""
    medication = {"code": "atc:A10BA02", "start": "2026-01-02", "end": "2026-01-01"}
    with pytest.raises(ValueError, match="end must not be before its start"):
        CasePatient.model_validate(
            {"birth_date": "1950-01-01", "sex": "male", "medications": [medication]}
        )
    same_day = CasePatient.model_validate(
        {
            "birth_date": "1950-01-01",
            "sex": "male",
            "medications": [{**medication, "end": "2026-01-02"}],
        }
    )
    assert same_day.medications[0].end == same_day.medications[0].start
