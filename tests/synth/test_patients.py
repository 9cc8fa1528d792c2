"""The synthetic patient generator: valid FHIR R4B, reproducible, and normalised as intended.

Why: benchmarks and engine tests trust these patients; a generator that drifted into invalid
FHIR or changed with every run would make their numbers meaningless.
"""

from __future__ import annotations

import random
from collections import Counter
from datetime import date, datetime, timedelta
from typing import Any

import orjson
import pytest
from fhir.resources.R4B import get_fhir_model_class
from hypothesis import given, settings
from hypothesis import strategies as st

from fhir_adapter.normalise import normalise_patient
from synth.patients import (
    CPR_SYSTEM,
    LOOKBACK_DAYS,
    YDERNUMMER_SYSTEM,
    Noise,
    generate_patient,
    make_practice,
)

AS_OF = date(2026, 10, 1)


def _patient(seed: int, resources: int, **kwargs: Any) -> list[dict[str, Any]]:
    return generate_patient(random.Random(seed), f"p{seed}", resources, AS_OF, **kwargs)


def _expected_counts(resources: list[dict[str, Any]]) -> dict[str, int]:
    """What normalise should make of generated data: one record per final Observation (two per
    blood-pressure panel), none for entered-in-error, one per statement, condition and goal."""
    observations = sum(
        len(r.get("component", ())) or 1
        for r in resources
        if r["resourceType"] == "Observation" and r["status"] == "final"
    )
    kinds = Counter(r["resourceType"] for r in resources)
    return {
        "observations": observations,
        "medications": kinds["MedicationStatement"],
        "conditions": kinds["Condition"],
        "goals": kinds["Goal"],
    }


@pytest.mark.parametrize("seed", [1, 2, 3, 2021])
def test_resources_are_valid_fhir_r4b(seed: int) -> None:
    for resource in _patient(seed, 300):
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)


def test_a_bundle_of_them_is_valid_fhir_r4b() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": r} for r in _patient(5, 120)],
    }
    get_fhir_model_class("Bundle").model_validate(bundle)


def test_same_seed_same_patient_other_seed_other_patient() -> None:
    assert orjson.dumps(_patient(42, 400)) == orjson.dumps(_patient(42, 400))
    assert orjson.dumps(_patient(42, 400)) != orjson.dumps(_patient(43, 400))


@pytest.mark.parametrize("size", [3, 10, 50, 500, 5000])
def test_exactly_the_requested_number_of_resources(size: int) -> None:
    resources = _patient(7, size)
    assert len(resources) == size
    ids = [(r["resourceType"], r["id"]) for r in resources]
    assert len(set(ids)) == size
    kinds = Counter(r["resourceType"] for r in resources)
    assert kinds["Patient"] == kinds["Organization"] == 1
    assert kinds["Observation"] >= 0.6 * (size - 2)


def test_danish_identifiers_and_references() -> None:
    resources = _patient(11, 200)
    practice, patient = resources[0], resources[1]
    assert practice["identifier"][0]["system"] == YDERNUMMER_SYSTEM
    (cpr,) = patient["identifier"]
    assert cpr["system"] == CPR_SYSTEM
    assert len(cpr["value"]) == 10 and cpr["value"].isdigit()
    assert cpr["value"].startswith("00")  # day 00: never a real person's number
    assert patient["generalPractitioner"][0]["reference"] == f"Organization/{practice['id']}"
    assert all(r["subject"] == {"reference": "Patient/p11"} for r in resources[2:])


def test_shared_practice_is_referred_to_but_not_repeated() -> None:
    practice = make_practice(random.Random(0), "912345")
    resources = _patient(3, 60, practice=practice)
    assert len(resources) == 60
    assert [r for r in resources if r["resourceType"] == "Organization"] == []
    assert normalise_patient([practice, *resources]).practice == "912345"


def test_observations_fall_in_the_last_three_years() -> None:
    for resource in _patient(13, 1000):
        if resource["resourceType"] == "Observation":
            day = date.fromisoformat(resource["effectiveDateTime"][:10])
            assert AS_OF - timedelta(days=LOOKBACK_DAYS) <= day <= AS_OF


@pytest.mark.parametrize("seed", [1, 2021])
def test_normalise_gives_the_expected_records(seed: int) -> None:
    resources = _patient(seed, 500)
    record = normalise_patient(resources)
    assert record.issues == ()
    assert record.id == f"p{seed}"
    assert record.practice == resources[0]["identifier"][0]["value"]
    assert record.birth_date == date.fromisoformat(resources[1]["birthDate"])
    counts = _expected_counts(resources)
    assert len(record.observations) == counts["observations"]
    assert len(record.medications) == counts["medications"]
    assert len(record.conditions) == counts["conditions"]
    assert len(record.goals) == counts["goals"]


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32), size=st.integers(3, 300))
def test_normalise_counts_for_any_seed_and_size(seed: int, size: int) -> None:
    resources = _patient(seed, size)
    record = normalise_patient(resources)
    assert record.issues == ()
    counts = _expected_counts(resources)
    assert len(record.observations) == counts["observations"]
    assert len(record.medications) == counts["medications"]
    assert len(record.conditions) == counts["conditions"]


def test_noise_is_present_and_normalised_away() -> None:
    """Every kind of noise occurs in a large patient, and normalise handles each as DOMAIN.md
    says: entered-in-error never counts, HbA1c % becomes mmol/mol, eGFR > 90 stays a bound."""
    resources = _patient(2021, 3000)
    record = normalise_patient(resources)
    by_id = {f"Observation/{r['id']}": r for r in resources if r["resourceType"] == "Observation"}
    records = {r.resource: r for r in record.observations}

    withdrawn = [key for key, r in by_id.items() if r["status"] == "entered-in-error"]
    assert withdrawn and not set(withdrawn) & set(records)

    percent = [k for k, r in by_id.items() if r["code"]["coding"][0]["code"] == "NPU03835"]
    assert percent
    for key in percent:
        if key in records:
            assert records[key].unit == "mmol/mol"
            assert 20 < records[key].value < 150

    bounds = [k for k, r in by_id.items() if r.get("valueQuantity", {}).get("comparator") == ">"]
    assert bounds
    for key in bounds:
        if key in records:
            assert (records[key].comparator, records[key].value) == (">", 90.0)


def test_noise_can_be_switched_off() -> None:
    quiet = Noise(entered_in_error=0, hba1c_percent=0, egfr_above_90_as_bound=False)
    resources = _patient(2021, 2000, noise=quiet)
    observations = [r for r in resources if r["resourceType"] == "Observation"]
    assert all(r["status"] == "final" for r in observations)
    assert all("comparator" not in r.get("valueQuantity", {}) for r in observations)
    assert all(r["code"]["coding"][0]["code"] != "NPU03835" for r in observations)


def test_rejects_what_cannot_be_a_patient() -> None:
    with pytest.raises(ValueError, match="at least"):
        _patient(1, 2)
    with pytest.raises(ValueError, match="FHIR id"):
        generate_patient(random.Random(1), "not an id", 10, AS_OF)


def test_timestamps_carry_the_danish_offset_of_their_day() -> None:
    """Summer time is computed without a time-zone database; check it against one if present."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        zone = ZoneInfo("Europe/Copenhagen")
    except ZoneInfoNotFoundError:
        pytest.skip("no time-zone database on this machine")
    for resource in _patient(17, 400):
        if resource["resourceType"] == "Observation":
            moment = datetime.fromisoformat(resource["effectiveDateTime"])
            assert moment.utcoffset() == moment.astimezone(zone).utcoffset()
